package syncer_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cardsync/carrier/sim"
	"cardsync/fsm"
	"cardsync/node"
	"cardsync/syncer"
	"cardsync/testcluster"
)

// allCards returns every card in the node's replica.
func allCards(t testing.TB, n *node.Node) []fsm.Card {
	t.Helper()
	var out []fsm.Card
	after := ""
	for {
		page, next, err := n.FSM().Cards(fsm.CardFilter{After: after, Limit: fsm.MaxPage})
		if err != nil {
			t.Fatalf("cards: %v", err)
		}
		out = append(out, page...)
		if next == "" || len(page) == 0 {
			return out
		}
		after = next
	}
}

// unsynced counts cards never synced (or whose last sync was only an error of a kind other
// than not-found).
func unsynced(t testing.TB, n *node.Node) int {
	c := 0
	for _, card := range allCards(t, n) {
		if card.SyncedAt.IsZero() {
			c++
		}
	}
	return c
}

func waitAllSynced(t testing.TB, c *testcluster.Cluster, timeout time.Duration) {
	t.Helper()
	testcluster.WaitFor(t, timeout, "every card synced", func() bool {
		l := c.Leader()
		if l == nil {
			return false
		}
		cnt, err := l.Node().FSM().Counts()
		return err == nil && cnt.Cards >= len(c.Catalog.Cards) && unsynced(t, l.Node()) == 0
	})
}

func noQuotaViolations(t testing.TB, s *sim.Sim) {
	t.Helper()
	for id, a := range s.Stats().Accounts {
		if a.Rejected > 0 {
			t.Errorf("account %s: %d calls over quota at the carrier (rate %d, concurrency %d)", id, a.Rejected, a.RejectedRate, a.RejectedConcurrency)
		}
	}
}

// groupWatch samples the leader's replica and records any moment at which two shards of
// one group held live claims.
type groupWatch struct {
	violations atomic.Int64
	samples    atomic.Int64
	stop       chan struct{}
	done       sync.WaitGroup
	detail     atomic.Value
}

