package check

import (
	"errors"
	"strings"
	"testing"
	"time"

	"cardsync/carrier/sim"
	"cardsync/fsm"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

func view(id, owner string, epoch, task uint64, cursor string, leaseMs int) ShardView {
	return ShardView{ID: id, Group: 1, Epoch: epoch, Owner: owner, TaskID: task, State: fsm.StateRunning, Cursor: cursor, LeaseUntil: at(leaseMs)}
}

func entry(i uint64, ms int, p any, err error, before, after ShardView) Entry {
	t, _ := typeOf(p)
	return Entry{Index: i, Time: at(ms), Type: t, Payload: p, Err: err,
		Before: map[string]ShardView{before.ID: before}, After: map[string]ShardView{after.ID: after}}
}

func typeOf(p any) (fsm.Type, bool) {
	switch p.(type) {
	case *fsm.Claim:
		return fsm.TypeClaim, true
	case *fsm.StartTask:
		return fsm.TypeStartTask, true
	case *fsm.Flush:
		return fsm.TypeFlush, true
	case *fsm.Release:
		return fsm.TypeRelease, true
	case *fsm.RevokeNode:
		return fsm.TypeRevokeNode, true
	}
	return 0, false
}

func op(node string, startMs, endMs int, p any, res *fsm.Result, err error) Op {
	t, _ := typeOf(p)
	raw, _ := fsm.Encode(t, p)
	return Op{Node: node, Type: t, Payload: p, Raw: raw[10:], Start: at(startMs), End: at(endMs), Result: res, Err: err}
}

func expect(t *testing.T, name string, vs []Violation, want int, contains string) {
	t.Helper()
	if len(vs) != want {
		t.Fatalf("%s: %d violations, want %d: %v", name, len(vs), want, vs)
	}
	if want > 0 && !strings.Contains(vs[0].Detail, contains) {
		t.Errorf("%s: %q does not mention %q", name, vs[0].Detail, contains)
	}
}

func TestStaleEpochs(t *testing.T) {
	good := []Entry{
		entry(1, 0, &fsm.Claim{Shard: "s", Node: "a", Epoch: 0}, nil, view("s", "", 0, 0, "", 0), view("s", "a", 1, 0, "", 10000)),
		entry(2, 10, &fsm.Flush{Shard: "s", Node: "a", Epoch: 1, TaskID: 0}, nil, view("s", "a", 1, 0, "", 10000), view("s", "a", 1, 0, "", 10000)),
		entry(3, 20, &fsm.Flush{Shard: "s", Node: "b", Epoch: 1}, fsm.ErrNotOwner, view("s", "a", 1, 0, "", 10000), view("s", "a", 1, 0, "", 10000)),
	}
	expect(t, "good", StaleEpochs(good), 0, "")
	tests := []struct {
		name string
		e    Entry
		want string
	}{
		{"flush with an old epoch", entry(4, 30, &fsm.Flush{Shard: "s", Node: "a", Epoch: 1}, nil, view("s", "b", 2, 0, "", 10000), view("s", "b", 2, 0, "", 10000)), "epoch 1 while the shard was at epoch 2"},
		{"release by a non-owner", entry(4, 30, &fsm.Release{Shard: "s", Node: "a", Epoch: 2}, nil, view("s", "b", 2, 0, "", 10000), view("s", "", 2, 0, "", 10000)), "while \"b\" owned it"},
		{"claim over a live claim", entry(4, 30, &fsm.Claim{Shard: "s", Node: "b", Epoch: 1}, nil, view("s", "a", 1, 0, "", 10000), view("s", "b", 2, 0, "", 10000)), "over a's live claim"},
		{"flush of another task", entry(4, 30, &fsm.Flush{Shard: "s", Node: "a", Epoch: 1, TaskID: 3}, nil, view("s", "a", 1, 4, "", 10000), view("s", "a", 1, 4, "", 10000)), "task 3 while the task was 4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			expect(t, tt.name, StaleEpochs(append(append([]Entry{}, good...), tt.e)), 1, tt.want)
		})
	}
}

