package syncer

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"sort"
	"strings"
	"sync"
	"time"

	"cardsync/carrier"
	"cardsync/fsm"
)

// worker runs one claimed shard: the serial card loop of claim 1 steps 3-4.
type worker struct {
	s     *Syncer
	shard string
	epoch uint64

	stopOnce   sync.Once
	stopCh     chan struct{}
	stopReason string

	taskID    uint64
	cursor    string // last ICCID finished (flushed or about to be)
	results   []fsm.CardResult
	skipped   uint64
	failed    uint64
	pending   int // cards processed since the last flush
	lastFlush time.Time
	// firstAnswer: the claim's first carrier answer is in; answerFlushed: a flush has
	// carried the claim's first progress. The first answer (for a task taken over, also
	// cards skipped as still valid) is flushed at once rather than after FlushEvery cards
	// or FlushInterval: the first progress of a shard taken over from a dead member (or
	// handed over) shows in the replicated state as soon as it exists.
	firstAnswer, answerFlushed bool
	deferred                   map[string]string // account -> why its cards wait for a later task
	// takenOver is open while the claim resumes a task cut off under another claim (see
	// the function takenOver) and has not progressed yet: its queries are urgent meanwhile
	// (carrier.WithUrgency). It is closed by the claim's first answer or first flush of
	// progress; nil for other claims.
	takenOver     chan struct{}
	takenOverOnce sync.Once
}

// cutOff reports whether a task is running without a live claim after a flush within
// the last lease at now: cut off under its claim (its owner died, was cut off, or handed
// the shard over). The poller resumes such a task first in its group; a claim that
// resumes one with progress (takenOver) is urgent until it progresses. (A task its owner
// left for a carrier backoff passes too once the backoff is over, if that was within
// the lease: one shard per backoff, which the urgency costs nothing that matters.)
func cutOff(ck fsm.Checkpoint, now time.Time, lease time.Duration) bool {
	return ck.State == fsm.StateRunning && ck.UpdatedAt.After(now.Add(-lease))
}

// takenOver reports whether a claim at now resumes a task cut off under another claim
// after it made progress.
func takenOver(ck fsm.Checkpoint, now time.Time, lease time.Duration) bool {
	return cutOff(ck, now, lease) && (ck.Cursor != "" || ck.Synced+ck.Skipped+ck.Failed > 0)
}

// answered ends the urgency of a task taken over.
func (w *worker) answered() {
	if w.takenOver != nil {
		w.takenOverOnce.Do(func() { close(w.takenOver) })
	}
}

func (w *worker) stop(reason string) {
	w.stopOnce.Do(func() {
		w.stopReason = reason
		close(w.stopCh)
	})
}

func (w *worker) stopped() bool {
	select {
	case <-w.stopCh:
		return true
	default:
		return false
	}
}

// errFenced means the FSM rejected this worker's epoch: another owner has the shard.
var errFenced = errors.New("fenced: shard belongs to a newer epoch")

func (w *worker) run(ctx context.Context) {
	s := w.s
	log := s.log.With("shard", w.shard, "epoch", w.epoch)
	err := w.work(ctx)
	switch {
	case errors.Is(err, errFenced):
		s.m.rounds.WithLabelValues("fenced").Inc()
		log.Info("stopped: fenced by a newer epoch")
	case err != nil && !errors.Is(err, errStopped):
		s.m.rounds.WithLabelValues("error").Inc()
		log.Warn("round ended early", "error", err)
	}
}

