package webhook_test

import (
	"strings"
	"testing"
	"time"

	"cardsync/testcluster"
	"cardsync/webhook"
)

// TestPauseAndResume: a subscriber that keeps failing is retried with backoff, then
// paused with a reason after PauseAfterFailures; resuming through the API delivers what
// it missed.
func TestPauseAndResume(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Nodes: 1, NoSim: true, Webhook: func(cfg *webhook.Config) {
		fastWebhooks(cfg)
		cfg.PauseAfterFailures = 3
	}})
	c.WaitStable(30 * time.Second)
	g := newGenerator(t, c, 10)
	rc := newReceiver(t, "k")
	rc.setFail(true)
	api := "http://" + c.Members[0].Node().HTTPAddr()
	if code := httpJSON(t, "POST", api+"/v1/webhooks", webhook.CreateRequest{ID: "p", URL: rc.srv.URL, Secret: "k", Kinds: []string{"usage"}}, nil); code != 200 {
		t.Fatalf("create: HTTP %d", code)
	}
	if code := httpJSON(t, "POST", api+"/v1/webhooks", webhook.CreateRequest{ID: "bad", URL: "ftp://x", Secret: "k"}, nil); code != 400 {
		t.Fatalf("bad url: HTTP %d, want 400", code)
	}
	g.flush(5)
	var st webhook.Status
	testcluster.WaitFor(t, 20*time.Second, "paused", func() bool {
		return httpJSON(t, "GET", api+"/v1/webhooks/p", nil, &st) == 200 && st.Paused
	})
	if st.Failures != 3 || !strings.Contains(st.PauseReason, "3 times") || !strings.Contains(st.LastError, "503") || st.Pending != 5 {
		t.Fatalf("paused status %+v", st)
	}
	_, _, _, calls := rc.snapshot()
	if calls != 3 {
		t.Fatalf("%d attempts, want 3 before pausing", calls)
	}
	rc.setFail(false)
	g.flush(5)
	if code := httpJSON(t, "POST", api+"/v1/webhooks/p/resume", nil, nil); code != 200 {
		t.Fatalf("resume: HTTP %d", code)
	}
	testcluster.WaitFor(t, 20*time.Second, "delivered after resume", func() bool { return rc.distinct() == 10 })
	testcluster.WaitFor(t, 10*time.Second, "status clean", func() bool {
		return httpJSON(t, "GET", api+"/v1/webhooks/p", nil, &st) == 200 && !st.Paused && st.Pending == 0 && st.Failures == 0 && st.Delivered == 10
	})
	if code := httpJSON(t, "DELETE", api+"/v1/webhooks/p", nil, nil); code != 200 {
		t.Fatalf("delete: HTTP %d", code)
	}
	if code := httpJSON(t, "GET", api+"/v1/webhooks/p", nil, nil); code != 404 {
		t.Fatalf("deleted: HTTP %d, want 404", code)
	}
}
