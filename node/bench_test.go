package node_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"testing"
	"time"

	"cardsync/fsm"
	"cardsync/membership"
	"cardsync/testcluster"
)

func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(p*float64(len(s)-1) + 0.5)
	return s[i]
}

// BenchmarkLeaderFailover kills the Raft leader of a 3-node cluster and measures the
// time until a surviving node commits a write, for both membership profiles (Raft's
// timeouts are hashicorp's defaults in both).
func BenchmarkLeaderFailover(b *testing.B) {
	for _, profile := range []string{"fast", "lan"} {
		b.Run(profile, func(b *testing.B) {
			trials := 10
			if testing.Short() {
				trials = 3
			}
			c := testcluster.New(b, testcluster.Options{Nodes: 3, NoSim: true, Profile: profile})
			c.WaitStable(60 * time.Second)
			var times []time.Duration
			for i := 0; i < trials; i++ {
				leader := c.WaitLeader(30 * time.Second)
				testcluster.WaitFor(b, 60*time.Second, "3 voters", func() bool { return voters(leader.Node()) == 3 })
				c.Kill(leader)
				start := time.Now()
				var survivor *testcluster.Member
				for _, m := range c.Up() {
					survivor = m
				}
				for {
					ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
					_, err := survivor.Node().Propose(ctx, enterpriseCmd(b, fmt.Sprintf("failover-%d", i)))
					cancel()
					if err == nil {
						break
					}
					if time.Since(start) > 60*time.Second {
						b.Fatalf("no write committed 60s after the leader was killed: %v", err)
					}
				}
				times = append(times, time.Since(start))
				if i == trials-1 {
					break // the last kill needs no restart: the cluster closes
				}
				c.Restart(leader)
				// With the lan profile the restarted member is accepted at its new
				// address only once the others declared the old one dead and the
				// reclaim time passed: 40-50 s on a busy machine.
				c.WaitStable(150 * time.Second)
			}
			b.ReportMetric(float64(percentile(times, 0.5).Milliseconds()), "p50-ms")
			b.ReportMetric(float64(percentile(times, 0.99).Milliseconds()), "p99-ms")
			b.ReportMetric(float64(len(times)), "trials")
		})
	}
}

// BenchmarkIdleFalseDeaths runs an idle 3-node cluster on the fast profile and counts
// members declared dead that were never stopped (5 minutes; 30 s with -short).
func BenchmarkIdleFalseDeaths(b *testing.B) {
	d := 5 * time.Minute
	if testing.Short() {
		d = 30 * time.Second
	}
	c := testcluster.New(b, testcluster.Options{Nodes: 3, NoSim: true, Profile: "fast"})
	c.WaitStable(60 * time.Second)
	deaths := 0
	var subs []func()
	events := make(chan membership.Event, 1024)
	for _, m := range c.Members {
		ch, unsub := m.Node().Membership().Subscribe()
		subs = append(subs, unsub)
		go func() {
			for ev := range ch {
				events <- ev
			}
		}()
	}
	defer func() {
		for _, u := range subs {
			u()
		}
	}()
	deadline := time.After(d)
loop:
	for {
		select {
		case ev := <-events:
			if ev.Type == membership.EventFail || ev.Type == membership.EventLeave {
				deaths++
			}
		case <-deadline:
			break loop
		}
	}
	b.ReportMetric(float64(deaths), "false-deaths")
	b.ReportMetric(d.Seconds(), "seconds")
	if deaths > 0 {
		b.Errorf("%d false deaths in %v idle", deaths, d)
	}
}

// BenchmarkImport posts a bulk import of 1,000,000 cards (100,000 with -short) as CSV to a
// follower of a 3-node cluster and measures the time until the import is applied.
func BenchmarkImport(b *testing.B) {
	total := 1_000_000
	if testing.Short() {
		total = 100_000
	}
	c := testcluster.New(b, testcluster.Options{Nodes: 3, NoSim: true})
	c.WaitStable(60 * time.Second)
	leader := c.WaitLeader(10 * time.Second)
	ctx := testcluster.Ctx(b, 10*time.Minute)
	const ents = 200
	for i := 0; i < 4; i++ {
		cmd, _ := fsm.Encode(fsm.TypeUpsertAccount, fsm.UpsertAccount{Account: fsm.Account{ID: fmt.Sprintf("acct-%d", i), Carrier: "onelink", TTL: time.Hour, RatePerSec: 10, Burst: 1, Concurrency: 1, BatchSize: 100, CredentialsValid: true}})
		if _, err := leader.Node().Propose(ctx, cmd); err != nil {
			b.Fatal(err)
		}
	}
	for e := 0; e < ents; e++ {
		cmd, _ := fsm.Encode(fsm.TypeUpsertEnterprise, fsm.UpsertEnterprise{ID: fmt.Sprintf("ent-%03d", e), Accounts: map[string]string{"onelink": fmt.Sprintf("acct-%d", e%4)}, InventoryReady: true})
		if _, err := leader.Node().Propose(ctx, cmd); err != nil {
			b.Fatal(err)
		}
	}
	var body bytes.Buffer
	body.WriteString("enterprise,iccid,account,msisdn,imsi\n")
	for i := 0; i < total; i++ {
		e := i % ents
		fmt.Fprintf(&body, "ent-%03d,8986%016d,acct-%d,14%011d,460%012d\n", e, i, e%4, i, i)
	}
	target := c.Follower()
	if target == nil {
		target = leader
	}
	b.ResetTimer()
	start := time.Now()
	resp, err := http.Post("http://"+target.Node().HTTPAddr()+"/v1/cards?format=csv", "text/csv", &body)
	if err != nil {
		b.Fatal(err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b.Fatalf("import: %d %s", resp.StatusCode, out)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	for _, m := range c.Members {
		testcluster.WaitFor(b, 2*time.Minute, "every replica has the cards", func() bool {
			cnt, err := m.Node().FSM().Counts()
			return err == nil && cnt.Cards == total
		})
	}
	b.ReportMetric(elapsed.Seconds(), "seconds")
	b.ReportMetric(float64(total)/elapsed.Seconds(), "cards/s")
	b.ReportMetric(float64(total), "cards")
}
