package bench

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"cardsync/fsm"
	"cardsync/node"
	"cardsync/syncer"
	"cardsync/testcluster"
)

const (
	benchAccount = "bench-acc"
	benchLease   = 30 * time.Second
	proposeWait  = 30 * time.Second
)

// cardsyncStore drives a 3-node cardsync cluster: writer w proposes through node w (the
// two writers on followers are forwarded to the leader, as a syncer on those nodes is).
// Writers claim as writer-<w>. A claim is the syncer's claim plus its start of a new task; a flush is fsm.Flush.
type cardsyncStore struct {
	nodes []*node.Node

	mu     sync.Mutex
	epochs map[string]uint64 // epoch each shard had after its last claim
}

// newCardsyncStore starts 3 voters (bootstrap-expect 3) with no carrier simulator, so
// the syncer has no carrier client and leaves every shard alone, then imports the
// workload's cards: one enterprise per group, one account without credentials.
func newCardsyncStore(tb testing.TB, w workload, plans []*shardPlan) *cardsyncStore {
	tb.Helper()
	c := testcluster.New(tb, testcluster.Options{
		Nodes:           w.writers,
		NoSim:           true,
		BootstrapExpect: true,
		Sync: func(c *syncer.Config) {
			c.MaxWorkers = 1
			c.PollInterval = time.Hour
		},
		Node: func(_ int, c *node.Config) {
			// Diagnosis only: how much of the write path is the FSM's own fsync.
			c.FSMNoSync = os.Getenv("WRITEPATH_FSM_NOSYNC") == "1"
		},
	})
	c.WaitStable(60 * time.Second)
	leader := c.WaitLeader(30 * time.Second).Node()
	testcluster.WaitFor(tb, 30*time.Second, "3 voters", func() bool {
		f := leader.Raft().GetConfiguration()
		if f.Error() != nil {
			return false
		}
		voters := 0
		for _, s := range f.Configuration().Servers {
			if s.Suffrage == raft.Voter {
				voters++
			}
		}
		return voters == w.writers
	})

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	must := func(t fsm.Type, p any) {
		if _, err := leader.ProposeEncoded(ctx, t, p); err != nil {
			tb.Fatalf("setup %s: %v", t, err)
		}
	}
	// In maintenance no syncer claims anything; the shards come out of it not due for a
	// day, so the syncers leave them to the benchmark's writers (whose names are no
	// node's, so a syncer never takes their claims for its own).
	must(fsm.TypeSetMaintenance, fsm.SetMaintenance{On: true, Reason: "benchmark setup"})
	must(fsm.TypeUpsertAccount, fsm.UpsertAccount{Account: fsm.Account{ID: benchAccount, Carrier: fsm.CarrierOneLink,
		TTL: time.Hour, RatePerSec: 100, Burst: 10, Concurrency: 4, BatchSize: 100, CredentialsValid: true}})
	var cards []fsm.CardImport
	for _, p := range plans {
		must(fsm.TypeUpsertEnterprise, fsm.UpsertEnterprise{ID: p.enterprise, Name: p.enterprise,
			Accounts: map[string]string{fsm.CarrierOneLink: benchAccount}, InventoryReady: true})
		for _, id := range p.iccids {
			cards = append(cards, fsm.CardImport{ICCID: id, Enterprise: p.enterprise, Account: benchAccount})
		}
	}
	for start := 0; start < len(cards); start += node.ImportBatch {
		end := min(start+node.ImportBatch, len(cards))
		must(fsm.TypeImportCards, fsm.ImportCards{Groups: len(plans), ShardSize: w.shardSize(), Cards: cards[start:end]})
	}
	later := time.Now().Add(24 * time.Hour)
	for _, p := range plans {
		must(fsm.TypeSetCheckpoint, fsm.SetCheckpoint{Shard: p.id, NextRunAt: &later})
	}
	must(fsm.TypeSetMaintenance, fsm.SetMaintenance{On: false})

	st := &cardsyncStore{epochs: map[string]uint64{}}
	for _, m := range c.Members {
		st.nodes = append(st.nodes, m.Node())
	}
	want := leader.FSM().AppliedIndex()
	testcluster.WaitFor(tb, 60*time.Second, "every replica applied the import", func() bool {
		for _, n := range st.nodes {
			if n.FSM().AppliedIndex() < want {
				return false
			}
		}
		return true
	})
	// The import must have laid the shards out as planned.
	for _, p := range plans {
		got, err := leader.FSM().ShardCards(p.id, "", len(p.iccids)+1)
		if err != nil {
			tb.Fatalf("shard %s: %v", p.id, err)
		}
		ids := make([]string, len(got))
		for i, c := range got {
			ids[i] = c.ICCID
		}
		if !slices.Equal(ids, p.iccids) {
			tb.Fatalf("shard %s holds %d cards, not the %d planned", p.id, len(ids), len(p.iccids))
		}
	}
	for _, p := range plans {
		sh, err := leader.FSM().Shard(p.id)
		if err != nil || sh.Epoch != 0 || sh.Owner != "" {
			tb.Fatalf("shard %s after setup: %+v %v", p.id, sh, err)
		}
	}
	return st
}

