package node

import (
	"fmt"
	"testing"
	"time"
)

func TestReplayGuard(t *testing.T) {
	base := time.Unix(1_700_000_000, 0)
	window := 2 * maxSkew
	type step struct {
		sig      string
		at       time.Duration // after base
		replayed bool
		kept     int // signatures remembered afterwards
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"fresh signatures pass", []step{
			{"a", 0, false, 1}, {"b", time.Second, false, 2}, {"c", 2 * time.Second, false, 3},
		}},
		{"a repeat within the window is refused", []step{
			{"a", 0, false, 1}, {"a", time.Second, true, 1}, {"a", window, true, 1},
		}},
		{"signatures older than the window expire in order", []step{
			{"a", 0, false, 1}, {"b", 10 * time.Second, false, 2},
			{"c", window + time.Second, false, 2}, // a expired
			{"a", window + 2*time.Second, false, 3},
			{"b", window + 11*time.Second, false, 3}, // b expired, then seen anew
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var g replayGuard
			for i, s := range tc.steps {
				if got := g.check(s.sig, base.Add(s.at)); got != s.replayed {
					t.Fatalf("step %d (%s at %v): replayed %v, want %v", i, s.sig, s.at, got, s.replayed)
				}
				if len(g.seen) != s.kept || len(g.queue)-g.head != s.kept {
					t.Fatalf("step %d: map %d queue %d, want %d", i, len(g.seen), len(g.queue)-g.head, s.kept)
				}
			}
		})
	}
}

// A steady stream keeps only the window's signatures and reuses the queue's space.
func TestReplayGuardSteadyState(t *testing.T) {
	var g replayGuard
	base := time.Unix(1_700_000_000, 0)
	const perSecond = 50
	window := int(2*maxSkew/time.Second) * perSecond
	for i := range 20 * window {
		at := base.Add(time.Duration(i) * time.Second / perSecond)
		if g.check(fmt.Sprint(i), at) {
			t.Fatalf("signature %d refused", i)
		}
	}
	if n := len(g.seen); n < window || n > window+1 {
		t.Fatalf("remembered %d signatures, want about %d", n, window)
	}
	if cap(g.queue) > 4*window {
		t.Fatalf("queue capacity %d for a window of %d", cap(g.queue), window)
	}
}

// BenchmarkReplayGuard measures one check with a full window (300 requests/s for 60 s).
func BenchmarkReplayGuard(b *testing.B) {
	var g replayGuard
	base := time.Unix(1_700_000_000, 0)
	const perSecond = 300
	sigs := make([]string, 64<<10)
	for i := range sigs {
		sigs[i] = fmt.Sprintf("%064x", i)
	}
	step := time.Second / perSecond
	n := 0
	at := func() time.Time { return base.Add(time.Duration(n) * step) }
	for ; n < int(2*maxSkew/step); n++ {
		g.check(fmt.Sprint("warm", n), at())
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		g.check(sigs[i%len(sigs)]+fmt.Sprint(i/len(sigs)), at())
		n++
	}
	b.ReportMetric(float64(len(g.seen)), "window-entries")
}
