package carrier

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/sony/gobreaker/v2"
	"golang.org/x/time/rate"
)

// Account is a Client behind the account's rate limiter, concurrency cap and
// circuit breaker. Every HTTP data call the adapter makes waits for one
// limiter token; a Query holds one concurrency slot for all its calls.
// The limits are this node's share of the account's cluster-wide quota and
// can be changed at run time with SetShare.
type Account struct {
	cfg     AccountConfig
	client  Client
	logger  hclog.Logger
	limiter *rate.Limiter
	breaker *gobreaker.CircuitBreaker[[]Result]
	tokens  atomic.Pointer[tokenSourceBox]

	mu          sync.Mutex
	shareRate   float64
	shareBurst  int
	shareConc   int
	inFlight    int
	pending     int                // Query calls in progress: waiting for a slot or calling
	slotWaiting [numPriorities]int // queries waiting for a slot, by priority
	wake        chan struct{}      // closed and replaced when a slot frees or the share changes
	// partials are queries of fewer cards than a batch waiting for a slot: the query that
	// gets a slot takes the ones that fit into its own call (coalesce.go).
	partials []*partialQuery
	// formingRoom is the spare batch room of the queries that hold a slot and wait for
	// their call tokens: a partial query that fits waits to ride with one of them rather
	// than take a slot and a call of its own.
	formingRoom int
	// openRooms are the spare rooms of those queries not yet promised to a caller of
	// TakeRoom.
	openRooms []*openRoom
	// tokenWaits are the queries below PriorityUrgent that hold a slot while they wait
	// for their tokens from the TokenSource, oldest first: a prioritized query that finds
	// no slot free takes the slot of the latest of them of a lower priority (acquire).
	tokenWaits  []*tokenWait
	consecutive int // consecutive whole-call failures, for Backoff

	calls, httpCalls, successes   atomic.Uint64
	limiterWaits, slotWaits       atomic.Uint64
	preemptions                   atomic.Uint64
	riders                        atomic.Uint64
	limiterWaitNanos              atomic.Int64
	circuitRejects                atomic.Uint64
	errorsByKind, cardErrorsByKnd [NumKinds]atomic.Uint64
	cards                         atomic.Uint64
}

// AccountStats is a snapshot of an Account's counters.
type AccountStats struct {
	Account, Carrier    string
	Calls               uint64            // Query calls that went to the carrier
	HTTPCalls           uint64            // data HTTP calls (each waited for one limiter token)
	Successes           uint64            // Query calls that succeeded as a whole
	Errors              map[string]uint64 // whole-call failures by kind
	CardErrors          map[string]uint64 // per-card failures by kind
	Cards               uint64            // cards returned
	LimiterWaits        uint64            // HTTP calls that had to wait for the limiter
	LimiterWaitTime     time.Duration     // total time spent waiting for the limiter
	SlotWaits           uint64            // Query calls that had to wait for a concurrency slot
	Preempted           uint64            // slots a prioritized query took from a query waiting for its tokens
	Coalesced           uint64            // partial queries answered by another query's call
	CircuitRejects      uint64            // Query calls refused because the breaker was open
	Breaker             string            // closed | half-open | open
	InFlight            int
	Pending             int // Query calls in progress: waiting for a slot or calling
	ConsecutiveFailures int
	RatePerSec          float64 // current share
	Burst, Concurrency  int
}

