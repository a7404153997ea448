package fsm

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// ErrFeedTrimmed: the change feed no longer holds every event after the requested
// sequence (retention dropped some); the reader must resynchronise from the cards.
var ErrFeedTrimmed = errors.New("change feed trimmed past the requested sequence")

// Change kinds: what about a card changed. A change event has at least one.
const (
	KindStatus   = "status"
	KindRatePlan = "rate_plan"
	KindUsage    = "usage"
	KindError    = "error"
)

// AllKinds lists the change kinds in their canonical order.
var AllKinds = []string{KindStatus, KindRatePlan, KindUsage, KindError}

const (
	kindStatusBit byte = 1 << iota
	kindRatePlanBit
	kindUsageBit
	kindErrorBit
)

func kindBit(k string) (byte, bool) {
	switch k {
	case KindStatus:
		return kindStatusBit, true
	case KindRatePlan:
		return kindRatePlanBit, true
	case KindUsage:
		return kindUsageBit, true
	case KindError:
		return kindErrorBit, true
	}
	return 0, false
}

func kindNames(bits byte) []string {
	var out []string
	for i, k := range AllKinds {
		if bits&(1<<i) != 0 {
			out = append(out, k)
		}
	}
	return out
}

// kindMask returns the bits of the named kinds (all bits for none) or an error naming the
// first unknown kind.
func kindMask(kinds []string) (byte, error) {
	if len(kinds) == 0 {
		return kindStatusBit | kindRatePlanBit | kindUsageBit | kindErrorBit, nil
	}
	var m byte
	for _, k := range kinds {
		b, ok := kindBit(k)
		if !ok {
			return 0, fmt.Errorf("%w: unknown change kind %q (want one of %v)", ErrInvalid, k, AllKinds)
		}
		m |= b
	}
	return m, nil
}

// changeKinds compares a card before and after a sync. Usage counts as changed when the
// bytes used cross a multiple of step (any difference when step is 0), so slow growth
// still reports once per step and a monthly reset reports at once.
func changeKinds(before, after dataRec, beforeErr, afterErr string, step int64) byte {
	var k byte
	if before.Status != after.Status || before.RawStatus != after.RawStatus {
		k |= kindStatusBit
	}
	if before.RatePlan != after.RatePlan {
		k |= kindRatePlanBit
	}
	if step <= 0 {
		if before.DataUsedBytes != after.DataUsedBytes {
			k |= kindUsageBit
		}
	} else if floorDiv(before.DataUsedBytes, step) != floorDiv(after.DataUsedBytes, step) {
		k |= kindUsageBit
	}
	if beforeErr != afterErr {
		k |= kindErrorBit
	}
	return k
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if (a%b != 0) && ((a < 0) != (b < 0)) {
		q--
	}
	return q
}

// FeedSettings are cluster settings of the change feed, stored in the FSM so that every
// replica records and drops the same events.
type FeedSettings struct {
	// UsageStepBytes: a data-usage change makes an event only when the bytes used cross a
	// multiple of this step (0: any change of the bytes used).
	UsageStepBytes int64 `json:"usage_step_bytes"`
	// RetentionAge drops events older than this, judged against the command stamp
	// (0: kept until the count bound drops them).
	RetentionAge time.Duration `json:"retention_age"`
}

// SetFeedSettings replaces the change feed settings.
type SetFeedSettings struct {
	Settings FeedSettings `json:"settings"`
}

// maxRetentionAge bounds FeedSettings.RetentionAge.
const maxRetentionAge = 10 * 365 * 24 * time.Hour

func readFeedSettings(meta *bolt.Bucket) (FeedSettings, error) {
	var fs FeedSettings
	v := meta.Get(keyFeed)
	if v == nil {
		return fs, nil
	}
	if err := json.Unmarshal(v, &fs); err != nil {
		return fs, fmt.Errorf("feed settings: %w", err)
	}
	return fs, nil
}

// feedSettings returns the settings, read once per batch.
func (a *applier) feedSettings() (FeedSettings, error) {
	if a.feed != nil {
		return *a.feed, nil
	}
	fs, err := readFeedSettings(a.meta)
	if err != nil {
		return fs, err
	}
	a.feed = &fs
	return fs, nil
}

