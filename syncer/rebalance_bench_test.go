package syncer_test

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"cardsync/fsm"
	"cardsync/membership"
	"cardsync/syncer"
	"cardsync/testcluster"
)

// BenchmarkRebalance grows a 3-member cluster that is syncing a backlog to 4, then 5
// members, and measures for each join:
//
//   - joinN-moved/ideal: the shards whose owner changed (membership.Moves over the
//     leader's shard ids, from its ring before the join to its ring after) over the
//     ideal shards/N, where N is the new member count. 1.0 moves exactly the new
//     member's fair part.
//   - joinN-settle-ms: from the start of the new member until the quota shares settle:
//     every member sees the same N-member ring; every live claim is held by the shard's
//     ring owner (the handoffs are done); each member's share of each account has the
//     fraction the new ring gives it (its part of the account's due cards, as the
//     syncer computes it, from the leader's replica); the shares in force add up to the
//     account's quota (the new member's grace period is over) and never to more than
//     it. With the leader's shared buckets (the default) the whole rate is in force at
//     every moment for whichever member has work, so what must add up is the
//     concurrency slots; with static rate shares, the rates too.
//
// rejected is the simulator's count of calls over an account's quota during the whole
// run; it must stay 0. -short syncs fewer cards.
func BenchmarkRebalance(b *testing.B) {
	cards := 40_000
	if testing.Short() {
		cards = 16_000
	}
	for i := 0; i < b.N; i++ {
		rebalanceRun(b, cards)
	}
}

// rebalanceRate scales the QuotaUse accounts' call rates down, so that a backlog of a
// few tens of thousands of cards outlasts two joins.
const rebalanceRate = 0.5

func rebalanceRun(b *testing.B, cards int) {
	specs := quotaAccounts(cards)
	for i := range specs {
		specs[i].RatePerSec *= rebalanceRate
	}
	limit, _ := quotaLimit(specs)
	c := testcluster.New(b, testcluster.Options{Nodes: 3, SimAccounts: specs})
	defer c.Close()
	c.WaitStable(60 * time.Second)
	testcluster.WaitFor(b, 60*time.Second, "the first carrier call", func() bool {
		return simCounts(c.Sim).accepted > 0
	})
	// The members publish the catalog in parts: the shard set must be complete before
	// the first ring change, or the joins would count shards that did not exist yet.
	testcluster.WaitFor(b, 2*time.Minute, "every card imported", func() bool {
		shards, err := c.WaitLeader(30 * time.Second).Node().FSM().Shards(fsm.ShardFilter{})
		if err != nil {
			return false
		}
		n := 0
		for _, s := range shards {
			n += s.Cards
		}
		return n == len(c.Catalog.Cards)
	})
	b.Logf("%d cards over %d accounts, quota %.0f cards/s (backlog about %.0f s)", len(c.Catalog.Cards), len(specs), limit, float64(len(c.Catalog.Cards))/limit)
	b.ResetTimer()
	var joins []rebalanceJoin
	for _, n := range []int{4, 5} {
		j := rebalanceJoinOne(b, c)
		if j.members != n {
			b.Fatalf("join made %d members, want %d", j.members, n)
		}
		joins = append(joins, j)
	}
	b.StopTimer()
	for _, j := range joins {
		b.ReportMetric(j.movedIdeal(), fmt.Sprintf("join%d-moved/ideal", j.members))
		b.ReportMetric(ms(j.settle), fmt.Sprintf("join%d-settle-ms", j.members))
	}
	st := simCounts(c.Sim)
	b.ReportMetric(float64(st.rejected), "rejected")
	for _, j := range joins {
		b.Logf("join to %d members: %d of %d shards moved (ideal %.1f, %.2fx); stable after %v, shares settled after %v (%s)",
			j.members, j.moved, j.shards, float64(j.shards)/float64(j.members), j.movedIdeal(),
			j.stable.Round(time.Millisecond), j.settle.Round(time.Millisecond), j.phaseText())
	}
	b.Logf("rejected calls %d (rate %d, concurrency %d)", st.rejected, st.rejectedRate, st.rejectedConc)
}

