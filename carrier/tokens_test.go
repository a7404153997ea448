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

func (f *fakeTokens) Tokens(_ context.Context, account string, n int, _ carrier.Priority) ([]time.Duration, error) {
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

func (g *gatedTokens) Tokens(ctx context.Context, account string, n int, prio carrier.Priority) ([]time.Duration, error) {
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

// prioTokens is a TokenSource that holds requests below priority answer until release
// is closed and answers the others at once, recording the priority of each.
type prioTokens struct {
	mu      sync.Mutex
	asked   []carrier.Priority
	answer  carrier.Priority
	release chan struct{}
}

func (p *prioTokens) Tokens(ctx context.Context, _ string, n int, prio carrier.Priority) ([]time.Duration, error) {
	p.mu.Lock()
	p.asked = append(p.asked, prio)
	p.mu.Unlock()
	if prio < p.answer {
		select {
		case <-p.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return make([]time.Duration, n), nil
}

func (p *prioTokens) requests() []carrier.Priority {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.asked)
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

// TestQueryPriorities: a prioritized query (WithPriority) goes ahead of ordinary ones and
// an urgent one (WithUrgency) ahead of both. With every slot held by a query of a lower
// priority waiting for its tokens, it takes that slot at once and asks for its tokens at
// its priority; the query it displaced withdraws its request, waits for a slot again and
// is answered too. A free slot goes to the waiter of the highest priority, and an urgent
// query whose urgency ends while it waits for its tokens asks again at its own priority.
func TestQueryPriorities(t *testing.T) {
	spec := testSpecs[0]
	s := startSim(t, []sim.AccountSpec{spec})
	good, _ := goodCards(t, s, spec.ID, 240)
	none, first, urgent := carrier.PriorityNone, carrier.PriorityFirst, carrier.PriorityUrgent
	type query struct {
		name   string
		first  bool          // WithPriority
		urgent chan struct{} // WithUrgency (nil: not urgent)
	}
	for _, tc := range []struct {
		name string
		// answer: the source answers requests of this priority or above at once; the
		// others wait until the queries below have all been started.
		answer  carrier.Priority
		queries []query
		// endUrgency: close the first query's urgency once every query was started.
		endUrgency bool
		wantOrder  []string // answers, in order
		wantAsked  []carrier.Priority
		preempted  uint64
	}{
		{
			name:   "a prioritized query takes an ordinary token waiter's slot",
			answer: first,
			queries: []query{
				{name: "waiting"},
				{name: "prioritized", first: true},
			},
			wantOrder: []string{"prioritized", "waiting"},
			wantAsked: []carrier.Priority{none, first, none},
			preempted: 1,
		},
		{
			name:   "an urgent query takes a prioritized token waiter's slot",
			answer: urgent,
			queries: []query{
				{name: "first", first: true},
				{name: "urgent", urgent: make(chan struct{})},
			},
			wantOrder: []string{"urgent", "first"},
			wantAsked: []carrier.Priority{first, urgent, first},
			preempted: 1,
		},
		{
			name:   "a free slot goes to the urgent waiter",
			answer: urgent + 1,
			queries: []query{
				{name: "holder", urgent: make(chan struct{})},
				{name: "first", first: true},
				{name: "urgent", urgent: make(chan struct{})},
			},
			wantOrder: []string{"holder", "urgent", "first"},
			wantAsked: []carrier.Priority{urgent, urgent, first},
		},
		{
			name:   "asks again when its urgency ends",
			answer: urgent + 1,
			queries: []query{
				{name: "demoted", first: true, urgent: make(chan struct{})},
			},
			endUrgency: true,
			wantOrder:  []string{"demoted"},
			wantAsked:  []carrier.Priority{urgent, first},
		},
		{
			name:   "an ordinary query is not demoted below its own priority",
			answer: urgent + 1,
			queries: []query{
				{name: "demoted", urgent: make(chan struct{})},
			},
			endUrgency: true,
			wantOrder:  []string{"demoted"},
			wantAsked:  []carrier.Priority{urgent, none},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			acct, err := carrier.NewAccount(accountCfg(s, spec.ID), nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			acct.SetShare(100, 10, 1)
			ts := &prioTokens{answer: tc.answer, release: make(chan struct{})}
			acct.SetTokenSource(ts)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			type out struct {
				name string
				n    int
				err  error
			}
			results := make(chan out, len(tc.queries))
			for i, q := range tc.queries {
				qctx := ctx
				if q.first {
					qctx = carrier.WithPriority(qctx)
				}
				if q.urgent != nil {
					qctx = carrier.WithUrgency(qctx, q.urgent)
				}
				cards := good[i*80 : (i+1)*80]
				go func() {
					res, err := acct.Query(qctx, cards)
					results <- out{q.name, len(res), err}
				}()
				// The next query starts once this one waits: for its tokens (the first)
				// or for a slot (the others), or has taken the first one's slot.
				switch {
				case i == 0:
					testcluster.WaitFor(t, 10*time.Second, q.name+" waiting for tokens", func() bool { return len(ts.requests()) == 1 })
				case tc.preempted > 0:
					testcluster.WaitFor(t, 10*time.Second, q.name+" taking a slot", func() bool { return acct.Stats().Preempted == tc.preempted })
				default:
					testcluster.WaitFor(t, 10*time.Second, q.name+" waiting for a slot", func() bool { return acct.Stats().SlotWaits == uint64(i) })
				}
			}
			if tc.endUrgency {
				close(tc.queries[0].urgent)
				testcluster.WaitFor(t, 10*time.Second, "the request asked again", func() bool { return len(ts.requests()) == 2 })
			}
			close(ts.release)
			var order []string
			for range tc.queries {
				o := <-results
				if o.err != nil || o.n != 80 {
					t.Fatalf("%s: %d results, %v", o.name, o.n, o.err)
				}
				order = append(order, o.name)
			}
			if !slices.Equal(order, tc.wantOrder) {
				t.Errorf("answered %v, want %v", order, tc.wantOrder)
			}
			if got := ts.requests(); !slices.Equal(got, tc.wantAsked) {
				t.Errorf("token requests at priorities %v, want %v", got, tc.wantAsked)
			}
			if st := acct.Stats(); st.Preempted != tc.preempted || st.InFlight != 0 {
				t.Errorf("preempted %d, in flight %d: want %d, 0", st.Preempted, st.InFlight, tc.preempted)
			}
		})
	}
}
