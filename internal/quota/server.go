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
	// Spread is the spread between a token's grant and the carrier seeing its call that
	// an account with a burst of 1 is given room for: such an account has no token to
	// keep back for it (one of a larger burst is), so the bucket spaces its grants
	// Spread more than the rate asks. Two calls granted one interval apart would
	// otherwise reach the carrier closer together whenever the first is slower on its
	// way than the second, and a carrier with a burst of 1 refuses the second.
	Spread time.Duration
	// MaxWait bounds how far ahead a grant may be queued; a request whose tokens would
	// come later is told to ask again.
	MaxWait time.Duration
	// Verify, if set, confirms leadership right before a grant is answered (the node
	// sets raft's VerifyLeader): a leader that was paused or cut off and replaced while a
	// request waited must not answer it. It must return once ctx ends.
	Verify func(ctx context.Context) error
	// Logger; nil means none.
	Logger hclog.Logger
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{HoldOff: 1500 * time.Millisecond, Safety: 0.995, Spread: 50 * time.Millisecond, MaxWait: 10 * time.Second}
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
	case c.Spread < 0:
		return fmt.Errorf("%w: spread %v must be >= 0", ErrInvalidConfig, c.Spread)
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

// A bucket hands its tokens out in order to the requests queued on it: urgent requests
// first, then prioritized ones (see Request.Priority and Request.Urgent), each lane
// first come first served. A request
// takes its tokens from the limiter only when it is its turn and the first is due, so
// a request that is given up while it waits (its node died or stopped, its query was
// abandoned) costs nothing and moves everyone behind it forward.
type bucket struct {
	lim    *rate.Limiter
	limits Limits
	lanes  [numLanes][]*waiter // by Lane, served from LaneUrgent down
	timer  *time.Timer         // wakes the dispatcher when the next token is due
}

type waiter struct {
	n        int
	arrived  time.Time
	deadline time.Time     // the last token must be due before it (zero: none)
	err      error         // set instead of due when the turn came too late
	ready    chan struct{} // closed when the tokens are given
	due      []time.Time   // when each token is due, set before ready closes
}

// Request asks for Count tokens of Account's bucket for Node.
type Request struct {
	Node    string
	Account string
	Count   int
	// Lane is the request's place in the queue (LaneRest: none).
	Lane Lane
}

// Lane is a request's lane in its account's queue: a request is served before those
// waiting in lower lanes, except that a LaneRest request that has waited longer than
// MaxWait/2 goes first all the same, so the higher lanes cannot starve it.
type Lane int

const (
	// LaneRest is an ordinary query.
	LaneRest Lane = iota
	// LanePriority is the first query of a shard's round: a shard just started gets its
	// first answer after the calls already granted, not after every query queued in the
	// cluster.
	LanePriority
	// LaneUrgent is a query of a task taken over from another member (dead or handing
	// over), before the task's first answer under its new owner.
	LaneUrgent
	numLanes
)

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
	s.dropBucketsLocked()
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
	s.dropBucketsLocked()
}

func (s *Server) dropBucketsLocked() {
	for _, b := range s.buckets {
		if b.timer != nil {
			b.timer.Stop()
		}
	}
	s.buckets = map[string]*bucket{}
}

// Grant takes n tokens of account's bucket for node, unprioritized (see GrantPlanned).
func (s *Server) Grant(ctx context.Context, node, account string, n int) ([]time.Duration, error) {
	offs, _, err := s.GrantPlanned(ctx, Request{Node: node, Account: account, Count: n})
	return offs, err
}

// GrantPlanned takes req.Count tokens of the account's bucket. It returns when the first
// token is due, with each token's offset from that moment (the first is 0), and how long
// the request waited here: a remote requester compares that with the time it actually
// waited and throws away an answer that came late (node.Tokens). It fails at once with a
// *WaitError during the hold-off or when the last token would come after ctx's deadline
// or MaxWait, and with ErrNotLeader if leadership is lost while it waits.
func (s *Server) GrantPlanned(ctx context.Context, req Request) ([]time.Duration, time.Duration, error) {
	now := time.Now()
	w, b, lost, err := s.enqueue(ctx, req, now)
	if err != nil {
		return nil, 0, err
	}
	select {
	case <-w.ready:
		if w.err != nil {
			return nil, 0, w.err
		}
	case <-lost:
		return nil, 0, ErrNotLeader
	case <-ctx.Done():
		// Tokens given at this very moment are spent all the same.
		s.mu.Lock()
		s.withdrawLocked(b, w)
		s.mu.Unlock()
		return nil, 0, ctx.Err()
	}
	select {
	case <-lost:
		return nil, 0, ErrNotLeader
	default:
	}
	if s.cfg.Verify != nil {
		if err := s.cfg.Verify(ctx); err != nil {
			return nil, 0, fmt.Errorf("%w: %v", ErrNotLeader, err)
		}
	}
	offsets := make([]time.Duration, len(w.due))
	for i, at := range w.due {
		offsets[i] = at.Sub(w.due[0])
	}
	return offsets, max(0, w.due[0].Sub(now)), nil
}

