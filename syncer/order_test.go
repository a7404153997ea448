package syncer

import (
	"maps"
	"slices"
	"testing"
	"time"

	"cardsync/fsm"
)

// TestClaimOrderSpreadsAccounts: among the due shards a node may claim, it takes first an
// unfinished task and a shard overdue past MaxDueWait (oldest first), then, one at a
// time, the shard whose carrier accounts it is least busy on, so its running shards
// keep every account's quota busy instead of queuing on one account.
func TestClaimOrderSpreadsAccounts(t *testing.T) {
	now := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	shard := func(id string, age time.Duration, state string, accts map[string]int) fsm.ShardState {
		n := 0
		var counts []fsm.AccountCards
		for _, a := range slices.Sorted(maps.Keys(accts)) {
			counts = append(counts, fsm.AccountCards{Account: a, Cards: accts[a]})
			n += accts[a]
		}
		return fsm.ShardState{ID: id, Cards: n, Accounts: counts, Enterprises: []string{"e1"},
			Checkpoint: fsm.Checkpoint{State: state, NextRunAt: now.Add(-age)}}
	}
	cmcc := map[string]int{"cmcc": 500}
	cucc := map[string]int{"cucc": 500}
	ctcc := map[string]int{"ctcc": 500}
	tests := []struct {
		name    string
		running []fsm.ShardState
		due     []fsm.ShardState
		rem     map[string]float64
		want    []string
	}{
		{
			name: "one shard per account before a second on any",
			due: []fsm.ShardState{
				shard("a1", 3*time.Minute, fsm.StateIdle, cmcc), shard("a2", 2*time.Minute, fsm.StateIdle, cmcc),
				shard("a3", time.Minute, fsm.StateIdle, cmcc), shard("b1", time.Minute, fsm.StateIdle, cucc),
				shard("c1", 0, fsm.StateIdle, ctcc),
			},
			want: []string{"a1", "b1", "c1", "a2", "a3"},
		},
		{
			name:    "the account already running here waits",
			running: []fsm.ShardState{shard("r", 0, fsm.StateRunning, cmcc)},
			due: []fsm.ShardState{
				shard("a1", time.Hour, fsm.StateIdle, cmcc), shard("b1", 0, fsm.StateIdle, cucc),
			},
			want: []string{"b1", "a1"},
		},
		{
			name:    "an unfinished task and an overdue shard go first, oldest first",
			running: []fsm.ShardState{shard("r", 0, fsm.StateRunning, cmcc)},
			due: []fsm.ShardState{
				shard("b1", 0, fsm.StateIdle, cucc), shard("a1", time.Minute, fsm.StateRunning, cmcc),
				shard("a2", 2*time.Hour, fsm.StateIdle, cmcc),
			},
			want: []string{"a2", "a1", "b1"},
		},
		{
			name:    "mixed shards count by their fraction of cards",
			running: []fsm.ShardState{shard("r", 0, fsm.StateRunning, map[string]int{"cmcc": 400, "cucc": 100})},
			due: []fsm.ShardState{
				shard("m1", time.Minute, fsm.StateIdle, map[string]int{"cmcc": 250, "cucc": 250}),
				shard("c1", 0, fsm.StateIdle, ctcc),
				shard("b1", 0, fsm.StateIdle, cucc),
			},
			// loads: cmcc .8, cucc .2 -> c1 (0), b1 (.2), m1 (.5) then m1 after b1 adds cucc.
			want: []string{"c1", "b1", "m1"},
		},
		{
			name: "past one shard each, the account with the most work left goes first",
			due: []fsm.ShardState{
				shard("a1", 3*time.Minute, fsm.StateIdle, cmcc), shard("a2", 3*time.Minute, fsm.StateIdle, cmcc),
				shard("b1", time.Minute, fsm.StateIdle, cucc), shard("b2", time.Minute, fsm.StateIdle, cucc),
			},
			rem:  map[string]float64{"cmcc": 10, "cucc": 40},
			want: []string{"b1", "a1", "b2", "a2"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			load := accountLoad{}
			for _, sh := range tt.running {
				load.add(accountFractions(sh, nil))
			}
			cands := newCandidates(tt.due, nil, now, time.Hour)
			var got []string
			for len(cands) > 0 {
				c := cands[pickNext(cands, load, tt.rem, nil)]
				got = append(got, c.sh.ID)
				load.add(c.fr)
				cands = slices.DeleteFunc(cands, func(o candidate) bool { return o.sh.ID == c.sh.ID })
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("order %v, want %v", got, tt.want)
			}
		})
	}
}

// TestAccountFractionsWithoutCounts: a shard last written without per-account counts
// spreads its cards evenly over its enterprises' accounts.
func TestAccountFractionsWithoutCounts(t *testing.T) {
	ents := map[string]fsm.Enterprise{
		"e1": {ID: "e1", Accounts: map[string]string{"onelink": "cmcc", "unicom": "cucc"}},
		"e2": {ID: "e2", Accounts: map[string]string{"onelink": "cmcc"}},
	}
	got := accountFractions(fsm.ShardState{Cards: 10, Enterprises: []string{"e1", "e2"}}, ents)
	if got["cmcc"] != 0.75 || got["cucc"] != 0.25 || len(got) != 2 {
		t.Fatalf("fractions %v", got)
	}
}

