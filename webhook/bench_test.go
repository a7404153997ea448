package webhook_test

import (
	"fmt"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"cardsync/fsm"
	"cardsync/testcluster"
	"cardsync/webhook"
)

// BenchmarkFeedRead measures a consumer paging the change feed over HTTP
// (GET /v1/changes, 1,000 events a page) on a single node holding 20,000 events.
func BenchmarkFeedRead(b *testing.B) {
	c := testcluster.New(b, testcluster.Options{Nodes: 1, NoSim: true})
	c.WaitStable(30 * time.Second)
	g := newGenerator(b, c, 1000)
	const total = 20000
	for i := 0; i < total/1000; i++ {
		g.flush(1000)
	}
	api := "http://" + c.Members[0].Node().HTTPAddr()
	var first feedResp
	httpJSON(b, "GET", api+"/v1/changes?limit=1", nil, &first)
	start := first.Changes[0].Seq - 1
	b.ResetTimer()
	read := 0
	t0 := time.Now()
	for i := 0; i < b.N; i++ {
		after := start
		for {
			var r feedResp
			if code := httpJSON(b, "GET", fmt.Sprintf("%s/v1/changes?after=%d&limit=1000", api, after), nil, &r); code != http.StatusOK {
				b.Fatalf("HTTP %d", code)
			}
			read += len(r.Changes)
			if len(r.Changes) == 0 {
				break
			}
			after = r.Next
		}
	}
	b.ReportMetric(float64(read)/time.Since(t0).Seconds(), "events/s")
}

// BenchmarkWebhookLag generates 1,000 changes/s (a 50-card flush every 50 ms) on a
// 3-node cluster for 3 s per iteration and measures, at the receiver, the time from an
// event's stamp to its acknowledged delivery.
func BenchmarkWebhookLag(b *testing.B) {
	c := testcluster.New(b, testcluster.Options{Nodes: 3, NoSim: true})
	c.WaitStable(30 * time.Second)
	g := newGenerator(b, c, 500)
	rc := newReceiver(b, "k")
	var mu sync.Mutex
	var lags []time.Duration
	seen := map[uint64]bool{}
	rc.onEvent = func(seq uint64, at time.Time, ev fsm.Change) {
		mu.Lock()
		if !seen[seq] {
			seen[seq] = true
			lags = append(lags, at.Sub(ev.Time))
		}
		mu.Unlock()
	}
	api := "http://" + c.Members[0].Node().HTTPAddr()
	if code := httpJSON(b, "POST", api+"/v1/webhooks", webhook.CreateRequest{ID: "bench", URL: rc.srv.URL, Secret: "k"}, nil); code != 200 {
		b.Fatalf("create: HTTP %d", code)
	}
	b.ResetTimer()
	sent := 0
	t0 := time.Now()
	for i := 0; i < b.N; i++ {
		tick := time.NewTicker(50 * time.Millisecond)
		for n := 0; n < 60; n++ {
			<-tick.C
			g.flush(50)
			sent += 50
		}
		tick.Stop()
	}
	testcluster.WaitFor(b, 60*time.Second, "all delivered", func() bool { return rc.distinct() >= sent })
	elapsed := time.Since(t0)
	b.StopTimer()
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(lags)
	pct := func(p float64) float64 { return float64(lags[int(p*float64(len(lags)-1))].Microseconds()) / 1000 }
	b.ReportMetric(pct(0.5), "lag-p50-ms")
	b.ReportMetric(pct(0.99), "lag-p99-ms")
	b.ReportMetric(pct(1), "lag-max-ms")
	b.ReportMetric(float64(sent)/elapsed.Seconds(), "events/s")
	_, batches, _, _ := rc.snapshot()
	b.ReportMetric(float64(sent)/float64(len(batches)), "events/batch")
}
