package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"cardsync/fsm"
)

// workload is the replicated write path of shard owners: writers concurrent writers, each
// owning shardsPerWriter shards; per shard one claim (compare-and-set on the shard's
// epoch) and flushesPerShard flushes of perFlush card results plus the cursor, each
// conditional on the epoch the claim returned.
type workload struct {
	writers         int
	shardsPerWriter int
	flushesPerShard int
	perFlush        int
}

// fullWorkload is 3 writers x 300 flushes x 100 results; -short makes it 10x smaller.
func benchWorkload(short bool) workload {
	w := workload{writers: 3, shardsPerWriter: 60, flushesPerShard: 5, perFlush: 100}
	if short {
		w.shardsPerWriter = 6
	}
	return w
}

func (w workload) shardSize() int { return w.flushesPerShard * w.perFlush }
func (w workload) shards() int    { return w.writers * w.shardsPerWriter }
func (w workload) flushes() int   { return w.shards() * w.flushesPerShard }

// shardPlan is one shard of the workload: its id, the enterprise whose cards fill it and
// its cards in order.
type shardPlan struct {
	id         string
	group      int
	enterprise string
	iccids     []string
}

// plan lays the workload out the way cardsync's import does: one group per shard (so no
// two shards of a writer ever wait on each other's group), one enterprise per group,
// shardSize cards per group with ascending ICCIDs. Shard i belongs to writer i%writers.
func (w workload) plan() []*shardPlan {
	groups := w.shards()
	ents := make([]string, groups)
	found := 0
	for i := 0; found < groups; i++ {
		id := fmt.Sprintf("bench-ent-%d", i)
		if g := fsm.GroupOf(id, groups); ents[g] == "" {
			ents[g] = id
			found++
		}
	}
	plans := make([]*shardPlan, groups)
	for g := range plans {
		p := &shardPlan{id: fsm.ShardID(g, 0), group: g, enterprise: ents[g], iccids: make([]string, w.shardSize())}
		for c := range p.iccids {
			p.iccids[c] = benchICCID(g*w.shardSize() + c)
		}
		plans[g] = p
	}
	return plans
}

// benchICCID is the n-th card's ICCID: 20 digits, ascending with n.
func benchICCID(n int) string { return fmt.Sprintf("8986%016d", n) }

// claimToken is what a claim hands to the flushes: the epoch they are fenced by and,
// for cardsync, the task they belong to.
type claimToken struct {
	epoch uint64
	task  uint64
}

// flushReq is one flush: results for a run of the shard's cards, the cursor (last card
// finished) and whether it finishes the shard.
type flushReq struct {
	shard   *shardPlan
	token   claimToken
	results []fsm.CardResult
	cursor  string
	last    bool
}

// writeStore is one system under test. Writer w only touches its own shards, so the
// stores need no coordination between writers beyond what they do for any client.
type writeStore interface {
	// claim takes the shard for writer w by compare-and-set on its epoch.
	claim(ctx context.Context, w int, sh *shardPlan) (claimToken, error)
	// flush writes the results and the cursor if the shard is still at tok's epoch.
	flush(ctx context.Context, w int, f flushReq) error
}

// errFenced is returned by a store when a compare-and-set on the epoch fails.
var errFenced = errors.New("epoch compare failed")

// cardResults builds the results of one flush: every card's data changes from round to
// round (the used-data counter grows), as it does between two syncs of a live card.
func cardResults(iccids []string, round int, now time.Time) []fsm.CardResult {
	rs := make([]fsm.CardResult, len(iccids))
	for i, id := range iccids {
		rs[i] = fsm.CardResult{ICCID: id, Data: &fsm.CardData{
			Status:            "ACTIVATED",
			RawStatus:         "2",
			RatePlan:          "IOT-5G-100M-POOLED-NATIONWIDE-2026",
			DataUsedBytes:     int64(round+1)*1_048_576 + int64(i)*4096,
			UsagePeriod:       "2026-07",
			ActivatedAt:       time.Date(2025, 3, 1, 8, 0, 0, 0, time.UTC),
			CarrierModifiedAt: now,
		}}
	}
	return rs
}

// resultValue is how etcd and bbolt store a card result: its JSON, about 300 bytes.
func resultValue(r *fsm.CardResult) ([]byte, error) {
	return json.Marshal(r)
}

// runStats is what one run of the workload measured.
type runStats struct {
	elapsed time.Duration
	flushes []time.Duration
	claims  []time.Duration
	results int
	// perWriter holds each writer's flush latencies (writer 0 proposes through the
	// cardsync leader; the others are forwarded).
	perWriter [][]time.Duration
}