// work returns nil when the shard finished or was released, errFenced when another owner
// took it, errStopped when a handoff stopped it.
func (w *worker) work(ctx context.Context) error {
	s := w.s
	st, err := s.state.Shard(w.shard)
	if err != nil {
		return w.release(ctx, "read shard: "+err.Error(), time.Time{})
	}
	ck := st.Checkpoint
	w.deferred = map[string]string{}
	if ck.State == fsm.StateRunning {
		// Claims 5 and 7: an unfinished task continues from the stored cursor.
		w.taskID, w.cursor = ck.TaskID, ck.Cursor
		if takenOver(ck, s.cfg.Now(), s.cfg.Lease) {
			w.takenOver = make(chan struct{})
			defer w.answered()
		}
	} else {
		// Claim 6: check the dependency data before a new task; if it changed since the
		// last task, the new task is started with it (StartTask records the version).
		dep, reason := w.checkDependencies(st)
		if reason != "" {
			return w.release(ctx, "dependency not ready: "+reason, s.cfg.Now().Add(s.cfg.DependencyRetry))
		}
		res, err := w.propose(ctx, fsm.TypeStartTask, fsm.StartTask{Shard: w.shard, Node: s.cluster.Name(), Epoch: w.epoch, DepVersion: dep})
		if err != nil {
			return err
		}
		w.taskID, w.cursor = res.TaskID, ""
	}
	w.lastFlush = s.cfg.Now()

	stop, reason, next, err := w.walk(ctx)
	if err != nil {
		return err
	}
	if stop {
		return w.finish(ctx, false, reason, next)
	}
	return w.finish(ctx, true, w.deferredReason(), w.deferredNextRun())
}

// checkDependencies returns the dependency version of the shard's task data (enterprise
// inventory versions and account versions) or why the shard cannot start a task.
func (w *worker) checkDependencies(st fsm.ShardState) (uint64, string) {
	ents, accts := w.s.deps()
	return w.s.dependencies(st, ents, accts)
}

// dependencies computes the dependency version of a shard's task data, or why it is not
// ready.
func (s *Syncer) dependencies(st fsm.ShardState, ents map[string]fsm.Enterprise, accts map[string]fsm.Account) (uint64, string) {
	h := fnv.New64a()
	var notReady []string
	ready := 0
	ids := append([]string(nil), st.Enterprises...)
	sort.Strings(ids)
	for _, id := range ids {
		e, ok := ents[id]
		if !ok || !e.InventoryReady {
			notReady = append(notReady, "inventory of "+id)
			continue
		}
		usable := false
		names := make([]string, 0, len(e.Accounts))
		for _, a := range e.Accounts {
			names = append(names, a)
		}
		sort.Strings(names)
		for _, a := range names {
			acct, ok := accts[a]
			fmt.Fprintf(h, "%s/%d;", a, acct.Version)
			if _, configured := s.accounts[a]; ok && acct.CredentialsValid && configured {
				usable = true
			}
		}
		if !usable {
			notReady = append(notReady, "no valid carrier account for "+id)
			continue
		}
		fmt.Fprintf(h, "%s@%d;", id, e.InventoryVersion)
		ready++
	}
	if ready == 0 {
		if len(notReady) == 0 {
			notReady = []string{"no enterprise"}
		}
		return 0, strings.Join(notReady, ", ")
	}
	return h.Sum64(), ""
}

type batch struct {
	account string
	cards   []fsm.Card
	at      []int // walk position of each card
	first   int   // walk position of its first card
}

// carve takes the first n cards off b into a batch of their own.
func (b *batch) carve(n int) *batch {
	front := &batch{account: b.account, cards: b.cards[:n:n], at: b.at[:n:n], first: b.first}
	b.cards, b.at = b.cards[n:], b.at[n:]
	b.first = b.at[0]
	return front
}

// answer is a batch query's outcome, handed from its call back to the walk.
type answer struct {
	b       *batch
	results []carrier.Result
	err     error
}

