package sim

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Carrier names (the same strings package carrier uses).
const (
	OneLink = "onelink"
	Unicom  = "unicom"
	Telecom = "telecom"
	Cisco   = "cisco"
)

// ErrInvalidConfig is wrapped by Validate errors.
var ErrInvalidConfig = errors.New("sim: invalid config")

// ErrUnknownAccount is returned for an account id the simulator does not have.
var ErrUnknownAccount = errors.New("sim: unknown account")

// AccountSpec is one simulated carrier account.
type AccountSpec struct {
	ID         string `json:"id"`
	Carrier    string `json:"carrier"`     // onelink | unicom | telecom | cisco
	AppID      string `json:"app_id"`      // OneLink appid, Unicom app_id, Telecom AppKey, Cisco username
	Secret     string `json:"secret"`      // OneLink password, Unicom app_secret, Telecom SecretKey, Cisco apiKey
	OpenID     string `json:"open_id"`     // Unicom openId (checked when set)
	CustNumber string `json:"cust_number"` // Telecom custNumber (checked when set)
	Cards      int    `json:"cards"`       // population size

	RatePerSec    float64       `json:"rate_per_sec"`   // data calls per second (token bucket); 0 = unlimited
	Burst         int           `json:"burst"`          // bucket size
	MaxConcurrent int           `json:"max_concurrent"` // concurrent data calls; 0 = unlimited
	TokenTTL      time.Duration `json:"-"`              // OneLink token lifetime
}

type accountSpecJSON struct {
	accountSpecAlias
	TokenTTL string `json:"token_ttl,omitempty"`
}

type accountSpecAlias AccountSpec

// MarshalJSON writes durations as strings ("1h0m0s").
func (a AccountSpec) MarshalJSON() ([]byte, error) {
	j := accountSpecJSON{accountSpecAlias: accountSpecAlias(a)}
	if a.TokenTTL != 0 {
		j.TokenTTL = a.TokenTTL.String()
	}
	return json.Marshal(j)
}

// UnmarshalJSON reads durations as strings ("2h") or nanoseconds.
func (a *AccountSpec) UnmarshalJSON(b []byte) error {
	var j struct {
		accountSpecAlias
		TokenTTL json.RawMessage `json:"token_ttl"`
	}
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*a = AccountSpec(j.accountSpecAlias)
	d, err := parseDuration(j.TokenTTL)
	if err != nil {
		return fmt.Errorf("token_ttl: %w", err)
	}
	a.TokenTTL = d
	return nil
}

// Config configures a Sim. It loads from JSON (durations as "50ms" strings).
type Config struct {
	Seed        int64         `json:"seed"`
	Accounts    []AccountSpec `json:"accounts"`
	Latency     time.Duration `json:"-"` // base latency added to every data call
	ChangeEvery time.Duration `json:"-"` // how fast card data drifts (status and usage buckets)
	// TimeoutDelay is how long an injected "timeout" fault holds a call
	// (or until the client goes away).
	TimeoutDelay time.Duration `json:"-"`
	// Faults active from the start, by account id; "*" applies to all.
	Faults map[string]Faults `json:"faults,omitempty"`
	// StatsSeconds is how many one-second buckets of the per-second series
	// each account keeps.
	StatsSeconds int          `json:"stats_seconds"`
	Logger       hclog.Logger `json:"-"`
}

type configAlias Config

// MarshalJSON writes durations as strings.
func (c Config) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		configAlias
		Latency      string `json:"latency"`
		ChangeEvery  string `json:"change_every"`
		TimeoutDelay string `json:"timeout_delay"`
	}{configAlias(c), c.Latency.String(), c.ChangeEvery.String(), c.TimeoutDelay.String()})
}

// UnmarshalJSON reads a Config; absent fields keep the receiver's values, so
// decoding into DefaultConfig() gives defaults for what the file omits.
func (c *Config) UnmarshalJSON(b []byte) error {
	j := struct {
		*configAlias
		Latency      json.RawMessage `json:"latency"`
		ChangeEvery  json.RawMessage `json:"change_every"`
		TimeoutDelay json.RawMessage `json:"timeout_delay"`
	}{configAlias: (*configAlias)(c)}
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		raw  json.RawMessage
		dst  *time.Duration
	}{{"latency", j.Latency, &c.Latency}, {"change_every", j.ChangeEvery, &c.ChangeEvery}, {"timeout_delay", j.TimeoutDelay, &c.TimeoutDelay}} {
		if len(f.raw) == 0 {
			continue
		}
		d, err := parseDuration(f.raw)
		if err != nil {
			return fmt.Errorf("%s: %w", f.name, err)
		}
		*f.dst = d
	}
	return nil
}