func TestAckedFlushesDurable(t *testing.T) {
	f := &fsm.Flush{Shard: "s", Node: "a", Epoch: 1, TaskID: 2, Cursor: "89860000000000000100"}
	acked := op("a", 0, 10, f, &fsm.Result{Epoch: 1, TaskID: 2}, nil)
	committed := Entry{Index: 5, Type: fsm.TypeFlush, Payload: f, Raw: acked.Raw}
	final := map[string]ShardView{"s": view("s", "", 1, 2, "89860000000000000100", 0)}
	expect(t, "durable", AckedFlushesDurable([]Op{acked}, []Entry{committed}, final, nil), 0, "")
	expect(t, "lost from the log", AckedFlushesDurable([]Op{acked}, nil, final, nil), 1, "not in the committed log")
	back := map[string]map[string]ShardView{"node-2": {"s": view("s", "", 1, 2, "89860000000000000050", 0)}}
	expect(t, "moved back on a replica", AckedFlushesDurable([]Op{acked}, []Entry{committed}, final, back), 1, "node-2 ends at task 2 cursor 89860000000000000050")
	rejected := committed
	rejected.Err = fsm.ErrStaleEpoch
	expect(t, "committed only as a rejection", AckedFlushesDurable([]Op{acked}, []Entry{rejected}, final, nil), 1, "not in the committed log")
}

func TestCursorForward(t *testing.T) {
	fl := func(i uint64, task uint64, cursor string) Entry {
		return entry(i, int(i), &fsm.Flush{Shard: "s", Node: "a", Epoch: 1, TaskID: task, Cursor: cursor}, nil, view("s", "a", 1, task, "", 9999), view("s", "a", 1, task, cursor, 9999))
	}
	expect(t, "forward", CursorForward([]Entry{fl(1, 1, "A1"), fl(2, 1, "A2"), fl(3, 2, "A0")}, nil), 0, "")
	expect(t, "back within a task", CursorForward([]Entry{fl(1, 1, "A1"), fl(2, 1, "A3"), fl(3, 1, "A2")}, nil), 1, "cursor went back from A3")
	expect(t, "task back", CursorForward([]Entry{fl(1, 2, "A1"), fl(2, 1, "A3")}, nil), 1, "task went back")
	ops := []Op{
		op("a", 0, 10, &fsm.Flush{Shard: "s", Node: "a", Epoch: 1, TaskID: 1, Cursor: "A5"}, &fsm.Result{}, nil),
		op("a", 20, 30, &fsm.Flush{Shard: "s", Node: "a", Epoch: 1, TaskID: 1, Cursor: "A4"}, &fsm.Result{}, nil),
	}
	expect(t, "acknowledged back", CursorForward(nil, ops), 1, "after an earlier acknowledged flush reached A5")
	ops[1].Start = at(5) // concurrent: either order is possible
	expect(t, "concurrent acks", CursorForward(nil, ops), 0, "")
}

func TestGroupSerial(t *testing.T) {
	a := entry(1, 0, &fsm.Claim{Shard: "g1-0", Node: "a"}, nil, view("g1-0", "", 0, 0, "", 0), view("g1-0", "a", 1, 0, "", 10000))
	b := entry(2, 100, &fsm.Claim{Shard: "g1-1", Node: "b"}, nil, view("g1-1", "", 0, 0, "", 0), view("g1-1", "b", 1, 0, "", 10000))
	expect(t, "two live claims in a group", GroupSerial([]Entry{a, b}), 1, "group 1 has live claims [g1-0@a g1-1@b]")
	b.Time = at(20000) // a's lease lapsed
	expect(t, "after the lease", GroupSerial([]Entry{a, b}), 0, "")
}