// walk goes through the shard's cards in ICCID order from the cursor (claim 1 steps
// 3-4): valid cards are skipped, due cards are gathered per carrier account into batch
// queries. The accounts are worked side by side: each account has at most one query in
// flight for this shard while the walk goes on gathering the others' cards, so a slow
// account (or one whose quota share is small) does not hold up the rest, and a batch is
// sent when it is full rather than at a window boundary. The cursor only ever moves to
// the card just before the earliest card not yet answered (an open or in-flight batch's
// first card), so everything at or before it is finished; cards answered beyond it are
// recorded with their results and skipped as valid by whoever resumes from the cursor.
// WindowCards bounds how far the walk runs ahead of the cursor: at the bound the batch
// holding the cursor back is sent even if it is not full.
//
// It returns stop=true with a reason when the round must end early (claim 8, handoff,
// fencing); then every query in flight has been answered and recorded.
func (w *worker) walk(ctx context.Context) (stop bool, reason string, next time.Time, err error) {
	s := w.s
	var (
		buf       []fsm.Card // walked cards after the cursor; buf[0] is at position base
		base, pos int        // pos: the position of the next card to walk
		page      []fsm.Card
		pi        int
		head      = w.cursor // last card read from the replica
		exhausted bool
		open      = map[string]*batch{} // account -> batch being gathered
		flying    = map[string]*batch{} // account -> batch whose query is out
		// riding: account -> cards carved off a full batch to fill another query's spare
		// room (carrier.Account.TakeRoom); out beside the account's flying batch.
		riding = map[string]*batch{}
		// ready: account -> full batches waiting, oldest first, for the account's query
		// out; the walk reads on past them (up to WindowCards) so that one slow account
		// does not hold up the others' cards behind its own.
		ready    = map[string][]*batch{}
		answers  = make(chan answer, 2*len(s.accounts)+1)
		stopping bool
		failedAt = -1 // first position of a batch whose query failed
	)
	frontier := func() int {
		f := pos
		for _, b := range open {
			f = min(f, b.first)
		}
		for _, b := range flying {
			f = min(f, b.first)
		}
		for _, b := range riding {
			f = min(f, b.first)
		}
		for _, q := range ready {
			f = min(f, q[0].first)
		}
		if failedAt >= 0 {
			f = min(f, failedAt)
		}
		return f
	}
	advance := func() {
		f := frontier()
		if f > base {
			w.cursor = buf[f-1-base].ICCID
			buf = buf[f-base:]
			base = f
		}
	}
	send := func(b *batch, first bool) {
		go func() {
			results, err := w.call(ctx, b, first)
			answers <- answer{b, results, err}
		}()
	}
	sent := map[string]bool{} // accounts queried in this round
	dispatch := func(b *batch) {
		flying[b.account] = b
		// The round's first query of each account goes ahead of queries queued by
		// shards that are already moving, so a shard just taken over or started
		// progresses at once.
		first := !sent[b.account]
		sent[b.account] = true
		send(b, first)
	}
	// receive records one answer; a failed query ends the round once the others are in.
	receive := func(a answer) error {
		if riding[a.b.account] == a.b {
			delete(riding, a.b.account)
		} else {
			delete(flying, a.b.account)
		}
		ok, why, nextRun, err := w.record(ctx, a)
		if err != nil {
			return err
		}
		if !ok {
			if failedAt < 0 || a.b.first < failedAt {
				failedAt = a.b.first
			}
			if !stopping {
				stopping, reason, next = true, why, nextRun
			}
		}
		advance()
		if stopping {
			return nil
		}
		return w.maybeFlush(ctx)
	}
	// wait takes in the next answer. A walk that waits long (its queries queued behind
	// other shards' for the account's quota) flushes every FlushInterval all the same:
	// the flush renews the claim's lease.
	wait := func() error {
		for {
			t := time.NewTimer(max(time.Millisecond, s.cfg.FlushInterval-s.cfg.Now().Sub(w.lastFlush)))
			select {
			case a := <-answers:
				t.Stop()
				return receive(a)
			case <-t.C:
				if err := w.flush(ctx, false, false, "", time.Time{}); err != nil {
					return err
				}
			}
		}
	}
	full := func(b *batch) bool {
		size := 1
		if s.cfg.Batching {
			size = max(1, s.accounts[b.account].BatchSize())
		}
		return len(b.cards) >= size
	}

	for {
		// Take in whatever has been answered.
		for drained := false; !drained; {
			select {
			case a := <-answers:
				if err := receive(a); err != nil {
					return true, "", time.Time{}, err
				}
			default:
				drained = true
			}
		}
		if !stopping && w.stopped() {
			stopping, reason, next = true, w.stopReason, time.Time{}
		}
		if stopping {
			// Send nothing more; the round ends once the queries out are answered.
			if len(flying)+len(riding) == 0 {
				advance()
				return true, reason, next, nil
			}
			if err := wait(); err != nil {
				return true, "", time.Time{}, err
			}
			continue
		}
		// A full batch goes out as soon as its account has no query in flight; until then
		// it waits in the account's ready queue and the walk reads on. While a query is
		// out, the first cards of the account's oldest waiting batch may fill the spare
		// room of a partial query of the account waiting for its tokens on this node
		// (another shard's last batch): they ride in that query's call, which then goes
		// out full.
		for acct, b := range open {
			if full(b) || w.deferred[acct] != "" {
				ready[acct] = append(ready[acct], b)
				delete(open, acct)
			}
		}
		for acct, q := range ready {
			if w.deferred[acct] != "" {
				// An answer deferred the account meanwhile: its gathered cards wait too.
				for _, b := range q {
					w.deferCards(len(b.cards))
				}
				delete(ready, acct)
				continue
			}
			if flying[acct] == nil {
				dispatch(q[0])
				q = q[1:]
			}
			if len(q) > 0 && riding[acct] == nil && s.cfg.Batching {
				if n := s.accounts[acct].TakeRoom(len(q[0].cards) - 1); n > 0 {
					riding[acct] = q[0].carve(n)
					send(riding[acct], false)
				}
			}
			if len(q) == 0 {
				delete(ready, acct)
			} else {
				ready[acct] = q
			}
		}
		if pi == len(page) && !exhausted {
			page, err = s.state.ShardCards(w.shard, head, s.cfg.PageSize)
			if err != nil {
				stopping, reason = true, "read cards: "+err.Error()
				continue
			}
			pi = 0
			if len(page) == 0 {
				exhausted = true
			} else {
				head = page[len(page)-1].ICCID
			}
		}
		if exhausted || pos-frontier() >= s.cfg.WindowCards {
			// No more cards, or too far ahead of the cursor: send the batch that holds
			// the cursor back (at the end, every batch), full or not.
			var oldest *batch
			for _, b := range open {
				if flying[b.account] == nil && len(ready[b.account]) == 0 && (oldest == nil || b.first < oldest.first) {
					oldest = b
				}
			}
			readOn := false
			switch {
			case oldest != nil && (exhausted || oldest.first == frontier()):
				delete(open, oldest.account)
				dispatch(oldest)
			case len(flying)+len(riding) > 0:
				if err := wait(); err != nil {
					return true, "", time.Time{}, err
				}
			case exhausted && len(open)+len(ready) == 0:
				advance()
				if w.stopped() {
					return true, w.stopReason, time.Time{}, nil
				}
				return false, "", time.Time{}, nil
			default:
				// Nothing to send or wait for: nothing holds the cursor back, so the
				// walk is not really ahead; read on.
				advance()
				readOn = true
			}
			if !readOn {
				continue
			}
		}

		c := page[pi]
		pi++
		buf = append(buf, c)
		pos++
		now := s.cfg.Now()
		switch {
		case c.ValidUntil.After(now):
			w.skipped++
			w.pending++
			s.m.cards.WithLabelValues("skipped").Inc()
		case w.deferred[c.Account] != "":
			w.failed++
			w.pending++
			s.m.cards.WithLabelValues("deferred").Inc()
		default:
			if why := s.unusable(c.Account, now); why != "" {
				w.deferred[c.Account] = why
				w.failed++
				w.pending++
				s.m.cards.WithLabelValues("deferred").Inc()
				break
			}
			b := open[c.Account]
			if b == nil {
				b = &batch{account: c.Account, first: pos - 1}
				open[c.Account] = b
			}
			b.cards = append(b.cards, c)
			b.at = append(b.at, pos-1)
		}
		advance()
		if err := w.maybeFlush(ctx); err != nil {
			return true, "", time.Time{}, err
		}
	}
}

