package node_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"cardsync/fsm"
	"cardsync/membership"
	"cardsync/node"
	"cardsync/testcluster"
)

func enterpriseCmd(t testing.TB, id string) []byte {
	t.Helper()
	cmd, err := fsm.Encode(fsm.TypeUpsertEnterprise, fsm.UpsertEnterprise{ID: id, Name: "Test " + id, InventoryReady: true})
	if err != nil {
		t.Fatal(err)
	}
	return cmd
}

func getJSON(t testing.TB, url string, out any) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatalf("GET %s: decode: %v", url, err)
		}
	}
	return resp.StatusCode
}

// devConfig is a single dev node's configuration on dir, every address on a free
// loopback port.
func devConfig(dir string) node.Config {
	cfg := node.DefaultConfig()
	cfg.DataDir = dir
	cfg.Dev = true
	cfg.GossipAddr, cfg.RaftAddr, cfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	return cfg
}

// A single-node agent on a temp dir: propose, read back over HTTP, stop, restart, still there.
func TestSingleNodeProposeRestart(t *testing.T) {
	cfg := devConfig(t.TempDir())
	n, err := node.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	testcluster.WaitFor(t, 10*time.Second, "single node ready", n.Ready)
	ctx := testcluster.Ctx(t, 10*time.Second)
	if _, err := n.Propose(ctx, enterpriseCmd(t, "acme")); err != nil {
		t.Fatalf("propose: %v", err)
	}
	var ents struct {
		Enterprises []fsm.Enterprise `json:"enterprises"`
	}
	if code := getJSON(t, "http://"+n.HTTPAddr()+"/v1/enterprises", &ents); code != 200 || len(ents.Enterprises) != 1 || ents.Enterprises[0].ID != "acme" {
		t.Fatalf("enterprises over HTTP: code %d, %+v", code, ents)
	}
	var st node.Status
	getJSON(t, "http://"+n.HTTPAddr()+"/v1/status", &st)
	if st.Node != n.Name() || st.Leader != n.Name() || st.RaftState != "Leader" || st.AppliedIndex == 0 || !st.Ready {
		t.Fatalf("status: %+v", st)
	}
	name, applied := n.Name(), st.AppliedIndex
	if err := n.Shutdown(); err != nil {
		t.Fatalf("shutdown: %v", err)
	}

	cfg.Name = "" // the name comes back from the data dir
	n2, err := node.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer n2.Shutdown()
	if n2.Name() != name {
		t.Fatalf("name after restart %q, want %q", n2.Name(), name)
	}
	// The FSM keeps its state and applied index without replaying from zero.
	if got := n2.FSM().AppliedIndex(); got < applied-1 {
		t.Fatalf("fsm applied index after restart %d, want about %d", got, applied)
	}
	testcluster.WaitFor(t, 10*time.Second, "restarted node ready", n2.Ready)
	if code := getJSON(t, "http://"+n2.HTTPAddr()+"/v1/enterprises", &ents); code != 200 || len(ents.Enterprises) != 1 {
		t.Fatalf("after restart: %d %+v", code, ents)
	}
	// A data dir belongs to one node name.
	cfg.Name = "someone-else"
	if _, err := node.New(cfg); !errors.Is(err, node.ErrInvalidConfig) {
		t.Fatalf("foreign name on data dir: %v", err)
	}
}

func TestHTTPErrorsAreJSON(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Nodes: 1, NoSim: true})
	c.WaitStable(15 * time.Second)
	base := "http://" + c.Members[0].Node().HTTPAddr()
	var body map[string]any
	if code := getJSON(t, base+"/v1/cards/NOTANICCID", &body); code != 400 || body["error"] == nil {
		t.Fatalf("bad iccid: %d %v", code, body)
	}
	if code := getJSON(t, base+"/v1/cards/89860000000000000001", &body); code != 404 || body["error"] == nil {
		t.Fatalf("unknown card: %d %v", code, body)
	}
	if code := getJSON(t, base+"/readyz", &body); code != 200 {
		t.Fatalf("readyz: %d %v", code, body)
	}
}

func serverIDs(n *node.Node) []string {
	f := n.Raft().GetConfiguration()
	if f.Error() != nil {
		return nil
	}
	var ids []string
	for _, s := range f.Configuration().Servers {
		ids = append(ids, string(s.ID))
	}
	slices.Sort(ids)
	return ids
}

