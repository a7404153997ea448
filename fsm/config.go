package fsm

import (
	"errors"
	"fmt"
	"time"
)

// Defaults used by DefaultConfig and for zero-valued fields passed to Open.
const (
	DefaultHistoryPerShard = 20
	DefaultChangeRetention = 100000
	DefaultMmapSize        = 1 << 30
	// DefaultSyncInterval is how often DefaultConfig's deferred sync fsyncs the file.
	DefaultSyncInterval = 100 * time.Millisecond
)

// Config configures an FSM.
type Config struct {
	// Path is the bbolt file holding the whole state.
	Path string
	// NoSync never fsyncs the file and keeps no marker. Unsafe: for tests only.
	NoSync bool
	// SyncInterval selects how the file is made durable. Above zero ("deferred sync"),
	// commits do not fsync; a background goroutine fsyncs the file every SyncInterval
	// when something was committed since the last sync, and Snapshot, Restore and Close
	// sync first. A marker file beside the database tells a stopped process (its writes
	// are in the page cache) from an OS crash or power loss (they may be lost or torn);
	// after the latter Open moves the file aside and starts empty (see Rebuilt). Zero
	// fsyncs every commit, as does a platform without a kernel boot id. Unlike the other
	// tunables, zero is not replaced by the default.
	SyncInterval time.Duration
	// BootID returns an identifier of the running kernel boot; nil reads
	// /proc/sys/kernel/random/boot_id. When it fails, the FSM fsyncs every commit.
	BootID func() (string, error)
	// HistoryPerShard bounds the finished rounds kept per shard (0 means the default).
	HistoryPerShard int
	// ChangeRetention bounds the change events kept (0 means the default).
	ChangeRetention int
	// MmapSize is bbolt's initial mmap size in bytes; a large value lets writers grow the
	// file without waiting for readers to finish (0 means the default, 1 GiB).
	MmapSize int
	// ReleaseIdle: after this long without a commit, the FSM releases its map of the
	// file (the pages stay in the kernel's page cache; see release_linux.go), so an idle
	// node's resident set is what it uses. Zero never releases.
	ReleaseIdle time.Duration
}

// DefaultConfig returns a Config with every default filled in except Path.
func DefaultConfig() Config {
	return Config{
		HistoryPerShard: DefaultHistoryPerShard,
		ChangeRetention: DefaultChangeRetention,
		MmapSize:        DefaultMmapSize,
		SyncInterval:    DefaultSyncInterval,
		ReleaseIdle:     DefaultReleaseIdle,
	}
}

// Validate reports whether the configuration can be used.
func (c Config) Validate() error {
	var errs []error
	if c.Path == "" {
		errs = append(errs, errors.New("path is empty"))
	}
	if c.HistoryPerShard < 0 {
		errs = append(errs, fmt.Errorf("history per shard %d is negative", c.HistoryPerShard))
	}
	if c.ChangeRetention < 0 {
		errs = append(errs, fmt.Errorf("change retention %d is negative", c.ChangeRetention))
	}
	if c.MmapSize < 0 {
		errs = append(errs, fmt.Errorf("mmap size %d is negative", c.MmapSize))
	}
	if c.ReleaseIdle < 0 {
		errs = append(errs, fmt.Errorf("release idle %v is negative", c.ReleaseIdle))
	}
	if c.SyncInterval < 0 {
		errs = append(errs, fmt.Errorf("sync interval %v is negative", c.SyncInterval))
	}
	if len(errs) > 0 {
		return fmt.Errorf("fsm config: %w", errors.Join(errs...))
	}
	return nil
}

// withDefaults returns c with zero-valued tunables replaced by their defaults.
func (c Config) withDefaults() Config {
	if c.HistoryPerShard == 0 {
		c.HistoryPerShard = DefaultHistoryPerShard
	}
	if c.ChangeRetention == 0 {
		c.ChangeRetention = DefaultChangeRetention
	}
	if c.MmapSize == 0 {
		c.MmapSize = DefaultMmapSize
	}
	return c
}