type rebalanceJoin struct {
	members       int
	shards, moved int
	stable        time.Duration // until testcluster's WaitStable held
	settle        time.Duration
	// phases is, per reason the shares were not settled yet (see sharesSettled), when
	// it was last seen.
	phases map[string]time.Duration
	// graceTrace samples, once a second, why the shares in force were short.
	graceTrace []string
}

func (j rebalanceJoin) phaseText() string {
	var parts []string
	for _, k := range []string{settleRing, settleHandoff, settleFraction, settleGrace} {
		if d, ok := j.phases[k]; ok {
			parts = append(parts, fmt.Sprintf("%s until %v", k, d.Round(time.Millisecond)))
		}
	}
	return strings.Join(parts, ", ")
}

func (j rebalanceJoin) movedIdeal() float64 {
	return float64(j.moved) / (float64(j.shards) / float64(j.members))
}

// rebalanceJoinOne adds a member and waits for the shares to settle.
func rebalanceJoinOne(b *testing.B, c *testcluster.Cluster) rebalanceJoin {
	l := c.WaitLeader(30 * time.Second)
	if allShardsDone(c) {
		b.Fatal("the backlog finished before the join: make it larger")
	}
	ids := shardIDs(b, l)
	before := l.Node().Ring()
	start := time.Now()
	c.Add()
	c.WaitStable(60 * time.Second)
	j := rebalanceJoin{stable: time.Since(start), shards: len(ids)}
	after := c.WaitLeader(30 * time.Second).Node().Ring()
	j.members = after.Len()
	j.moved = len(membership.Moves(before, after, ids))
	why := ""
	j.phases = map[string]time.Duration{}
	var sampled time.Duration
	if !testcluster.Eventually(60*time.Second, func() bool {
		var ok bool
		var kind string
		ok, kind, why = sharesSettled(c)
		if !ok {
			at := time.Since(start)
			j.phases[kind] = at
			if kind == settleGrace && at-sampled >= time.Second {
				sampled = at
				j.graceTrace = append(j.graceTrace, fmt.Sprintf("%v: %s", at.Round(100*time.Millisecond), why))
			}
		}
		return ok
	}) {
		b.Fatalf("quota shares not settled 60 s after the join to %d members: %s", j.members, why)
	}
	j.settle = time.Since(start)
	if j.settle > 5*time.Second && len(j.graceTrace) > 0 {
		b.Logf("join to %d: shares in force short: %s", j.members, strings.Join(j.graceTrace, "; "))
	}
	if allShardsDone(c) {
		b.Fatal("the backlog finished before the shares settled: make it larger")
	}
	return j
}

func shardIDs(b *testing.B, m *testcluster.Member) []string {
	shards, err := m.Node().FSM().Shards(fsm.ShardFilter{})
	if err != nil {
		b.Fatalf("shards: %v", err)
	}
	ids := make([]string, len(shards))
	for i, s := range shards {
		ids[i] = s.ID
	}
	return ids
}

// Tolerances of sharesSettled: members compute their fractions at their own poll
// moments, a few hundred ms apart, while shards finish; and a share that grows waits a
// grace period, so a shard finishing elsewhere keeps the sum a little under the quota
// for a moment.
const (
	settleFractionTol = 0.05
	settleSumMin      = 0.95
)

// What sharesSettled found still moving: the rings, the claims, the fractions of the
// accounts' work, or the shares in force (an increase waiting out its grace period, or
// shares over the quota).
const (
	settleRing     = "rings"
	settleHandoff  = "handoffs"
	settleFraction = "fractions"
	settleGrace    = "shares in force"
)