func voters(n *node.Node) int {
	f := n.Raft().GetConfiguration()
	if f.Error() != nil {
		return 0
	}
	v := 0
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter {
			v++
		}
	}
	return v
}

func TestClusterFormsFromOneSeed(t *testing.T) {
	for _, size := range []int{3, 5} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			c := testcluster.New(t, testcluster.Options{Nodes: size, NoSim: true, Node: func(i int, cfg *node.Config) {
				if size == 5 {
					cfg.MaxVoters = 5
				}
			}})
			c.WaitStable(30 * time.Second)
			leader := c.WaitLeader(10 * time.Second)
			testcluster.WaitFor(t, 20*time.Second, fmt.Sprintf("%d voters", size), func() bool { return voters(leader.Node()) == size })
			want := serverIDs(leader.Node())
			for _, m := range c.Members {
				if got := serverIDs(m.Node()); !slices.Equal(got, want) {
					t.Fatalf("%s sees servers %v, leader sees %v", m.Name, got, want)
				}
			}
			// Every node computes the same ring once membership converges.
			ring := leader.Node().Ring().Members()
			for _, m := range c.Members {
				if got := m.Node().Ring().Members(); !slices.Equal(got, ring) {
					t.Fatalf("%s ring %v, leader ring %v", m.Name, got, ring)
				}
				for _, key := range []string{"g0-0", "g17-3", "g63-9"} {
					if m.Node().Ring().Owner(key) != leader.Node().Ring().Owner(key) {
						t.Fatalf("%s: owner of %s differs", m.Name, key)
					}
				}
			}
		})
	}
}

func TestBootstrapExpectFormsOneCluster(t *testing.T) {
	runs := 10
	if testing.Short() {
		runs = 3
	}
	for i := 0; i < runs; i++ {
		c := testcluster.New(t, testcluster.Options{Nodes: 3, NoSim: true, BootstrapExpect: true})
		c.WaitStable(30 * time.Second)
		leader := c.WaitLeader(10 * time.Second)
		want := serverIDs(leader.Node())
		if len(want) != 3 {
			t.Fatalf("run %d: leader's configuration %v", i, want)
		}
		terms := map[string]bool{}
		for _, m := range c.Members {
			if got := serverIDs(m.Node()); !slices.Equal(got, want) {
				t.Fatalf("run %d: %s sees %v, leader %v", i, m.Name, got, want)
			}
			_, id := m.Node().Raft().LeaderWithID()
			terms[string(id)] = true
		}
		if len(terms) != 1 {
			t.Fatalf("run %d: members disagree on the leader: %v", i, terms)
		}
		c.Close()
	}
}

func TestLeaderFailoverWriteThroughFollower(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Nodes: 3, NoSim: true})
	c.WaitStable(30 * time.Second)
	old := c.WaitLeader(10 * time.Second)
	testcluster.WaitFor(t, 20*time.Second, "3 voters", func() bool { return voters(old.Node()) == 3 })
	c.Kill(old)
	leader := c.WaitLeader(20 * time.Second)
	if leader == old {
		t.Fatal("killed leader still leads")
	}
	f := c.Follower()
	if f == nil {
		t.Fatal("no follower")
	}
	ctx := testcluster.Ctx(t, 20*time.Second)
	if _, err := f.Node().Propose(ctx, enterpriseCmd(t, "after-failover")); err != nil {
		t.Fatalf("write through follower: %v", err)
	}
	testcluster.WaitFor(t, 10*time.Second, "write visible on the leader", func() bool {
		_, err := leader.Node().FSM().Enterprise("after-failover")
		return err == nil
	})

	// Restart the killed node from its data dir on new ports: it rejoins with no
	// duplicate Raft entries and catches up.
	c.Restart(old)
	c.WaitStable(30 * time.Second)
	testcluster.WaitFor(t, 20*time.Second, "restarted node caught up", func() bool {
		_, err := old.Node().FSM().Enterprise("after-failover")
		return err == nil
	})
	l := c.WaitLeader(10 * time.Second)
	testcluster.WaitFor(t, 20*time.Second, "raft configuration of exactly 3 servers at current addresses", func() bool {
		f := l.Node().Raft().GetConfiguration()
		if f.Error() != nil {
			return false
		}
		servers := f.Configuration().Servers
		ids, addrs := map[raft.ServerID]bool{}, map[raft.ServerAddress]bool{}
		for _, s := range servers {
			ids[s.ID], addrs[s.Address] = true, true
		}
		for _, m := range c.Members {
			for _, s := range servers {
				if string(s.ID) == m.Name && string(s.Address) != m.Node().RaftAddr() {
					return false
				}
			}
		}
		return len(servers) == 3 && len(ids) == 3 && len(addrs) == 3
	})
}

