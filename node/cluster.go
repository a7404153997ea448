package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/hashicorp/raft"

	"cardsync/fsm"
	"cardsync/membership"
)

func (n *Node) startMembership() error {
	mcfg := membership.DefaultConfig()
	mcfg.Name = n.name
	mcfg.BindAddr = n.cfg.GossipAddr
	mcfg.Profile = n.cfg.Profile
	mcfg.SecretKey = n.cfg.GossipKey
	mcfg.Transport = n.cfg.GossipTransport
	mcfg.Logger = n.gossipLogger()
	mcfg.DeadNodeReclaimTime = deadNodeReclaimTime(n.cfg.Profile)
	mcfg.Meta = membership.Meta{
		RaftAddr:        n.raftAddr,
		HTTPAddr:        n.httpLn.Addr().String(),
		BootstrapExpect: n.cfg.BootstrapExpect,
		Version:         1,
	}
	m, err := membership.New(mcfg)
	if err != nil {
		return fmt.Errorf("start gossip: %w", err)
	}
	n.members = m
	return nil
}

// deadNodeReclaimTime is how long a member must have been declared dead before its name
// is accepted from a new address. A node's name is kept in its data dir, so the same name
// at another address is that node restarted (new ports, a rescheduled container), not an
// impostor; until gossip accepts it, the leader cannot learn its new Raft address and the
// cluster runs a voter short. Waiting a moment past the dead declaration is enough.
func deadNodeReclaimTime(profile string) time.Duration {
	if profile == membership.ProfileFast {
		return time.Second
	}
	return 5 * time.Second
}

func (n *Node) joinLoop(ctx context.Context) {
	if len(n.cfg.Join) == 0 {
		return
	}
	joined, err := n.members.Join(ctx, n.cfg.Join)
	if err != nil {
		if ctx.Err() == nil {
			n.logger.Error("join failed: no seed answered", "seeds", n.cfg.Join, "error", err)
		}
		return
	}
	n.logger.Info("joined cluster", "contacted", joined)
}

// bootstrapLoop forms a new cluster under -bootstrap-expect N with Nomad's safety rules:
// only with an empty log, only once N members with the same expect value are alive, and
// only if none of them already has Raft peers. All N then bootstrap the same configuration.
func (n *Node) bootstrapLoop(ctx context.Context) {
	expect := n.cfg.BootstrapExpect
	if expect < 1 || n.cfg.Dev {
		return
	}
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		has, err := n.hasState()
		if err != nil {
			n.logger.Error("bootstrap: read raft state", "error", err)
			continue
		}
		if has {
			return
		}
		var cands []membership.Member
		for _, m := range n.members.Members() {
			if m.State != membership.StateAlive || m.Meta.RaftAddr == "" {
				continue
			}
			if m.Meta.BootstrapExpect != expect {
				if m.Meta.BootstrapExpect != 0 {
					n.logger.Warn("bootstrap: member has a different bootstrap-expect", "member", m.Name, "expect", m.Meta.BootstrapExpect)
				}
				continue
			}
			cands = append(cands, m)
		}
		if len(cands) < expect {
			continue
		}
		peersFound := false
		for _, m := range cands {
			if m.Name == n.name {
				continue
			}
			p, err := n.remotePeers(ctx, m.Meta.HTTPAddr)
			if err != nil {
				n.logger.Debug("bootstrap: ask peers", "member", m.Name, "error", err)
				peersFound = true // unknown: wait and ask again
				break
			}
			if p.HasState {
				n.logger.Info("bootstrap: a member already belongs to a cluster; waiting to be added", "member", m.Name)
				return
			}
		}
		if peersFound {
			continue
		}
		var servers []raft.Server
		for _, m := range cands {
			servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(m.Name), Address: raft.ServerAddress(m.Meta.RaftAddr)})
		}
		slices.SortFunc(servers, func(a, b raft.Server) int { return compareStr(string(a.ID), string(b.ID)) })
		f := n.raft.BootstrapCluster(raft.Configuration{Servers: servers})
		if err := f.Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			n.logger.Error("bootstrap failed", "error", err)
			continue
		}
		n.logger.Info("bootstrapped cluster", "servers", len(servers))
		return
	}
}

