package syncer

import (
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
)

// Config configures a node's syncer.
type Config struct {
	// PollInterval is the timed-polling period (claim 1 step 2).
	PollInterval time.Duration
	// Lease is how long a claim stays live without a flush; flushes renew it. Gossip-driven
	// revocation is the fast path of a takeover, the lease only its backstop.
	Lease time.Duration
	// FlushEvery and FlushInterval bound the progress a crash can lose: a flush happens
	// after this many processed cards or this much time, and on every exit.
	FlushEvery    int
	FlushInterval time.Duration
	// MaxWorkers bounds how many shards (of different groups) one node starts working at
	// once. A task cut off by its owner's death is resumed beyond it, so a takeover never
	// waits for one of the survivor's own shards to finish; those are at most the dead
	// member's own workers.
	MaxWorkers int
	// MaxDueWait is how long a due shard may be passed over for shards whose carrier
	// accounts this node is less busy on (order.go); past it, shards go oldest first.
	MaxDueWait time.Duration
	// PageSize is how many cards a worker reads from the local replica at a time.
	PageSize int
	// WindowCards bounds how far the card walk runs ahead of the cursor; at the bound the
	// batch holding the cursor back is sent even if it is not full.
	WindowCards int
	// DependencyRetry is when a shard whose dependency data is not ready is looked at again.
	DependencyRetry time.Duration
	// CallGrace is the longest a query admitted under a share may keep calling the
	// carrier after the share shrinks (its HTTP calls times their timeout). A concurrency
	// slot another node gives up is taken only after max(share grace, CallGrace). The
	// agent sets it from the carrier accounts' call timeouts; 0 means the share grace.
	CallGrace time.Duration
	// QuotaSafety is the fraction of a carrier account's cluster-wide quota that the
	// nodes' shares add up to (below 1 to absorb network jitter at the carrier).
	QuotaSafety float64
	// Batching gathers due cards of one account into batch queries; off means one card
	// per call (benchmarks compare the two).
	Batching bool
	// ShareQuota splits each account's quota between the nodes; off means every node uses
	// the full quota (benchmarks show what that costs).
	ShareQuota bool
	// SharedTokens (with ShareQuota) takes every query's call tokens from the leader's
	// cluster-wide bucket of the account (node.Tokens), so a rate is used by whichever
	// node has work for it; off, each node's limiter runs at its static share of the rate.
	// Concurrency slots are split between the nodes either way.
	SharedTokens bool

	Logger   hclog.Logger
	Registry prometheus.Registerer
	// Now is the clock (tests may replace it).
	Now func() time.Time
}

// DefaultConfig returns the production defaults.
func DefaultConfig() Config {
	return Config{
		PollInterval:    time.Second,
		Lease:           30 * time.Second,
		FlushEvery:      100,
		FlushInterval:   time.Second,
		MaxWorkers:      16,
		MaxDueWait:      30 * time.Minute,
		PageSize:        500,
		WindowCards:     2000,
		DependencyRetry: 30 * time.Second,
		QuotaSafety:     0.97,
		Batching:        true,
		ShareQuota:      true,
		SharedTokens:    true,
	}
}

// ErrInvalidConfig is wrapped by configuration errors.
var ErrInvalidConfig = errors.New("invalid syncer config")

// Validate checks the configuration.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, a...)...))
	}
	if c.PollInterval <= 0 {
		bad("poll interval must be positive")
	}
	if c.Lease < 2*c.FlushInterval || c.Lease <= 0 {
		bad("lease %v must be at least twice the flush interval %v", c.Lease, c.FlushInterval)
	}
	if c.FlushEvery < 1 || c.FlushInterval <= 0 {
		bad("flush-every and flush interval must be positive")
	}
	if c.MaxWorkers < 1 {
		bad("max workers must be at least 1")
	}
	if c.MaxDueWait <= 0 {
		bad("max due wait must be positive")
	}
	if c.PageSize < 1 || c.WindowCards < 1 {
		bad("page size and window must be positive")
	}
	if c.CallGrace < 0 {
		bad("call grace %v: want >= 0", c.CallGrace)
	}
	if c.QuotaSafety <= 0 || c.QuotaSafety > 1 {
		bad("quota safety %v: want (0, 1]", c.QuotaSafety)
	}
	if c.DependencyRetry <= 0 {
		bad("dependency retry must be positive")
	}
	return errors.Join(errs...)
}
