package fsm

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"testing"
	"time"
)

func TestSubscriptionUpsertRules(t *testing.T) {
	h := newHarness(t, nil)
	valid := UpsertSubscription{ID: "s1", URL: "https://platform.example/hook", Secret: "k"}
	with := func(f func(*UpsertSubscription)) UpsertSubscription { p := valid; f(&p); return p }
	tests := []struct {
		name string
		p    UpsertSubscription
	}{
		{"empty id", with(func(p *UpsertSubscription) { p.ID = "" })},
		{"id with space", with(func(p *UpsertSubscription) { p.ID = "a b" })},
		{"no scheme", with(func(p *UpsertSubscription) { p.URL = "platform.example/hook" })},
		{"ftp", with(func(p *UpsertSubscription) { p.URL = "ftp://platform.example/" })},
		{"no host", with(func(p *UpsertSubscription) { p.URL = "http:///x" })},
		{"unknown kind", with(func(p *UpsertSubscription) { p.Kinds = []string{"colour"} })},
		{"no secret on create", with(func(p *UpsertSubscription) { p.Secret = "" })},
		{"after beyond head", with(func(p *UpsertSubscription) { v := uint64(1) << 60; p.After = &v })},
		{"bad enterprise", with(func(p *UpsertSubscription) { p.Enterprise = "x\ny" })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.fail(tt.p, ErrInvalid)
		})
	}
	subs, err := h.f.Subscriptions()
	if err != nil || len(subs) != 0 {
		t.Fatalf("rejected upserts wrote %v %v", subs, err)
	}
}

