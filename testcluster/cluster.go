package testcluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"cardsync/carrier"
	"cardsync/carrier/sim"
	"cardsync/internal/agent"
	"cardsync/membership"
	"cardsync/node"
	"cardsync/syncer"
	"cardsync/webhook"
)

// Options configures a test cluster.
type Options struct {
	// Nodes is how many members to start (default 3).
	Nodes int
	// Profile is the membership profile (default "fast").
	Profile string
	// BootstrapExpect forms the cluster with -bootstrap-expect N on every node started at
	// once; otherwise node 0 bootstraps alone (-dev style) and the others join it.
	BootstrapExpect bool
	// NoSim starts no carrier simulator and publishes no catalog.
	NoSim bool
	// SimAccounts replaces the simulator's accounts (default: sim.DevAccounts scaled to Cards).
	SimAccounts []sim.AccountSpec
	// Cards scales the default population (default 2,000).
	Cards int
	// QuotaScale multiplies the default accounts' call rates and bursts so tests finish
	// quickly (default 4; the concurrency caps, Cisco's 1 included, stay as they are).
	QuotaScale float64
	// NoCatalog skips publishing accounts, enterprises and cards at start.
	NoCatalog bool
	// Accounts adjusts the carrier account clients every member gets (e.g. a wrong secret).
	Accounts func([]carrier.AccountConfig)
	// Sync and Node adjust each member's configuration.
	Sync func(*syncer.Config)
	Node func(i int, c *node.Config)
	// ChangeEvery sets how fast the simulator's card data drifts (0: the simulator's
	// default).
	ChangeEvery time.Duration
	// Webhook adjusts each member's webhook deliverer configuration.
	Webhook func(*webhook.Config)
	// Logger receives every member's logs (default: discarded, or stderr when the
	// environment variable CARDSYNC_TEST_LOG is set).
	Logger hclog.Logger

	// Faults builds a fault switchboard (see Faults) and routes every member's gossip,
	// Raft and carrier traffic through it.
	Faults bool
}

// Cluster is a set of real cardsync members in this process plus the carrier simulator.
type Cluster struct {
	T       testing.TB
	Sim     *sim.Sim
	Members []*Member
	Catalog agent.Catalog

	opts     Options
	dir      string
	accounts []carrier.AccountConfig
	mu       sync.Mutex

	faults *Faults // nil unless Options.Faults
}

// Member is one node of the cluster; Agent is nil while it is down.
type Member struct {
	Index int
	Name  string
	Dir   string

	mu    sync.Mutex
	agent *agent.Agent
}

// Agent returns the running agent or nil.
func (m *Member) Agent() *agent.Agent {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.agent
}

// Node returns the running node or nil.
func (m *Member) Node() *node.Node {
	if a := m.Agent(); a != nil {
		return a.Node
	}
	return nil
}

// Up reports whether the member runs.
func (m *Member) Up() bool { return m.Agent() != nil }

// New starts a cluster and registers its teardown with t.Cleanup.
func New(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.Profile == "" {
		opts.Profile = "fast"
	}
	if opts.Cards == 0 {
		opts.Cards = 2000
	}
	if opts.Logger == nil {
		if os.Getenv("CARDSYNC_TEST_LOG") != "" {
			opts.Logger = hclog.New(&hclog.LoggerOptions{Name: "test", Level: hclog.Debug})
		} else {
			opts.Logger = hclog.NewNullLogger()
		}
	}
	c := &Cluster{T: t, opts: opts, dir: t.TempDir()}
	if opts.Faults {
		c.faults = newFaults(c)
	}
	t.Cleanup(c.Close)
	if !opts.NoSim {
		specs := opts.SimAccounts
		if specs == nil {
			specs = sim.DevAccounts()
			agent.ScaleDevAccounts(specs, opts.Cards)
			if opts.QuotaScale == 0 {
				opts.QuotaScale = 4
			}
			for i := range specs {
				specs[i].RatePerSec *= opts.QuotaScale
				specs[i].Burst = int(float64(specs[i].Burst) * opts.QuotaScale)
			}
		}
		scfg := sim.DefaultConfig()
		scfg.Seed = 7
		scfg.Accounts = specs
		if opts.ChangeEvery > 0 {
			scfg.ChangeEvery = opts.ChangeEvery
		}
		scfg.Logger = opts.Logger.Named("carriersim")
		s, err := sim.New(scfg)
		if err != nil {
			t.Fatalf("simulator: %v", err)
		}
		if err := s.Start("127.0.0.1:0"); err != nil {
			t.Fatalf("simulator: %v", err)
		}
		c.Sim = s
		c.accounts, c.Catalog = agent.DevCatalog(s, specs)
		for i := range c.accounts {
			// The simulator answers in milliseconds on loopback: a 2 s call timeout keeps
			// the call grace of a moving concurrency slot (2 calls x timeout) at 4 s.
			c.accounts[i].Timeout = 2 * time.Second
		}
		if opts.Accounts != nil {
			opts.Accounts(c.accounts)
		}
		if opts.NoCatalog {
			c.Catalog = agent.Catalog{}
		}
	}
	for i := 0; i < opts.Nodes; i++ {
		c.Members = append(c.Members, &Member{Index: i, Name: fmt.Sprintf("node-%d", i), Dir: filepath.Join(c.dir, fmt.Sprintf("node-%d", i))})
	}
	if opts.BootstrapExpect {
		var wg sync.WaitGroup
		errs := make([]error, len(c.Members))
		// Every member joins member 0's gossip address, so member 0 starts first.
		if errs[0] = c.start(c.Members[0], nil); errs[0] != nil {
			t.Fatalf("start %s: %v", c.Members[0].Name, errs[0])
		}
		seed := []string{c.Members[0].Node().GossipAddr()}
		for _, m := range c.Members[1:] {
			wg.Add(1)
			go func(m *Member) {
				defer wg.Done()
				errs[m.Index] = c.start(m, seed)
			}(m)
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("start node-%d: %v", i, err)
			}
		}
	} else {
		for _, m := range c.Members {
			var join []string
			if m.Index > 0 {
				join = []string{c.Members[0].Node().GossipAddr()}
			}
			if err := c.start(m, join); err != nil {
				t.Fatalf("start %s: %v", m.Name, err)
			}
		}
	}
	return c
}