// writerName is the owner name writer w claims shards with.
func writerName(w int) string { return fmt.Sprintf("writer-%d", w) }

// propose proposes through writer w's node; committedOnly returns once the leader has
// applied the command, without waiting for the writer's replica (node.ProposeCommitted),
// as the syncer's worker does for the flushes in the middle of a round.
func (s *cardsyncStore) propose(ctx context.Context, w int, t fsm.Type, p any, committedOnly bool) (*fsm.Result, error) {
	cmd, err := fsm.Encode(t, p)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, proposeWait)
	defer cancel()
	if committedOnly {
		return s.nodes[w].ProposeCommitted(ctx, cmd)
	}
	return s.nodes[w].Propose(ctx, cmd)
}

// claim reads the shard's epoch from the writer's local replica (the last epoch this
// store saw wins if the replica lags) and proposes the claim, which starts a task.
func (s *cardsyncStore) claim(ctx context.Context, w int, sh *shardPlan) (claimToken, error) {
	n := s.nodes[w]
	cur, err := n.FSM().Shard(sh.id)
	if err != nil {
		return claimToken{}, err
	}
	s.mu.Lock()
	epoch := max(cur.Epoch, s.epochs[sh.id])
	s.mu.Unlock()
	// As the syncer does, the claim starts the task in the same Raft entry.
	res, err := s.propose(ctx, w, fsm.TypeClaim, fsm.Claim{Shard: sh.id, Node: writerName(w), Epoch: epoch, Lease: benchLease, StartTask: true}, false)
	if err != nil {
		return claimToken{}, err
	}
	s.mu.Lock()
	s.epochs[sh.id] = res.Epoch
	s.mu.Unlock()
	return claimToken{epoch: res.Epoch, task: res.TaskID}, nil
}

// flush proposes fsm.Flush; the last flush of a shard closes the task and releases the
// claim, as the syncer's worker does when a shard is done. As in the worker, only the
// last flush waits for the writer's own replica.
func (s *cardsyncStore) flush(ctx context.Context, w int, f flushReq) error {
	res, err := s.propose(ctx, w, fsm.TypeFlush, fsm.Flush{
		Shard: f.shard.id, Node: writerName(w), Epoch: f.token.epoch, TaskID: f.token.task,
		Cursor: f.cursor, Results: f.results, Done: f.last, Release: f.last, Lease: benchLease,
	}, !f.last)
	if err != nil {
		return err
	}
	if res.Updated != len(f.results) {
		return fmt.Errorf("flush updated %d cards, sent %d", res.Updated, len(f.results))
	}
	return nil
}
