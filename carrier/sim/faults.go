package sim

import (
	"encoding/json"
	"fmt"
	"sort"
	"time"
)

// Fault kinds, the keys of Faults.Rates.
const (
	FaultRateLimited   = "rate_limited"   // the carrier's rate-limit answer
	FaultAuthExpired   = "auth_expired"   // OneLink 12021 (token-based dialects only)
	FaultAuthInvalid   = "auth_invalid"   // the carrier's credential rejection
	FaultTransient5xx  = "transient_5xx"  // HTTP 500/502/503
	FaultHTMLBody      = "html_body"      // HTTP 200 with a gateway's HTML page
	FaultTruncatedBody = "truncated_body" // the real answer cut in half
	FaultTimeout       = "timeout"        // hold the call for TimeoutDelay (or until the client leaves)
	FaultNotFound      = "not_found"      // per card: each card of a call answers "not found"
)

// FaultKinds lists every fault kind.
func FaultKinds() []string {
	return []string{FaultRateLimited, FaultAuthExpired, FaultAuthInvalid, FaultTransient5xx,
		FaultHTMLBody, FaultTruncatedBody, FaultTimeout, FaultNotFound}
}

// callFaults are drawn once per call, in this order; not_found is per card.
var callFaults = []string{FaultRateLimited, FaultAuthExpired, FaultAuthInvalid, FaultTransient5xx,
	FaultHTMLBody, FaultTruncatedBody, FaultTimeout}

// Duration is a time.Duration that encodes in JSON as a string ("50ms").
type Duration time.Duration

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON accepts "50ms" or nanoseconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	v, err := parseDuration(b)
	*d = Duration(v)
	return err
}

// Faults is what goes wrong for an account's data calls.
type Faults struct {
	// Rates maps a fault kind to its probability per call (per card for
	// not_found). At most one call-level fault happens per call.
	Rates map[string]float64 `json:"rates,omitempty"`
	// Extra latency per data call, uniform in [LatencyMin, LatencyMax].
	LatencyMin Duration `json:"latency_min,omitempty"`
	LatencyMax Duration `json:"latency_max,omitempty"`
	// Outage answers every call (token calls too) with HTTP 503.
	Outage bool `json:"outage,omitempty"`
}

func (f Faults) validate() error {
	known := map[string]bool{}
	for _, k := range FaultKinds() {
		known[k] = true
	}
	sum := 0.0
	for k, r := range f.Rates {
		if !known[k] {
			return fmt.Errorf("unknown fault kind %q", k)
		}
		if !(r >= 0 && r <= 1) {
			return fmt.Errorf("rate of %q must be in [0, 1]", k)
		}
		if k != FaultNotFound {
			sum += r
		}
	}
	if sum > 1.0000001 {
		return fmt.Errorf("call-level fault rates sum to %.3f > 1", sum)
	}
	if f.LatencyMin < 0 || f.LatencyMax < 0 || (f.LatencyMax > 0 && f.LatencyMax < f.LatencyMin) {
		return fmt.Errorf("latency_min/latency_max must be >= 0 and ordered")
	}
	return nil
}

// FaultRequest is the body of POST /_sim/faults.
type FaultRequest struct {
	Account string `json:"account"` // "" or "*" = all accounts
	Faults
	ExpireTokens bool `json:"expire_tokens"` // expire the OneLink tokens issued so far
}

// SetFaults replaces the faults of one account ("" or "*" = the default for
// every account without its own).
func (s *Sim) SetFaults(accountID string, f Faults) error {
	if err := f.validate(); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	if accountID == "" {
		accountID = "*"
	}
	if accountID != "*" && s.accounts[accountID] == nil {
		return fmt.Errorf("%w: %q", ErrUnknownAccount, accountID)
	}
	cp := f
	cp.Rates = make(map[string]float64, len(f.Rates))
	for k, v := range f.Rates {
		cp.Rates[k] = v
	}
	s.faultMu.Lock()
	s.faults[accountID] = cp
	s.faultMu.Unlock()
	s.logger.Info("faults set", "account", accountID, "rates", fmt.Sprint(sortedRates(cp.Rates)), "outage", cp.Outage)
	return nil
}

// ClearFaults removes every fault (Config faults included).
func (s *Sim) ClearFaults() {
	s.faultMu.Lock()
	s.faults = map[string]Faults{}
	s.faultMu.Unlock()
	s.logger.Info("faults cleared")
}

// Faults returns the faults in force, by account ("*" = default).
func (s *Sim) Faults() map[string]Faults {
	s.faultMu.Lock()
	defer s.faultMu.Unlock()
	out := make(map[string]Faults, len(s.faults))
	for k, v := range s.faults {
		out[k] = v
	}
	return out
}

// ExpireTokens makes every OneLink token issued so far to the account
// ("" = all accounts) expired; the next data call answers 12021.
func (s *Sim) ExpireTokens(accountID string) error {
	if accountID != "" && accountID != "*" && s.accounts[accountID] == nil {
		return fmt.Errorf("%w: %q", ErrUnknownAccount, accountID)
	}
	for id, a := range s.accounts {
		if accountID == "" || accountID == "*" || id == accountID {
			a.mu.Lock()
			a.tokens = map[string]time.Time{}
			a.mu.Unlock()
		}
	}
	return nil
}

func (s *Sim) faultsFor(accountID string) (Faults, bool) {
	s.faultMu.Lock()
	defer s.faultMu.Unlock()
	if f, ok := s.faults[accountID]; ok {
		return f, true
	}
	f, ok := s.faults["*"]
	return f, ok
}

// draw picks the call-level fault for one call, "" for none.
func (s *Sim) draw(f Faults) string {
	if len(f.Rates) == 0 {
		return ""
	}
	u := s.rand()
	for _, k := range callFaults {
		r := f.Rates[k]
		if u < r {
			return k
		}
		u -= r
	}
	return ""
}

func (s *Sim) extraLatency(f Faults) time.Duration {
	lo, hi := time.Duration(f.LatencyMin), time.Duration(f.LatencyMax)
	if hi <= lo {
		return lo
	}
	return lo + time.Duration(s.rand()*float64(hi-lo))
}

func sortedRates(m map[string]float64) []string {
	out := make([]string, 0, len(m))
	for k, v := range m {
		out = append(out, fmt.Sprintf("%s=%g", k, v))
	}
	sort.Strings(out)
	return out
}
