package fsm

import (
	"errors"
	"testing"
	"time"
)

func active(used int64) *CardData {
	return &CardData{Status: "active", RawStatus: "2", RatePlan: "IOT-100M", DataUsedBytes: used, UsagePeriod: "2025-11",
		ActivatedAt: t0.Add(-24 * time.Hour)}
}

// oneShard sets up enterprise e1 with cards 0..n-1 in one shard and returns its id.
func oneShard(h *harness, n int) string {
	h.t.Helper()
	h.setupCatalog("e1")
	h.importRange("e1", 0, n, 64, 500)
	return ShardID(GroupOf("e1", 64), 0)
}

func TestFlushRules(t *testing.T) {
	h := newHarness(t, nil)
	s := oneShard(h, 6)
	ep, task := h.claimTask(s, "n1")
	base := Flush{Shard: s, Node: "n1", Epoch: ep, TaskID: task, Lease: time.Minute}
	with := func(f func(*Flush)) Flush { p := base; f(&p); return p }

	h.ok(with(func(p *Flush) {
		p.Cursor = iccid(2)
		p.Results = []CardResult{{ICCID: iccid(1), Data: active(1)}, {ICCID: iccid(2), Data: active(2)}}
	}))
	tests := []struct {
		name string
		p    Flush
		want error
	}{
		{"cursor back", with(func(p *Flush) { p.Cursor = iccid(1) }), ErrCursorBack},
		{"cursor reset", with(func(p *Flush) { p.Cursor = "" }), ErrCursorBack},
		{"not owner", with(func(p *Flush) { p.Node = "n2"; p.Cursor = iccid(3) }), ErrNotOwner},
		{"card of another shard", with(func(p *Flush) {
			p.Cursor = iccid(3)
			p.Results = []CardResult{{ICCID: iccid(3)}, {ICCID: iccid(999)}}
		}), ErrInvalid},
		{"duplicate card", with(func(p *Flush) {
			p.Cursor = iccid(3)
			p.Results = []CardResult{{ICCID: iccid(3)}, {ICCID: iccid(2)}, {ICCID: iccid(3)}}
		}), ErrInvalid},
		{"bad cursor", with(func(p *Flush) { p.Cursor = "nope" }), ErrInvalid},
		{"negative lease", with(func(p *Flush) { p.Cursor = iccid(3); p.Lease = -time.Second }), ErrInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h.t = t
			h.fail(tc.p, tc.want)
		})
	}
	h.t = t
	// Rejected flushes wrote nothing: card 3 unsynced, cursor unchanged.
	if c := h.card(iccid(3)); c.SyncCount != 0 {
		t.Fatalf("rejected flush wrote card 3: %+v", c)
	}
	if st := h.shard(s); st.Checkpoint.Cursor != iccid(2) || st.Checkpoint.Synced != 2 {
		t.Fatalf("checkpoint %+v", st.Checkpoint)
	}
	// The same cursor again is not "back" (a retried flush).
	h.ok(with(func(p *Flush) { p.Cursor = iccid(2) }))
}

