package carrier_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cardsync/carrier"
	"cardsync/carrier/sim"
)

// TestAccountStaysUnderQuota runs an Account flat out for ~10 s against the
// quota the simulator enforces: the witness must see zero rejections, no
// more concurrency than allowed, and at least 90% of the quota used.
func TestAccountStaysUnderQuota(t *testing.T) {
	if testing.Short() {
		t.Skip("10 s run")
	}
	spec := testSpecs[0] // OneLink: two HTTP calls per batch
	spec.RatePerSec, spec.Burst, spec.MaxConcurrent = 40, 5, 3
	s := startSim(t, []sim.AccountSpec{spec})
	// Carrier latency spread so calls overlap and the concurrency cap matters.
	if err := s.SetFaults(spec.ID, sim.Faults{LatencyMin: sim.Duration(5 * time.Millisecond), LatencyMax: sim.Duration(60 * time.Millisecond)}); err != nil {
		t.Fatal(err)
	}
	acct, err := carrier.NewAccount(accountCfg(s, spec.ID), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	good, _ := goodCards(t, s, spec.ID, 100)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var failures atomic.Int64
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			batch := good[i*10 : i*10+40]
			for ctx.Err() == nil {
				_, err := acct.Query(ctx, batch)
				var ce *carrier.Error
				if errors.As(err, &ce) && ce.Code == "local_quota" {
					// The tokens this query needs come after the run's deadline: the
					// account refuses before calling, as it should.
					break
				}
				if err != nil && ctx.Err() == nil {
					failures.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	st := s.Stats().Accounts[spec.ID]
	as := acct.Stats()
	window := st.Last.Sub(st.First).Seconds()
	t.Logf("witness: %d calls in %.2fs (%.1f/s of %g), peak %d/s, max concurrency %d, rejected %d; account: %d queries, %d limiter waits",
		st.Calls, window, float64(st.Calls)/window, spec.RatePerSec, st.PeakPerSecond, st.MaxConcurrent, st.Rejected, as.Calls, as.LimiterWaits)
	if st.Rejected != 0 || failures.Load() != 0 {
		t.Fatalf("witness rejected %d calls, %d queries failed", st.Rejected, failures.Load())
	}
	if st.MaxConcurrent > spec.MaxConcurrent {
		t.Fatalf("max concurrency %d > %d", st.MaxConcurrent, spec.MaxConcurrent)
	}
	if limit := int(spec.RatePerSec) + spec.Burst; st.PeakPerSecond > limit {
		t.Fatalf("peak %d calls in one second > rate+burst %d", st.PeakPerSecond, limit)
	}
	if window < 9 {
		t.Fatalf("run window %.2fs too short", window)
	}
	if used := float64(st.Calls) / (spec.RatePerSec * window); used < 0.90 {
		t.Fatalf("used %.1f%% of the quota, want >= 90%%", used*100)
	}
}

func TestAccountShareAndStats(t *testing.T) {
	spec := testSpecs[1]
	s := startSim(t, []sim.AccountSpec{spec})
	acct, err := carrier.NewAccount(accountCfg(s, spec.ID), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	good, missing := goodCards(t, s, spec.ID, 5)
	acct.SetShare(10, 2, 0)
	if r, b, c := acct.Share(); r != 10 || b != 2 || c != 0 {
		t.Fatalf("share %v %v %v", r, b, c)
	}
	// concurrency 0: Query waits until the share is positive or ctx ends.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	_, err = acct.Query(ctx, good)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("paused account: %v", err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := acct.Query(context.Background(), append(good, missing[0]))
		done <- err
	}()
	deadline := time.Now().Add(5 * time.Second)
	for acct.Stats().SlotWaits < 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	acct.SetShare(10, 2, 1)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	st := acct.Stats()
	if st.Calls != 1 || st.Successes != 1 || st.Cards != 5 || st.CardErrors["not_found"] != 1 || st.Breaker != "closed" || st.InFlight != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestAccountBreakerAndBackoff(t *testing.T) {
	spec := testSpecs[2]
	s := startSim(t, []sim.AccountSpec{spec})
	cfg := accountCfg(s, spec.ID)
	cfg.BreakerFailures, cfg.BreakerOpen = 3, 200*time.Millisecond
	cfg.BackoffBase, cfg.BackoffMax = 100*time.Millisecond, 400*time.Millisecond
	acct, err := carrier.NewAccount(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	good, _ := goodCards(t, s, spec.ID, 2)
	ctx := context.Background()

	// Rate limits never open the breaker, and carry Retry-After.
	if err := s.SetFaults(spec.ID, sim.Faults{Rates: map[string]float64{sim.FaultRateLimited: 1}}); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		_, err = acct.Query(ctx, good)
		if carrier.KindOf(err) != carrier.KindRateLimited {
			t.Fatalf("want rate limited, got %v", err)
		}
	}
	if d := acct.Backoff(err); d != time.Second {
		t.Fatalf("backoff with Retry-After = %v, want 1s", d)
	}
	if acct.Stats().Breaker != "closed" {
		t.Fatal("breaker opened on rate limits")
	}
	// Transient failures open it; backoff grows exponentially (with jitter).
	if err := s.SetFaults(spec.ID, sim.Faults{Rates: map[string]float64{sim.FaultTransient5xx: 1}}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err = acct.Query(ctx, good); carrier.KindOf(err) != carrier.KindTransient {
			t.Fatalf("want transient, got %v", err)
		}
	}
	if d := acct.Backoff(err); d < 200*time.Millisecond || d > 400*time.Millisecond {
		t.Fatalf("backoff after 8 failures = %v, want within [200ms, 400ms] (capped)", d)
	}
	calls := s.Stats().Accounts[spec.ID].Calls
	_, err = acct.Query(ctx, good)
	if !errors.Is(err, carrier.ErrCircuitOpen) || carrier.KindOf(err) != carrier.KindTransient || carrier.RetryAfter(err) != cfg.BreakerOpen {
		t.Fatalf("want circuit open, got %v", err)
	}
	if s.Stats().Accounts[spec.ID].Calls != calls {
		t.Fatal("open breaker let a call through")
	}
	// After the open period a probe succeeds and closes it; backoff resets.
	s.ClearFaults()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err = acct.Query(ctx, good)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("breaker never closed: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st := acct.Stats(); st.Breaker != "closed" || st.ConsecutiveFailures != 0 || st.CircuitRejects == 0 {
		t.Fatalf("stats %+v", st)
	}
	if d := acct.Backoff(errors.New("x")); d < 50*time.Millisecond || d > 100*time.Millisecond {
		t.Fatalf("backoff after reset = %v", d)
	}
}

func TestErrorTaxonomy(t *testing.T) {
	cases := []struct {
		err  error
		want carrier.Kind
		name string
	}{
		{nil, carrier.KindOK, "ok"},
		{&carrier.Error{Kind: carrier.KindRateLimited, RetryAfter: time.Second}, carrier.KindRateLimited, "rate_limited"},
		{&carrier.Error{Kind: carrier.KindAuthExpired}, carrier.KindAuthExpired, "auth_expired"},
		{&carrier.Error{Kind: carrier.KindAuthInvalid}, carrier.KindAuthInvalid, "auth_invalid"},
		{&carrier.Error{Kind: carrier.KindTransient}, carrier.KindTransient, "transient"},
		{&carrier.Error{Kind: carrier.KindNotFound}, carrier.KindNotFound, "not_found"},
		{&carrier.Error{Kind: carrier.KindInvalidRequest}, carrier.KindInvalidRequest, "invalid_request"},
		{&carrier.Error{Kind: carrier.KindPermanent}, carrier.KindPermanent, "permanent"},
		{context.DeadlineExceeded, carrier.KindTransient, "transient"},
		{carrier.ErrCircuitOpen, carrier.KindTransient, "transient"},
		{errors.New("boom"), carrier.KindPermanent, "permanent"},
	}
	sentinels := map[carrier.Kind]error{
		carrier.KindRateLimited: carrier.ErrRateLimited, carrier.KindAuthExpired: carrier.ErrAuthExpired,
		carrier.KindAuthInvalid: carrier.ErrAuthInvalid, carrier.KindTransient: carrier.ErrTransient,
		carrier.KindNotFound: carrier.ErrNotFound, carrier.KindInvalidRequest: carrier.ErrInvalidRequest,
		carrier.KindPermanent: carrier.ErrPermanent,
	}
	for _, c := range cases {
		wrapped := c.err
		if c.err != nil {
			wrapped = errors.Join(errors.New("context"), c.err)
		}
		if got := carrier.KindOf(wrapped); got != c.want || got.String() != c.name {
			t.Errorf("KindOf(%v) = %s, want %s", c.err, got, c.want)
		}
		var ce *carrier.Error
		if errors.As(c.err, &ce) {
			for k, s := range sentinels {
				if errors.Is(wrapped, s) != (k == c.want) {
					t.Errorf("errors.Is(%v, %v) wrong", c.err, s)
				}
			}
			if k, err := carrier.ParseKind(c.name); err != nil || k != c.want {
				t.Errorf("ParseKind(%s) = %v, %v", c.name, k, err)
			}
		}
	}
	if carrier.RetryAfter(cases[1].err) != time.Second || carrier.RetryAfter(errors.New("x")) != 0 {
		t.Error("RetryAfter")
	}
}

func TestNormalizeICCID(t *testing.T) {
	cases := []struct{ in, want string }{
		{"898604821221d0121000", "898604821221D0121000"},
		{"8986031234567890123", "8986031234567890123"},
		{"898603123456789012", ""},
		{"89860312345678901234X", ""},
		{"8986031234567890G23", ""},
	}
	for _, c := range cases {
		got, err := carrier.NormalizeICCID(c.in)
		if got != c.want || (err != nil) != (c.want == "") {
			t.Errorf("NormalizeICCID(%q) = %q, %v", c.in, got, err)
		}
	}
	if !carrier.LuhnValid("79927398713") || carrier.LuhnValid("79927398710") {
		t.Error("Luhn")
	}
}

// A prioritized query waiting for a concurrency slot gets the next free one, ahead of
// unprioritized queries that were waiting before it.
func TestPrioritizedQueryTakesTheNextSlot(t *testing.T) {
	spec := testSpecs[1] // Unicom: one HTTP call per query
	spec.RatePerSec, spec.Burst, spec.MaxConcurrent = 1000, 10, 1
	s := startSim(t, []sim.AccountSpec{spec})
	if err := s.SetFaults(spec.ID, sim.Faults{LatencyMin: sim.Duration(150 * time.Millisecond), LatencyMax: sim.Duration(150 * time.Millisecond)}); err != nil {
		t.Fatal(err)
	}
	acct, err := carrier.NewAccount(accountCfg(s, spec.ID), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	acct.SetShare(1000, 10, 1)
	cards := s.Cards(spec.ID)
	card := cards[0].ICCID
	// The queued queries are full batches, so none can ride in another's call.
	full := make([]string, acct.BatchSize())
	for i := range full {
		full[i] = cards[i].ICCID
	}
	var (
		mu    sync.Mutex
		order []string
		wg    sync.WaitGroup
	)
	query := func(ctx context.Context, name string) {
		defer wg.Done()
		batch := []string{card}
		if name == "queued" {
			batch = full
		}
		if _, err := acct.Query(ctx, batch); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		mu.Lock()
		order = append(order, name)
		mu.Unlock()
	}
	waitSlotWaits := func(n uint64) {
		deadline := time.Now().Add(10 * time.Second)
		for acct.Stats().SlotWaits < n {
			if time.Now().After(deadline) {
				t.Fatalf("only %d queries waiting for a slot, want %d", acct.Stats().SlotWaits, n)
			}
			time.Sleep(time.Millisecond)
		}
	}
	ctx := context.Background()
	wg.Add(1)
	go query(ctx, "first")
	// Let the first take the slot, then queue three more behind it.
	deadline := time.Now().Add(10 * time.Second)
	for acct.Stats().Calls == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go query(ctx, "queued")
	}
	waitSlotWaits(3)
	wg.Add(1)
	go query(carrier.WithPriority(ctx), "prioritized")
	waitSlotWaits(4)
	wg.Wait()
	if len(order) != 5 || order[0] != "first" || order[1] != "prioritized" {
		t.Fatalf("completion order %v: the prioritized query should follow the one in flight", order)
	}
}

// Partial queries waiting for a slot ride in the next call: one call answers them all,
// each query gets exactly its own cards' results, in its order, and a full batch never
// takes riders beyond the batch size.
func TestPartialQueriesShareACall(t *testing.T) {
	spec := testSpecs[1] // Unicom: one HTTP call per query, 50 cards per batch
	spec.RatePerSec, spec.Burst, spec.MaxConcurrent = 1000, 10, 1
	s := startSim(t, []sim.AccountSpec{spec})
	if err := s.SetFaults(spec.ID, sim.Faults{LatencyMin: sim.Duration(200 * time.Millisecond), LatencyMax: sim.Duration(200 * time.Millisecond)}); err != nil {
		t.Fatal(err)
	}
	acct, err := carrier.NewAccount(accountCfg(s, spec.ID), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	acct.SetShare(1000, 10, 1)
	good, _ := goodCards(t, s, spec.ID, 125)
	if len(good) < 125 {
		t.Fatalf("only %d good cards", len(good))
	}
	ids := func(from, n int) []string { return good[from : from+n] }
	ctx := context.Background()
	// One query holds the only slot while five partial ones (10 + 10 + 10 + 15 + 30
	// cards) queue behind it.
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if _, err := acct.Query(ctx, ids(0, 50)); err != nil {
			t.Errorf("first: %v", err)
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for acct.Stats().Calls == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	sizes := []int{10, 10, 10, 15, 30}
	got := make([][]carrier.Result, len(sizes))
	want := make([][]string, len(sizes))
	from := 50
	for i, n := range sizes {
		want[i] = ids(from, n)
		from += n
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			res, err := acct.Query(ctx, want[i])
			if err != nil {
				t.Errorf("partial %d: %v", i, err)
			}
			got[i] = res
		}(i)
		// Queue them in order: each waits for the slot before the next one starts.
		for acct.Stats().SlotWaits < uint64(i+1) && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
	}
	wg.Wait()
	for i := range sizes {
		if len(got[i]) != len(want[i]) {
			t.Fatalf("partial %d: %d results for %d cards", i, len(got[i]), len(want[i]))
		}
		for j, r := range got[i] {
			if r.ICCID != want[i][j] || r.Err != nil || r.Card == nil {
				t.Fatalf("partial %d result %d: %+v, want card %s", i, j, r, want[i][j])
			}
		}
	}
	// The first call, then 10+10+10+15 = 45 cards in one call (30 more would not fit)
	// and the 30-card query on its own, or riding with nothing: 3 calls, not 6.
	st := acct.Stats()
	if st.Calls != 3 || st.Coalesced != 3 {
		t.Fatalf("%d calls, %d queries coalesced; want 3 calls, 3 coalesced", st.Calls, st.Coalesced)
	}
	if st.Cards != uint64(50+45+30) {
		t.Fatalf("%d cards answered", st.Cards)
	}
}

// WithCallTimeout times a query from the moment its call may start: queries queued for
// the account's one slot behind each other all get their answer though the last waits
// longer than the timeout, and a call slower than the timeout still fails.
func TestCallTimeoutStartsWithTheCall(t *testing.T) {
	spec := testSpecs[1] // Unicom: one HTTP call per query
	spec.RatePerSec, spec.Burst, spec.MaxConcurrent = 1000, 10, 1
	s := startSim(t, []sim.AccountSpec{spec})
	latency := func(d time.Duration) {
		if err := s.SetFaults(spec.ID, sim.Faults{LatencyMin: sim.Duration(d), LatencyMax: sim.Duration(d)}); err != nil {
			t.Fatal(err)
		}
	}
	latency(150 * time.Millisecond)
	acct, err := carrier.NewAccount(accountCfg(s, spec.ID), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	acct.SetShare(1000, 10, 1)
	cards := s.Cards(spec.ID)
	full := func(i int) []string { // full batches: none rides in another's call
		out := make([]string, acct.BatchSize())
		for j := range out {
			out[j] = cards[(i*len(out)+j)%len(cards)].ICCID
		}
		return out
	}
	ctx := carrier.WithCallTimeout(context.Background(), time.Second)
	const queries = 8 // the last waits about 7 x 150 ms for the slot
	errs := make(chan error, queries)
	start := time.Now()
	for i := 0; i < queries; i++ {
		go func() {
			_, err := acct.Query(ctx, full(i))
			errs <- err
		}()
	}
	for i := 0; i < queries; i++ {
		if err := <-errs; err != nil {
			t.Errorf("queued query: %v", err)
		}
	}
	if took := time.Since(start); took < time.Second {
		t.Skipf("the queries took %v, less than the call timeout: the queue was not long enough to tell", took)
	}
	latency(1500 * time.Millisecond)
	if _, err := acct.Query(ctx, full(0)); carrier.KindOf(err) != carrier.KindTransient {
		t.Fatalf("a call slower than its timeout: %v, want a transient failure", err)
	}
}
