package syncer_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"cardsync/carrier"
	"cardsync/carrier/sim"
	"cardsync/fsm"
	"cardsync/internal/agent"
	"cardsync/node"
	"cardsync/syncer"
	"cardsync/testcluster"
)

// Benchmarks of record for the sync method: how much of the carriers' quota a cluster
// turns into synced cards, how fast a dead member's shards are taken over, what an idle
// cluster costs, and what a rolling restart costs. Each runs once per invocation
// (-benchtime 1x); -short runs a smaller workload.

// quotaAccounts returns one account per carrier whose quotas are OneLink 14 calls/s,
// Unicom 8, Telecom 10 and Cisco 5 (one call at a time), with the cards split so that
// every account's backlog takes about the same time at full quota.
func quotaAccounts(total int) []sim.AccountSpec {
	dev := sim.DevAccounts()
	pick := func(id string) sim.AccountSpec {
		for _, a := range dev {
			if a.ID == id {
				return a
			}
		}
		panic("no dev account " + id)
	}
	specs := []sim.AccountSpec{pick("cmcc-east"), pick("cucc-main"), pick("ctcc-main"), pick("cisco-global")}
	quota := []struct {
		rate        float64
		burst, conc int
	}{{14, 6, 6}, {8, 6, 6}, {10, 6, 6}, {5, 2, 1}}
	limit := 0.0
	for i := range specs {
		specs[i].RatePerSec, specs[i].Burst, specs[i].MaxConcurrent = quota[i].rate, quota[i].burst, quota[i].conc
		limit += cardsPerSecond(specs[i])
	}
	secs := float64(total) / limit
	for i := range specs {
		specs[i].Cards = max(1, int(math.Round(cardsPerSecond(specs[i])*secs)))
	}
	return specs
}

// cardsPerSecond is the most cards an account's quota can return: calls/s times the
// cards one call carries (batch size over the calls a batch query costs).
func cardsPerSecond(a sim.AccountSpec) float64 {
	return a.RatePerSec * float64(carrier.DefaultBatchSize(a.Carrier)) / float64(carrier.CallsPerQuery(a.Carrier))
}

func quotaLimit(specs []sim.AccountSpec) (cardsPerSec, callsPerSec float64) {
	for _, a := range specs {
		cardsPerSec += cardsPerSecond(a)
		callsPerSec += a.RatePerSec
	}
	return cardsPerSec, callsPerSec
}

// benchMetric sums a counter (or a histogram's count and sum) over the running members'
// registries, restricted to the label values given.
func benchMetric(c *testcluster.Cluster, name string, labels map[string]string) (value, count, sum float64) {
	for _, m := range c.Up() {
		n := m.Node()
		if n == nil {
			continue
		}
		fams, err := n.Registry().Gather()
		if err != nil {
			continue
		}
		for _, f := range fams {
			if f.GetName() != name {
				continue
			}
		metrics:
			for _, mt := range f.GetMetric() {
				for k, v := range labels {
					found := false
					for _, lp := range mt.GetLabel() {
						if lp.GetName() == k && lp.GetValue() == v {
							found = true
						}
					}
					if !found {
						continue metrics
					}
				}
				if ctr := mt.GetCounter(); ctr != nil {
					value += ctr.GetValue()
				}
				if h := mt.GetHistogram(); h != nil {
					count += float64(h.GetSampleCount())
					sum += h.GetSampleSum()
				}
			}
		}
	}
	return value, count, sum
}

// cardsAnswered is how many cards the carriers answered (with data or a per-card
// error) for the running members' syncers.
func cardsAnswered(c *testcluster.Cluster) float64 {
	s, _, _ := benchMetric(c, "cardsync_syncer_cards_total", map[string]string{"result": "synced"})
	f, _, _ := benchMetric(c, "cardsync_syncer_cards_total", map[string]string{"result": "failed"})
	return s + f
}

type simTotals struct {
	calls, accepted, rejected, rejectedRate, rejectedConc uint64
	perAccount                                            map[string]uint64 // accepted calls
}

func simCounts(s *sim.Sim) simTotals {
	t := simTotals{perAccount: map[string]uint64{}}
	for id, a := range s.Stats().Accounts {
		t.calls += a.Calls
		t.accepted += a.Accepted
		t.rejected += a.Rejected
		t.rejectedRate += a.RejectedRate
		t.rejectedConc += a.RejectedConcurrency
		t.perAccount[id] = a.Accepted
	}
	return t
}

// accountUse says, per account, which fraction of its calls/s quota was accepted
// between two samples.
func accountUse(specs []sim.AccountSpec, from, to simTotals, secs float64) string {
	var parts []string
	for _, a := range specs {
		got := float64(to.perAccount[a.ID]-from.perAccount[a.ID]) / secs
		parts = append(parts, fmt.Sprintf("%s %.2f/%.0f calls/s", a.ID, got, a.RatePerSec))
	}
	return strings.Join(parts, ", ")
}

