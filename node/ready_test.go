package node_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"cardsync/testcluster"
)

// A follower restarted after the log moved far ahead reports ready (and goes on the
// ring) only once it has applied up to near the leader's commit index, not as soon as it
// hears the leader with its own stale commit index.
func TestRestartedFollowerReadyOnlyWhenCaughtUp(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Nodes: 3, NoSim: true, Profile: "fast"})
	c.WaitStable(30 * time.Second)
	l := c.WaitLeader(10 * time.Second)
	f := c.Follower()
	c.Kill(f)

	// Move the log 800 entries ahead while it is down.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 100; i++ {
				if _, err := l.Node().Propose(ctx, enterpriseCmd(t, fmt.Sprintf("e-%d-%d", w, i))); err != nil {
					errs <- err
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatalf("write: %v", err)
	}

	c.Restart(f)
	deadline := time.Now().Add(60 * time.Second)
	for {
		n := f.Node()
		if n != nil && n.Ready() {
			commit, _ := strconv.ParseUint(l.Node().Raft().Stats()["commit_index"], 10, 64)
			if applied := n.FSM().AppliedIndex(); applied+250 < commit {
				t.Fatalf("ready with applied index %d, leader's commit index %d", applied, commit)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the restarted follower never became ready")
		}
		time.Sleep(2 * time.Millisecond)
	}
}