// call sends one batch query. It runs beside the walk, so it touches no worker state.
// The call gets its own deadline within the lease, from the moment it may start, so a
// stuck carrier cannot outlive the claim. The wait for a slot and tokens before that is
// this node's queue for the account's quota, not the carrier: it has its own bound
// (queueWait), past which the query is given up and its account's cards deferred, not
// failed (the walk renews the lease meanwhile). It is not cut short when the node stops:
// a call the carrier has answered is flushed instead of being thrown away and fetched
// again by the next owner.
func (w *worker) call(ctx context.Context, b *batch, first bool) ([]carrier.Result, error) {
	s := w.s
	iccids := make([]string, len(b.cards))
	for i, c := range b.cards {
		iccids[i] = c.ICCID
	}
	cctx := carrier.WithCallTimeout(context.WithoutCancel(ctx), s.cfg.Lease/2)
	// A query still waiting for a slot or its tokens when the worker is stopped (a
	// handoff, the node stopping), or after queueWait, is given up: nothing has been
	// fetched yet.
	wait := s.queueWait()
	abandon, queued, done := make(chan struct{}), make(chan struct{}), make(chan struct{})
	defer close(done)
	timer := time.AfterFunc(wait, func() { close(queued) })
	defer timer.Stop()
	go func() {
		select {
		case <-w.stopCh:
		case <-queued:
		case <-done:
			return
		}
		close(abandon)
	}()
	cctx = carrier.WithAbandon(cctx, abandon)
	if first {
		cctx = carrier.WithPriority(cctx)
	}
	if w.takenOver != nil {
		// Until the claim's first progress: a shard taken over goes ahead of the rounds
		// started meanwhile, and stops doing so once it progresses.
		cctx = carrier.WithUrgency(cctx, w.takenOver)
	}
	res, err := s.accounts[b.account].Query(cctx, iccids)
	if errors.Is(err, carrier.ErrAbandoned) && !w.stopped() {
		return nil, fmt.Errorf("%w (%v)", errQueueWait, wait)
	}
	return res, err
}

