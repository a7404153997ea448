package testcluster

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"cardsync/fsm"
	"cardsync/membership"
)

func TestFaultsBlockedLinks(t *testing.T) {
	f := newFaults(&Cluster{T: t})
	f.Partition([]string{"a"}, []string{"b", "c"})
	f.PartitionOneWay([]string{"d"}, []string{"e"})
	f.Pause("p")
	tests := []struct {
		from, to string
		want     bool
	}{
		{"a", "b", true}, {"b", "a", true}, {"c", "a", true}, {"b", "c", false},
		{"d", "e", true}, {"e", "d", false},
		{"p", "a", true}, {"b", "p", true},
		{"a", "", false}, {"a", "a", false},
	}
	for _, tt := range tests {
		if got := f.blocked(tt.from, tt.to); got != tt.want {
			t.Errorf("blocked(%s, %s) = %v, want %v", tt.from, tt.to, got, tt.want)
		}
	}
	f.Resume("p")
	f.HealNetwork()
	for _, tt := range tests {
		if f.blocked(tt.from, tt.to) {
			t.Errorf("blocked(%s, %s) after healing", tt.from, tt.to)
		}
	}
	c := f.Counts()
	if c[FaultPartition] != 1 || c[FaultOneWay] != 1 || c[FaultPause] != 1 {
		t.Errorf("counts: %v", c)
	}
}

func TestFaultsCarrierCallsWaitForResume(t *testing.T) {
	tags := make(chan string, 4)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tags <- r.Header.Get(TagHeader)
	}))
	defer srv.Close()
	f := newFaults(&Cluster{T: t})
	client := &http.Client{Transport: &carrierTransport{f: f, name: "node-1", next: http.DefaultTransport}}

	f.Pause("node-1")
	done := make(chan error, 1)
	go func() {
		resp, err := client.Get(srv.URL)
		if err == nil {
			_ = resp.Body.Close()
		}
		done <- err
	}()
	select {
	case <-tags:
		t.Fatal("a paused member's carrier call reached the carrier")
	case <-time.After(200 * time.Millisecond):
	}
	f.Resume("node-1")
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if tag := <-tags; tag != "node-1" {
		t.Errorf("tag %q", tag)
	}

	// A paused call gives up with its context.
	f.Pause("node-1")
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
	if _, err := client.Do(req); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("paused call with a deadline: %v", err)
	}
}

func TestFaultsConnCut(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				buf := make([]byte, 64)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					_, _ = c.Write(buf[:n])
				}
			}()
		}
	}()
	f := newFaults(&Cluster{T: t})
	f.register("b", ln.Addr().String())
	s := &faultStream{StreamLayer: dialOnly{}, f: f, from: "a"}
	conn, err := s.Dial(raft.ServerAddress(ln.Addr().String()), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := conn.Read(buf); err != nil {
		t.Fatal(err)
	}
	f.PartitionOneWay([]string{"b"}, []string{"a"})
	if _, err := conn.Write([]byte("ping")); err != nil {
		t.Fatalf("write a->b with only b->a cut: %v", err)
	}
	if _, err := conn.Read(buf); !errors.Is(err, ErrPartitioned) {
		t.Fatalf("read over a cut link: %v", err)
	}
	if _, err := s.Dial(raft.ServerAddress(ln.Addr().String()), time.Second); err != nil {
		t.Fatalf("dial a->b with only b->a cut: %v", err)
	}
	f.Partition([]string{"a"}, []string{"b"})
	if _, err := s.Dial(raft.ServerAddress(ln.Addr().String()), time.Second); !errors.Is(err, ErrPartitioned) {
		t.Fatalf("dial over a cut link: %v", err)
	}
}

func waitVoters(t *testing.T, c *Cluster, n int) {
	t.Helper()
	WaitFor(t, 30*time.Second, "voters", func() bool {
		l := c.Leader()
		if l == nil {
			return false
		}
		f := l.Node().Raft().GetConfiguration()
		if f.Error() != nil {
			return false
		}
		v := 0
		for _, s := range f.Configuration().Servers {
			if s.Suffrage == raft.Voter {
				v++
			}
		}
		return v == n
	})
}

type dialOnly struct{ raft.StreamLayer }

func (dialOnly) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return net.DialTimeout("tcp", string(addr), timeout)
}

