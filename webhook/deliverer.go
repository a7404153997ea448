package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"cardsync/fsm"
	"cardsync/membership"
)

// Cluster is what the deliverer needs from the local cardsync node.
type Cluster interface {
	Name() string
	FSM() *fsm.FSM
	Ring() *membership.Ring
	Ready() bool
	ProposeEncoded(ctx context.Context, t fsm.Type, payload any) (*fsm.Result, error)
}

// Payload is the JSON body of a delivery.
type Payload struct {
	Subscription string       `json:"subscription"`
	Epoch        uint64       `json:"epoch"`
	Events       []fsm.Change `json:"events"`
	// Cursor is the sequence the subscription's cursor moves to once this batch is
	// acknowledged (at or after the last event's).
	Cursor uint64 `json:"cursor"`
}

// Deliverer runs the delivery workers of the subscriptions this node owns on the ring.
type Deliverer struct {
	cfg    Config
	cl     Cluster
	logger hclog.Logger

	mu      sync.Mutex
	workers map[string]*worker
	wg      sync.WaitGroup
}

// New returns a Deliverer; zero fields of cfg take their defaults.
func New(cfg Config, cl Cluster) (*Deliverer, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Deliverer{cfg: cfg, cl: cl, logger: cfg.Logger.Named("webhook"), workers: map[string]*worker{}}, nil
}

// Run starts and stops workers as subscriptions and the ring change, until ctx ends; it
// then stops every worker (each records its acknowledged cursor first) and returns nil.
func (d *Deliverer) Run(ctx context.Context) error {
	t := time.NewTicker(d.cfg.PollInterval)
	defer t.Stop()
	for {
		d.reconcile(ctx)
		select {
		case <-ctx.Done():
			d.mu.Lock()
			for _, w := range d.workers {
				w.cancel()
			}
			d.mu.Unlock()
			d.wg.Wait()
			return nil
		case <-t.C:
		}
	}
}

// reconcile runs a worker for every active subscription this node owns on the ring and
// stops the others.
func (d *Deliverer) reconcile(ctx context.Context) {
	want := map[string]bool{}
	if d.cl.Ready() {
		subs, err := d.cl.FSM().Subscriptions()
		if err != nil {
			d.logger.Warn("list subscriptions", "error", err)
			return
		}
		ring, me := d.cl.Ring(), d.cl.Name()
		for _, s := range subs {
			if !s.Paused && ring != nil && ring.Owner(s.ID) == me {
				want[s.ID] = true
			}
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for id, w := range d.workers {
		if !want[id] {
			w.cancel()
		}
	}
	for id := range want {
		if w, ok := d.workers[id]; ok && !w.finished() {
			continue
		}
		wctx, cancel := context.WithCancel(ctx)
		w := &worker{d: d, id: id, cancel: cancel, done: make(chan struct{}), logger: d.logger.With("subscription", id)}
		d.workers[id] = w
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			defer close(w.done)
			defer cancel()
			w.run(wctx)
		}()
	}
	for id, w := range d.workers {
		if w.finished() && !want[id] {
			delete(d.workers, id)
		}
	}
}

// LocalState is a worker's in-memory state on this node.
type LocalState struct {
	// Cursor is the last sequence delivered (it may be ahead of the replicated cursor
	// until the next advance commits).
	Cursor uint64 `json:"cursor"`
	// State is "delivering", "waiting", "backoff" or "stopped".
	State     string    `json:"state"`
	Failures  int       `json:"failures"`
	NextRetry time.Time `json:"next_retry,omitempty"`
	LastError string    `json:"last_error,omitempty"`
}

// Local returns the state of this node's workers by subscription id.
func (d *Deliverer) Local() map[string]LocalState {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[string]LocalState, len(d.workers))
	for id, w := range d.workers {
		out[id] = w.state()
	}
	return out
}

type worker struct {
	d      *Deliverer
	id     string
	cancel context.CancelFunc
	done   chan struct{}
	logger hclog.Logger

	mu sync.Mutex
	ls LocalState
}

func (w *worker) finished() bool {
	select {
	case <-w.done:
		return true
	default:
		return false
	}
}

func (w *worker) state() LocalState {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ls
}

func (w *worker) set(f func(*LocalState)) {
	w.mu.Lock()
	f(&w.ls)
	w.mu.Unlock()
}

// errFenced ends a worker: another deliverer holds the subscription, or it was deleted,
// paused or moved away.
var errFenced = errors.New("no longer this node's subscription")