// errQueueWait: a query waited queueWait for its account's slot or tokens on this node
// and was given up before any call.
var errQueueWait = errors.New("waited too long for the account's quota on this node")

// queueWait is how long a query may wait for its account's concurrency slot and call
// tokens on this node. Past it the account's cards in the round are deferred (the shard
// comes back soon), so that an account whose queue is long, like Cisco's one call at a
// time, does not hold the shard's group for minutes while the group's other shards have
// work for the other accounts.
func (s *Syncer) queueWait() time.Duration { return s.cfg.Lease / 2 }

// record takes a batch query's outcome into the worker: card results on success;
// ok=false ends the round (claim 8).
func (w *worker) record(ctx context.Context, a answer) (ok bool, reason string, next time.Time, err error) {
	s := w.s
	b, results, callErr := a.b, a.results, a.err
	acct := s.accounts[b.account]
	if errors.Is(callErr, errQueueWait) {
		// Not a carrier failure: the account's cards wait for a later task, the
		// round goes on with the others (no backoff).
		w.deferAccount(b.account, fmt.Sprintf("%s account %s: %v", quotaPrefix, b.account, callErr))
		w.deferCards(len(b.cards))
		return true, "", time.Time{}, nil
	}
	if errors.Is(callErr, carrier.ErrAbandoned) {
		// Given up before its call because the worker stops: the batch stays unanswered
		// (the cursor stays before it) and the account is not backed off.
		return false, w.stopReason, time.Time{}, nil
	}
	kind := carrier.KindOf(callErr)
	s.m.calls.WithLabelValues(b.account, kind.String()).Inc()
	if callErr != nil {
		s.log.Info("carrier call failed", "shard", w.shard, "account", b.account, "cards", len(b.cards), "kind", kind.String(), "error", callErr)
		switch {
		case ctx.Err() != nil:
			return false, "node shutting down", time.Time{}, nil
		case kind == carrier.KindAuthInvalid:
			// Bad credentials stop this account only: mark it, defer its cards, go on.
			w.deferAccount(b.account, "credentials of account "+b.account+" rejected")
			w.markAccountInvalid(ctx, b.account, callErr)
			w.deferCards(len(b.cards))
			return true, "", time.Time{}, nil
		default:
			// Claim 8: rate limited or failed: save progress and leave this round.
			d := acct.Backoff(callErr)
			until := s.setBackoff(b.account, d, fmt.Sprintf("%s account %s %s", backoffPrefix, b.account, kind))
			return false, fmt.Sprintf("%s account %s %s until %s", backoffPrefix, b.account, kind, until.UTC().Format(time.RFC3339)), until, nil
		}
	}
	for i, c := range b.cards {
		r := fsm.CardResult{ICCID: c.ICCID}
		if i < len(results) {
			if res := results[i]; res.Err != nil {
				r.ErrKind = carrier.KindOf(res.Err).String()
				r.ErrMsg = res.Err.Error()
				s.m.cards.WithLabelValues("failed").Inc()
			} else if res.Card != nil {
				r.Data = cardData(res.Card)
				s.m.cards.WithLabelValues("synced").Inc()
			}
		} else {
			r.ErrKind, r.ErrMsg = "permanent", "carrier returned no result for this card"
		}
		w.results = append(w.results, r)
		w.pending++
	}
	w.firstAnswer = true
	w.answered()
	return true, "", time.Time{}, nil
}