func (c *Cluster) config(m *Member, join []string) agent.Config {
	nc := node.DefaultConfig()
	nc.Name = m.Name
	nc.DataDir = m.Dir
	nc.GossipAddr, nc.RaftAddr, nc.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	nc.Profile = c.opts.Profile
	nc.Join = join
	nc.StabilizationTime = 500 * time.Millisecond
	nc.FSMNoSync = false
	if c.opts.BootstrapExpect {
		nc.BootstrapExpect = c.opts.Nodes
	} else {
		nc.Dev = m.Index == 0
	}
	if c.opts.Node != nil {
		c.opts.Node(m.Index, &nc)
	}
	sc := syncer.DefaultConfig()
	sc.PollInterval = 200 * time.Millisecond
	sc.Lease = 10 * time.Second
	sc.FlushInterval = 500 * time.Millisecond
	if c.opts.Sync != nil {
		c.opts.Sync(&sc)
	}
	cfg := agent.Config{
		Node:     nc,
		Sync:     sc,
		Accounts: c.accounts,
		Catalog:  c.Catalog,
		Logger:   c.opts.Logger.Named(m.Name),
	}
	cfg.Webhook = webhook.DefaultConfig()
	if c.opts.Webhook != nil {
		c.opts.Webhook(&cfg.Webhook)
	}
	if c.faults != nil {
		c.faults.wire(m.Name, &cfg)
	}
	return cfg
}

func (c *Cluster) start(m *Member, join []string) error {
	a, err := agent.Start(c.config(m, join))
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.agent = a
	m.mu.Unlock()
	c.started(m)
	return nil
}

// liveSeeds returns the gossip addresses of running members other than skip.
func (c *Cluster) liveSeeds(skip *Member) []string {
	var seeds []string
	for _, m := range c.Members {
		if m != skip && m.Up() {
			seeds = append(seeds, m.Node().GossipAddr())
		}
	}
	return seeds
}

// Kill stops a member abruptly: no flush, no leave, no leadership transfer.
func (c *Cluster) Kill(m *Member) {
	c.T.Helper()
	m.mu.Lock()
	a := m.agent
	m.agent = nil
	m.mu.Unlock()
	if a != nil {
		_ = a.Kill()
	}
}

// Stop stops a member gracefully (flush, release, leadership transfer, leave).
func (c *Cluster) Stop(m *Member) {
	c.T.Helper()
	m.mu.Lock()
	a := m.agent
	m.agent = nil
	m.mu.Unlock()
	if a != nil {
		if err := a.Stop(); err != nil {
			c.T.Logf("stop %s: %v", m.Name, err)
		}
	}
}

// Restart starts a stopped or killed member again from its data dir, on new ports,
// joining the running members.
func (c *Cluster) Restart(m *Member) {
	c.T.Helper()
	if m.Up() {
		c.T.Fatalf("restart %s: still running", m.Name)
	}
	c.join(m, "restart")
}

