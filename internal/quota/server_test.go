package quota

import (
	"context"
	"errors"
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
	g, err := s.reserve(dctx, "n1", "acct", 1, now)
	if err != nil {
		t.Fatalf("single token after a refusal: %v", err)
	}
	if d := g.due[0].Sub(now); d > 110*time.Millisecond {
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
	deadline := time.After(10 * time.Second)
	for s.Stats().Granted["acct"] == 0 {
		select {
		case <-deadline:
			t.Fatal("grant never reserved")
		case <-time.After(5 * time.Millisecond):
		}
	}
	s.Follow()
	select {
	case err := <-done:
		if !errors.Is(err, ErrNotLeader) {
			t.Fatalf("waiting grant after step-down: %v", err)
		}
	case <-deadline:
		t.Fatal("waiting grant not ended by the step-down")
	}
	s.cfg.HoldOff = time.Hour
	s.Lead(time.Now())
	if _, err := s.Grant(context.Background(), "n1", "acct", 1); !errors.Is(err, ErrHoldOff) {
		t.Fatalf("new term: %v", err)
	}
}

// TestGrantsNeverExceedTheBucket: requests from many nodes together are never given more
// tokens in a window than the bucket allows (rate x safety x window + burst - 1): checked
// on the moments the tokens are due, as the leader schedules them.
func TestGrantsNeverExceedTheBucket(t *testing.T) {
	lim := Limits{RatePerSec: 50, Burst: 4}
	s := newTestServer(t, 0, lim)
	start := time.Now()
	s.Lead(start)
	var due []time.Time
	nodes := []string{"n1", "n2", "n3"}
	// Requests arrive every 7 ms for 3 s of simulated time: more than the bucket allows.
	for i := 0; i < 430; i++ {
		now := start.Add(time.Duration(i) * 7 * time.Millisecond)
		g, err := s.reserve(context.Background(), nodes[i%3], "acct", 1+i%2, now)
		if errors.Is(err, ErrTooLate) {
			continue
		}
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		due = append(due, g.due...)
	}
	rate := lim.RatePerSec * DefaultConfig().Safety
	if span := due[len(due)-1].Sub(due[0]).Seconds(); float64(len(due)) < 0.9*rate*span {
		t.Fatalf("%d tokens over %.1f s: the bucket left its rate unused", len(due), span)
	}
	for _, w := range []time.Duration{50 * time.Millisecond, 500 * time.Millisecond, 2 * time.Second} {
		for i := range due {
			n := 0
			for _, u := range due {
				if !u.Before(due[i]) && u.Before(due[i].Add(w)) {
					n++
				}
			}
			if max := rate*w.Seconds() + float64(lim.Burst-1); float64(n) > max+1e-9 {
				t.Fatalf("%d tokens due within %v of %v: bucket allows %.2f", n, w, due[i].Sub(start), max)
			}
		}
	}
}

// TestGrantVerifiesLeadership: a grant is answered only if the leader still leads at that
// moment (a paused leader replaced meanwhile must not answer).
func TestGrantVerifiesLeadership(t *testing.T) {
	cfg := DefaultConfig()
	cfg.HoldOff = 0
	deposed := errors.New("leadership lost")
	var verifyErr error
	cfg.Verify = func() error { return verifyErr }
	s, err := NewServer(cfg, func(string) (Limits, bool) { return Limits{RatePerSec: 100, Burst: 10}, true }, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Lead(time.Now())
	if _, planned, err := s.GrantPlanned(context.Background(), "n1", "acct", 1); err != nil || planned < 0 {
		t.Fatalf("grant: %v (planned %v)", err, planned)
	}
	verifyErr = deposed
	if _, err := s.Grant(context.Background(), "n1", "acct", 1); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("grant after losing leadership: %v", err)
	}
}
