package carrier

import (
	"errors"
	"fmt"
	"net/url"
	"time"
)

// ErrInvalidConfig is wrapped by AccountConfig.Validate errors.
var ErrInvalidConfig = errors.New("carrier: invalid account config")

// AccountConfig describes one carrier account. Secret, AppID and the token
// the carrier issues are credentials: they never appear in errors or logs
// (String redacts them).
type AccountConfig struct {
	ID       string `json:"id" yaml:"id"`
	Carrier  string `json:"carrier" yaml:"carrier"`   // onelink | unicom | telecom | cisco
	Endpoint string `json:"endpoint" yaml:"endpoint"` // base URL, e.g. https://api.iot.10086.cn or the simulator's http://127.0.0.1:port

	// AppID and Secret: OneLink appid/password; Unicom app_id/app_secret;
	// Telecom AppKey/SecretKey; Cisco username/apiKey.
	AppID      string `json:"app_id" yaml:"app_id"`
	Secret     string `json:"secret" yaml:"secret"`
	OpenID     string `json:"open_id,omitempty" yaml:"open_id,omitempty"`         // Unicom openId
	CustNumber string `json:"cust_number,omitempty" yaml:"cust_number,omitempty"` // Telecom custNumber

	// The account's cluster-wide quota: HTTP calls per second, burst, and
	// concurrent calls. An Account starts with the whole quota as its share.
	RatePerSec  float64 `json:"rate_per_sec" yaml:"rate_per_sec"`
	Burst       int     `json:"burst" yaml:"burst"`
	Concurrency int     `json:"concurrency" yaml:"concurrency"`

	// Timeout bounds each HTTP call from the moment the limiter admits it (default 5 s).
	// Keep it below failure detection plus the quota share grace: a member frozen with
	// an admitted call still unsent then gives the call up before another member can be
	// using its share of the account.
	Timeout time.Duration `json:"timeout" yaml:"timeout"`

	// Headroom is the fraction of the share the limiter leaves unused (and
	// one token of burst) so that network jitter never pushes the calls the
	// carrier sees over its bucket. 0 <= Headroom < 0.5.
	Headroom float64 `json:"headroom" yaml:"headroom"`

	// Circuit breaker: opens after BreakerFailures consecutive transient
	// failures, stays open BreakerOpen, then lets one probe through.
	BreakerFailures int           `json:"breaker_failures" yaml:"breaker_failures"`
	BreakerOpen     time.Duration `json:"breaker_open" yaml:"breaker_open"`

	// Backoff without a Retry-After: BackoffBase * 2^(n-1) for the n-th
	// consecutive failure, capped at BackoffMax, with jitter.
	BackoffBase time.Duration `json:"backoff_base" yaml:"backoff_base"`
	BackoffMax  time.Duration `json:"backoff_max" yaml:"backoff_max"`

	// MaxBodyBytes caps how much of a response is read.
	MaxBodyBytes int64 `json:"max_body_bytes" yaml:"max_body_bytes"`
}

// DefaultAccountConfig gives the defaults for everything but identity and credentials.
func DefaultAccountConfig() AccountConfig {
	return AccountConfig{
		RatePerSec:      5,
		Burst:           5,
		Concurrency:     1,
		Timeout:         5 * time.Second,
		Headroom:        0.05,
		BreakerFailures: 5,
		BreakerOpen:     30 * time.Second,
		BackoffBase:     time.Second,
		BackoffMax:      5 * time.Minute,
		MaxBodyBytes:    8 << 20,
	}
}

// DefaultBatchSize is the most ICCIDs one call of each carrier takes.
func DefaultBatchSize(carrierName string) int {
	switch carrierName {
	case OneLink, Telecom:
		return 100
	case Unicom:
		return 50
	case Cisco:
		return 1
	}
	return 0
}

// Validate checks the configuration. Its errors never contain credentials.
func (c AccountConfig) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: account %q: %s", ErrInvalidConfig, c.ID, fmt.Sprintf(format, a...))
	}
	if c.ID == "" {
		return bad("id is empty")
	}
	if DefaultBatchSize(c.Carrier) == 0 {
		return bad("unknown carrier %q (want onelink, unicom, telecom or cisco)", c.Carrier)
	}
	u, err := url.Parse(c.Endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return bad("endpoint must be an http(s) URL with a host")
	}
	if u.User != nil {
		return bad("endpoint must not carry user info")
	}
	if c.AppID == "" || c.Secret == "" {
		return bad("app id and secret are required")
	}
	if c.Carrier == Telecom && c.CustNumber == "" {
		return bad("telecom needs cust_number")
	}
	switch {
	case !(c.RatePerSec > 0):
		return bad("rate_per_sec must be > 0")
	case c.Burst < 1:
		return bad("burst must be >= 1")
	case c.Concurrency < 1:
		return bad("concurrency must be >= 1")
	case c.Timeout <= 0:
		return bad("timeout must be > 0")
	case c.Headroom < 0 || c.Headroom >= 0.5:
		return bad("headroom must be in [0, 0.5)")
	case c.BreakerFailures < 1:
		return bad("breaker_failures must be >= 1")
	case c.BreakerOpen <= 0:
		return bad("breaker_open must be > 0")
	case c.BackoffBase <= 0 || c.BackoffMax < c.BackoffBase:
		return bad("backoff_base must be > 0 and <= backoff_max")
	case c.MaxBodyBytes < 1024:
		return bad("max_body_bytes must be >= 1024")
	}
	return nil
}

// String describes the account without credentials.
func (c AccountConfig) String() string {
	return fmt.Sprintf("carrier.AccountConfig{ID:%s Carrier:%s Endpoint:%s Rate:%g Burst:%d Concurrency:%d credentials:redacted}",
		c.ID, c.Carrier, c.Endpoint, c.RatePerSec, c.Burst, c.Concurrency)
}

// GoString is String, so %#v does not print credentials either.
func (c AccountConfig) GoString() string { return c.String() }
