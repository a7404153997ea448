package fsm

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// benchShards sets up, with fsync on, one enterprise per group (64 groups) with a full
// shard of 500 cards each, claims every shard for one node and starts a task on it.
func benchShards(b *testing.B) (*harness, []string) {
	b.Helper()
	cfg := DefaultConfig()
	cfg.Path = filepath.Join(b.TempDir(), "fsm.db")
	f, err := Open(cfg, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = f.Close() })
	h := &harness{t: b, f: f, now: t0}
	h.ok(UpsertAccount{Account: Account{ID: "acc-1", Carrier: CarrierOneLink, TTL: time.Hour, CredentialsValid: true}})
	ents := make([]string, DefaultGroups)
	found := 0
	for i := 0; found < DefaultGroups; i++ {
		id := fmt.Sprintf("ent-%d", i)
		if g := GroupOf(id, DefaultGroups); ents[g] == "" {
			ents[g] = id
			found++
			h.ok(UpsertEnterprise{ID: id, Accounts: map[string]string{CarrierOneLink: "acc-1"}, InventoryReady: true})
		}
	}
	shards := make([]string, DefaultGroups)
	for g, e := range ents {
		h.importRange(e, g*DefaultShardSize, (g+1)*DefaultShardSize, DefaultGroups, DefaultShardSize)
		shards[g] = ShardID(g, 0)
	}
	return h, shards
}

// BenchmarkApplyFlush measures flush throughput: each op is one ApplyBatch of 64 raft
// logs, each a flush of 100 card results (6,400 card results; every card's data changes,
// so every result also writes a change event), fsync on.
func BenchmarkApplyFlush(b *testing.B) {
	const perFlush, perBatch = 100, 64
	h, shards := benchShards(b)
	type task struct {
		epoch, id uint64
		next      int // index of the next card in the shard
	}
	tasks := make([]task, len(shards))
	for i, s := range shards {
		ep, id := h.claimTask(s, "n1")
		tasks[i] = task{epoch: ep, id: id}
	}
	var used int64
	batch := func() []*raft.Log {
		logs := make([]*raft.Log, 0, perBatch)
		h.advance(time.Second)
		for i, s := range shards {
			tk := &tasks[i]
			if tk.next >= DefaultShardSize {
				// Shard finished last round: the worker starts a new task.
				h.idx++
				logs = append(logs, &raft.Log{Index: h.idx, Type: raft.LogCommand, Data: cmd(b, StartTask{Shard: s, Node: "n1", Epoch: tk.epoch}, h.now)})
				tk.id++
				tk.next = 0
			}
			f := Flush{Shard: s, Node: "n1", Epoch: tk.epoch, TaskID: tk.id, Lease: 30 * time.Second}
			used++
			for c := 0; c < perFlush; c++ {
				n := i*DefaultShardSize + tk.next + c
				f.Results = append(f.Results, CardResult{ICCID: iccid(n), Data: &CardData{
					Status: "active", RawStatus: "2", RatePlan: "IOT-5G-100M", DataUsedBytes: used << 10, UsagePeriod: "2025-11",
					ActivatedAt: t0.Add(-time.Hour), CarrierModifiedAt: h.now}})
				f.Cursor = iccid(n)
			}
			tk.next += perFlush
			f.Done = tk.next >= DefaultShardSize
			h.idx++
			logs = append(logs, &raft.Log{Index: h.idx, Type: raft.LogCommand, Data: cmd(b, f, h.now)})
		}
		return logs
	}
	var cards int
	var elapsed time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		logs := batch()
		b.StartTimer()
		start := time.Now()
		for j, r := range h.f.ApplyBatch(logs) {
			if _, ok := r.(*Result); !ok {
				b.Fatalf("log %d: %v", j, r)
			}
		}
		elapsed += time.Since(start)
		cards += perFlush * len(shards)
	}
	b.ReportMetric(float64(cards)/elapsed.Seconds(), "cards/s")
	b.ReportMetric(float64(elapsed.Microseconds())/float64(b.N)/1000, "ms/batch")
}

// BenchmarkShards measures the per-second poll of every node: listing 10,240 shards.
func BenchmarkShards(b *testing.B) {
	f := openTest(b, nil)
	h := &harness{t: b, f: f, now: t0}
	h.setupCatalog()
	for e := 0; e < 64; e++ {
		id := fmt.Sprintf("ent-%d", e)
		h.ok(UpsertEnterprise{ID: id, Accounts: map[string]string{CarrierOneLink: "acc-1"}})
	}
	// Shard size 5: 51,200 cards make 10,240 shards.
	for chunk := 0; chunk < 8; chunk++ {
		p := ImportCards{Groups: 64, ShardSize: 5}
		for i := chunk * 6400; i < (chunk+1)*6400; i++ {
			p.Cards = append(p.Cards, CardImport{ICCID: iccid(i), Enterprise: fmt.Sprintf("ent-%d", i%64)})
		}
		h.ok(p)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s, err := f.Shards(ShardFilter{})
		if err != nil || len(s) != 10240 {
			b.Fatalf("%d shards, %v", len(s), err)
		}
	}
	b.ReportMetric(10240, "shards")
}
