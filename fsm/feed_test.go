package fsm

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func TestChangeKindsAndUsageStep(t *testing.T) {
	const mb = 1 << 20
	base := dataFrom(*active(10 * mb))
	with := func(f func(*dataRec)) dataRec { d := base; f(&d); return d }
	tests := []struct {
		name                string
		after               dataRec
		beforeErr, afterErr string
		step                int64
		want                []string
	}{
		{"unchanged", base, "", "", mb, nil},
		{"usage within a step", with(func(d *dataRec) { d.DataUsedBytes += mb / 2 }), "", "", mb, nil},
		{"usage crosses a step", with(func(d *dataRec) { d.DataUsedBytes += mb }), "", "", mb, []string{KindUsage}},
		{"usage any change without a step", with(func(d *dataRec) { d.DataUsedBytes++ }), "", "", 0, []string{KindUsage}},
		{"monthly reset", with(func(d *dataRec) { d.DataUsedBytes = 0 }), "", "", mb, []string{KindUsage}},
		{"status", with(func(d *dataRec) { d.Status = "suspended"; d.RawStatus = "4" }), "", "", mb, []string{KindStatus}},
		{"raw status only", with(func(d *dataRec) { d.RawStatus = "9" }), "", "", mb, []string{KindStatus}},
		{"rate plan", with(func(d *dataRec) { d.RatePlan = "IOT-1G" }), "", "", mb, []string{KindRatePlan}},
		{"usage period only", with(func(d *dataRec) { d.UsagePeriod = "2099-01" }), "", "", mb, nil},
		{"error appears", base, "", "not_found", mb, []string{KindError}},
		{"error clears", base, "not_found", "", mb, []string{KindError}},
		{"error stays", base, "not_found", "not_found", mb, nil},
		{"several", with(func(d *dataRec) { d.Status = "x"; d.RatePlan = "y" }), "", "not_owned", mb, []string{KindStatus, KindRatePlan, KindError}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := kindNames(changeKinds(base, tt.after, tt.beforeErr, tt.afterErr, tt.step))
			if !slices.Equal(got, tt.want) {
				t.Fatalf("kinds %v, want %v", got, tt.want)
			}
		})
	}
}

// flusher flushes results for shard s held by n1 and returns the flush's raft index.
type flusher struct {
	h        *harness
	s        string
	ep, task uint64
}

func newFlusher(h *harness, cards int) *flusher {
	s := oneShard(h, cards)
	ep, task := h.claimTask(s, "n1")
	return &flusher{h: h, s: s, ep: ep, task: task}
}

func (f *flusher) flush(results ...CardResult) uint64 {
	f.h.t.Helper()
	f.h.ok(Flush{Shard: f.s, Node: "n1", Epoch: f.ep, TaskID: f.task, Cursor: iccid(0), Results: results})
	return f.h.idx
}

func TestFeedUsageStepSetting(t *testing.T) {
	h := newHarness(t, nil)
	f := newFlusher(h, 2)
	h.ok(SetFeedSettings{Settings: FeedSettings{UsageStepBytes: 1000}})
	h.fail(SetFeedSettings{Settings: FeedSettings{UsageStepBytes: -1}}, ErrInvalid)
	h.fail(SetFeedSettings{Settings: FeedSettings{RetentionAge: -time.Second}}, ErrInvalid)
	if fs, err := h.f.FeedSettings(); err != nil || fs.UsageStepBytes != 1000 {
		t.Fatalf("settings %+v %v", fs, err)
	}
	first := f.flush(CardResult{ICCID: iccid(0), Data: active(100)})  // first data: event
	f.flush(CardResult{ICCID: iccid(0), Data: active(900)})           // same step: none
	f.flush(CardResult{ICCID: iccid(0), Data: active(900)})           // unchanged re-sync: none
	third := f.flush(CardResult{ICCID: iccid(0), Data: active(1000)}) // crosses: event
	p, err := h.f.Feed(FeedQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Changes) != 2 || p.Changes[0].Seq != first<<16 || p.Changes[1].Seq != third<<16 {
		t.Fatalf("changes %+v", p.Changes)
	}
	if !slices.Equal(p.Changes[1].Kinds, []string{KindUsage}) {
		t.Fatalf("kinds %v", p.Changes[1].Kinds)
	}
	if p.Next != SeqOfIndex(h.idx) || p.AppliedIndex != h.idx {
		t.Fatalf("next %d applied %d, want head of %d", p.Next, p.AppliedIndex, h.idx)
	}
}