// NewAccount builds the adapter for cfg and wraps it. Its initial share is
// the whole quota in cfg.
func NewAccount(cfg AccountConfig, hc *http.Client, logger hclog.Logger) (*Account, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	a := &Account{
		cfg:     cfg,
		logger:  logger.Named("account").With("account", cfg.ID, "carrier", cfg.Carrier),
		limiter: rate.NewLimiter(0, 1),
		wake:    make(chan struct{}),
	}
	client, err := newAdapter(cfg, hc, logger, a.gate)
	if err != nil {
		return nil, err
	}
	a.client = client
	a.breaker = gobreaker.NewCircuitBreaker[[]Result](gobreaker.Settings{
		Name:    cfg.ID,
		Timeout: cfg.BreakerOpen,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			return c.ConsecutiveFailures >= uint32(cfg.BreakerFailures)
		},
		// Only transient failures count against the carrier; rate limits,
		// auth and per-card errors are answers, not outages.
		IsSuccessful: func(err error) bool { return KindOf(err) != KindTransient },
		// A caller that gave up says nothing about the carrier.
		IsExcluded: func(err error) bool {
			var g *callerGone
			return errors.As(err, &g)
		},
		OnStateChange: func(_ string, from, to gobreaker.State) {
			a.logger.Warn("circuit breaker", "from", from.String(), "to", to.String())
		},
	})
	a.SetShare(cfg.RatePerSec, cfg.Burst, cfg.Concurrency)
	return a, nil
}

// TokenSource grants the call tokens of a query from a bucket the whole cluster shares
// (the Raft leader's, see cardsync/internal/quota). Tokens returns when the first of
// count tokens is due, with each token's offset from that moment, or fails. A request
// goes ahead of those of a lower priority waiting for the account's tokens (see
// WithPriority and WithUrgency).
type TokenSource interface {
	Tokens(ctx context.Context, account string, count int, p Priority) ([]time.Duration, error)
}

type tokenSourceBox struct{ ts TokenSource }

// SetTokenSource makes the account's queries take their call tokens from ts instead of
// this node's own limiter (nil goes back to the limiter). The concurrency share still
// applies, and a data call beyond a query's reserved tokens still waits for the limiter.
func (a *Account) SetTokenSource(ts TokenSource) {
	if ts == nil {
		a.tokens.Store(nil)
		return
	}
	a.tokens.Store(&tokenSourceBox{ts})
}

// Config returns the account's configuration.
func (a *Account) Config() AccountConfig { return a.cfg }

// Carrier names the account's carrier.
func (a *Account) Carrier() string { return a.client.Carrier() }

// BatchSize is the carrier's batch limit.
func (a *Account) BatchSize() int { return a.client.BatchSize() }

// ID is the account id.
func (a *Account) ID() string { return a.cfg.ID }

// SetShare sets this node's share of the account's quota. The limiter runs
// at ratePerSec*(1-Headroom) with burst-1 (at least 1) so the carrier's own
// bucket always keeps slack. A rate <= 0 or a concurrency <= 0 stops new
// calls: Query waits until the share is positive again or its ctx ends.
func (a *Account) SetShare(ratePerSec float64, burst, concurrency int) {
	if burst < 1 {
		burst = 1
	}
	if concurrency < 0 {
		concurrency = 0
	}
	a.mu.Lock()
	gaining := (a.shareRate <= 0 || a.shareConc <= 0) && ratePerSec > 0 && concurrency > 0
	a.shareRate, a.shareBurst, a.shareConc = ratePerSec, burst, concurrency
	eff := ratePerSec * (1 - a.cfg.Headroom)
	if eff < 0 {
		eff = 0
	}
	effBurst := burst
	if effBurst > 1 {
		effBurst--
	}
	now := time.Now()
	a.limiter.SetLimitAt(now, rate.Limit(eff))
	a.limiter.SetBurstAt(now, effBurst)
	if gaining {
		// A node that had no share starts with an empty bucket: the tokens it saved
		// while idle belong to the quota the other nodes were using.
		if tok := a.limiter.TokensAt(now); tok >= 1 {
			a.limiter.AllowN(now, int(tok))
		}
	}
	a.broadcastLocked()
	a.mu.Unlock()
}

// Share returns the current share.
func (a *Account) Share() (ratePerSec float64, burst, concurrency int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.shareRate, a.shareBurst, a.shareConc
}

func (a *Account) broadcastLocked() {
	close(a.wake)
	a.wake = make(chan struct{})
}

// abandonKey carries a query's abandon channel (see WithAbandon).
type abandonKey struct{}

