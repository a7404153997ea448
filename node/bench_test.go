package node_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

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
				c.Restart(leader)
				c.WaitStable(60 * time.Second)
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
