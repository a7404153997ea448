package membership

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/memberlist"
)

var (
	// ErrShutdown is returned by calls made after Shutdown.
	ErrShutdown = errors.New("membership: shut down")
	// ErrLeft is returned by UpdateMeta after Leave.
	ErrLeft = errors.New("membership: left the cluster")
	// ErrJoinFailed is returned when no seed answered before Join gave up.
	ErrJoinFailed = errors.New("membership: join failed")
	// ErrNoEncryption is returned by the keyring calls when gossip
	// encryption was not enabled with Config.SecretKey.
	ErrNoEncryption = errors.New("membership: gossip encryption is not enabled")
)

// State is a member's liveness as seen by this node.
type State int

const (
	// StateAlive: the member answers probes.
	StateAlive State = iota + 1
	// StateSuspect: the member missed probes and is under suspicion.
	// memberlist does not report suspicion to its delegates, so this node
	// lists a suspected member as Alive until it is declared Dead; the
	// value exists so that views merged from other sources can carry it.
	StateSuspect
	// StateDead: failure detection declared the member dead.
	StateDead
	// StateLeft: the member announced a graceful leave.
	StateLeft
)

func (s State) String() string {
	switch s {
	case StateAlive:
		return "alive"
	case StateSuspect:
		return "suspect"
	case StateDead:
		return "dead"
	case StateLeft:
		return "left"
	default:
		return "unknown"
	}
}

// Member is one node as seen by this node.
type Member struct {
	Name  string
	Addr  string // gossip ip:port
	Meta  Meta
	State State
	Since time.Time // when this node saw State (or Meta) last change
}

// Membership is one node's gossip membership. Its methods are safe for
// concurrent use.
type Membership struct {
	cfg    Config
	logger hclog.Logger
	mlConf *memberlist.Config
	ml     *memberlist.Memberlist

	localAddr string
	metaBytes atomic.Pointer[[]byte] // what NodeMeta hands to memberlist

	metaMu sync.Mutex // serialises UpdateMeta
	meta   Meta

	mu      sync.Mutex // guards members, leaving, subs, closed
	members map[string]Member
	leaving map[string]bool // members that told this node they are leaving
	subs    map[*subscriber]struct{}
	closed  bool

	lifeMu   sync.Mutex // serialises Leave and Shutdown
	left     atomic.Bool
	shutdown atomic.Bool
	stop     chan struct{}  // closed by Shutdown
	loops    sync.WaitGroup // background loops
}

// New validates cfg, starts memberlist listening on cfg.BindAddr and returns
// the running Membership. It does not join anyone: call Join.
func New(cfg Config) (*Membership, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	metaBytes, err := EncodeMeta(cfg.Meta)
	if err != nil {
		return nil, err
	}
	m := &Membership{
		cfg:     cfg,
		logger:  cfg.Logger,
		meta:    cfg.Meta,
		members: make(map[string]Member),
		leaving: make(map[string]bool),
		subs:    make(map[*subscriber]struct{}),
		stop:    make(chan struct{}),
	}
	m.metaBytes.Store(&metaBytes)

	mc := cfg.memberlistConfig()
	mc.Logger = cfg.Logger.Named("memberlist").StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true})
	d := &delegate{m: m}
	mc.Delegate = d
	mc.Events = d
	m.mlConf = mc

	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("membership: start gossip on %s: %w", cfg.BindAddr, err)
	}
	m.ml = ml
	m.mu.Lock()
	self, ok := m.members[cfg.Name]
	m.mu.Unlock()
	if ok {
		m.localAddr = self.Addr
	} else {
		n := ml.LocalNode()
		m.localAddr = net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))
	}
	m.logger.Info("gossip started", "name", cfg.Name, "addr", m.localAddr, "profile", cfg.Profile)
	if cfg.ReconnectInterval > 0 {
		m.loops.Add(1)
		go m.reconnectLoop()
	}
	return m, nil
}

// reconnectLoop periodically contacts one member held Dead: memberlist
// stops probing dead members, so without it two halves of a healed
// partition would stay apart.
func (m *Membership) reconnectLoop() {
	defer m.loops.Done()
	t := time.NewTicker(m.cfg.ReconnectInterval)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
		}
		var dead []string
		m.mu.Lock()
		for name, mem := range m.members {
			if name != m.cfg.Name && mem.State == StateDead {
				dead = append(dead, mem.Addr)
			}
		}
		m.mu.Unlock()
		if len(dead) == 0 || m.left.Load() {
			continue
		}
		addr := dead[rand.N(len(dead))]
		if n, err := m.ml.Join([]string{addr}); n > 0 {
			m.logger.Info("reconnected to a member held dead", "addr", addr)
		} else {
			m.logger.Debug("reconnect failed", "addr", addr, "error", err)
		}
	}
}

