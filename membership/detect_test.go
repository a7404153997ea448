package membership

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"
)

// measureFailureDetection starts n members of the given profile on
// loopback, hard-stops one (Shutdown without Leave) and returns the time
// until every other member has declared it dead.
func measureFailureDetection(tb testing.TB, profile string, n int) time.Duration {
	tb.Helper()
	var ms []*Membership
	for i := 0; i < n; i++ {
		cfg := testConfig(fmt.Sprintf("fd-%d", i))
		cfg.Profile = profile
		m, err := New(cfg)
		if err != nil {
			tb.Fatal(err)
		}
		defer m.Shutdown()
		if i > 0 {
			if _, err := m.Join(context.Background(), []string{ms[0].GossipAddr()}); err != nil {
				tb.Fatal(err)
			}
		}
		ms = append(ms, m)
	}
	for _, m := range ms {
		waitFor(tb, 30*time.Second, "cluster to form", func() bool { return aliveCount(m) == n })
	}
	victim := ms[n-1]
	observers := ms[:n-1]
	type sub struct {
		ch     <-chan Event
		cancel func()
	}
	subs := make([]sub, len(observers))
	for i, o := range observers {
		ch, cancel := o.Subscribe()
		subs[i] = sub{ch, cancel}
		defer cancel()
	}
	start := time.Now()
	_ = victim.Shutdown()
	var worst time.Duration
	for _, s := range subs {
		deadline := time.After(60 * time.Second)
	wait:
		for {
			select {
			case ev := <-s.ch:
				if ev.Type == EventFail && ev.Member.Name == victim.LocalName() {
					worst = max(worst, ev.Member.Since.Sub(start))
					break wait
				}
			case <-deadline:
				tb.Fatalf("%s: victim never declared dead", profile)
			}
		}
	}
	return worst
}

// BenchmarkFailureDetection reports, per profile, the time from a member's
// hard stop until both other members of a 3-member cluster declare it dead
// (p50 and p99 over b.N trials; run with -benchtime=8x or more).
func BenchmarkFailureDetection(b *testing.B) {
	for _, profile := range []string{ProfileFast, ProfileLAN} {
		b.Run(profile, func(b *testing.B) {
			var ds []time.Duration
			for i := 0; i < b.N; i++ {
				ds = append(ds, measureFailureDetection(b, profile, 3))
			}
			slices.Sort(ds)
			pct := func(p float64) float64 {
				idx := int(p*float64(len(ds))+0.999999) - 1
				idx = min(max(idx, 0), len(ds)-1)
				return float64(ds[idx].Milliseconds())
			}
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(pct(0.50), "p50-ms")
			b.ReportMetric(pct(0.99), "p99-ms")
			b.ReportMetric(float64(ds[0].Milliseconds()), "min-ms")
		})
	}
}

// TestFailureDetectionFast checks that the fast profile declares a
// hard-stopped member dead on loopback (one trial; the timing itself is
// measured by BenchmarkFailureDetection).
func TestFailureDetectionFast(t *testing.T) {
	d := measureFailureDetection(t, ProfileFast, 3)
	t.Logf("fast profile: hard stop seen dead by all after %s", d)
}
