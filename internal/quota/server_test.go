package quota

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"
)

func newTestServer(t *testing.T, holdOff time.Duration, lim Limits) *Server {
	t.Helper()
	cfg := DefaultConfig()
	cfg.HoldOff = holdOff
	s, err := NewServer(cfg, func(a string) (Limits, bool) { return lim, a == "acct" }, func(node string) error {
		if node == "revoked" {
			return errors.New("declared departed")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Config)
		ok   bool
	}{
		{"defaults", func(*Config) {}, true},
		{"negative hold-off", func(c *Config) { c.HoldOff = -1 }, false},
		{"safety zero", func(c *Config) { c.Safety = 0 }, false},
		{"safety over one", func(c *Config) { c.Safety = 1.1 }, false},
		{"no max wait", func(c *Config) { c.MaxWait = 0 }, false},
	}
	for _, tt := range tests {
		c := DefaultConfig()
		tt.mod(&c)
		if err := c.Validate(); (err == nil) != tt.ok {
			t.Errorf("%s: err %v", tt.name, err)
		} else if err != nil && !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: %v does not wrap ErrInvalidConfig", tt.name, err)
		}
	}
}

// TestGrantRefusals: every way a grant is refused names its reason with a sentinel.
func TestGrantRefusals(t *testing.T) {
	s := newTestServer(t, time.Hour, Limits{RatePerSec: 10, Burst: 5})
	ctx := context.Background()
	if _, err := s.Grant(ctx, "n1", "acct", 1); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("not leading: %v", err)
	}
	s.Lead(time.Now())
	_, err := s.Grant(ctx, "n1", "acct", 1)
	if !errors.Is(err, ErrHoldOff) || RetryAfter(err) < 59*time.Minute {
		t.Fatalf("hold-off: %v (retry after %v)", err, RetryAfter(err))
	}
	s.Follow()
	s = newTestServer(t, 0, Limits{RatePerSec: 10, Burst: 5})
	s.Lead(time.Now())
	if _, err := s.Grant(ctx, "n1", "other", 1); !errors.Is(err, ErrUnknownAccount) {
		t.Fatalf("unknown account: %v", err)
	}
	if _, err := s.Grant(ctx, "revoked", "acct", 1); !errors.Is(err, ErrRefused) {
		t.Fatalf("revoked node: %v", err)
	}
	if _, err := s.Grant(ctx, "n1", "acct", 0); err == nil {
		t.Fatal("zero tokens granted")
	}
	// 10/s from an empty bucket: 30 tokens take about 3 s, past a 1 s deadline.
	dctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err = s.Grant(dctx, "n1", "acct", 30)
	if !errors.Is(err, ErrTooLate) || RetryAfter(err) < time.Second {
		t.Fatalf("too late: %v (retry after %v)", err, RetryAfter(err))
	}
	// The refused request took no tokens: a single token is due within one token's
	// time (1/9.8 s), as the bucket schedules it.
	now := time.Now()
	w := enqueueAndWait(t, s, Request{Node: "n1", Account: "acct", Count: 1}, now)
	if d := w.due[0].Sub(now); d > 110*time.Millisecond {
		t.Fatalf("single token due after %v: the refused request kept tokens", d)
	}
}