func compareStr(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

type peersInfo struct {
	HasState bool     `json:"has_state"`
	Servers  []string `json:"servers"`
	// CommitIndex is the answering node's Raft commit index (the leader's is the
	// cluster's): a follower is ready only once it has applied up to near it.
	CommitIndex uint64 `json:"commit_index"`
}

func (n *Node) localPeers() peersInfo {
	has, _ := n.hasState()
	var p peersInfo
	p.HasState = has
	p.CommitIndex, _ = strconv.ParseUint(n.raft.Stats()["commit_index"], 10, 64)
	if f := n.raft.GetConfiguration(); f.Error() == nil {
		for _, s := range f.Configuration().Servers {
			p.Servers = append(p.Servers, string(s.ID))
		}
	}
	return p
}

func (n *Node) remotePeers(ctx context.Context, httpAddr string) (peersInfo, error) {
	var p peersInfo
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	resp, err := n.forwarder.call(ctx, http.MethodGet, httpAddr, "/internal/v1/peers", nil)
	if err != nil {
		return p, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return p, fmt.Errorf("peers: status %d", resp.StatusCode)
	}
	return p, json.NewDecoder(resp.Body).Decode(&p)
}

// leaderLoop runs the leader's duties: reconcile the Raft configuration with gossip (on
// member events and periodically) and revoke the claims of members that died or left.
func (n *Node) leaderLoop(ctx context.Context) {
	events, unsub := n.members.Subscribe()
	defer unsub()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	lastFull := time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-events:
		case <-tick.C:
			// A cheap check every second keeps promotions prompt; the full sweep
			// (removals of reaped members) runs every ReconcileInterval or on events.
			if n.raft.State() != raft.Leader {
				continue
			}
			if time.Since(lastFull) < n.cfg.ReconcileInterval && !n.reconcilePending() {
				continue
			}
		}
		if n.raft.State() != raft.Leader {
			continue
		}
		lastFull = time.Now()
		// Revocation first: it is what lets the survivors take a dead member's shards, and
		// a Raft configuration change in reconcile can take a while to commit.
		n.revokeDeparted(ctx)
		if err := n.reconcile(ctx); err != nil && ctx.Err() == nil {
			n.logger.Warn("reconcile", "error", err)
		}
		n.reseat(ctx)
	}
}

// reconcilePending reports whether the Raft configuration differs from gossip in a way the
// next reconcile would act on (a member to add or promote, a departed member with claims).
func (n *Node) reconcilePending() bool {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	servers := map[string]raft.Server{}
	for _, s := range f.Configuration().Servers {
		servers[string(s.ID)] = s
	}
	if len(n.seatChanges(servers)) > 0 {
		return true
	}
	for _, m := range n.members.Members() {
		s, in := servers[m.Name]
		switch {
		case m.State == membership.StateAlive && !in && m.Meta.RaftAddr != "":
			return true
		case m.State == membership.StateAlive && in && s.Suffrage == raft.Nonvoter:
			return true
		case m.State == membership.StateLeft && in:
			return true
		case m.State == membership.StateDead && in && time.Since(m.Since) > n.cfg.DeadServerReapTimeout:
			return true
		case m.State == membership.StateDead || m.State == membership.StateLeft:
			if owned, _ := n.fsm.Shards(fsm.ShardFilter{Owner: m.Name}); len(owned) > 0 {
				return true
			}
			if _, revoked, _ := n.fsm.Revoked(m.Name); !revoked {
				return true
			}
		}
	}
	return false
}