// enqueue queues req on its account's bucket (and hands out what is due).
func (s *Server) enqueue(ctx context.Context, req Request, now time.Time) (*waiter, *bucket, chan struct{}, error) {
	if req.Count < 1 {
		return nil, nil, nil, fmt.Errorf("quota: %d tokens requested", req.Count)
	}
	if s.allow != nil {
		if err := s.allow(req.Node); err != nil {
			return nil, nil, nil, fmt.Errorf("%w: %v", ErrRefused, err)
		}
	}
	// The account's quota is read from the replicated state before taking the lock.
	lim, ok := s.limits(req.Account)
	if !ok || lim.RatePerSec <= 0 {
		return nil, nil, nil, fmt.Errorf("%w: %s", ErrUnknownAccount, req.Account)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.leading {
		return nil, nil, nil, ErrNotLeader
	}
	if now.Before(s.from) {
		return nil, nil, nil, &WaitError{Err: ErrHoldOff, RetryAfter: s.from.Sub(now)}
	}
	b := s.bucketLocked(req.Account, lim, now)
	// The last token's wait if nothing else arrives: the tokens queued ahead in the
	// lanes served before this one, then this request's.
	lane := min(max(req.Lane, LaneRest), numLanes-1)
	ahead := req.Count
	for l := lane; l < numLanes; l++ {
		for _, o := range b.lanes[l] {
			ahead += o.n
		}
	}
	last := needFor(b.lim, now, ahead)
	limit := s.cfg.MaxWait
	if dl, ok := ctx.Deadline(); ok {
		limit = min(limit, dl.Sub(now))
	}
	if last > limit {
		return nil, nil, nil, &WaitError{Err: ErrTooLate, RetryAfter: last - limit}
	}
	w := &waiter{n: req.Count, arrived: now, ready: make(chan struct{})}
	if dl, ok := ctx.Deadline(); ok {
		w.deadline = dl
	}
	b.lanes[lane] = append(b.lanes[lane], w)
	s.dispatchLocked(req.Account, b, now)
	return w, b, s.lost, nil
}

// withdrawLocked takes a waiting request off its bucket (if its tokens were not given
// yet).
func (s *Server) withdrawLocked(b *bucket, w *waiter) {
	for lane := range b.lanes {
		for i, o := range b.lanes[lane] {
			if o == w {
				b.lanes[lane] = append(b.lanes[lane][:i:i], b.lanes[lane][i+1:]...)
				return
			}
		}
	}
}

// next is the request whose turn it is: the head of the first lane that has one, unless
// the unprioritized lane's head has waited longer than half of MaxWait.
func (s *Server) next(b *bucket, now time.Time) (lane Lane, ok bool) {
	if rest := b.lanes[LaneRest]; len(rest) > 0 && now.Sub(rest[0].arrived) > s.cfg.MaxWait/2 {
		return LaneRest, true
	}
	for lane := numLanes - 1; lane >= LaneRest; lane-- {
		if len(b.lanes[lane]) > 0 {
			return lane, true
		}
	}
	return 0, false
}

// dispatchLocked gives tokens to the requests whose turn it is while a token is due,
// and sets the bucket's timer for the next one.
func (s *Server) dispatchLocked(account string, b *bucket, now time.Time) {
	for {
		lane, ok := s.next(b, now)
		if !ok {
			return
		}
		if wait := needFor(b.lim, now, 1); wait > 0 {
			s.armLocked(account, b, max(wait, time.Millisecond))
			return
		}
		w := b.lanes[lane][0]
		b.lanes[lane] = b.lanes[lane][1:]
		// Prioritized requests may have come ahead since the estimate at arrival: a
		// request whose last token would now fall after its deadline is refused rather
		// than given tokens it cannot use in time (a query whose later calls miss its
		// deadline has fetched cards for nothing).
		if last := now.Add(needFor(b.lim, now, w.n)); !w.deadline.IsZero() && last.After(w.deadline) {
			w.err = &WaitError{Err: ErrTooLate, RetryAfter: last.Sub(w.deadline)}
			close(w.ready)
			continue
		}
		w.due = make([]time.Time, w.n)
		for i := range w.n {
			w.due[i] = now.Add(b.lim.ReserveN(now, 1).DelayFrom(now))
		}
		s.granted[account] += uint64(w.n)
		close(w.ready)
	}
}

func (s *Server) armLocked(account string, b *bucket, wait time.Duration) {
	if b.timer != nil {
		b.timer.Stop()
	}
	b.timer = time.AfterFunc(wait, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.leading && s.buckets[account] == b {
			s.dispatchLocked(account, b, time.Now())
		}
	})
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
	perSec := lim.RatePerSec * s.cfg.Safety
	if lim.Burst <= 1 && perSec > 0 && s.cfg.Spread > 0 {
		// No token to keep back: the interval between grants takes the spread instead.
		perSec = 1 / (1/perSec + s.cfg.Spread.Seconds())
	}
	r := rate.Limit(perSec)
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
	// Waiting is the requests queued per account (prioritized ones included).
	Waiting map[string]int `json:"requests_waiting"`
	// WaitingPriority is the prioritized requests among them (urgent ones included).
	WaitingPriority map[string]int `json:"priority_requests_waiting"`
	// WaitingUrgent is the urgent requests among them.
	WaitingUrgent map[string]int `json:"urgent_requests_waiting"`
}

// Stats returns the server's state.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Stats{Leading: s.leading, HoldOff: s.cfg.HoldOff, Granted: map[string]uint64{},
		Waiting: map[string]int{}, WaitingPriority: map[string]int{}, WaitingUrgent: map[string]int{}}
	for a, b := range s.buckets {
		urgent, prio := len(b.lanes[LaneUrgent]), len(b.lanes[LanePriority])
		if w := urgent + prio + len(b.lanes[LaneRest]); w > 0 {
			st.Waiting[a] = w
			st.WaitingPriority[a] = urgent + prio
			st.WaitingUrgent[a] = urgent
		}
	}
	if s.leading {
		st.From = s.from
	}
	for k, v := range s.granted {
		st.Granted[k] = v
	}
	return st
}