func TestFlushEffects(t *testing.T) {
	h := newHarness(t, nil)
	s := oneShard(h, 4)
	ep, task := h.claimTask(s, "n1")
	h.advance(5 * time.Second)
	r := h.ok(Flush{Shard: s, Node: "n1", Epoch: ep, TaskID: task, Cursor: iccid(2), Lease: time.Minute, Skipped: 1, Failed: 1,
		Results: []CardResult{
			{ICCID: iccid(1), Data: active(100)},
			{ICCID: iccid(2), ErrKind: "not_found", ErrMsg: "card unknown to carrier"},
		}})
	if r.Updated != 2 || r.Epoch != ep || r.TaskID != task {
		t.Fatalf("result %+v", r)
	}
	c1 := h.card(iccid(1))
	if c1.Data.Status != "active" || c1.Data.DataUsedBytes != 100 || !c1.SyncedAt.Equal(h.now) ||
		!c1.ValidUntil.Equal(h.now.Add(time.Hour)) || c1.SyncedEpoch != ep || c1.SyncCount != 1 || !c1.Data.ActivatedAt.Equal(t0.Add(-24*time.Hour)) {
		t.Fatalf("card 1: %+v", c1)
	}
	c2 := h.card(iccid(2))
	if c2.ErrKind != "not_found" || c2.ErrMsg == "" || c2.SyncCount != 1 || !c2.ValidUntil.Equal(h.now.Add(time.Hour)) {
		t.Fatalf("card 2: %+v", c2)
	}
	st := h.shard(s)
	cp := st.Checkpoint
	if cp.Cursor != iccid(2) || cp.Synced != 1 || cp.Skipped != 1 || cp.Failed != 1 || !cp.UpdatedAt.Equal(h.now) ||
		!st.LeaseUntil.Equal(h.now.Add(time.Minute)) {
		t.Fatalf("checkpoint %+v lease %v", cp, st.LeaseUntil)
	}

	// A later result without error clears the error; nil Data keeps the data.
	h.advance(time.Second)
	h.ok(Flush{Shard: s, Node: "n1", Epoch: ep, TaskID: task, Cursor: iccid(3), Results: []CardResult{{ICCID: iccid(2)}}})
	if c := h.card(iccid(2)); c.ErrKind != "" || c.ErrMsg != "" || c.SyncCount != 2 {
		t.Fatalf("card 2 after clear: %+v", c)
	}
	if st2 := h.shard(s); !st2.LeaseUntil.Equal(st.LeaseUntil) {
		t.Fatalf("zero lease renewed the lease: %v", st2.LeaseUntil)
	}

	// Done: round recorded, next run = earliest valid_until (card 0 never synced: now).
	h.advance(time.Second)
	h.ok(Flush{Shard: s, Node: "n1", Epoch: ep, TaskID: task, Cursor: iccid(3), Done: true, Results: []CardResult{{ICCID: iccid(3), Data: active(3)}}})
	st = h.shard(s)
	if st.Checkpoint.State != StateDone || !st.Checkpoint.NextRunAt.Equal(h.now) || len(st.History) != 1 {
		t.Fatalf("after done: %+v", st)
	}
	rd := st.History[0]
	if rd.TaskID != task || rd.Epoch != ep || rd.Owner != "n1" || rd.Synced != 3 || rd.Failed != 1 || !rd.EndedAt.Equal(h.now) || !rd.StartedAt.Equal(t0) {
		t.Fatalf("round %+v", rd)
	}
	h.fail(Flush{Shard: s, Node: "n1", Epoch: ep, TaskID: task, Cursor: iccid(3)}, ErrInvalid)

	// Next task syncs card 0 too: next run is the earliest validity end.
	st0 := h.ok(StartTask{Shard: s, Node: "n1", Epoch: ep})
	h.advance(time.Minute)
	h.ok(Flush{Shard: s, Node: "n1", Epoch: ep, TaskID: st0.TaskID, Cursor: iccid(0), Done: true, Release: true, Reason: "round finished",
		Results: []CardResult{{ICCID: iccid(0), Data: active(0)}}})
	st = h.shard(s)
	earliest := h.card(iccid(1)).ValidUntil
	if !st.Checkpoint.NextRunAt.Equal(earliest) || st.Owner != "" || st.Checkpoint.Reason != "round finished" || st.Epoch != ep {
		t.Fatalf("after done+release: %+v (earliest %v)", st, earliest)
	}
	if c, _ := h.f.Counts(); c.Claims != 0 {
		t.Fatalf("claims after release: %d", c.Claims)
	}
	// An explicit NextRunAt (backoff) wins.
	ep2, task2 := h.claimTask(s, "n1")
	backoff := h.now.Add(10 * time.Minute)
	h.ok(Flush{Shard: s, Node: "n1", Epoch: ep2, TaskID: task2, Release: true, Reason: "rate limited", NextRunAt: backoff})
	if st = h.shard(s); !st.Checkpoint.NextRunAt.Equal(backoff) || st.Checkpoint.State != StateRunning {
		t.Fatalf("backoff: %+v", st.Checkpoint)
	}
}

