package testcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"

	"cardsync/carrier/sim"
	"cardsync/internal/agent"
	"cardsync/node"
	"cardsync/testcluster/check"
)

// Fault kinds counted by Faults.Counts.
const (
	FaultKill          = "kill"
	FaultStop          = "stop"
	FaultRestart       = "restart"
	FaultPause         = "pause"
	FaultPartition     = "partition"
	FaultOneWay        = "one_way_partition"
	FaultSlowLink      = "slow_link"
	FaultCarrierErrors = "carrier_errors"
	FaultCarrierSlow   = "carrier_latency"
	FaultCarrierOutage = "carrier_outage"
	FaultTokenExpiry   = "token_expiry"
)

// ErrPartitioned is what a dial or an established connection returns when the fault
// switchboard cuts the link.
var ErrPartitioned = errors.New("testcluster: link cut by fault injection")

// TagHeader carries the member's name on every carrier call it makes, so the simulator's
// call log can tell the members apart.
const TagHeader = sim.TagHeader

type link struct{ from, to string }

// Faults is a cluster's fault switchboard. Every member's gossip transport, Raft stream
// layer and carrier HTTP client consult it on every packet, dial, read, write and call, so
// partitions, pauses and slow links apply to gossip and consensus alike. Links are named by
// member name; addresses are mapped back to names as members start (and restart on new
// ports).
type Faults struct {
	c *Cluster

	mu      sync.RWMutex
	addrs   map[string]string // gossip or raft address -> member name
	cut     map[link]bool
	slow    map[link]time.Duration
	paused  map[string]chan struct{} // closed on resume
	counts  map[string]int
	carrier map[string]bool // accounts with carrier faults in force

	opsMu sync.Mutex
	ops   []check.Op // proposals seen by the members' observers
}

func newFaults(c *Cluster) *Faults {
	return &Faults{c: c, addrs: map[string]string{}, cut: map[link]bool{}, slow: map[link]time.Duration{},
		paused: map[string]chan struct{}{}, counts: map[string]int{}, carrier: map[string]bool{}}
}

// Faults returns the cluster's fault switchboard (nil unless Options.Faults is set).
func (c *Cluster) Faults() *Faults { return c.faults }

// Count records one injected fault of a kind (the methods of Faults count their own).
func (f *Faults) Count(kind string) {
	f.mu.Lock()
	f.counts[kind]++
	f.mu.Unlock()
}

// Counts returns the faults injected so far, by kind.
func (f *Faults) Counts() map[string]int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make(map[string]int, len(f.counts))
	for k, v := range f.counts {
		out[k] = v
	}
	return out
}

// Partition cuts every link between the two sets of members, both directions.
func (f *Faults) Partition(a, b []string) {
	f.mu.Lock()
	for _, x := range a {
		for _, y := range b {
			if x != y {
				f.cut[link{x, y}], f.cut[link{y, x}] = true, true
			}
		}
	}
	f.counts[FaultPartition]++
	f.mu.Unlock()
	f.logf("fault: partition %v | %v", a, b)
}

// PartitionOneWay drops everything the members in from send to the members in to; the
// other direction still flows.
func (f *Faults) PartitionOneWay(from, to []string) {
	f.mu.Lock()
	for _, x := range from {
		for _, y := range to {
			if x != y {
				f.cut[link{x, y}] = true
			}
		}
	}
	f.counts[FaultOneWay]++
	f.mu.Unlock()
	f.logf("fault: one-way partition %v -> %v", from, to)
}

// Slow adds d of latency to every packet, dial and write from the members in a to the
// members in b and back.
func (f *Faults) Slow(a, b []string, d time.Duration) {
	f.mu.Lock()
	for _, x := range a {
		for _, y := range b {
			if x != y {
				f.slow[link{x, y}], f.slow[link{y, x}] = d, d
			}
		}
	}
	f.counts[FaultSlowLink]++
	f.mu.Unlock()
	f.logf("fault: slow links %v <-> %v (+%v)", a, b, d)
}

// HealNetwork lifts every partition and slow link (pauses stay).
func (f *Faults) HealNetwork() {
	f.mu.Lock()
	clear(f.cut)
	clear(f.slow)
	f.mu.Unlock()
	f.logf("fault: network healed")
}

// Pause freezes a member without stopping it: its gossip and Raft traffic is cut in both
// directions and its carrier calls block until Resume, while its goroutines keep running
// and it keeps believing it owns its shards (the zombie owner).
func (f *Faults) Pause(name string) {
	f.mu.Lock()
	if _, ok := f.paused[name]; !ok {
		f.paused[name] = make(chan struct{})
		f.counts[FaultPause]++
	}
	f.mu.Unlock()
	f.logf("fault: pause %s", name)
}