func TestSubscriptionLifecycle(t *testing.T) {
	h := newHarness(t, nil)
	f := newFlusher(h, 3)
	before := f.flush(CardResult{ICCID: iccid(0), Data: active(1)})
	h.ok(UpsertSubscription{ID: "s1", URL: "http://127.0.0.1:1/hook", Enterprise: "e1",
		Kinds: []string{KindError, KindStatus, KindStatus}, Secret: "k1"})
	s, err := h.f.Subscription("s1")
	if err != nil {
		t.Fatal(err)
	}
	// A new subscription starts after the events that existed when it was created.
	if s.Cursor != SeqOfIndex(h.idx) || s.Cursor <= before<<16 || s.Epoch != 1 || s.Owner != "" {
		t.Fatalf("new subscription %+v", s)
	}
	if !slices.Equal(s.Kinds, []string{KindStatus, KindError}) {
		t.Fatalf("kinds %v", s.Kinds)
	}
	// Claim: compare-and-set on the epoch.
	h.fail(ClaimSubscription{ID: "s1", Node: "n1", Epoch: 0}, ErrStaleEpoch)
	h.fail(ClaimSubscription{ID: "nope", Node: "n1", Epoch: 1}, ErrNotFound)
	r := h.ok(ClaimSubscription{ID: "s1", Node: "n1", Epoch: 1})
	ep1 := r.Epoch
	ev := f.flush(CardResult{ICCID: iccid(1), Data: active(1)})
	// Advance: only the holder, never backwards, never past the head.
	h.fail(AdvanceSubscription{ID: "s1", Node: "n2", Epoch: ep1, Cursor: ev << 16}, ErrNotOwner)
	h.fail(AdvanceSubscription{ID: "s1", Node: "n1", Epoch: ep1 - 1, Cursor: ev << 16}, ErrStaleEpoch)
	h.fail(AdvanceSubscription{ID: "s1", Node: "n1", Epoch: ep1, Cursor: 1}, ErrCursorBack)
	h.fail(AdvanceSubscription{ID: "s1", Node: "n1", Epoch: ep1, Cursor: SeqOfIndex(h.idx + 5)}, ErrInvalid)
	h.ok(AdvanceSubscription{ID: "s1", Node: "n1", Epoch: ep1, Cursor: s.Cursor, Error: "connection refused"})
	h.ok(AdvanceSubscription{ID: "s1", Node: "n1", Epoch: ep1, Cursor: s.Cursor, Error: "HTTP 503"})
	if s, _ = h.f.Subscription("s1"); s.Failures != 2 || s.LastError != "HTTP 503" || s.LastErrorAt.IsZero() {
		t.Fatalf("after failures %+v", s)
	}
	h.ok(AdvanceSubscription{ID: "s1", Node: "n1", Epoch: ep1, Cursor: ev << 16, Delivered: 1})
	if s, _ = h.f.Subscription("s1"); s.Cursor != ev<<16 || s.Delivered != 1 || s.Failures != 0 || s.LastDeliveryAt.IsZero() {
		t.Fatalf("after delivery %+v", s)
	}
	// Another node takes over: the old deliverer is fenced.
	r = h.ok(ClaimSubscription{ID: "s1", Node: "n2", Epoch: ep1})
	h.fail(AdvanceSubscription{ID: "s1", Node: "n1", Epoch: ep1, Cursor: SeqOfIndex(h.idx)}, ErrStaleEpoch)
	ep2 := r.Epoch
	// The deliverer pauses a subscriber that stays down; an operator resumes it.
	h.ok(AdvanceSubscription{ID: "s1", Node: "n2", Epoch: ep2, Cursor: ev << 16, Error: "timeout", Pause: true, Reason: "10 failures in a row"})
	if s, _ = h.f.Subscription("s1"); !s.Paused || s.PauseReason != "10 failures in a row" || s.PausedAt.IsZero() {
		t.Fatalf("paused %+v", s)
	}
	h.ok(SetSubscriptionPaused{ID: "s1", Paused: false})
	if s, _ = h.f.Subscription("s1"); s.Paused || s.PauseReason != "" || s.Failures != 0 || s.Epoch != ep2 {
		t.Fatalf("resumed %+v", s)
	}
	// Update keeps the cursor and secret unless given; After rewinds and fences.
	h.ok(UpsertSubscription{ID: "s1", URL: "http://127.0.0.1:2/hook"})
	if s, _ = h.f.Subscription("s1"); s.URL != "http://127.0.0.1:2/hook" || s.Secret != "k1" || s.Cursor != ev<<16 || s.Kinds != nil || s.Enterprise != "" {
		t.Fatalf("updated %+v", s)
	}
	zero := uint64(0)
	h.ok(UpsertSubscription{ID: "s1", URL: "http://127.0.0.1:2/hook", After: &zero})
	if s, _ = h.f.Subscription("s1"); s.Cursor != 0 || s.Epoch != ep2+1 || s.Owner != "" {
		t.Fatalf("rewound %+v", s)
	}
	h.fail(AdvanceSubscription{ID: "s1", Node: "n2", Epoch: ep2, Cursor: 0}, ErrStaleEpoch)
	h.ok(DeleteSubscription{ID: "s1"})
	if _, err := h.f.Subscription("s1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted: %v", err)
	}
	h.fail(DeleteSubscription{ID: "s1"}, ErrNotFound)
}

func TestSubscriptionsSurviveSnapshot(t *testing.T) {
	h := newHarness(t, nil)
	h.ok(UpsertSubscription{ID: "s1", URL: "http://127.0.0.1:1/", Secret: "k"})
	h.ok(UpsertSubscription{ID: "s0", URL: "http://127.0.0.1:1/", Secret: "k"})
	h.ok(SetFeedSettings{Settings: FeedSettings{UsageStepBytes: 5, RetentionAge: time.Hour}})
	re := openTest(t, nil)
	if err := re.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, h.f)))); err != nil {
		t.Fatal(err)
	}
	subs, err := re.Subscriptions()
	if err != nil || len(subs) != 2 || subs[0].ID != "s0" {
		t.Fatalf("restored %+v %v", subs, err)
	}
	if fs, _ := re.FeedSettings(); fs.UsageStepBytes != 5 || fs.RetentionAge != time.Hour {
		t.Fatalf("restored settings %+v", fs)
	}
}
