package fsm

import (
	"fmt"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// scanShard sets up one shard of size cards, all synced with carrier data and valid for
// the account's TTL (1 h), and returns its id.
func scanShard(b *testing.B, size int) (*harness, string) {
	b.Helper()
	h := newHarness(b, nil)
	h.setupCatalog("ent-scan")
	h.importRange("ent-scan", 0, size, DefaultGroups, size)
	shard := ShardID(GroupOf("ent-scan", DefaultGroups), 0)
	if s := h.shard(shard); s.Cards != size {
		b.Fatalf("shard %s holds %d cards, want %d", shard, s.Cards, size)
	}
	epoch, task := h.claimTask(shard, "n1")
	const perFlush = 100
	for from := 0; from < size; from += perFlush {
		to := min(from+perFlush, size)
		f := Flush{Shard: shard, Node: "n1", Epoch: epoch, TaskID: task, Lease: 30 * time.Second, Cursor: iccid(to - 1),
			Done: to == size, Release: to == size}
		for i := from; i < to; i++ {
			f.Results = append(f.Results, CardResult{ICCID: iccid(i), Data: &CardData{Status: "active", RawStatus: "2",
				RatePlan: "IoT-1GB-Monthly", DataUsedBytes: int64(i) << 12, UsagePeriod: "2025-11",
				ActivatedAt: t0.Add(-90 * 24 * time.Hour), CarrierModifiedAt: t0}})
		}
		h.ok(f)
	}
	return h, shard
}

// BenchmarkValidityScan measures the walk over a shard whose cards are all still valid,
// which is what an idle cluster does all day: one op walks one whole shard.
//
//   - pages: the syncer worker's walk, reading the shard in pages of 500 decoded cards
//     from the local replica (FSM.ShardCards) and skipping every card whose ValidUntil is
//     in the future.
//   - valid-until: the FSM's scan for the shard's next run (the earliest ValidUntil),
//     which reads the stamp at its fixed offset without decoding the card.
func BenchmarkValidityScan(b *testing.B) {
	for _, size := range []int{DefaultShardSize, 5000} {
		h, shard := scanShard(b, size)
		now := t0.Add(time.Minute)
		b.Run(fmt.Sprintf("pages/shard=%d", size), func(b *testing.B) {
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				skipped, after := 0, ""
				for {
					cards, err := h.f.ShardCards(shard, after, 500)
					if err != nil {
						b.Fatal(err)
					}
					if len(cards) == 0 {
						break
					}
					for _, c := range cards {
						if c.ValidUntil.After(now) {
							skipped++
						}
					}
					after = cards[len(cards)-1].ICCID
				}
				if skipped != size {
					b.Fatalf("skipped %d of %d valid cards", skipped, size)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(size), "ns/card")
		})
		b.Run(fmt.Sprintf("valid-until/shard=%d", size), func(b *testing.B) {
			want := toNanos(t0.Add(time.Hour))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				err := h.f.view(func(tx *bolt.Tx) error {
					got, err := newApplier(tx, h.f.cfg).earliestValidUntil(shard)
					if err != nil {
						return err
					}
					if got < want {
						return fmt.Errorf("earliest valid until %d, want at least %d", got, want)
					}
					return nil
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(size), "ns/card")
		})
	}
}
