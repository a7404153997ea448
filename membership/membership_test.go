package membership

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// startCluster starts n fast-profile members; member i joins member i-1 only.
func startCluster(t *testing.T, n int, tweak func(*Config)) []*Membership {
	t.Helper()
	var ms []*Membership
	for i := 0; i < n; i++ {
		cfg := testConfig(fmt.Sprintf("node-%d", i+1))
		cfg.Meta = Meta{RaftAddr: fmt.Sprintf("127.0.0.1:%d", 9000+i), HTTPAddr: fmt.Sprintf("127.0.0.1:%d", 8700+i), BootstrapExpect: n, Voter: true, Version: 1}
		if tweak != nil {
			tweak(&cfg)
		}
		m := mustStart(t, cfg)
		if i > 0 {
			got, err := m.Join(context.Background(), []string{ms[i-1].GossipAddr()})
			if err != nil || got != 1 {
				t.Fatalf("join %s: got %d, %v", cfg.Name, got, err)
			}
		}
		ms = append(ms, m)
	}
	for _, m := range ms {
		waitFor(t, 10*time.Second, m.LocalName()+" to see everyone alive", func() bool { return aliveCount(m) == n })
	}
	return ms
}

func TestClusterFormsFromOneSeedEach(t *testing.T) {
	ms := startCluster(t, 3, nil)
	for _, m := range ms {
		members := m.Members()
		if len(members) != 3 {
			t.Fatalf("%s sees %d members", m.LocalName(), len(members))
		}
		for i, mem := range members {
			want := fmt.Sprintf("node-%d", i+1)
			if mem.Name != want {
				t.Errorf("%s: member %d is %q, want %q (sorted)", m.LocalName(), i, mem.Name, want)
			}
			if mem.Meta.RaftAddr != fmt.Sprintf("127.0.0.1:%d", 9000+i) || mem.Meta.BootstrapExpect != 3 || !mem.Meta.Voter {
				t.Errorf("%s: meta of %s = %+v", m.LocalName(), mem.Name, mem.Meta)
			}
			if mem.Addr != ms[i].GossipAddr() {
				t.Errorf("%s: addr of %s = %s, want %s", m.LocalName(), mem.Name, mem.Addr, ms[i].GossipAddr())
			}
			if mem.Since.IsZero() {
				t.Errorf("%s: Since of %s is zero", m.LocalName(), mem.Name)
			}
		}
	}
	local := ms[0].LocalMember()
	if local.Name != "node-1" || local.State != StateAlive || local.Addr != ms[0].GossipAddr() {
		t.Errorf("LocalMember = %+v", local)
	}
	if ms[0].LocalName() != "node-1" || ms[0].NumAlive() != 3 {
		t.Errorf("LocalName %q NumAlive %d", ms[0].LocalName(), ms[0].NumAlive())
	}
}