func (a *applier) setFeedSettings(p *SetFeedSettings) (*Result, error) {
	fs := p.Settings
	if fs.UsageStepBytes < 0 {
		return nil, reject(ErrInvalid, "usage step %d bytes is negative", fs.UsageStepBytes)
	}
	if fs.RetentionAge < 0 || fs.RetentionAge > maxRetentionAge {
		return nil, reject(ErrInvalid, "retention age %s must be between 0 and %s", fs.RetentionAge, maxRetentionAge)
	}
	v, err := json.Marshal(fs)
	if err != nil {
		return nil, err
	}
	if err := a.meta.Put(keyFeed, v); err != nil {
		return nil, err
	}
	a.feed = &fs
	return &Result{Updated: 1, Message: fmt.Sprintf("usage step %d bytes, retention age %s", fs.UsageStepBytes, fs.RetentionAge)}, nil
}

// trimChanges enforces retention at the end of a batch: first by age (events stamped
// before the latest command stamp minus RetentionAge), then by count
// (ChangeRetention). Both depend only on the log, so replicas drop the same events. The
// highest dropped sequence is kept so that readers asking for older events can be told.
func (a *applier) trimChanges() error {
	n := getU64(a.meta, keyNumChanges) + a.changesAdded
	var drop [][]byte
	c := a.changes.Cursor()
	k, v := c.First()
	fs, err := a.feedSettings()
	if err != nil {
		return err
	}
	// The feed clock is the latest command stamp ever applied: a new leader whose clock
	// is behind cannot make replicas that batched differently disagree.
	clock := max(int64(getU64(a.meta, keyFeedClock)), a.maxNow)
	if clock != int64(getU64(a.meta, keyFeedClock)) {
		if err := putU64(a.meta, keyFeedClock, uint64(clock)); err != nil {
			return err
		}
	}
	if fs.RetentionAge > 0 && clock > 0 {
		cutoff := addNanos(clock, -fs.RetentionAge)
		var rec changeRec
		for ; k != nil; k, v = c.Next() {
			if err := rec.decode(v); err != nil {
				return fmt.Errorf("change %x: %w", k, err)
			}
			if rec.Time >= cutoff {
				break
			}
			drop = append(drop, k)
		}
	}
	limit := uint64(a.cfg.ChangeRetention)
	// Collect first, then delete: re-seeking the first key after each delete walks the
	// emptied leaves again and again.
	for ; k != nil && n-uint64(len(drop)) > limit; k, _ = c.Next() {
		drop = append(drop, k)
	}
	for _, k := range drop {
		if err := a.changes.Delete(k); err != nil {
			return fmt.Errorf("trim changes: %w", err)
		}
	}
	if len(drop) > 0 {
		if err := putU64(a.meta, keyTrimmed, binary.BigEndian.Uint64(drop[len(drop)-1])); err != nil {
			return err
		}
	}
	if a.changesAdded == 0 && len(drop) == 0 {
		return nil
	}
	return putU64(a.meta, keyNumChanges, n-uint64(len(drop)))
}

// SeqOfIndex returns the highest change sequence a log entry at index can produce: every
// event up to and including this sequence exists once the FSM has applied index.
func SeqOfIndex(index uint64) uint64 { return index<<16 | 0xFFFF }

// FeedQuery selects change events.
type FeedQuery struct {
	// After is the last sequence the reader has; events with a greater Seq are returned.
	After uint64
	// Limit bounds the events returned (0 or above MaxPage: MaxPage).
	Limit int
	// Enterprise and Kinds filter the events (empty: all).
	Enterprise string
	Kinds      []string
	// MaxScan bounds the events examined, matching or not (0: 10 x Limit).
	MaxScan int
}

// FeedPage is one read of the change feed, taken in one read transaction.
type FeedPage struct {
	Changes []Change `json:"changes"`
	// Next is where the following read continues (its After): the last event examined,
	// or SeqOfIndex(AppliedIndex) when the read reached the end of the feed. It is never
	// below the query's After.
	Next uint64 `json:"next"`
	// Oldest is the oldest retained event's sequence (0 when none).
	Oldest uint64 `json:"oldest"`
	// Trimmed is the highest sequence dropped by retention (0 when none).
	Trimmed uint64 `json:"trimmed"`
	// AppliedIndex is the Raft index the page reflects.
	AppliedIndex uint64 `json:"applied_index"`
}