// batchFill summarizes, per account, how full the data calls the simulator logged were:
// the calls that carried cards, how many of them were partial, and the cards per call
// over the batch size.
func batchFill(specs []sim.AccountSpec, calls []sim.CallRecord) string {
	var parts []string
	for _, a := range specs {
		size := carrier.DefaultBatchSize(a.Carrier)
		n, partial, cards := 0, 0, 0
		small := 0 // partial calls of at most a tenth of a batch
		var sizes []int
		for _, c := range calls {
			if c.Account != a.ID || len(c.ICCIDs) == 0 {
				continue
			}
			n++
			cards += len(c.ICCIDs)
			if len(c.ICCIDs) < size {
				partial++
				sizes = append(sizes, len(c.ICCIDs))
			}
			if len(c.ICCIDs) <= size/10 {
				small++
			}
		}
		if n > 0 {
			slices.Sort(sizes)
			q := func(p float64) int {
				if len(sizes) == 0 {
					return size
				}
				return sizes[int(p*float64(len(sizes)-1))]
			}
			parts = append(parts, fmt.Sprintf("%s %d calls, %d partial (%d of at most a tenth; sizes p10/p50/p90 %d/%d/%d), fill %.3f",
				a.ID, n, partial, small, q(0.1), q(0.5), q(0.9), float64(cards)/float64(n*size)))
		}
	}
	return strings.Join(parts, "; ")
}

// refetched counts card fetches beyond the first, at the simulator.
func refetched(s *sim.Sim) int {
	n := 0
	for _, a := range s.Accounts() {
		for _, v := range s.FetchCounts(a.ID) {
			if v > 1 {
				n += int(v - 1)
			}
		}
	}
	return n
}

// allShardsDone reports whether every shard of the leader's replica finished its task
// with nothing deferred and no claim held.
func allShardsDone(c *testcluster.Cluster) bool {
	l := c.Leader()
	if l == nil {
		return false
	}
	shards, err := l.Node().FSM().Shards(fsm.ShardFilter{})
	if err != nil || len(shards) == 0 {
		return false
	}
	for _, s := range shards {
		if s.Checkpoint.State != fsm.StateDone || s.Checkpoint.Reason != "" || s.Owner != "" {
			return false
		}
	}
	return true
}

// BenchmarkQuotaUse measures how much of the carriers' cluster-wide quota three members
// turn into synced cards while a backlog of due cards lasts: cards answered per second
// over the steady middle of the run (from 10% to 90% of the backlog answered) divided
// by the limit, the sum over accounts of calls/s times cards per call. The simulator
// counts calls over quota (rejected).
func BenchmarkQuotaUse(b *testing.B) {
	cards := 100_000
	if testing.Short() {
		cards = 10_000
	}
	b.Run("batching", func(b *testing.B) { quotaRun(b, cards, nil, 0, false) })
	// The same cards imported interleaved across the accounts instead of account by
	// account, so that the shards working at any moment use every account.
	b.Run("batching-interleaved", func(b *testing.B) { quotaRun(b, cards, nil, 0, true) })
	// Each node's limiter at a static share of the rate, split by the due work the ring
	// gives it, instead of the leader's shared bucket.
	b.Run("static-split", func(b *testing.B) {
		quotaRun(b, cards, func(s *syncer.Config) { s.SharedTokens = false }, 0, false)
	})
	// One card per call: the same backlog for a fixed window (it cannot finish).
	b.Run("no-batching", func(b *testing.B) {
		quotaRun(b, cards, func(s *syncer.Config) { s.Batching = false }, window(b), false)
	})
	// Every member uses the whole quota: the carrier rejects what is over.
	b.Run("no-share", func(b *testing.B) {
		quotaRun(b, cards, func(s *syncer.Config) { s.ShareQuota = false }, window(b), false)
	})
}

func window(testing.TB) time.Duration {
	if testing.Short() {
		return 10 * time.Second
	}
	return 30 * time.Second
}

