package fsm

import (
	"fmt"
	"math"
	"time"
)

// flush checkpoints a running task: it writes the card results, records change events,
// moves the cursor forward, updates the counters and renews the lease; Done closes the
// task and Release gives up the claim.
func (a *applier) flush(p *Flush) (*Result, error) {
	s, err := a.shard(p.Shard)
	if err != nil {
		return nil, err
	}
	if err := checkEpoch(p.Shard, s, p.Epoch); err != nil {
		return nil, err
	}
	if err := checkOwner(p.Shard, s, p.Node); err != nil {
		return nil, err
	}
	if p.TaskID != s.TaskID {
		return nil, reject(ErrStaleEpoch, "shard %s: task %d is not the current task %d", p.Shard, p.TaskID, s.TaskID)
	}
	if s.State != stRunning {
		return nil, reject(ErrInvalid, "shard %s: task %d is %s, not running", p.Shard, s.TaskID, stateName(s.State))
	}
	cursor := p.Cursor
	if cursor != "" {
		n, ok := normICCID(cursor)
		if !ok {
			return nil, reject(ErrInvalid, "shard %s: cursor %q is not an ICCID", p.Shard, cursor)
		}
		cursor = n
	}
	if cursor < s.Cursor {
		return nil, reject(ErrCursorBack, "shard %s: cursor %q is before %q", p.Shard, cursor, s.Cursor)
	}
	if len(p.Results) > MaxFlushResults {
		return nil, reject(ErrInvalid, "shard %s: %d results, at most %d", p.Shard, len(p.Results), MaxFlushResults)
	}
	if err := checkLease(p.Lease, true); err != nil {
		return nil, err
	}
	if err := checkText("reason", p.Reason); err != nil {
		return nil, err
	}

	// Pass 1: every result must name a card of this shard, once.
	recs := make([]cardRec, len(p.Results))
	keys := make([][]byte, len(p.Results))
	ascending := true
	for i := range p.Results {
		r := &p.Results[i]
		iccid, ok := normICCID(r.ICCID)
		if !ok {
			return nil, reject(ErrInvalid, "shard %s: result %d: ICCID %q is not 19-20 hex digits", p.Shard, i, r.ICCID)
		}
		r.ICCID = iccid
		if i > 0 && iccid <= p.Results[i-1].ICCID {
			ascending = false
		}
		keys[i] = joinKey(p.Shard, iccid)
		v := a.cards.Get(keys[i])
		if v == nil {
			return nil, reject(ErrInvalid, "shard %s: result %d: card %s is not in the shard", p.Shard, i, iccid)
		}
		if err := recs[i].decode(v); err != nil {
			return nil, fmt.Errorf("card %s: %w", iccid, err)
		}
	}
	if !ascending {
		seen := make(map[string]int, len(p.Results))
		for i := range p.Results {
			if j, dup := seen[p.Results[i].ICCID]; dup {
				return nil, reject(ErrInvalid, "shard %s: result %d repeats card %s of result %d", p.Shard, i, p.Results[i].ICCID, j)
			}
			seen[p.Results[i].ICCID] = i
		}
	}

	// Pass 2: write the cards and their change events.
	fs, err := a.feedSettings()
	if err != nil {
		return nil, err
	}
	var synced uint64
	var ch changeRec
	for i := range p.Results {
		r := &p.Results[i]
		c := &recs[i]
		before, beforeErr := c.Data, c.ErrKind
		if r.Data != nil {
			c.Data = dataFrom(*r.Data)
			c.Data.Status = clipText(c.Data.Status)
			c.Data.RawStatus = clipText(c.Data.RawStatus)
			c.Data.RatePlan = clipText(c.Data.RatePlan)
			c.Data.UsagePeriod = clipText(c.Data.UsagePeriod)
		}
		c.ErrKind, c.ErrMsg = clipText(r.ErrKind), clipText(r.ErrMsg)
		if c.ErrKind == "" {
			synced++
		}
		var ttl int64
		acc, err := a.account(c.Account)
		if err != nil {
			return nil, err
		}
		if acc != nil {
			ttl = int64(acc.TTL)
		}
		c.SyncedAt = a.now
		c.ValidUntil = addNanos(a.now, time.Duration(ttl))
		c.SyncedEpoch = s.Epoch
		c.SyncCount++
		a.scratch = c.encode(a.scratch)
		if err := a.cards.Put(keys[i], a.keep(a.scratch)); err != nil {
			return nil, err
		}
		if kinds := changeKinds(before, c.Data, beforeErr, c.ErrKind, fs.UsageStepBytes); kinds != 0 {
			ch = changeRec{ICCID: r.ICCID, Enterprise: c.Enterprise, Before: before, After: c.Data,
				BeforeErr: beforeErr, AfterErr: c.ErrKind, Time: a.now, Kinds: kinds}
			a.scratch = ch.encode(a.scratch)
			if err := a.changes.Put(a.seqKey(a.index<<16|uint64(i)), a.keep(a.scratch)); err != nil {
				return nil, err
			}
			a.changesAdded++
		}
	}

	s.Cursor = cursor
	s.Synced += synced
	s.Skipped = satAdd(s.Skipped, p.Skipped)
	s.Failed = satAdd(s.Failed, p.Failed)
	s.UpdatedAt = a.now
	if p.Lease > 0 {
		s.LeaseUntil = addNanos(a.now, p.Lease)
	}
	if p.Release || p.Reason != "" {
		s.Reason = p.Reason
	}
	if p.Done {
		s.State = stDone
		if err := a.addRound(p.Shard, s); err != nil {
			return nil, err
		}
		next, err := a.earliestValidUntil(p.Shard)
		if err != nil {
			return nil, err
		}
		s.NextRunAt = max(next, a.now)
	}
	if !p.NextRunAt.IsZero() {
		s.NextRunAt = toNanos(p.NextRunAt)
	}
	if p.Release {
		if err := a.clearOwner(p.Shard, s); err != nil {
			return nil, err
		}
	}
	if err := a.putShard(p.Shard, s); err != nil {
		return nil, err
	}
	return &Result{Epoch: s.Epoch, TaskID: s.TaskID, Updated: len(p.Results)}, nil
}