func TestFeedFiltersAndScanBound(t *testing.T) {
	h := newHarness(t, nil)
	f := newFlusher(h, 4)
	f.flush(CardResult{ICCID: iccid(0), Data: active(1)}, CardResult{ICCID: iccid(1), Data: active(1)})
	st := active(1)
	st.Status = "suspended"
	idx := f.flush(CardResult{ICCID: iccid(0), Data: st}, CardResult{ICCID: iccid(1), Data: active(2)},
		CardResult{ICCID: iccid(2), ErrKind: "not_found"})

	tests := []struct {
		name     string
		q        FeedQuery
		want     []uint64
		wantNext uint64
	}{
		{"all", FeedQuery{}, []uint64{(idx - 1) << 16, (idx-1)<<16 | 1, idx << 16, idx<<16 | 1, idx<<16 | 2}, SeqOfIndex(idx)},
		{"status only", FeedQuery{Kinds: []string{KindStatus}}, []uint64{(idx - 1) << 16, (idx-1)<<16 | 1, idx << 16}, SeqOfIndex(idx)},
		{"error only", FeedQuery{Kinds: []string{KindError}}, []uint64{idx<<16 | 2}, SeqOfIndex(idx)},
		{"other enterprise", FeedQuery{Enterprise: "e2"}, nil, SeqOfIndex(idx)},
		{"limit", FeedQuery{Limit: 2}, []uint64{(idx - 1) << 16, (idx-1)<<16 | 1}, (idx-1)<<16 | 1},
		{"scan bound", FeedQuery{Kinds: []string{KindError}, MaxScan: 2}, nil, (idx-1)<<16 | 1},
		{"after", FeedQuery{After: idx << 16}, []uint64{idx<<16 | 1, idx<<16 | 2}, SeqOfIndex(idx)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := h.f.Feed(tt.q)
			if err != nil {
				t.Fatal(err)
			}
			var got []uint64
			for _, c := range p.Changes {
				got = append(got, c.Seq)
			}
			if !slices.Equal(got, tt.want) || p.Next != tt.wantNext {
				t.Fatalf("got %v next %d, want %v next %d", got, p.Next, tt.want, tt.wantNext)
			}
		})
	}
	if _, err := h.f.Feed(FeedQuery{Kinds: []string{"colour"}}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("unknown kind: %v", err)
	}
}

func TestFeedRetentionCountAndTrimmed(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.ChangeRetention = 3 })
	f := newFlusher(h, 4)
	var used int64
	round := func() uint64 {
		var res []CardResult
		for i := 0; i < 4; i++ {
			used++
			res = append(res, CardResult{ICCID: iccid(i), Data: active(used)})
		}
		return f.flush(res...)
	}
	first := round()
	p, err := h.f.Feed(FeedQuery{After: 0})
	if !errors.Is(err, ErrFeedTrimmed) || p.Trimmed != first<<16 || p.Oldest != first<<16|1 {
		t.Fatalf("after 0 with a trimmed event: %+v %v", p, err)
	}
	// A reader that has the trimmed event continues.
	if p, err := h.f.Feed(FeedQuery{After: first << 16}); err != nil || len(p.Changes) != 3 {
		t.Fatalf("reader at the trimmed point: %d %v", len(p.Changes), err)
	}
	second := round()
	if _, err := h.f.Feed(FeedQuery{After: first<<16 | 3}); !errors.Is(err, ErrFeedTrimmed) {
		t.Fatalf("reader behind retention: %v", err)
	}
	p, err = h.f.Feed(FeedQuery{After: second << 16})
	if err != nil || len(p.Changes) != 3 || p.Oldest != second<<16|1 {
		t.Fatalf("newest: %+v %v", p, err)
	}
}