// GossipAddr returns the ip:port other nodes use to join this one.
func (m *Membership) GossipAddr() string { return m.localAddr }

// LocalName returns this node's name.
func (m *Membership) LocalName() string { return m.cfg.Name }

// LocalMeta returns this node's current metadata.
func (m *Membership) LocalMeta() Meta {
	m.metaMu.Lock()
	defer m.metaMu.Unlock()
	return m.meta
}

// LocalMember returns this node as a Member.
func (m *Membership) LocalMember() Member {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.members[m.cfg.Name]
}

// Join contacts the seeds (gossip ip:port of any members) until at least one
// answers, ctx ends, or Config.JoinRetryMax has passed. Waits between
// attempts start at JoinRetryInterval and double, with jitter, up to
// JoinRetryMaxInterval. It returns how many seeds answered. This node's own
// address is skipped; with no other seed there is nothing to join and Join
// returns 0, nil (the node starts a cluster of its own).
func (m *Membership) Join(ctx context.Context, seeds []string) (int, error) {
	if m.shutdown.Load() {
		return 0, ErrShutdown
	}
	others := make([]string, 0, len(seeds))
	for _, s := range seeds {
		if s != "" && s != m.localAddr {
			others = append(others, s)
		}
	}
	if len(others) == 0 {
		return 0, nil
	}
	var deadline <-chan time.Time
	if m.cfg.JoinRetryMax > 0 {
		t := time.NewTimer(m.cfg.JoinRetryMax)
		defer t.Stop()
		deadline = t.C
	}
	wait := m.cfg.JoinRetryInterval
	for attempt := 1; ; attempt++ {
		n, err := m.joinOnce(ctx, others)
		if n > 0 {
			m.logger.Info("joined cluster", "seeds_answered", n, "attempt", attempt)
			return n, nil
		}
		if ctx.Err() != nil {
			return 0, fmt.Errorf("%w: %w (last error: %v)", ErrJoinFailed, ctx.Err(), err)
		}
		if m.shutdown.Load() {
			return 0, ErrShutdown
		}
		m.logger.Warn("join attempt failed", "attempt", attempt, "seeds", others, "retry_in", wait, "error", err)
		jittered := wait + rand.N(wait/4+1)
		t := time.NewTimer(jittered)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return 0, fmt.Errorf("%w: %w (last error: %v)", ErrJoinFailed, ctx.Err(), err)
		case <-deadline:
			t.Stop()
			return 0, fmt.Errorf("%w: no seed answered within %s: %w", ErrJoinFailed, m.cfg.JoinRetryMax, err)
		}
		wait = min(2*wait, m.cfg.JoinRetryMaxInterval)
	}
}

