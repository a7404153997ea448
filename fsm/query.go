package fsm

import (
	"cmp"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Every query runs in one read transaction and never blocks Apply.

func pageLimit(n int) int {
	if n <= 0 || n > MaxPage {
		return MaxPage
	}
	return n
}

// Card returns a card by ICCID (case-insensitive).
func (f *FSM) Card(iccid string) (Card, error) {
	id, err := NormalizeICCID(iccid)
	if err != nil {
		return Card{}, err
	}
	var out Card
	err = f.view(func(tx *bolt.Tx) error {
		sh := tx.Bucket(bucketICCIDs).Get([]byte(id))
		if sh == nil {
			return fmt.Errorf("%w: card %s", ErrNotFound, id)
		}
		shard := string(sh)
		v := tx.Bucket(bucketCards).Get(joinKey(shard, id))
		if v == nil {
			return fmt.Errorf("%w: card %s in shard %s", ErrNotFound, id, shard)
		}
		var rec cardRec
		if err := rec.decode(v); err != nil {
			return fmt.Errorf("card %s: %w", id, err)
		}
		out = rec.public(id, shard)
		return nil
	})
	return out, err
}

// Cards pages through cards in ICCID order. With Shard set it lists that shard (and
// Enterprise, if also set, filters it); with only Enterprise set it lists that
// enterprise. next is the After of the following page, "" at the end.
func (f *FSM) Cards(filter CardFilter) ([]Card, string, error) {
	limit := pageLimit(filter.Limit)
	var out []Card
	var next string
	err := f.view(func(tx *bolt.Tx) error {
		cards := tx.Bucket(bucketCards)
		var rec cardRec
		add := func(iccid, shard string, v []byte) (bool, error) {
			if len(out) == limit {
				next = out[len(out)-1].ICCID
				return false, nil
			}
			if err := rec.decode(v); err != nil {
				return false, fmt.Errorf("card %s: %w", iccid, err)
			}
			if filter.Enterprise != "" && rec.Enterprise != filter.Enterprise {
				return true, nil
			}
			out = append(out, rec.public(iccid, shard))
			return true, nil
		}
		switch {
		case filter.Shard != "":
			prefix := prefixKey(filter.Shard)
			c := cards.Cursor()
			k, v := c.Seek(append(prefixKey(filter.Shard), filter.After...))
			if k != nil && filter.After != "" && string(k[len(prefix):]) == filter.After {
				k, v = c.Next()
			}
			for ; k != nil && hasPrefix(k, prefix); k, v = c.Next() {
				if more, err := add(string(k[len(prefix):]), filter.Shard, v); err != nil || !more {
					return err
				}
			}
		default:
			var c *bolt.Cursor
			var prefix []byte
			if filter.Enterprise != "" {
				c = tx.Bucket(bucketEntCards).Cursor()
				prefix = prefixKey(filter.Enterprise)
			} else {
				c = tx.Bucket(bucketICCIDs).Cursor()
			}
			iccids := tx.Bucket(bucketICCIDs)
			k, _ := c.Seek(append(slices.Clone(prefix), filter.After...))
			if k != nil && filter.After != "" && string(k[len(prefix):]) == filter.After {
				k, _ = c.Next()
			}
			for ; k != nil && hasPrefix(k, prefix); k, _ = c.Next() {
				iccid := string(k[len(prefix):])
				shard := string(iccids.Get([]byte(iccid)))
				v := cards.Get(joinKey(shard, iccid))
				if v == nil {
					return fmt.Errorf("card %s indexed but missing from shard %q", iccid, shard)
				}
				if more, err := add(iccid, shard, v); err != nil || !more {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	return out, next, nil
}

// ShardCards returns up to limit cards of a shard after afterICCID, in ICCID order.
func (f *FSM) ShardCards(shard, afterICCID string, limit int) ([]Card, error) {
	cards, _, err := f.Cards(CardFilter{Shard: shard, After: afterICCID, Limit: limit})
	return cards, err
}

// Shards returns the shards matching filter, ordered by group then sequence number.
// History is left empty (see Shard).
func (f *FSM) Shards(filter ShardFilter) ([]ShardState, error) {
	type order struct{ group, n, i int }
	var out []ShardState
	var ord []order
	err := f.view(func(tx *bolt.Tx) error {
		size := int(getU64(tx.Bucket(bucketMeta), keyNumShards))
		if filter.Group != nil || filter.Owner != "" || filter.State != "" {
			size = min(size, 64)
		}
		out = make([]ShardState, 0, size)
		ord = make([]order, 0, size)
		c := tx.Bucket(bucketShards).Cursor()
		var prefix []byte
		if filter.Group != nil {
			prefix = []byte(fmt.Sprintf("g%d-", *filter.Group))
		}
		var rec shardRec
		for k, v := c.Seek(prefix); k != nil && hasPrefix(k, prefix); k, v = c.Next() {
			if err := rec.decode(v); err != nil {
				return fmt.Errorf("shard %s: %w", k, err)
			}
			if filter.Owner != "" && rec.Owner != filter.Owner {
				continue
			}
			if filter.State != "" && stateName(rec.State) != filter.State {
				continue
			}
			ord = append(ord, order{rec.Group, rec.N, len(out)})
			out = append(out, rec.public(string(k)))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	// Keys sort as strings ("g10-0" before "g2-0"); order by group, then number.
	slices.SortFunc(ord, func(a, b order) int {
		if c := cmp.Compare(a.group, b.group); c != 0 {
			return c
		}
		return cmp.Compare(a.n, b.n)
	})
	sorted := make([]ShardState, len(out))
	for i, o := range ord {
		sorted[i] = out[o.i]
	}
	return sorted, nil
}

// Shard returns one shard with its history (oldest round first).
func (f *FSM) Shard(id string) (ShardState, error) {
	var out ShardState
	err := f.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketShards).Get([]byte(id))
		if v == nil {
			return fmt.Errorf("%w: shard %s", ErrNotFound, id)
		}
		var rec shardRec
		if err := rec.decode(v); err != nil {
			return fmt.Errorf("shard %s: %w", id, err)
		}
		out = rec.public(id)
		prefix := prefixKey(id)
		c := tx.Bucket(bucketHistory).Cursor()
		for k, v := c.Seek(prefix); k != nil && hasPrefix(k, prefix); k, v = c.Next() {
			rd, err := decodeRound(v)
			if err != nil {
				return fmt.Errorf("shard %s history: %w", id, err)
			}
			out.History = append(out.History, rd)
		}
		return nil
	})
	return out, err
}

func getJSON[T any](tx *bolt.Tx, bucket []byte, id, what string) (T, error) {
	var out T
	v := tx.Bucket(bucket).Get([]byte(id))
	if v == nil {
		return out, fmt.Errorf("%w: %s %s", ErrNotFound, what, id)
	}
	if err := json.Unmarshal(v, &out); err != nil {
		return out, fmt.Errorf("%s %s: %w", what, id, err)
	}
	return out, nil
}

func listJSON[T any](tx *bolt.Tx, bucket []byte, what string) ([]T, error) {
	var out []T
	err := tx.Bucket(bucket).ForEach(func(k, v []byte) error {
		var x T
		if err := json.Unmarshal(v, &x); err != nil {
			return fmt.Errorf("%s %s: %w", what, k, err)
		}
		out = append(out, x)
		return nil
	})
	return out, err
}

// Enterprise returns an enterprise by id.
func (f *FSM) Enterprise(id string) (Enterprise, error) {
	var out Enterprise
	err := f.view(func(tx *bolt.Tx) (err error) {
		out, err = getJSON[Enterprise](tx, bucketEnterprises, id, "enterprise")
		return err
	})
	return out, err
}

// Enterprises returns every enterprise, ordered by id.
func (f *FSM) Enterprises() ([]Enterprise, error) {
	var out []Enterprise
	err := f.view(func(tx *bolt.Tx) (err error) {
		out, err = listJSON[Enterprise](tx, bucketEnterprises, "enterprise")
		return err
	})
	return out, err
}

// Account returns an account by id.
func (f *FSM) Account(id string) (Account, error) {
	var out Account
	err := f.view(func(tx *bolt.Tx) (err error) {
		out, err = getJSON[Account](tx, bucketAccounts, id, "account")
		return err
	})
	return out, err
}

// Accounts returns every account, ordered by id.
func (f *FSM) Accounts() ([]Account, error) {
	var out []Account
	err := f.view(func(tx *bolt.Tx) (err error) {
		out, err = listJSON[Account](tx, bucketAccounts, "account")
		return err
	})
	return out, err
}

// Maintenance reports whether the cluster is in maintenance mode, and why.
func (f *FSM) Maintenance() (on bool, reason string, err error) {
	err = f.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketMeta).Get(keyMaintenance)
		if v == nil {
			return nil
		}
		var m maintenanceRec
		if err := json.Unmarshal(v, &m); err != nil {
			return fmt.Errorf("maintenance: %w", err)
		}
		on, reason = m.On, m.Reason
		return nil
	})
	return on, reason, err
}

// Revoked reports whether the node's claims were revoked (it was declared departed) and
// it has not been granted a claim since, with the time of the revocation.
func (f *FSM) Revoked(node string) (at time.Time, revoked bool, err error) {
	err = f.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketMeta).Get(revokedKey(node))
		if len(v) != 8 {
			return nil
		}
		at, revoked = time.Unix(0, int64(binary.BigEndian.Uint64(v))), true
		return nil
	})
	return at, revoked, err
}