func TestCallOwnership(t *testing.T) {
	entries := []Entry{
		entry(1, 0, &fsm.Claim{Shard: "s", Node: "a"}, nil, view("s", "", 0, 0, "", 0), view("s", "a", 1, 0, "", 10000)),
		entry(2, 1000, &fsm.RevokeNode{Node: "a"}, nil, view("s", "a", 1, 0, "", 10000), view("s", "", 2, 0, "", 10000)),
		entry(3, 1100, &fsm.Claim{Shard: "s", Node: "b", Epoch: 2}, nil, view("s", "", 2, 0, "", 0), view("s", "b", 3, 0, "", 20000)),
	}
	cards := map[string]string{"C1": "s", "C2": "s"}
	call := func(tag string, from, to int) sim.CallRecord {
		return sim.CallRecord{Account: "x", Tag: tag, Start: at(from), End: at(to), ICCIDs: []string{"C1", "C2"}}
	}
	ok := []sim.CallRecord{call("a", 10, 50), call("a", 900, 1500), call("b", 1200, 1300)}
	expect(t, "one in-flight batch", CallOwnership(ok, entries, cards), 0, "")
	zombie := append(ok, call("a", 1600, 1700))
	expect(t, "zombie keeps calling", CallOwnership(zombie, entries, cards), 1, "2 carrier calls outside the tenure")
	// One batch per account may be out when the claim moves.
	other := call("a", 950, 1400)
	other.Account = "y"
	expect(t, "one in-flight batch per account", CallOwnership(append(ok, other), entries, cards), 0, "")
	again := call("a", 1500, 1600)
	again.Account = "y"
	expect(t, "second batch of an account", CallOwnership(append(ok, other, again), entries, cards), 1, "account y")
	stranger := []sim.CallRecord{call("c", 10, 20)}
	expect(t, "never owned", CallOwnership(stranger, entries, cards), 1, "without ever holding its claim")
}

func TestQuotaRespected(t *testing.T) {
	st := sim.Stats{Accounts: map[string]sim.AccountStats{
		"ok":   {Calls: 10, Accepted: 10, MaxConcurrent: 2},
		"over": {Calls: 10, Accepted: 8, Rejected: 2, RejectedRate: 2, MaxConcurrent: 1},
	}}
	expect(t, "over quota", QuotaRespected(st, map[string]Quota{"ok": {MaxConcurrent: 2}}), 1, "account over: 2 calls over quota")
	expect(t, "concurrency", QuotaRespected(sim.Stats{Accounts: map[string]sim.AccountStats{"ok": {MaxConcurrent: 3}}}, map[string]Quota{"ok": {MaxConcurrent: 2}}), 1, "3 concurrent calls, limit 2")
}

func TestConverged(t *testing.T) {
	stop := at(0)
	cards := []fsm.Card{
		{ICCID: "A", SyncedAt: at(5000), ValidUntil: at(305000)},
		{ICCID: "B", SyncedAt: at(-1000), ValidUntil: at(299000)}, // still valid at the stop
	}
	expect(t, "converged", Converged(cards, stop, 10*time.Second, at(11000)), 0, "")
	late := append(cards, fsm.Card{ICCID: "C", SyncedAt: at(15000)})
	expect(t, "synced late", Converged(late, stop, 10*time.Second, at(16000)), 1, "card C synced 15s after")
	never := append(cards, fsm.Card{ICCID: "D", Shard: "s"})
	expect(t, "never synced", Converged(never, stop, 10*time.Second, at(11000)), 1, "card D")
	expect(t, "not yet judged", Converged(never, stop, 10*time.Second, at(9000)), 0, "")
}

func TestDigestsAgree(t *testing.T) {
	expect(t, "equal", DigestsAgree([]Digest{{"a", 10, "x"}, {"b", 10, "x"}, {"c", 9, "y"}}), 0, "")
	expect(t, "differ", DigestsAgree([]Digest{{"a", 10, "x"}, {"b", 10, "z"}}), 1, "index 10")
	expect(t, "nothing compared", DigestsAgree([]Digest{{"a", 10, "x"}, {"b", 11, "z"}}), 1, "nothing compared")
}

