package quota

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/time/rate"
)

// Sentinel errors; callers branch on them with errors.Is.
var (
	// ErrNotLeader: this server is not the leader (or stepped down while the request
	// waited). Ask the leader.
	ErrNotLeader = errors.New("quota: not the leader")
	// ErrHoldOff: a new leader's hold-off period; see RetryAfter.
	ErrHoldOff = errors.New("quota: leader in its hold-off period")
	// ErrTooLate: the tokens would come after the request's deadline or MaxWait; see
	// RetryAfter.
	ErrTooLate = errors.New("quota: tokens not available in time")
	// ErrUnknownAccount: no such account in the replicated state.
	ErrUnknownAccount = errors.New("quota: unknown account")
	// ErrRefused: the node may not call (the cluster revoked it).
	ErrRefused = errors.New("quota: node refused")
	// ErrInvalidConfig is wrapped by configuration errors.
	ErrInvalidConfig = errors.New("invalid quota config")
)

// WaitError says when to ask again; it wraps ErrHoldOff or ErrTooLate.
type WaitError struct {
	Err        error
	RetryAfter time.Duration
}

func (e *WaitError) Error() string {
	return fmt.Sprintf("%v (retry after %v)", e.Err, e.RetryAfter.Round(time.Millisecond))
}

func (e *WaitError) Unwrap() error { return e.Err }

// RetryAfterDuration is RetryAfter as a method, for callers that do not import this
// package (carrier).
func (e *WaitError) RetryAfterDuration() time.Duration { return e.RetryAfter }

// RetryAfter returns how long to wait before asking again (0 when err says nothing).
func RetryAfter(err error) time.Duration {
	var w *WaitError
	if errors.As(err, &w) {
		return w.RetryAfter
	}
	return 0
}

// Limits is an account's cluster-wide quota, from the replicated state.
type Limits struct {
	RatePerSec float64
	Burst      int
}

// Config configures a Server.
type Config struct {
	// HoldOff is how long a new leader waits before its first grant: longer than a
	// deposed leader may keep granting before it steps down (the node sets twice Raft's
	// leader lease plus a margin).
	HoldOff time.Duration
	// Safety is the fraction of each account's rate the bucket runs at.
	Safety float64
	// MaxWait bounds how far ahead a grant may be queued; a request whose tokens would
	// come later is told to ask again.
	MaxWait time.Duration
	// Verify, if set, confirms leadership right before a grant is answered (the node
	// sets raft's VerifyLeader): a leader that was paused or cut off and replaced while a
	// request waited must not answer it.
	Verify func() error
	// Logger; nil means none.
	Logger hclog.Logger
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{HoldOff: 1500 * time.Millisecond, Safety: 0.98, MaxWait: 10 * time.Second}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	switch {
	case c.HoldOff < 0:
		return fmt.Errorf("%w: hold-off %v must be >= 0", ErrInvalidConfig, c.HoldOff)
	case c.Safety <= 0 || c.Safety > 1:
		return fmt.Errorf("%w: safety %v: want (0, 1]", ErrInvalidConfig, c.Safety)
	case c.MaxWait <= 0:
		return fmt.Errorf("%w: max wait must be positive", ErrInvalidConfig)
	}
	return nil
}

// Server holds the buckets while its node leads.
type Server struct {
	cfg    Config
	limits func(account string) (Limits, bool)
	allow  func(node string) error
	log    hclog.Logger

	mu      sync.Mutex
	leading bool
	from    time.Time     // no grant before this (hold-off)
	lost    chan struct{} // closed when leadership is lost
	buckets map[string]*bucket
	granted map[string]uint64 // tokens granted per account, for Stats
}

type bucket struct {
	lim    *rate.Limiter
	limits Limits
}

// NewServer returns a server that is not leading. limits reads an account's quota from
// the replicated state; allow (may be nil) refuses a node the cluster revoked.
func NewServer(cfg Config, limits func(account string) (Limits, bool), allow func(node string) error) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	return &Server{cfg: cfg, limits: limits, allow: allow, log: cfg.Logger.Named("quota"),
		lost: make(chan struct{}), buckets: map[string]*bucket{}, granted: map[string]uint64{}}, nil
}

// Lead starts a term of leadership at now: buckets start empty after the hold-off.
func (s *Server) Lead(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.leading {
		return
	}
	s.leading = true
	s.from = now.Add(s.cfg.HoldOff)
	s.buckets = map[string]*bucket{}
	s.log.Info("granting carrier call tokens", "from", s.from.Format(time.RFC3339Nano))
}

// Follow ends leadership: waiting requests fail with ErrNotLeader.
func (s *Server) Follow() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.leading {
		return
	}
	s.leading = false
	close(s.lost)
	s.lost = make(chan struct{})
	s.buckets = map[string]*bucket{}
}

// Grant takes n tokens of account's bucket for node. It returns when the first token is
// due, with each token's offset from that moment (the first is 0). It fails at once with
// a *WaitError during the hold-off or when the last token would come after ctx's deadline
// or MaxWait, and with ErrNotLeader if leadership is lost while it waits.
func (s *Server) Grant(ctx context.Context, node, account string, n int) ([]time.Duration, error) {
	offs, _, err := s.GrantPlanned(ctx, node, account, n)
	return offs, err
}