// quotaRun syncs a backlog of cards on 3 members. With fixed == 0 it runs until every
// card is answered and measures from 10% to 90% of them; otherwise it measures the
// window of length fixed that starts 5 s after the first answered card (or at 10%).
// The catalog is the test cluster's (cards imported account by account) unless
// interleave imports them round-robin over the accounts.
func quotaRun(b *testing.B, cards int, adjust func(*syncer.Config), fixed time.Duration, interleave bool) {
	specs := quotaAccounts(cards)
	limitCards, limitCalls := quotaLimit(specs)
	for i := 0; i < b.N; i++ {
		c := testcluster.New(b, testcluster.Options{Nodes: benchNodes(), SimAccounts: specs, Sync: adjust, NoCatalog: interleave})
		total := float64(len(c.Catalog.Cards))
		if interleave {
			total = float64(publishInterleaved(b, c, specs))
		}
		b.ResetTimer()
		type sample struct {
			at    time.Time
			cards float64
			sim   simTotals
		}
		var start, end sample
		var first time.Time
		// While measuring: how often each account had no request queued at the leader's
		// bucket (a rate that went unused for want of work ready on the members).
		dry, samples := map[string]int{}, 0
		var dryAt []string // per sample, the accounts with none queued
		// Per sample and account (the first three): shards claimed with at least a tenth
		// of their cards on the account, and such shards due (running or not).
		var runAt, leftAt [][3]int
		deadline := time.Now().Add(4 * time.Minute)
		for {
			now := time.Now()
			if now.After(deadline) {
				b.Fatalf("backlog not answered in time: %.0f of %.0f cards", cardsAnswered(c), total)
			}
			got := cardsAnswered(c)
			if got > 0 && first.IsZero() {
				first = now
			}
			if start.at.IsZero() && (got >= 0.1*total || (fixed > 0 && !first.IsZero() && now.Sub(first) >= 5*time.Second)) {
				start = sample{now, got, simCounts(c.Sim)}
				c.Sim.RecordCalls(true)
			}
			if !start.at.IsZero() && (got >= 0.9*total || (fixed > 0 && now.Sub(start.at) >= fixed)) {
				end = sample{now, got, simCounts(c.Sim)}
				break
			}
			if l := c.Leader(); !start.at.IsZero() && l != nil {
				st := l.Node().QuotaStats()
				samples++
				var none []string
				for _, a := range specs {
					if st.Waiting[a.ID] == 0 {
						dry[a.ID]++
						none = append(none, a.ID)
					}
				}
				dryAt = append(dryAt, strings.Join(none, ","))
				var run, left [3]int
				if shards, err := l.Node().FSM().Shards(fsm.ShardFilter{}); err == nil {
					for _, sh := range shards {
						for _, ac := range sh.Accounts {
							for k := range 3 {
								if ac.Account != specs[k].ID || ac.Cards*10 < sh.Cards {
									continue
								}
								if sh.Owner != "" {
									run[k]++
								}
								if sh.Checkpoint.State == fsm.StateRunning || !sh.Checkpoint.NextRunAt.After(now) {
									left[k]++
								}
							}
						}
					}
				}
				runAt, leftAt = append(runAt, run), append(leftAt, left)
			}
			time.Sleep(50 * time.Millisecond)
		}
		b.StopTimer()
		secs := end.at.Sub(start.at).Seconds()
		rate := (end.cards - start.cards) / secs
		calls := float64(end.sim.accepted-start.sim.accepted) / secs
		st := simCounts(c.Sim)
		b.ReportMetric(rate/limitCards, "quota-use")
		b.ReportMetric(rate, "cards/s")
		b.ReportMetric(limitCards, "limit-cards/s")
		b.ReportMetric(calls/limitCalls, "calls-use")
		b.ReportMetric(float64(st.rejected), "rejected")
		b.ReportMetric(secs, "window-s")
		b.Logf("%d cards over %d accounts: %.0f cards/s answered from %.0f to %.0f cards (%.1f s), limit %.1f cards/s (%.1f calls/s): use %.3f; accepted calls/s %.2f (%.3f of the quota); rejected %d (rate %d, concurrency %d)",
			int(total), len(specs), rate, start.cards, end.cards, secs, limitCards, limitCalls, rate/limitCards,
			calls, calls/limitCalls, st.rejected, st.rejectedRate, st.rejectedConc)
		b.Logf("per account: %s", accountUse(specs, start.sim, end.sim, secs))
		b.Logf("batches: %s", batchFill(specs, c.Sim.Calls()))
		if samples > 0 {
			var parts []string
			for _, a := range specs {
				parts = append(parts, fmt.Sprintf("%s %.2f", a.ID, float64(dry[a.ID])/float64(samples)))
			}
			b.Logf("share of %d samples with no request queued at the leader's bucket: %s", samples, strings.Join(parts, ", "))
			// The same by tenths of the window, for the accounts with batches.
			var tenths []string
			for d := range 10 {
				lo, hi := d*len(dryAt)/10, (d+1)*len(dryAt)/10
				counts := map[string]int{}
				for _, none := range dryAt[lo:hi] {
					for _, id := range strings.Split(none, ",") {
						counts[id]++
					}
				}
				var p []string
				for _, a := range specs[:3] {
					p = append(p, fmt.Sprintf("%.2f", float64(counts[a.ID])/float64(max(1, hi-lo))))
				}
				tenths = append(tenths, strings.Join(p, "/"))
			}
			b.Logf("by tenth of the window (%s/%s/%s): %s", specs[0].ID, specs[1].ID, specs[2].ID, strings.Join(tenths, " "))
			// Shards claimed / due with each account's cards, mean by tenth.
			var work []string
			for d := range 10 {
				lo, hi := d*len(runAt)/10, (d+1)*len(runAt)/10
				var p []string
				for k := range 3 {
					r, l := 0, 0
					for _, x := range runAt[lo:hi] {
						r += x[k]
					}
					for _, x := range leftAt[lo:hi] {
						l += x[k]
					}
					n := float64(max(1, hi-lo))
					p = append(p, fmt.Sprintf("%.1f:%.0f", float64(r)/n, float64(l)/n))
				}
				work = append(work, strings.Join(p, "/"))
			}
			b.Logf("shards claimed:due with each account's cards, by tenth: %s", strings.Join(work, " "))
		}
		c.Close()
	}
}

