package fsm

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// applier applies the commands of one batch inside one write transaction. Its caches
// live only as long as the transaction.
type applier struct {
	tx  *bolt.Tx
	cfg Config

	meta, accounts, enterprises, cards, iccids, entCards *bolt.Bucket
	shards, groups, claims, history, changes             *bolt.Bucket

	// index and now are the raft index and leader stamp (Unix nanos) of the command
	// being applied.
	index uint64
	now   int64

	accCache map[string]*Account
	// scratch is reused to encode records; keep copies them into arena, because bbolt
	// holds on to the keys and values given to Put until the transaction ends.
	scratch []byte
	arena   []byte
	// changesAdded counts change events written by this batch; retention runs once in
	// finish, which leaves the same newest events as trimming after every command.
	changesAdded uint64
	// maxNow is the latest stamp of the batch; feed is the feed settings, read once.
	maxNow int64
	feed   *FeedSettings
}

func newApplier(tx *bolt.Tx, cfg Config) *applier {
	return &applier{
		tx: tx, cfg: cfg,
		meta: tx.Bucket(bucketMeta), accounts: tx.Bucket(bucketAccounts),
		enterprises: tx.Bucket(bucketEnterprises), cards: tx.Bucket(bucketCards),
		iccids: tx.Bucket(bucketICCIDs), entCards: tx.Bucket(bucketEntCards),
		shards: tx.Bucket(bucketShards), groups: tx.Bucket(bucketGroups),
		claims: tx.Bucket(bucketClaims), history: tx.Bucket(bucketHistory),
		changes:  tx.Bucket(bucketChanges),
		accCache: make(map[string]*Account),
	}
}

// apply decodes and applies one command. The first result is the entry's response (a
// *Result or a rule error); a non-nil second result is a storage failure.
func (a *applier) apply(index uint64, data []byte) (any, error) {
	cmd, err := Decode(data)
	if err != nil {
		return err, nil
	}
	if cmd.Time.IsZero() {
		return fmt.Errorf("%w: %s is not stamped", ErrBadCommand, cmd.Type), nil
	}
	p, err := DecodePayload(cmd)
	if err != nil {
		return err, nil
	}
	a.index = index
	a.now = toNanos(cmd.Time)
	a.maxNow = max(a.maxNow, a.now)
	var res *Result
	switch p := p.(type) {
	case *UpsertAccount:
		res, err = a.upsertAccount(p)
	case *UpsertEnterprise:
		res, err = a.upsertEnterprise(p)
	case *ImportCards:
		res, err = a.importCards(p)
	case *Claim:
		res, err = a.claim(p)
	case *StartTask:
		res, err = a.startTask(p)
	case *Flush:
		res, err = a.flush(p)
	case *Release:
		res, err = a.release(p)
	case *RevokeNode:
		res, err = a.revokeNode(p)
	case *ForceRelease:
		res, err = a.forceRelease(p)
	case *Resync:
		res, err = a.resync(p)
	case *SetCheckpoint:
		res, err = a.setCheckpoint(p)
	case *SetMaintenance:
		res, err = a.setMaintenance(p)
	case *SetAccountStatus:
		res, err = a.setAccountStatus(p)
	case *SetFeedSettings:
		res, err = a.setFeedSettings(p)
	case *UpsertSubscription:
		res, err = a.upsertSubscription(p)
	case *DeleteSubscription:
		res, err = a.deleteSubscription(p)
	case *ClaimSubscription:
		res, err = a.claimSubscription(p)
	case *AdvanceSubscription:
		res, err = a.advanceSubscription(p)
	case *SetSubscriptionPaused:
		res, err = a.setSubscriptionPaused(p)
	case *SetSeat:
		res, err = a.setSeat(p)
	default:
		return fmt.Errorf("%w: %s", ErrUnknownCommand, cmd.Type), nil
	}
	if err != nil {
		var re *ruleError
		if errors.As(err, &re) {
			return re.err, nil
		}
		return nil, err
	}
	return res, nil
}

// finish runs the batch-level work: change retention.
func (a *applier) finish() error {
	return a.trimChanges()
}

// ---- record access ----

func (a *applier) account(id string) (*Account, error) {
	if acc, ok := a.accCache[id]; ok {
		return acc, nil
	}
	v := a.accounts.Get([]byte(id))
	if v == nil {
		return nil, nil
	}
	acc := new(Account)
	if err := json.Unmarshal(v, acc); err != nil {
		return nil, fmt.Errorf("account %s: %w", id, err)
	}
	a.accCache[id] = acc
	return acc, nil
}

func (a *applier) putAccount(acc *Account) error {
	v, err := json.Marshal(acc)
	if err != nil {
		return err
	}
	cp := *acc
	a.accCache[acc.ID] = &cp
	return a.accounts.Put([]byte(acc.ID), v)
}

