package check

import (
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"cardsync/carrier/sim"
	"cardsync/fsm"
)

// Op is one proposal as its proposer saw it (client side): the command, the call's
// span, and its outcome.
type Op struct {
	Node    string
	Type    fsm.Type
	Payload any    // *fsm.Claim, *fsm.Flush, ... (nil if it did not decode)
	Raw     []byte // the payload bytes as proposed
	Start   time.Time
	End     time.Time
	Result  *fsm.Result
	Err     error
}

// Rejected reports whether the FSM definitely refused the command (it was applied as a
// rejection and changed nothing).
func (o Op) Rejected() bool { return o.Err != nil && definite(o.Err) }

// Unknown reports whether the outcome is unknown (timeout, lost leadership, shutdown...):
// the command may or may not have been applied.
func (o Op) Unknown() bool { return o.Err != nil && !definite(o.Err) }

func definite(err error) bool {
	c := fsm.ErrorCode(err)
	return c != "" && c != fsm.CodeInternal
}

// NewOp decodes a proposal seen by a node's proposal observer.
func NewOp(node string, cmd []byte, res *fsm.Result, err error, start, end time.Time) Op {
	op := Op{Node: node, Start: start, End: end, Result: res, Err: err}
	c, derr := fsm.Decode(cmd)
	if derr != nil {
		return op
	}
	op.Type = c.Type
	op.Raw = append([]byte(nil), c.Payload...)
	if p, perr := fsm.DecodePayload(c); perr == nil {
		op.Payload = p
	}
	return op
}

// ShardView is the part of a shard's state the invariants speak about.
type ShardView struct {
	ID         string
	Group      int
	Epoch      uint64
	Owner      string
	LeaseUntil time.Time
	TaskID     uint64
	State      string
	Cursor     string
}

// ViewOf extracts a ShardView.
func ViewOf(s fsm.ShardState) ShardView {
	return ShardView{ID: s.ID, Group: s.Group, Epoch: s.Epoch, Owner: s.Owner, LeaseUntil: s.LeaseUntil,
		TaskID: s.Checkpoint.TaskID, State: s.Checkpoint.State, Cursor: s.Checkpoint.Cursor}
}

// Live reports whether the shard has an owner whose lease runs past t.
func (v ShardView) Live(t time.Time) bool { return v.Owner != "" && v.LeaseUntil.After(t) }

// Entry is one committed log entry with its outcome and the states of the shards it
// could touch, before and after.
type Entry struct {
	Index   uint64
	Time    time.Time // the leader's stamp
	Type    fsm.Type
	Payload any
	Raw     []byte
	Result  *fsm.Result
	Err     error // nil: accepted
	Before  map[string]ShardView
	After   map[string]ShardView
}

// Accepted reports whether the FSM applied the command without a rule error.
func (e Entry) Accepted() bool { return e.Err == nil }

// Replayed is the committed log replayed through a fresh FSM.
type Replayed struct {
	Entries   []Entry
	Final     map[string]ShardView // shard id -> state after the last entry
	Index     uint64               // last index applied
	Digest    string               // FSM digest after the last entry
	Groups    map[string]int       // shard id -> group
	CardShard map[string]string    // ICCID -> shard id
}

// ErrLogIncomplete means the log does not start at index 1 (it was compacted), so it
// cannot be replayed from the beginning.
var ErrLogIncomplete = errors.New("check: log does not start at index 1")