// publishInterleaved publishes the test cluster's catalog with its cards reordered
// round-robin over the accounts, and returns how many cards it has.
func publishInterleaved(b *testing.B, c *testcluster.Cluster, specs []sim.AccountSpec) int {
	_, cat := agent.DevCatalog(c.Sim, specs)
	byAccount := map[string][]fsm.CardImport{}
	for _, card := range cat.Cards {
		byAccount[card.Account] = append(byAccount[card.Account], card)
	}
	// Each account's cards are spread evenly over the whole import.
	type pos struct {
		at   float64
		card fsm.CardImport
	}
	var all []pos
	for _, cards := range byAccount {
		for i, card := range cards {
			all = append(all, pos{(float64(i) + 0.5) / float64(len(cards)), card})
		}
	}
	sort.SliceStable(all, func(i, j int) bool { return all[i].at < all[j].at })
	cat.Cards = cat.Cards[:0]
	for _, p := range all {
		cat.Cards = append(cat.Cards, p.card)
	}
	l := c.WaitLeader(60 * time.Second)
	agent.PublishCatalog(testcluster.Ctx(b, 2*time.Minute), l.Node(), hclog.NewNullLogger(), cat)
	return len(cat.Cards)
}

// BenchmarkTakeover hard-kills a member that holds running shards while a backlog runs
// and measures the time from the kill until every shard it held made progress under a
// new owner (its first flush with answered cards, a moved cursor or the task finished),
// on the leader's replica.
func BenchmarkTakeover(b *testing.B) {
	fast, lan := 20, 3
	if testing.Short() {
		fast, lan = 3, 1
	}
	b.Run("fast", func(b *testing.B) { takeoverRun(b, "fast", fast) })
	b.Run("lan", func(b *testing.B) { takeoverRun(b, "lan", lan) })
}