// WithAbandon lets the queries made with ctx be given up when ch is closed, as long as
// they still wait for a concurrency slot or their call tokens: they then return
// ErrAbandoned and nothing goes to the carrier. Once a query's calls may start, it runs
// to its answer under ctx alone. A worker handing its shard to another node uses it, so
// it stops at once instead of waiting in the quota's queue for a call it no longer needs.
func WithAbandon(ctx context.Context, ch <-chan struct{}) context.Context {
	return context.WithValue(ctx, abandonKey{}, ch)
}

// callTimeoutKey carries a query's call timeout (see WithCallTimeout).
type callTimeoutKey struct{}

// WithCallTimeout bounds the queries made with ctx from the moment their calls may start
// (a concurrency slot and the call tokens in hand) to their answer. The wait before that
// is this node's own queue for the account's quota, not the carrier: it is not timed,
// and ends with ctx or its abandon channel (WithAbandon). A query whose call tokens come
// later than d after the first may be used is given up before any call, as rate limited
// (its last calls would come after its timeout).
func WithCallTimeout(ctx context.Context, d time.Duration) context.Context {
	return context.WithValue(ctx, callTimeoutKey{}, d)
}

// preCallContext is ctx, also ended when its abandon channel closes.
func preCallContext(ctx context.Context) (context.Context, context.CancelFunc) {
	ch, _ := ctx.Value(abandonKey{}).(<-chan struct{})
	pre, cancel := context.WithCancel(ctx)
	if ch == nil {
		return pre, cancel
	}
	go func() {
		select {
		case <-ch:
			cancel()
		case <-pre.Done():
		}
	}()
	return pre, cancel
}

// abandonedOr is ErrAbandoned when ctx's abandon channel is closed and ctx itself has not
// ended, err otherwise.
func abandonedOr(ctx context.Context, err error) error {
	ch, _ := ctx.Value(abandonKey{}).(<-chan struct{})
	if ch == nil || ctx.Err() != nil {
		return err
	}
	select {
	case <-ch:
		return fmt.Errorf("%w: %v", ErrAbandoned, err)
	default:
		return err
	}
}

// Priority is a query's place in its account's queues on this node (for a concurrency
// slot) and in the cluster's (for call tokens, see TokenSource): a query goes ahead of
// every waiting query of a lower priority.
type Priority int

const (
	// PriorityNone is an ordinary query of a shard's walk.
	PriorityNone Priority = iota
	// PriorityFirst is a shard round's first query of the account (WithPriority).
	PriorityFirst
	// PriorityUrgent is a query of a task taken over from another member, until the
	// task's first progress under its new owner (WithUrgency).
	PriorityUrgent
	numPriorities
)

// priorityKey marks a query context as prioritized (see WithPriority).
type priorityKey struct{}

// urgencyKey carries the channel whose closing ends a query's urgency (WithUrgency).
type urgencyKey struct{}

// WithPriority marks the queries made with ctx as going ahead of unmarked ones when
// they wait for a concurrency slot of the account or for its tokens from the
// TokenSource. With a TokenSource, a marked query that finds no slot free takes the slot
// of an unmarked query still waiting for its tokens (that one gives up its token request
// and waits for a slot again): a slot is then only ever held ahead of it by a call that
// is out or about to go. The syncer marks the first query of each account in a shard's
// round, so a shard that was just taken over (or just started) gets its first answer
// after at most the calls already out, not after every query queued in the cluster.
func WithPriority(ctx context.Context) context.Context {
	return context.WithValue(ctx, priorityKey{}, true)
}

// WithUrgency makes the queries made with ctx urgent until until is closed: they go
// ahead of prioritized queries as WithPriority's go ahead of the others, and may take
// the slot of a prioritized query still waiting for its tokens. When until closes, a
// query still waiting drops back to its own priority (WithPriority or none) and asks for
// its tokens again at that priority. The syncer makes a task taken over from another
// member urgent until its first progress: a dead member's shards then progress after
// each other's first queries, not after every shard's round start in the cluster, and
// a shard that progressed through one account stops holding up the others that wait
// for a slower one.
func WithUrgency(ctx context.Context, until <-chan struct{}) context.Context {
	return context.WithValue(ctx, urgencyKey{}, until)
}