func (a *applier) enterprise(id string) (*Enterprise, error) {
	v := a.enterprises.Get([]byte(id))
	if v == nil {
		return nil, nil
	}
	e := new(Enterprise)
	if err := json.Unmarshal(v, e); err != nil {
		return nil, fmt.Errorf("enterprise %s: %w", id, err)
	}
	return e, nil
}

func (a *applier) putEnterprise(e *Enterprise) error {
	v, err := json.Marshal(e)
	if err != nil {
		return err
	}
	return a.enterprises.Put([]byte(e.ID), v)
}

// shard loads a shard; a missing shard is a rule error (ErrNotFound).
func (a *applier) shard(id string) (*shardRec, error) {
	if id == "" {
		return nil, reject(ErrInvalid, "shard id is empty")
	}
	v := a.shards.Get([]byte(id))
	if v == nil {
		return nil, reject(ErrNotFound, "shard %s", id)
	}
	s := new(shardRec)
	if err := s.decode(v); err != nil {
		return nil, fmt.Errorf("shard %s: %w", id, err)
	}
	return s, nil
}

func (a *applier) putShard(id string, s *shardRec) error {
	a.scratch = s.encode(a.scratch)
	return a.shards.Put([]byte(id), a.keep(a.scratch))
}

func (a *applier) group(g int) (*groupRec, error) {
	gr := new(groupRec)
	v := a.groups.Get(groupKey(g))
	if v == nil {
		return gr, nil
	}
	if err := gr.decode(v); err != nil {
		return nil, fmt.Errorf("group %d: %w", g, err)
	}
	return gr, nil
}

func (a *applier) putGroup(g int, gr *groupRec) error {
	return a.groups.Put(groupKey(g), gr.encode())
}

func (a *applier) maintenance() (maintenanceRec, error) {
	var m maintenanceRec
	if v := a.meta.Get(keyMaintenance); v != nil {
		if err := json.Unmarshal(v, &m); err != nil {
			return m, fmt.Errorf("maintenance: %w", err)
		}
	}
	return m, nil
}

type maintenanceRec struct {
	On     bool   `json:"on"`
	Reason string `json:"reason"`
}

type settingsRec struct {
	Groups    int `json:"groups"`
	ShardSize int `json:"shard_size"`
}

func readSettings(meta *bolt.Bucket) (settingsRec, bool, error) {
	v := meta.Get(keySettings)
	if v == nil {
		return settingsRec{Groups: DefaultGroups, ShardSize: DefaultShardSize}, false, nil
	}
	var s settingsRec
	if err := json.Unmarshal(v, &s); err != nil {
		return s, true, fmt.Errorf("settings: %w", err)
	}
	return s, true, nil
}

func (a *applier) addCounter(key []byte, delta int) error {
	return putU64(a.meta, key, uint64(int64(getU64(a.meta, key))+int64(delta)))
}

// ---- claim bookkeeping ----

// clearOwner drops a shard's owner and its index entries (claims, group). The caller
// stores the shard.
func (a *applier) clearOwner(id string, s *shardRec) error {
	if s.Owner == "" {
		return nil
	}
	if err := a.claims.Delete(joinKey(s.Owner, id)); err != nil {
		return err
	}
	gr, err := a.group(s.Group)
	if err != nil {
		return err
	}
	if gr.Claimed == id {
		gr.Claimed = ""
		if err := a.putGroup(s.Group, gr); err != nil {
			return err
		}
	}
	s.Owner = ""
	s.LeaseUntil = 0
	return nil
}

// fence bumps the epoch and clears the owner, so that the owner's next command fails.
func (a *applier) fence(id string, s *shardRec, reason string) error {
	s.Epoch++
	if err := a.clearOwner(id, s); err != nil {
		return err
	}
	if reason != "" {
		s.Reason = reason
	}
	return nil
}

// checkLease validates a lease duration.
func checkLease(d time.Duration, zeroOK bool) error {
	if d < 0 || (d == 0 && !zeroOK) {
		return reject(ErrInvalid, "lease %s must be positive", d)
	}
	if d > maxLease {
		return reject(ErrInvalid, "lease %s is longer than %s", d, maxLease)
	}
	return nil
}

const (
	maxLease = 24 * time.Hour
	maxTTL   = 10 * 365 * 24 * time.Hour
)

// ---- helpers for the flush path ----

const arenaChunk = 64 << 10

// keep returns a copy of b that stays valid until the transaction ends.
func (a *applier) keep(b []byte) []byte {
	if len(b) > arenaChunk/4 {
		return append([]byte(nil), b...)
	}
	if len(a.arena)+len(b) > cap(a.arena) {
		a.arena = make([]byte, 0, arenaChunk)
	}
	n := len(a.arena)
	a.arena = append(a.arena, b...)
	return a.arena[n:len(a.arena):len(a.arena)]
}

func (a *applier) seqKey(seq uint64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], seq)
	return a.keep(k[:])
}

func hasPrefix(k, prefix []byte) bool { return bytes.HasPrefix(k, prefix) }