// TestStepDownEndsWaits: a request waiting for its tokens fails with ErrNotLeader when
// leadership is lost, and a new term starts with a hold-off and an empty bucket.
func TestStepDownEndsWaits(t *testing.T) {
	s := newTestServer(t, 0, Limits{RatePerSec: 1, Burst: 2})
	s.Lead(time.Now())
	done := make(chan error, 1)
	go func() {
		_, err := s.Grant(context.Background(), "n1", "acct", 3)
		done <- err
	}()
	waitQueued(t, s, "acct")
	s.Follow()
	select {
	case err := <-done:
		if !errors.Is(err, ErrNotLeader) {
			t.Fatalf("waiting grant after step-down: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("waiting grant not ended by the step-down")
	}
	s.cfg.HoldOff = time.Hour
	s.Lead(time.Now())
	if _, err := s.Grant(context.Background(), "n1", "acct", 1); !errors.Is(err, ErrHoldOff) {
		t.Fatalf("new term: %v", err)
	}
}

// leadingServer returns a server leading from now, without hold-off, whose every
// account has the given rate (burst 1) at full rate (safety 1, no spread); maxWait 0
// keeps the default.
func leadingServer(t *testing.T, rate float64, maxWait time.Duration) *Server {
	t.Helper()
	cfg := DefaultConfig()
	cfg.HoldOff = 0
	cfg.Safety = 1
	cfg.Spread = 0
	if maxWait > 0 {
		cfg.MaxWait = maxWait
	}
	s, err := NewServer(cfg, func(string) (Limits, bool) { return Limits{RatePerSec: rate, Burst: 1}, true }, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Lead(time.Now())
	return s
}

// waitQueued waits until a request for account is queued at s.
func waitQueued(t *testing.T, s *Server, account string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for s.Stats().Waiting[account] == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no request for %s ever queued", account)
		}
		time.Sleep(time.Millisecond)
	}
}

// enqueueAndWait queues req at now and waits until its tokens are given.
func enqueueAndWait(t *testing.T, s *Server, req Request, now time.Time) *waiter {
	t.Helper()
	w, _, _, err := s.enqueue(context.Background(), req, now)
	if err != nil {
		t.Fatalf("enqueue %+v: %v", req, err)
	}
	select {
	case <-w.ready:
	case <-time.After(20 * time.Second):
		t.Fatalf("request %+v never served", req)
	}
	return w
}

// TestGrantsNeverExceedTheBucket: requests from many nodes together are never given more
// tokens in a window than the bucket allows (rate x safety x window + burst - 1): checked
// on the moments the tokens are due, as the leader schedules them.
func TestGrantsNeverExceedTheBucket(t *testing.T) {
	lim := Limits{RatePerSec: 50, Burst: 4}
	s := newTestServer(t, 0, lim)
	start := time.Now()
	s.Lead(start)
	var (
		mu  sync.Mutex
		due []time.Time
		wg  sync.WaitGroup
	)
	// Nine requesters (three per node) ask back to back for 1.5 s: more than the bucket
	// allows, some of them prioritized.
	for i := range 9 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Since(start) < 1500*time.Millisecond {
				req := Request{Node: []string{"n1", "n2", "n3"}[i%3], Account: "acct", Count: 1 + i%2, Lane: map[bool]Lane{true: LanePriority}[i%4 == 0]}
				w, _, _, err := s.enqueue(context.Background(), req, time.Now())
				if errors.Is(err, ErrTooLate) {
					continue
				}
				if err != nil {
					t.Errorf("request: %v", err)
					return
				}
				<-w.ready
				mu.Lock()
				due = append(due, w.due...)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	slices.SortFunc(due, func(a, b time.Time) int { return a.Compare(b) })
	rate := lim.RatePerSec * DefaultConfig().Safety
	if span := due[len(due)-1].Sub(due[0]).Seconds(); float64(len(due)) < 0.9*rate*span {
		t.Fatalf("%d tokens over %.1f s: the bucket left its rate unused", len(due), span)
	}
	for _, w := range []time.Duration{50 * time.Millisecond, 500 * time.Millisecond, time.Second} {
		for i := range due {
			n := 0
			for _, u := range due[i:] {
				if u.Before(due[i].Add(w)) {
					n++
				}
			}
			if max := rate*w.Seconds() + float64(lim.Burst-1); float64(n) > max+1e-9 {
				t.Fatalf("%d tokens due within %v of %v: bucket allows %.2f", n, w, due[i].Sub(start), max)
			}
		}
	}
}

// TestPriorityAndAging: requests in a higher lane are served before the others queued
// ahead of them (urgent, then prioritized), except that an ordinary request waiting
// longer than MaxWait/2 goes first.
func TestPriorityAndAging(t *testing.T) {
	s := leadingServer(t, 4, 1200*time.Millisecond)
	now := time.Now()
	var (
		mu    sync.Mutex
		order []string
		wg    sync.WaitGroup
	)
	serve := func(name string, lane Lane) {
		w, _, _, err := s.enqueue(context.Background(), Request{Node: "n1", Account: "acct", Count: 1, Lane: lane}, now)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-w.ready
			mu.Lock()
			order = append(order, name)
			mu.Unlock()
		}()
	}
	// 4 tokens/s from an empty bucket: one token every 250 ms.
	serve("normal", LaneRest)
	for _, p := range []string{"p1", "p2", "p3", "p4"} {
		serve(p, LanePriority)
	}
	serve("u1", LaneUrgent)
	wg.Wait()
	pos := slices.Index(order, "normal")
	if order[0] != "u1" || order[1] != "p1" || pos < 2 || pos == len(order)-1 {
		t.Fatalf("served %v: want u1, then p1, and the aged unprioritized request before the last prioritized one", order)
	}
}

// TestWithdrawnRequestCostsNothing: a request given up while it waits (its node died)
// takes no tokens; the one behind it gets its turn.
func TestWithdrawnRequestCostsNothing(t *testing.T) {
	s := leadingServer(t, 2, 0)
	ctx, cancel := context.WithCancel(context.Background())
	gone := make(chan error, 1)
	go func() {
		_, err := s.Grant(ctx, "dead", "acct", 2)
		gone <- err
	}()
	waitQueued(t, s, "acct")
	now := time.Now()
	cancel()
	if err := <-gone; !errors.Is(err, context.Canceled) {
		t.Fatalf("withdrawn request: %v", err)
	}
	// Had the withdrawn request kept its place, this token would be due after its two
	// (at 2/s: a second or more).
	w := enqueueAndWait(t, s, Request{Node: "alive", Account: "acct", Count: 1}, now)
	if d := w.due[0].Sub(now); d > 600*time.Millisecond {
		t.Fatalf("token due after %v: the withdrawn request kept its tokens", d)
	}
	if g := s.Stats().Granted["acct"]; g != 1 {
		t.Fatalf("%d tokens granted, want 1", g)
	}
}

// TestGrantVerifiesLeadership: a grant is answered only if the leader still leads at that
// moment (a paused leader replaced meanwhile must not answer).
func TestGrantVerifiesLeadership(t *testing.T) {
	cfg := DefaultConfig()
	cfg.HoldOff = 0
	deposed := errors.New("leadership lost")
	var verifyErr error
	cfg.Verify = func(context.Context) error { return verifyErr }
	s, err := NewServer(cfg, func(string) (Limits, bool) { return Limits{RatePerSec: 100, Burst: 10}, true }, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Lead(time.Now())
	if _, planned, err := s.GrantPlanned(context.Background(), Request{Node: "n1", Account: "acct", Count: 1}); err != nil || planned < 0 {
		t.Fatalf("grant: %v (planned %v)", err, planned)
	}
	verifyErr = deposed
	if _, err := s.Grant(context.Background(), "n1", "acct", 1); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("grant after losing leadership: %v", err)
	}
}

// TestTurnAfterDeadlineIsRefused: a request pushed back by prioritized ones until its
// last token would come after its deadline is refused at its turn, not given tokens it
// cannot use in time.
func TestTurnAfterDeadlineIsRefused(t *testing.T) {
	s := leadingServer(t, 4, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	late := make(chan error, 1)
	go func() {
		// At 4 tokens/s from an empty bucket its token is due at about 250 ms: in time,
		// as estimated on arrival.
		_, err := s.Grant(ctx, "n1", "acct", 1)
		late <- err
	}()
	waitQueued(t, s, "acct")
	// Prioritized requests for 3 tokens go first: its turn comes after 750 ms.
	if _, _, err := s.GrantPlanned(context.Background(), Request{Node: "n2", Account: "acct", Count: 3, Lane: LanePriority}); err != nil {
		t.Fatal(err)
	}
	if err := <-late; !errors.Is(err, ErrTooLate) && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("request pushed past its deadline: %v", err)
	}
	if g := s.Stats().Granted["acct"]; g != 3 {
		t.Fatalf("%d tokens granted, want only the prioritized 3", g)
	}
}

// TestBurstOfOneSpacesGrantsBySpread: an account with a burst of 1 has no token to keep
// back for the spread between grant and call, so its grants come 1/rate + Spread apart.
func TestBurstOfOneSpacesGrantsBySpread(t *testing.T) {
	for _, tt := range []struct {
		burst   int
		minStep time.Duration
	}{
		{1, 200*time.Millisecond + 50*time.Millisecond}, // 1/5 s + Spread
		{3, 0}, // a token kept back instead
	} {
		cfg := DefaultConfig()
		cfg.HoldOff, cfg.Safety = 0, 1
		s, err := NewServer(cfg, func(string) (Limits, bool) { return Limits{RatePerSec: 5, Burst: tt.burst}, true }, nil)
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		s.Lead(now)
		var due []time.Time
		for range 4 {
			w := enqueueAndWait(t, s, Request{Node: "n1", Account: "acct", Count: 1}, now)
			due = append(due, w.due...)
		}
		for i := 1; i < len(due); i++ {
			step := due[i].Sub(due[i-1])
			if tt.minStep > 0 && step < tt.minStep-time.Millisecond {
				t.Fatalf("burst %d: grants %v apart, want at least %v", tt.burst, step, tt.minStep)
			}
			if tt.minStep == 0 && step > 201*time.Millisecond {
				t.Fatalf("burst %d: grants %v apart, want the rate's 200ms", tt.burst, step)
			}
		}
		s.Follow()
	}
}
