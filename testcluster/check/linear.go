package check

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"

	"cardsync/fsm"
)

// lstate is the model of one shard's row in the shard table.
type lstate struct {
	Epoch   uint64
	Owner   string
	Task    uint64
	Running bool
	Cursor  string
}

func (s lstate) fenced() lstate {
	s.Epoch++
	s.Owner = ""
	return s
}

// lin is an operation's input as the model of one shard sees it.
type lin struct {
	kind    fsm.Type
	sibling bool // a claim of another shard of the group (may fence this one)
	node    string
	epoch   uint64
	task    uint64
	cursor  string
	done    bool
	release bool
	newTask bool
	setCur  *string
	// start: a claim that also starts a new task when the shard has none running.
	start bool
}

type lout struct {
	ok      bool
	unknown bool
	code    string
	epoch   uint64
	task    uint64
}

func stepShard(s lstate, in lin, out lout) []lstate {
	if in.sibling {
		if !out.ok && !out.unknown {
			return []lstate{s}
		}
		if s.Owner != "" {
			return []lstate{s, s.fenced()}
		}
		return []lstate{s}
	}
	// apply returns the state after the command is accepted, and whether it can be.
	var apply func() (lstate, bool)
	// rejectOK says whether a definite rejection with out.code fits s.
	var rejectOK func() bool
	matchEpoch := s.Epoch == in.epoch
	switch in.kind {
	case fsm.TypeClaim:
		apply = func() (lstate, bool) {
			if !matchEpoch || (out.ok && out.epoch != 0 && out.epoch != s.Epoch+1) {
				return s, false
			}
			n := s
			n.Epoch++
			n.Owner = in.node
			if in.start && !n.Running {
				n.Task++
				n.Running = true
				n.Cursor = ""
			}
			if out.ok && out.task != 0 && out.task != n.Task {
				return s, false
			}
			return n, true
		}
		rejectOK = func() bool {
			switch out.code {
			case "stale_epoch":
				return !matchEpoch
			case "claimed_elsewhere":
				return matchEpoch && s.Owner != "" && s.Owner != in.node
			case "group_busy":
				return matchEpoch
			}
			return true
		}
	case fsm.TypeStartTask:
		apply = func() (lstate, bool) {
			if !matchEpoch || s.Owner != in.node || (out.ok && out.task != 0 && out.task != s.Task+1) {
				return s, false
			}
			n := s
			n.Task++
			n.Running = true
			n.Cursor = ""
			return n, true
		}
		rejectOK = func() bool {
			switch out.code {
			case "stale_epoch":
				return !matchEpoch
			case "not_owner":
				return matchEpoch && s.Owner != in.node
			}
			return true
		}
	case fsm.TypeFlush:
		apply = func() (lstate, bool) {
			if !matchEpoch || s.Owner != in.node || s.Task != in.task || !s.Running || in.cursor < s.Cursor {
				return s, false
			}
			n := s
			n.Cursor = in.cursor
			if in.done {
				n.Running = false
			}
			if in.release {
				n.Owner = ""
			}
			return n, true
		}
		rejectOK = func() bool {
			switch out.code {
			case "stale_epoch":
				return !matchEpoch || (s.Owner == in.node && s.Task != in.task)
			case "not_owner":
				return matchEpoch && s.Owner != in.node
			case "cursor_back":
				return matchEpoch && s.Owner == in.node && s.Task == in.task && in.cursor < s.Cursor
			case "invalid":
				return matchEpoch && s.Owner == in.node && s.Task == in.task
			}
			return true
		}
	case fsm.TypeRelease:
		apply = func() (lstate, bool) {
			if !matchEpoch || s.Owner != in.node {
				return s, false
			}
			n := s
			n.Owner = ""
			return n, true
		}
		rejectOK = func() bool {
			switch out.code {
			case "stale_epoch":
				return !matchEpoch
			case "not_owner":
				return matchEpoch && s.Owner != in.node
			}
			return true
		}
	case fsm.TypeRevokeNode:
		apply = func() (lstate, bool) {
			if s.Owner != in.node {
				return s, true
			}
			return s.fenced(), true
		}
		rejectOK = func() bool { return true }
	case fsm.TypeForceRelease:
		apply = func() (lstate, bool) { return s.fenced(), true }
		rejectOK = func() bool { return true }
	case fsm.TypeSetCheckpoint:
		apply = func() (lstate, bool) {
			n := s
			if n.Owner != "" {
				n = n.fenced()
			}
			if in.newTask {
				n.Running = false
				n.Cursor = ""
			}
			if in.setCur != nil {
				n.Cursor = *in.setCur
			}
			return n, true
		}
		rejectOK = func() bool { return true }
	default:
		return []lstate{s}
	}
	switch {
	case out.unknown:
		if n, ok := apply(); ok && n != s {
			return []lstate{s, n}
		}
		return []lstate{s}
	case out.ok:
		if n, ok := apply(); ok {
			return []lstate{n}
		}
		return nil
	default:
		if rejectOK() {
			return []lstate{s}
		}
		return nil
	}
}

type linOp struct {
	shard string
	in    lin
	out   lout
	op    Op
}