// GrantPlanned is Grant that also returns how long the server planned to wait before
// answering (the first token's delay). A remote requester compares it with the time it
// actually waited and throws away an answer that came late (node.Tokens).
func (s *Server) GrantPlanned(ctx context.Context, node, account string, n int) ([]time.Duration, time.Duration, error) {
	now := time.Now()
	g, err := s.reserve(ctx, node, account, n, now)
	if err != nil {
		return nil, 0, err
	}
	offsets := make([]time.Duration, n)
	for i, at := range g.due {
		offsets[i] = at.Sub(g.due[0])
	}
	planned := max(0, g.due[0].Sub(now))
	if wait := time.Until(g.due[0]); wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C:
		case <-g.lost:
			return nil, 0, ErrNotLeader
		case <-ctx.Done():
			s.mu.Lock()
			if s.buckets[account] == g.b {
				g.cancel()
				s.granted[account] -= uint64(n)
			}
			s.mu.Unlock()
			return nil, 0, ctx.Err()
		}
	}
	select {
	case <-g.lost:
		return nil, 0, ErrNotLeader
	default:
	}
	if s.cfg.Verify != nil {
		if err := s.cfg.Verify(); err != nil {
			return nil, 0, fmt.Errorf("%w: %v", ErrNotLeader, err)
		}
	}
	return offsets, planned, nil
}

// grant is a reservation of tokens: when each is due.
type grant struct {
	due    []time.Time
	b      *bucket
	lost   chan struct{}
	cancel func() // gives the tokens back (under s.mu)
}

// reserve takes n tokens from account's bucket at now.
func (s *Server) reserve(ctx context.Context, node, account string, n int, now time.Time) (*grant, error) {
	if n < 1 {
		return nil, fmt.Errorf("quota: %d tokens requested", n)
	}
	if s.allow != nil {
		if err := s.allow(node); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrRefused, err)
		}
	}
	// The account's quota is read from the replicated state before taking the lock.
	lim, ok := s.limits(account)
	if !ok || lim.RatePerSec <= 0 {
		return nil, fmt.Errorf("%w: %s", ErrUnknownAccount, account)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.leading {
		return nil, ErrNotLeader
	}
	if now.Before(s.from) {
		return nil, &WaitError{Err: ErrHoldOff, RetryAfter: s.from.Sub(now)}
	}
	b := s.bucketLocked(account, lim, now)
	// Refuse before reserving: a cancelled reservation does not always give its tokens
	// back (x/time/rate restores only what no later reservation has counted on).
	last := needFor(b.lim, now, n)
	limit := s.cfg.MaxWait
	if dl, ok := ctx.Deadline(); ok {
		limit = min(limit, dl.Sub(now))
	}
	if last > limit {
		return nil, &WaitError{Err: ErrTooLate, RetryAfter: last - limit}
	}
	rs := make([]*rate.Reservation, 0, n)
	cancel := func() {
		// Latest first: a reservation gives its tokens back only if none was made after it.
		for i := len(rs) - 1; i >= 0; i-- {
			rs[i].CancelAt(now)
		}
	}
	for i := 0; i < n; i++ {
		rs = append(rs, b.lim.ReserveN(now, 1))
	}
	s.granted[account] += uint64(n)
	g := &grant{b: b, lost: s.lost, cancel: cancel, due: make([]time.Time, n)}
	for i, r := range rs {
		g.due[i] = now.Add(r.DelayFrom(now))
	}
	return g, nil
}

// needFor is how long from now until n more tokens of lim are available.
func needFor(lim *rate.Limiter, now time.Time, n int) time.Duration {
	missing := float64(n) - lim.TokensAt(now)
	if missing <= 0 || lim.Limit() <= 0 {
		return 0
	}
	return time.Duration(missing / float64(lim.Limit()) * float64(time.Second))
}

// bucketLocked returns the account's bucket, created empty or updated to its limits.
func (s *Server) bucketLocked(account string, lim Limits, now time.Time) *bucket {
	r := rate.Limit(lim.RatePerSec * s.cfg.Safety)
	// One token of the account's burst is kept back for the spread between the moment a
	// token is granted and the moment the carrier sees the call.
	burst := max(1, lim.Burst-1)
	b := s.buckets[account]
	if b == nil {
		b = &bucket{lim: rate.NewLimiter(r, burst), limits: lim}
		b.lim.AllowN(now, burst) // start empty
		s.buckets[account] = b
		return b
	}
	if b.limits != lim {
		b.lim.SetLimitAt(now, r)
		b.lim.SetBurstAt(now, burst)
		b.limits = lim
	}
	return b
}

// Stats is a snapshot for the operator API.
type Stats struct {
	Leading bool              `json:"leading"`
	From    time.Time         `json:"granting_from,omitzero"`
	HoldOff time.Duration     `json:"hold_off_ns"`
	Granted map[string]uint64 `json:"tokens_granted"`
}

// Stats returns the server's state.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Stats{Leading: s.leading, HoldOff: s.cfg.HoldOff, Granted: map[string]uint64{}}
	if s.leading {
		st.From = s.from
	}
	for k, v := range s.granted {
		st.Granted[k] = v
	}
	return st
}