func (n *Node) reconcile(ctx context.Context) error {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return err
	}
	servers := f.Configuration().Servers
	byID := map[string]raft.Server{}
	voters := 0
	for _, s := range servers {
		byID[string(s.ID)] = s
		if s.Suffrage == raft.Voter {
			voters++
		}
	}
	members := n.members.Members()
	var errs []error
	alive := 0
	for _, m := range members {
		if m.State == membership.StateAlive && m.Meta.RaftAddr != "" {
			alive++
		}
	}

	// Removals: members that left, and members dead longer than the reap timeout, at most
	// (voters-1)/2 dead voters per round so quorum is never risked.
	reapBudget := (voters - 1) / 2
	for _, m := range members {
		s, in := byID[m.Name]
		if !in || m.Name == n.name {
			continue
		}
		remove := false
		switch m.State {
		case membership.StateLeft:
			remove = true
		case membership.StateDead:
			if time.Since(m.Since) > n.cfg.DeadServerReapTimeout {
				if s.Suffrage == raft.Voter {
					if reapBudget <= 0 {
						continue
					}
					reapBudget--
				}
				remove = true
			}
		}
		if remove {
			n.logger.Info("removing raft server", "server", m.Name, "state", m.State.String())
			if err := n.raft.RemoveServer(s.ID, 0, 0).Error(); err != nil {
				errs = append(errs, fmt.Errorf("remove %s: %w", m.Name, err))
				continue
			}
			delete(byID, m.Name)
			if s.Suffrage == raft.Voter {
				voters--
			}
		}
	}

	// Additions: alive members not in the configuration join as non-voters. A stale entry
	// with the same address (another ID) is removed first; a known ID at a new address is
	// re-added with its suffrage.
	for _, m := range members {
		if m.State != membership.StateAlive || m.Meta.RaftAddr == "" {
			continue
		}
		s, in := byID[m.Name]
		if in && string(s.Address) == m.Meta.RaftAddr {
			continue
		}
		for id, other := range byID {
			if id != m.Name && string(other.Address) == m.Meta.RaftAddr {
				n.logger.Info("removing stale raft server with the same address", "server", id, "address", other.Address)
				if err := n.raft.RemoveServer(other.ID, 0, 0).Error(); err != nil {
					errs = append(errs, err)
				}
				if other.Suffrage == raft.Voter {
					voters--
				}
				delete(byID, id)
			}
		}
		var fut raft.IndexFuture
		if in && s.Suffrage == raft.Voter {
			n.logger.Info("raft server changed address", "server", m.Name, "address", m.Meta.RaftAddr)
			fut = n.raft.AddVoter(raft.ServerID(m.Name), raft.ServerAddress(m.Meta.RaftAddr), 0, 0)
		} else {
			n.logger.Info("adding raft non-voter", "server", m.Name, "address", m.Meta.RaftAddr)
			fut = n.raft.AddNonvoter(raft.ServerID(m.Name), raft.ServerAddress(m.Meta.RaftAddr), 0, 0)
		}
		if err := fut.Error(); err != nil {
			errs = append(errs, fmt.Errorf("add %s: %w", m.Name, err))
			continue
		}
		byID[m.Name] = raft.Server{ID: raft.ServerID(m.Name), Address: raft.ServerAddress(m.Meta.RaftAddr), Suffrage: s.Suffrage}
	}

	// Promotions: keep an odd number of voters up to MaxVoters, promoting non-voters that
	// have been caught up (Ready in their gossip metadata) for the stabilization time.
	target := min(n.cfg.MaxVoters, alive)
	if target%2 == 0 {
		target--
	}
	for _, m := range members {
		if voters >= target {
			break
		}
		s, in := byID[m.Name]
		if !in || s.Suffrage == raft.Voter || m.State != membership.StateAlive || !m.Meta.Ready {
			continue
		}
		if time.Since(m.Since) < n.cfg.StabilizationTime {
			continue
		}
		n.logger.Info("promoting raft server to voter", "server", m.Name)
		if err := n.raft.AddVoter(s.ID, s.Address, 0, 0).Error(); err != nil {
			errs = append(errs, fmt.Errorf("promote %s: %w", m.Name, err))
			continue
		}
		voters++
	}
	_ = ctx
	return errors.Join(errs...)
}