// Add starts a new member that joins the running ones.
func (c *Cluster) Add() *Member {
	c.T.Helper()
	c.mu.Lock()
	m := &Member{Index: len(c.Members), Name: fmt.Sprintf("node-%d", len(c.Members))}
	m.Dir = filepath.Join(c.dir, m.Name)
	c.Members = append(c.Members, m)
	c.mu.Unlock()
	c.join(m, "add")
	return m
}

// join starts m so that it joins the running members (never bootstrapping).
func (c *Cluster) join(m *Member, what string) {
	c.T.Helper()
	cfg := c.config(m, c.liveSeeds(m))
	cfg.Node.Dev = false
	cfg.Node.BootstrapExpect = 0
	a, err := agent.Start(cfg)
	if err != nil {
		c.T.Fatalf("%s %s: %v", what, m.Name, err)
	}
	m.mu.Lock()
	m.agent = a
	m.mu.Unlock()
	c.started(m)
}

// Close stops every member and the simulator.
func (c *Cluster) Close() {
	var wg sync.WaitGroup
	for _, m := range c.Members {
		wg.Add(1)
		go func(m *Member) {
			defer wg.Done()
			m.mu.Lock()
			a := m.agent
			m.agent = nil
			m.mu.Unlock()
			if a != nil {
				_ = a.Kill()
			}
		}(m)
	}
	wg.Wait()
	if c.Sim != nil {
		_ = c.Sim.Close()
	}
}

// Up returns the running members.
func (c *Cluster) Up() []*Member {
	var up []*Member
	for _, m := range c.Members {
		if m.Up() {
			up = append(up, m)
		}
	}
	return up
}

// Leader returns the running member that is Raft leader, or nil.
func (c *Cluster) Leader() *Member {
	for _, m := range c.Up() {
		if n := m.Node(); n != nil && n.Raft().State() == raft.Leader {
			return m
		}
	}
	return nil
}

// Follower returns a running member that is not the leader, or nil.
func (c *Cluster) Follower() *Member {
	for _, m := range c.Up() {
		if n := m.Node(); n != nil && n.Raft().State() == raft.Follower {
			return m
		}
	}
	return nil
}

// WaitLeader waits until exactly one running member leads and every running member
// agrees on it.
func (c *Cluster) WaitLeader(timeout time.Duration) *Member {
	c.T.Helper()
	var leader *Member
	WaitFor(c.T, timeout, "one agreed leader", func() bool {
		leader = c.Leader()
		if leader == nil {
			return false
		}
		for _, m := range c.Up() {
			if _, id := m.Node().Raft().LeaderWithID(); string(id) != leader.Name {
				return false
			}
		}
		return true
	})
	return leader
}

// WaitStable waits until every running member is ready, sees every running member alive,
// has them all on its ring, and the Raft configuration holds them all.
func (c *Cluster) WaitStable(timeout time.Duration) {
	c.T.Helper()
	WaitFor(c.T, timeout, "cluster stable", func() bool { return c.stable() })
}

func (c *Cluster) stable() bool {
	up := c.Up()
	for _, m := range up {
		n := m.Node()
		if !n.Ready() {
			return false
		}
		alive := 0
		for _, mem := range n.Membership().Members() {
			if mem.State == membership.StateAlive {
				alive++
			}
		}
		if alive != len(up) || len(n.Ring().Members()) != len(up) {
			return false
		}
		f := n.Raft().GetConfiguration()
		if f.Error() != nil || len(f.Configuration().Servers) < len(up) {
			return false
		}
		// Members join as non-voters and are promoted after the stabilization time, to an
		// odd number of voters: a cluster whose third member is not a voter yet cannot
		// lose its leader.
		upNames := map[string]bool{}
		for _, m := range up {
			upNames[m.Name] = true
		}
		voters := 0
		for _, srv := range f.Configuration().Servers {
			if srv.Suffrage == raft.Voter && upNames[string(srv.ID)] {
				voters++
			}
		}
		want := min(len(up), 3)
		if want%2 == 0 {
			want--
		}
		if voters < want {
			return false
		}
	}
	l := c.Leader()
	if l == nil {
		return false
	}
	// The leader replicates to every member: each has applied close to the leader's
	// commit index (a member just restarted can be ready by its own view while the
	// leader is still finding its log, and a second failure then would stall commits).
	commit, err := strconv.ParseUint(l.Node().Raft().Stats()["commit_index"], 10, 64)
	if err != nil {
		return false
	}
	for _, m := range up {
		if m.Node().FSM().AppliedIndex()+64 < commit {
			return false
		}
	}
	return true
}

// WaitFor polls cond every 25 ms until it holds or the deadline passes, then fails the
// test naming what it waited for.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// Eventually is WaitFor returning whether cond held instead of failing.
func Eventually(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// Ctx returns a context bounded by timeout, cancelled at test end.
func Ctx(t testing.TB, timeout time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	return ctx
}