func TestHistoryBounded(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.HistoryPerShard = 3 })
	s := oneShard(h, 2)
	ep, _ := h.claimTask(s, "n1")
	var last uint64
	for i := 0; i < 5; i++ {
		if i > 0 {
			last = h.ok(StartTask{Shard: s, Node: "n1", Epoch: ep}).TaskID
		} else {
			last = 1
		}
		h.advance(time.Second)
		h.ok(Flush{Shard: s, Node: "n1", Epoch: ep, TaskID: last, Done: true})
	}
	st := h.shard(s)
	if len(st.History) != 3 || st.History[0].TaskID != last-2 || st.History[2].TaskID != last {
		t.Fatalf("history %+v", st.History)
	}
}

func TestChangeEvents(t *testing.T) {
	h := newHarness(t, nil)
	s := oneShard(h, 5)
	ep, task := h.claimTask(s, "n1")
	flush := func(cursor int, results ...CardResult) uint64 {
		h.t.Helper()
		h.advance(time.Second)
		h.ok(Flush{Shard: s, Node: "n1", Epoch: ep, TaskID: task, Cursor: iccid(cursor), Results: results})
		return h.idx
	}
	idx1 := flush(1, CardResult{ICCID: iccid(0), Data: active(10)}, CardResult{ICCID: iccid(1), Data: active(10)})
	// Same data, only the usage period and activation differ: no event. Data used
	// changes: event. Error appears: event.
	same := active(10)
	same.UsagePeriod = "2025-12"
	same.ActivatedAt = t0
	idx2 := flush(2, CardResult{ICCID: iccid(0), Data: same}, CardResult{ICCID: iccid(1), Data: active(11)},
		CardResult{ICCID: iccid(2), ErrKind: "not_found"})
	// Error stays: no event. Error clears with same (zero) data: event.
	idx3 := flush(3, CardResult{ICCID: iccid(2), ErrKind: "not_found"}, CardResult{ICCID: iccid(3)})
	idx4 := flush(3, CardResult{ICCID: iccid(2)})

	got, oldest, err := h.f.Changes(0, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	wantSeqs := []uint64{idx1 << 16, idx1<<16 | 1, idx2<<16 | 1, idx2<<16 | 2, idx4 << 16}
	_ = idx3
	if len(got) != len(wantSeqs) || oldest != wantSeqs[0] {
		t.Fatalf("got %d changes (oldest %d): %+v", len(got), oldest, got)
	}
	for i, c := range got {
		if c.Seq != wantSeqs[i] || c.Enterprise != "e1" || c.Time.IsZero() {
			t.Fatalf("change %d: %+v want seq %d", i, c, wantSeqs[i])
		}
	}
	if c := got[2]; c.Before.DataUsedBytes != 10 || c.After.DataUsedBytes != 11 || c.ICCID != iccid(1) {
		t.Fatalf("data change: %+v", c)
	}
	if c := got[3]; c.BeforeErr != "" || c.AfterErr != "not_found" {
		t.Fatalf("error appearing: %+v", c)
	}
	if c := got[4]; c.BeforeErr != "not_found" || c.AfterErr != "" {
		t.Fatalf("error clearing: %+v", c)
	}
	// Paging and filters.
	page, _, _ := h.f.Changes(got[1].Seq, 2, "")
	if len(page) != 2 || page[0].Seq != got[2].Seq {
		t.Fatalf("page %+v", page)
	}
	if other, _, _ := h.f.Changes(0, 0, "e2"); len(other) != 0 {
		t.Fatalf("enterprise filter: %+v", other)
	}
	if none, _, _ := h.f.Changes(^uint64(0), 0, ""); len(none) != 0 {
		t.Fatal("after max returned events")
	}
}

func TestChangeRetention(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.ChangeRetention = 5 })
	s := oneShard(h, 4)
	ep, task := h.claimTask(s, "n1")
	var used int64
	for round := 0; round < 3; round++ {
		var res []CardResult
		for i := 0; i < 4; i++ {
			used++
			res = append(res, CardResult{ICCID: iccid(i), Data: active(used)})
		}
		h.ok(Flush{Shard: s, Node: "n1", Epoch: ep, TaskID: task, Cursor: iccid(3), Results: res})
	}
	last := h.idx
	got, oldest, _ := h.f.Changes(0, 0, "")
	if len(got) != 5 {
		t.Fatalf("retained %d, want 5", len(got))
	}
	// The newest five: the last flush's four and the previous flush's last.
	if got[0].Seq != (last-1)<<16|3 || oldest != got[0].Seq || got[4].Seq != last<<16|3 {
		t.Fatalf("retained %v..%v oldest %v", got[0].Seq, got[4].Seq, oldest)
	}
}

