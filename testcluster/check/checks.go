package check

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"cardsync/carrier/sim"
	"cardsync/fsm"
)

func ts(t time.Time) string { return t.Format("15:04:05.000") }

// shardOf names the shard an epoch-guarded payload is about, and its proposer, epoch and task.
func guarded(p any) (shard, node string, epoch, task uint64, ok bool) {
	switch p := p.(type) {
	case *fsm.Claim:
		return p.Shard, p.Node, p.Epoch, 0, true
	case *fsm.StartTask:
		return p.Shard, p.Node, p.Epoch, 0, true
	case *fsm.Flush:
		return p.Shard, p.Node, p.Epoch, p.TaskID, true
	case *fsm.Release:
		return p.Shard, p.Node, p.Epoch, 0, true
	}
	return "", "", 0, 0, false
}

// StaleEpochs (check 1): every accepted claim, task start, flush or release carried the
// shard's current epoch (and, but for claims, came from the current owner and task); no
// claim was granted over another node's live claim.
func StaleEpochs(entries []Entry) []Violation {
	var out []Violation
	bad := func(e Entry, format string, a ...any) {
		out = append(out, Violation{CheckStaleEpoch, fmt.Sprintf("log %d (%s at %s): ", e.Index, e.Type, ts(e.Time)) + fmt.Sprintf(format, a...)})
	}
	for _, e := range entries {
		if !e.Accepted() {
			continue
		}
		shard, node, epoch, task, ok := guarded(e.Payload)
		if !ok {
			continue
		}
		before, known := e.Before[shard]
		if !known {
			bad(e, "shard %s unknown before an accepted %s", shard, e.Type)
			continue
		}
		if epoch != before.Epoch {
			bad(e, "accepted %s of %s with epoch %d while the shard was at epoch %d", e.Type, node, epoch, before.Epoch)
			continue
		}
		switch e.Type {
		case fsm.TypeClaim:
			if before.Owner != "" && before.Owner != node && before.Live(e.Time) {
				bad(e, "claim of %s by %s granted over %s's live claim (lease until %s)", shard, node, before.Owner, ts(before.LeaseUntil))
			}
			if after := e.After[shard]; after.Epoch != before.Epoch+1 || after.Owner != node {
				bad(e, "claim of %s by %s left epoch %d owner %q (want %d, %s)", shard, node, after.Epoch, after.Owner, before.Epoch+1, node)
			}
		default:
			if before.Owner != node {
				bad(e, "accepted %s of %s by %s while %q owned it", e.Type, shard, node, before.Owner)
			}
			if e.Type == fsm.TypeFlush && task != before.TaskID {
				bad(e, "accepted flush of %s for task %d while the task was %d", shard, task, before.TaskID)
			}
		}
	}
	return out
}

