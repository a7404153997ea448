package sim

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"cardsync/carrier"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/time/rate"
)

// ErrNotStarted is returned by Close before Start.
var ErrNotStarted = errors.New("sim: not started")

// Sim is a running simulator of the four carrier APIs.
type Sim struct {
	cfg      Config
	logger   hclog.Logger
	accounts map[string]*account
	order    []*account
	byCred   map[string]*account // carrier + "\x00" + app id
	handler  http.Handler
	w        *witness

	faultMu sync.Mutex
	faults  map[string]Faults

	rngMu sync.Mutex
	rng   *rand.Rand

	srvMu sync.Mutex
	srv   *http.Server
	url   string
	done  chan struct{}
}

type account struct {
	spec     AccountSpec
	idx      int
	cards    []card
	byICCID  map[string]int
	byMSISDN map[string]int
	limiter  *rate.Limiter // nil = unlimited

	mu     sync.Mutex
	tokens map[string]time.Time // OneLink token -> expiry
}

// New builds a simulator; call Start to serve it, or mount Handler.
func New(cfg Config) (*Sim, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	s := &Sim{
		cfg:      cfg,
		logger:   cfg.Logger.Named("carriersim"),
		accounts: map[string]*account{},
		byCred:   map[string]*account{},
		faults:   map[string]Faults{},
		w:        newWitness(cfg.StatsSeconds),
		rng:      rand.New(rand.NewPCG(uint64(cfg.Seed), 0x5eed)),
	}
	for i, spec := range cfg.Accounts {
		a := &account{spec: spec, idx: i, tokens: map[string]time.Time{}}
		a.cards = population(cfg.Seed, spec, i)
		a.byICCID = make(map[string]int, len(a.cards))
		a.byMSISDN = make(map[string]int, len(a.cards))
		for j, c := range a.cards {
			a.byICCID[c.ICCID] = j
			a.byMSISDN[c.MSISDN] = j
		}
		if spec.RatePerSec > 0 {
			a.limiter = rate.NewLimiter(rate.Limit(spec.RatePerSec), spec.Burst)
		}
		s.accounts[spec.ID] = a
		s.order = append(s.order, a)
		s.byCred[spec.Carrier+"\x00"+spec.AppID] = a
	}
	for id, f := range cfg.Faults {
		if err := s.SetFaults(id, f); err != nil {
			return nil, err
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+carrier.OneLinkTokenPath, s.oneLinkToken)
	mux.HandleFunc(carrier.OneLinkInfoPath, s.oneLinkInfo)
	mux.HandleFunc(carrier.OneLinkUsagePath, s.oneLinkUsage)
	mux.HandleFunc("POST "+carrier.UnicomDetailsPath, s.unicomDetails)
	mux.HandleFunc("POST "+carrier.TelecomInfoPath, s.telecomInfo)
	mux.HandleFunc("POST "+carrier.TelecomFlowPath, s.telecomFlow)
	mux.HandleFunc("GET "+carrier.CiscoDevicesPath+"{iccid}", s.ciscoDevice)
	mux.HandleFunc("GET "+carrier.CiscoDevicesPath+"{iccid}/ctdUsages", s.ciscoUsage)
	mux.HandleFunc("GET /_sim/stats", s.adminStats)
	mux.HandleFunc("POST /_sim/stats/reset", s.adminResetStats)
	mux.HandleFunc("GET /_sim/faults", s.adminGetFaults)
	mux.HandleFunc("POST /_sim/faults", s.adminSetFaults)
	mux.HandleFunc("DELETE /_sim/faults", s.adminClearFaults)
	mux.HandleFunc("GET /_sim/accounts", s.adminAccounts)
	mux.HandleFunc("GET /_sim/cards/{account}", s.adminCards)
	s.handler = mux
	return s, nil
}

// Handler serves all four dialects and the admin API (/_sim/...).
func (s *Sim) Handler() http.Handler { return s.handler }

// Start listens on addr ("127.0.0.1:0" for any free port) and serves in the background.
func (s *Sim) Start(addr string) error {
	s.srvMu.Lock()
	defer s.srvMu.Unlock()
	if s.srv != nil {
		return errors.New("sim: already started")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("sim: listen: %w", err)
	}
	srv := &http.Server{Handler: s.handler, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: s.logger.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true})}
	s.srv = srv
	s.url = "http://" + ln.Addr().String()
	s.done = make(chan struct{})
	go func(done chan struct{}) {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.logger.Error("serve", "error", err)
		}
	}(s.done)
	s.logger.Info("carrier simulator listening", "url", s.url, "accounts", len(s.order))
	return nil
}

// URL is the base URL after Start ("" before).
func (s *Sim) URL() string {
	s.srvMu.Lock()
	defer s.srvMu.Unlock()
	return s.url
}