// LoadConfig decodes a JSON config on top of DefaultConfig().
func LoadConfig(data []byte) (Config, error) {
	c := DefaultConfig()
	c.Accounts = nil
	if err := json.Unmarshal(data, &c); err != nil {
		return Config{}, fmt.Errorf("sim: load config: %w", err)
	}
	if c.Accounts == nil {
		c.Accounts = DevAccounts()
	}
	return c, nil
}

func parseDuration(raw json.RawMessage) (time.Duration, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return 0, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return time.ParseDuration(s)
	}
	var n int64
	if err := json.Unmarshal(raw, &n); err != nil {
		return 0, fmt.Errorf("want a duration string or nanoseconds")
	}
	return time.Duration(n), nil
}

// DefaultConfig is a simulator with the DevAccounts population.
func DefaultConfig() Config {
	return Config{
		Seed:         1,
		Accounts:     DevAccounts(),
		Latency:      2 * time.Millisecond,
		ChangeEvery:  time.Minute,
		TimeoutDelay: 30 * time.Second,
		StatsSeconds: 3600,
		Logger:       hclog.NewNullLogger(),
	}
}

// DevAccounts is a realistic set of accounts over all four carriers:
// 21,500 cards, with quotas in the range the carriers grant.
func DevAccounts() []AccountSpec {
	return []AccountSpec{
		{ID: "cmcc-east", Carrier: OneLink, AppID: "C5010535201234", Secret: "dev-onelink-east-pw", Cards: 8000,
			RatePerSec: 50, Burst: 10, MaxConcurrent: 8, TokenTTL: 2 * time.Hour},
		{ID: "cmcc-west", Carrier: OneLink, AppID: "C5010535205678", Secret: "dev-onelink-west-pw", Cards: 5000,
			RatePerSec: 50, Burst: 10, MaxConcurrent: 8, TokenTTL: 2 * time.Hour},
		{ID: "cucc-main", Carrier: Unicom, AppID: "cu-app-7ad3", Secret: "dev-unicom-secret", OpenID: "cu-open-1001", Cards: 5000,
			RatePerSec: 20, Burst: 5, MaxConcurrent: 4},
		{ID: "ctcc-main", Carrier: Telecom, AppID: "ct-appkey-55e1", Secret: "dev-telecom-secret", CustNumber: "3100000012345", Cards: 3000,
			RatePerSec: 30, Burst: 10, MaxConcurrent: 6},
		{ID: "cisco-global", Carrier: Cisco, AppID: "cardsync-api", Secret: "dev-cisco-apikey", Cards: 500,
			RatePerSec: 5, Burst: 5, MaxConcurrent: 1},
	}
}

// Validate checks the configuration. Errors name accounts, never secrets.
func (c Config) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, a...))
	}
	if len(c.Accounts) == 0 {
		return bad("no accounts")
	}
	if len(c.Accounts) > 100 {
		return bad("at most 100 accounts")
	}
	if c.Latency < 0 || c.TimeoutDelay < 0 {
		return bad("latency and timeout_delay must be >= 0")
	}
	if c.ChangeEvery <= 0 {
		return bad("change_every must be > 0")
	}
	if c.StatsSeconds < 1 {
		return bad("stats_seconds must be >= 1")
	}
	ids := map[string]bool{}
	creds := map[string]bool{}
	for i, a := range c.Accounts {
		switch {
		case a.ID == "":
			return bad("account %d: empty id", i)
		case ids[a.ID]:
			return bad("account %q: duplicate id", a.ID)
		case a.Carrier != OneLink && a.Carrier != Unicom && a.Carrier != Telecom && a.Carrier != Cisco:
			return bad("account %q: unknown carrier %q", a.ID, a.Carrier)
		case a.AppID == "" || a.Secret == "":
			return bad("account %q: app id and secret are required", a.ID)
		case creds[a.Carrier+"\x00"+a.AppID]:
			return bad("account %q: app id shared with another account of the same carrier", a.ID)
		case a.Cards < 0 || a.Cards > 10_000_000:
			return bad("account %q: cards must be in [0, 10000000]", a.ID)
		case a.RatePerSec < 0:
			return bad("account %q: rate_per_sec must be >= 0", a.ID)
		case a.RatePerSec > 0 && a.Burst < 1:
			return bad("account %q: burst must be >= 1 with a rate", a.ID)
		case a.MaxConcurrent < 0:
			return bad("account %q: max_concurrent must be >= 0", a.ID)
		case a.Carrier == OneLink && a.TokenTTL < time.Second:
			return bad("account %q: onelink token_ttl must be >= 1s", a.ID)
		}
		ids[a.ID] = true
		creds[a.Carrier+"\x00"+a.AppID] = true
	}
	for id, f := range c.Faults {
		if id != "*" && !ids[id] {
			return bad("faults for unknown account %q", id)
		}
		if err := f.validate(); err != nil {
			return bad("faults for %q: %v", id, err)
		}
	}
	return nil
}