// AckedFlushesDurable (check 2): every flush a proposer saw acknowledged is in the
// committed log as an accepted entry, and no replica's final state is behind it (same
// task with an earlier cursor, or an earlier task).
func AckedFlushesDurable(ops []Op, entries []Entry, final map[string]ShardView, finals map[string]map[string]ShardView) []Violation {
	var out []Violation
	committed := map[string]bool{}
	for _, e := range entries {
		if e.Type == fsm.TypeFlush && e.Accepted() {
			committed[string(e.Raw)] = true
		}
	}
	states := map[string]map[string]ShardView{"replay": final}
	for n, f := range finals {
		states[n] = f
	}
	names := make([]string, 0, len(states))
	for n := range states {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, op := range ops {
		f, ok := op.Payload.(*fsm.Flush)
		if !ok || op.Err != nil {
			continue
		}
		what := fmt.Sprintf("flush of %s task %d cursor %s by %s acknowledged at %s", f.Shard, f.TaskID, f.Cursor, op.Node, ts(op.End))
		if !committed[string(op.Raw)] {
			out = append(out, Violation{CheckDurable, what + " is not in the committed log"})
		}
		cursor := strings.ToUpper(f.Cursor)
		for _, n := range names {
			st, ok := states[n][f.Shard]
			if !ok {
				out = append(out, Violation{CheckDurable, fmt.Sprintf("%s: shard missing on %s", what, n)})
				continue
			}
			if st.TaskID < f.TaskID || (st.TaskID == f.TaskID && st.Cursor < cursor) {
				out = append(out, Violation{CheckDurable, fmt.Sprintf("%s: %s ends at task %d cursor %s", what, n, st.TaskID, st.Cursor)})
			}
		}
	}
	return out
}

// CursorForward (check 3): in the committed log a shard's task id never goes back and,
// within a task, its cursor never moves back (an operator's SetCheckpoint excepted); and
// of two acknowledged flushes of one task, one finished before the other began, the
// later never carries an earlier cursor.
func CursorForward(entries []Entry, ops []Op) []Violation {
	var out []Violation
	type pos struct {
		task   uint64
		cursor string
		index  uint64
	}
	last := map[string]pos{}
	for _, e := range entries {
		if e.Type == fsm.TypeSetCheckpoint {
			for id := range e.After {
				delete(last, id)
			}
			continue
		}
		ids := make([]string, 0, len(e.After))
		for id := range e.After {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		for _, id := range ids {
			a := e.After[id]
			p, seen := last[id]
			if seen {
				switch {
				case a.TaskID < p.task:
					out = append(out, Violation{CheckCursor, fmt.Sprintf("log %d: shard %s task went back from %d (log %d) to %d", e.Index, id, p.task, p.index, a.TaskID)})
				case a.TaskID == p.task && a.Cursor < p.cursor:
					out = append(out, Violation{CheckCursor, fmt.Sprintf("log %d: shard %s task %d cursor went back from %s (log %d) to %s", e.Index, id, a.TaskID, p.cursor, p.index, a.Cursor)})
				}
			}
			last[id] = pos{a.TaskID, a.Cursor, e.Index}
		}
	}
	type ack struct {
		op     Op
		cursor string
	}
	byTask := map[string][]ack{}
	for _, op := range ops {
		if f, ok := op.Payload.(*fsm.Flush); ok && op.Err == nil {
			k := fmt.Sprintf("%s/%d", f.Shard, f.TaskID)
			byTask[k] = append(byTask[k], ack{op, strings.ToUpper(f.Cursor)})
		}
	}
	keys := make([]string, 0, len(byTask))
	for k := range byTask {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		acks := byTask[k]
		byEnd := append([]ack(nil), acks...)
		sort.Slice(byEnd, func(i, j int) bool { return byEnd[i].op.End.Before(byEnd[j].op.End) })
		sort.Slice(acks, func(i, j int) bool { return acks[i].op.Start.Before(acks[j].op.Start) })
		j := 0
		var best *ack
		for _, a := range acks {
			for ; j < len(byEnd) && byEnd[j].op.End.Before(a.op.Start); j++ {
				if best == nil || byEnd[j].cursor > best.cursor {
					best = &byEnd[j]
				}
			}
			if best != nil && a.cursor < best.cursor {
				out = append(out, Violation{CheckCursor, fmt.Sprintf("shard task %s: flush by %s at %s acknowledged cursor %s after an earlier acknowledged flush reached %s", k, a.op.Node, ts(a.op.Start), a.cursor, best.cursor)})
			}
		}
	}
	return out
}

// GroupSerial (check 4, groups): at every committed entry, at most one shard of a group
// holds a live claim (judged at the entry's stamp).
func GroupSerial(entries []Entry) []Violation {
	var out []Violation
	shadow := map[string]ShardView{}
	groups := map[int]map[string]bool{}
	for _, e := range entries {
		for id, v := range e.Before {
			if _, ok := shadow[id]; !ok {
				shadow[id] = v
				if groups[v.Group] == nil {
					groups[v.Group] = map[string]bool{}
				}
				groups[v.Group][id] = true
			}
		}
		touchedGroups := map[int]bool{}
		for id, v := range e.After {
			shadow[id] = v
			touchedGroups[v.Group] = true
		}
		for g := range touchedGroups {
			var live []string
			for id := range groups[g] {
				if s := shadow[id]; s.Live(e.Time) {
					live = append(live, id+"@"+s.Owner)
				}
			}
			if len(live) > 1 {
				sort.Strings(live)
				out = append(out, Violation{CheckExclusive, fmt.Sprintf("log %d at %s: group %d has live claims %v", e.Index, ts(e.Time), g, live)})
			}
		}
	}
	return out
}

type tenure struct {
	node     string
	epoch    uint64
	from, to time.Time // to zero: still held at the end
}

// tenures derives, per shard, who held it when, from the committed log.
func tenures(entries []Entry) map[string][]tenure {
	out := map[string][]tenure{}
	for _, e := range entries {
		for id, a := range e.After {
			ts := out[id]
			var cur *tenure
			if n := len(ts); n > 0 && ts[n-1].to.IsZero() {
				cur = &ts[n-1]
			}
			if cur != nil && (cur.node != a.Owner || cur.epoch != a.Epoch) {
				cur.to = e.Time
				cur = nil
			}
			if cur == nil && a.Owner != "" {
				ts = append(ts, tenure{node: a.Owner, epoch: a.Epoch, from: e.Time})
			}
			out[id] = ts
		}
	}
	return out
}

// CallOwnership (check 4, carrier calls): every carrier call a node made for a shard's
// cards started while that node held the shard's claim, except at most one call per lost
// tenure and carrier account that was in flight when the claim moved or started after it
// (a worker has at most one batch query out per account; those a fenced owner still has
// out before its next flush is refused).
func CallOwnership(calls []sim.CallRecord, entries []Entry, cardShard map[string]string) []Violation {
	var out []Violation
	tens := tenures(entries)
	overhang := map[string][]sim.CallRecord{}
	var keys []string
	for _, c := range calls {
		if c.Tag == "" {
			continue
		}
		shards := map[string]bool{}
		for _, id := range c.ICCIDs {
			if s, ok := cardShard[id]; ok {
				shards[s] = true
			}
		}
		for s := range shards {
			var held, prev *tenure
			for i := range tens[s] {
				t := &tens[s][i]
				if t.node != c.Tag || t.from.After(c.Start) {
					continue
				}
				prev = t
				if t.to.IsZero() || c.Start.Before(t.to) {
					held = t
				}
			}
			switch {
			case prev == nil:
				out = append(out, Violation{CheckExclusive, fmt.Sprintf("carrier call by %s for shard %s at %s (%d cards, account %s) without ever holding its claim", c.Tag, s, ts(c.Start), len(c.ICCIDs), c.Account)})
			case held != nil && (held.to.IsZero() || !c.End.After(held.to)):
				// Within the tenure.
			default:
				k := fmt.Sprintf("%s/%s/epoch %d/account %s (lost at %s)", s, c.Tag, prev.epoch, c.Account, ts(prev.to))
				if len(overhang[k]) == 0 {
					keys = append(keys, k)
				}
				overhang[k] = append(overhang[k], c)
			}
		}
	}
	for _, k := range keys {
		if cs := overhang[k]; len(cs) > 1 {
			var spans []string
			for _, c := range cs {
				spans = append(spans, ts(c.Start)+"-"+ts(c.End))
			}
			out = append(out, Violation{CheckExclusive, fmt.Sprintf("%s: %d carrier calls outside the tenure (at most 1 in-flight batch per account allowed): %s", k, len(cs), strings.Join(spans, ", "))})
		}
	}
	return out
}

// QuotaRespected (check 5): the simulator rejected no call as over an account's rate or
// concurrency quota, and the most concurrent calls stayed within the limit.
func QuotaRespected(stats sim.Stats, quotas map[string]Quota) []Violation {
	var out []Violation
	ids := make([]string, 0, len(stats.Accounts))
	for id := range stats.Accounts {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		a := stats.Accounts[id]
		if a.Rejected > 0 {
			out = append(out, Violation{CheckQuota, fmt.Sprintf("account %s: %d calls over quota (rate %d, concurrency %d), peak %d calls in one second", id, a.Rejected, a.RejectedRate, a.RejectedConcurrency, a.PeakPerSecond)})
		}
		if q, ok := quotas[id]; ok && q.MaxConcurrent > 0 && a.MaxConcurrent > q.MaxConcurrent {
			out = append(out, Violation{CheckQuota, fmt.Sprintf("account %s: %d concurrent calls, limit %d", id, a.MaxConcurrent, q.MaxConcurrent)})
		}
	}
	return out
}

// Converged (check 6): once faults stopped, every card that was due was synced within
// bound, and every card that fell due later was synced within bound of falling due, as
// far as checkedAt lets us see. A card synced after the stop counts once its sync lies
// within bound of the stop.
func Converged(cards []fsm.Card, stopped time.Time, bound time.Duration, checkedAt ...time.Time) []Violation {
	at := stopped.Add(bound)
	if len(checkedAt) > 0 {
		at = checkedAt[0]
	}
	var out []Violation
	late := 0
	var first string
	for _, c := range cards {
		switch {
		case c.SyncedAt.After(stopped):
			if c.SyncedAt.Sub(stopped) > bound {
				late++
				if first == "" {
					first = fmt.Sprintf("card %s synced %v after the faults stopped", c.ICCID, c.SyncedAt.Sub(stopped).Round(time.Millisecond))
				}
			}
		default:
			due := c.ValidUntil
			if due.Before(stopped) {
				due = stopped
			}
			if !due.Add(bound).After(at) {
				late++
				if first == "" {
					first = fmt.Sprintf("card %s (shard %s, account %s) due at %s not synced by %s", c.ICCID, c.Shard, c.Account, ts(due), ts(at))
				}
			}
		}
	}
	if late > 0 {
		out = append(out, Violation{CheckConvergence, fmt.Sprintf("%d cards not synced within %v of the faults stopping; first: %s", late, bound, first)})
	}
	return out
}

// DigestsAgree (check 7): replicas at the same applied index have the same FSM digest,
// and at least two replicas were compared.
func DigestsAgree(ds []Digest) []Violation {
	var out []Violation
	byIndex := map[uint64][]Digest{}
	for _, d := range ds {
		byIndex[d.Index] = append(byIndex[d.Index], d)
	}
	compared := false
	idx := make([]uint64, 0, len(byIndex))
	for i := range byIndex {
		idx = append(idx, i)
	}
	sort.Slice(idx, func(a, b int) bool { return idx[a] < idx[b] })
	for _, i := range idx {
		g := byIndex[i]
		if len(g) < 2 {
			continue
		}
		compared = true
		for _, d := range g[1:] {
			if d.Sum != g[0].Sum {
				out = append(out, Violation{CheckDigest, fmt.Sprintf("index %d: %s has %.12s, %s has %.12s", i, g[0].Node, g[0].Sum, d.Node, d.Sum)})
			}
		}
	}
	if !compared {
		out = append(out, Violation{CheckDigest, "no two replicas at the same applied index: nothing compared"})
	}
	return out
}
