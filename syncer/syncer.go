package syncer

import (
	"context"
	"errors"
	"hash/fnv"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"cardsync/carrier"
	"cardsync/fsm"
	"cardsync/membership"
)

// Proposer submits commands to the replicated state machine (the node, which forwards to
// the leader when needed).
type Proposer interface {
	Propose(ctx context.Context, cmd []byte) (*fsm.Result, error)
}

// State is the read view of the local replica.
type State interface {
	Shards(filter fsm.ShardFilter) ([]fsm.ShardState, error)
	Shard(id string) (fsm.ShardState, error)
	ShardCards(shard, afterICCID string, limit int) ([]fsm.Card, error)
	Enterprises() ([]fsm.Enterprise, error)
	Accounts() ([]fsm.Account, error)
	Maintenance() (bool, string, error)
	// Revoked reports whether this cluster revoked the node's claims (declared it
	// departed) and has not granted it a claim since.
	Revoked(node string) (at time.Time, revoked bool, err error)
}

// Cluster is what the syncer needs to know about membership.
type Cluster interface {
	Name() string
	Ring() *membership.Ring
	RingChanges() <-chan struct{}
	Ready() bool
	// LeaderContact is how long since this node last heard from the Raft leader (0 on
	// the leader itself).
	LeaderContact() time.Duration
}

// Account is a carrier account client behind this node's limiter (see carrier.Account).
type Account interface {
	Query(ctx context.Context, iccids []string) ([]carrier.Result, error)
	BatchSize() int
	SetShare(ratePerSec float64, burst, concurrency int)
	Backoff(err error) time.Duration
	// TakeRoom promises up to n cards of spare room in a partial query of the account
	// that waits for its tokens; a query of that many cards made now rides in its call.
	TakeRoom(n int) int
}

// Syncer runs the sync method on one node.
type Syncer struct {
	cfg      Config
	log      hclog.Logger
	prop     Proposer
	state    State
	cluster  Cluster
	accounts map[string]Account
	m        *metrics

	mu      sync.Mutex
	workers map[string]*worker // shard id -> running worker
	// groupWait: the last poll left a due shard of this node waiting only for its group,
	// held by another node (Run polls quickly meanwhile).
	groupWait atomic.Bool
	backoff   map[string]backoffState
	shares    map[string]Share
	history   map[string][]timedShare // shares computed during the last grace period
	wg        sync.WaitGroup
	wake      chan struct{}
}

type backoffState struct {
	until  time.Time
	reason string
}

// Share is this node's part of one carrier account's cluster-wide quota.
type Share struct {
	Account     string  `json:"account"`
	Fraction    float64 `json:"fraction"`
	RatePerSec  float64 `json:"rate_per_sec"`
	Burst       int     `json:"burst"`
	Concurrency int     `json:"concurrency"`
}

// New builds a syncer. accounts maps carrier account ids to this node's clients.
func New(cfg Config, prop Proposer, state State, cluster Cluster, accounts map[string]Account) (*Syncer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Syncer{
		cfg: cfg, log: cfg.Logger.Named("syncer"), prop: prop, state: state, cluster: cluster,
		accounts: accounts, workers: map[string]*worker{}, backoff: map[string]backoffState{},
		shares: map[string]Share{}, history: map[string][]timedShare{}, wake: make(chan struct{}, 1),
	}
	s.m = newMetrics(cfg.Registry)
	// A starting node has no share until a grace period has passed: the others may still
	// be using what it is about to get.
	for id := range accounts {
		s.history[id] = []timedShare{{at: cfg.Now(), share: Share{Account: id}}}
	}
	return s, nil
}