func TestFeedRetentionAge(t *testing.T) {
	h := newHarness(t, nil)
	f := newFlusher(h, 2)
	h.ok(SetFeedSettings{Settings: FeedSettings{RetentionAge: time.Hour}})
	old := f.flush(CardResult{ICCID: iccid(0), Data: active(1)})
	h.advance(30 * time.Minute)
	mid := f.flush(CardResult{ICCID: iccid(1), Data: active(1)})
	h.advance(31 * time.Minute)
	// Any command moves the feed clock, not only flushes.
	h.ok(SetMaintenance{On: false})
	p, err := h.f.Feed(FeedQuery{After: old << 16})
	if err != nil || len(p.Changes) != 1 || p.Changes[0].Seq != mid<<16 || p.Trimmed != old<<16 {
		t.Fatalf("after 61 minutes: %+v %v", p, err)
	}
	// A leader whose clock is behind does not bring old events back or drop fewer.
	h.advance(-20 * time.Minute)
	h.ok(SetMaintenance{On: false})
	if p, err := h.f.Feed(FeedQuery{After: old << 16}); err != nil || len(p.Changes) != 1 {
		t.Fatalf("clock behind: %+v %v", p, err)
	}
	h.advance(50 * time.Minute)
	h.ok(SetMaintenance{On: false})
	if p, err := h.f.Feed(FeedQuery{After: old << 16}); !errors.Is(err, ErrFeedTrimmed) || p.Oldest != 0 {
		t.Fatalf("all aged out: %+v %v", p, err)
	}
}

// TestFeedRetentionBatchingAgnostic applies the same log one entry per batch and in one
// batch: retention by age and count leaves the same state.
func TestFeedRetentionBatchingAgnostic(t *testing.T) {
	build := func(h *harness) [][]byte {
		var cmds [][]byte
		add := func(p any) { cmds = append(cmds, cmd(t, p, h.now)) }
		add(UpsertAccount{Account: Account{ID: "acc-1", Carrier: CarrierOneLink, TTL: time.Hour, CredentialsValid: true}})
		add(UpsertEnterprise{ID: "e1", Accounts: map[string]string{CarrierOneLink: "acc-1"}, InventoryReady: true})
		p := ImportCards{Groups: 64, ShardSize: 500}
		for i := 0; i < 3; i++ {
			p.Cards = append(p.Cards, CardImport{ICCID: iccid(i), Enterprise: "e1", Account: "acc-1"})
		}
		add(p)
		s := ShardID(GroupOf("e1", 64), 0)
		add(Claim{Shard: s, Node: "n1", Epoch: 0, Lease: time.Hour})
		add(StartTask{Shard: s, Node: "n1", Epoch: 1})
		add(SetFeedSettings{Settings: FeedSettings{RetentionAge: 10 * time.Minute}})
		for r := 0; r < 12; r++ {
			h.advance(time.Duration(3+r%4) * time.Minute)
			if r == 7 {
				h.advance(-9 * time.Minute)
			}
			add(Flush{Shard: s, Node: "n1", Epoch: 1, TaskID: 1, Cursor: iccid(0), Lease: time.Hour,
				Results: []CardResult{{ICCID: iccid(r % 3), Data: active(int64(r))}, {ICCID: iccid((r + 1) % 3), Data: active(int64(r + 7))}}})
		}
		return cmds
	}
	digest := func(batch int) string {
		h := newHarness(t, func(c *Config) { c.ChangeRetention = 5 })
		cmds := build(h)
		for i := 0; i < len(cmds); i += batch {
			var logs []*raft.Log
			for j := i; j < min(i+batch, len(cmds)); j++ {
				logs = append(logs, &raft.Log{Index: uint64(j + 1), Type: raft.LogCommand, Data: cmds[j]})
			}
			for k, r := range h.f.ApplyBatch(logs) {
				if _, ok := r.(*Result); !ok {
					t.Fatalf("entry %d: %v", logs[k].Index, r)
				}
			}
		}
		_, d, err := h.f.Digest()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	one, all := digest(1), digest(100)
	if one != all {
		t.Fatalf("digest one-per-batch %s != one batch %s", one, all)
	}
}

func TestWaitApplied(t *testing.T) {
	h := newHarness(t, nil)
	h.setupCatalog("e1")
	idx := h.f.AppliedIndex()
	got := make(chan uint64, 1)
	go func() {
		i, _ := h.f.WaitApplied(context.Background(), idx)
		got <- i
	}()
	select {
	case i := <-got:
		t.Fatalf("returned %d before anything was applied", i)
	case <-time.After(20 * time.Millisecond):
	}
	h.ok(SetMaintenance{On: false})
	select {
	case i := <-got:
		if i != idx+1 {
			t.Fatalf("woke at %d, want %d", i, idx+1)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("not woken by the apply")
	}
	if i, err := h.f.WaitApplied(context.Background(), idx); err != nil || i != idx+1 {
		t.Fatalf("already applied: %d %v", i, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := h.f.WaitApplied(ctx, idx+5); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
}