// sharesSettled reports whether the members' quota shares are those of the current ring
// (see BenchmarkRebalance), or what is still moving and why.
func sharesSettled(c *testcluster.Cluster) (ok bool, kind, why string) {
	l := c.Leader()
	if l == nil {
		return false, settleRing, "no leader"
	}
	up := c.Up()
	ring := l.Node().Ring()
	if ring.Len() != len(up) {
		return false, settleRing, fmt.Sprintf("leader's ring has %d members, %d up", ring.Len(), len(up))
	}
	shares := map[string]map[string]syncer.Share{}
	for _, m := range up {
		a := m.Agent()
		if a == nil {
			return false, settleRing, m.Name + " down"
		}
		if !slices.Equal(a.Node.Ring().Members(), ring.Members()) {
			return false, settleRing, fmt.Sprintf("%s's ring %v differs from the leader's %v", m.Name, a.Node.Ring().Members(), ring.Members())
		}
		shares[m.Name] = map[string]syncer.Share{}
		for _, sh := range a.Syncer.Shares() {
			shares[m.Name][sh.Account] = sh
		}
	}
	st := l.Node().FSM()
	shards, err := st.Shards(fsm.ShardFilter{})
	if err != nil {
		return false, settleRing, err.Error()
	}
	ents, accts, err := shareDeps(st)
	if err != nil {
		return false, settleRing, err.Error()
	}
	ids := make([]string, len(shards))
	for i, s := range shards {
		ids[i] = s.ID
	}
	owners := ring.Assign(ids)
	now := time.Now()
	for _, s := range shards {
		if s.LiveClaim(now) && s.Owner != owners[s.ID] {
			return false, settleHandoff, fmt.Sprintf("shard %s still held by %s, the ring gives it to %s", s.ID, s.Owner, owners[s.ID])
		}
	}
	want := ringFractions(shards, owners, ents, ring.Members(), now)
	safety := syncer.DefaultConfig().QuotaSafety
	for id, acct := range accts {
		rate, conc := 0.0, 0
		for _, m := range up {
			sh := shares[m.Name][id]
			if math.Abs(sh.Fraction-want[id][m.Name]) > settleFractionTol {
				return false, settleFraction, fmt.Sprintf("%s's fraction of %s is %.3f, the ring gives %.3f", m.Name, id, sh.Fraction, want[id][m.Name])
			}
			rate += sh.RatePerSec
			conc += sh.Concurrency
		}
		if rate > acct.RatePerSec*(1+1e-9) || conc > acct.Concurrency {
			return false, settleGrace, fmt.Sprintf("shares of %s add up to %.2f calls/s and %d calls at once, over its quota %.2f/%d", id, rate, conc, acct.RatePerSec, acct.Concurrency)
		}
		if syncer.DefaultConfig().SharedTokens {
			if conc < acct.Concurrency {
				var per []string
				for _, m := range up {
					sh := shares[m.Name][id]
					per = append(per, fmt.Sprintf("%s %d (fraction %.3f, ring %.3f)", m.Name, sh.Concurrency, sh.Fraction, want[id][m.Name]))
				}
				return false, settleGrace, fmt.Sprintf("concurrency slots of %s in force add up to %d of %d: %s", id, conc, acct.Concurrency, strings.Join(per, ", "))
			}
			continue
		}
		if rate < settleSumMin*safety*acct.RatePerSec {
			return false, settleGrace, fmt.Sprintf("shares of %s in force add up to %.2f of %.2f calls/s", id, rate, safety*acct.RatePerSec)
		}
	}
	return true, "", ""
}

func shareDeps(st *fsm.FSM) (map[string]fsm.Enterprise, map[string]fsm.Account, error) {
	es, err := st.Enterprises()
	if err != nil {
		return nil, nil, err
	}
	as, err := st.Accounts()
	if err != nil {
		return nil, nil, err
	}
	ents := map[string]fsm.Enterprise{}
	for _, e := range es {
		ents[e.ID] = e
	}
	accts := map[string]fsm.Account{}
	for _, a := range as {
		accts[a.ID] = a
	}
	return ents, accts, nil
}

// ringFractions is each member's fraction of each account's due work under the ring's
// owners, by the syncer's own rule (syncer.ShareWeights); an account without due work is
// split evenly over the members. This is the split the syncer's shares follow once every
// claim is held by its ring owner.
func ringFractions(shards []fsm.ShardState, owners map[string]string, ents map[string]fsm.Enterprise, members []string, now time.Time) map[string]map[string]float64 {
	weight := syncer.ShareWeights(shards, owners, ents, now)
	out := map[string]map[string]float64{}
	for _, e := range ents {
		for _, a := range e.Accounts {
			if out[a] != nil {
				continue
			}
			out[a] = map[string]float64{}
			total := 0.0
			for _, w := range weight[a] {
				total += w
			}
			for _, m := range members {
				if total > 0 {
					out[a][m] = weight[a][m] / total
				} else {
					out[a][m] = 1 / float64(len(members))
				}
			}
		}
	}
	return out
}
