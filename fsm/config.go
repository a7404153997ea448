package fsm

import (
	"errors"
	"fmt"
)

// Defaults used by DefaultConfig and for zero-valued fields passed to Open.
const (
	DefaultHistoryPerShard = 20
	DefaultChangeRetention = 100000
	DefaultMmapSize        = 1 << 30
)

// Config configures an FSM.
type Config struct {
	// Path is the bbolt file holding the whole state.
	Path string
	// NoSync skips fsync on commit. Unsafe: for tests only.
	NoSync bool
	// HistoryPerShard bounds the finished rounds kept per shard (0 means the default).
	HistoryPerShard int
	// ChangeRetention bounds the change events kept (0 means the default).
	ChangeRetention int
	// MmapSize is bbolt's initial mmap size in bytes; a large value lets writers grow the
	// file without waiting for readers to finish (0 means the default, 1 GiB).
	MmapSize int
}

// DefaultConfig returns a Config with every default filled in except Path.
func DefaultConfig() Config {
	return Config{
		HistoryPerShard: DefaultHistoryPerShard,
		ChangeRetention: DefaultChangeRetention,
		MmapSize:        DefaultMmapSize,
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
