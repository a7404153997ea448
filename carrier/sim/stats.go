package sim

import (
	"sort"
	"sync"
	"time"
)

// SecondCount is one wall-clock second of an account's data calls.
type SecondCount struct {
	Unix     int64 `json:"unix"`
	Calls    int   `json:"calls"`    // data calls that arrived (accepted and rejected)
	Rejected int   `json:"rejected"` // of which over quota
}

// AccountStats is the witness' record of one account.
type AccountStats struct {
	Carrier             string            `json:"carrier"`
	Calls               uint64            `json:"calls"`    // data calls that arrived
	Accepted            uint64            `json:"accepted"` // within quota
	Rejected            uint64            `json:"rejected"` // over quota, answered with the carrier's rate-limit signal
	RejectedRate        uint64            `json:"rejected_rate"`
	RejectedConcurrency uint64            `json:"rejected_concurrency"`
	TokenCalls          uint64            `json:"token_calls"` // OneLink token fetches (not counted in Calls)
	AuthFailures        uint64            `json:"auth_failures"`
	Faults              map[string]uint64 `json:"faults"` // injected faults by kind
	MaxConcurrent       int               `json:"max_concurrent"`
	PeakPerSecond       int               `json:"peak_per_second"` // most accepted+rejected calls in one wall-clock second
	PerSecond           []SecondCount     `json:"per_second"`
	CardsFetched        uint64            `json:"cards_fetched"`  // card records returned
	DistinctCards       int               `json:"distinct_cards"` // distinct ICCIDs returned
	First               time.Time         `json:"first,omitzero"` // first data call
	Last                time.Time         `json:"last,omitzero"`  // latest data call
}

// Stats is the witness' record of every account since the last reset.
type Stats struct {
	Since    time.Time               `json:"since"`
	Accounts map[string]AccountStats `json:"accounts"`
}

type witness struct {
	mu         sync.Mutex
	since      time.Time
	keep       int
	perAccount map[string]*accountWitness

	logOn bool
	log   []CallRecord
}

// TagHeader is a request header whose value the call log records with each call (a
// test harness sets it to the calling node's name).
const TagHeader = "X-Carriersim-Tag"

// CallRecord is one data call that returned card records, as the call log keeps it.
type CallRecord struct {
	Account string    `json:"account"`
	Tag     string    `json:"tag,omitempty"`
	Start   time.Time `json:"start"` // admitted within quota
	End     time.Time `json:"end"`   // answered
	ICCIDs  []string  `json:"iccids"`
}

// RecordCalls switches the call log on (cleared) or off. It is off by default: the
// witness' counters do not need it.
func (s *Sim) RecordCalls(on bool) {
	s.w.mu.Lock()
	s.w.logOn, s.w.log = on, nil
	s.w.mu.Unlock()
}

// Calls returns the call log, oldest answer first.
func (s *Sim) Calls() []CallRecord {
	s.w.mu.Lock()
	defer s.w.mu.Unlock()
	return append([]CallRecord(nil), s.w.log...)
}

func (w *witness) logging() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.logOn
}

// fetched counts the card records a call returned and logs the call when the log is on.
func (s *Sim) fetched(c *call, iccids []string) {
	s.w.fetched(c.a, iccids)
	s.w.mu.Lock()
	if s.w.logOn {
		s.w.log = append(s.w.log, CallRecord{Account: c.a.spec.ID, Tag: c.tag, Start: c.start, End: time.Now(),
			ICCIDs: append([]string(nil), iccids...)})
	}
	s.w.mu.Unlock()
}

type accountWitness struct {
	st        AccountStats
	inFlight  int
	perSecond map[int64]*SecondCount
	fetched   map[string]uint32
}

func newWitness(keep int) *witness {
	return &witness{since: time.Now(), keep: keep, perAccount: map[string]*accountWitness{}}
}

func (w *witness) account(id, carrierName string) *accountWitness {
	aw := w.perAccount[id]
	if aw == nil {
		aw = &accountWitness{st: AccountStats{Carrier: carrierName, Faults: map[string]uint64{}},
			perSecond: map[int64]*SecondCount{}, fetched: map[string]uint32{}}
		w.perAccount[id] = aw
	}
	return aw
}