func TestGracefulLeaveRemovesRaftServer(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Nodes: 3, NoSim: true})
	c.WaitStable(30 * time.Second)
	l := c.WaitLeader(10 * time.Second)
	testcluster.WaitFor(t, 20*time.Second, "3 voters", func() bool { return voters(l.Node()) == 3 })
	// The leader stops gracefully: it hands leadership over, leaves gossip, and the new
	// leader removes it from the Raft configuration.
	stopped := l.Name
	c.Stop(l)
	nl := c.WaitLeader(20 * time.Second)
	testcluster.WaitFor(t, 30*time.Second, "left member removed from raft", func() bool {
		l := c.Leader()
		return l != nil && !slices.Contains(serverIDs(l.Node()), stopped)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := nl.Node().Propose(ctx, enterpriseCmd(t, "x")); err != nil {
		t.Fatalf("write after graceful leader stop: %v", err)
	}
}

// votersAt reports whether l's Raft configuration has exactly the members as voters, each
// at the Raft address it listens on now.
func votersAt(l *node.Node, ms []*testcluster.Member) bool {
	f := l.Raft().GetConfiguration()
	if f.Error() != nil {
		return false
	}
	servers := f.Configuration().Servers
	if len(servers) != len(ms) {
		return false
	}
	for _, m := range ms {
		n := m.Node()
		if n == nil {
			return false
		}
		ok := false
		for _, s := range servers {
			if string(s.ID) == m.Name && string(s.Address) == n.RaftAddr() && s.Suffrage == raft.Voter {
				ok = true
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// A member that stops (gracefully or hard) and restarts from its data dir on new ports
// comes back as a full voter at its new address, promptly: a second member can then fail
// and the cluster still has a quorum. A hard-killed member is restarted after gossip has
// declared it dead, the case where its name used to be refused from the new address for
// the reclaim time (30 s), leaving the cluster a voter short.
func TestRestartedMemberBecomesVoterAgain(t *testing.T) {
	for _, tc := range []struct {
		name string
		stop func(c *testcluster.Cluster, m *testcluster.Member)
	}{
		{"graceful-stop", func(c *testcluster.Cluster, m *testcluster.Member) { c.Stop(m) }},
		{"kill", func(c *testcluster.Cluster, m *testcluster.Member) { c.Kill(m) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testcluster.New(t, testcluster.Options{Nodes: 3, NoSim: true, Profile: "fast"})
			c.WaitStable(30 * time.Second)
			l := c.WaitLeader(10 * time.Second)
			testcluster.WaitFor(t, 20*time.Second, "3 voters", func() bool { return votersAt(l.Node(), c.Members) })
			victim := c.Follower()
			if victim == nil {
				t.Fatal("no follower")
			}
			tc.stop(c, victim)
			testcluster.WaitFor(t, 20*time.Second, "leader sees the member gone", func() bool {
				l := c.Leader()
				if l == nil {
					return false
				}
				m, ok := l.Node().Membership().Member(victim.Name)
				return ok && (m.State == membership.StateDead || m.State == membership.StateLeft)
			})
			c.Restart(victim)
			testcluster.WaitFor(t, 15*time.Second, "3 voters at current addresses with a leader", func() bool {
				l := c.Leader()
				return l != nil && votersAt(l.Node(), c.Members) && victim.Node().Ready()
			})

			// Fail another member, the leader if the restarted one does not lead: the
			// two left must still commit a write.
			other := c.Leader()
			if other == nil || other == victim {
				for _, m := range c.Members {
					if m != victim {
						other = m
						break
					}
				}
			}
			c.Kill(other)
			ctx := testcluster.Ctx(t, 30*time.Second)
			if _, err := victim.Node().Propose(ctx, enterpriseCmd(t, "after-restart")); err != nil {
				t.Fatalf("write with %s restarted and %s killed: %v", victim.Name, other.Name, err)
			}
		})
	}
}