func cardData(c *carrier.Card) *fsm.CardData {
	modified := c.SourceUpdatedAt
	if modified.IsZero() {
		modified = c.StatusChangedAt
	}
	return &fsm.CardData{
		Status: string(c.Status), RawStatus: c.RawStatus, RatePlan: c.RatePlan,
		DataUsedBytes: c.DataUsedBytes, UsagePeriod: c.UsagePeriod,
		ActivatedAt: c.ActivatedAt, CarrierModifiedAt: modified,
	}
}

func (w *worker) markAccountInvalid(ctx context.Context, account string, cause error) {
	msg := cause.Error()
	if len(msg) > 200 {
		msg = msg[:200]
	}
	if _, err := w.propose(ctx, fsm.TypeSetAccountStatus, fsm.SetAccountStatus{Account: account, Valid: false, Reason: msg}); err != nil && !errors.Is(err, errFenced) {
		w.s.log.Warn("mark account invalid", "account", account, "error", err)
	}
}

// deferAccount defers the account's cards for the rest of the round.
func (w *worker) deferAccount(account, why string) {
	if w.deferred[account] == "" {
		w.deferred[account] = why
	}
}

// deferCards counts n cards deferred to a later task.
func (w *worker) deferCards(n int) {
	w.failed += uint64(n)
	w.pending += n
	w.s.m.cards.WithLabelValues("deferred").Add(float64(n))
}

func (w *worker) deferredReason() string {
	if len(w.deferred) == 0 {
		return ""
	}
	var parts []string
	for _, why := range w.deferred {
		parts = append(parts, why)
	}
	sort.Strings(parts)
	return "some cards deferred: " + strings.Join(parts, "; ")
}

// deferredNextRun brings a shard with deferred cards back soon instead of at the next
// validity expiry.
func (w *worker) deferredNextRun() time.Time {
	if len(w.deferred) == 0 {
		return time.Time{}
	}
	now := w.s.cfg.Now()
	retry := w.s.cfg.DependencyRetry
	for acct, why := range w.deferred {
		if strings.HasPrefix(why, quotaPrefix) {
			// A quota share moves as soon as another node's backlog of the account
			// drains: look again soon.
			retry = min(retry, 5*w.s.cfg.PollInterval)
		}
		if strings.HasPrefix(why, backoffPrefix) {
			// Deferred while another shard's call backed the account off: look again
			// when the backoff ends (a second or so for a transient failure), not after
			// the dependency retry.
			wait := w.s.cfg.PollInterval
			if b, off := w.s.backedOff(acct, now); off {
				wait = max(wait, b.until.Sub(now))
			}
			retry = min(retry, wait)
		}
	}
	return now.Add(retry)
}

