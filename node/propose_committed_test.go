package node_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"cardsync/fsm"
	"cardsync/testcluster"
)

// ProposeCommitted through a follower returns the leader's result; the follower's
// replica catches up on its own, and rule errors keep their identity.
func TestProposeCommittedThroughFollower(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Nodes: 3, NoSim: true})
	c.WaitStable(30 * time.Second)
	c.WaitLeader(10 * time.Second)
	f := c.Follower()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := f.Node().ProposeCommitted(ctx, enterpriseCmd(t, "e-committed"))
	if err != nil || res == nil {
		t.Fatalf("propose committed: %v %v", res, err)
	}
	testcluster.WaitFor(t, 10*time.Second, "the follower's replica applies the write", func() bool {
		_, err := f.Node().FSM().Enterprise("e-committed")
		return err == nil
	})
	bad, err := fsm.Encode(fsm.TypeFlush, fsm.Flush{Shard: "g0-0", Node: "nobody", Epoch: 7})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Node().ProposeCommitted(ctx, bad); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a flush of an unknown shard: %v", err)
	}
}
