package webhook_test

import (
	"bytes"
	"io"
	"slices"
	"testing"
	"time"

	"cardsync/fsm"
	"cardsync/testcluster"
	"cardsync/webhook"
)

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }

// TestDeliveryAcrossKill: a 3-node cluster delivers a stream of changes to a receiver;
// the delivering node is killed mid-stream. The receiver ends with every event, in
// order, with duplicates only where the new deliverer resumed from the last acknowledged
// cursor, and every batch carries a signature that only the right secret verifies.
func TestDeliveryAcrossKill(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Nodes: 3, NoSim: true, Webhook: fastWebhooks})
	c.WaitStable(30 * time.Second)
	g := newGenerator(t, c, 40)
	rc := newReceiver(t, "s3cret")

	var created map[string]any
	api := "http://" + c.Members[1].Node().HTTPAddr()
	if code := httpJSON(t, "POST", api+"/v1/webhooks", webhook.CreateRequest{ID: "platform", URL: rc.srv.URL + "/hook", Secret: "s3cret", Enterprise: "ent-gen"}, &created); code != 200 {
		t.Fatalf("create subscription: HTTP %d %v", code, created)
	}
	sub, err := c.Members[0].Node().FSM().Subscription("platform")
	if err != nil {
		testcluster.WaitFor(t, 5*time.Second, "subscription replicated", func() bool {
			sub, err = c.Members[0].Node().FSM().Subscription("platform")
			return err == nil
		})
	}
	start := sub.Cursor

	const flushes, perFlush = 60, 10
	for i := 0; i < flushes; i++ {
		if i == flushes/3 {
			// Kill the node that delivers, once it has delivered something.
			testcluster.WaitFor(t, 30*time.Second, "first deliveries", func() bool { return rc.distinct() > 0 })
			owner := ""
			for _, m := range c.Up() {
				if s, err := m.Node().FSM().Subscription("platform"); err == nil && s.Owner != "" {
					owner = s.Owner
					break
				}
			}
			for _, m := range c.Members {
				if m.Name == owner {
					t.Logf("killing deliverer %s after %d events", owner, rc.distinct())
					c.Kill(m)
				}
			}
			if owner == "" {
				t.Fatal("no deliverer recorded")
			}
		}
		g.flush(perFlush)
	}
	// The expected events, from a surviving replica.
	var want []uint64
	live := c.Up()[0].Node()
	after := start
	for {
		p, err := live.FSM().Feed(fsm.FeedQuery{After: after, Enterprise: "ent-gen"})
		if err != nil {
			t.Fatal(err)
		}
		for _, ch := range p.Changes {
			want = append(want, ch.Seq)
		}
		if len(p.Changes) == 0 {
			break
		}
		after = p.Next
	}
	if len(want) != flushes*perFlush {
		t.Fatalf("feed holds %d events, want %d", len(want), flushes*perFlush)
	}
	testcluster.WaitFor(t, 60*time.Second, "every event delivered", func() bool { return rc.distinct() == len(want) })

	seqs, batches, badSig, _ := rc.snapshot()
	if badSig != 0 {
		t.Fatalf("%d deliveries with a bad signature", badSig)
	}
	// In order, nothing missing: the distinct events in arrival order are the feed.
	var got []uint64
	seen := map[uint64]bool{}
	for _, s := range seqs {
		if !seen[s] {
			seen[s] = true
			got = append(got, s)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("distinct events out of order or missing: got %d, want %d", len(got), len(want))
	}
	// Duplicates only across a takeover: within one epoch sequences strictly increase,
	// and a new epoch restarts at or before where the previous one stopped.
	rewinds, dups := 0, len(seqs)-len(got)
	var lastEpoch, lastSeq uint64
	for _, b := range batches {
		if b.Epoch < lastEpoch {
			t.Fatalf("batch from epoch %d after epoch %d", b.Epoch, lastEpoch)
		}
		for _, e := range b.Events {
			if e.Seq <= lastSeq {
				if b.Epoch == lastEpoch {
					t.Fatalf("epoch %d repeated sequence %d", b.Epoch, e.Seq)
				}
			}
			lastSeq = max(lastSeq, e.Seq)
		}
		if b.Epoch != lastEpoch && lastEpoch != 0 {
			rewinds++
		}
		lastEpoch = b.Epoch
	}
	t.Logf("%d events, %d duplicates, %d deliverer changes, %d batches", len(want), dups, rewinds, len(batches))
	if rewinds == 0 {
		t.Fatal("no takeover seen by the receiver")
	}

	// A wrong secret or a tampered body does not verify.
	_, body := lastBatchBody(t, batches)
	sig := webhook.Sign([]byte("s3cret"), body)
	if !webhook.Verify([]byte("s3cret"), body, sig) {
		t.Fatal("right secret does not verify")
	}
	if webhook.Verify([]byte("wrong"), body, sig) {
		t.Fatal("wrong secret verifies")
	}
	tampered := bytes.Replace(body, []byte(`"seq"`), []byte(`"seq" `), 1)
	if webhook.Verify([]byte("s3cret"), tampered, sig) {
		t.Fatal("tampered body verifies")
	}

	// The status reports the cursor at the head and no lag.
	var list struct {
		Webhooks []webhook.Status `json:"webhooks"`
	}
	api = "http://" + live.HTTPAddr()
	testcluster.WaitFor(t, 10*time.Second, "status caught up", func() bool {
		if code := httpJSON(t, "GET", api+"/v1/webhooks", nil, &list); code != 200 || len(list.Webhooks) != 1 {
			return false
		}
		s := list.Webhooks[0]
		return s.Pending == 0 && s.Cursor >= want[len(want)-1] && s.Delivered >= uint64(len(want))
	})
}

func lastBatchBody(t *testing.T, batches []webhook.Payload) (webhook.Payload, []byte) {
	t.Helper()
	b := batches[len(batches)-1]
	body, err := jsonMarshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return b, body
}