// Resume ends a Pause: blocked carrier calls go out and traffic flows again.
func (f *Faults) Resume(name string) {
	f.mu.Lock()
	if ch, ok := f.paused[name]; ok {
		close(ch)
		delete(f.paused, name)
	}
	f.mu.Unlock()
	f.logf("fault: resume %s", name)
}

// Paused reports whether a member is paused.
func (f *Faults) Paused(name string) bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	_, ok := f.paused[name]
	return ok
}

// CarrierFaults sets the simulator's faults for an account ("" or "*": every account) and
// counts the fault by its most telling kind.
func (f *Faults) CarrierFaults(account string, sf sim.Faults) error {
	if f.c.Sim == nil {
		return errors.New("testcluster: no simulator")
	}
	if err := f.c.Sim.SetFaults(account, sf); err != nil {
		return err
	}
	kind := FaultCarrierErrors
	switch {
	case sf.Outage:
		kind = FaultCarrierOutage
	case len(sf.Rates) == 0 && sf.LatencyMax > 0:
		kind = FaultCarrierSlow
	}
	f.mu.Lock()
	f.counts[kind]++
	f.carrier[account] = true
	f.mu.Unlock()
	f.logf("fault: carrier %s on %q: %+v", kind, account, sf)
	return nil
}

// ExpireTokens expires the carrier tokens issued to an account ("" = all).
func (f *Faults) ExpireTokens(account string) error {
	if f.c.Sim == nil {
		return errors.New("testcluster: no simulator")
	}
	if err := f.c.Sim.ExpireTokens(account); err != nil {
		return err
	}
	f.Count(FaultTokenExpiry)
	f.logf("fault: carrier tokens of %q expired", account)
	return nil
}

// ClearCarrier removes every simulator fault.
func (f *Faults) ClearCarrier() {
	if f.c.Sim != nil {
		f.c.Sim.ClearFaults()
	}
	f.mu.Lock()
	clear(f.carrier)
	f.mu.Unlock()
}

// HealAll lifts every network fault, resumes every paused member and clears the
// simulator's faults.
func (f *Faults) HealAll() {
	f.mu.Lock()
	names := make([]string, 0, len(f.paused))
	for n := range f.paused {
		names = append(names, n)
	}
	f.mu.Unlock()
	sort.Strings(names)
	for _, n := range names {
		f.Resume(n)
	}
	f.HealNetwork()
	f.ClearCarrier()
}

// logf logs a fault event with its wall-clock time, so it can be matched with the
// members' logs and the simulator's call log.
func (f *Faults) logf(format string, a ...any) {
	f.c.T.Helper()
	f.c.T.Logf("%s "+format, append([]any{time.Now().Format("15:04:05.000")}, a...)...)
}

// Logf logs an event of the fault schedule the way the switchboard logs its own.
func (f *Faults) Logf(format string, a ...any) { f.logf(format, a...) }

// register maps a member's address to its name.
func (f *Faults) register(name, addr string) {
	f.mu.Lock()
	f.addrs[addr] = name
	f.mu.Unlock()
}

func (f *Faults) nameOf(addr string) string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.addrs[addr]
}

// blocked reports whether traffic from one member to another is dropped now.
func (f *Faults) blocked(from, to string) bool {
	if from == "" || to == "" || from == to {
		return false
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	if _, p := f.paused[from]; p {
		return true
	}
	if _, p := f.paused[to]; p {
		return true
	}
	return f.cut[link{from, to}]
}

func (f *Faults) delay(from, to string) time.Duration {
	if from == "" || to == "" {
		return 0
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.slow[link{from, to}]
}

// pauseGate returns a channel closed when the member is not paused (nil: not paused).
func (f *Faults) pauseGate(name string) <-chan struct{} {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.paused[name]
}

// wire sets the fault hooks of one member's configuration: a gossip transport on a fresh
// port, a Raft stream wrapper, a dialer for the internal HTTP client that forwards
// proposals to the leader, and a carrier HTTP client.
func (f *Faults) wire(name string, cfg *agent.Config) {
	gt, err := newGossipTransport(f, name)
	if err != nil {
		f.logf("fault switchboard: %s keeps its own gossip transport: %v", name, err)
	} else {
		cfg.Node.GossipTransport = gt
		cfg.Node.GossipAddr = gt.addr
	}
	cfg.Node.WrapRaftStream = func(s raft.StreamLayer) raft.StreamLayer {
		f.register(name, s.Addr().String())
		return &faultStream{StreamLayer: s, f: f, from: name}
	}
	cfg.Node.WrapForwardDial = func(dial node.DialFunc) node.DialFunc {
		return func(ctx context.Context, network, addr string) (net.Conn, error) {
			to := f.nameOf(addr)
			if f.blocked(name, to) {
				return nil, fmt.Errorf("dial %s: %w", addr, ErrPartitioned)
			}
			if d := f.delay(name, to); d > 0 {
				time.Sleep(d)
			}
			conn, err := dial(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &faultConn{Conn: conn, f: f, local: name, remote: to}, nil
		}
	}
	cfg.HTTPClient = &http.Client{Transport: &carrierTransport{
		f: f, name: name,
		next: &http.Transport{MaxIdleConnsPerHost: 32, IdleConnTimeout: 90 * time.Second},
	}}
}

// gossipTransport is memberlist's network transport with the switchboard in the path.
type gossipTransport struct {
	*memberlist.NetTransport
	f    *Faults
	name string
	addr string
}

func newGossipTransport(f *Faults, name string) (*gossipTransport, error) {
	nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{
		BindAddrs: []string{"127.0.0.1"},
		BindPort:  0,
		Logger:    f.c.opts.Logger.Named(name).Named("gossip-transport").StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true}),
	})
	if err != nil {
		return nil, fmt.Errorf("gossip transport: %w", err)
	}
	addr := net.JoinHostPort("127.0.0.1", fmt.Sprint(nt.GetAutoBindPort()))
	f.register(name, addr)
	return &gossipTransport{NetTransport: nt, f: f, name: name, addr: addr}, nil
}