// run claims the subscription and delivers until ctx ends or the worker is fenced.
func (w *worker) run(ctx context.Context) {
	defer w.set(func(l *LocalState) { l.State = "stopped" })
	cl, cfg := w.d.cl, w.d.cfg
	sub, err := cl.FSM().Subscription(w.id)
	if err != nil {
		return
	}
	res, err := cl.ProposeEncoded(ctx, fsm.TypeClaimSubscription, fsm.ClaimSubscription{ID: w.id, Node: cl.Name(), Epoch: sub.Epoch})
	if err != nil {
		if ctx.Err() == nil {
			w.logger.Debug("claim", "error", err)
		}
		return
	}
	epoch := res.Epoch
	// The cursor as of the claim: read until the claim is visible locally.
	for {
		sub, err = cl.FSM().Subscription(w.id)
		if err != nil || sub.Epoch > epoch {
			return
		}
		if sub.Epoch == epoch {
			break
		}
		if _, err := cl.FSM().WaitApplied(ctx, cl.FSM().AppliedIndex()); err != nil {
			return
		}
	}
	w.logger.Info("delivering", "epoch", epoch, "cursor", sub.Cursor, "url", sub.URL)
	st := &deliveryState{epoch: epoch, acked: sub.Cursor, cursor: sub.Cursor, lastAdvance: time.Now()}
	w.set(func(l *LocalState) { l.Cursor, l.State = st.cursor, "waiting" })
	err = w.loop(ctx, st)
	if !errors.Is(err, errFenced) && st.cursor > st.acked {
		// Record what was acknowledged before stopping (a planned handoff starts there).
		actx, cancel := context.WithTimeout(context.Background(), cfg.RequestTimeout)
		_ = w.advance(actx, st, fsm.AdvanceSubscription{})
		cancel()
	}
	w.logger.Info("stopped delivering", "epoch", epoch, "cursor", st.cursor, "reason", err)
}

type deliveryState struct {
	epoch         uint64
	acked, cursor uint64 // replicated cursor, delivered cursor
	pending       uint64 // events delivered since the last advance
	lastAdvance   time.Time
	failures      int
	failingSince  time.Time
}

// advance proposes the delivered cursor (plus whatever extra p carries: an error or a
// pause). A fencing answer ends the worker.
func (w *worker) advance(ctx context.Context, st *deliveryState, p fsm.AdvanceSubscription) error {
	p.ID, p.Node, p.Epoch, p.Cursor, p.Delivered = w.id, w.d.cl.Name(), st.epoch, st.cursor, st.pending
	_, err := w.d.cl.ProposeEncoded(ctx, fsm.TypeAdvanceSubscription, p)
	switch {
	case err == nil:
		st.acked, st.pending, st.lastAdvance = st.cursor, 0, time.Now()
		return nil
	case errors.Is(err, fsm.ErrStaleEpoch), errors.Is(err, fsm.ErrNotOwner), errors.Is(err, fsm.ErrNotFound):
		return fmt.Errorf("%w: %v", errFenced, err)
	}
	return err
}