// Run polls until ctx ends, then stops every worker (each flushes and releases its shard).
func (s *Syncer) Run(ctx context.Context) error {
	ringCh := s.cluster.RingChanges()
	t := time.NewTicker(s.cfg.PollInterval)
	defer t.Stop()
	var fastUntil time.Time
	fast := time.NewTicker(100 * time.Millisecond)
	defer fast.Stop()
	defer s.stopAll("node shutting down")
	s.poll(ctx)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-s.wake:
		case <-ringCh:
			// Membership moved: poll quickly for a while so handoffs and takeovers happen
			// as soon as the previous owner releases or is revoked.
			fastUntil = s.cfg.Now().Add(5 * time.Second)
		case <-fast.C:
			// Also poll quickly while a due shard of this node waits only for its group
			// to be released by another node: the release is not announced here, and
			// the group would otherwise idle until the next poll.
			if s.cfg.Now().After(fastUntil) && !s.groupWait.Load() {
				continue
			}
		}
		s.poll(ctx)
	}
}

func (s *Syncer) stopAll(reason string) {
	s.mu.Lock()
	for _, w := range s.workers {
		w.stop(reason)
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// Running lists the shards this node works right now.
func (s *Syncer) Running() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.workers))
	for id := range s.workers {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

// Shares reports this node's quota share per carrier account.
func (s *Syncer) Shares() []Share {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Share, 0, len(s.shares))
	for _, sh := range s.shares {
		out = append(out, sh)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Account < out[j].Account })
	return out
}