// urgency is ctx's urgency channel, nil when its queries are not urgent (any more).
func urgency(ctx context.Context) <-chan struct{} {
	ch, _ := ctx.Value(urgencyKey{}).(<-chan struct{})
	if ch == nil {
		return nil
	}
	select {
	case <-ch:
		return nil
	default:
		return ch
	}
}

// priorityOf is the priority of a query made with ctx now.
func priorityOf(ctx context.Context) Priority {
	if urgency(ctx) != nil {
		return PriorityUrgent
	}
	if p, _ := ctx.Value(priorityKey{}).(bool); p {
		return PriorityFirst
	}
	return PriorityNone
}

// waitingAboveLocked reports whether a query of a priority above p waits for a slot.
func (a *Account) waitingAboveLocked(p Priority) bool {
	for q := p + 1; q < numPriorities; q++ {
		if a.slotWaiting[q] > 0 {
			return true
		}
	}
	return false
}

// acquire takes a concurrency slot, waiting while none is free or the share is zero.
// A free slot goes to the waiting queries of the highest priority first; a prioritized
// query that finds none free takes the slot of the latest query of a lower priority
// still waiting for its tokens (tokensWithSlot). A waiting partial query (me, nil for
// others) that another query takes into its call stops waiting with errTaken.
func (a *Account) acquire(ctx context.Context, me *partialQuery) error {
	waitingAt := Priority(-1) // the priority this query is counted at in slotWaiting
	defer func() {
		if waitingAt >= 0 {
			a.mu.Lock()
			a.slotWaiting[waitingAt]--
			a.broadcastLocked()
			a.mu.Unlock()
		}
	}()
	for {
		p, until := priorityOf(ctx), urgency(ctx)
		a.mu.Lock()
		if me != nil && me.taken {
			a.mu.Unlock()
			return errTaken
		}
		if waitingAt >= 0 && waitingAt != p {
			// Its urgency ended while it waited: the queries it held back may go.
			a.slotWaiting[waitingAt]--
			a.slotWaiting[p]++
			waitingAt = p
			a.broadcastLocked()
		}
		rideSoon := me != nil && a.formingRoom >= len(me.iccids)
		if a.shareRate > 0 && a.inFlight < a.shareConc && !a.waitingAboveLocked(p) && !rideSoon {
			a.inFlight++
			// With the slot, this query is no longer one another may take.
			a.removePartialLocked(me)
			a.mu.Unlock()
			return nil
		}
		if p > PriorityNone && a.shareRate > 0 && a.inFlight <= a.shareConc {
			// The slot passes from the latest query of a lower priority waiting for its
			// tokens to this one.
			for i := len(a.tokenWaits) - 1; i >= 0; i-- {
				tw := a.tokenWaits[i]
				if tw.priority >= p {
					continue
				}
				a.tokenWaits = slices.Delete(a.tokenWaits, i, i+1)
				tw.preempted = true
				tw.cancel()
				a.preemptions.Add(1)
				a.removePartialLocked(me)
				a.mu.Unlock()
				return nil
			}
		}
		if waitingAt < 0 {
			waitingAt = p
			a.slotWaits.Add(1)
			a.slotWaiting[p]++
		}
		ch := a.wake
		a.mu.Unlock()
		select {
		case <-ch:
		case <-until:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (a *Account) release() {
	a.mu.Lock()
	a.inFlight--
	a.broadcastLocked()
	a.mu.Unlock()
}

// CallsPerQuery is how many rate-limited HTTP calls one Query of a batch costs with each
// carrier's adapter.
func CallsPerQuery(carrierName string) int {
	if carrierName == Unicom {
		return 1
	}
	return 2
}

// reservedKey carries a Query's pre-reserved limiter tokens to its HTTP calls.
type reservedKey struct{}

type reservedTokens struct {
	mu    sync.Mutex
	start time.Time
	rs    []*rate.Reservation
	at    []time.Time // tokens granted by the TokenSource: when each may be used
}

// reserve takes the limiter tokens of a whole Query up front, so a Query never stops
// between its calls (a share that drops to zero mid-query would otherwise waste the
// first call), and refuses at once when the tokens would come after ctx's deadline.
func (a *Account) reserve(ctx context.Context, n int) (*reservedTokens, error) {
	if box := a.tokens.Load(); box != nil {
		return a.reserveShared(ctx, box.ts, n)
	}
	now := time.Now()
	// Refuse before reserving when the tokens would come too late: a cancelled
	// reservation does not always give its tokens back.
	// (The check is the limiter's own arithmetic, so the reservations below come in time.)
	if dl, ok := ctx.Deadline(); ok && a.limiter.Limit() > 0 {
		if missing := float64(n) - a.limiter.TokensAt(now); missing > 0 {
			wait := time.Duration(missing / float64(a.limiter.Limit()) * float64(time.Second))
			if now.Add(wait).After(dl) {
				return nil, &Error{Carrier: a.cfg.Carrier, Account: a.cfg.ID, Kind: KindRateLimited, Code: "local_quota",
					Message: fmt.Sprintf("this node's quota share needs %v before the call, past the deadline", wait.Round(time.Millisecond)), RetryAfter: wait}
			}
		}
	}
	rt := &reservedTokens{start: now}
	for i := 0; i < n; i++ {
		r := a.limiter.ReserveN(now, 1)
		if !r.OK() {
			rt.cancel()
			return nil, &Error{Carrier: a.cfg.Carrier, Account: a.cfg.ID, Kind: KindRateLimited, Code: "local_quota", Message: "no quota share on this node", RetryAfter: time.Second}
		}
		rt.rs = append(rt.rs, r)
	}
	return rt, nil
}

// reserveShared takes a query's tokens from the cluster's shared bucket.
func (a *Account) reserveShared(ctx context.Context, ts TokenSource, n int) (*reservedTokens, error) {
	start := time.Now()
	offs, err := ts.Tokens(ctx, a.cfg.ID, n, priorityOf(ctx))
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		retry := time.Second
		if ra := retryAfterOf(err); ra > 0 {
			retry = ra
		}
		return nil, &Error{Carrier: a.cfg.Carrier, Account: a.cfg.ID, Kind: KindRateLimited, Code: "cluster_quota",
			Message: "no call tokens from the cluster's quota: " + err.Error(), RetryAfter: retry}
	}
	now := time.Now()
	a.limiterWaitNanos.Add(int64(now.Sub(start)))
	if now.Sub(start) > time.Millisecond {
		a.limiterWaits.Add(1)
	}
	rt := &reservedTokens{start: start}
	for _, o := range offs {
		rt.at = append(rt.at, now.Add(o))
	}
	return rt, nil
}

// retryAfterOf reads a RetryAfterDuration method anywhere in err's chain (the token
// source's way of saying when to ask again).
func retryAfterOf(err error) time.Duration {
	var r interface{ RetryAfterDuration() time.Duration }
	if errors.As(err, &r) {
		return r.RetryAfterDuration()
	}
	return 0
}

func (rt *reservedTokens) cancel() {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	// Latest first: a reservation gives its tokens back only if none was made after it.
	for i := len(rt.rs) - 1; i >= 0; i-- {
		rt.rs[i].CancelAt(rt.start)
	}
	rt.rs = nil
}

func (rt *reservedTokens) next() (*rate.Reservation, bool) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if len(rt.rs) == 0 {
		return nil, false
	}
	r := rt.rs[0]
	rt.rs = rt.rs[1:]
	return r, true
}

// lateFor is how long after ctx's deadline the last token granted by the TokenSource is
// due (0 when in time or without a deadline).
func (rt *reservedTokens) lateFor(ctx context.Context) time.Duration {
	dl, ok := ctx.Deadline()
	if !ok {
		return 0
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if len(rt.at) == 0 {
		return 0
	}
	return max(0, rt.at[len(rt.at)-1].Sub(dl))
}

// nextShared returns when the next token granted by the TokenSource may be used.
func (rt *reservedTokens) nextShared() (time.Time, bool) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if len(rt.at) == 0 {
		return time.Time{}, false
	}
	at := rt.at[0]
	rt.at = rt.at[1:]
	return at, true
}

// gate waits for one limiter token before each HTTP data call: a token the Query
// reserved up front, or a fresh one.
func (a *Account) gate(ctx context.Context) error {
	a.httpCalls.Add(1)
	if rt, ok := ctx.Value(reservedKey{}).(*reservedTokens); ok {
		if at, ok := rt.nextShared(); ok {
			return sleepUntil(ctx, at)
		}
		if r, ok := rt.next(); ok {
			return a.waitReservation(ctx, r)
		}
	}
	r := a.limiter.Reserve()
	if !r.OK() {
		return &Error{Carrier: a.cfg.Carrier, Account: a.cfg.ID, Kind: KindTransient, Message: "limiter refused the call"}
	}
	return a.waitReservation(ctx, r)
}

// sleepUntil waits until at or until ctx ends (its error).
func sleepUntil(ctx context.Context, at time.Time) error {
	d := time.Until(at)
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (a *Account) waitReservation(ctx context.Context, r *rate.Reservation) error {
	d := r.Delay()
	if d == 0 {
		return nil
	}
	a.limiterWaits.Add(1)
	a.limiterWaitNanos.Add(int64(d))
	if err := sleepUntil(ctx, time.Now().Add(d)); err != nil {
		r.Cancel()
		return err
	}
	return nil
}

// Query waits for a concurrency slot, then calls the carrier through the
// breaker; each HTTP call inside waits for the limiter. While the breaker is
// open it fails at once with a KindTransient error wrapping ErrCircuitOpen.
//
// A query of fewer cards than the batch size that has to wait for a slot may be
// answered by another query's call: the query that gets a slot takes the waiting
// partial queries that fit into its batch (oldest first) and sends them in one call
// (coalesce.go), so the shards a node runs side by side fill each other's last,
// partial batches instead of spending a whole call on each.
func (a *Account) Query(ctx context.Context, iccids []string) ([]Result, error) {
	if a.breaker.State() == gobreaker.StateOpen {
		a.circuitRejects.Add(1)
		return nil, a.circuitOpen()
	}
	a.mu.Lock()
	a.pending++
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		a.pending--
		a.mu.Unlock()
	}()
	// Until its tokens are in hand the query may be abandoned (WithAbandon): nothing has
	// gone to the carrier yet.
	pre, endPre := preCallContext(ctx)
	defer endPre()
	var rt *reservedTokens
	for {
		me := a.enqueuePartial(iccids)
		if err := a.acquire(pre, me); err != nil {
			if a.dequeuePartial(me) {
				return nil, abandonedOr(ctx, err)
			}
			// Taken into another query's call: its answer is this query's.
			return me.wait()
		}
		var preempted bool
		var err error
		rt, preempted, err = a.tokensWithSlot(pre, len(iccids))
		if preempted {
			continue // the slot went to a prioritized query: wait for one again
		}
		if err != nil {
			a.release()
			return nil, abandonedOr(ctx, err)
		}
		break
	}
	defer a.release()
	defer rt.cancel()
	if d, ok := ctx.Value(callTimeoutKey{}).(time.Duration); ok && d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	if late := rt.lateFor(ctx); late > 0 {
		// A query whose later calls would come after its deadline would fetch the cards
		// of its first call for nothing (the query fails, the next round fetches them
		// again): it is given up before any call.
		return nil, &Error{Carrier: a.cfg.Carrier, Account: a.cfg.ID, Kind: KindRateLimited, Code: "cluster_quota",
			Message: fmt.Sprintf("the query's last call token comes %v after its deadline", late.Round(time.Millisecond)), RetryAfter: late}
	}
	// Riders are taken once the tokens are in hand: with the cluster's shared bucket the
	// wait for them is where the partial queries of other shards pile up.
	riders := a.takeRiders(len(iccids))
	all := iccids
	if len(riders) > 0 {
		all = make([]string, 0, a.client.BatchSize())
		all = append(all, iccids...)
		for _, r := range riders {
			all = append(all, r.iccids...)
		}
	}
	res, err := a.query(ctx, rt, all)
	return deliver(res, err, len(iccids), riders)
}

// openRoom is a query's spare batch room while it waits for its tokens.
type openRoom struct{ room int }

// TakeRoom promises up to n cards of the largest spare room of a partial query that
// holds a slot and waits for its tokens, and returns how many (0: none open). A query
// of exactly that many cards made now rides in that query's call (coalesce.go): a
// caller holding a full batch while its account's query is out carves the promised
// cards off it, and the partial query (another shard's last cards) goes out full.
func (a *Account) TakeRoom(n int) int {
	if n <= 0 {
		return 0
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	var best *openRoom
	for _, o := range a.openRooms {
		if o.room > 0 && (best == nil || o.room > best.room) {
			best = o
		}
	}
	if best == nil {
		return 0
	}
	take := min(n, best.room)
	best.room -= take
	return take
}

// tokenWait is a query that holds a slot while it waits for its tokens (see tokenWaits).
type tokenWait struct {
	priority  Priority
	cancel    context.CancelFunc
	preempted bool // under Account.mu: its slot went to a query of a higher priority
}

// tokensWithSlot reserves the call tokens of a query of n cards that holds a slot. While
// it waits its unused batch room is open to riders (formingRoom), and a query below
// PriorityUrgent waiting on the TokenSource may lose its slot to one of a higher
// priority: preempted reports that (the slot is no longer this query's to release). An
// urgent query whose urgency ends while it waits asks again at its own priority.
func (a *Account) tokensWithSlot(ctx context.Context, n int) (rt *reservedTokens, preempted bool, err error) {
	room := 0
	if b := a.client.BatchSize(); b > 1 {
		room = max(0, b-n)
	}
	var spot *openRoom
	a.mu.Lock()
	a.formingRoom += room
	if room > 0 {
		spot = &openRoom{room: room}
		a.openRooms = append(a.openRooms, spot)
	}
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		a.formingRoom -= room
		if room > 0 {
			a.broadcastLocked()
			a.openRooms = slices.DeleteFunc(a.openRooms, func(o *openRoom) bool { return o == spot })
		}
		a.mu.Unlock()
	}()
	for {
		p, until := priorityOf(ctx), urgency(ctx)
		rctx, cancel := context.WithCancel(ctx)
		var tw *tokenWait
		if a.tokens.Load() != nil {
			if p < PriorityUrgent {
				tw = &tokenWait{priority: p, cancel: cancel}
				a.mu.Lock()
				a.tokenWaits = append(a.tokenWaits, tw)
				a.mu.Unlock()
			} else if until != nil {
				go func() {
					select {
					case <-until:
						cancel()
					case <-rctx.Done():
					}
				}()
			}
		}
		rt, err = a.reserve(rctx, a.callsFor(n))
		demoted := err != nil && ctx.Err() == nil && rctx.Err() != nil && tw == nil
		cancel()
		if tw != nil {
			a.mu.Lock()
			preempted = tw.preempted
			if !preempted {
				a.tokenWaits = slices.DeleteFunc(a.tokenWaits, func(o *tokenWait) bool { return o == tw })
			}
			a.mu.Unlock()
		}
		switch {
		case preempted:
			// Tokens that came at the same moment are not used: this query has no slot.
			return nil, true, nil
		case demoted:
			continue // its urgency ended: ask again at its own priority
		}
		return rt, false, err
	}
}

// callsFor is how many rate-limited HTTP calls a query of n cards costs.
func (a *Account) callsFor(n int) int {
	calls := CallsPerQuery(a.cfg.Carrier)
	if a.client.BatchSize() == 1 {
		calls *= max(1, n)
	}
	return calls
}

// query sends one batch to the carrier with its reserved tokens (the caller holds a
// concurrency slot).
func (a *Account) query(ctx context.Context, rt *reservedTokens, iccids []string) ([]Result, error) {
	ctx = context.WithValue(ctx, reservedKey{}, rt)
	a.calls.Add(1)
	res, err := a.breaker.Execute(func() ([]Result, error) {
		res, err := a.client.Query(ctx, iccids)
		if err != nil && ctx.Err() != nil {
			return nil, &callerGone{err: err}
		}
		return res, err
	})
	var gone *callerGone
	if errors.As(err, &gone) {
		err = gone.err
	}
	if errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests) {
		a.circuitRejects.Add(1)
		return nil, a.circuitOpen()
	}
	a.mu.Lock()
	if err != nil {
		a.consecutive++
	} else {
		a.consecutive = 0
	}
	a.mu.Unlock()
	if err != nil {
		a.errorsByKind[KindOf(err)].Add(1)
		a.logger.Debug("query failed", "cards", len(iccids), "kind", KindOf(err).String(), "error", err)
		return nil, err
	}
	if len(res) != len(iccids) {
		err := &Error{Carrier: a.cfg.Carrier, Account: a.cfg.ID, Kind: KindTransient,
			Message: fmt.Sprintf("%d results for %d cards", len(res), len(iccids))}
		a.errorsByKind[KindTransient].Add(1)
		return nil, err
	}
	a.successes.Add(1)
	for _, r := range res {
		if r.Err != nil {
			a.cardErrorsByKnd[KindOf(r.Err)].Add(1)
		} else {
			a.cards.Add(1)
		}
	}
	return res, nil
}