// WriteTo implements memberlist.Transport.
func (t *gossipTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	return t.WriteToAddress(b, memberlist.Address{Addr: addr})
}

// WriteToAddress drops packets on a cut link and delays them on a slow one.
func (t *gossipTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	to := t.f.nameOf(a.Addr)
	if t.f.blocked(t.name, to) {
		return time.Now(), nil
	}
	if d := t.f.delay(t.name, to); d > 0 {
		buf := append([]byte(nil), b...)
		time.AfterFunc(d, func() {
			if !t.f.blocked(t.name, to) {
				_, _ = t.NetTransport.WriteToAddress(buf, a)
			}
		})
		return time.Now(), nil
	}
	return t.NetTransport.WriteToAddress(b, a)
}

// DialTimeout implements memberlist.Transport.
func (t *gossipTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

// DialAddressTimeout refuses dials over a cut link; the stream is cut too if the link is
// cut while it is open.
func (t *gossipTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	to := t.f.nameOf(a.Addr)
	if t.f.blocked(t.name, to) {
		return nil, fmt.Errorf("dial %s: %w", a.Addr, ErrPartitioned)
	}
	if d := t.f.delay(t.name, to); d > 0 {
		time.Sleep(d)
	}
	conn, err := t.NetTransport.DialAddressTimeout(a, timeout)
	if err != nil {
		return nil, err
	}
	return &faultConn{Conn: conn, f: t.f, local: t.name, remote: to}, nil
}

var _ memberlist.NodeAwareTransport = (*gossipTransport)(nil)

// faultStream is Raft's stream layer with the switchboard in the path of every dial.
type faultStream struct {
	raft.StreamLayer
	f    *Faults
	from string
}

// Dial refuses a cut link and wraps the connection so a later cut breaks it.
func (s *faultStream) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	to := s.f.nameOf(string(addr))
	if s.f.blocked(s.from, to) {
		return nil, fmt.Errorf("dial %s: %w", addr, ErrPartitioned)
	}
	if d := s.f.delay(s.from, to); d > 0 {
		time.Sleep(d)
	}
	conn, err := s.StreamLayer.Dial(addr, timeout)
	if err != nil {
		return nil, err
	}
	return &faultConn{Conn: conn, f: s.f, local: s.from, remote: to}, nil
}

// faultConn is a dialed connection whose writes (local to remote) and reads (remote to
// local) fail once the link in that direction is cut, and are delayed on a slow link.
type faultConn struct {
	net.Conn
	f             *Faults
	local, remote string
}

func (c *faultConn) Write(b []byte) (int, error) {
	if c.f.blocked(c.local, c.remote) {
		_ = c.Conn.Close()
		return 0, ErrPartitioned
	}
	if d := c.f.delay(c.local, c.remote); d > 0 {
		time.Sleep(d)
	}
	return c.Conn.Write(b)
}

func (c *faultConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if c.f.blocked(c.remote, c.local) {
		_ = c.Conn.Close()
		return 0, ErrPartitioned
	}
	return n, err
}

// carrierTransport tags each carrier call with the member's name and holds it while the
// member is paused.
type carrierTransport struct {
	f    *Faults
	name string
	next http.RoundTripper
}

func (t *carrierTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if gate := t.f.pauseGate(t.name); gate != nil {
		select {
		case <-gate:
		case <-req.Context().Done():
			return nil, req.Context().Err()
		}
	}
	r := req.Clone(req.Context())
	r.Header.Set(TagHeader, t.name)
	return t.next.RoundTrip(r)
}

// PauseFor pauses a member for d, then resumes it; it returns at once.
func (f *Faults) PauseFor(ctx context.Context, name string, d time.Duration) {
	f.Pause(name)
	go func() {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
		}
		f.Resume(name)
	}()
}