func (s *Syncer) poll(ctx context.Context) {
	if ctx.Err() != nil {
		return
	}
	start := s.cfg.Now()
	defer func() { s.m.pollSeconds.Observe(time.Since(start).Seconds()) }()
	me := s.cluster.Name()
	shards, err := s.state.Shards(fsm.ShardFilter{})
	if err != nil {
		s.log.Warn("read shards", "error", err)
		return
	}
	maint, _, _ := s.state.Maintenance()
	ring := s.cluster.Ring()
	ids := make([]string, len(shards))
	for i, sh := range shards {
		ids[i] = sh.ID
	}
	owners := ring.Assign(ids)
	ready := s.cluster.Ready()

	// Hand off shards the ring moved away (or everything, in maintenance or when this
	// node is not ready): the worker finishes its batch, flushes and releases.
	s.mu.Lock()
	for id, w := range s.workers {
		switch {
		case maint:
			w.stop("maintenance")
		case !ready:
			w.stop("node not ready")
		case owners[id] != me:
			w.stop("handoff to " + owners[id])
		}
	}
	s.mu.Unlock()

	ents, accts := s.deps()
	revoked := s.updateShares(shards, owners, ents, accts, start)
	if maint || !ready {
		return
	}
	if s.cluster.LeaderContact() > s.contactLimit() {
		// Cut off from the leader, a claim cannot commit: each would only wait out its
		// timeout and hold up the next round (and the share update in it).
		return
	}

	liveGroup := map[int]string{}  // group -> shard with a live claim
	groupOwner := map[int]string{} // group -> that claim's owner
	// group -> a shard whose task was cut off within the last lease (its claim revoked or
	// expired mid-task, not released for a backoff): it resumes before the group's other
	// shards start, so a member's death does not leave its shards waiting behind a
	// whole shard of the same group that another member started meanwhile.
	cutGroups := map[int][]string{}
	for _, sh := range shards {
		switch {
		case sh.LiveClaim(start):
			liveGroup[sh.Group] = sh.ID
			groupOwner[sh.Group] = sh.Owner
		case cutOff(sh.Checkpoint, start, s.cfg.Lease) && !sh.Checkpoint.NextRunAt.After(start):
			cutGroups[sh.Group] = append(cutGroups[sh.Group], sh.ID)
		}
	}
	// The next shard of each group that has just come free, for the whole cluster
	// (order.go): this node claims the planned shards the ring gives it.
	rem := remainingWork(shards, accts, start)
	capacity := queryCapacity(accts)
	hold := map[int]bool{}
	for g := range cutGroups {
		hold[g] = true
	}
	plan := planGroups(planInput{shards: shards, owners: owners, ents: ents, hold: hold, rem: rem, capacity: capacity,
		now: start, maxDueWait: s.cfg.MaxDueWait, grace: s.shareGrace(), maxWorkers: s.cfg.MaxWorkers})
	// The due shards this node may claim now; of those, unfinished tasks and overdue
	// shards first, then the shards whose carrier accounts this node is least busy on
	// (order.go).
	s.mu.Lock()
	runningHere := make(map[string]bool, len(s.workers))
	for id := range s.workers {
		runningHere[id] = true
	}
	s.mu.Unlock()
	var claimable []fsm.ShardState
	load := accountLoad{}
	groupWait := false
	defer func() { s.groupWait.Store(groupWait) }()
	for _, sh := range shards {
		switch {
		case runningHere[sh.ID]:
			load.add(accountFractions(sh, ents))
		case owners[sh.ID] != me || !due(sh, start):
		case sh.Owner != "" && sh.Owner != me && sh.LiveClaim(start):
			// claimed elsewhere (claim 4)
		case liveGroup[sh.Group] != "" && liveGroup[sh.Group] != sh.ID:
			// groups run serially
			if groupOwner[sh.Group] != me {
				groupWait = true
			}
		case len(cutGroups[sh.Group]) > 0 && !slices.Contains(cutGroups[sh.Group], sh.ID) && liveGroup[sh.Group] == "":
			// the group's cut-off task goes first (its ring owner claims it)
			if owners[cutGroups[sh.Group][0]] != me {
				groupWait = true
			}
		case plan[sh.Group] != "" && plan[sh.Group] != sh.ID:
			// the cluster's plan starts another shard of the group
		case !s.anyAccountUsable(sh, ents, revoked, start):
			// every account of its cards is unusable here for now (no credentials,
			// carrier backoff, no quota share yet)
		default:
			claimable = append(claimable, sh)
		}
	}
	cands := newCandidates(claimable, ents, start, s.cfg.MaxDueWait)
	for len(cands) > 0 {
		c := cands[pickNext(cands, load, rem, capacity)]
		sh := c.sh
		cands = slices.DeleteFunc(cands, func(o candidate) bool { return o.sh.ID == sh.ID })
		if len(runningHere) >= s.cfg.MaxWorkers && !slices.Contains(cutGroups[sh.Group], sh.ID) {
			// At the worker bound only a cut-off task is taken: a dead member's
			// unfinished tasks resume at once, whatever this node runs (they are at most
			// the dead member's own workers).
			continue
		}
		claim := fsm.Claim{Shard: sh.ID, Node: me, Epoch: sh.Epoch, Lease: s.cfg.Lease}
		if sh.Checkpoint.State != fsm.StateRunning {
			// Claim 6 on the fast path: with the dependency data ready, the claim starts
			// the new task in the same command. When it is not ready the worker releases
			// the shard with the reason.
			if dep, why := s.dependencies(sh, ents, accts); why == "" {
				claim.StartTask, claim.DepVersion = true, dep
			}
		}
		cmd, err := fsm.Encode(fsm.TypeClaim, claim)
		if err != nil {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		res, err := s.prop.Propose(pctx, cmd)
		cancel()
		if err != nil {
			s.m.claims.WithLabelValues("rejected").Inc()
			s.log.Debug("claim rejected", "shard", sh.ID, "error", err)
			if fsm.ErrorCode(err) == fsm.CodeInternal {
				// Not a rule of the state machine but the way there (no leader, leader
				// unreachable, timeout): the next claims would wait the same; the next
				// round tries again.
				break
			}
			continue
		}
		s.m.claims.WithLabelValues("granted").Inc()
		liveGroup[sh.Group] = sh.ID
		runningHere[sh.ID] = true
		load.add(c.fr)
		// The group runs this shard now; its other shards wait.
		cands = slices.DeleteFunc(cands, func(o candidate) bool { return o.sh.Group == sh.Group })
		s.startWorker(ctx, sh.ID, res.Epoch)
	}
}

func due(sh fsm.ShardState, now time.Time) bool {
	return sh.Checkpoint.State == fsm.StateRunning || !sh.Checkpoint.NextRunAt.After(now)
}

func (s *Syncer) deps() (map[string]fsm.Enterprise, map[string]fsm.Account) {
	ents := map[string]fsm.Enterprise{}
	if es, err := s.state.Enterprises(); err == nil {
		for _, e := range es {
			ents[e.ID] = e
		}
	}
	accts := map[string]fsm.Account{}
	if as, err := s.state.Accounts(); err == nil {
		for _, a := range as {
			accts[a.ID] = a
		}
	}
	return ents, accts
}

// unusable says why an account's cards cannot be queried from this node now ("" when
// they can): no credentials here, carrier backoff, or (with shared quotas) no quota share.
func (s *Syncer) unusable(account string, now time.Time) string {
	if _, ok := s.accounts[account]; !ok {
		return "account " + account + " has no credentials on this node"
	}
	if b, off := s.backedOff(account, now); off {
		return b.reason
	}
	if s.cfg.ShareQuota {
		if sh := s.share(account); sh.RatePerSec <= 0 || sh.Concurrency <= 0 {
			return quotaPrefix + " no share of account " + account + " on this node yet"
		}
	}
	return ""
}

// anyAccountUsable reports whether this node can query at least one carrier account the
// shard's cards use (accountFractions) now (unusable). A shard whose cards would all be
// deferred is left unclaimed instead of being claimed, walked and released with every
// card deferred: it is due still, and is claimed once an account is usable (a share
// arrives after its grace period, a backoff ends) or by another node. A node whose claims
// were revoked claims without a share: the grant lifts the mark that keeps its share at
// zero.
func (s *Syncer) anyAccountUsable(sh fsm.ShardState, ents map[string]fsm.Enterprise, revoked bool, now time.Time) bool {
	for a, f := range accountFractions(sh, ents) {
		if f <= 0 {
			continue
		}
		if why := s.unusable(a, now); why == "" || (revoked && strings.HasPrefix(why, quotaPrefix)) {
			return true
		}
	}
	return false
}

func (s *Syncer) setBackoff(account string, d time.Duration, reason string) time.Time {
	until := s.cfg.Now().Add(d)
	s.mu.Lock()
	if b := s.backoff[account]; b.until.Before(until) {
		s.backoff[account] = backoffState{until: until, reason: reason}
	}
	s.mu.Unlock()
	s.m.backoffs.WithLabelValues(account).Inc()
	return until
}

// backedOff returns the account's backoff on this node while it lasts.
func (s *Syncer) backedOff(account string, now time.Time) (backoffState, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.backoff[account]
	return b, ok && b.until.After(now)
}

func (s *Syncer) share(account string) Share {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shares[account]
}

// updateShares gives this node its part of each account's cluster-wide quota: the
// fraction of the account's due work (cards in due shards) that the ring gives this node.
// Every node computes the same split from the same replicated state and ring, so the
// shares add up to the quota; when nothing is due the quota is split evenly. It reports
// whether the cluster has revoked this node.
func (s *Syncer) updateShares(shards []fsm.ShardState, owners map[string]string, ents map[string]fsm.Enterprise, accts map[string]fsm.Account, now time.Time) (revoked bool) {
	me := s.cluster.Name()
	members := s.cluster.Ring().Members()
	weight := shareWeights(shards, owners, ents, now)
	// A node the cluster has revoked (declared dead while it may still hear the leader,
	// as in a one-way partition) keeps no share: the others already count its shards as
	// theirs. A claim granted to it again lifts the mark.
	_, revoked, err := s.state.Revoked(me)
	if err != nil {
		revoked = true
	}
	outOfContact := s.cluster.LeaderContact() > s.contactLimit()
	next := map[string]Share{}
	for id, acct := range s.accounts {
		q, ok := accts[id]
		if !ok {
			continue
		}
		fracs := map[string]float64{}
		total := 0.0
		for _, w := range weight[id] {
			total += w
		}
		switch {
		case !s.cfg.ShareQuota:
			fracs[me] = 1
		case total > 0:
			for o, w := range weight[id] {
				fracs[o] = w / total
			}
		case len(members) > 0:
			for _, o := range members {
				fracs[o] = 1 / float64(len(members))
			}
		default:
			fracs[me] = 1
		}
		rate := q.RatePerSec
		if s.cfg.ShareQuota {
			rate *= s.cfg.QuotaSafety
		}
		sh := splitShare(me, id, fracs, members, rate, q.Burst, q.Concurrency, s.cfg.SharedTokens)
		if s.cfg.ShareQuota && (revoked || outOfContact) {
			// Cut off from the leader (partitioned, or paused and not yet aware of it),
			// this node's view of the ring and the claims may be stale and could make it
			// believe it is alone: it gives up its share until it is back in contact, and
			// then waits the grace period like any node gaining a share.
			sh = Share{Fraction: sh.Fraction}
		}
		sh.Account = id
		next[id] = s.phaseShare(id, sh, now)
		if old, ok := s.shares[id]; !ok || old != next[id] {
			acct.SetShare(next[id].RatePerSec, next[id].Burst, next[id].Concurrency)
			s.m.shareRate.WithLabelValues(id).Set(next[id].RatePerSec)
		}
	}
	s.mu.Lock()
	s.shares = next
	s.mu.Unlock()
	return revoked
}

// shareWeights returns, per account, each node's due work: the cards of the due shards it
// works. A shard with a live claim counts for the claim's owner, whatever this node's ring
// says: the claim is replicated, so every node agrees on it, while rings disagree for a
// while after a partition heals (a member that was cut off still sees itself alone and
// would take the whole quota while the others count its shards as theirs). A shard
// without a live claim counts for its ring owner.
func shareWeights(shards []fsm.ShardState, owners map[string]string, ents map[string]fsm.Enterprise, now time.Time) map[string]map[string]float64 {
	weight := map[string]map[string]float64{} // account -> owner -> due cards
	for _, sh := range shards {
		owner := owners[sh.ID]
		if sh.LiveClaim(now) {
			owner = sh.Owner
		}
		// A shard whose cards wait for a quota share still wants that share: counting it
		// keeps the split stable instead of flapping with every retry.
		wants := due(sh, now) || strings.Contains(sh.Checkpoint.Reason, quotaPrefix)
		if owner == "" || !wants || len(sh.Enterprises) == 0 {
			continue
		}
		if len(sh.Accounts) > 0 {
			for _, c := range sh.Accounts {
				if weight[c.Account] == nil {
					weight[c.Account] = map[string]float64{}
				}
				weight[c.Account][owner] += float64(c.Cards)
			}
			continue
		}
		// A shard without per-account counts: its cards count for every account of its
		// enterprises.
		per := float64(sh.Cards) / float64(len(sh.Enterprises))
		for _, eid := range sh.Enterprises {
			for _, a := range ents[eid].Accounts {
				if weight[a] == nil {
					weight[a] = map[string]float64{}
				}
				weight[a][owner] += per
			}
		}
	}
	return weight
}

// phaseShare applies share changes safely across nodes that recompute at different
// moments: the share in force is the smallest one computed during the last grace
// period. A decrease takes effect at once; an increase only once it has held for the
// whole grace period, by which time every other node has recomputed and given up what
// this node gains. So the nodes' shares never add up to more than the account's quota,
// nor its concurrency, and a steadily growing share still follows with a delay.
func (s *Syncer) phaseShare(id string, target Share, now time.Time) Share {
	hist := append(s.history[id], timedShare{at: now, share: target})
	// Rates are phased over the share grace; concurrency slots over the longer of the
	// grace and the call grace: a query admitted under a node's old slot may still be
	// calling the carrier after that node gave the slot up (a held call runs until its
	// timeout), and the node that gains the slot must not call alongside it.
	cut := now.Add(-s.shareGrace())
	concCut := now.Add(-max(s.shareGrace(), s.cfg.CallGrace))
	first := 0
	for first < len(hist)-1 && hist[first+1].at.Before(concCut) {
		first++
	}
	if first > 0 && hist[first].at.Before(concCut) {
		// hist[first] is the share in force at the start of the window: keep it.
		hist = hist[first:]
	}
	s.history[id] = hist
	out := target
	for i, h := range hist {
		inRateWindow := !h.at.Before(cut) || (i+1 < len(hist) && !hist[i+1].at.Before(cut)) || i == len(hist)-1
		if inRateWindow {
			out.RatePerSec = min(out.RatePerSec, h.share.RatePerSec)
			out.Burst = min(out.Burst, h.share.Burst)
		}
		out.Concurrency = min(out.Concurrency, h.share.Concurrency)
	}
	if out.RatePerSec <= 0 || out.Concurrency <= 0 {
		out.RatePerSec, out.Burst, out.Concurrency = 0, 0, 0
	}
	return out
}

// contactLimit is how long without news from the Raft leader a node keeps its quota share.
func (s *Syncer) contactLimit() time.Duration {
	return max(2*s.cfg.PollInterval, time.Second)
}

// shareGrace is how long a share increase waits: two poll intervals (every node has
// recomputed its own share by then) plus a second for the members' rings to agree again
// after a membership change and for in-flight calls to end.
func (s *Syncer) shareGrace() time.Duration {
	return 2*s.cfg.PollInterval + time.Second
}

type timedShare struct {
	at    time.Time
	share Share
}

// splitShare gives me its part of an account's rate, burst and concurrency, given every
// owner's fraction of the account's work. Concurrency slots go by largest remainder; an
// owner left without a slot cannot call at all, so the rate and burst are split among the
// owners that got a slot, in proportion to their fractions. Otherwise an account with
// fewer slots than owners (Cisco allows one call at a time) would leave the rate of the
// slotless owners unused and run far below its quota. Every node computes the same split
// from the same inputs, so the parts never add up to more than the account allows.
//
// With the leader's shared token buckets (even) the rate is not split to limit calls
// (every call's tokens come from the leader), and the slots are split evenly (evenSlots):
// between every member of the ring when the account has a slot for each, so that a member
// that gains work of the account (a dead member's shards, a shard newly due) calls at
// once instead of waiting the grace period for a slot; otherwise between the owners with
// work. The rate and burst shown for the share follow the slots.
func splitShare(me, account string, fracs map[string]float64, members []string, rate float64, burst, concurrency int, even bool) Share {
	sh := Share{Fraction: fracs[me]}
	slots := max(concurrency, 1)
	if even {
		if len(members) > 0 && !slices.Contains(members, me) {
			// Off the ring (not ready, leaving): the members on it share every slot.
			return Share{Fraction: sh.Fraction}
		}
		holders := members
		if slots < len(members) {
			holders = nil
			for name, f := range fracs {
				if f > 0 {
					holders = append(holders, name)
				}
			}
		}
		sh.Concurrency = evenSlots(me, account, holders, slots)
		if sh.Concurrency == 0 || rate <= 0 {
			return Share{Fraction: sh.Fraction}
		}
		part := float64(sh.Concurrency) / float64(slots)
		sh.RatePerSec = rate * part
		sh.Burst = max(1, int(float64(max(burst, 1))*part))
		return sh
	}
	sh.Concurrency = slotsFor(me, fracs, slots)
	if sh.Fraction <= 0 || sh.Concurrency == 0 || rate <= 0 {
		return Share{Fraction: sh.Fraction}
	}
	withSlot := 0.0
	for name, f := range fracs {
		if f > 0 && slotsFor(name, fracs, slots) > 0 {
			withSlot += f
		}
	}
	part := sh.Fraction / withSlot
	sh.RatePerSec = rate * part
	sh.Burst = max(1, int(float64(max(burst, 1))*part))
	return sh
}

// evenSlots splits concurrency slots evenly between the holders, the remainder to the
// first holders in an order fixed per account (a hash of account and name), so the split
// moves only when a holder comes or goes, not with every shard finished. That is the
// split with the leader's shared token buckets: the rate is not split, and a slot held by
// any owner with work keeps a request queued at the leader; a split by the fractions
// moved slots between owners every few seconds of a backlog, and each move held the
// gaining owner back for the call grace (in force, the slots added up to less than the
// account allows for most of the rebalance benchmark).
func evenSlots(me, account string, holders []string, slots int) int {
	type owner struct {
		name string
		key  uint64
	}
	var owners []owner
	for _, name := range holders {
		h := fnv.New64a()
		h.Write([]byte(account))
		h.Write([]byte{0})
		h.Write([]byte(name))
		owners = append(owners, owner{name, h.Sum64()})
	}
	sort.Slice(owners, func(i, j int) bool {
		if owners[i].key != owners[j].key {
			return owners[i].key < owners[j].key
		}
		return owners[i].name < owners[j].name
	})
	for i, o := range owners {
		if o.name == me {
			n := slots / len(owners)
			if i < slots%len(owners) {
				n++
			}
			return n
		}
	}
	return 0
}

// slotsFor splits concurrency slots between owners by largest remainder, ties broken by
// name, so that the nodes' slots never add up to more than the account allows.
func slotsFor(me string, fracs map[string]float64, slots int) int {
	type rem struct {
		name string
		base int
		frac float64
	}
	var rs []rem
	used := 0
	for name, f := range fracs {
		if f <= 0 {
			continue
		}
		exact := f * float64(slots)
		b := int(exact)
		rs = append(rs, rem{name, b, exact - float64(b)})
		used += b
	}
	sort.Slice(rs, func(i, j int) bool {
		if rs[i].frac != rs[j].frac {
			return rs[i].frac > rs[j].frac
		}
		return rs[i].name < rs[j].name
	})
	for i := 0; i < len(rs) && used < slots; i++ {
		rs[i].base++
		used++
	}
	for _, r := range rs {
		if r.name == me {
			return r.base
		}
	}
	return 0
}

func (s *Syncer) startWorker(ctx context.Context, shard string, epoch uint64) {
	w := &worker{s: s, shard: shard, epoch: epoch, stopCh: make(chan struct{})}
	s.mu.Lock()
	s.workers[shard] = w
	s.mu.Unlock()
	s.m.running.Inc()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer func() {
			s.mu.Lock()
			delete(s.workers, shard)
			s.mu.Unlock()
			s.m.running.Dec()
			select {
			case s.wake <- struct{}{}:
			default:
			}
		}()
		w.run(ctx)
	}()
}