// Close stops the server, cutting held calls.
func (s *Sim) Close() error {
	s.srvMu.Lock()
	srv, done := s.srv, s.done
	s.srvMu.Unlock()
	if srv == nil {
		return ErrNotStarted
	}
	err := srv.Close()
	<-done
	return err
}

// Cards returns the account's card population (nil for an unknown account).
func (s *Sim) Cards(accountID string) []SimCard {
	a := s.accounts[accountID]
	if a == nil {
		return nil
	}
	out := make([]SimCard, len(a.cards))
	for i, c := range a.cards {
		out[i] = c.SimCard
	}
	return out
}

// CardState is what the carrier would answer for iccid at time at.
func (s *Sim) CardState(accountID, iccid string, at time.Time) (CardState, bool) {
	a := s.accounts[accountID]
	if a == nil {
		return CardState{}, false
	}
	i, ok := a.byICCID[strings.ToUpper(iccid)]
	if !ok {
		return CardState{}, false
	}
	return s.state(a, &a.cards[i], at), true
}

// Accounts returns the account specs in configuration order.
func (s *Sim) Accounts() []AccountSpec {
	out := make([]AccountSpec, len(s.order))
	for i, a := range s.order {
		out[i] = a.spec
	}
	return out
}

// AccountConfig is a carrier.AccountConfig for the account: the simulator's
// URL as endpoint (after Start), its credentials and its quota.
func (s *Sim) AccountConfig(id string) carrier.AccountConfig {
	c := carrier.DefaultAccountConfig()
	a := s.accounts[id]
	if a == nil {
		return c
	}
	c.ID, c.Carrier, c.Endpoint = a.spec.ID, a.spec.Carrier, s.URL()
	c.AppID, c.Secret, c.OpenID, c.CustNumber = a.spec.AppID, a.spec.Secret, a.spec.OpenID, a.spec.CustNumber
	if a.spec.RatePerSec > 0 {
		c.RatePerSec, c.Burst = a.spec.RatePerSec, a.spec.Burst
	} else {
		c.RatePerSec, c.Burst = 1000, 100
	}
	if a.spec.MaxConcurrent > 0 {
		c.Concurrency = a.spec.MaxConcurrent
	} else {
		c.Concurrency = 16
	}
	return c
}

// Stats is the witness' record since the last reset.
func (s *Sim) Stats() Stats { return s.w.snapshot() }

// FetchCounts gives how many times each ICCID of the account was returned.
func (s *Sim) FetchCounts(accountID string) map[string]uint32 { return s.w.fetchCounts(accountID) }

// ResetStats clears the witness.
func (s *Sim) ResetStats() { s.w.reset() }

func (s *Sim) rand() float64 {
	s.rngMu.Lock()
	defer s.rngMu.Unlock()
	return s.rng.Float64()
}

func (s *Sim) randHex(n int) string {
	s.rngMu.Lock()
	defer s.rngMu.Unlock()
	const digits = "0123456789abcdef"
	b := make([]byte, n)
	for i := range b {
		b[i] = digits[s.rng.IntN(16)]
	}
	return string(b)
}

func (a *account) lookup(id string) (*card, bool) {
	id = strings.ToUpper(strings.TrimSpace(id))
	if i, ok := a.byICCID[id]; ok {
		return &a.cards[i], true
	}
	if i, ok := a.byMSISDN[id]; ok {
		return &a.cards[i], true
	}
	return nil, false
}

func secretEqual(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }

// dialect is how one carrier signals the common failures.
type dialect struct {
	rateLimited func(w http.ResponseWriter, retryAfter int)
	authInvalid func(w http.ResponseWriter)
	authExpired func(w http.ResponseWriter) // nil: the dialect has no tokens
}

// call is one admitted data call.
type call struct {
	a            *account
	truncate     bool
	notFoundRate float64
	release      func()
	start        time.Time // when the call was admitted
	tag          string    // the caller's TagHeader
}

func (c *call) notFound(s *Sim) bool {
	if c.notFoundRate > 0 && s.rand() < c.notFoundRate {
		s.w.fault(c.a, FaultNotFound)
		return true
	}
	return false
}

