package node_test

import (
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"cardsync/testcluster"
)

// seatNames returns the seat order of a member's ring, "name" or "name*" for an absent
// seat, or nil when the member is down.
func seatNames(m *testcluster.Member) []string {
	n := m.Node()
	if n == nil {
		return nil
	}
	var out []string
	for _, s := range n.Ring().Seats() {
		if s.Absent {
			out = append(out, s.Name+"*")
		} else {
			out = append(out, s.Name)
		}
	}
	return out
}

// sameSeats reports whether every running member's ring has the seat order want.
func sameSeats(c *testcluster.Cluster, want []string) bool {
	for _, m := range c.Up() {
		if !slices.Equal(seatNames(m), want) {
			return false
		}
	}
	return true
}

// The replicated seats keep the join order: a member that is killed keeps its seat
// (absent) and only its own shards move; restarted, it gets the same shards back; a
// member joining takes exactly its quota, all from the others, nothing moving between
// them. Every node computes the same assignment at each step.
func TestSeatsKeepShardsInPlace(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Nodes: 3, NoSim: true, Profile: "fast"})
	c.WaitStable(30 * time.Second)
	c.WaitLeader(10 * time.Second)
	keys := make([]string, 0, 1000)
	for g := 0; g < 50; g++ {
		for i := 0; i < 20; i++ {
			keys = append(keys, fmt.Sprintf("g%d-%d", g, i))
		}
	}
	var order []string
	testcluster.WaitFor(t, 30*time.Second, "three seats on every ring", func() bool {
		order = seatNames(c.Members[0])
		return len(order) == 3 && sameSeats(c, order)
	})
	// assignment returns the members' common assignment, or nil while they differ.
	assignment := func() map[string]string {
		var a map[string]string
		for _, m := range c.Up() {
			b := m.Node().Ring().Assign(keys)
			if a != nil && !maps.Equal(a, b) {
				return nil
			}
			a = b
		}
		return a
	}
	before := assignment()
	if before == nil {
		t.Fatal("members disagree on the assignment")
	}
	held := map[string]int{}
	for _, o := range before {
		held[o]++
	}

	// Kill a follower: its seat stays, marked absent; only its shards move.
	victim := c.Follower()
	c.Kill(victim)
	absent := slices.Clone(order)
	absent[slices.Index(order, victim.Name)] += "*"
	testcluster.WaitFor(t, 30*time.Second, "the killed member absent on every ring", func() bool {
		return sameSeats(c, absent)
	})
	during := assignment()
	if during == nil {
		t.Fatal("members disagree on the assignment with a member down")
	}
	moved := 0
	for k, o := range before {
		if during[k] != o {
			moved++
			if o != victim.Name {
				t.Fatalf("%s moved from %s, which is up", k, o)
			}
		}
	}
	if moved != held[victim.Name] {
		t.Fatalf("%d shards moved, the killed member held %d", moved, held[victim.Name])
	}

	// Restarted, it takes its own seat and exactly its shards back.
	c.Restart(victim)
	testcluster.WaitFor(t, 60*time.Second, "the restarted member present on every ring", func() bool {
		return sameSeats(c, order)
	})
	if after := assignment(); !maps.Equal(after, before) {
		t.Fatal("the restarted member did not get its shards back")
	}

	// A fourth member joins as the junior seat and takes floor(1000/4) shards.
	added := c.Add()
	joined := append(slices.Clone(order), added.Name)
	testcluster.WaitFor(t, 60*time.Second, "four seats on every ring", func() bool {
		return sameSeats(c, joined)
	})
	after := assignment()
	if after == nil {
		t.Fatal("members disagree on the assignment after the join")
	}
	moved = 0
	for k, o := range before {
		if after[k] != o {
			moved++
			if after[k] != added.Name {
				t.Fatalf("%s moved from %s to %s, not to the new member", k, o, after[k])
			}
		}
	}
	if moved != len(keys)/4 {
		t.Fatalf("the join moved %d shards, want %d", moved, len(keys)/4)
	}
}