// A partitioned leader loses its office to the majority side, gossip on both sides sees the
// other as failed, and healing brings one agreed leader back.
func TestFaultsPartitionLeader(t *testing.T) {
	c := New(t, Options{Nodes: 3, NoSim: true, Faults: true})
	c.WaitStable(30 * time.Second)
	waitVoters(t, c, 3)
	old := c.WaitLeader(10 * time.Second)
	var rest []string
	for _, m := range c.Members {
		if m != old {
			rest = append(rest, m.Name)
		}
	}
	c.Faults().Partition([]string{old.Name}, rest)
	WaitFor(t, 30*time.Second, "a new leader on the majority side", func() bool {
		for _, m := range c.Members {
			if m != old && m.Node().IsLeader() {
				return true
			}
		}
		return false
	})
	WaitFor(t, 30*time.Second, "the majority sees the old leader failed", func() bool {
		for _, mem := range c.Members[(old.Index+1)%3].Node().Membership().Members() {
			if mem.Name == old.Name {
				return mem.State != membership.StateAlive
			}
		}
		return true
	})
	c.Faults().HealNetwork()
	c.WaitStable(60 * time.Second)
	c.WaitLeader(10 * time.Second)
}

// A paused member is declared failed and loses its Raft voice; after Resume it rejoins.
func TestFaultsPauseMember(t *testing.T) {
	c := New(t, Options{Nodes: 3, NoSim: true, Faults: true})
	c.WaitStable(30 * time.Second)
	waitVoters(t, c, 3)
	p := c.Follower()
	c.Faults().Pause(p.Name)
	WaitFor(t, 30*time.Second, "paused member seen failed", func() bool {
		for _, mem := range c.Leader().Node().Membership().Members() {
			if mem.Name == p.Name {
				return mem.State != membership.StateAlive
			}
		}
		return false
	})
	if p.Node().Raft().State() == raft.Leader {
		t.Fatal("paused member leads")
	}
	c.Faults().Resume(p.Name)
	c.WaitStable(60 * time.Second)
}

// A paused follower cannot forward proposals to the leader: the internal HTTP path goes
// through the switchboard like gossip and Raft.
func TestFaultsPauseCutsForwarding(t *testing.T) {
	c := New(t, Options{Nodes: 3, NoSim: true, Faults: true})
	c.WaitStable(30 * time.Second)
	waitVoters(t, c, 3)
	p := c.Follower()
	cmd, err := fsm.Encode(fsm.TypeResync, fsm.Resync{Shard: "no-such-shard"})
	if err != nil {
		t.Fatal(err)
	}
	// Healthy: the proposal reaches the leader's FSM, which rejects it by rule.
	_, err = p.Node().Propose(Ctx(t, 10*time.Second), cmd)
	if code := fsm.ErrorCode(err); err == nil || code == fsm.CodeInternal {
		t.Fatalf("healthy forward: want an FSM rule rejection, got %v", err)
	}
	c.Faults().Pause(p.Name)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = p.Node().Propose(ctx, cmd)
	if err == nil || fsm.ErrorCode(err) != fsm.CodeInternal {
		t.Fatalf("paused member's forwarded proposal reached the leader: %v", err)
	}
	c.Faults().Resume(p.Name)
	c.WaitStable(60 * time.Second)
}

// A forwarded proposal that reached the leader but whose answer was lost has an unknown
// outcome: the leader applied it, so the follower must report that instead of sending
// it again (a retried claim would come back refused while the first one was granted).
func TestForwardedProposalWithLostAnswerIsNotRetried(t *testing.T) {
	c := New(t, Options{Nodes: 3, NoSim: true, Faults: true})
	c.WaitStable(30 * time.Second)
	waitVoters(t, c, 3)
	l := c.WaitLeader(10 * time.Second)
	p := c.Follower()
	cmd, err := fsm.Encode(fsm.TypeSetMaintenance, fsm.SetMaintenance{On: true, Reason: "lost answer"})
	if err != nil {
		t.Fatal(err)
	}
	// A first proposal opens the follower's forwarding stream to the leader (without it,
	// the stream's opening handshake is what the partition cuts, before any command is
	// sent, and the follower rightly retries).
	off, err := fsm.Encode(fsm.TypeSetMaintenance, fsm.SetMaintenance{On: false})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Node().Propose(Ctx(t, 10*time.Second), off); err != nil {
		t.Fatalf("forward before the partition: %v", err)
	}
	c.Faults().PartitionOneWay([]string{l.Name}, []string{p.Name})
	_, err = p.Node().Propose(Ctx(t, 10*time.Second), cmd)
	if err == nil || !strings.Contains(err.Error(), "outcome unknown") {
		t.Fatalf("want an unknown outcome, got %v", err)
	}
	if on, reason, _ := l.Node().FSM().Maintenance(); !on || reason != "lost answer" {
		t.Fatalf("leader did not apply the proposal: %v %q", on, reason)
	}
	c.Faults().HealNetwork()
	c.WaitStable(60 * time.Second)
}