func (w *worker) maybeFlush(ctx context.Context) error {
	// The claim's first progress is flushed at once: its first answer, or for a task
	// taken over also cards skipped as still valid.
	first := !w.answerFlushed && (w.firstAnswer || w.takenOver != nil && w.skipped > 0)
	if !first && w.pending < w.s.cfg.FlushEvery && w.s.cfg.Now().Sub(w.lastFlush) < w.s.cfg.FlushInterval {
		return nil
	}
	return w.flush(ctx, false, false, "", time.Time{})
}

// flush writes results, cursor and counters with the epoch; it renews the lease. A stale
// epoch stops the worker at once.
func (w *worker) flush(ctx context.Context, done, release bool, reason string, next time.Time) error {
	s := w.s
	f := fsm.Flush{
		Shard: w.shard, Node: s.cluster.Name(), Epoch: w.epoch, TaskID: w.taskID, Cursor: w.cursor,
		Results: w.results, Skipped: w.skipped, Failed: w.failed, Done: done, Release: release,
		Reason: reason, NextRunAt: next, Lease: s.cfg.Lease,
	}
	// The flush must reach the FSM even while the node is stopping the worker.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	// A flush in the middle of a round is not read back here (the worker keeps its
	// cursor, and the leader checks the epoch of the next flush), so it need not wait for
	// this node's replica to apply it. The last flush of a round does: the next poll reads
	// the shard's state from the replica.
	_, err := w.proposeWith(fctx, fsm.TypeFlush, f, !done && !release)
	if err != nil {
		s.m.flushes.WithLabelValues("rejected").Inc()
		return err
	}
	s.m.flushes.WithLabelValues("ok").Inc()
	if len(f.Results) > 0 || w.takenOver != nil && f.Skipped > 0 {
		// The claim's first progress is in the replicated state: a task taken over no
		// longer needs to go ahead of the others.
		w.answerFlushed = true
		w.answered()
	}
	w.results, w.skipped, w.failed, w.pending = w.results[:0], 0, 0, 0
	w.lastFlush = s.cfg.Now()
	return nil
}

// finish ends the round: done records the task as finished (the FSM schedules the next
// run at the earliest validity expiry); otherwise progress is saved and the shard released.
func (w *worker) finish(ctx context.Context, done bool, reason string, next time.Time) error {
	s := w.s
	if err := w.flush(ctx, done, true, reason, next); err != nil {
		return err
	}
	outcome := "released"
	if done {
		outcome = "done"
	}
	s.m.rounds.WithLabelValues(outcome).Inc()
	return nil
}

func (w *worker) release(ctx context.Context, reason string, next time.Time) error {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	_, err := w.propose(rctx, fsm.TypeRelease, fsm.Release{Shard: w.shard, Node: w.s.cluster.Name(), Epoch: w.epoch, Reason: reason, NextRunAt: next})
	if err == nil {
		w.s.m.rounds.WithLabelValues("not_ready").Inc()
	}
	return err
}

func (w *worker) propose(ctx context.Context, t fsm.Type, payload any) (*fsm.Result, error) {
	return w.proposeWith(ctx, t, payload, false)
}

// committedProposer is a Proposer that can return once the leader has applied a
// command, without waiting for this node's replica (node.Node).
type committedProposer interface {
	ProposeCommitted(ctx context.Context, cmd []byte) (*fsm.Result, error)
}

// proposeWith proposes a command; committedOnly skips the wait for the local replica
// when the proposer offers it.
func (w *worker) proposeWith(ctx context.Context, t fsm.Type, payload any, committedOnly bool) (*fsm.Result, error) {
	cmd, err := fsm.Encode(t, payload)
	if err != nil {
		return nil, err
	}
	var res *fsm.Result
	if cp, ok := w.s.prop.(committedProposer); ok && committedOnly {
		res, err = cp.ProposeCommitted(ctx, cmd)
	} else {
		res, err = w.s.prop.Propose(ctx, cmd)
	}
	if errors.Is(err, fsm.ErrStaleEpoch) || errors.Is(err, fsm.ErrNotOwner) {
		return nil, fmt.Errorf("%w: %v", errFenced, err)
	}
	return res, err
}