func TestMetaUpdatesPropagate(t *testing.T) {
	ms := startCluster(t, 3, nil)
	events, cancel := ms[0].Subscribe()
	defer cancel()

	if err := ms[2].UpdateMeta(func(m *Meta) { m.Ready = true; m.Version = 7 }); err != nil {
		t.Fatalf("UpdateMeta: %v", err)
	}
	if got := ms[2].LocalMeta(); !got.Ready || got.Version != 7 {
		t.Fatalf("LocalMeta = %+v", got)
	}
	for _, m := range ms {
		waitFor(t, 5*time.Second, m.LocalName()+" to see node-3 ready", func() bool {
			mem, _ := m.Member("node-3")
			return mem.Meta.Ready && mem.Meta.Version == 7 && mem.Meta.RaftAddr == "127.0.0.1:9002"
		})
	}
	select {
	case ev := <-events:
		if ev.Type != EventUpdate || ev.Member.Name != "node-3" || !ev.Member.Meta.Ready {
			t.Fatalf("event = %+v", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no update event")
	}
	if got := RingMembers(ms[0].Members()); len(got) != 1 || got[0] != "node-3" {
		t.Fatalf("RingMembers = %v, want [node-3]", got)
	}
}

func TestHardStopIsSeenDeadAndLeaveIsSeenLeft(t *testing.T) {
	ms := startCluster(t, 4, nil)
	// node-4 hard-stops: no leave message.
	if err := ms[3].Shutdown(); err != nil {
		t.Fatal(err)
	}
	// node-3 leaves gracefully, then stops.
	if err := ms[2].Leave(2 * time.Second); err != nil {
		t.Fatalf("Leave: %v", err)
	}
	if err := ms[2].Shutdown(); err != nil {
		t.Fatal(err)
	}
	for _, m := range ms[:2] {
		waitFor(t, 10*time.Second, m.LocalName()+" to see node-4 dead", func() bool { return stateOf(m, "node-4") == StateDead })
		waitFor(t, 10*time.Second, m.LocalName()+" to see node-3 left", func() bool { return stateOf(m, "node-3") == StateLeft })
		if n := len(m.Members()); n != 4 {
			t.Errorf("%s lists %d members, want 4 (dead and left included)", m.LocalName(), n)
		}
		if n := m.NumAlive(); n != 2 {
			t.Errorf("%s NumAlive = %d, want 2", m.LocalName(), n)
		}
	}
}

func TestRestartWithSameNameOnNewPort(t *testing.T) {
	ms := startCluster(t, 3, func(c *Config) { c.DeadNodeReclaimTime = 200 * time.Millisecond })
	events, cancel := ms[0].Subscribe()
	defer cancel()
	oldAddr := ms[2].GossipAddr()
	if err := ms[2].Shutdown(); err != nil {
		t.Fatal(err)
	}
	for _, m := range ms[:2] {
		waitFor(t, 10*time.Second, m.LocalName()+" to see node-3 dead", func() bool { return stateOf(m, "node-3") == StateDead })
	}
	time.Sleep(300 * time.Millisecond) // let DeadNodeReclaimTime pass: the condition under test is elapsed time

	cfg := testConfig("node-3")
	cfg.DeadNodeReclaimTime = 200 * time.Millisecond
	cfg.Meta = Meta{RaftAddr: "127.0.0.1:9102", Version: 2}
	re := mustStart(t, cfg)
	if re.GossipAddr() == oldAddr {
		t.Skipf("kernel handed out the same port %s again", oldAddr)
	}
	if _, err := re.Join(context.Background(), []string{ms[0].GossipAddr()}); err != nil {
		t.Fatalf("rejoin: %v", err)
	}
	for _, m := range ms[:2] {
		waitFor(t, 10*time.Second, m.LocalName()+" to accept node-3 at its new address", func() bool {
			mem, _ := m.Member("node-3")
			return mem.State == StateAlive && mem.Addr == re.GossipAddr() && mem.Meta.RaftAddr == "127.0.0.1:9102"
		})
	}
	waitFor(t, 10*time.Second, "restarted node to see all", func() bool { return aliveCount(re) == 3 })

	var seen []EventType
	deadline := time.After(5 * time.Second)
	for len(seen) < 2 {
		select {
		case ev := <-events:
			if ev.Member.Name == "node-3" {
				seen = append(seen, ev.Type)
			}
		case <-deadline:
			t.Fatalf("events for node-3: %v, want fail then join", seen)
		}
	}
	if seen[0] != EventFail || seen[1] != EventJoin {
		t.Fatalf("events for node-3: %v, want [fail join]", seen)
	}
}

func TestMetaOverLimitIsAnErrorNotAPanic(t *testing.T) {
	big := Meta{RaftAddr: strings.Repeat("r", 300), HTTPAddr: strings.Repeat("h", 300)}
	if _, err := EncodeMeta(big); !errors.Is(err, ErrMetaTooLarge) {
		t.Fatalf("EncodeMeta: %v, want ErrMetaTooLarge", err)
	}
	cfg := testConfig("big")
	cfg.Meta = big
	if _, err := New(cfg); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("New with big meta: %v, want ErrInvalidConfig", err)
	}

	ms := startCluster(t, 2, nil)
	before := ms[1].LocalMeta()
	err := ms[1].UpdateMeta(func(m *Meta) { m.HTTPAddr = strings.Repeat("x", 600) })
	if !errors.Is(err, ErrMetaTooLarge) {
		t.Fatalf("UpdateMeta: %v, want ErrMetaTooLarge", err)
	}
	if got := ms[1].LocalMeta(); got != before {
		t.Fatalf("meta changed after rejected update: %+v", got)
	}
	// Gossip still works afterwards.
	if err := ms[1].UpdateMeta(func(m *Meta) { m.Draining = true }); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "draining flag to propagate", func() bool {
		mem, _ := ms[0].Member("node-2")
		return mem.Meta.Draining
	})
}

