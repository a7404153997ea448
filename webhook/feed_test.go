package webhook_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"cardsync/fsm"
	"cardsync/testcluster"
)

type feedResp struct {
	Changes      []fsm.Change `json:"changes"`
	Next         uint64       `json:"next"`
	Last         uint64       `json:"last"`
	Oldest       uint64       `json:"oldest"`
	AppliedIndex uint64       `json:"applied_index"`
	Error        string       `json:"error"`
	Code         string       `json:"code"`
}

// TestChangeFeedAPI: the feed long-polls until an event arrives (woken by the apply,
// not by the wait running out), pages in order, and answers 410 with the resynchronise
// instruction once retention has passed the reader; the same events carry the same
// sequences on every node.
func TestChangeFeedAPI(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Nodes: 3, NoSim: true})
	c.WaitStable(30 * time.Second)
	g := newGenerator(t, c, 20)
	api := "http://" + c.Members[2].Node().HTTPAddr()

	var head feedResp
	if code := httpJSON(t, "GET", api+"/v1/changes?enterprise=ent-gen", nil, &head); code != 200 || len(head.Changes) != 0 {
		t.Fatalf("empty feed: HTTP %d %+v", code, head)
	}
	got := make(chan feedResp, 1)
	start := time.Now()
	go func() {
		var r feedResp
		httpJSON(t, "GET", fmt.Sprintf("%s/v1/changes?after=%d&wait=60s", api, head.Next), nil, &r)
		got <- r
	}()
	// The long-poll is parked until something is applied; give it a moment to park, then
	// produce events.
	time.Sleep(100 * time.Millisecond)
	g.flush(5)
	var r feedResp
	select {
	case r = <-got:
	case <-time.After(30 * time.Second):
		t.Fatal("long-poll did not return after an event")
	}
	if len(r.Changes) != 5 || r.Next != r.Changes[4].Seq && r.Next < r.Changes[4].Seq {
		t.Fatalf("long-poll returned %+v", r)
	}
	t.Logf("long-poll answered %v after it started", time.Since(start).Round(time.Millisecond))
	for i := 1; i < len(r.Changes); i++ {
		if r.Changes[i].Seq <= r.Changes[i-1].Seq {
			t.Fatalf("out of order: %v", r.Changes)
		}
	}
	// Same sequences on every node.
	for _, m := range c.Members {
		testcluster.WaitFor(t, 10*time.Second, "replica has the events", func() bool {
			p, err := m.Node().FSM().Feed(fsm.FeedQuery{After: head.Next})
			if err != nil || len(p.Changes) != 5 {
				return false
			}
			for i := range p.Changes {
				if p.Changes[i].Seq != r.Changes[i].Seq || p.Changes[i].ICCID != r.Changes[i].ICCID {
					t.Fatalf("%s: event %d is %+v, want %+v", m.Name, i, p.Changes[i], r.Changes[i])
				}
			}
			return true
		})
	}
	// A filtered long-poll that matches nothing times out empty but moves next forward.
	var none feedResp
	if code := httpJSON(t, "GET", fmt.Sprintf("%s/v1/changes?after=%d&kinds=error&wait=200ms", api, head.Next), nil, &none); code != 200 || len(none.Changes) != 0 || none.Next < r.Changes[4].Seq {
		t.Fatalf("filtered poll: HTTP %d %+v", code, none)
	}
	// after_index continues from a cards page's applied index.
	var cards struct {
		AppliedIndex uint64 `json:"applied_index"`
	}
	httpJSON(t, "GET", api+"/v1/cards?enterprise=ent-gen&limit=5", nil, &cards)
	g.flush(2)
	var fromIdx feedResp
	testcluster.WaitFor(t, 10*time.Second, "events after the cards page", func() bool {
		httpJSON(t, "GET", fmt.Sprintf("%s/v1/changes?after_index=%d", api, cards.AppliedIndex), nil, &fromIdx)
		return len(fromIdx.Changes) == 2
	})

	// Retention by age: a reader left behind gets 410 and the way back.
	propose(t, c, fsm.TypeSetFeedSettings, fsm.SetFeedSettings{Settings: fsm.FeedSettings{RetentionAge: 300 * time.Millisecond}})
	var gone feedResp
	testcluster.WaitFor(t, 20*time.Second, "410 for a reader behind retention", func() bool {
		g.flush(1) // moves the feed clock
		return httpJSON(t, "GET", fmt.Sprintf("%s/v1/changes?after=%d", api, head.Next), nil, &gone) == 410
	})
	if gone.Code != "resync_required" || !strings.Contains(gone.Error, "resynchronise from GET /v1/cards?enterprise=ID") {
		t.Fatalf("410 body %+v", gone)
	}
	if code := httpJSON(t, "GET", api+"/v1/changes?after=x", nil, nil); code != 400 {
		t.Fatalf("bad after: HTTP %d", code)
	}
}

// TestUnchangedResyncAddsNothing: flushing the same data again records no event.
func TestUnchangedResyncAddsNothing(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Nodes: 1, NoSim: true})
	c.WaitStable(30 * time.Second)
	g := newGenerator(t, c, 4)
	f := c.Members[0].Node().FSM()
	same := []fsm.CardResult{{ICCID: iccid(0), Data: &fsm.CardData{Status: "active", RatePlan: "P", DataUsedBytes: 7}}}
	propose(t, c, fsm.TypeFlush, fsm.Flush{Shard: g.shard, Node: genNode, Epoch: g.epoch, TaskID: g.task, Results: same})
	p1, _ := f.Feed(fsm.FeedQuery{})
	for i := 0; i < 3; i++ {
		propose(t, c, fsm.TypeFlush, fsm.Flush{Shard: g.shard, Node: genNode, Epoch: g.epoch, TaskID: g.task, Results: same})
	}
	p2, _ := f.Feed(fsm.FeedQuery{})
	if len(p2.Changes) != len(p1.Changes) {
		t.Fatalf("re-syncs with unchanged data added %d events", len(p2.Changes)-len(p1.Changes))
	}
}
