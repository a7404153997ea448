package syncer

import (
	"slices"
	"strings"
	"time"

	"cardsync/carrier"
	"cardsync/fsm"
)

// Which due shard a node claims next.
//
// A group runs one shard at a time, so a node works at most as many shards as there are
// groups, and each of them mostly calls one carrier account: ICCIDs carry the carrier's
// prefix, so a shard (a run of an enterprise's cards in ICCID order) is mostly one
// carrier's cards. Taking shards oldest first lets the running shards pile onto one
// account: they all crawl at that account's quota while the other accounts, with quota to
// spare, have no query waiting. So among the due shards a node may claim it takes, one at
// a time, the shard whose accounts it is least busy on: the sum over the shard's accounts
// of (the shard's fraction of cards on that account) x (the cards fraction of that
// account over the shards this node already runs), each account's term scaled down when
// it has more due work left than the others (pickNext). Then the shard with the most work
// left, then the oldest. Two kinds of
// shard go ahead of that balance: an unfinished task (a shard taken over or handed off
// resumes at once) and a shard due for longer than MaxDueWait (none starves), both
// oldest first.

// accountFractions is the fraction of a shard's cards on each carrier account: from the
// shard's own counts, or, for a shard without them, spread evenly over its enterprises'
// accounts.
func accountFractions(sh fsm.ShardState, ents map[string]fsm.Enterprise) map[string]float64 {
	out := map[string]float64{}
	if len(sh.Accounts) > 0 && sh.Cards > 0 {
		// The counts cover every card of the shard (fsm.ShardState).
		for _, c := range sh.Accounts {
			out[c.Account] = float64(c.Cards) / float64(sh.Cards)
		}
		return out
	}
	for _, eid := range sh.Enterprises {
		accts := ents[eid].Accounts
		for _, a := range accts {
			out[a] += 1 / float64(len(sh.Enterprises)*len(accts))
		}
	}
	return out
}

// accountLoad is how busy a node is on each account: the sum of accountFractions over
// the shards it runs.
type accountLoad map[string]float64

func (l accountLoad) add(fr map[string]float64) {
	for a, f := range fr {
		l[a] += f
	}
}

// candidate is a due shard this node may claim, with what ranks it.
type candidate struct {
	sh    fsm.ShardState
	fr    map[string]float64
	first bool // an unfinished task or overdue: oldest first, ahead of the balance
}

func newCandidates(shards []fsm.ShardState, ents map[string]fsm.Enterprise, now time.Time, maxWait time.Duration) []candidate {
	out := make([]candidate, len(shards))
	for i, sh := range shards {
		out[i] = candidate{sh: sh, fr: accountFractions(sh, ents),
			first: sh.Checkpoint.State == fsm.StateRunning || sh.Checkpoint.NextRunAt.Before(now.Add(-maxWait))}
	}
	return out
}

// pickNext returns the index of the candidate to try next given the running shards' load
// and, per account, the seconds of due work left at the account's full rate (rem; nil
// counts every account alike) and the queries per second its quota allows (capacity;
// nil counts every account alike). An account with more work left counts as less busy,
// so once every account has a shard running the next ones go where the backlog is
// longest and the accounts' backlogs run out together instead of leaving one account
// idle at the end. An account that allows fewer queries per second counts as busier per
// shard: fewer shards keep its quota in use.
func pickNext(cands []candidate, load accountLoad, rem, capacity map[string]float64) int {
	maxRem, maxCap := 0.0, 0.0
	for _, r := range rem {
		maxRem = max(maxRem, r)
	}
	for _, c := range capacity {
		maxCap = max(maxCap, c)
	}
	cost := func(c candidate) float64 {
		x := 0.0
		for a, f := range c.fr {
			factor := 1.0
			if r := rem[a]; r > 0 && maxRem > 0 {
				factor = maxRem / r
			}
			if q := capacity[a]; q > 0 && maxCap > 0 {
				factor *= maxCap / q
			}
			x += f * load[a] * factor
		}
		return x
	}
	left := func(c candidate) float64 {
		x := 0.0
		for a, f := range c.fr {
			x += f * rem[a]
		}
		return x
	}
	best, bestCost, bestLeft := -1, 0.0, 0.0
	for i, c := range cands {
		cc, cl := cost(c), left(c)
		if best < 0 || before(c, cc, cl, cands[best], bestCost, bestLeft) {
			best, bestCost, bestLeft = i, cc, cl
		}
	}
	return best
}