// seatChanges lists the seat commands the leader would propose: a seat for every ring
// member (alive, ready, not draining) that has none, and the removal of the seat of a
// member that is gone for good (dead or left for longer than the reap timeout, or unknown
// to gossip and not in the Raft configuration). A member that is only away keeps its
// seat, so it gets the same shards back when it returns (membership.Ring.Assign).
func (n *Node) seatChanges(servers map[string]raft.Server) []fsm.SetSeat {
	seats, err := n.fsm.Seats()
	if err != nil {
		return nil
	}
	seated := make(map[string]bool, len(seats))
	for _, s := range seats {
		seated[s.Node] = true
	}
	members := n.members.Members()
	known := make(map[string]membership.Member, len(members))
	var out []fsm.SetSeat
	for _, m := range members {
		known[m.Name] = m
		if !seated[m.Name] && m.State == membership.StateAlive && m.Meta.Ready && !m.Meta.Draining && !m.Meta.Leaving {
			out = append(out, fsm.SetSeat{Node: m.Name})
		}
	}
	for _, s := range seats {
		m, ok := known[s.Node]
		_, inRaft := servers[s.Node]
		gone := (m.State == membership.StateDead || m.State == membership.StateLeft) &&
			time.Since(m.Since) > n.cfg.DeadServerReapTimeout
		if (!ok && !inRaft) || (ok && gone) {
			out = append(out, fsm.SetSeat{Node: s.Node, Remove: true})
		}
	}
	return out
}

// reseat proposes the seat changes (seatChanges); the leader runs it with reconcile.
func (n *Node) reseat(ctx context.Context) {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return
	}
	servers := map[string]raft.Server{}
	for _, s := range f.Configuration().Servers {
		servers[string(s.ID)] = s
	}
	for _, c := range n.seatChanges(servers) {
		cmd, err := fsm.Encode(fsm.TypeSetSeat, c)
		if err != nil {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if _, err := n.Propose(pctx, cmd); err != nil {
			n.logger.Warn("seat change", "node", c.Node, "remove", c.Remove, "error", err)
		} else {
			n.logger.Info("seat change", "node", c.Node, "remove", c.Remove)
		}
		cancel()
	}
}

// revokeDeparted revokes the shard claims of members that gossip declares dead or left, so
// their shards are taken over at once instead of after the lease.
func (n *Node) revokeDeparted(ctx context.Context) {
	for _, m := range n.members.Members() {
		if m.State != membership.StateDead && m.State != membership.StateLeft {
			continue
		}
		owned, err := n.fsm.Shards(fsm.ShardFilter{Owner: m.Name})
		if err != nil {
			continue
		}
		// Revoke even a member without claims, once: the mark is what tells a member
		// behind a one-way partition (it still hears the leader) that the others have
		// declared it departed and split its quota share among themselves.
		if _, revoked, _ := n.fsm.Revoked(m.Name); revoked && len(owned) == 0 {
			continue
		}
		cmd, err := fsm.Encode(fsm.TypeRevokeNode, fsm.RevokeNode{Node: m.Name, Reason: "owner " + m.State.String()})
		if err != nil {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if _, err := n.Propose(pctx, cmd); err != nil {
			n.logger.Warn("revoke claims of departed member", "member", m.Name, "error", err)
		} else {
			n.logger.Info("revoked claims of departed member", "member", m.Name, "state", m.State.String(), "shards", len(owned))
		}
		cancel()
	}
}

// readinessLoop marks the node ready once it knows a leader and has applied the log up to
// the commit index, and gossips that readiness: only ready members are on the ring.
func (n *Node) readinessLoop(ctx context.Context) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ready := n.computeReady()
		if ready == n.ready.Load() {
			continue
		}
		n.ready.Store(ready)
		if err := n.members.UpdateMeta(func(m *membership.Meta) { m.Ready = ready }); err != nil {
			n.logger.Warn("gossip readiness", "error", err)
		}
		n.logger.Info("readiness changed", "ready", ready)
	}
}

