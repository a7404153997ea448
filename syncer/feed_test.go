package syncer_test

import (
	"slices"
	"testing"
	"time"

	"cardsync/fsm"
	"cardsync/testcluster"
)

// Card data that changes at the carrier (the simulator drifts it) shows up exactly once in
// the change feed of every node, with the same sequence numbers; cards whose data did not
// change add nothing.
func TestCarrierChangesAppearOnceInEveryFeed(t *testing.T) {
	t.Parallel()
	c := testcluster.New(t, testcluster.Options{Nodes: 3, Cards: 600, ChangeEvery: 2 * time.Second})
	waitAllSynced(t, c, 90*time.Second)
	l := c.WaitLeader(10 * time.Second).Node()
	head := fsm.SeqOfIndex(l.FSM().AppliedIndex())
	ent := c.Catalog.Enterprises[0].ID
	before := map[string]fsm.Card{}
	for _, card := range allCards(t, l) {
		if card.Enterprise == ent {
			before[card.ICCID] = card
		}
	}
	// Let the carrier's data move on, then resync the enterprise.
	testcluster.WaitFor(t, 30*time.Second, "carrier data drifted", func() bool {
		for _, card := range before {
			if st, ok := c.Sim.CardState(card.Account, card.ICCID, time.Now()); ok && st.RawStatus != card.Data.RawStatus {
				return true
			}
		}
		return false
	})
	ctx := testcluster.Ctx(t, 30*time.Second)
	if _, err := l.ProposeEncoded(ctx, fsm.TypeResync, fsm.Resync{Enterprise: ent}); err != nil {
		t.Fatal(err)
	}
	testcluster.WaitFor(t, 90*time.Second, "enterprise synced again", func() bool {
		for iccid, old := range before {
			card, err := l.FSM().Card(iccid)
			if err != nil || card.SyncCount <= old.SyncCount {
				return false
			}
		}
		return true
	})
	changed := map[string]bool{}
	for iccid, old := range before {
		now, _ := l.FSM().Card(iccid)
		if now.Data.Status != old.Data.Status || now.Data.RawStatus != old.Data.RawStatus || now.Data.RatePlan != old.Data.RatePlan ||
			now.Data.DataUsedBytes != old.Data.DataUsedBytes || now.ErrKind != old.ErrKind {
			changed[iccid] = true
		}
	}
	if len(changed) == 0 {
		t.Fatal("no card changed at the carrier: the test proves nothing")
	}
	idx := l.FSM().AppliedIndex()
	var feeds [][]fsm.Change
	for _, m := range c.Members {
		n := m.Node()
		testcluster.WaitFor(t, 20*time.Second, m.Name+" caught up", func() bool { return n.FSM().AppliedIndex() >= idx })
		page, _, err := n.FSM().Changes(head, fsm.MaxPage, ent)
		if err != nil {
			t.Fatal(err)
		}
		feeds = append(feeds, page)
	}
	seen := map[string]int{}
	for _, ch := range feeds[0] {
		seen[ch.ICCID]++
	}
	for iccid := range changed {
		if seen[iccid] != 1 {
			t.Errorf("card %s changed but appears %d times in the feed", iccid, seen[iccid])
		}
	}
	for iccid, n := range seen {
		if !changed[iccid] {
			t.Errorf("card %s did not change but appears %d times", iccid, n)
		}
	}
	for i, f := range feeds[1:] {
		if !slices.EqualFunc(f, feeds[0], func(a, b fsm.Change) bool { return a.Seq == b.Seq && a.ICCID == b.ICCID }) {
			t.Fatalf("node %d's feed differs from node 0's (%d vs %d events)", i+1, len(f), len(feeds[0]))
		}
	}
	t.Logf("%d of %d cards changed; each appears once, with the same sequence on 3 nodes", len(changed), len(before))
}