// A group runs one shard at a time, and the ring spreads a group's shards over the
// members: when a group comes free, each member sees only its own shards of it, and the
// first to poll would start one of them, whichever account it mostly calls. Near the end
// of a backlog that leaves an account's rate unused while its shards wait behind groups
// busy with shards of an account that has plenty running. So the next shard of a group
// that has just come free is chosen for the cluster as a whole (planGroups): every member
// computes the same plan from the replicated claims and its ring, and claims only the
// planned shards the ring gives it. A group that came free more than a grace period ago
// (its planned member could not claim: at its worker bound, no share of the account)
// is open to every member again.

// planInput is what planGroups needs: the shards, their ring owners, and the groups left
// out of the plan (a cut-off task resumes first).
type planInput struct {
	shards     []fsm.ShardState
	owners     map[string]string
	ents       map[string]fsm.Enterprise
	hold       map[int]bool
	rem        map[string]float64
	capacity   map[string]float64
	now        time.Time
	maxDueWait time.Duration
	grace      time.Duration
	maxWorkers int
}

// planGroups returns, per group that came free within the grace period, the shard that
// runs next: one group at a time, the due shard whose accounts the cluster's running
// shards (every live claim) are least busy on (pickNext), skipping shards whose ring
// owner already runs maxWorkers shards.
func planGroups(in planInput) map[int]string {
	live := map[int]bool{}
	since := map[int]time.Time{}
	running := map[string]int{}
	load := accountLoad{}
	for _, sh := range in.shards {
		if sh.LiveClaim(in.now) {
			live[sh.Group] = true
			running[sh.Owner]++
			load.add(accountFractions(sh, in.ents))
		}
		// The group came free when its last shard was released or finished, or when a
		// shard of it fell due.
		t := sh.Checkpoint.UpdatedAt
		if due(sh, in.now) && sh.Checkpoint.NextRunAt.After(t) {
			t = sh.Checkpoint.NextRunAt
		}
		if t.After(since[sh.Group]) {
			since[sh.Group] = t
		}
	}
	var free []fsm.ShardState
	for _, sh := range in.shards {
		g := sh.Group
		if !due(sh, in.now) || live[g] || in.hold[g] || in.owners[sh.ID] == "" || in.now.Sub(since[g]) >= in.grace {
			continue
		}
		free = append(free, sh)
	}
	cands := newCandidates(free, in.ents, in.now, in.maxDueWait)
	plan := map[int]string{}
	for len(cands) > 0 {
		i := pickNext(cands, load, in.rem, in.capacity)
		c := cands[i]
		owner := in.owners[c.sh.ID]
		if running[owner] >= in.maxWorkers {
			cands = slices.Delete(cands, i, i+1)
			continue
		}
		plan[c.sh.Group] = c.sh.ID
		running[owner]++
		load.add(c.fr)
		cands = slices.DeleteFunc(cands, func(o candidate) bool { return o.sh.Group == c.sh.Group })
	}
	return plan
}

func before(a candidate, ac, al float64, b candidate, bc, bl float64) bool {
	if a.first != b.first {
		return a.first
	}
	if !a.first && ac != bc {
		return ac < bc
	}
	if !a.first && al != bl {
		return al > bl
	}
	if !a.sh.Checkpoint.NextRunAt.Equal(b.sh.Checkpoint.NextRunAt) {
		return a.sh.Checkpoint.NextRunAt.Before(b.sh.Checkpoint.NextRunAt)
	}
	return strings.Compare(a.sh.ID, b.sh.ID) < 0
}

// queryCapacity is, per account, the batch queries per second its quota allows.
func queryCapacity(accts map[string]fsm.Account) map[string]float64 {
	out := map[string]float64{}
	for id, a := range accts {
		if a.RatePerSec > 0 {
			out[id] = a.RatePerSec / float64(carrier.CallsPerQuery(a.Carrier))
		}
	}
	return out
}

// remainingWork is, per account, the cards of the due shards (all owners) divided by the
// cards per second the account's quota allows.
func remainingWork(shards []fsm.ShardState, accts map[string]fsm.Account, now time.Time) map[string]float64 {
	rem := map[string]float64{}
	for _, sh := range shards {
		if !due(sh, now) {
			continue
		}
		for _, c := range sh.Accounts {
			rem[c.Account] += float64(c.Cards)
		}
	}
	for a, n := range rem {
		acct, ok := accts[a]
		if !ok || acct.RatePerSec <= 0 {
			delete(rem, a)
			continue
		}
		perSec := acct.RatePerSec * float64(max(acct.BatchSize, 1)) / float64(carrier.CallsPerQuery(acct.Carrier))
		rem[a] = n / perSec
	}
	return rem
}
