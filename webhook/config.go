package webhook

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Config configures a Deliverer. Zero durations and counts passed to New take their
// defaults.
type Config struct {
	// PollInterval is how often the deliverer re-reads the subscriptions and the ring, and
	// the longest an idle worker waits before looking at the feed again.
	PollInterval time.Duration
	// BatchSize bounds the events of one POST.
	BatchSize int
	// Linger is how long a worker waits for a batch to fill once it has fewer than
	// BatchSize events (0: send at once).
	Linger time.Duration
	// RequestTimeout bounds one POST.
	RequestTimeout time.Duration
	// MinBackoff and MaxBackoff bound the wait between failed attempts (exponential with
	// jitter in between).
	MinBackoff, MaxBackoff time.Duration
	// PauseAfterFailures pauses a subscription after this many failed attempts in a row;
	// PauseAfter pauses it once it has failed continuously for this long.
	PauseAfterFailures int
	PauseAfter         time.Duration
	// IdleAdvance is how often a worker whose filter matched nothing moves the replicated
	// cursor past the events it has examined, so that retention never overtakes it.
	IdleAdvance time.Duration
	// HTTPClient sends deliveries (default: a pooled client).
	HTTPClient *http.Client
	Logger     hclog.Logger
}

// DefaultConfig returns the default configuration.
func DefaultConfig() Config {
	return Config{
		PollInterval:       500 * time.Millisecond,
		BatchSize:          100,
		Linger:             10 * time.Millisecond,
		RequestTimeout:     10 * time.Second,
		MinBackoff:         250 * time.Millisecond,
		MaxBackoff:         30 * time.Second,
		PauseAfterFailures: 20,
		PauseAfter:         15 * time.Minute,
		IdleAdvance:        10 * time.Second,
	}
}

// ErrInvalidConfig is wrapped by configuration errors.
var ErrInvalidConfig = errors.New("invalid webhook config")

// Validate checks the configuration (after defaults are applied).
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, a...)...))
	}
	if c.PollInterval <= 0 || c.RequestTimeout <= 0 || c.IdleAdvance <= 0 {
		bad("poll interval, request timeout and idle advance must be positive")
	}
	if c.BatchSize <= 0 || c.BatchSize > 10000 {
		bad("batch size %d must be between 1 and 10000", c.BatchSize)
	}
	if c.Linger < 0 {
		bad("linger %v is negative", c.Linger)
	}
	if c.MinBackoff <= 0 || c.MaxBackoff < c.MinBackoff {
		bad("backoff %v..%v: want 0 < min <= max", c.MinBackoff, c.MaxBackoff)
	}
	if c.PauseAfterFailures <= 0 || c.PauseAfter <= 0 {
		bad("pause after %d failures / %v: both must be positive", c.PauseAfterFailures, c.PauseAfter)
	}
	return errors.Join(errs...)
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.PollInterval == 0 {
		c.PollInterval = d.PollInterval
	}
	if c.BatchSize == 0 {
		c.BatchSize = d.BatchSize
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = d.RequestTimeout
	}
	if c.MinBackoff == 0 {
		c.MinBackoff = d.MinBackoff
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = max(d.MaxBackoff, c.MinBackoff)
	}
	if c.PauseAfterFailures == 0 {
		c.PauseAfterFailures = d.PauseAfterFailures
	}
	if c.PauseAfter == 0 {
		c.PauseAfter = d.PauseAfter
	}
	if c.IdleAdvance == 0 {
		c.IdleAdvance = d.IdleAdvance
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4, IdleConnTimeout: 90 * time.Second}}
	}
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
	return c
}