// TestPlanGroups: the next shard of a group that has just come free is chosen for the
// whole cluster, from every member's due shards of the group, so that the running
// shards keep every account busy; a group left free past the grace period, held for a
// cut-off task or running a shard is not planned, and a member at its worker bound is
// planned no more shards.
func TestPlanGroups(t *testing.T) {
	now := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	shard := func(id string, group int, acct string, freed time.Duration) fsm.ShardState {
		return fsm.ShardState{ID: id, Group: group, Cards: 500, Accounts: []fsm.AccountCards{{Account: acct, Cards: 500}},
			Enterprises: []string{"e1"}, Checkpoint: fsm.Checkpoint{State: fsm.StateIdle, NextRunAt: now.Add(-time.Hour), UpdatedAt: now.Add(-freed)}}
	}
	claimed := func(sh fsm.ShardState, owner string) fsm.ShardState {
		sh.Owner, sh.LeaseUntil = owner, now.Add(time.Minute)
		sh.Checkpoint.State = fsm.StateRunning
		return sh
	}
	tests := []struct {
		name       string
		shards     []fsm.ShardState
		owners     map[string]string
		hold       map[int]bool
		maxWorkers int
		want       map[int]string
	}{
		{
			name: "the account with nothing running goes first, whichever member owns the shard",
			shards: []fsm.ShardState{
				claimed(shard("r1", 1, "cmcc", 0), "a"), claimed(shard("r2", 2, "cmcc", 0), "b"),
				shard("g3-a", 3, "cmcc", time.Second), shard("g3-b", 3, "cucc", time.Second),
				shard("g4-a", 4, "cmcc", time.Second), shard("g4-b", 4, "ctcc", time.Second),
			},
			owners: map[string]string{"g3-a": "a", "g3-b": "b", "g4-a": "a", "g4-b": "b"},
			want:   map[int]string{3: "g3-b", 4: "g4-b"},
		},
		{
			name: "free past the grace period, held or running: not planned",
			shards: []fsm.ShardState{
				claimed(shard("r1", 1, "cmcc", 0), "a"), shard("g1-x", 1, "cucc", time.Second),
				shard("g2-a", 2, "cucc", time.Minute),
				shard("g3-a", 3, "cucc", time.Second),
				shard("g4-a", 4, "cucc", time.Second),
			},
			owners: map[string]string{"g1-x": "a", "g2-a": "a", "g3-a": "a", "g4-a": "b"},
			hold:   map[int]bool{3: true},
			want:   map[int]string{4: "g4-a"},
		},
		{
			name: "a member at its worker bound gets no more",
			shards: []fsm.ShardState{
				claimed(shard("r1", 1, "cmcc", 0), "a"),
				shard("g2-a", 2, "cucc", time.Second), shard("g2-b", 2, "cmcc", time.Second),
			},
			owners:     map[string]string{"g2-a": "a", "g2-b": "b"},
			maxWorkers: 1,
			want:       map[int]string{2: "g2-b"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mw := tt.maxWorkers
			if mw == 0 {
				mw = 16
			}
			got := planGroups(planInput{shards: tt.shards, owners: tt.owners, hold: tt.hold, now: now,
				maxDueWait: 24 * time.Hour, grace: 3 * time.Second, maxWorkers: mw})
			if !maps.Equal(got, tt.want) {
				t.Fatalf("plan %v, want %v", got, tt.want)
			}
		})
	}
}

// TestTakenOver: a task found running at the claim is taken over (its queries urgent
// until its first progress) only when it made progress and flushed within the last lease.
func TestTakenOver(t *testing.T) {
	now := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	lease := 30 * time.Second
	for _, tc := range []struct {
		name string
		ck   fsm.Checkpoint
		want bool
	}{
		{"cut off mid-task", fsm.Checkpoint{State: fsm.StateRunning, Cursor: "8986001", UpdatedAt: now.Add(-2 * time.Second)}, true},
		{"progress counted, cursor not moved yet", fsm.Checkpoint{State: fsm.StateRunning, Skipped: 3, UpdatedAt: now.Add(-time.Second)}, true},
		{"started, nothing done", fsm.Checkpoint{State: fsm.StateRunning, UpdatedAt: now.Add(-time.Second)}, false},
		{"last flush older than the lease", fsm.Checkpoint{State: fsm.StateRunning, Cursor: "8986001", UpdatedAt: now.Add(-lease - time.Second)}, false},
		{"task finished", fsm.Checkpoint{State: fsm.StateDone, Cursor: "8986001", UpdatedAt: now.Add(-time.Second)}, false},
	} {
		if got := takenOver(tc.ck, now, lease); got != tc.want {
			t.Errorf("%s: takenOver = %v, want %v", tc.name, got, tc.want)
		}
	}
}