// Feed reads the change feed. When retention has dropped events after q.After it returns
// the page's positions (Oldest, Trimmed, AppliedIndex) and an error wrapping
// ErrFeedTrimmed.
func (f *FSM) Feed(q FeedQuery) (FeedPage, error) {
	limit := pageLimit(q.Limit)
	maxScan := q.MaxScan
	if maxScan <= 0 {
		maxScan = 10 * limit
	}
	mask, err := kindMask(q.Kinds)
	if err != nil {
		return FeedPage{}, err
	}
	var p FeedPage
	err = f.view(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		p.AppliedIndex = getU64(meta, keyApplied)
		p.Trimmed = getU64(meta, keyTrimmed)
		p.Next = q.After
		c := tx.Bucket(bucketChanges).Cursor()
		if k, _ := c.First(); k != nil {
			p.Oldest = binary.BigEndian.Uint64(k)
		}
		if p.Trimmed > q.After {
			return fmt.Errorf("%w: after %d, events up to %d were dropped (oldest retained %d): resynchronise from GET /v1/cards?enterprise=ID", ErrFeedTrimmed, q.After, p.Trimmed, p.Oldest)
		}
		if q.After == ^uint64(0) {
			return nil
		}
		var rec changeRec
		scanned := 0
		k, v := c.Seek(u64Key(q.After + 1))
		for ; k != nil && len(p.Changes) < limit && scanned < maxScan; k, v = c.Next() {
			scanned++
			seq := binary.BigEndian.Uint64(k)
			p.Next = seq
			if err := rec.decode(v); err != nil {
				return fmt.Errorf("change %x: %w", k, err)
			}
			if q.Enterprise != "" && rec.Enterprise != q.Enterprise {
				continue
			}
			if rec.kinds()&mask == 0 {
				continue
			}
			p.Changes = append(p.Changes, rec.public(seq))
		}
		if k == nil {
			p.Next = max(p.Next, SeqOfIndex(p.AppliedIndex))
		}
		return nil
	})
	return p, err
}

// kinds returns the record's kind bits; records written before kinds were stored get
// them recomputed with step 0.
func (c *changeRec) kinds() byte {
	if c.Kinds != 0 {
		return c.Kinds
	}
	return changeKinds(c.Before, c.After, c.BeforeErr, c.AfterErr, 0)
}

// FeedSettings returns the change feed settings.
func (f *FSM) FeedSettings() (FeedSettings, error) {
	var fs FeedSettings
	err := f.view(func(tx *bolt.Tx) (err error) {
		fs, err = readFeedSettings(tx.Bucket(bucketMeta))
		return err
	})
	return fs, err
}

// appliedSignal returns a channel closed at the next applied batch or restore.
func (f *FSM) appliedSignal() <-chan struct{} {
	f.notifyMu.Lock()
	defer f.notifyMu.Unlock()
	if f.notify == nil {
		f.notify = make(chan struct{})
	}
	return f.notify
}

// signalApplied wakes every WaitApplied caller.
func (f *FSM) signalApplied() {
	f.notifyMu.Lock()
	defer f.notifyMu.Unlock()
	if f.notify != nil {
		close(f.notify)
		f.notify = nil
	}
}

// WaitApplied blocks until the applied index is above after, and returns it, or until
// ctx ends (the error is ctx's).
func (f *FSM) WaitApplied(ctx context.Context, after uint64) (uint64, error) {
	for {
		ch := f.appliedSignal()
		if idx := f.applied.Load(); idx > after {
			return idx, nil
		}
		select {
		case <-ctx.Done():
			return f.applied.Load(), ctx.Err()
		case <-ch:
		}
	}
}

// sortedKinds validates kinds and returns them deduplicated in canonical order.
func sortedKinds(kinds []string) ([]string, error) {
	if len(kinds) == 0 {
		return nil, nil
	}
	m, err := kindMask(kinds)
	if err != nil {
		return nil, err
	}
	out := kindNames(m)
	if slices.Equal(out, AllKinds) {
		return nil, nil
	}
	return out, nil
}