func (a *Account) circuitOpen() error {
	return &Error{Carrier: a.cfg.Carrier, Account: a.cfg.ID, Kind: KindTransient, Code: "circuit_open",
		Message: "circuit breaker open after repeated transient failures", RetryAfter: a.cfg.BreakerOpen, Err: ErrCircuitOpen}
}

// Backoff says how long to leave the account alone after err: the
// carrier's Retry-After where given, else BackoffBase*2^(n-1) with jitter
// for the n-th consecutive failed Query (capped at BackoffMax). The count
// resets on a successful Query.
func (a *Account) Backoff(err error) time.Duration {
	if ra := RetryAfter(err); ra > 0 {
		return ra
	}
	a.mu.Lock()
	n := a.consecutive
	a.mu.Unlock()
	if n < 1 {
		n = 1
	}
	d := a.cfg.BackoffBase
	for i := 1; i < n && d < a.cfg.BackoffMax; i++ {
		d *= 2
	}
	if d > a.cfg.BackoffMax {
		d = a.cfg.BackoffMax
	}
	half := d / 2
	return half + time.Duration(rand.Int64N(int64(half)+1))
}

// Stats returns a snapshot of the account's counters.
func (a *Account) Stats() AccountStats {
	a.mu.Lock()
	s := AccountStats{
		Account: a.cfg.ID, Carrier: a.cfg.Carrier,
		InFlight: a.inFlight, Pending: a.pending, ConsecutiveFailures: a.consecutive,
		RatePerSec: a.shareRate, Burst: a.shareBurst, Concurrency: a.shareConc,
	}
	a.mu.Unlock()
	s.Calls = a.calls.Load()
	s.HTTPCalls = a.httpCalls.Load()
	s.Successes = a.successes.Load()
	s.Cards = a.cards.Load()
	s.LimiterWaits = a.limiterWaits.Load()
	s.LimiterWaitTime = time.Duration(a.limiterWaitNanos.Load())
	s.SlotWaits = a.slotWaits.Load()
	s.Preempted = a.preemptions.Load()
	s.Coalesced = a.riders.Load()
	s.CircuitRejects = a.circuitRejects.Load()
	s.Breaker = strings.ToLower(a.breaker.State().String())
	s.Errors = map[string]uint64{}
	s.CardErrors = map[string]uint64{}
	for k := 1; k < NumKinds; k++ {
		if v := a.errorsByKind[k].Load(); v > 0 {
			s.Errors[Kind(k).String()] = v
		}
		if v := a.cardErrorsByKnd[k].Load(); v > 0 {
			s.CardErrors[Kind(k).String()] = v
		}
	}
	return s
}

// callerGone marks a failure caused by the caller's context ending.
type callerGone struct{ err error }

func (c *callerGone) Error() string { return c.err.Error() }
func (c *callerGone) Unwrap() error { return c.err }