func satAdd(a, b uint64) uint64 {
	if a > math.MaxUint64-b {
		return math.MaxUint64
	}
	return a + b
}

// addRound appends the finished task to the shard's history, keeping the newest
// HistoryPerShard rounds.
func (a *applier) addRound(id string, s *shardRec) error {
	rd := Round{TaskID: s.TaskID, Epoch: s.Epoch, Owner: s.Owner,
		StartedAt: fromNanos(s.StartedAt), EndedAt: fromNanos(a.now),
		Synced: s.Synced, Skipped: s.Skipped, Failed: s.Failed}
	if err := a.history.Put(historyKey(id, s.TaskID), encodeRound(&rd)); err != nil {
		return err
	}
	prefix := prefixKey(id)
	n := 0
	c := a.history.Cursor()
	for k, _ := c.Seek(prefix); k != nil && hasPrefix(k, prefix); k, _ = c.Next() {
		n++
	}
	for k, _ := c.Seek(prefix); k != nil && hasPrefix(k, prefix) && n > a.cfg.HistoryPerShard; k, _ = c.Seek(prefix) {
		if err := c.Delete(); err != nil {
			return err
		}
		n--
	}
	return nil
}

// earliestValidUntil scans the shard's cards for the earliest validity end (0 if a card
// was never synced).
func (a *applier) earliestValidUntil(id string) (int64, error) {
	prefix := prefixKey(id)
	earliest := int64(math.MaxInt64)
	c := a.cards.Cursor()
	for k, v := c.Seek(prefix); k != nil && hasPrefix(k, prefix); k, v = c.Next() {
		vu, ok := cardValidUntil(v)
		if !ok {
			return 0, fmt.Errorf("card %q: %w", k, errCorruptRecord)
		}
		earliest = min(earliest, vu)
	}
	return earliest, nil
}
