package membership

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

func TestPartitionAndHeal(t *testing.T) {
	var ms []*Membership
	var ts []*FaultTransport
	for i := 0; i < 3; i++ {
		name := fmt.Sprintf("p-%d", i+1)
		tr, err := NewFaultTransport("127.0.0.1:0", nil)
		if err != nil {
			t.Fatal(err)
		}
		cfg := testConfig(name)
		cfg.BindAddr = tr.Addr()
		cfg.Transport = tr
		cfg.ReconnectInterval = 300 * time.Millisecond
		m := mustStart(t, cfg)
		if m.GossipAddr() != tr.Addr() {
			t.Fatalf("gossip addr %s, transport %s", m.GossipAddr(), tr.Addr())
		}
		if i > 0 {
			if _, err := m.Join(context.Background(), []string{ms[i-1].GossipAddr()}); err != nil {
				t.Fatal(err)
			}
		}
		ms, ts = append(ms, m), append(ts, tr)
	}
	for _, m := range ms {
		waitFor(t, 10*time.Second, "cluster to form", func() bool { return aliveCount(m) == 3 })
	}

	// Cut p-3 off from the other two, in both directions.
	ts[2].Block(ms[0].GossipAddr(), ms[1].GossipAddr())
	ts[0].Block(ms[2].GossipAddr())
	ts[1].Block(ms[2].GossipAddr())
	for _, m := range ms[:2] {
		waitFor(t, 15*time.Second, m.LocalName()+" to see p-3 dead", func() bool { return stateOf(m, "p-3") == StateDead })
	}
	waitFor(t, 15*time.Second, "p-3 to see the others dead", func() bool {
		return stateOf(ms[2], "p-1") == StateDead && stateOf(ms[2], "p-2") == StateDead
	})
	if _, err := ts[2].DialTimeout(ms[0].GossipAddr(), time.Second); !errors.Is(err, ErrBlocked) {
		t.Fatalf("dial to a blocked address: %v", err)
	}

	// Heal: the reconnect loop merges the halves without another Join.
	for _, tr := range ts {
		tr.UnblockAll()
	}
	for _, m := range ms {
		waitFor(t, 20*time.Second, m.LocalName()+" to see everyone alive after healing", func() bool { return aliveCount(m) == 3 })
	}
	ts[0].Block("127.0.0.1:1")
	ts[0].Unblock("127.0.0.1:1")
	if ts[0].isBlocked("127.0.0.1:1") {
		t.Fatal("Unblock did not lift the block")
	}
}

func TestFaultTransportBadAddress(t *testing.T) {
	if _, err := NewFaultTransport("nonsense", nil); err == nil {
		t.Fatal("want an error")
	}
	var _ memberlist.NodeAwareTransport = &FaultTransport{}
}