// Replay applies the committed log, in order, to a fresh FSM in dir and records every
// command's outcome and the states of the shards it touches.
func Replay(logs []*raft.Log, dir string) (*Replayed, error) {
	if len(logs) > 0 && logs[0].Index != 1 {
		return nil, fmt.Errorf("%w: first index %d", ErrLogIncomplete, logs[0].Index)
	}
	cfg := fsm.DefaultConfig()
	cfg.Path = filepath.Join(dir, "replay.db")
	cfg.NoSync = true
	f, err := fsm.Open(cfg, hclog.NewNullLogger())
	if err != nil {
		return nil, fmt.Errorf("check: open replay fsm: %w", err)
	}
	defer f.Close()
	out := &Replayed{Groups: map[string]int{}, CardShard: map[string]string{}, Final: map[string]ShardView{}}
	views := func(ids []string) map[string]ShardView {
		m := make(map[string]ShardView, len(ids))
		for _, id := range ids {
			if s, err := f.Shard(id); err == nil {
				m[id] = ViewOf(s)
			}
		}
		return m
	}
	for i, l := range logs {
		if i > 0 && l.Index != logs[i-1].Index+1 {
			return nil, fmt.Errorf("check: log gap between %d and %d", logs[i-1].Index, l.Index)
		}
		var e *Entry
		var ids []string
		if l.Type == raft.LogCommand {
			if c, err := fsm.Decode(l.Data); err == nil {
				e = &Entry{Index: l.Index, Time: c.Time, Type: c.Type, Raw: append([]byte(nil), c.Payload...)}
				e.Payload, _ = fsm.DecodePayload(c)
				ids = touched(f, e.Payload)
				e.Before = views(ids)
			}
		}
		resp := f.ApplyBatch([]*raft.Log{l})[0]
		if err := f.Err(); err != nil {
			return nil, fmt.Errorf("check: replay failed at %d: %w", l.Index, err)
		}
		if e == nil {
			continue
		}
		switch r := resp.(type) {
		case error:
			e.Err = r
		case *fsm.Result:
			e.Result = r
		}
		e.After = views(ids)
		out.Entries = append(out.Entries, *e)
	}
	shards, err := f.Shards(fsm.ShardFilter{})
	if err != nil {
		return nil, err
	}
	for _, s := range shards {
		out.Final[s.ID] = ViewOf(s)
		out.Groups[s.ID] = s.Group
	}
	after := ""
	for {
		page, next, err := f.Cards(fsm.CardFilter{After: after, Limit: fsm.MaxPage})
		if err != nil {
			return nil, err
		}
		for _, c := range page {
			out.CardShard[c.ICCID] = c.Shard
		}
		if next == "" || len(page) == 0 {
			break
		}
		after = next
	}
	out.Index, out.Digest, err = f.Digest()
	return out, err
}

// touched lists the shards a command can change.
func touched(f *fsm.FSM, p any) []string {
	one := func(id string) []string { return []string{id} }
	switch p := p.(type) {
	case *fsm.Claim:
		s, err := f.Shard(p.Shard)
		if err != nil {
			return one(p.Shard)
		}
		g := s.Group
		group, err := f.Shards(fsm.ShardFilter{Group: &g})
		if err != nil {
			return one(p.Shard)
		}
		ids := make([]string, len(group))
		for i, s := range group {
			ids[i] = s.ID
		}
		return ids
	case *fsm.StartTask:
		return one(p.Shard)
	case *fsm.Flush:
		return one(p.Shard)
	case *fsm.Release:
		return one(p.Shard)
	case *fsm.ForceRelease:
		return one(p.Shard)
	case *fsm.SetCheckpoint:
		return one(p.Shard)
	case *fsm.RevokeNode:
		owned, err := f.Shards(fsm.ShardFilter{Owner: p.Node})
		if err != nil {
			return nil
		}
		ids := make([]string, len(owned))
		for i, s := range owned {
			ids[i] = s.ID
		}
		return ids
	}
	return nil
}

// Digest is one replica's FSM digest at an applied index.
type Digest struct {
	Node  string
	Index uint64
	Sum   string
}

// History is everything a run recorded; the checkers read the parts they need.
type History struct {
	Ops      []Op
	Replayed *Replayed
	// Finals holds each live replica's shard states at the end, by node.
	Finals  map[string]map[string]ShardView
	Calls   []sim.CallRecord
	Stats   sim.Stats
	Quotas  map[string]Quota
	Digests []Digest
	// Cards is the final card table; FaultsStopped and Bound drive the convergence check.
	Cards         []fsm.Card
	FaultsStopped time.Time
	Bound         time.Duration
}