func TestResync(t *testing.T) {
	h := newHarness(t, nil)
	s := oneShard(h, 4)
	ep, task := h.claimTask(s, "n1")
	var res []CardResult
	for i := 0; i < 4; i++ {
		res = append(res, CardResult{ICCID: iccid(i), Data: active(1)})
	}
	h.ok(Flush{Shard: s, Node: "n1", Epoch: ep, TaskID: task, Cursor: iccid(3), Results: res, Done: true, Release: true})
	if st := h.shard(s); !st.Checkpoint.NextRunAt.Equal(h.now.Add(time.Hour)) {
		t.Fatalf("next run %v", st.Checkpoint.NextRunAt)
	}
	h.fail(Resync{}, ErrInvalid)
	h.fail(Resync{ICCIDs: []string{iccid(1), iccid(77)}}, ErrInvalid)
	h.fail(Resync{Shard: "g0-77"}, ErrNotFound)
	h.advance(time.Minute)
	if r := h.ok(Resync{ICCIDs: []string{iccid(1)}}); r.Updated != 1 {
		t.Fatalf("resync %+v", r)
	}
	if c := h.card(iccid(1)); !c.ValidUntil.IsZero() {
		t.Fatalf("card still valid: %v", c.ValidUntil)
	}
	if c := h.card(iccid(2)); c.ValidUntil.IsZero() {
		t.Fatal("other card reset")
	}
	if st := h.shard(s); !st.Checkpoint.NextRunAt.Equal(h.now) {
		t.Fatalf("shard not due: %v", st.Checkpoint.NextRunAt)
	}
	if r := h.ok(Resync{Enterprise: "e1", Shard: s}); r.Updated != 4 {
		t.Fatalf("resync enterprise %+v", r)
	}
	if c := h.card(iccid(3)); !c.ValidUntil.IsZero() {
		t.Fatal("enterprise resync missed a card")
	}
}

func TestUnknownAndCorruptCommands(t *testing.T) {
	h := newHarness(t, nil)
	oneShard(h, 1)
	good := cmd(t, Claim{Shard: "g1-0", Node: "n", Lease: time.Second}, h.now)
	unstamped, _ := Encode(TypeClaim, Claim{})
	for name, data := range map[string][]byte{
		"empty":     nil,
		"header":    good[:3],
		"version":   append([]byte{9}, good[1:]...),
		"type":      append([]byte{1, 77}, good[2:]...),
		"payload":   append(append([]byte{}, good[:headerLen]...), 0xdf, 0xff, 0xff, 0xff, 0xff),
		"unstamped": unstamped,
	} {
		h.idx++
		resp := h.f.Apply(&rawLog(h.idx, data)[0])
		err, ok := resp.(error)
		if !ok || !(errors.Is(err, ErrBadCommand) || errors.Is(err, ErrUnknownCommand)) {
			t.Fatalf("%s: got %v", name, resp)
		}
		if h.f.AppliedIndex() != h.idx {
			t.Fatalf("%s: applied index %d, want %d", name, h.f.AppliedIndex(), h.idx)
		}
	}
}