func (w *worker) loop(ctx context.Context, st *deliveryState) error {
	cl, cfg := w.d.cl, w.d.cfg
	f := cl.FSM()
	for {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		sub, err := f.Subscription(w.id)
		switch {
		case errors.Is(err, fsm.ErrNotFound):
			return fmt.Errorf("%w: deleted", errFenced)
		case err != nil:
			return err
		case sub.Epoch != st.epoch:
			return fmt.Errorf("%w: epoch %d replaced by %d", errFenced, st.epoch, sub.Epoch)
		case sub.Paused:
			return fmt.Errorf("%w: paused", errFenced)
		}
		if r := cl.Ring(); r == nil || r.Owner(w.id) != cl.Name() {
			return errors.New("the ring moved the subscription to another node")
		}
		page, err := f.Feed(fsm.FeedQuery{After: st.cursor, Limit: cfg.BatchSize, Enterprise: sub.Enterprise, Kinds: sub.Kinds})
		if errors.Is(err, fsm.ErrFeedTrimmed) {
			reason := fmt.Sprintf("cursor %d is older than the retained change feed (dropped up to %d): resynchronise from GET /v1/cards, set the cursor with POST /v1/webhooks (after), then resume", st.cursor, page.Trimmed)
			if err := w.advance(ctx, st, fsm.AdvanceSubscription{Pause: true, Reason: reason, Error: "change feed trimmed"}); err != nil {
				return err
			}
			return fmt.Errorf("%w: %s", errFenced, reason)
		}
		if err != nil {
			return err
		}
		if len(page.Changes) < cfg.BatchSize && len(page.Changes) > 0 && cfg.Linger > 0 {
			// Give the batch a moment to fill, then read again.
			if !sleep(ctx, cfg.Linger) {
				return ctx.Err()
			}
			if p2, err := f.Feed(fsm.FeedQuery{After: st.cursor, Limit: cfg.BatchSize, Enterprise: sub.Enterprise, Kinds: sub.Kinds}); err == nil {
				page = p2
			}
		}
		if len(page.Changes) == 0 {
			st.cursor = max(st.cursor, page.Next)
			if (st.cursor > st.acked && time.Since(st.lastAdvance) >= cfg.IdleAdvance) || st.pending > 0 {
				if err := w.advance(ctx, st, fsm.AdvanceSubscription{}); errors.Is(err, errFenced) {
					return err
				}
			}
			w.set(func(l *LocalState) { l.Cursor, l.State = st.cursor, "waiting" })
			wctx, cancel := context.WithTimeout(ctx, cfg.PollInterval)
			_, _ = f.WaitApplied(wctx, page.AppliedIndex)
			cancel()
			continue
		}
		w.set(func(l *LocalState) { l.State = "delivering" })
		derr := w.post(ctx, sub, st.epoch, page)
		if derr == nil {
			st.cursor = max(st.cursor, page.Next)
			st.pending += uint64(len(page.Changes))
			st.failures = 0
			if err := w.advance(ctx, st, fsm.AdvanceSubscription{}); errors.Is(err, errFenced) {
				return err
			} else if err != nil && ctx.Err() == nil {
				w.logger.Warn("advance cursor", "error", err)
			}
			w.set(func(l *LocalState) { l.Cursor, l.Failures, l.LastError, l.NextRetry = st.cursor, 0, "", time.Time{} })
			continue
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		st.failures++
		if st.failures == 1 {
			st.failingSince = time.Now()
		}
		msg := clip(derr.Error())
		pause := st.failures >= cfg.PauseAfterFailures || time.Since(st.failingSince) >= cfg.PauseAfter
		rep := fsm.AdvanceSubscription{Error: msg}
		if pause {
			rep.Pause = true
			rep.Reason = fmt.Sprintf("subscriber failed %d times in a row over %s (last: %s); resume with POST /v1/webhooks/%s/resume",
				st.failures, time.Since(st.failingSince).Round(time.Second), msg, w.id)
		}
		if err := w.advance(ctx, st, rep); errors.Is(err, errFenced) {
			return err
		}
		if pause {
			w.logger.Warn("subscription paused", "failures", st.failures, "error", msg)
			return fmt.Errorf("%w: paused after %d failures", errFenced, st.failures)
		}
		wait := backoff(cfg.MinBackoff, cfg.MaxBackoff, st.failures)
		w.logger.Debug("delivery failed", "error", msg, "failures", st.failures, "retry_in", wait)
		w.set(func(l *LocalState) {
			l.State, l.Failures, l.LastError, l.NextRetry = "backoff", st.failures, msg, time.Now().Add(wait)
		})
		if !sleep(ctx, wait) {
			return ctx.Err()
		}
	}
}

// post sends one batch and reports whether the subscriber acknowledged it (2xx).
func (w *worker) post(ctx context.Context, sub fsm.Subscription, epoch uint64, page fsm.FeedPage) error {
	cfg := w.d.cfg
	body, err := json.Marshal(Payload{Subscription: sub.ID, Epoch: epoch, Events: page.Changes, Cursor: page.Next})
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, cfg.RequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, sub.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "cardsync-webhook/1")
	req.Header.Set(HeaderSignature, Sign([]byte(sub.Secret), body))
	req.Header.Set(HeaderSubscription, sub.ID)
	req.Header.Set(HeaderEpoch, strconv.FormatUint(epoch, 10))
	req.Header.Set(HeaderDelivery, fmt.Sprintf("%s-%d-%d", sub.ID, page.Changes[0].Seq, page.Changes[len(page.Changes)-1].Seq))
	resp, err := cfg.HTTPClient.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("subscriber answered HTTP %d", resp.StatusCode)
	}
	return nil
}

// backoff returns the wait before attempt n+1: exponential from min, capped at max, with
// jitter in [d/2, d].
func backoff(minD, maxD time.Duration, failures int) time.Duration {
	d := minD
	for i := 1; i < failures && d < maxD; i++ {
		d *= 2
	}
	d = min(d, maxD)
	return d/2 + rand.N(d/2+1)
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func clip(s string) string {
	if len(s) > 512 {
		s = s[:512]
	}
	return strings.ToValidUTF8(s, "?")
}