// Quota is an account's limits at the carrier.
type Quota struct {
	RatePerSec    float64
	Burst         int
	MaxConcurrent int
}

// Violation is one broken invariant.
type Violation struct {
	Check  string
	Detail string
}

func (v Violation) String() string { return v.Check + ": " + v.Detail }

// Names of the checks.
const (
	CheckStaleEpoch   = "1-no-stale-epoch-write"
	CheckDurable      = "2-acked-flush-durable"
	CheckCursor       = "3-cursor-forward"
	CheckExclusive    = "4-exclusive-ownership"
	CheckQuota        = "5-quota"
	CheckConvergence  = "6-convergence"
	CheckDigest       = "7-digests"
	CheckLinearizable = "8-linearizable"
)

// Report is the outcome of Run: violations by check, and what each check looked at.
type Report struct {
	Violations []Violation
	Checked    map[string]string // check -> what it covered
}

// Run applies every check whose inputs the history holds.
func Run(h History, linearizeTimeout time.Duration) Report {
	r := Report{Checked: map[string]string{}}
	add := func(name, what string, vs []Violation) {
		r.Checked[name] = what
		r.Violations = append(r.Violations, vs...)
	}
	if h.Replayed != nil {
		es := h.Replayed.Entries
		add(CheckStaleEpoch, fmt.Sprintf("%d committed entries", len(es)), StaleEpochs(es))
		add(CheckDurable, fmt.Sprintf("%d ops against %d entries and %d replicas", len(h.Ops), len(es), len(h.Finals)), AckedFlushesDurable(h.Ops, es, h.Replayed.Final, h.Finals))
		add(CheckCursor, fmt.Sprintf("%d entries, %d ops", len(es), len(h.Ops)), CursorForward(es, h.Ops))
		vs := GroupSerial(es)
		vs = append(vs, CallOwnership(h.Calls, es, h.Replayed.CardShard)...)
		add(CheckExclusive, fmt.Sprintf("%d entries, %d carrier calls", len(es), len(h.Calls)), vs)
		add(CheckLinearizable, fmt.Sprintf("%d ops", len(h.Ops)), Linearizable(h.Ops, h.Replayed.Groups, linearizeTimeout))
	}
	if h.Stats.Accounts != nil {
		add(CheckQuota, fmt.Sprintf("%d accounts", len(h.Stats.Accounts)), QuotaRespected(h.Stats, h.Quotas))
	}
	if !h.FaultsStopped.IsZero() {
		add(CheckConvergence, fmt.Sprintf("%d cards, bound %v", len(h.Cards), h.Bound), Converged(h.Cards, h.FaultsStopped, h.Bound))
	}
	if len(h.Digests) > 0 {
		add(CheckDigest, fmt.Sprintf("%d digests", len(h.Digests)), DigestsAgree(h.Digests))
	}
	sort.SliceStable(r.Violations, func(i, j int) bool { return r.Violations[i].Check < r.Violations[j].Check })
	return r
}

// String summarises the report.
func (r Report) String() string {
	var b strings.Builder
	names := make([]string, 0, len(r.Checked))
	for n := range r.Checked {
		names = append(names, n)
	}
	sort.Strings(names)
	count := map[string]int{}
	for _, v := range r.Violations {
		count[v.Check]++
	}
	for _, n := range names {
		fmt.Fprintf(&b, "  %-24s violations: %d  (%s)\n", n, count[n], r.Checked[n])
	}
	fmt.Fprintf(&b, "  violations: %d\n", len(r.Violations))
	shown := map[string]int{}
	for _, v := range r.Violations {
		shown[v.Check]++
		switch {
		case shown[v.Check] <= 8:
			fmt.Fprintf(&b, "  - %s\n", v)
		case shown[v.Check] == 9:
			fmt.Fprintf(&b, "  - %s: ... %d more\n", v.Check, count[v.Check]-8)
		}
	}
	return b.String()
}