func takeoverRun(b *testing.B, profile string, trials int) {
	for i := 0; i < b.N; i++ {
		c := testcluster.New(b, testcluster.Options{Nodes: 3, Cards: 20_000, QuotaScale: 0.25, Profile: profile})
		c.WaitStable(60 * time.Second)
		var took, fenced []time.Duration
		var kills []time.Time
		var trialsText []string // one entry per trial; logged as one line (benchmark logs keep only 10)
		notTrials := 0
		b.ResetTimer()
		for kill := 1; len(took) < trials; kill++ {
			if kill > 2*trials {
				b.Fatalf("%d kills for %d trials: the killed members kept finishing their shards themselves", kill-1, len(took))
			}
			t := takeoverTrial(b, c, len(took) < trials-1)
			kills = append(kills, t.at)
			if t.shards == 0 {
				notTrials++ // the killed member finished every shard it held itself
				continue
			}
			took = append(took, t.took)
			fenced = append(fenced, t.fenced)
			trialsText = append(trialsText, fmt.Sprintf("%d: %d shards %v/%v", len(took), t.shards,
				t.fenced.Round(10*time.Millisecond), t.took.Round(10*time.Millisecond)))
		}
		b.StopTimer()
		b.Logf("%s trials (shards held, fenced/progressing after the kill; %d kills not trials, the member finished its shards itself): %s",
			profile, notTrials, strings.Join(trialsText, ", "))
		sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
		sort.Slice(fenced, func(i, j int) bool { return fenced[i] < fenced[j] })
		b.ReportMetric(ms(percentile(fenced, 0.50)), "fenced-p50-ms")
		b.ReportMetric(ms(percentile(fenced, 0.99)), "fenced-p99-ms")
		b.ReportMetric(ms(percentile(took, 0.50)), "p50-ms")
		b.ReportMetric(ms(percentile(took, 0.99)), "p99-ms")
		b.ReportMetric(ms(took[len(took)-1]), "max-ms")
		b.ReportMetric(float64(len(took)), "trials")
		// Calls over quota at the carrier: none, kills and restarts included.
		st := simCounts(c.Sim)
		b.ReportMetric(float64(st.rejected), "rejected")
		if st.rejected > 0 {
			b.Logf("calls over quota at the simulator: %d (rate %d, concurrency %d): %s", st.rejected, st.rejectedRate, st.rejectedConc, rejectedWhen(c.Sim, kills))
		}
		c.Close()
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// percentile is the nearest-rank percentile of sorted durations.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// takeover is one trial: the time until every held shard progressed under a new owner,
// the time until every one was fenced from the killed member (revoked or re-claimed),
// and how many shards it held.
type takeover struct {
	took, fenced time.Duration
	shards       int
	at           time.Time // the kill
}

// rejectedWhen names, for each call the simulator refused as over quota, its account
// and the second it fell in, counted from the kill before it.
func rejectedWhen(s *sim.Sim, kills []time.Time) string {
	var parts []string
	for id, a := range s.Stats().Accounts {
		for _, sec := range a.PerSecond {
			if sec.Rejected == 0 {
				continue
			}
			at := time.Unix(sec.Unix, 0)
			since := "before the first kill"
			for i := len(kills) - 1; i >= 0; i-- {
				if !kills[i].After(at.Add(time.Second)) {
					since = fmt.Sprintf("%v after kill %d", at.Sub(kills[i]).Round(time.Second), i+1)
					break
				}
			}
			parts = append(parts, fmt.Sprintf("%s %d in the second %s", id, sec.Rejected, since))
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

type heldShard struct {
	epoch  uint64
	cursor string
	work   uint64 // cards synced, skipped or failed in the task so far
}

func taskWork(ck fsm.Checkpoint) uint64 { return ck.Synced + ck.Skipped + ck.Failed }

// takeoverTrial waits until every member runs shards, kills one non-leader member holding
// running shards and waits for every one of them to progress under another owner. A
// shard whose task the member's last flush finished (it lands as the member dies) has
// nothing to take over and is left out; when that leaves none, the kill is no trial (shards 0). With restart (every
// trial but the last, and a kill that is no trial) it then restarts the member and
// waits for the cluster to be stable again.
func takeoverTrial(b *testing.B, c *testcluster.Cluster, restart bool) takeover {
	var victim *testcluster.Member
	held := map[string]heldShard{}
	testcluster.WaitFor(b, 90*time.Second, "a non-leader member holding running shards", func() bool {
		l := c.Leader()
		if l == nil {
			return false
		}
		refillBacklog(b, c, l.Node())
		shards, err := l.Node().FSM().Shards(fsm.ShardFilter{})
		if err != nil {
			return false
		}
		now := time.Now()
		// Every member works shards, with its quota shares in force: a member restarted
		// by the last trial claims at once (the claim lifts the revocation of its
		// death) but gets its concurrency slots only after the call grace, and a kill
		// before then measures that grace, not the takeover. A slot of every account
		// that has one for each member is the sign.
		working := map[string]bool{}
		for _, s := range shards {
			if s.LiveClaim(now) {
				working[s.Owner] = true
			}
		}
		accts, err := l.Node().FSM().Accounts()
		if err != nil {
			return false
		}
		up := c.Up()
		for _, m := range up {
			a := m.Agent()
			if !working[m.Name] || a == nil {
				return false
			}
			slots := slotsOf(a)
			for _, ac := range accts {
				if ac.Concurrency >= len(up) && slots[ac.ID] == 0 {
					return false
				}
			}
		}
		for _, m := range c.Up() {
			if m == l {
				continue
			}
			clear(held)
			for _, s := range shards {
				if s.Owner == m.Name && s.LiveClaim(now) && s.Checkpoint.State == fsm.StateRunning && s.Checkpoint.Cursor != "" {
					held[s.ID] = heldShard{epoch: s.Epoch, cursor: s.Checkpoint.Cursor, work: taskWork(s.Checkpoint)}
				}
			}
			if len(held) > 0 {
				victim = m
				return true
			}
		}
		return false
	})
	// The clock starts with the kill: Kill returns only once the member's sync loop has
	// ended (its carrier calls aborted), and by then the others may already have fenced
	// and even finished its shards.
	killed := time.Now()
	c.Kill(victim)
	var claimed time.Duration
	finished := map[string]bool{}
	movedAt := map[string]time.Duration{}
	claimedAt := map[string]string{} // shard -> when a new owner claimed it, and that owner's slots of the shard's accounts
	testcluster.WaitFor(b, 60*time.Second, "every shard of the killed member progressing under a new owner", func() bool {
		l := c.Leader()
		if l == nil {
			return false
		}
		allClaimed, allMoved := true, true
		for id, h := range held {
			s, err := l.Node().FSM().Shard(id)
			if err != nil {
				return false
			}
			if s.Epoch == h.epoch && s.Owner == "" && s.Checkpoint.State == fsm.StateDone {
				finished[id] = true // the killed member's own last flush ended the task
				continue
			}
			// The new owner's first flush with work in it: cards answered (the walk works
			// a shard's accounts side by side, so the cursor can trail the answers), the
			// cursor moved, or the task finished.
			moved := s.Checkpoint.Cursor != h.cursor || s.Checkpoint.State == fsm.StateDone || taskWork(s.Checkpoint) > h.work
			if s.Epoch <= h.epoch || s.Owner == victim.Name {
				allClaimed = false
			} else if _, seen := claimedAt[id]; !seen && s.Owner != "" {
				slots := ""
				for _, m := range c.Up() {
					if a := m.Agent(); m.Name == s.Owner && a != nil {
						have := slotsOf(a)
						for _, ac := range s.Accounts {
							if n, ok := have[ac.Account]; ok && ac.Cards > 0 {
								slots += fmt.Sprintf(" %s:%d", ac.Account, n)
							}
						}
					}
				}
				claimedAt[id] = fmt.Sprintf("claimed by %s after %v (slots%s)", s.Owner, time.Since(killed).Round(time.Millisecond), slots)
			}
			if s.Epoch <= h.epoch || !moved || s.Owner == victim.Name || !s.Checkpoint.UpdatedAt.After(killed) {
				allMoved = false
			} else if _, seen := movedAt[id]; !seen {
				movedAt[id] = time.Since(killed)
			}
		}
		if allClaimed && claimed == 0 {
			claimed = time.Since(killed)
		}
		return allMoved
	})
	took := time.Since(killed)
	shards := len(held) - len(finished)
	if took > 3*time.Second {
		// Say how each shard went, for the analysis of the tail (bench/NOTES.md).
		var parts []string
		if l := c.Leader(); l != nil {
			for id := range held {
				if finished[id] {
					continue
				}
				if s, err := l.Node().FSM().Shard(id); err == nil {
					parts = append(parts, fmt.Sprintf("%s (cards per account %v): %s, progressed after %v; reason %q",
						id, s.Accounts, claimedAt[id], movedAt[id].Round(time.Millisecond), s.Checkpoint.Reason))
				}
			}
		}
		b.Logf("slow trial (%v): %s", took.Round(time.Millisecond), strings.Join(parts, "; "))
	}
	if restart || shards == 0 {
		c.Restart(victim)
		c.WaitStable(60 * time.Second)
	}
	return takeover{took, claimed, shards, killed}
}

// slotsOf is a member's concurrency slots in force, per account.
func slotsOf(a *agent.Agent) map[string]int {
	slots := map[string]int{}
	for _, sh := range a.Syncer.Shares() {
		slots[sh.Account] = sh.Concurrency
	}
	return slots
}

// refillBacklog makes every card due again once fewer than a third of the shards have
// work left, so that a long series of takeovers always runs under load.
func refillBacklog(b *testing.B, c *testcluster.Cluster, n *node.Node) {
	shards, err := n.FSM().Shards(fsm.ShardFilter{})
	if err != nil || len(shards) == 0 {
		return
	}
	busy := 0
	now := time.Now()
	for _, s := range shards {
		if s.Checkpoint.State == fsm.StateRunning || !s.Checkpoint.NextRunAt.After(now) {
			busy++
		}
	}
	if busy*3 >= len(shards) {
		return
	}
	ents, err := n.FSM().Enterprises()
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, e := range ents {
		if _, err := n.ProposeEncoded(ctx, fsm.TypeResync, fsm.Resync{Enterprise: e.ID}); err != nil {
			b.Logf("resync %s: %v", e.ID, err)
		}
	}
}

// BenchmarkIdleCost loads 1,000,000 cards (-short: 100,000) that are all synced and
// valid for a day into 3 members, then measures for 20 s (-short: 5 s) what the members
// spend while nothing is due: the syncer's poll round (from its histogram), the process CPU per member per
// round, and the process RSS (all members share this process, so RSS/3 is an upper
// bound per member).
func BenchmarkIdleCost(b *testing.B) {
	cards := 1_000_000
	measure := 20 * time.Second
	if testing.Short() {
		cards = 100_000
		measure = 5 * time.Second
	}
	for i := 0; i < b.N; i++ {
		idleRun(b, cards, measure)
	}
}

const idleTTL = 24 * time.Hour

func idleRun(b *testing.B, cards int, measure time.Duration) {
	specs := quotaAccounts(1000)
	for i := range specs {
		specs[i].Cards = 10 // the loaded cards are never due: the simulator needs none of them
	}
	c := testcluster.New(b, testcluster.Options{Nodes: 3, SimAccounts: specs, NoCatalog: true,
		// While the loader marks the cards synced, the enterprises' inventories are not ready:
		// a member that claims a shard first releases it and leaves it for a while.
		Sync: func(s *syncer.Config) { s.DependencyRetry = 10 * time.Minute }})
	c.WaitStable(60 * time.Second)
	l := c.WaitLeader(30 * time.Second)
	n := l.Node()
	ctx := testcluster.Ctx(b, 20*time.Minute)

	_, cat := agent.DevCatalog(c.Sim, specs)
	for _, a := range cat.Accounts {
		a.TTL = idleTTL
		if _, err := n.ProposeEncoded(ctx, fsm.TypeUpsertAccount, fsm.UpsertAccount{Account: a}); err != nil {
			b.Fatalf("account %s: %v", a.ID, err)
		}
	}
	setReady := func(ready bool) {
		for _, e := range cat.Enterprises {
			e.InventoryReady = ready
			if _, err := n.ProposeEncoded(ctx, fsm.TypeUpsertEnterprise, e); err != nil {
				b.Fatalf("enterprise %s: %v", e.ID, err)
			}
		}
	}
	setReady(false)

	loadStart := time.Now()
	imports := make([]fsm.CardImport, cards)
	carriers := []string{sim.OneLink, sim.Unicom, sim.Telecom}
	for j := range imports {
		e := cat.Enterprises[j%len(cat.Enterprises)]
		imports[j] = fsm.CardImport{ICCID: fmt.Sprintf("898610%014d", j), Enterprise: e.ID,
			Account: e.Accounts[carriers[j%len(carriers)]], MSISDN: fmt.Sprintf("1440%09d", j)}
	}
	if _, _, err := n.Import(ctx, imports, nil, nil); err != nil {
		b.Fatalf("import: %v", err)
	}
	imports = nil
	imported := time.Since(loadStart)
	if err := markAllSynced(ctx, n); err != nil {
		b.Fatalf("mark synced: %v", err)
	}
	setReady(true)
	b.Logf("loaded %d cards in %v (import %v), all synced and valid for %v", cards, time.Since(loadStart).Round(time.Second), imported.Round(time.Second), idleTTL)

	testcluster.WaitFor(b, 60*time.Second, "no shard due or claimed on any member", func() bool {
		for _, m := range c.Up() {
			shards, err := m.Node().FSM().Shards(fsm.ShardFilter{})
			if err != nil || len(shards) == 0 {
				return false
			}
			now := time.Now()
			for _, s := range shards {
				if s.Owner != "" || s.Checkpoint.State == fsm.StateRunning || !s.Checkpoint.NextRunAt.After(now) {
					return false
				}
			}
		}
		return true
	})
	// Let the members settle (snapshots, compaction), then drop the loader's garbage.
	time.Sleep(2 * time.Second)
	runtime.GC()
	debug.FreeOSMemory()
	callsBefore := simCounts(c.Sim).calls

	b.ResetTimer()
	_, rounds0, pollSum0 := benchMetric(c, "cardsync_syncer_poll_seconds", nil)
	cpu0 := processCPU()
	t0 := time.Now()
	time.Sleep(measure)
	_, rounds1, pollSum1 := benchMetric(c, "cardsync_syncer_poll_seconds", nil)
	cpu1 := processCPU()
	elapsed := time.Since(t0)
	b.StopTimer()

	rounds := rounds1 - rounds0
	nodes := float64(len(c.Up()))
	if rounds == 0 {
		b.Fatal("no poll round in the measurement window")
	}
	rss, hwm := procStatusKB("VmRSS"), procStatusKB("VmHWM")
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	cpuPerRound := (cpu1 - cpu0).Seconds() / rounds // process CPU over all rounds of all members
	b.ReportMetric((pollSum1-pollSum0)/rounds*1000, "poll-ms")
	b.ReportMetric(cpuPerRound*1000, "cpu-ms/round/node")
	b.ReportMetric((cpu1-cpu0).Seconds()/elapsed.Seconds()/nodes, "cpu-cores/node")
	b.ReportMetric(rss/1024/nodes, "rss-MB/node")
	b.ReportMetric(hwm/1024/nodes, "peak-rss-MB/node")
	b.ReportMetric(float64(ms.HeapInuse)/(1<<20)/nodes, "heap-MB/node")
	b.ReportMetric(float64(cards), "cards")
	b.Logf("%d cards on %.0f members, %.0f poll rounds in %v (%.1f per member per s): poll %.2f ms wall, process CPU %.2f ms per member per round, %.3f cores per member; RSS %.0f MB (peak %.0f MB), Go heap in use %.0f MB; carrier calls while idle: %d",
		cards, nodes, rounds, elapsed.Round(time.Millisecond), rounds/nodes/elapsed.Seconds(), (pollSum1-pollSum0)/rounds*1000, cpuPerRound*1000,
		(cpu1-cpu0).Seconds()/elapsed.Seconds()/nodes, rss/1024, hwm/1024, float64(ms.HeapInuse)/(1<<20), simCounts(c.Sim).calls-callsBefore)
	c.Close()
}

// markAllSynced finishes one task on every shard with a result for each of its cards,
// as a sync would: claim, start the task, flush every card's data as done and release.
// Groups run in parallel, the shards of a group one after another.
func markAllSynced(ctx context.Context, n *node.Node) error {
	shards, err := n.FSM().Shards(fsm.ShardFilter{})
	if err != nil {
		return err
	}
	byGroup := map[int][]string{}
	for _, s := range shards {
		byGroup[s.Group] = append(byGroup[s.Group], s.ID)
	}
	errs := make(chan error, len(byGroup))
	var wg sync.WaitGroup
	for _, ids := range byGroup {
		wg.Add(1)
		go func(ids []string) {
			defer wg.Done()
			for _, id := range ids {
				if err := markShardSynced(ctx, n, id); err != nil {
					errs <- fmt.Errorf("shard %s: %w", id, err)
					return
				}
			}
		}(ids)
	}
	wg.Wait()
	close(errs)
	return <-errs
}

const loaderNode = "idle-bench-loader"

func markShardSynced(ctx context.Context, n *node.Node, id string) error {
	var epoch uint64
	for {
		s, err := n.FSM().Shard(id)
		if err != nil {
			return err
		}
		res, err := n.ProposeEncoded(ctx, fsm.TypeClaim, fsm.Claim{Shard: id, Node: loaderNode, Epoch: s.Epoch, Lease: time.Minute})
		if err == nil {
			epoch = res.Epoch
			break
		}
		// A member's syncer may hold the shard for a moment (it releases at once: the
		// inventory is not ready); the group may be busy the same way.
		if !errors.Is(err, fsm.ErrClaimedElsewhere) && !errors.Is(err, fsm.ErrGroupBusy) && !errors.Is(err, fsm.ErrStaleEpoch) {
			return fmt.Errorf("claim: %w", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	res, err := n.ProposeEncoded(ctx, fsm.TypeStartTask, fsm.StartTask{Shard: id, Node: loaderNode, Epoch: epoch})
	if err != nil {
		return fmt.Errorf("start task: %w", err)
	}
	task := res.TaskID
	now := time.Now().UTC()
	after := ""
	for {
		cards, err := n.FSM().ShardCards(id, after, fsm.MaxPage)
		if err != nil {
			return err
		}
		if len(cards) == 0 {
			break
		}
		results := make([]fsm.CardResult, len(cards))
		for i, card := range cards {
			results[i] = fsm.CardResult{ICCID: card.ICCID, Data: &fsm.CardData{Status: "active", RawStatus: "2",
				RatePlan: "IoT-1GB", DataUsedBytes: int64(i) * 4096, UsagePeriod: now.Format("2006-01"),
				ActivatedAt: now.Add(-90 * 24 * time.Hour), CarrierModifiedAt: now}}
		}
		after = cards[len(cards)-1].ICCID
		more, _ := n.FSM().ShardCards(id, after, 1)
		last := len(more) == 0
		if _, err := n.ProposeEncoded(ctx, fsm.TypeFlush, fsm.Flush{Shard: id, Node: loaderNode, Epoch: epoch, TaskID: task,
			Cursor: after, Results: results, Done: last, Release: last, Lease: time.Minute}); err != nil {
			return fmt.Errorf("flush: %w", err)
		}
		if last {
			break
		}
	}
	return nil
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procStatusKB reads a "kB" field of /proc/self/status (0 when unavailable).
func procStatusKB(field string) float64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				v, _ := strconv.ParseFloat(f[0], 64)
				return v
			}
		}
	}
	return 0
}

// BenchmarkRollingRestart syncs a backlog on 3 members twice: undisturbed, and while
// every member in turn is stopped gracefully and restarted (waiting for a stable
// cluster in between). It reports the cards fetched more than once, the calls over
// quota and the time the restarts cost.
func BenchmarkRollingRestart(b *testing.B) {
	cards := 60_000
	if testing.Short() {
		cards = 12_000
	}
	// The three Chinese carriers' accounts: Cisco's single concurrent call goes to one
	// member, and the Cisco cards of shards the other members own wait for it to move,
	// which would time the run by share churn rather than by the restarts.
	specs := quotaAccounts(cards)[:3]
	// The backlog runs the accounts at full quota, where a call times out now and then on
	// a loaded machine: the shard's task ends with the account's cards deferred, and the
	// shard is looked at again after the syncer's DependencyRetry (30 s), in both runs
	// alike. -short looks again after 5 poll intervals, as at a shard waiting for a quota
	// share, so that the end of a short run is not that wait.
	var adjust func(*syncer.Config)
	if testing.Short() {
		adjust = func(s *syncer.Config) { s.DependencyRetry = 5 * s.PollInterval }
	}
	for i := 0; i < b.N; i++ {
		base := rollingRun(b, specs, adjust, false)
		b.ResetTimer()
		rolled := rollingRun(b, specs, adjust, true)
		b.StopTimer()
		b.ReportMetric(float64(rolled.refetched), "refetched")
		b.ReportMetric(float64(rolled.rejected), "rejected")
		b.ReportMetric(rolled.took.Seconds()-base.took.Seconds(), "lost-s")
		b.ReportMetric(base.took.Seconds(), "undisturbed-s")
		b.ReportMetric(rolled.took.Seconds(), "restarted-s")
		b.Logf("%d cards: undisturbed %.1f s (refetched %d, rejected %d); with a rolling restart %.1f s (refetched %d, rejected %d; restarts took %v)",
			cards, base.took.Seconds(), base.refetched, base.rejected, rolled.took.Seconds(), rolled.refetched, rolled.rejected, rolled.restarts.Round(time.Millisecond))
	}
}

type rollingResult struct {
	took      time.Duration
	restarts  time.Duration
	refetched int
	rejected  uint64
}

func rollingRun(b *testing.B, specs []sim.AccountSpec, adjust func(*syncer.Config), restart bool) rollingResult {
	c := testcluster.New(b, testcluster.Options{Nodes: 3, SimAccounts: specs, Sync: adjust})
	defer c.Close()
	var first time.Time
	testcluster.WaitFor(b, 60*time.Second, "the first carrier call", func() bool {
		return simCounts(c.Sim).accepted > 0
	})
	first = time.Now()
	var res rollingResult
	if restart {
		c.WaitStable(60 * time.Second)
		start := time.Now()
		for _, m := range c.Members {
			c.Stop(m)
			c.Restart(m)
			c.WaitStable(60 * time.Second)
		}
		res.restarts = time.Since(start)
		if allShardsDone(c) {
			b.Fatal("the backlog finished before the rolling restart did: make it larger")
		}
	}
	testcluster.WaitFor(b, 4*time.Minute, "every shard done", func() bool { return allShardsDone(c) })
	res.took = time.Since(first)
	res.refetched = refetched(c.Sim)
	res.rejected = simCounts(c.Sim).rejected
	return res
}

// benchNodes is the cluster size of the quota benchmark: 3, or QUOTA_NODES (1 shows what
// the quota split between nodes costs).
func benchNodes() int {
	if v, err := strconv.Atoi(os.Getenv("QUOTA_NODES")); err == nil && v > 0 {
		return v
	}
	return 3
}