var errStopped = errors.New("worker stopped")

// backoffPrefix starts the reason of cards deferred while their account is backed off.
const backoffPrefix = "carrier backoff:"

// quotaPrefix starts the reason of cards deferred for lack of a quota share.
const quotaPrefix = "quota:"

type metrics struct {
	claims      *prometheus.CounterVec
	flushes     *prometheus.CounterVec
	cards       *prometheus.CounterVec
	calls       *prometheus.CounterVec
	backoffs    *prometheus.CounterVec
	rounds      *prometheus.CounterVec
	running     prometheus.Gauge
	shareRate   *prometheus.GaugeVec
	pollSeconds prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		claims:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cardsync_syncer_claims_total", Help: "Shard claims proposed by this node, by outcome."}, []string{"outcome"}),
		flushes:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cardsync_syncer_flushes_total", Help: "Checkpoint flushes, by outcome."}, []string{"outcome"}),
		cards:       prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cardsync_syncer_cards_total", Help: "Cards processed by this node, by result (synced, skipped, failed, deferred)."}, []string{"result"}),
		calls:       prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cardsync_carrier_calls_total", Help: "Carrier batch queries by account and error kind."}, []string{"account", "kind"}),
		backoffs:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cardsync_carrier_backoffs_total", Help: "Times an account was backed off."}, []string{"account"}),
		rounds:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cardsync_syncer_rounds_total", Help: "Shard rounds ended, by outcome."}, []string{"outcome"}),
		running:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "cardsync_syncer_running_shards", Help: "Shards this node works right now."}),
		shareRate:   prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "cardsync_quota_share_rate", Help: "This node's share of an account's calls per second."}, []string{"account"}),
		pollSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "cardsync_syncer_poll_seconds", Help: "Duration of one poll round.", Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10)}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.claims, m.flushes, m.cards, m.calls, m.backoffs, m.rounds, m.running, m.shareRate, m.pollSeconds} {
			// A second syncer on the same registry keeps the first one's collectors.
			_ = reg.Register(c)
		}
	}
	return m
}
