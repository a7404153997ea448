package bench

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	clientv3 "go.etcd.io/etcd/client/v3"

	"cardsync/fsm"
)

// TestWorkloadPlan checks the layout every store shares.
func TestWorkloadPlan(t *testing.T) {
	for _, short := range []bool{false, true} {
		w := benchWorkload(short)
		plans := w.plan()
		if len(plans) != w.shards() {
			t.Fatalf("short=%v: %d shards, want %d", short, len(plans), w.shards())
		}
		seen := map[string]bool{}
		for g, p := range plans {
			if p.group != g || p.id != fsm.ShardID(g, 0) || fsm.GroupOf(p.enterprise, len(plans)) != g {
				t.Fatalf("shard %d: %+v is not group %d's first shard", g, p.id, g)
			}
			for i, id := range p.iccids {
				if seen[id] || (i > 0 && id <= p.iccids[i-1]) {
					t.Fatalf("shard %s: card %d (%s) repeats or is out of order", p.id, i, id)
				}
				seen[id] = true
			}
		}
		if len(seen) != w.flushes()*w.perFlush {
			t.Fatalf("short=%v: %d cards, want %d", short, len(seen), w.flushes()*w.perFlush)
		}
	}
	v, err := resultValue(&cardResults([]string{benchICCID(1)}, 0, time.Now())[0])
	if err != nil || len(v) < 250 || len(v) > 350 {
		t.Fatalf("card result value is %d bytes (%v), want about 300", len(v), err)
	}
}

func TestPercentile(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	tests := []struct {
		name string
		in   []time.Duration
		p    float64
		want float64
	}{
		{"empty", nil, 0.5, 0},
		{"one", []time.Duration{ms(7)}, 0.99, 7},
		{"median of 4", []time.Duration{ms(4), ms(1), ms(3), ms(2)}, 0.5, 2},
		{"p99 of 100", func() []time.Duration {
			var d []time.Duration
			for i := 100; i >= 1; i-- {
				d = append(d, ms(i))
			}
			return d
		}(), 0.99, 99},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := percentileMs(tt.in, tt.p); got != tt.want {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

// TestStores runs a small workload twice on every store, checks the state it leaves,
// and checks that a flush with the previous epoch is refused.
func TestStores(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two 3-node clusters")
	}
	w := workload{writers: 3, shardsPerWriter: 1, flushesPerShard: 2, perFlush: 100}
	tests := []struct {
		name  string
		open  func(t *testing.T, plans []*shardPlan) writeStore
		check func(t *testing.T, st writeStore, p *shardPlan)
	}{
		{"cardsync", func(t *testing.T, plans []*shardPlan) writeStore { return newCardsyncStore(t, w, plans) },
			func(t *testing.T, st writeStore, p *shardPlan) {
				n := st.(*cardsyncStore).nodes[0]
				var s fsm.ShardState
				ok := func() bool {
					var err error
					s, err = n.FSM().Shard(p.id)
					return err == nil && s.Epoch == 2
				}
				deadline := time.Now().Add(10 * time.Second)
				for !ok() && time.Now().Before(deadline) {
					time.Sleep(20 * time.Millisecond)
				}
				last := p.iccids[len(p.iccids)-1]
				if s.Epoch != 2 || s.Owner != "" || s.Checkpoint.Cursor != last || s.Checkpoint.State != fsm.StateDone || s.Checkpoint.TaskID != 2 {
					t.Fatalf("shard %s: %+v", p.id, s)
				}
				c, err := n.FSM().Card(last)
				if err != nil || c.Data.DataUsedBytes != 2*1_048_576+99*4096 {
					t.Fatalf("card %s: %+v %v", last, c, err)
				}
			}},
		{"etcd", func(t *testing.T, plans []*shardPlan) writeStore { return newEtcdStore(t, w, plans) },
			func(t *testing.T, st writeStore, p *shardPlan) {
				c := st.(*etcdStore).clients[0]
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				last := p.iccids[len(p.iccids)-1]
				for key, want := range map[string]string{epochKey(p.id): "2", cursorKey(p.id): last} {
					r, err := c.Get(ctx, key)
					if err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != want {
						t.Fatalf("%s: %v %v, want %s", key, r, err, want)
					}
				}
				r, err := c.Get(ctx, cardKey(p.id, last), clientv3.WithLimit(1))
				if err != nil || len(r.Kvs) != 1 {
					t.Fatalf("card %s: %v", last, err)
				}
				var res fsm.CardResult
				if err := json.Unmarshal(r.Kvs[0].Value, &res); err != nil || res.Data.DataUsedBytes != 2*1_048_576+99*4096 {
					t.Fatalf("card %s: %+v %v", last, res, err)
				}
			}},
		{"bbolt-limit", func(t *testing.T, plans []*shardPlan) writeStore { return newBoltStore(t, plans) },
			func(t *testing.T, st writeStore, p *shardPlan) {
				err := st.(*boltStore).db.View(func(tx *bolt.Tx) error {
					b := tx.Bucket(boltShards)
					last := p.iccids[len(p.iccids)-1]
					if e := binary.BigEndian.Uint64(b.Get([]byte(p.id + "/epoch"))); e != 2 {
						t.Errorf("epoch %d", e)
					}
					if c := string(b.Get([]byte(p.id + "/cursor"))); c != last {
						t.Errorf("cursor %s, want %s", c, last)
					}
					if tx.Bucket(boltCards).Get([]byte(cardKey(p.id, last))) == nil {
						t.Errorf("card %s missing", last)
					}
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			plans := w.plan()
			st := tt.open(t, plans)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			for round := 0; round < 2; round++ {
				rs, err := runWorkload(ctx, st, w, plans, round)
				if err != nil {
					t.Fatalf("round %d: %v", round, err)
				}
				if rs.results != w.flushes()*w.perFlush || len(rs.flushes) != w.flushes() || len(rs.claims) != w.shards() {
					t.Fatalf("round %d: %d results, %d flushes, %d claims", round, rs.results, len(rs.flushes), len(rs.claims))
				}
			}
			for _, p := range plans {
				tt.check(t, st, p)
			}
			// A flush still carrying the first claim's epoch is fenced off.
			p := plans[0]
			err := st.flush(ctx, 0, flushReq{shard: p, token: claimToken{epoch: 1, task: 1},
				results: cardResults(p.iccids[:1], 9, time.Now()), cursor: p.iccids[0]})
			if err == nil {
				t.Fatal("flush with a stale epoch was accepted")
			}
			if !errors.Is(err, errFenced) && !errors.Is(err, fsm.ErrStaleEpoch) {
				t.Fatalf("stale flush: %v", err)
			}
		})
	}
}
