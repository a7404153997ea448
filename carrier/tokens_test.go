package carrier_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"cardsync/carrier"
	"cardsync/carrier/sim"
	"cardsync/testcluster"
)

// fakeTokens is a TokenSource that records what it was asked and answers as told.
type fakeTokens struct {
	mu     sync.Mutex
	asked  []int
	spread time.Duration // offset between tokens
	err    error
}

type waitErr struct{ after time.Duration }

func (w waitErr) Error() string                     { return "busy" }
func (w waitErr) RetryAfterDuration() time.Duration { return w.after }

func (f *fakeTokens) Tokens(_ context.Context, account string, n int, _ bool) ([]time.Duration, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked = append(f.asked, n)
	if f.err != nil {
		return nil, f.err
	}
	offs := make([]time.Duration, n)
	for i := range offs {
		offs[i] = time.Duration(i) * f.spread
	}
	return offs, nil
}

// TestQueriesTakeTokensFromTheSource: with a TokenSource, each query asks it for the
// tokens of all its calls and spaces its calls by the offsets it is given; a source that
// refuses turns into a rate-limited error carrying the source's retry time.
func TestQueriesTakeTokensFromTheSource(t *testing.T) {
	spec := testSpecs[0] // OneLink: two HTTP calls per batch
	s := startSim(t, []sim.AccountSpec{spec})
	acct, err := carrier.NewAccount(accountCfg(s, spec.ID), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The node's own limiter would allow nothing: every token must come from the source.
	acct.SetShare(0.001, 1, 2)
	ts := &fakeTokens{spread: 150 * time.Millisecond}
	acct.SetTokenSource(ts)
	good, _ := goodCards(t, s, spec.ID, 10)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	res, err := acct.Query(ctx, good)
	if err != nil || len(res) != len(good) {
		t.Fatalf("query: %d results, %v", len(res), err)
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Fatalf("query took %v: its second call did not wait for its token's offset", d)
	}
	if want := carrier.CallsPerQuery(spec.Carrier); len(ts.asked) != 1 || ts.asked[0] != want {
		t.Fatalf("asked %v, want one request for %d tokens", ts.asked, want)
	}

	ts.err = waitErr{after: 3 * time.Second}
	_, err = acct.Query(ctx, good)
	var ce *carrier.Error
	if !errors.As(err, &ce) || ce.Kind != carrier.KindRateLimited || ce.Code != "cluster_quota" || ce.RetryAfter != 3*time.Second {
		t.Fatalf("refused tokens: %#v", err)
	}
	if st := s.Stats().Accounts[spec.ID]; st.Rejected != 0 {
		t.Fatalf("carrier rejected %d calls", st.Rejected)
	}
}

// gatedTokens is a TokenSource that holds every request until release is closed.
type gatedTokens struct {
	fakeTokens
	release chan struct{}
}

// queryResult is what a query run by backgroundQueries answered.
type queryResult struct {
	n   int
	err error
}

// backgroundQueries returns a function that runs a query of acct in the background and
// the channel its results arrive on (room for two).
func backgroundQueries(ctx context.Context, acct *carrier.Account) (func([]string), chan queryResult) {
	results := make(chan queryResult, 2)
	return func(cards []string) {
		res, err := acct.Query(ctx, cards)
		results <- queryResult{len(res), err}
	}, results
}

func (g *gatedTokens) Tokens(ctx context.Context, account string, n int, prio bool) ([]time.Duration, error) {
	offs, err := g.fakeTokens.Tokens(ctx, account, n, prio)
	select {
	case <-g.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return offs, err
}

// TestPartialQueryRidesWithATokenWait: a partial query that arrives while another
// query of the account waits for its tokens rides in that query's call, even with a
// concurrency slot free, instead of taking a call of its own.
func TestPartialQueryRidesWithATokenWait(t *testing.T) {
	spec := testSpecs[0]
	s := startSim(t, []sim.AccountSpec{spec})
	acct, err := carrier.NewAccount(accountCfg(s, spec.ID), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	acct.SetShare(100, 10, 3)
	ts := &gatedTokens{release: make(chan struct{})}
	acct.SetTokenSource(ts)
	good, _ := goodCards(t, s, spec.ID, 20)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	query, results := backgroundQueries(ctx, acct)
	go query(good[:10])
	testcluster.WaitFor(t, 10*time.Second, "the first query asking for tokens", func() bool { ts.mu.Lock(); defer ts.mu.Unlock(); return len(ts.asked) == 1 })
	go query(good[10:])
	testcluster.WaitFor(t, 10*time.Second, "two queries pending", func() bool { return acct.Stats().Pending == 2 })
	close(ts.release)
	for range 2 {
		if o := <-results; o.err != nil || o.n != 10 {
			t.Fatalf("query: %d results, %v", o.n, o.err)
		}
	}
	if st := acct.Stats(); len(ts.asked) != 1 || st.Coalesced != 1 || st.Calls != 1 {
		t.Fatalf("asked tokens %v times, %d queries coalesced, %d calls: want 1, 1, 1", ts.asked, st.Coalesced, st.Calls)
	}
}

// prioTokens is a TokenSource that holds unprioritized requests until release is closed
// and answers prioritized ones at once, recording both.
type prioTokens struct {
	mu      sync.Mutex
	asked   []bool // priority of each request
	release chan struct{}
}

func (p *prioTokens) Tokens(ctx context.Context, _ string, n int, prio bool) ([]time.Duration, error) {
	p.mu.Lock()
	p.asked = append(p.asked, prio)
	p.mu.Unlock()
	if !prio {
		select {
		case <-p.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return make([]time.Duration, n), nil
}

func (p *prioTokens) requests() []bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.asked)
}

// TestPrioritizedQueryTakesATokenWaitersSlot: with every slot held by a query waiting for
// its tokens, a prioritized query takes that slot at once and asks for its tokens as
// prioritized; the query it displaced withdraws its request, waits for a slot again and
// is answered too.
func TestPrioritizedQueryTakesATokenWaitersSlot(t *testing.T) {
	spec := testSpecs[0]
	s := startSim(t, []sim.AccountSpec{spec})
	acct, err := carrier.NewAccount(accountCfg(s, spec.ID), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	acct.SetShare(100, 10, 1)
	ts := &prioTokens{release: make(chan struct{})}
	acct.SetTokenSource(ts)
	good, _ := goodCards(t, s, spec.ID, 200)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	type out struct {
		name string
		n    int
		err  error
	}
	results := make(chan out, 2)
	query := func(ctx context.Context, name string, cards []string) {
		res, err := acct.Query(ctx, cards)
		results <- out{name, len(res), err}
	}
	go query(ctx, "waiting", good[:100])
	testcluster.WaitFor(t, 10*time.Second, "the first query waiting for tokens", func() bool { return len(ts.requests()) == 1 })
	go query(carrier.WithPriority(ctx), "prioritized", good[100:])
	if o := <-results; o.name != "prioritized" || o.err != nil || o.n != 100 {
		t.Fatalf("first answer: %+v, want the prioritized query's 100 results", o)
	}
	close(ts.release)
	if o := <-results; o.name != "waiting" || o.err != nil || o.n != 100 {
		t.Fatalf("displaced query: %+v", o)
	}
	if got := ts.requests(); !slices.Equal(got, []bool{false, true, false}) {
		t.Fatalf("token requests (prioritized?) %v: want the displaced query to ask again after the prioritized one", got)
	}
	if st := acct.Stats(); st.Preempted != 1 || st.Calls != 2 || st.InFlight != 0 {
		t.Fatalf("preempted %d, calls %d, in flight %d: want 1, 2, 0", st.Preempted, st.Calls, st.InFlight)
	}
}

// TestTakeRoomFillsAWaitingPartialQuery: the spare room of a partial query waiting for
// its tokens is promised once; a query of the promised size rides in that call, which
// goes out full.
func TestTakeRoomFillsAWaitingPartialQuery(t *testing.T) {
	spec := testSpecs[0] // OneLink: 100 cards per call
	s := startSim(t, []sim.AccountSpec{spec})
	acct, err := carrier.NewAccount(accountCfg(s, spec.ID), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	acct.SetShare(100, 10, 3)
	ts := &gatedTokens{release: make(chan struct{})}
	acct.SetTokenSource(ts)
	good, _ := goodCards(t, s, spec.ID, 100)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if n := acct.TakeRoom(100); n != 0 {
		t.Fatalf("room %d promised with no query waiting", n)
	}
	query, results := backgroundQueries(ctx, acct)
	go query(good[:30])
	testcluster.WaitFor(t, 10*time.Second, "the partial query asking for tokens", func() bool { ts.mu.Lock(); defer ts.mu.Unlock(); return len(ts.asked) == 1 })
	if n := acct.TakeRoom(99); n != 70 {
		t.Fatalf("promised %d cards of room, want 70", n)
	}
	if n := acct.TakeRoom(99); n != 0 {
		t.Fatalf("the same room promised twice (%d more)", n)
	}
	go query(good[30:])
	testcluster.WaitFor(t, 10*time.Second, "two queries pending", func() bool { return acct.Stats().Pending == 2 })
	close(ts.release)
	for range 2 {
		if o := <-results; o.err != nil || (o.n != 30 && o.n != 70) {
			t.Fatalf("query: %d results, %v", o.n, o.err)
		}
	}
	if st := acct.Stats(); st.Calls != 1 || st.Coalesced != 1 || st.Cards != 100 {
		t.Fatalf("%d calls, %d coalesced, %d cards: want one full call", st.Calls, st.Coalesced, st.Cards)
	}
}
