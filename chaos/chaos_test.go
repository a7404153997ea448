package chaos

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"cardsync/carrier"
	"cardsync/carrier/sim"
	"cardsync/fsm"
	"cardsync/node"
	"cardsync/syncer"
	"cardsync/testcluster"
	"cardsync/testcluster/check"
)

// Timings the run uses; the convergence bound is derived from them (see DESIGN.md).
const (
	pollInterval    = 200 * time.Millisecond
	lease           = 10 * time.Second
	backoffMax      = 4 * time.Second
	breakerOpen     = 3 * time.Second
	dependencyRetry = 3 * time.Second
	// settle covers failure detection (fast gossip profile: p99 1.9 s), a Raft election and
	// the ring and voter reconciliation after the last restart.
	settle      = 8 * time.Second
	quotaSafety = 0.97
	// minHeal is the least time between the end of a member fault and the start of the
	// next one; the next also waits until every member is back as a Raft voter.
	minHeal = 3 * time.Second
	// headroom is the part of a node's share its carrier limiter leaves unused.
	headroom = 0.05
	// callTimeout bounds each carrier HTTP call from the moment the limiter admits it. A
	// member paused with an admitted call that has not gone out yet abandons it after
	// this long, before the others can use its quota share (failure detection, at least
	// about 1 s with the fast profile, plus the share grace of 2 polls + 1 s); it is
	// also the call grace a moving concurrency slot waits (2 calls). The same
	// rule holds for the defaults: carrier timeout 5 s against lan detection (5-6 s)
	// plus a 3 s grace.
	callTimeout = time.Second
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func TestChaos(t *testing.T) {
	seedStr := os.Getenv("CARDSYNC_CHAOS_SEED")
	if seedStr == "" {
		t.Skip("set CARDSYNC_CHAOS_SEED to run the chaos test")
	}
	seed, err := strconv.ParseUint(seedStr, 10, 64)
	if err != nil {
		t.Fatalf("CARDSYNC_CHAOS_SEED: %v", err)
	}
	nodes := envInt("CARDSYNC_CHAOS_NODES", 5)
	runFor := time.Duration(envInt("CARDSYNC_CHAOS_SECONDS", 60)) * time.Second
	rng := rand.New(rand.NewPCG(seed, 0xc4a05))
	maxVoters := min(5, nodes-(1-nodes%2))

	c := testcluster.New(t, testcluster.Options{
		Nodes: nodes, Cards: 6000, QuotaScale: 1, Faults: true, BootstrapExpect: true,
		Accounts: func(as []carrier.AccountConfig) {
			for i := range as {
				as[i].BackoffMax = backoffMax
				as[i].BreakerOpen = breakerOpen
				as[i].Headroom = headroom
				as[i].Timeout = callTimeout
			}
		},
		Sync: func(s *syncer.Config) {
			s.PollInterval = pollInterval
			s.Lease = lease
			s.DependencyRetry = dependencyRetry
			s.QuotaSafety = quotaSafety
		},
		Node: func(_ int, nc *node.Config) {
			// Keep the whole log so that it can be replayed from index 1.
			nc.SnapshotThreshold = 1 << 40
			nc.SnapshotInterval = time.Hour
			nc.MaxVoters = maxVoters
		},
	})
	c.Sim.RecordCalls(true)
	f := c.Faults()
	c.WaitStable(60 * time.Second)
	testcluster.WaitFor(t, 60*time.Second, "inventory imported", func() bool {
		l := c.Leader()
		if l == nil {
			return false
		}
		n, err := l.Node().FSM().Counts()
		return err == nil && n.Cards >= len(c.Catalog.Cards)
	})
	t.Logf("seed %d: %d nodes, %d cards, faults for %v", seed, nodes, len(c.Catalog.Cards), runFor)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	resyncs := 0
	start := time.Now()
	names := func(ms []*testcluster.Member) []string {
		out := make([]string, len(ms))
		for i, m := range ms {
			out[i] = m.Name
		}
		return out
	}
	// At most a minority of members is faulty at a time (down, paused or cut off); carrier
	// faults overlap freely.
	minority := (nodes - 1) / 2
	type nodeFault struct {
		until time.Time
		end   func()
	}
	var active []nodeFault
	var lastEnd time.Time
	accounts := c.Sim.Accounts()
	var carrierUntil time.Time
	ents := c.Catalog.Enterprises
	for time.Since(start) < runFor {
		now := time.Now()
		keep := active[:0]
		for _, a := range active {
			if now.After(a.until) {
				a.end()
				lastEnd = time.Now()
			} else {
				keep = append(keep, a)
			}
		}
		active = keep
		if !carrierUntil.IsZero() && now.After(carrierUntil) {
			f.ClearCarrier()
			carrierUntil = time.Time{}
		}
		// Keep a backlog: make an enterprise's cards due again now and then.
		if rng.IntN(3) == 0 {
			if m := c.Leader(); m != nil {
				e := ents[rng.IntN(len(ents))].ID
				rctx, rcancel := context.WithTimeout(ctx, 3*time.Second)
				if _, err := m.Node().ProposeEncoded(rctx, fsm.TypeResync, fsm.Resync{Enterprise: e}); err == nil {
					resyncs++
				}
				rcancel()
			}
		}
		hold := time.Duration(2000+rng.IntN(6000)) * time.Millisecond
		if len(active) < minority && time.Since(lastEnd) >= minHeal && healed(c, maxVoters) {
			up := c.Up()
			sort.Slice(up, func(i, j int) bool { return up[i].Index < up[j].Index })
			victim := up[rng.IntN(len(up))]
			others := names(up)
			for i, n := range others {
				if n == victim.Name {
					others = append(others[:i:i], others[i+1:]...)
					break
				}
			}
			switch rng.IntN(7) {
			case 0:
				c.Kill(victim)
				f.Count(testcluster.FaultKill)
				f.Logf("fault: kill %s", victim.Name)
				active = append(active, nodeFault{now.Add(hold), func() { restart(t, c, victim) }})
			case 1:
				c.Stop(victim)
				f.Count(testcluster.FaultStop)
				f.Logf("fault: stop %s", victim.Name)
				active = append(active, nodeFault{now.Add(hold), func() { restart(t, c, victim) }})
			case 2:
				f.Pause(victim.Name)
				active = append(active, nodeFault{now.Add(hold), func() { f.Resume(victim.Name) }})
			case 3:
				f.Partition([]string{victim.Name}, others)
				active = append(active, nodeFault{now.Add(hold), f.HealNetwork})
			case 4:
				if rng.IntN(2) == 0 {
					f.PartitionOneWay([]string{victim.Name}, others)
				} else {
					f.PartitionOneWay(others, []string{victim.Name})
				}
				active = append(active, nodeFault{now.Add(hold), f.HealNetwork})
			case 5:
				f.Slow([]string{victim.Name}, others, time.Duration(20+rng.IntN(180))*time.Millisecond)
				active = append(active, nodeFault{now.Add(hold), f.HealNetwork})
			case 6:
				// Leader pause: the zombie most likely to hold claims and leadership.
				if l := c.Leader(); l != nil {
					victim = l
				}
				f.Pause(victim.Name)
				active = append(active, nodeFault{now.Add(hold), func() { f.Resume(victim.Name) }})
			}
		}
		if carrierUntil.IsZero() && rng.IntN(2) == 0 {
			acct := accounts[rng.IntN(len(accounts))].ID
			carrierUntil = now.Add(time.Duration(1000+rng.IntN(4000)) * time.Millisecond)
			var err error
			switch rng.IntN(4) {
			case 0:
				kinds := []string{sim.FaultRateLimited, sim.FaultAuthExpired, sim.FaultTransient5xx, sim.FaultHTMLBody, sim.FaultTruncatedBody, sim.FaultTimeout}
				rates := map[string]float64{}
				for _, k := range kinds {
					if rng.IntN(2) == 0 {
						rates[k] = 0.05 + rng.Float64()*0.1
					}
				}
				rates[sim.FaultNotFound] = rng.Float64() * 0.05
				err = f.CarrierFaults(acct, sim.Faults{Rates: rates})
			case 1:
				d := time.Duration(50+rng.IntN(400)) * time.Millisecond
				err = f.CarrierFaults(acct, sim.Faults{LatencyMin: sim.Duration(d / 2), LatencyMax: sim.Duration(d)})
			case 2:
				err = f.CarrierFaults(acct, sim.Faults{Outage: true})
			case 3:
				err = f.ExpireTokens(acct)
			}
			if err != nil {
				t.Fatalf("carrier fault: %v", err)
			}
		}
		select {
		case <-time.After(time.Duration(1000+rng.IntN(2000)) * time.Millisecond):
		case <-ctx.Done():
		}
	}

	// Stop the faults: heal, resume, restart whatever is down.
	for _, a := range active {
		a.end()
	}
	f.HealAll()
	for _, m := range c.Members {
		if !m.Up() {
			restart(t, c, m)
		}
	}
	stopped := time.Now()
	bound := convergenceBound(t, c, stopped)
	f.Logf("faults stopped after %v; convergence bound %v", stopped.Sub(start).Round(time.Second), bound)

	// Wait for convergence (or the bound to pass), then for the replicas to agree.
	deadline := stopped.Add(bound + 2*time.Second)
	var cards []fsm.Card
	for {
		cards = allCards(c)
		if cards != nil && len(check.Converged(cards, stopped, bound, time.Now().Add(bound))) == 0 && allSyncedSince(cards, stopped) {
			break
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	checkedAt := time.Now()
	cards = allCards(c)
	if cards == nil {
		t.Errorf("no leader to read the cards from %v after the faults stopped", time.Since(stopped).Round(time.Second))
		testcluster.Eventually(60*time.Second, func() bool { cards = allCards(c); return cards != nil })
	}
	converged := time.Since(stopped)
	var digests []check.Digest
	caughtUp := testcluster.Eventually(60*time.Second, func() bool {
		digests = c.Digests()
		if len(digests) < len(c.Members) {
			return false
		}
		for _, d := range digests[1:] {
			if d.Index != digests[0].Index {
				return false
			}
		}
		return true
	})
	if late := check.Converged(cards, stopped, bound, checkedAt); len(late) > 0 {
		diagnose(t, c, cards, stopped)
	}
	if !caughtUp {
		t.Errorf("replicas still at different applied indexes a minute after convergence: %+v", digests)
	}
	finals := c.ShardViews()
	stats := c.Sim.Stats()
	calls := c.Sim.Calls()
	ops := c.Ops()

	// Stop everything and replay the longest committed log.
	for _, m := range c.Members {
		c.Kill(m)
	}
	var logs []*rlog
	for _, m := range c.Members {
		l, err := c.CommittedLog(m)
		if err != nil {
			t.Fatalf("read log: %v", err)
		}
		logs = append(logs, &rlog{m.Name, l})
	}
	sort.Slice(logs, func(i, j int) bool { return len(logs[i].logs) > len(logs[j].logs) })
	rep, err := check.Replay(logs[0].logs, t.TempDir())
	if err != nil {
		t.Fatalf("replay %s's log: %v", logs[0].name, err)
	}
	digests = append(digests, check.Digest{Node: "replay", Index: rep.Index, Sum: rep.Digest})

	quotas := map[string]check.Quota{}
	for _, a := range accounts {
		quotas[a.ID] = check.Quota{RatePerSec: a.RatePerSec, Burst: a.Burst, MaxConcurrent: a.MaxConcurrent}
	}
	h := check.History{Ops: ops, Replayed: rep, Finals: finals, Calls: calls, Stats: stats, Quotas: quotas,
		Digests: digests, Cards: cards, FaultsStopped: stopped, Bound: bound}
	report := check.Run(h, 60*time.Second)
	// Run judges convergence at the bound; judge it at the moment the cards were read.
	var vs []check.Violation
	for _, v := range report.Violations {
		if v.Check != check.CheckConvergence {
			vs = append(vs, v)
		}
	}
	vs = append(vs, check.Converged(cards, stopped, bound, checkedAt)...)
	report.Violations = vs

	var synced, fetched, callsN uint64
	for _, card := range cards {
		synced += card.SyncCount
	}
	for _, a := range stats.Accounts {
		fetched += a.CardsFetched
		callsN += a.Calls
	}
	var b strings.Builder
	fmt.Fprintf(&b, "chaos seed %d: %d nodes, %v of faults, converged %v after (bound %v)\n", seed, nodes, runFor, converged.Round(100*time.Millisecond), bound)
	fmt.Fprintf(&b, "  faults injected: %s\n", formatCounts(f.Counts()))
	fmt.Fprintf(&b, "  work: %d cards, %d card syncs recorded, %d resyncs, %d carrier calls, %d card records fetched\n", len(cards), synced, resyncs, callsN, fetched)
	fmt.Fprintf(&b, "  history: %d proposals, %d committed entries (last index %d), %d logged carrier calls, %d digests\n", len(ops), len(rep.Entries), rep.Index, len(calls), len(digests))
	b.WriteString(strings.Replace(reportString(report), "\n  violations:", "\n  violations:", 1))
	t.Log("\n" + b.String())
	if len(report.Violations) > 0 {
		diagnoseQuota(t, stats, calls)
		t.Errorf("%d invariant violations", len(report.Violations))
	}
}

// diagnoseQuota logs, for every second in which the simulator rejected a call as over
// quota, the admitted calls of that account from the second before to the second after,
// by member.
func diagnoseQuota(t *testing.T, stats sim.Stats, calls []sim.CallRecord) {
	for id, a := range stats.Accounts {
		for _, sec := range a.PerSecond {
			if sec.Rejected == 0 {
				continue
			}
			var parts []string
			for _, cr := range calls {
				if cr.Account == id && cr.Start.Unix() >= sec.Unix-1 && cr.Start.Unix() <= sec.Unix+1 {
					parts = append(parts, fmt.Sprintf("%s %s-%s", cr.Tag, cr.Start.Format("15:04:05.000"), cr.End.Format("05.000")))
				}
			}
			t.Logf("diagnose quota %s: second %s: %d calls, %d rejected; admitted calls around it: %s",
				id, time.Unix(sec.Unix, 0).Format("15:04:05"), sec.Calls, sec.Rejected, strings.Join(parts, ", "))
		}
	}
}

// healed reports whether every member runs and the leader's configuration has its full
// voter count again: a restarted member that left gracefully comes back as a non-voter and is
// promoted once caught up, and faulting another member before that would leave the
// cluster without a quorum, which no system of this size survives.
func healed(c *testcluster.Cluster, wantVoters int) bool {
	l := c.Leader()
	if l == nil {
		return false
	}
	f := l.Node().Raft().GetConfiguration()
	if f.Error() != nil {
		return false
	}
	// A voter counts only at the Raft address its member listens on now: a restarted
	// member still listed at its old address is not back yet.
	voters := map[string]string{}
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter {
			voters[string(s.ID)] = string(s.Address)
		}
	}
	n := 0
	for _, m := range c.Members {
		nd := m.Node()
		if !m.Up() || nd == nil {
			return false
		}
		if addr, ok := voters[m.Name]; ok && addr == nd.RaftAddr() {
			n++
		}
	}
	return n >= wantVoters
}

type rlog struct {
	name string
	logs []*raft.Log
}

func reportString(r check.Report) string { return r.String() }

func formatCounts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	total := 0
	for k, v := range m {
		keys = append(keys, k)
		total += v
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%d", k, m[k]))
	}
	return fmt.Sprintf("%d (%s)", total, strings.Join(parts, ", "))
}

func restart(t *testing.T, c *testcluster.Cluster, m *testcluster.Member) {
	if m.Up() {
		return
	}
	c.Restart(m)
	c.Faults().Count(testcluster.FaultRestart)
	c.Faults().Logf("fault: restart %s", m.Name)
}

func allCards(c *testcluster.Cluster) []fsm.Card {
	l := c.Leader()
	if l == nil {
		return nil
	}
	var out []fsm.Card
	after := ""
	for {
		page, next, err := l.Node().FSM().Cards(fsm.CardFilter{After: after, Limit: fsm.MaxPage})
		if err != nil {
			return nil
		}
		out = append(out, page...)
		if next == "" || len(page) == 0 {
			return out
		}
		after = next
	}
}

// allSyncedSince reports whether every card due at the stop has been synced since.
func allSyncedSince(cards []fsm.Card, stopped time.Time) bool {
	for _, c := range cards {
		if !c.SyncedAt.After(stopped) && !c.ValidUntil.After(stopped) {
			return false
		}
	}
	return true
}

// convergenceBound derives how long the cluster may take, once faults stop, to sync
// every card due then: the settle time (failure detection, election, ring), a lease (a
// claim whose owner died unnoticed runs out), the longest carrier backoff and breaker
// pause, the retry delay of deferred shards, two poll intervals, and the backlog divided
// by the quota: per account, the calls its due cards need (batch size per call) at the
// account's rate times the quota safety factor; accounts run in parallel, so the largest
// counts.
func convergenceBound(t *testing.T, c *testcluster.Cluster, stopped time.Time) time.Duration {
	cards := allCards(c)
	for cards == nil && time.Since(stopped) < 10*time.Second {
		time.Sleep(100 * time.Millisecond)
		cards = allCards(c)
	}
	due := map[string]int{}
	for _, card := range cards {
		if !card.ValidUntil.After(stopped) {
			due[card.Account]++
		}
	}
	var backlog time.Duration
	for _, a := range c.Sim.Accounts() {
		// A query of a batch costs CallsPerQuery rate-limited HTTP calls, and a node's
		// limiter runs at its share less the carrier client's headroom.
		batch := max(1, carrier.DefaultBatchSize(a.Carrier))
		calls := math.Ceil(float64(due[a.ID])/float64(batch)) * float64(carrier.CallsPerQuery(a.Carrier))
		rate := a.RatePerSec * quotaSafety * (1 - headroom)
		d := time.Duration(calls / rate * float64(time.Second))
		t.Logf("bound: account %s: %d due cards, %.0f calls at %.2f/s = %v", a.ID, due[a.ID], calls, rate, d.Round(time.Millisecond))
		backlog = max(backlog, d)
	}
	// A concurrency slot that moves between members is taken only after the call grace
	// (the longest a query admitted under the old slot may still be calling: 2 calls).
	callGrace := 2 * callTimeout
	return settle + lease + backoffMax + breakerOpen + dependencyRetry + 2*pollInterval + callGrace + backlog
}

// diagnose logs, for the shards holding cards still unsynced, what every member thinks of
// them, and every member's quota shares.
func diagnose(t *testing.T, c *testcluster.Cluster, cards []fsm.Card, stopped time.Time) {
	late := map[string]int{}
	for _, card := range cards {
		if !card.SyncedAt.After(stopped) && !card.ValidUntil.After(stopped) {
			late[card.Shard]++
		}
	}
	for _, m := range c.Up() {
		n := m.Node()
		views, err := n.ShardViews(fsm.ShardFilter{}, "", time.Now())
		if err != nil {
			continue
		}
		for _, v := range views {
			if late[v.ID] > 0 {
				t.Logf("diagnose %s: shard %s (%d late cards): owner %q epoch %d lease %s task %d %s cursor %s next %s running %v due %v ring owner %s reason %q",
					m.Name, v.ID, late[v.ID], v.Owner, v.Epoch, v.LeaseUntil.Format("15:04:05.000"), v.Checkpoint.TaskID, v.Checkpoint.State,
					v.Checkpoint.Cursor, v.Checkpoint.NextRunAt.Format("15:04:05.000"), v.Running, v.Due, v.RingOwner, v.Reason)
			}
		}
		if a := m.Agent(); a != nil {
			t.Logf("diagnose %s: shares %+v running %v", m.Name, a.Syncer.Shares(), a.Syncer.Running())
		}
	}
}
