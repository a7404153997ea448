package fsm

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// benchShards sets up one enterprise per group (64 groups) with a full shard of 500
// cards each, claims every shard for one node and starts a task on it. mod adjusts the
// configuration (nil: DefaultConfig, deferred sync).
func benchShards(b *testing.B, mod func(*Config)) (*harness, []string) {
	b.Helper()
	cfg := DefaultConfig()
	cfg.Path = filepath.Join(b.TempDir(), "fsm.db")
	if mod != nil {
		mod(&cfg)
	}
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

// flushFeed produces flushes of 100 card results round-robin over the shards (every
// card's data changes, so every result also writes a change event), starting a new task
// when a shard's last round is done.
type flushFeed struct {
	h      *harness
	shards []string
	tasks  []flushTask
	next   int // next shard
	used   int64
}

type flushTask struct {
	epoch, id uint64
	next      int // index of the next card in the shard
}

const perFlush = 100

func newFlushFeed(h *harness, shards []string) *flushFeed {
	ff := &flushFeed{h: h, shards: shards, tasks: make([]flushTask, len(shards))}
	for i, s := range shards {
		ep, id := h.claimTask(s, "n1")
		ff.tasks[i] = flushTask{epoch: ep, id: id}
	}
	return ff
}

// logs returns the next n flushes (and the StartTasks they need) as raft logs.
func (ff *flushFeed) logs(n int) []*raft.Log {
	h := ff.h
	logs := make([]*raft.Log, 0, n+1)
	h.advance(time.Second)
	for range n {
		i := ff.next
		ff.next = (ff.next + 1) % len(ff.shards)
		s, tk := ff.shards[i], &ff.tasks[i]
		if tk.next >= DefaultShardSize {
			// Shard finished last round: the worker starts a new task.
			h.idx++
			logs = append(logs, &raft.Log{Index: h.idx, Type: raft.LogCommand, Data: cmd(h.t, StartTask{Shard: s, Node: "n1", Epoch: tk.epoch}, h.now)})
			tk.id++
			tk.next = 0
		}
		f := Flush{Shard: s, Node: "n1", Epoch: tk.epoch, TaskID: tk.id, Lease: 30 * time.Second}
		ff.used++
		for c := 0; c < perFlush; c++ {
			n := i*DefaultShardSize + tk.next + c
			f.Results = append(f.Results, CardResult{ICCID: iccid(n), Data: &CardData{
				Status: "active", RawStatus: "2", RatePlan: "IOT-5G-100M", DataUsedBytes: ff.used << 10, UsagePeriod: "2025-11",
				ActivatedAt: t0.Add(-time.Hour), CarrierModifiedAt: h.now}})
			f.Cursor = iccid(n)
		}
		tk.next += perFlush
		f.Done = tk.next >= DefaultShardSize
		h.idx++
		logs = append(logs, &raft.Log{Index: h.idx, Type: raft.LogCommand, Data: cmd(h.t, f, h.now)})
	}
	return logs
}

// applyTimed applies logs and returns how long ApplyBatch took.
func applyTimed(b *testing.B, f *FSM, logs []*raft.Log) time.Duration {
	start := time.Now()
	for j, r := range f.ApplyBatch(logs) {
		if _, ok := r.(*Result); !ok {
			b.Fatalf("log %d: %v", j, r)
		}
	}
	return time.Since(start)
}

// BenchmarkApplyFlush measures flush throughput: each op is one ApplyBatch of 64 raft
// logs, each a flush of 100 card results (6,400 card results), fsync on every commit.
func BenchmarkApplyFlush(b *testing.B) {
	const perBatch = 64
	h, shards := benchShards(b, func(c *Config) { c.SyncInterval = 0 })
	ff := newFlushFeed(h, shards)
	var cards int
	var elapsed time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		logs := ff.logs(perBatch)
		b.StartTimer()
		elapsed += applyTimed(b, h.f, logs)
		cards += perFlush * perBatch
	}
	b.ReportMetric(float64(cards)/elapsed.Seconds(), "cards/s")
	b.ReportMetric(float64(elapsed.Microseconds())/float64(b.N)/1000, "ms/batch")
}

// BenchmarkApplyOneFlush measures what the FSM adds to one write's latency on the
// replicated write path, where Raft mostly hands over one entry at a time: each op is
// an ApplyBatch of a single flush of 100 results, with fsync on every commit and with
// deferred sync (the default; the 100 ms background sync runs meanwhile).
func BenchmarkApplyOneFlush(b *testing.B) {
	for _, mode := range []struct {
		name     string
		interval time.Duration
	}{{"sync=every-commit", 0}, {"sync=deferred", DefaultSyncInterval}} {
		b.Run(mode.name, func(b *testing.B) {
			h, shards := benchShards(b, func(c *Config) { c.SyncInterval = mode.interval })
			ff := newFlushFeed(h, shards)
			var elapsed time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				logs := ff.logs(1)
				b.StartTimer()
				elapsed += applyTimed(b, h.f, logs)
			}
			b.ReportMetric(float64(elapsed.Microseconds())/float64(b.N)/1000, "ms/apply")
		})
	}
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
