package carrier_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"cardsync/carrier"
	"cardsync/carrier/sim"

	"github.com/hashicorp/go-hclog"
)

// safeBuffer collects log output from concurrent goroutines.
type safeBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *safeBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *safeBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var testSpecs = []sim.AccountSpec{
	{ID: "om", Carrier: sim.OneLink, AppID: "C5010000000001", Secret: "om-pass-S3CRET", Cards: 300, TokenTTL: time.Hour},
	{ID: "cu", Carrier: sim.Unicom, AppID: "cu-app", Secret: "cu-secret-S3CRET", OpenID: "open-1", Cards: 300},
	{ID: "ct", Carrier: sim.Telecom, AppID: "ct-key", Secret: "ct-secret-S3CRET", CustNumber: "310000", Cards: 300},
	{ID: "cc", Carrier: sim.Cisco, AppID: "cc-user", Secret: "cc-apikey-S3CRET", Cards: 300},
}

func startSim(t *testing.T, specs []sim.AccountSpec) *sim.Sim {
	t.Helper()
	cfg := sim.DefaultConfig()
	cfg.Accounts = specs
	cfg.Latency = 0
	cfg.ChangeEvery = time.Hour
	cfg.TimeoutDelay = 3 * time.Second
	s, err := sim.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func accountCfg(s *sim.Sim, id string) carrier.AccountConfig {
	c := s.AccountConfig(id)
	c.Timeout = 2 * time.Second
	return c
}

// goodCards returns n ICCIDs the carrier knows, and some it does not.
func goodCards(t *testing.T, s *sim.Sim, id string, n int) (good, missing []string) {
	t.Helper()
	for _, c := range s.Cards(id) {
		st, _ := s.CardState(id, c.ICCID, time.Now())
		if st.NotFound || st.NotOwned {
			missing = append(missing, c.ICCID)
		} else if len(good) < n {
			good = append(good, c.ICCID)
		}
	}
	if len(good) < n || len(missing) == 0 {
		t.Fatalf("population of %s too small: %d good, %d missing", id, len(good), len(missing))
	}
	return good, missing
}

func statusOf(carrierName, raw string) carrier.Status {
	switch carrierName {
	case carrier.OneLink:
		return carrier.OneLinkStatus(raw)
	case carrier.Unicom:
		return carrier.UnicomStatus(raw)
	case carrier.Telecom:
		return carrier.TelecomStatus(raw)
	}
	return carrier.CiscoStatus(raw)
}

// usageTolerance is the rounding of each carrier's unit and decimals.
var usageTolerance = map[string]int64{carrier.OneLink: 6, carrier.Unicom: 600, carrier.Telecom: 6000, carrier.Cisco: 0}

func checkCard(t *testing.T, s *sim.Sim, acct string, c *carrier.Card) {
	t.Helper()
	st, ok := s.CardState(acct, c.ICCID, time.Now())
	if !ok {
		t.Fatalf("unknown card %s", c.ICCID)
	}
	carrierName := s.AccountConfig(acct).Carrier
	if c.IMSI != st.IMSI || c.RawStatus != st.RawStatus || c.RatePlan != st.RatePlan {
		t.Errorf("%s card %s: got imsi=%s raw=%s plan=%s, want %s %s %s", acct, c.ICCID, c.IMSI, c.RawStatus, c.RatePlan, st.IMSI, st.RawStatus, st.RatePlan)
	}
	if c.MSISDN != st.MSISDN && carrierName != carrier.Telecom {
		t.Errorf("%s card %s: msisdn %s, want %s", acct, c.ICCID, c.MSISDN, st.MSISDN)
	}
	if want := statusOf(carrierName, st.RawStatus); c.Status != want || c.Status == carrier.StatusUnknown {
		t.Errorf("%s card %s: status %s, want %s", acct, c.ICCID, c.Status, want)
	}
	if d := c.DataUsedBytes - st.UsageBytes; d > usageTolerance[carrierName] || d < -usageTolerance[carrierName] {
		t.Errorf("%s card %s: usage %d bytes, want %d", acct, c.ICCID, c.DataUsedBytes, st.UsageBytes)
	}
	if !c.OpenedAt.Equal(st.OpenedAt) {
		t.Errorf("%s card %s: opened %v, want %v", acct, c.ICCID, c.OpenedAt, st.OpenedAt)
	}
	if c.FetchedAt.IsZero() || c.UsagePeriod == "" {
		t.Errorf("%s card %s: fetched/period not set", acct, c.ICCID)
	}
}

func TestAdaptersHappyPath(t *testing.T) {
	s := startSim(t, testSpecs)
	for _, spec := range testSpecs {
		t.Run(spec.Carrier, func(t *testing.T) {
			cl, err := carrier.NewClient(accountCfg(s, spec.ID), nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			if cl.Carrier() != spec.Carrier || cl.BatchSize() != carrier.DefaultBatchSize(spec.Carrier) {
				t.Fatalf("carrier %s batch %d", cl.Carrier(), cl.BatchSize())
			}
			good, missing := goodCards(t, s, spec.ID, cl.BatchSize())
			ctx := context.Background()

			// single card, lower-case input
			res, err := cl.Query(ctx, []string{strings.ToLower(good[0])})
			if err != nil {
				t.Fatal(err)
			}
			if len(res) != 1 || res[0].Err != nil || res[0].Card == nil {
				t.Fatalf("single: %+v", res)
			}
			checkCard(t, s, spec.ID, res[0].Card)

			// missing card alone: a per-card not-found, not a failed call
			res, err = cl.Query(ctx, missing[:1])
			if err != nil {
				t.Fatalf("missing alone: %v", err)
			}
			if carrier.KindOf(res[0].Err) != carrier.KindNotFound || !errors.Is(res[0].Err, carrier.ErrNotFound) {
				t.Fatalf("missing alone: %+v", res[0])
			}
			if cl.BatchSize() == 1 {
				return
			}
			// full batch with a missing card, an unknown card and an invalid ICCID
			batch := append([]string{}, good[:cl.BatchSize()-3]...)
			batch = append(batch, missing[0], "8986000000000000000", "not-an-iccid")
			res, err = cl.Query(ctx, batch)
			if err != nil {
				t.Fatal(err)
			}
			if len(res) != len(batch) {
				t.Fatalf("got %d results for %d", len(res), len(batch))
			}
			for i, r := range res {
				if r.ICCID != batch[i] {
					t.Fatalf("result %d is %s, want %s", i, r.ICCID, batch[i])
				}
				switch {
				case i < len(batch)-3:
					if r.Err != nil {
						t.Fatalf("card %s: %v", r.ICCID, r.Err)
					}
					checkCard(t, s, spec.ID, r.Card)
				case i < len(batch)-1:
					if carrier.KindOf(r.Err) != carrier.KindNotFound {
						t.Fatalf("card %s: %v", r.ICCID, r.Err)
					}
				default:
					if carrier.KindOf(r.Err) != carrier.KindInvalidRequest {
						t.Fatalf("card %s: %v", r.ICCID, r.Err)
					}
				}
			}
			if _, err := cl.Query(ctx, make([]string, cl.BatchSize()+1)); carrier.KindOf(err) != carrier.KindInvalidRequest {
				t.Fatalf("oversized batch: %v", err)
			}
		})
	}
}

func TestOneLinkTokenExpiryMidRun(t *testing.T) {
	s := startSim(t, testSpecs[:1])
	cl, err := carrier.NewClient(accountCfg(s, "om"), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	good, _ := goodCards(t, s, "om", 20)
	ctx := context.Background()
	if _, err := cl.Query(ctx, good); err != nil {
		t.Fatal(err)
	}
	if err := s.ExpireTokens("om"); err != nil {
		t.Fatal(err)
	}
	// Many goroutines hit the expired token at once: one refresh serves all.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := cl.Query(ctx, good)
			if err == nil && res[0].Err != nil {
				err = res[0].Err
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := s.Stats().Accounts["om"].TokenCalls; got != 2 {
		t.Fatalf("token calls = %d, want 2 (initial + one single-flight refresh)", got)
	}
}

func TestOneLinkTokenTTLRefresh(t *testing.T) {
	specs := []sim.AccountSpec{testSpecs[0]}
	specs[0].TokenTTL = time.Second
	s := startSim(t, specs)
	cl, err := carrier.NewClient(accountCfg(s, "om"), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	good, _ := goodCards(t, s, "om", 1)
	deadline := time.Now().Add(20 * time.Second)
	for s.Stats().Accounts["om"].TokenCalls < 3 {
		if time.Now().After(deadline) {
			t.Fatal("token never refreshed")
		}
		if _, err := cl.Query(context.Background(), good); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if f := s.Stats().Accounts["om"].AuthFailures; f != 0 {
		t.Fatalf("%d calls used an expired token; refresh should come early", f)
	}
}

func TestRateLimitMapping(t *testing.T) {
	specs := make([]sim.AccountSpec, len(testSpecs))
	copy(specs, testSpecs)
	for i := range specs {
		specs[i].RatePerSec, specs[i].Burst = 0.5, 1
	}
	s := startSim(t, specs)
	for _, spec := range specs {
		t.Run(spec.Carrier, func(t *testing.T) {
			cl, err := carrier.NewClient(accountCfg(s, spec.ID), nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			good, _ := goodCards(t, s, spec.ID, 1)
			var last error
			for range 3 {
				if _, last = cl.Query(context.Background(), good); last != nil {
					break
				}
			}
			if carrier.KindOf(last) != carrier.KindRateLimited || !errors.Is(last, carrier.ErrRateLimited) {
				t.Fatalf("got %v, want rate limited", last)
			}
			wantRA := 2 * time.Second // ceil(1/0.5 s)
			if spec.Carrier == carrier.Cisco {
				wantRA = 0 // Control Center sends no Retry-After
			}
			if got := carrier.RetryAfter(last); got != wantRA {
				t.Fatalf("retry after %v, want %v", got, wantRA)
			}
			if s.Stats().Accounts[spec.ID].Rejected == 0 {
				t.Fatal("witness did not count the rejection")
			}
		})
	}
}

// TestFaultKinds injects every fault kind at rate 1 and checks the kind each
// adapter reports; it also checks that no secret reaches an error or a log.
func TestFaultKinds(t *testing.T) {
	s := startSim(t, testSpecs)
	logs := &safeBuffer{}
	logger := hclog.New(&hclog.LoggerOptions{Level: hclog.Trace, Output: logs})
	var seen []string
	type fault struct {
		kind    string
		outage  bool
		want    carrier.Kind
		perCard bool
	}
	faults := []fault{
		{kind: sim.FaultRateLimited, want: carrier.KindRateLimited},
		{kind: sim.FaultAuthExpired, want: carrier.KindAuthExpired},
		{kind: sim.FaultAuthInvalid, want: carrier.KindAuthInvalid},
		{kind: sim.FaultTransient5xx, want: carrier.KindTransient},
		{kind: sim.FaultHTMLBody, want: carrier.KindTransient},
		{kind: sim.FaultTruncatedBody, want: carrier.KindTransient},
		{kind: sim.FaultTimeout, want: carrier.KindTransient},
		{kind: sim.FaultNotFound, want: carrier.KindNotFound, perCard: true},
		{kind: "outage", outage: true, want: carrier.KindTransient},
	}
	for _, spec := range testSpecs {
		cfg := accountCfg(s, spec.ID)
		cfg.Timeout = 300 * time.Millisecond
		cl, err := carrier.NewClient(cfg, nil, logger)
		if err != nil {
			t.Fatal(err)
		}
		good, _ := goodCards(t, s, spec.ID, 3)
		batch := good[:min(3, cl.BatchSize())]
		if _, err := cl.Query(context.Background(), batch); err != nil {
			t.Fatal(err)
		}
		for _, f := range faults {
			t.Run(spec.Carrier+"/"+f.kind, func(t *testing.T) {
				fs := sim.Faults{Outage: f.outage}
				if !f.outage {
					fs.Rates = map[string]float64{f.kind: 1}
				}
				if err := s.SetFaults(spec.ID, fs); err != nil {
					t.Fatal(err)
				}
				defer s.ClearFaults()
				res, err := cl.Query(context.Background(), batch)
				want := f.want
				if f.kind == sim.FaultAuthExpired && spec.Carrier != carrier.OneLink {
					want = carrier.KindOK // signed, token-less dialects have no expiry
				}
				if err != nil {
					seen = append(seen, err.Error())
				}
				if f.perCard {
					if err != nil {
						t.Fatalf("per-card fault failed the call: %v", err)
					}
					for _, r := range res {
						if carrier.KindOf(r.Err) != want {
							t.Fatalf("card %s: %v, want %s", r.ICCID, r.Err, want)
						}
						seen = append(seen, r.Err.Error())
					}
					return
				}
				if got := carrier.KindOf(err); got != want {
					t.Fatalf("got %s (%v), want %s", got, err, want)
				}
			})
		}
		// wrong credentials
		bad := cfg
		bad.Secret = "wrong-" + cfg.Secret
		cl2, err := carrier.NewClient(bad, nil, logger)
		if err != nil {
			t.Fatal(err)
		}
		_, err = cl2.Query(context.Background(), batch)
		if carrier.KindOf(err) != carrier.KindAuthInvalid {
			t.Fatalf("%s wrong secret: %v", spec.Carrier, err)
		}
		seen = append(seen, err.Error())
		// nothing listening
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		dead := cfg
		dead.Endpoint = "http://" + ln.Addr().String()
		ln.Close()
		cl3, err := carrier.NewClient(dead, nil, logger)
		if err != nil {
			t.Fatal(err)
		}
		_, err = cl3.Query(context.Background(), batch)
		if carrier.KindOf(err) != carrier.KindTransient {
			t.Fatalf("%s connection refused: %v", spec.Carrier, err)
		}
		seen = append(seen, err.Error())
	}
	all := strings.Join(seen, "\n") + logs.String()
	for _, spec := range testSpecs {
		if strings.Contains(all, spec.Secret) {
			t.Fatalf("secret of %s leaked into errors or logs", spec.ID)
		}
	}
	if len(seen) < 10 {
		t.Fatalf("only %d errors seen", len(seen))
	}
	for _, kind := range sim.FaultKinds() {
		total := uint64(0)
		for _, a := range s.Stats().Accounts {
			total += a.Faults[kind]
		}
		if total == 0 {
			t.Errorf("fault %s never injected", kind)
		}
	}
}

func TestAccountConfigRedaction(t *testing.T) {
	cfg := carrier.DefaultAccountConfig()
	cfg.ID, cfg.Carrier, cfg.Endpoint, cfg.AppID, cfg.Secret = "a", "onelink", "http://127.0.0.1:1", "appid-XYZ", "pw-S3CRET"
	for _, s := range []string{cfg.String(), fmt.Sprintf("%v %+v %#v", cfg, cfg, cfg)} {
		if strings.Contains(s, "S3CRET") {
			t.Fatalf("secret in %q", s)
		}
	}
	bad := []func(*carrier.AccountConfig){
		func(c *carrier.AccountConfig) { c.Carrier = "pigeon" },
		func(c *carrier.AccountConfig) { c.Endpoint = "ftp://x" },
		func(c *carrier.AccountConfig) { c.Endpoint = "http://user:pw-S3CRET@host" },
		func(c *carrier.AccountConfig) { c.Secret = "" },
		func(c *carrier.AccountConfig) { c.RatePerSec = 0 },
		func(c *carrier.AccountConfig) { c.Concurrency = 0 },
		func(c *carrier.AccountConfig) { c.Headroom = 0.7 },
		func(c *carrier.AccountConfig) { c.Carrier = carrier.Telecom },
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	for i, mut := range bad {
		c := cfg
		mut(&c)
		err := c.Validate()
		if err == nil || !errors.Is(err, carrier.ErrInvalidConfig) {
			t.Fatalf("case %d: %v", i, err)
		}
		if strings.Contains(err.Error(), "S3CRET") {
			t.Fatalf("case %d: secret in %v", i, err)
		}
	}
}