func watchGroups(c *testcluster.Cluster) *groupWatch {
	g := &groupWatch{stop: make(chan struct{})}
	g.done.Add(1)
	go func() {
		defer g.done.Done()
		for {
			select {
			case <-g.stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			for _, m := range c.Up() {
				n := m.Node()
				if n == nil {
					continue
				}
				shards, err := n.FSM().Shards(fsm.ShardFilter{})
				if err != nil {
					continue
				}
				now := time.Now()
				live := map[int]string{}
				for _, s := range shards {
					if !s.LiveClaim(now) {
						continue
					}
					if other, ok := live[s.Group]; ok {
						g.violations.Add(1)
						g.detail.Store(fmt.Sprintf("group %d: %s and %s live at once", s.Group, other, s.ID))
					}
					live[s.Group] = s.ID
				}
				g.samples.Add(1)
			}
		}
	}()
	return g
}

func (g *groupWatch) check(t testing.TB) {
	t.Helper()
	close(g.stop)
	g.done.Wait()
	if v := g.violations.Load(); v > 0 {
		t.Errorf("groups ran in parallel %d times: %v", v, g.detail.Load())
	}
	if g.samples.Load() == 0 {
		t.Error("group watch took no samples")
	}
}

// Claim 1: cards are grouped by enterprise, shards hold several enterprises, each shard's
// cards are synced through the serial loop and every group runs serially.
func TestClaim1_GroupShardAndSerialCardLoop(t *testing.T) {
	t.Parallel()
	c := testcluster.New(t, testcluster.Options{Nodes: 1, Cards: 1500})
	gw := watchGroups(c)
	waitAllSynced(t, c, 60*time.Second)
	gw.check(t)
	n := c.Members[0].Node()
	groupOf := map[string]int{}
	multi := false
	shards, _ := n.FSM().Shards(fsm.ShardFilter{})
	for _, s := range shards {
		if len(s.Enterprises) > 1 {
			multi = true
		}
	}
	for _, card := range allCards(t, n) {
		if g, ok := groupOf[card.Enterprise]; ok && g != card.Group {
			t.Fatalf("enterprise %s spans groups %d and %d", card.Enterprise, g, card.Group)
		}
		groupOf[card.Enterprise] = card.Group
	}
	if !multi {
		t.Error("no shard holds cards of several enterprises")
	}
	noQuotaViolations(t, c.Sim)
}

// Claims 2 and 3: each shard is processed by the first member clockwise on the 2^32 ring.
func TestClaim2_3_RingOwnerProcessesShard(t *testing.T) {
	t.Parallel()
	c := testcluster.New(t, testcluster.Options{Nodes: 3, Cards: 2000})
	c.WaitStable(30 * time.Second)
	waitAllSynced(t, c, 90*time.Second)
	l := c.WaitLeader(10 * time.Second).Node()
	shards, _ := l.FSM().Shards(fsm.ShardFilter{})
	ids := make([]string, len(shards))
	for i, s := range shards {
		ids[i] = s.ID
	}
	owners := l.Ring().Assign(ids)
	byOwner := map[string]int{}
	for _, s := range shards {
		full, err := l.FSM().Shard(s.ID)
		if err != nil {
			t.Fatal(err)
		}
		if len(full.History) == 0 {
			t.Fatalf("shard %s has no finished round", s.ID)
		}
		last := full.History[len(full.History)-1]
		byOwner[last.Owner]++
		if last.Owner != owners[s.ID] {
			t.Errorf("shard %s last run by %s, ring owner %s", s.ID, last.Owner, owners[s.ID])
		}
	}
	if len(byOwner) != 3 {
		t.Errorf("work not spread over the 3 members: %v", byOwner)
	}
	noQuotaViolations(t, c.Sim)
}

// Claim 4: a shard another instance is processing is not taken.
func TestClaim4_ProcessingConditionNoOtherInstance(t *testing.T) {
	t.Parallel()
	c := testcluster.New(t, testcluster.Options{Nodes: 1, Cards: 600, Sync: func(s *syncer.Config) { s.PollInterval = 50 * time.Millisecond }})
	n := c.Members[0].Node()
	testcluster.WaitFor(t, 30*time.Second, "inventory imported", func() bool {
		cnt, _ := n.FSM().Counts()
		return cnt.Cards > 0
	})
	// Another instance holds one shard; the syncer must leave it alone while the claim lives.
	// The node is drained first (off the ring, so it claims nothing and hands back what it
	// holds), which gives the ghost an unowned shard without racing the syncer for it.
	ctx := testcluster.Ctx(t, 30*time.Second)
	if err := n.Drain(true); err != nil {
		t.Fatal(err)
	}
	var held fsm.ShardState
	testcluster.WaitFor(t, 30*time.Second, "a shard claimed by a ghost instance", func() bool {
		shards, _ := n.FSM().Shards(fsm.ShardFilter{})
		for _, s := range shards {
			if s.Owner != "" {
				return false // the drained node has not handed everything back yet
			}
		}
		for _, s := range shards {
			res, err := n.ProposeEncoded(ctx, fsm.TypeClaim, fsm.Claim{Shard: s.ID, Node: "ghost", Epoch: s.Epoch, Lease: time.Hour})
			if err == nil {
				held = s
				held.Epoch = res.Epoch
				return true
			}
		}
		return false
	})
	if err := n.Drain(false); err != nil {
		t.Fatal(err)
	}
	testcluster.WaitFor(t, 60*time.Second, "all other shards done", func() bool {
		shards, _ := n.FSM().Shards(fsm.ShardFilter{})
		for _, s := range shards {
			if s.ID != held.ID && s.Checkpoint.State != fsm.StateDone {
				return false
			}
		}
		return true
	})
	s, _ := n.FSM().Shard(held.ID)
	if s.Owner != "ghost" || s.Checkpoint.TaskID != held.Checkpoint.TaskID {
		t.Fatalf("shard held by another instance was processed: %+v (task %d when the ghost took it)", s, held.Checkpoint.TaskID)
	}
	views, _ := n.ShardViews(fsm.ShardFilter{}, "", time.Now())
	for _, v := range views {
		if v.ID == held.ID && v.Reason != "running on ghost" {
			t.Errorf("reason for the held shard: %q", v.Reason)
		}
	}
	// The FSM itself refuses a second claim.
	if _, err := n.ProposeEncoded(ctx, fsm.TypeClaim, fsm.Claim{Shard: held.ID, Node: n.Name(), Epoch: held.Epoch, Lease: time.Minute}); !errors.Is(err, fsm.ErrClaimedElsewhere) {
		t.Fatalf("second claim: %v", err)
	}
	// Once the other instance is revoked, the shard is processed.
	if _, err := n.ProposeEncoded(ctx, fsm.TypeRevokeNode, fsm.RevokeNode{Node: "ghost", Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	testcluster.WaitFor(t, 30*time.Second, "held shard processed after revocation", func() bool {
		s, _ := n.FSM().Shard(held.ID)
		return s.Checkpoint.State == fsm.StateDone
	})
}

// Claims 5 and 7: an unfinished task continues from the progress stored in the database.
func TestClaim5_7_ResumeUnfinishedTaskFromStoredCursor(t *testing.T) {
	t.Parallel()
	c := testcluster.New(t, testcluster.Options{Nodes: 1, Cards: 3000})
	n := c.Members[0].Node()
	// First every card is synced once; then the syncer is idle: nothing is due for the
	// validity window.
	waitAllSynced(t, c, 60*time.Second)
	testcluster.WaitFor(t, 20*time.Second, "syncer idle", func() bool {
		return len(c.Members[0].Agent().Syncer.Running()) == 0
	})
	ctx := testcluster.Ctx(t, 60*time.Second)
	shards, _ := n.FSM().Shards(fsm.ShardFilter{})
	target := shards[0]
	for _, s := range shards {
		if s.Cards > target.Cards {
			target = s
		}
	}
	far := time.Now().Add(time.Hour)
	for _, s := range shards {
		if s.ID == target.ID {
			continue
		}
		if _, err := n.ProposeEncoded(ctx, fsm.TypeSetCheckpoint, fsm.SetCheckpoint{Shard: s.ID, NextRunAt: &far}); err != nil {
			t.Fatal(err)
		}
	}
	// A previous instance claimed the shard, started a new task, stored progress up to
	// the 50th card, then died.
	res, err := n.ProposeEncoded(ctx, fsm.TypeClaim, fsm.Claim{Shard: target.ID, Node: "previous", Epoch: target.Epoch, Lease: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.ProposeEncoded(ctx, fsm.TypeResync, fsm.Resync{Shard: target.ID}); err != nil {
		t.Fatal(err)
	}
	epoch := res.Epoch
	st, err := n.ProposeEncoded(ctx, fsm.TypeStartTask, fsm.StartTask{Shard: target.ID, Node: "previous", Epoch: epoch, DepVersion: 1})
	if err != nil {
		t.Fatal(err)
	}
	cards, _ := n.FSM().ShardCards(target.ID, "", 50)
	if len(cards) < 50 || target.Cards < 100 {
		t.Fatalf("largest shard %s holds %d cards: too few for this test", target.ID, target.Cards)
	}
	cursor := cards[len(cards)-1].ICCID
	var done []fsm.CardResult
	for _, card := range cards {
		done = append(done, fsm.CardResult{ICCID: card.ICCID, Data: &card.Data})
	}
	if _, err := n.ProposeEncoded(ctx, fsm.TypeFlush, fsm.Flush{Shard: target.ID, Node: "previous", Epoch: epoch, TaskID: st.TaskID, Cursor: cursor, Results: done, Lease: time.Hour}); err != nil {
		t.Fatal(err)
	}
	c.Sim.ResetStats()
	if _, err := n.ProposeEncoded(ctx, fsm.TypeRevokeNode, fsm.RevokeNode{Node: "previous", Reason: "died"}); err != nil {
		t.Fatal(err)
	}
	if !testcluster.Eventually(30*time.Second, func() bool {
		s, _ := n.FSM().Shard(target.ID)
		return s.Checkpoint.State == fsm.StateDone && s.Checkpoint.TaskID == st.TaskID
	}) {
		s, _ := n.FSM().Shard(target.ID)
		t.Fatalf("resumed task not done: %+v running=%v shares=%+v", s, c.Members[0].Agent().Syncer.Running(), c.Members[0].Agent().Syncer.Shares())
	}
	fetched := map[string]uint32{}
	for _, a := range c.Sim.Accounts() {
		for k, v := range c.Sim.FetchCounts(a.ID) {
			fetched[k] += v
		}
	}
	for _, card := range cards {
		if fetched[card.ICCID] > 0 {
			t.Fatalf("card %s before the stored cursor was fetched again", card.ICCID)
		}
	}
	rest, _ := n.FSM().ShardCards(target.ID, cursor, 1000)
	for _, card := range rest {
		if card.ErrKind == "" && fetched[card.ICCID] != 1 {
			t.Fatalf("card %s after the cursor fetched %d times, want once", card.ICCID, fetched[card.ICCID])
		}
	}
}

// Claim 6: a new task first checks the dependency data; not ready: leave the round;
// changed: the task is started with the new data.
func TestClaim6_DependencyCheckBeforeNewTask(t *testing.T) {
	t.Parallel()
	c := testcluster.New(t, testcluster.Options{Nodes: 1, Cards: 600, Sync: func(s *syncer.Config) { s.DependencyRetry = 300 * time.Millisecond }})
	n := c.Members[0].Node()
	ctx := testcluster.Ctx(t, 90*time.Second)
	testcluster.WaitFor(t, 30*time.Second, "catalog published", func() bool {
		es, _ := n.FSM().Enterprises()
		return len(es) > 0
	})
	// Take every enterprise's inventory off "ready" before the cards arrive.
	es, _ := n.FSM().Enterprises()
	for _, e := range es {
		if _, err := n.ProposeEncoded(ctx, fsm.TypeUpsertEnterprise, fsm.UpsertEnterprise{ID: e.ID, Name: e.Name, Accounts: e.Accounts, InventoryReady: false}); err != nil {
			t.Fatal(err)
		}
	}
	testcluster.WaitFor(t, 30*time.Second, "shards waiting for dependency data", func() bool {
		views, err := n.ShardViews(fsm.ShardFilter{}, "dependency not ready", time.Now())
		return err == nil && len(views) > 0
	})
	if got := unsynced(t, n); got == 0 {
		t.Fatal("cards synced although inventory was not ready")
	}
	for _, e := range es {
		if _, err := n.ProposeEncoded(ctx, fsm.TypeUpsertEnterprise, fsm.UpsertEnterprise{ID: e.ID, Name: e.Name, Accounts: e.Accounts, InventoryReady: true}); err != nil {
			t.Fatal(err)
		}
	}
	waitAllSynced(t, c, 60*time.Second)

	// Inventory changes: new cards imported into a done shard's enterprise are picked up
	// by the next task, whose dependency version differs.
	shards, _ := n.FSM().Shards(fsm.ShardFilter{})
	before := map[string]uint64{}
	for _, s := range shards {
		before[s.ID] = s.Checkpoint.DepVersion
	}
	e := es[0]
	var acct string
	for _, a := range e.Accounts {
		acct = a
		break
	}
	var cards []fsm.CardImport
	for i := 0; i < 5; i++ {
		cards = append(cards, fsm.CardImport{ICCID: fmt.Sprintf("8986000000000099%04d", i), Enterprise: e.ID, Account: acct})
	}
	if _, _, err := n.Import(ctx, cards, nil, nil); err != nil {
		t.Fatal(err)
	}
	testcluster.WaitFor(t, 30*time.Second, "new cards processed", func() bool {
		for _, ci := range cards {
			card, err := n.FSM().Card(ci.ICCID)
			if err != nil || card.SyncedAt.IsZero() {
				return false
			}
		}
		return true
	})
	card, _ := n.FSM().Card(cards[0].ICCID)
	s, _ := n.FSM().Shard(card.Shard)
	if s.Checkpoint.DepVersion == before[card.Shard] {
		t.Errorf("task after an inventory change kept dependency version %d", s.Checkpoint.DepVersion)
	}
}

// Claim 8: when the carrier fails or rate-limits, progress is saved and the round ends;
// the work resumes after the backoff and nothing is lost.
func TestClaim8_SaveProgressOnCarrierFailure(t *testing.T) {
	t.Parallel()
	c := testcluster.New(t, testcluster.Options{Nodes: 1, Cards: 1200})
	n := c.Members[0].Node()
	// Every account answers errors for a while.
	for _, a := range c.Sim.Accounts() {
		if err := c.Sim.SetFaults(a.ID, sim.Faults{Rates: map[string]float64{"rate_limited": 0.5, "transient_5xx": 0.2}}); err != nil {
			t.Fatal(err)
		}
	}
	testcluster.WaitFor(t, 60*time.Second, "a shard left its round in carrier backoff with progress saved", func() bool {
		shards, _ := n.FSM().Shards(fsm.ShardFilter{})
		for _, s := range shards {
			if s.Owner == "" && s.Checkpoint.State == fsm.StateRunning && s.Checkpoint.Cursor != "" &&
				strings.Contains(s.Checkpoint.Reason, "carrier backoff") {
				return true
			}
		}
		return false
	})
	c.Sim.ClearFaults()
	waitAllSynced(t, c, 90*time.Second)
}
