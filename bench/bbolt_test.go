package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

var (
	boltShards = []byte("shards")
	boltCards  = []byte("cards")
)

// boltStore is the raw limit of the write path on this disk: one bbolt file with fsync
// on (cardsync's FSM options), no replication, no network. A single committer groups
// every write waiting at that moment into one Update, as Raft's batched apply does, so
// each fsync carries 100 results x the number of flushes in flight.
type boltStore struct {
	db   *bolt.DB
	reqs chan boltReq
}

type boltReq struct {
	fn   func(tx *bolt.Tx) error
	done chan error
}

func newBoltStore(tb testing.TB, plans []*shardPlan) *boltStore {
	tb.Helper()
	db, err := bolt.Open(filepath.Join(tb.TempDir(), "limit.db"), 0o600, &bolt.Options{
		Timeout: 5 * time.Second, FreelistType: bolt.FreelistMapType, InitialMmapSize: 1 << 30,
	})
	if err != nil {
		tb.Fatalf("bbolt: %v", err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		sb, err := tx.CreateBucketIfNotExists(boltShards)
		if err != nil {
			return err
		}
		if _, err := tx.CreateBucketIfNotExists(boltCards); err != nil {
			return err
		}
		for _, p := range plans {
			if err := sb.Put([]byte(p.id+"/epoch"), u64(0)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatalf("bbolt setup: %v", err)
	}
	s := &boltStore{db: db, reqs: make(chan boltReq, 64)}
	stopped := make(chan struct{})
	go s.commitLoop(stopped)
	tb.Cleanup(func() {
		close(s.reqs)
		<-stopped
		_ = db.Close()
	})
	return s
}

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// commitLoop runs every waiting request in one transaction and one fsync. A request
// whose compare fails gets its error and writes nothing (the functions below compare
// before they write); the others still commit.
func (s *boltStore) commitLoop(stopped chan<- struct{}) {
	defer close(stopped)
	for first := range s.reqs {
		batch := []boltReq{first}
	drain:
		for len(batch) < cap(s.reqs) {
			select {
			case r, ok := <-s.reqs:
				if !ok {
					break drain
				}
				batch = append(batch, r)
			default:
				break drain
			}
		}
		errs := make([]error, len(batch))
		err := s.db.Update(func(tx *bolt.Tx) error {
			for i, r := range batch {
				errs[i] = r.fn(tx)
			}
			return nil
		})
		for i, r := range batch {
			if err != nil {
				errs[i] = err
			}
			r.done <- errs[i]
		}
	}
}

func (s *boltStore) do(ctx context.Context, fn func(tx *bolt.Tx) error) error {
	r := boltReq{fn: fn, done: make(chan error, 1)}
	select {
	case s.reqs <- r:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *boltStore) claim(ctx context.Context, w int, sh *shardPlan) (claimToken, error) {
	var cur uint64
	err := s.db.View(func(tx *bolt.Tx) error {
		cur = binary.BigEndian.Uint64(tx.Bucket(boltShards).Get([]byte(sh.id + "/epoch")))
		return nil
	})
	if err != nil {
		return claimToken{}, err
	}
	err = s.do(ctx, func(tx *bolt.Tx) error {
		b := tx.Bucket(boltShards)
		if got := binary.BigEndian.Uint64(b.Get([]byte(sh.id + "/epoch"))); got != cur {
			return fmt.Errorf("%w: shard %s is at epoch %d, not %d", errFenced, sh.id, got, cur)
		}
		if err := b.Put([]byte(sh.id+"/epoch"), u64(cur+1)); err != nil {
			return err
		}
		return b.Put([]byte(sh.id+"/owner"), []byte(writerName(w)))
	})
	if err != nil {
		return claimToken{}, err
	}
	return claimToken{epoch: cur + 1}, nil
}

func (s *boltStore) flush(ctx context.Context, w int, f flushReq) error {
	vals := make([][]byte, len(f.results))
	for i := range f.results {
		v, err := resultValue(&f.results[i])
		if err != nil {
			return err
		}
		vals[i] = v
	}
	return s.do(ctx, func(tx *bolt.Tx) error {
		b := tx.Bucket(boltShards)
		if got := binary.BigEndian.Uint64(b.Get([]byte(f.shard.id + "/epoch"))); got != f.token.epoch {
			return fmt.Errorf("%w: shard %s is at epoch %d, not %d", errFenced, f.shard.id, got, f.token.epoch)
		}
		cb := tx.Bucket(boltCards)
		for i := range f.results {
			if err := cb.Put([]byte(cardKey(f.shard.id, f.results[i].ICCID)), vals[i]); err != nil {
				return err
			}
		}
		return b.Put([]byte(f.shard.id+"/cursor"), []byte(f.cursor))
	})
}