func TestJoin(t *testing.T) {
	t.Run("own address only starts a cluster", func(t *testing.T) {
		m := mustStart(t, testConfig("solo"))
		n, err := m.Join(context.Background(), []string{m.GossipAddr()})
		if n != 0 || err != nil {
			t.Fatalf("Join(self) = %d, %v", n, err)
		}
		if n, err := m.Join(context.Background(), nil); n != 0 || err != nil {
			t.Fatalf("Join(nil) = %d, %v", n, err)
		}
	})
	t.Run("gives up after JoinRetryMax", func(t *testing.T) {
		cfg := testConfig("lonely")
		cfg.JoinRetryMax = 300 * time.Millisecond
		m := mustStart(t, cfg)
		dead := deadAddr(t)
		_, err := m.Join(context.Background(), []string{dead})
		if !errors.Is(err, ErrJoinFailed) {
			t.Fatalf("Join: %v, want ErrJoinFailed", err)
		}
	})
	t.Run("stops when the context ends", func(t *testing.T) {
		cfg := testConfig("patient")
		cfg.JoinRetryMax = 0
		m := mustStart(t, cfg)
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		_, err := m.Join(ctx, []string{deadAddr(t)})
		if !errors.Is(err, ErrJoinFailed) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Join: %v, want ErrJoinFailed wrapping DeadlineExceeded", err)
		}
	})
	t.Run("retries until the seed comes up", func(t *testing.T) {
		addr := deadAddr(t)
		joiner := mustStart(t, testConfig("joiner"))
		var wg sync.WaitGroup
		wg.Add(1)
		var seedErr error
		go func() {
			defer wg.Done()
			time.Sleep(400 * time.Millisecond) // the seed must come up after the first attempts fail
			cfg := testConfig("seed")
			cfg.BindAddr = addr
			s, err := New(cfg)
			if err != nil {
				seedErr = err
				return
			}
			t.Cleanup(func() { _ = s.Shutdown() })
		}()
		n, err := joiner.Join(context.Background(), []string{addr})
		wg.Wait()
		if seedErr != nil {
			t.Skipf("could not rebind %s: %v", addr, seedErr)
		}
		if n != 1 || err != nil {
			t.Fatalf("Join = %d, %v", n, err)
		}
		waitFor(t, 5*time.Second, "both alive", func() bool { return aliveCount(joiner) == 2 })
	})
	t.Run("after shutdown", func(t *testing.T) {
		m := mustStart(t, testConfig("gone"))
		_ = m.Shutdown()
		if _, err := m.Join(context.Background(), []string{"127.0.0.1:1"}); !errors.Is(err, ErrShutdown) {
			t.Fatalf("Join after Shutdown: %v", err)
		}
	})
}

// deadAddr returns a loopback ip:port where nothing listens (it was just
// freed).
func deadAddr(t *testing.T) string {
	t.Helper()
	m, err := New(testConfig("probe-port"))
	if err != nil {
		t.Fatal(err)
	}
	addr := m.GossipAddr()
	_ = m.Shutdown()
	return addr
}

