package sim

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cardsync/carrier"
)

func TestConfigJSONAndValidate(t *testing.T) {
	raw := []byte(`{"seed":7,"latency":"5ms","change_every":"30s","accounts":[
	  {"id":"a","carrier":"onelink","app_id":"x","secret":"y","cards":10,"rate_per_sec":5,"burst":2,"token_ttl":"2h"}],
	  "faults":{"*":{"rates":{"transient_5xx":0.1},"latency_max":"10ms"}}}`)
	c, err := LoadConfig(raw)
	if err != nil {
		t.Fatal(err)
	}
	if c.Seed != 7 || c.Latency != 5*time.Millisecond || c.ChangeEvery != 30*time.Second || len(c.Accounts) != 1 ||
		c.Accounts[0].TokenTTL != 2*time.Hour || c.TimeoutDelay != 30*time.Second || c.Faults["*"].Rates[FaultTransient5xx] != 0.1 {
		t.Fatalf("loaded %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	out, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	back, err := LoadConfig(out)
	if err != nil || back.Latency != c.Latency || back.Accounts[0].TokenTTL != 2*time.Hour {
		t.Fatalf("round trip: %v %+v", err, back)
	}
	def := DefaultConfig()
	if err := def.Validate(); err != nil {
		t.Fatal(err)
	}
	total := 0
	carriers := map[string]bool{}
	for _, a := range def.Accounts {
		total += a.Cards
		carriers[a.Carrier] = true
	}
	if total < 20000 || len(carriers) != 4 {
		t.Fatalf("dev accounts: %d cards over %d carriers", total, len(carriers))
	}
	bad := []func(*Config){
		func(c *Config) { c.Accounts = nil },
		func(c *Config) { c.Accounts[0].Carrier = "pigeon" },
		func(c *Config) { c.Accounts[1].ID = c.Accounts[0].ID },
		func(c *Config) { c.Accounts[0].TokenTTL = 0 },
		func(c *Config) { c.ChangeEvery = 0 },
		func(c *Config) { c.Faults = map[string]Faults{"nope": {}} },
		func(c *Config) { c.Faults = map[string]Faults{"*": {Rates: map[string]float64{"meteor": 1}}} },
		func(c *Config) {
			c.Faults = map[string]Faults{"*": {Rates: map[string]float64{FaultTimeout: 0.7, FaultHTMLBody: 0.7}}}
		},
	}
	for i, mut := range bad {
		c := DefaultConfig()
		c.Accounts = DevAccounts()
		mut(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("case %d validated", i)
		}
	}
}

func TestPopulationDeterministicAndDrifting(t *testing.T) {
	cfg := DefaultConfig()
	cfg.ChangeEvery = time.Minute
	s1, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s2, _ := New(cfg)
	seen := map[string]bool{}
	for _, spec := range cfg.Accounts {
		c1, c2 := s1.Cards(spec.ID), s2.Cards(spec.ID)
		if len(c1) != spec.Cards || len(c1) != len(c2) {
			t.Fatalf("%s: %d cards", spec.ID, len(c1))
		}
		letters, missing, changed := 0, 0, 0
		now := time.Now()
		for i, c := range c1 {
			if c != c2[i] {
				t.Fatalf("%s: card %d differs between runs", spec.ID, i)
			}
			if seen[c.ICCID] {
				t.Fatalf("duplicate ICCID %s", c.ICCID)
			}
			seen[c.ICCID] = true
			n, err := carrier.NormalizeICCID(c.ICCID)
			if err != nil || n != c.ICCID || !strings.HasPrefix(c.ICCID, "8986") || !strings.HasPrefix(c.IMSI, "460") || len(c.IMSI) != 15 {
				t.Fatalf("bad identity %+v", c)
			}
			if strings.ContainsAny(c.ICCID, "ABCDEF") {
				letters++
			}
			a, _ := s1.CardState(spec.ID, c.ICCID, now)
			b, _ := s1.CardState(spec.ID, c.ICCID, now.Add(6*time.Minute))
			if a.NotFound || a.NotOwned {
				missing++
			}
			if a.RawStatus != b.RawStatus || a.UsageBytes != b.UsageBytes {
				changed++
			}
		}
		if spec.Carrier == OneLink && letters == 0 {
			t.Errorf("%s: no CMCC ICCID with a hex letter", spec.ID)
		}
		if missing == 0 || missing > spec.Cards/20 {
			t.Errorf("%s: %d not-found cards", spec.ID, missing)
		}
		if changed < spec.Cards/2 {
			t.Errorf("%s: only %d of %d cards changed over 6 buckets", spec.ID, changed, spec.Cards)
		}
	}
}

func TestSignaturesAgreeWithAdapters(t *testing.T) {
	if carrier.UnicomToken("app", "2024-06-01 12:00:00.123", "tid", "sec") != unicomSign("app", "2024-06-01 12:00:00.123", "tid", "sec") {
		t.Fatal("unicom token differs")
	}
	if carrier.TelecomSign("", `{"a":1}`, "sec", "20240601120000") != telecomSign("", `{"a":1}`, "sec", "20240601120000") {
		t.Fatal("telecom sign differs")
	}
	// SM3 of the GB/T 32905-2016 example "abc" (the token's hash, without the field labels).
	sum := hexSM3([]byte("abc"))
	if sum != "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0" {
		t.Fatalf("SM3(abc) = %s", sum)
	}
}

func TestAdminAPI(t *testing.T) {
	cfg := DefaultConfig()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	post := func(body string) int {
		resp, err := http.Post(s.URL()+"/_sim/faults", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if c := post(`{"account":"cucc-main","rates":{"transient_5xx":1},"latency_min":"1ms","latency_max":"2ms"}`); c != 200 {
		t.Fatalf("set faults: %d", c)
	}
	if c := post(`{"account":"nope","outage":true}`); c != 400 {
		t.Fatalf("unknown account: %d", c)
	}
	if c := post(`{"expire_tokens":true}`); c != 200 {
		t.Fatalf("expire tokens: %d", c)
	}
	if f := s.Faults(); f["cucc-main"].Rates[FaultTransient5xx] != 1 {
		t.Fatalf("faults %+v", f)
	}
	cl, err := carrier.NewClient(s.AccountConfig("cucc-main"), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Query(t.Context(), []string{s.Cards("cucc-main")[0].ICCID}); carrier.KindOf(err) != carrier.KindTransient {
		t.Fatalf("want transient, got %v", err)
	}
	req, _ := http.NewRequest(http.MethodDelete, s.URL()+"/_sim/faults", nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 204 {
		t.Fatalf("clear: %v", err)
	}
	if len(s.Faults()) != 0 {
		t.Fatal("faults not cleared")
	}
	resp, err := http.Get(s.URL() + "/_sim/stats?fetch_counts=1")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Stats
		FetchCounts map[string]map[string]uint32 `json:"fetch_counts"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	a := st.Accounts["cucc-main"]
	if a.Calls != 1 || a.Faults[FaultTransient5xx] != 1 || len(a.PerSecond) != 1 || a.PeakPerSecond != 1 {
		t.Fatalf("stats %+v", a)
	}
	resp, err = http.Get(s.URL() + "/_sim/cards/ctcc-main")
	if err != nil {
		t.Fatal(err)
	}
	var cards []SimCard
	if err := json.NewDecoder(resp.Body).Decode(&cards); err != nil || len(cards) != 3000 {
		t.Fatalf("cards: %v %d", err, len(cards))
	}
	resp.Body.Close()
	if resp, err := http.Post(s.URL()+"/_sim/stats/reset", "", nil); err != nil || resp.StatusCode != 204 {
		t.Fatalf("reset: %v", err)
	}
	if n := len(s.Stats().Accounts["cucc-main"].PerSecond); n != 0 {
		t.Fatalf("reset left %d seconds", n)
	}
}

// BenchmarkSimulator measures data calls per second through the real HTTP
// stack on loopback (Cisco device details, one card per call, quotas off).
func BenchmarkSimulator(b *testing.B) {
	cfg := DefaultConfig()
	cfg.Latency = 0
	cfg.Accounts = []AccountSpec{{ID: "bench", Carrier: Cisco, AppID: "u", Secret: "k", Cards: 1000}}
	s, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	if err := s.Start("127.0.0.1:0"); err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	cards := s.Cards("bench")
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 64
	hc := &http.Client{Transport: tr}
	const workers = 8
	n := max(b.N, 20000)
	var next, failed atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf bytes.Buffer
			for {
				i := next.Add(1)
				if i > int64(n) {
					return
				}
				req, _ := http.NewRequest(http.MethodGet, s.URL()+carrier.CiscoDevicesPath+cards[int(i)%len(cards)].ICCID, nil)
				req.SetBasicAuth("u", "k")
				resp, err := hc.Do(req)
				if err != nil {
					failed.Add(1)
					continue
				}
				buf.Reset()
				_, _ = buf.ReadFrom(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 && resp.StatusCode != 404 {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if failed.Load() > 0 {
		b.Fatalf("%d calls failed", failed.Load())
	}
	if got := s.Stats().Accounts["bench"].Calls; got != uint64(n) {
		b.Fatalf("witness counted %d of %d calls", got, n)
	}
	b.ReportMetric(float64(n)/elapsed.Seconds(), "calls/s")
}