// joinOnce runs one memberlist.Join, returning early (and leaving the
// attempt to finish in the background, bounded by memberlist's TCP timeout)
// when ctx ends.
func (m *Membership) joinOnce(ctx context.Context, seeds []string) (int, error) {
	type result struct {
		n   int
		err error
	}
	ch := make(chan result, 1)
	go func() {
		n, err := m.ml.Join(seeds)
		ch <- result{n, err}
	}()
	select {
	case r := <-ch:
		return r.n, r.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// Members returns every member this node knows of, including dead and
// departed ones (until Config.TombstoneTTL after their last change), sorted
// by name.
func (m *Membership) Members() []Member {
	now := time.Now()
	m.mu.Lock()
	out := make([]Member, 0, len(m.members))
	for name, mem := range m.members {
		if (mem.State == StateDead || mem.State == StateLeft) && name != m.cfg.Name &&
			now.Sub(mem.Since) > m.cfg.TombstoneTTL {
			delete(m.members, name)
			continue
		}
		out = append(out, mem)
	}
	m.mu.Unlock()
	slices.SortFunc(out, func(a, b Member) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	return out
}

// Member returns the named member, if this node knows it.
func (m *Membership) Member(name string) (Member, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	mem, ok := m.members[name]
	return mem, ok
}

// NumAlive returns how many members (this node included) are alive.
func (m *Membership) NumAlive() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, mem := range m.members {
		if mem.State == StateAlive || mem.State == StateSuspect {
			n++
		}
	}
	return n
}

// RingMembers returns, sorted, the names of the members that belong on the
// hash ring: alive, Ready, not Draining and not Leaving.
func RingMembers(members []Member) []string {
	var names []string
	for _, mem := range members {
		if (mem.State == StateAlive || mem.State == StateSuspect) && mem.Meta.Ready && !mem.Meta.Draining && !mem.Meta.Leaving {
			names = append(names, mem.Name)
		}
	}
	slices.Sort(names)
	return names
}

// Subscribe returns a channel of member events and a function that cancels
// the subscription and closes the channel. Delivery never blocks gossip:
// each subscriber has a queue of Config.EventBuffer events; when it
// overflows, the queued events are dropped and an EventResync is delivered
// first, after which the subscriber should re-read Members. The channel is
// closed by the cancel function or by Shutdown.
func (m *Membership) Subscribe() (<-chan Event, func()) {
	s := newSubscriber(m.cfg.EventBuffer)
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		s.close()
		return s.out, func() {}
	}
	m.subs[s] = struct{}{}
	m.mu.Unlock()
	return s.out, func() {
		m.mu.Lock()
		delete(m.subs, s)
		m.mu.Unlock()
		s.close()
	}
}

// UpdateMeta applies fn to a copy of this node's metadata and gossips the
// result (Meta.Leaving is kept as it was: only Leave sets it). It fails, leaving the metadata unchanged, when the encoding would
// exceed MetaMaxSize. It waits up to Config.BroadcastTimeout for the update
// to reach a peer; a timeout is returned as an error but the update stays
// in effect and spreads with the next gossip rounds.
func (m *Membership) UpdateMeta(fn func(*Meta)) error {
	m.metaMu.Lock()
	defer m.metaMu.Unlock()
	if m.shutdown.Load() {
		return ErrShutdown
	}
	if m.left.Load() {
		return ErrLeft
	}
	next := m.meta
	fn(&next)
	next.Leaving = m.meta.Leaving
	b, err := EncodeMeta(next)
	if err != nil {
		return err
	}
	prev := m.metaBytes.Load()
	m.metaBytes.Store(&b)
	m.meta = next
	if err := m.ml.UpdateNode(m.cfg.BroadcastTimeout); err != nil {
		if m.shutdown.Load() {
			m.metaBytes.Store(prev)
			return ErrShutdown
		}
		return fmt.Errorf("membership: gossip metadata update: %w", err)
	}
	return nil
}

// Leave announces a graceful departure and waits up to timeout for the
// announcement to spread. memberlist reports departures and failures alike,
// so Leave first tells every alive member directly (a reliable user
// message) and gossips Meta.Leaving, then sends memberlist's leave message;
// other nodes then record this node as Left rather than Dead. The node
// keeps gossiping until Shutdown. Calling Leave again is harmless; calling
// it after Shutdown returns ErrShutdown.
//
// A node that was unreachable during Leave and only later learns of the
// departure records the node as Dead.
func (m *Membership) Leave(timeout time.Duration) error {
	m.lifeMu.Lock()
	defer m.lifeMu.Unlock()
	if m.shutdown.Load() {
		return ErrShutdown
	}
	start := time.Now()
	if !m.left.Load() {
		m.announceLeaving(timeout)
	}
	m.left.Store(true)
	remaining := timeout - time.Since(start)
	if timeout > 0 && remaining <= 0 {
		remaining = time.Millisecond
	}
	if err := m.ml.Leave(remaining); err != nil {
		return fmt.Errorf("membership: leave: %w", err)
	}
	m.logger.Info("left cluster")
	return nil
}

// msgLeaving is the user-message type announcing a graceful leave; the
// sender's name follows.
const msgLeaving = 1

// announceLeaving sends the leave notice to every alive member and gossips
// Meta.Leaving, within timeout (best effort: failures are logged).
func (m *Membership) announceLeaving(timeout time.Duration) {
	notice := append([]byte{msgLeaving}, m.cfg.Name...)
	var targets []*memberlist.Node
	m.mu.Lock()
	for name, mem := range m.members {
		if name == m.cfg.Name || mem.State != StateAlive {
			continue
		}
		host, port, err := net.SplitHostPort(mem.Addr)
		if err != nil {
			continue
		}
		p, _ := strconv.Atoi(port)
		targets = append(targets, &memberlist.Node{Name: name, Addr: net.ParseIP(host), Port: uint16(p)})
	}
	m.mu.Unlock()

	var wg sync.WaitGroup
	done := make(chan struct{})
	for _, n := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := m.ml.SendReliable(n, notice); err != nil {
				m.logger.Warn("leave notice not delivered", "member", n.Name, "error", err)
			}
		}()
	}
	go func() { wg.Wait(); close(done) }()

	m.metaMu.Lock()
	next := m.meta
	next.Leaving = true
	if b, err := EncodeMeta(next); err == nil {
		m.metaBytes.Store(&b)
		m.meta = next
		if err := m.ml.UpdateNode(timeout); err != nil {
			m.logger.Warn("leaving flag not confirmed before leave", "error", err)
		}
	}
	m.metaMu.Unlock()

	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		m.logger.Warn("leave notices still in flight after timeout", "timeout", timeout)
	}
}