func TestLinearizable(t *testing.T) {
	groups := map[string]int{"s": 1}
	good := []Op{
		op("a", 0, 10, &fsm.Claim{Shard: "s", Node: "a", Epoch: 0}, &fsm.Result{Epoch: 1}, nil),
		op("a", 20, 30, &fsm.StartTask{Shard: "s", Node: "a", Epoch: 1}, &fsm.Result{Epoch: 1, TaskID: 1}, nil),
		op("a", 40, 50, &fsm.Flush{Shard: "s", Node: "a", Epoch: 1, TaskID: 1, Cursor: "A1"}, &fsm.Result{Epoch: 1, TaskID: 1}, nil),
		op("b", 45, 60, &fsm.Claim{Shard: "s", Node: "b", Epoch: 1}, nil, fsm.ErrClaimedElsewhere),
		op("c", 70, 80, &fsm.RevokeNode{Node: "a"}, &fsm.Result{}, nil),
		op("a", 90, 100, &fsm.Flush{Shard: "s", Node: "a", Epoch: 1, TaskID: 1, Cursor: "A2"}, nil, fsm.ErrStaleEpoch),
		op("b", 110, 120, &fsm.Claim{Shard: "s", Node: "b", Epoch: 2}, nil, errors.New("context deadline exceeded")),
		op("b", 130, 140, &fsm.Claim{Shard: "s", Node: "b", Epoch: 2}, nil, fsm.ErrStaleEpoch),
	}
	expect(t, "good", Linearizable(good, groups, 10*time.Second), 0, "")

	// A retried claim applied twice: the proposer is told "stale epoch" for a claim that
	// was in fact granted, then its flush with that epoch is accepted.
	dup := []Op{
		op("a", 0, 10, &fsm.Claim{Shard: "s", Node: "a", Epoch: 0}, nil, fsm.ErrStaleEpoch),
		op("a", 20, 30, &fsm.StartTask{Shard: "s", Node: "a", Epoch: 1}, &fsm.Result{Epoch: 1, TaskID: 1}, nil),
	}
	expect(t, "effect without a cause", Linearizable(dup, groups, 10*time.Second), 1, "admit no linearization")

	// Two owners at one epoch.
	split := []Op{
		op("a", 0, 10, &fsm.Claim{Shard: "s", Node: "a", Epoch: 0}, &fsm.Result{Epoch: 1}, nil),
		op("b", 20, 30, &fsm.Claim{Shard: "s", Node: "b", Epoch: 0}, &fsm.Result{Epoch: 1}, nil),
	}
	expect(t, "split brain", Linearizable(split, groups, 10*time.Second), 1, "shard s")

	// A flush acknowledged with a cursor behind an earlier acknowledged one.
	back := append(append([]Op{}, good[:3]...),
		op("a", 60, 65, &fsm.Flush{Shard: "s", Node: "a", Epoch: 1, TaskID: 1, Cursor: "A0"}, &fsm.Result{Epoch: 1, TaskID: 1}, nil))
	expect(t, "cursor back acknowledged", Linearizable(back, groups, 10*time.Second), 1, "shard s")

	// A claim that starts the task in the same entry: the task counts from the claim on,
	// and a running task is not started again by the next claim.
	startGood := []Op{
		op("a", 0, 10, &fsm.Claim{Shard: "s", Node: "a", Epoch: 0, StartTask: true}, &fsm.Result{Epoch: 1, TaskID: 1}, nil),
		op("a", 20, 30, &fsm.Flush{Shard: "s", Node: "a", Epoch: 1, TaskID: 1, Cursor: "A1"}, &fsm.Result{Epoch: 1, TaskID: 1}, nil),
		op("a", 40, 50, &fsm.Claim{Shard: "s", Node: "a", Epoch: 1, StartTask: true}, &fsm.Result{Epoch: 2, TaskID: 1}, nil),
		op("a", 60, 70, &fsm.Flush{Shard: "s", Node: "a", Epoch: 2, TaskID: 1, Cursor: "A2", Done: true}, &fsm.Result{Epoch: 2, TaskID: 1}, nil),
		op("a", 80, 90, &fsm.Claim{Shard: "s", Node: "a", Epoch: 2, StartTask: true}, &fsm.Result{Epoch: 3, TaskID: 2}, nil),
		op("a", 100, 110, &fsm.Flush{Shard: "s", Node: "a", Epoch: 3, TaskID: 2, Cursor: "B1"}, &fsm.Result{Epoch: 3, TaskID: 2}, nil),
	}
	expect(t, "claim starts the task", Linearizable(startGood, groups, 10*time.Second), 0, "")
	restarted := append(append([]Op{}, startGood[:2]...),
		op("a", 40, 50, &fsm.Claim{Shard: "s", Node: "a", Epoch: 1, StartTask: true}, &fsm.Result{Epoch: 2, TaskID: 2}, nil))
	expect(t, "running task started again by a claim", Linearizable(restarted, groups, 10*time.Second), 1, "shard s")
}

func TestRunReport(t *testing.T) {
	r := Run(History{Digests: []Digest{{"a", 1, "x"}, {"b", 1, "y"}}}, time.Second)
	if len(r.Violations) != 1 || !strings.Contains(r.String(), CheckDigest) {
		t.Fatalf("report: %v", r)
	}
}