// linOps turns recorded proposals into per-shard model operations: a command goes to
// the shard it names, a claim also to the other shards of its group (it may fence one of
// them), and a node revocation to every shard.
func linOps(ops []Op, groups map[string]int) map[string][]linOp {
	byGroup := map[int][]string{}
	all := make([]string, 0, len(groups))
	for id, g := range groups {
		byGroup[g] = append(byGroup[g], id)
		all = append(all, id)
	}
	sort.Strings(all)
	parts := map[string][]linOp{}
	for _, op := range ops {
		out := lout{ok: op.Err == nil, unknown: op.Unknown()}
		if op.Err != nil && !out.unknown {
			out.code = fsm.ErrorCode(op.Err)
		}
		if op.Result != nil {
			out.epoch, out.task = op.Result.Epoch, op.Result.TaskID
		}
		add := func(shard string, in lin) {
			parts[shard] = append(parts[shard], linOp{shard: shard, in: in, out: out, op: op})
		}
		switch p := op.Payload.(type) {
		case *fsm.Claim:
			add(p.Shard, lin{kind: fsm.TypeClaim, node: p.Node, epoch: p.Epoch, start: p.StartTask})
			if g, ok := groups[p.Shard]; ok {
				for _, id := range byGroup[g] {
					if id != p.Shard {
						add(id, lin{kind: fsm.TypeClaim, sibling: true, node: p.Node})
					}
				}
			}
		case *fsm.StartTask:
			add(p.Shard, lin{kind: fsm.TypeStartTask, node: p.Node, epoch: p.Epoch})
		case *fsm.Flush:
			add(p.Shard, lin{kind: fsm.TypeFlush, node: p.Node, epoch: p.Epoch, task: p.TaskID,
				cursor: strings.ToUpper(p.Cursor), done: p.Done, release: p.Release})
		case *fsm.Release:
			add(p.Shard, lin{kind: fsm.TypeRelease, node: p.Node, epoch: p.Epoch})
		case *fsm.RevokeNode:
			for _, id := range all {
				add(id, lin{kind: fsm.TypeRevokeNode, node: p.Node})
			}
		case *fsm.ForceRelease:
			add(p.Shard, lin{kind: fsm.TypeForceRelease})
		case *fsm.SetCheckpoint:
			var cur *string
			if p.Cursor != nil {
				c := strings.ToUpper(*p.Cursor)
				cur = &c
			}
			add(p.Shard, lin{kind: fsm.TypeSetCheckpoint, newTask: p.NewTask, setCur: cur})
		}
	}
	return parts
}

var shardModel = porcupine.NondeterministicModel{
	Init: func() []interface{} { return []interface{}{lstate{}} },
	Step: func(state, input, output interface{}) []interface{} {
		next := stepShard(state.(lstate), input.(lin), output.(lout))
		out := make([]interface{}, len(next))
		for i, n := range next {
			out[i] = n
		}
		return out
	},
	DescribeState: func(state interface{}) string {
		s := state.(lstate)
		return fmt.Sprintf("epoch %d owner %q task %d running %v cursor %s", s.Epoch, s.Owner, s.Task, s.Running, s.Cursor)
	},
}

// Linearizable (check 8): for every shard, the claims, task starts, flushes, releases
// and revocations that touched it, as their proposers saw them (call and return times,
// results and errors), can be ordered into a sequential history of the shard-table model
// (epoch, owner, task, cursor) that respects real time. Unknown outcomes (timeouts, lost
// leadership) may or may not have taken effect. A shard whose check does not finish
// within timeout counts as a violation too.
func Linearizable(ops []Op, groups map[string]int, timeout time.Duration) []Violation {
	var out []Violation
	parts := linOps(ops, groups)
	model := shardModel.ToModel()
	ids := make([]string, 0, len(parts))
	for id := range parts {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	clients := map[string]int{}
	for _, id := range ids {
		hist := make([]porcupine.Operation, 0, len(parts[id]))
		for _, o := range parts[id] {
			if _, ok := clients[o.op.Node]; !ok {
				clients[o.op.Node] = len(clients)
			}
			ret := o.op.End.UnixNano()
			if o.out.unknown {
				ret = math.MaxInt64
			}
			hist = append(hist, porcupine.Operation{ClientId: clients[o.op.Node], Input: o.in, Output: o.out,
				Call: o.op.Start.UnixNano(), Return: ret})
		}
		switch porcupine.CheckOperationsTimeout(model, hist, timeout) {
		case porcupine.Illegal:
			out = append(out, Violation{CheckLinearizable, fmt.Sprintf("shard %s: %d operations admit no linearization: %s", id, len(hist), describeOps(parts[id]))})
		case porcupine.Unknown:
			out = append(out, Violation{CheckLinearizable, fmt.Sprintf("shard %s: check of %d operations did not finish within %v", id, len(hist), timeout)})
		}
	}
	return out
}

func describeOps(ops []linOp) string {
	var b strings.Builder
	for i, o := range ops {
		if i == 400 {
			fmt.Fprintf(&b, " ... %d more", len(ops)-i)
			break
		}
		res := "ok"
		switch {
		case o.out.unknown:
			res = "unknown"
		case !o.out.ok:
			res = o.out.code
		}
		if o.in.sibling {
			fmt.Fprintf(&b, "[%s sibling claim by %s -> %s] ", ts(o.op.Start), o.in.node, res)
			continue
		}
		fmt.Fprintf(&b, "[%s-%s %s %s e%d t%d %s -> %s e%d t%d] ", ts(o.op.Start), ts(o.op.End), o.in.kind, o.in.node, o.in.epoch, o.in.task, o.in.cursor, res, o.out.epoch, o.out.task)
	}
	return b.String()
}