// Shutdown stops gossip without announcing anything (others will detect
// the node as dead unless Leave was called first) and closes every
// subscription. It is idempotent.
func (m *Membership) Shutdown() error {
	m.lifeMu.Lock()
	defer m.lifeMu.Unlock()
	if m.shutdown.Swap(true) {
		return nil
	}
	close(m.stop)
	err := m.ml.Shutdown()
	m.loops.Wait()
	m.mu.Lock()
	m.closed = true
	subs := m.subs
	m.subs = make(map[*subscriber]struct{})
	m.mu.Unlock()
	for s := range subs {
		s.close()
	}
	if err != nil {
		return fmt.Errorf("membership: shutdown: %w", err)
	}
	m.logger.Info("gossip stopped")
	return nil
}

// InstallKey adds key (16, 24 or 32 bytes) to this node's gossip keyring so
// that messages encrypted with it are accepted. Rotation across the cluster
// is InstallKey on every node, then UseKey on every node, then RemoveKey of
// the old key on every node.
func (m *Membership) InstallKey(key []byte) error {
	kr := m.mlConf.Keyring
	if kr == nil {
		return ErrNoEncryption
	}
	if err := kr.AddKey(key); err != nil {
		return fmt.Errorf("membership: install key: %w", err)
	}
	return nil
}

// UseKey makes an installed key the one this node encrypts with.
func (m *Membership) UseKey(key []byte) error {
	kr := m.mlConf.Keyring
	if kr == nil {
		return ErrNoEncryption
	}
	if err := kr.UseKey(key); err != nil {
		return fmt.Errorf("membership: use key: %w", err)
	}
	return nil
}

// RemoveKey removes a key that is not the primary one.
func (m *Membership) RemoveKey(key []byte) error {
	kr := m.mlConf.Keyring
	if kr == nil {
		return ErrNoEncryption
	}
	if err := kr.RemoveKey(key); err != nil {
		return fmt.Errorf("membership: remove key: %w", err)
	}
	return nil
}

// Keys returns the installed gossip keys, primary first.
func (m *Membership) Keys() [][]byte {
	kr := m.mlConf.Keyring
	if kr == nil {
		return nil
	}
	return kr.GetKeys()
}

// delegate receives memberlist's callbacks. memberlist never calls the
// event methods concurrently, so events reach subscribers in order.
type delegate struct{ m *Membership }

func (d *delegate) NodeMeta(limit int) []byte {
	b := *d.m.metaBytes.Load()
	if len(b) > limit {
		// Unreachable: EncodeMeta refuses anything over MetaMaxSize, which
		// is the limit memberlist passes. Sending no metadata beats the
		// panic memberlist raises on oversize metadata.
		return nil
	}
	return b
}

// NotifyMsg receives leave notices (see Membership.Leave). It must not
// block: it only records the sender.
func (d *delegate) NotifyMsg(b []byte) {
	if len(b) < 2 || b[0] != msgLeaving {
		return
	}
	name := string(b[1:])
	if name == d.m.cfg.Name {
		return
	}
	d.m.mu.Lock()
	d.m.leaving[name] = true
	d.m.mu.Unlock()
}

func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

func (d *delegate) NotifyJoin(n *memberlist.Node)   { d.m.observe(n, EventJoin) }
func (d *delegate) NotifyUpdate(n *memberlist.Node) { d.m.observe(n, EventUpdate) }

// NotifyLeave covers both departures and failures: memberlist does not say
// which (the Node's State field is not maintained), so a leave notice from
// the member, or its last gossiped Meta.Leaving, decides.
func (d *delegate) NotifyLeave(n *memberlist.Node) { d.m.observe(n, EventFail) }

// observe records a memberlist node change in the member table and fans
// the event out to subscribers without blocking.
func (m *Membership) observe(n *memberlist.Node, t EventType) {
	mem := Member{
		Name:  n.Name,
		Addr:  net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port))),
		Since: time.Now(),
	}
	meta, err := DecodeMeta(n.Meta)
	if err != nil {
		m.logger.Warn("member has unreadable metadata", "member", n.Name, "error", err)
	} else {
		mem.Meta = meta
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	switch t {
	case EventFail:
		if mem.Meta.Leaving || m.leaving[mem.Name] || (mem.Name == m.cfg.Name && m.left.Load()) {
			t = EventLeave
		}
	case EventJoin:
		delete(m.leaving, mem.Name) // back (restarted): a later loss is a failure again
	}
	switch t {
	case EventJoin, EventUpdate:
		mem.State = StateAlive
	case EventLeave:
		mem.State = StateLeft
	default:
		mem.State = StateDead
	}
	m.logger.Debug("member event", "event", t.String(), "member", mem.Name, "addr", mem.Addr)
	m.members[mem.Name] = mem
	if m.closed {
		return
	}
	for s := range m.subs {
		s.push(Event{Type: t, Member: mem})
	}
}