// Settings returns the cluster's group count and shard size: the values stored by the
// first import, or the defaults before any import.
func (f *FSM) Settings() (groups, shardSize int) {
	groups, shardSize = DefaultGroups, DefaultShardSize
	_ = f.view(func(tx *bolt.Tx) error {
		s, _, err := readSettings(tx.Bucket(bucketMeta))
		if err == nil {
			groups, shardSize = s.Groups, s.ShardSize
		}
		return nil
	})
	return groups, shardSize
}

// Changes returns up to limit change events with Seq > after, oldest first, optionally
// only those of one enterprise, and oldest, the Seq of the oldest event still retained
// (0 when none): a reader whose after is below oldest-1 has missed events.
func (f *FSM) Changes(after uint64, limit int, enterprise string) ([]Change, uint64, error) {
	limit = pageLimit(limit)
	var out []Change
	var oldest uint64
	err := f.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketChanges).Cursor()
		if k, _ := c.First(); k != nil {
			oldest = binary.BigEndian.Uint64(k)
		}
		if after == ^uint64(0) {
			return nil
		}
		var rec changeRec
		for k, v := c.Seek(u64Key(after + 1)); k != nil && len(out) < limit; k, v = c.Next() {
			if err := rec.decode(v); err != nil {
				return fmt.Errorf("change %x: %w", k, err)
			}
			if enterprise != "" && rec.Enterprise != enterprise {
				continue
			}
			out = append(out, rec.public(binary.BigEndian.Uint64(k)))
		}
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	return out, oldest, nil
}

// Counts returns record counts.
func (f *FSM) Counts() (Counts, error) {
	var out Counts
	err := f.view(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		out.Cards = int(getU64(meta, keyNumCards))
		out.Shards = int(getU64(meta, keyNumShards))
		out.Enterprises = tx.Bucket(bucketEnterprises).Stats().KeyN
		out.Accounts = tx.Bucket(bucketAccounts).Stats().KeyN
		out.Claims = tx.Bucket(bucketClaims).Stats().KeyN
		return nil
	})
	return out, err
}