func (n *Node) computeReady() bool {
	leaderAddr, _ := n.raft.LeaderWithID()
	if leaderAddr == "" {
		return false
	}
	state := n.raft.State()
	if state != raft.Leader && state != raft.Follower {
		return false
	}
	if state == raft.Follower && time.Since(n.raft.LastContact()) > 5*time.Second {
		return false
	}
	in := false
	if f := n.raft.GetConfiguration(); f.Error() == nil {
		for _, s := range f.Configuration().Servers {
			if string(s.ID) == n.name {
				in = true
			}
		}
	}
	if !in {
		return false
	}
	var commit uint64
	if _, err := fmt.Sscan(n.raft.Stats()["commit_index"], &commit); err != nil {
		return false
	}
	if commit > n.raft.AppliedIndex()+250 {
		return false
	}
	if state == raft.Leader || n.ready.Load() {
		return true
	}
	// A follower's own commit index is what the leader last told it, which can be far
	// behind (a restarted node before the leader finds its log, a node waiting for a
	// snapshot): before it goes on the ring, it checks against the leader's.
	return n.caughtUpWithLeader()
}

// caughtUpWithLeader asks the leader for its commit index (internal peers endpoint, at
// most once a second) and reports whether this node has applied up to near it.
func (n *Node) caughtUpWithLeader() bool {
	if time.Since(n.leaderCommitAt) < time.Second {
		return n.fsm.AppliedIndex()+250 >= n.leaderCommit
	}
	addr, err := n.leaderHTTPAddr()
	if err != nil {
		return false
	}
	p, err := n.remotePeers(n.ctx, addr)
	if err != nil {
		n.logger.Debug("leader commit index", "error", err)
		return false
	}
	n.leaderCommit, n.leaderCommitAt = p.CommitIndex, time.Now()
	return n.fsm.AppliedIndex()+250 >= p.CommitIndex
}

// ringLoop keeps the hash ring equal to the set of alive, ready, non-draining members.
func (n *Node) ringLoop(ctx context.Context) {
	events, unsub := n.members.Subscribe()
	defer unsub()
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		n.updateRing()
		select {
		case <-ctx.Done():
			return
		case <-events:
		case <-t.C:
		}
	}
}

func (n *Node) ringMembers() []string {
	var names []string
	for _, m := range n.members.Members() {
		if m.State == membership.StateAlive && m.Meta.Ready && !m.Meta.Draining {
			names = append(names, m.Name)
		}
	}
	slices.Sort(names)
	return names
}

// ringSeats returns the ring's join order: the replicated seats, each marked absent
// unless its member is on the ring, then the ring members not seated yet, by name.
func (n *Node) ringSeats(present []string) []membership.Seat {
	onRing := make(map[string]bool, len(present))
	for _, m := range present {
		onRing[m] = true
	}
	seats, err := n.fsm.Seats()
	if err != nil {
		n.logger.Warn("read seats", "error", err)
	}
	out := make([]membership.Seat, 0, len(seats)+len(present))
	for _, s := range seats {
		out = append(out, membership.Seat{Name: s.Node, Absent: !onRing[s.Node]})
		delete(onRing, s.Node)
	}
	for _, m := range present { // sorted
		if onRing[m] {
			out = append(out, membership.Seat{Name: m})
		}
	}
	return out
}

func (n *Node) updateRing() {
	names := n.ringMembers()
	seats := n.ringSeats(names)
	n.ringMu.Lock()
	defer n.ringMu.Unlock()
	if slices.Equal(seats, n.ring.Seats()) {
		return
	}
	n.ring = membership.NewRingSeats(seats, n.cfg.RingVnodes)
	n.logger.Info("ring changed", "members", names, "seats", len(seats))
	for _, ch := range n.ringSubs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// Ring returns the current hash ring (alive, ready, non-draining members).
func (n *Node) Ring() *membership.Ring {
	n.ringMu.RLock()
	defer n.ringMu.RUnlock()
	return n.ring
}

// RingChanges returns a channel that receives a signal whenever the ring changes.
func (n *Node) RingChanges() <-chan struct{} {
	ch := make(chan struct{}, 1)
	n.ringMu.Lock()
	n.ringSubs = append(n.ringSubs, ch)
	n.ringMu.Unlock()
	return ch
}

// Drain takes this node off the ring (its shards hand off to the others) while it stays
// a member; Undrain puts it back.
func (n *Node) Drain(on bool) error {
	return n.members.UpdateMeta(func(m *membership.Meta) { m.Draining = on })
}