func (w *witness) second(aw *accountWitness, now time.Time) *SecondCount {
	sec := now.Unix()
	sc := aw.perSecond[sec]
	if sc == nil {
		sc = &SecondCount{Unix: sec}
		aw.perSecond[sec] = sc
		if len(aw.perSecond) > w.keep {
			oldest := sec
			for k := range aw.perSecond {
				if k < oldest {
					oldest = k
				}
			}
			delete(aw.perSecond, oldest)
		}
	}
	return sc
}

// arrive records a data call and reports whether it is within quota.
func (w *witness) arrive(a *account, now time.Time) (ok bool, reason string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	aw := w.account(a.spec.ID, a.spec.Carrier)
	aw.st.Calls++
	if aw.st.First.IsZero() {
		aw.st.First = now
	}
	aw.st.Last = now
	sc := w.second(aw, now)
	sc.Calls++
	if sc.Calls > aw.st.PeakPerSecond {
		aw.st.PeakPerSecond = sc.Calls
	}
	if a.spec.MaxConcurrent > 0 && aw.inFlight >= a.spec.MaxConcurrent {
		aw.st.Rejected++
		aw.st.RejectedConcurrency++
		sc.Rejected++
		return false, "concurrency"
	}
	if a.limiter != nil && !a.limiter.AllowN(now, 1) {
		aw.st.Rejected++
		aw.st.RejectedRate++
		sc.Rejected++
		return false, "rate"
	}
	aw.st.Accepted++
	aw.inFlight++
	if aw.inFlight > aw.st.MaxConcurrent {
		aw.st.MaxConcurrent = aw.inFlight
	}
	return true, ""
}

func (w *witness) leave(a *account) {
	w.mu.Lock()
	w.account(a.spec.ID, a.spec.Carrier).inFlight--
	w.mu.Unlock()
}

func (w *witness) token(a *account) {
	w.mu.Lock()
	w.account(a.spec.ID, a.spec.Carrier).st.TokenCalls++
	w.mu.Unlock()
}

func (w *witness) authFailure(a *account) {
	w.mu.Lock()
	w.account(a.spec.ID, a.spec.Carrier).st.AuthFailures++
	w.mu.Unlock()
}

func (w *witness) fault(a *account, kind string) {
	w.mu.Lock()
	w.account(a.spec.ID, a.spec.Carrier).st.Faults[kind]++
	w.mu.Unlock()
}

func (w *witness) fetched(a *account, iccids []string) {
	w.mu.Lock()
	aw := w.account(a.spec.ID, a.spec.Carrier)
	for _, id := range iccids {
		aw.fetched[id]++
	}
	aw.st.CardsFetched += uint64(len(iccids))
	w.mu.Unlock()
}

func (w *witness) snapshot() Stats {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := Stats{Since: w.since, Accounts: make(map[string]AccountStats, len(w.perAccount))}
	for id, aw := range w.perAccount {
		st := aw.st
		st.Faults = make(map[string]uint64, len(aw.st.Faults))
		for k, v := range aw.st.Faults {
			st.Faults[k] = v
		}
		st.PerSecond = make([]SecondCount, 0, len(aw.perSecond))
		for _, sc := range aw.perSecond {
			st.PerSecond = append(st.PerSecond, *sc)
		}
		sort.Slice(st.PerSecond, func(i, j int) bool { return st.PerSecond[i].Unix < st.PerSecond[j].Unix })
		st.DistinctCards = len(aw.fetched)
		out.Accounts[id] = st
	}
	return out
}

func (w *witness) fetchCounts(id string) map[string]uint32 {
	w.mu.Lock()
	defer w.mu.Unlock()
	aw := w.perAccount[id]
	out := map[string]uint32{}
	if aw == nil {
		return out
	}
	for k, v := range aw.fetched {
		out[k] = v
	}
	return out
}

// reset clears the counters; in-flight calls stay counted.
func (w *witness) reset() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.since = time.Now()
	for id, aw := range w.perAccount {
		n := &accountWitness{st: AccountStats{Carrier: aw.st.Carrier, Faults: map[string]uint64{}},
			inFlight: aw.inFlight, perSecond: map[int64]*SecondCount{}, fetched: map[string]uint32{}}
		w.perAccount[id] = n
	}
}