func TestLifecycle(t *testing.T) {
	m := mustStart(t, testConfig("life"))
	events, _ := m.Subscribe()
	if err := m.Leave(time.Second); err != nil {
		t.Fatalf("Leave alone: %v", err)
	}
	if err := m.Leave(time.Second); err != nil {
		t.Fatalf("second Leave: %v", err)
	}
	if err := m.UpdateMeta(func(*Meta) {}); !errors.Is(err, ErrLeft) {
		t.Fatalf("UpdateMeta after Leave: %v", err)
	}
	if err := m.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if err := m.Shutdown(); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	if err := m.Leave(time.Second); !errors.Is(err, ErrShutdown) {
		t.Fatalf("Leave after Shutdown: %v", err)
	}
	if err := m.UpdateMeta(func(*Meta) {}); !errors.Is(err, ErrShutdown) {
		t.Fatalf("UpdateMeta after Shutdown: %v", err)
	}
	waitFor(t, 2*time.Second, "subscription closed by Shutdown", func() bool {
		select {
		case _, ok := <-events:
			return !ok
		default:
			return false
		}
	})
	late, cancel := m.Subscribe()
	cancel()
	if _, ok := <-late; ok {
		t.Fatal("subscription after Shutdown delivered an event")
	}
}

func TestEncryptedGossip(t *testing.T) {
	key1 := bytes.Repeat([]byte{1}, 16)
	key2 := bytes.Repeat([]byte{2}, 32)
	ms := startCluster(t, 2, func(c *Config) { c.SecretKey = key1 })

	other := testConfig("intruder")
	other.SecretKey = key2
	other.JoinRetryMax = 300 * time.Millisecond
	intruder := mustStart(t, other)
	if _, err := intruder.Join(context.Background(), []string{ms[0].GossipAddr()}); !errors.Is(err, ErrJoinFailed) {
		t.Fatalf("join with the wrong key: %v, want ErrJoinFailed", err)
	}

	// Rotate to key2 on both nodes: install everywhere, use everywhere, remove the old one.
	for _, m := range ms {
		if err := m.InstallKey(key2); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range ms {
		if err := m.UseKey(key2); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range ms {
		if err := m.RemoveKey(key1); err != nil {
			t.Fatal(err)
		}
		if keys := m.Keys(); len(keys) != 1 || !bytes.Equal(keys[0], key2) {
			t.Fatalf("keys after rotation: %d keys", len(keys))
		}
	}
	if err := ms[1].UpdateMeta(func(m *Meta) { m.Version = 9 }); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "update under the new key", func() bool {
		mem, _ := ms[0].Member("node-2")
		return mem.Meta.Version == 9
	})
	if n, err := intruder.Join(context.Background(), []string{ms[0].GossipAddr()}); err != nil || n != 1 {
		t.Fatalf("join with the rotated-in key: %d, %v", n, err)
	}

	plain := mustStart(t, testConfig("plain"))
	for _, err := range []error{plain.InstallKey(key1), plain.UseKey(key1), plain.RemoveKey(key1)} {
		if !errors.Is(err, ErrNoEncryption) {
			t.Fatalf("keyring call without encryption: %v", err)
		}
	}
	if plain.Keys() != nil {
		t.Fatal("Keys without encryption should be nil")
	}
}

func TestInjectedTransport(t *testing.T) {
	network := &memberlist.MockNetwork{}
	var ms []*Membership
	for i := 0; i < 2; i++ {
		name := fmt.Sprintf("mock-%d", i)
		cfg := testConfig(name)
		cfg.Transport = network.NewTransport(name)
		ms = append(ms, mustStart(t, cfg))
	}
	if _, err := ms[1].Join(context.Background(), []string{ms[0].GossipAddr()}); err != nil {
		t.Fatalf("join over the injected transport: %v", err)
	}
	waitFor(t, 5*time.Second, "both alive over the injected transport", func() bool { return aliveCount(ms[0]) == 2 })
}