// begin runs the shared part of a data call for account a: outage, quota
// (counted at the witness), latency and call-level faults. It returns nil
// when it already answered.
func (s *Sim) begin(w http.ResponseWriter, r *http.Request, a *account, d dialect) *call {
	f, _ := s.faultsFor(a.spec.ID)
	if f.Outage {
		s.w.fault(a, "outage")
		writeHTML(w, http.StatusServiceUnavailable, "503 Service Unavailable")
		return nil
	}
	now := time.Now()
	if ok, reason := s.w.arrive(a, now); !ok {
		s.logger.Debug("over quota", "account", a.spec.ID, "reason", reason)
		d.rateLimited(w, a.retryAfter())
		return nil
	}
	c := &call{a: a, release: func() { s.w.leave(a) }, notFoundRate: f.Rates[FaultNotFound], start: now}
	if s.w.logging() {
		c.tag = r.Header.Get(TagHeader)
	}
	if !sleep(r.Context(), s.cfg.Latency+s.extraLatency(f)) {
		c.release()
		return nil
	}
	kind := s.draw(f)
	if kind == FaultAuthExpired && d.authExpired == nil {
		kind = ""
	}
	if kind != "" {
		s.w.fault(a, kind)
	}
	switch kind {
	case FaultRateLimited:
		d.rateLimited(w, a.retryAfter())
	case FaultAuthExpired:
		d.authExpired(w)
	case FaultAuthInvalid:
		d.authInvalid(w)
	case FaultTransient5xx:
		codes := []int{http.StatusInternalServerError, http.StatusBadGateway, http.StatusServiceUnavailable}
		st := codes[int(s.rand()*3)%3]
		writeHTML(w, st, strconv.Itoa(st)+" "+http.StatusText(st))
	case FaultHTMLBody:
		writeHTML(w, http.StatusOK, "Gateway maintenance: please retry later")
	case FaultTimeout:
		sleep(r.Context(), s.cfg.TimeoutDelay)
		writeHTML(w, http.StatusGatewayTimeout, "504 Gateway Time-out")
	case FaultTruncatedBody:
		c.truncate = true
		return c
	default:
		return c
	}
	c.release()
	return nil
}

// retryAfter is the whole seconds until the bucket has a token again (>= 1).
func (a *account) retryAfter() int {
	if a.limiter == nil || a.spec.RatePerSec <= 0 {
		return 1
	}
	s := int(1/a.spec.RatePerSec + 0.999)
	if s < 1 {
		s = 1
	}
	return s
}

func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func writeHTML(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	fmt.Fprintf(w, "<html><head><title>%s</title></head><body><h1>%s</h1></body></html>\n", msg, msg)
}

// writeJSON writes v; a truncated call sends the full Content-Length but
// only half the bytes; the server then closes the connection.
func writeJSON(w http.ResponseWriter, c *call, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "encode", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json;charset=UTF-8")
	if c != nil && c.truncate {
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		w.WriteHeader(status)
		_, _ = w.Write(b[:len(b)/2])
		return
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

func cstTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.In(cst).Format("2006-01-02 15:04:05")
}

// ---- admin API ----

func (s *Sim) adminStats(w http.ResponseWriter, r *http.Request) {
	st := s.Stats()
	out := struct {
		Stats
		FetchCounts map[string]map[string]uint32 `json:"fetch_counts,omitempty"`
	}{Stats: st}
	if r.URL.Query().Get("fetch_counts") != "" {
		out.FetchCounts = map[string]map[string]uint32{}
		for id := range st.Accounts {
			out.FetchCounts[id] = s.FetchCounts(id)
		}
	}
	writeJSON(w, nil, http.StatusOK, out)
}

func (s *Sim) adminResetStats(w http.ResponseWriter, _ *http.Request) {
	s.ResetStats()
	w.WriteHeader(http.StatusNoContent)
}

func (s *Sim) adminGetFaults(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, nil, http.StatusOK, s.Faults())
}

func (s *Sim) adminSetFaults(w http.ResponseWriter, r *http.Request) {
	var req FaultRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeJSON(w, nil, http.StatusBadRequest, map[string]string{"error": err.Error()})
		return
	}
	if err := s.SetFaults(req.Account, req.Faults); err != nil {
		writeJSON(w, nil, http.StatusBadRequest, map[string]string{"error": err.Error()})
		return
	}
	if req.ExpireTokens {
		if err := s.ExpireTokens(req.Account); err != nil {
			writeJSON(w, nil, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
	}
	writeJSON(w, nil, http.StatusOK, s.Faults())
}

func (s *Sim) adminClearFaults(w http.ResponseWriter, r *http.Request) {
	if id := r.URL.Query().Get("account"); id != "" {
		s.faultMu.Lock()
		delete(s.faults, id)
		s.faultMu.Unlock()
	} else {
		s.ClearFaults()
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Sim) adminAccounts(w http.ResponseWriter, _ *http.Request) {
	type acct struct {
		ID, Carrier   string
		Cards         int
		RatePerSec    float64
		Burst         int
		MaxConcurrent int
	}
	out := make([]acct, 0, len(s.order))
	for _, a := range s.order {
		out = append(out, acct{a.spec.ID, a.spec.Carrier, a.spec.Cards, a.spec.RatePerSec, a.spec.Burst, a.spec.MaxConcurrent})
	}
	writeJSON(w, nil, http.StatusOK, out)
}

func (s *Sim) adminCards(w http.ResponseWriter, r *http.Request) {
	cards := s.Cards(r.PathValue("account"))
	if cards == nil {
		writeJSON(w, nil, http.StatusNotFound, map[string]string{"error": "unknown account"})
		return
	}
	writeJSON(w, nil, http.StatusOK, cards)
}