// runWorkload runs every writer to the end of its shards once; round numbers the run so
// that card data differs between runs.
func runWorkload(ctx context.Context, st writeStore, w workload, plans []*shardPlan, round int) (runStats, error) {
	type writerOut struct {
		flushes, claims []time.Duration
		results         int
		err             error
	}
	outs := make([]writerOut, w.writers)
	var wg sync.WaitGroup
	start := time.Now()
	for wi := 0; wi < w.writers; wi++ {
		wg.Add(1)
		go func(wi int) {
			defer wg.Done()
			out := &outs[wi]
			for si := wi; si < len(plans); si += w.writers {
				sh := plans[si]
				t0 := time.Now()
				tok, err := st.claim(ctx, wi, sh)
				if err != nil {
					out.err = fmt.Errorf("writer %d: claim %s: %w", wi, sh.id, err)
					return
				}
				out.claims = append(out.claims, time.Since(t0))
				for fi := 0; fi < w.flushesPerShard; fi++ {
					cards := sh.iccids[fi*w.perFlush : (fi+1)*w.perFlush]
					f := flushReq{shard: sh, token: tok, results: cardResults(cards, round, time.Now()),
						cursor: cards[len(cards)-1], last: fi == w.flushesPerShard-1}
					t0 := time.Now()
					if err := st.flush(ctx, wi, f); err != nil {
						out.err = fmt.Errorf("writer %d: flush %d of %s: %w", wi, fi, sh.id, err)
						return
					}
					out.flushes = append(out.flushes, time.Since(t0))
					out.results += len(f.results)
				}
			}
		}(wi)
	}
	wg.Wait()
	rs := runStats{elapsed: time.Since(start)}
	var errs []error
	for _, o := range outs {
		rs.flushes = append(rs.flushes, o.flushes...)
		rs.perWriter = append(rs.perWriter, o.flushes)
		rs.claims = append(rs.claims, o.claims...)
		rs.results += o.results
		if o.err != nil {
			errs = append(errs, o.err)
		}
	}
	return rs, errors.Join(errs...)
}

// percentileMs returns the p-quantile (nearest rank) of ds in milliseconds.
func percentileMs(ds []time.Duration, p float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(p*float64(len(s))+0.5) - 1
	i = min(max(i, 0), len(s)-1)
	return float64(s[i].Microseconds()) / 1000
}

// benchStore runs the workload b.N times against st and reports results/s and the flush
// latency percentiles over all runs.
func benchStore(b *testing.B, st writeStore, w workload, plans []*shardPlan) {
	ctx := context.Background()
	var all runStats
	round := 0
	if path := os.Getenv("WRITEPATH_CPUPROFILE"); path != "" {
		stop := startProfile(b, path)
		defer stop()
	}
	cpu0 := processCPU()
	for b.Loop() {
		rs, err := runWorkload(ctx, st, w, plans, round)
		if err != nil {
			b.Fatal(err)
		}
		round++
		all.elapsed += rs.elapsed
		all.flushes = append(all.flushes, rs.flushes...)
		all.claims = append(all.claims, rs.claims...)
		all.results += rs.results
		if testing.Verbose() {
			for wi, ds := range rs.perWriter {
				b.Logf("writer %d: flush p50 %.2f ms, p99 %.2f ms", wi, percentileMs(ds, 0.5), percentileMs(ds, 0.99))
			}
		}
	}
	cpu := processCPU() - cpu0
	b.ReportMetric(float64(all.results)/all.elapsed.Seconds(), "results/s")
	b.ReportMetric(percentileMs(all.flushes, 0.50), "p50-ms")
	b.ReportMetric(percentileMs(all.flushes, 0.99), "p99-ms")
	b.ReportMetric(percentileMs(all.claims, 0.50), "claim-p50-ms")
	b.ReportMetric(float64(len(all.flushes)), "flushes")
	// CPU of the whole process (every node or member) per 1,000 results written: on a
	// shared 2-core machine this tells CPU-bound from fsync-bound.
	b.ReportMetric(float64(cpu.Microseconds())/1000/(float64(all.results)/1000), "cpu-ms/kresult")
}

// processCPU is the user+system CPU time this process used so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// startProfile writes a CPU profile of the measured runs only (not the cluster setup)
// to path with the sub-benchmark's name appended: WRITEPATH_CPUPROFILE=/tmp/wp.prof
// gives /tmp/wp.prof.cardsync and so on.
func startProfile(b *testing.B, path string) func() {
	name := b.Name()
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		name = name[i+1:]
	}
	f, err := os.Create(path + "." + name)
	if err != nil {
		b.Fatalf("cpu profile: %v", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		_ = f.Close()
		b.Fatalf("cpu profile (not together with -cpuprofile): %v", err)
	}
	return func() {
		pprof.StopCPUProfile()
		_ = f.Close()
	}
}

// BenchmarkWritePath compares the replicated write path of shard owners on a 3-node
// cardsync cluster, a 3-member etcd cluster and a single bbolt file with group commit
// (the disk's limit), all on loopback with fsync on. 3 writers x 300 flushes of 100
// card results each (-short: 30 flushes each).
func BenchmarkWritePath(b *testing.B) {
	w := benchWorkload(testing.Short())
	b.Run("cardsync", func(b *testing.B) {
		plans := w.plan()
		st := newCardsyncStore(b, w, plans)
		benchStore(b, st, w, plans)
	})
	b.Run("etcd", func(b *testing.B) {
		plans := w.plan()
		st := newEtcdStore(b, w, plans)
		benchStore(b, st, w, plans)
	})
	b.Run("bbolt-limit", func(b *testing.B) {
		plans := w.plan()
		st := newBoltStore(b, plans)
		benchStore(b, st, w, plans)
	})
}
