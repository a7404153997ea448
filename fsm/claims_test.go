package fsm

import (
	"testing"
	"time"
)

// twoShardGroup sets up one enterprise whose 4 cards fill two shards (size 2) of one
// group and returns the shard ids.
func twoShardGroup(h *harness) (string, string) {
	h.t.Helper()
	h.setupCatalog("e1")
	h.importRange("e1", 0, 4, 8, 2)
	g := GroupOf("e1", 8)
	return ShardID(g, 0), ShardID(g, 1)
}

func TestClaimRules(t *testing.T) {
	const lease = 30 * time.Second
	tests := []struct {
		name string
		run  func(h *harness, a, b string)
	}{
		{"grant bumps epoch", func(h *harness, a, _ string) {
			r := h.ok(Claim{Shard: a, Node: "n1", Epoch: 0, Lease: lease})
			s := h.shard(a)
			if r.Epoch != 1 || s.Epoch != 1 || s.Owner != "n1" || !s.LeaseUntil.Equal(h.now.Add(lease)) {
				t.Fatalf("after grant: %+v %+v", r, s)
			}
		}},
		{"stale epoch", func(h *harness, a, _ string) {
			h.ok(Claim{Shard: a, Node: "n1", Epoch: 0, Lease: lease})
			h.ok(Release{Shard: a, Node: "n1", Epoch: 1})
			h.fail(Claim{Shard: a, Node: "n2", Epoch: 0, Lease: lease}, ErrStaleEpoch)
			h.ok(Claim{Shard: a, Node: "n2", Epoch: 1, Lease: lease})
		}},
		{"unknown shard", func(h *harness, _, _ string) {
			h.fail(Claim{Shard: "g7-99", Node: "n1", Lease: lease}, ErrNotFound)
		}},
		{"bad lease", func(h *harness, a, _ string) {
			h.fail(Claim{Shard: a, Node: "n1", Lease: 0}, ErrInvalid)
			h.fail(Claim{Shard: a, Node: "n1", Lease: 48 * time.Hour}, ErrInvalid)
		}},
		{"live claim elsewhere", func(h *harness, a, _ string) {
			h.ok(Claim{Shard: a, Node: "n1", Epoch: 0, Lease: lease})
			h.advance(lease - time.Millisecond)
			h.fail(Claim{Shard: a, Node: "n2", Epoch: 1, Lease: lease}, ErrClaimedElsewhere)
		}},
		{"lease expiry lets another node claim", func(h *harness, a, _ string) {
			h.ok(Claim{Shard: a, Node: "n1", Epoch: 0, Lease: lease})
			h.advance(lease)
			r := h.ok(Claim{Shard: a, Node: "n2", Epoch: 1, Lease: lease})
			if s := h.shard(a); r.Epoch != 2 || s.Owner != "n2" {
				t.Fatalf("takeover: %+v", s)
			}
			if c, _ := h.f.Counts(); c.Claims != 1 {
				t.Fatalf("claims index: %d", c.Claims)
			}
		}},
		{"claim starts a task when asked", func(h *harness, a, _ string) {
			r := h.ok(Claim{Shard: a, Node: "n1", Epoch: 0, Lease: lease, StartTask: true, DepVersion: 7})
			s := h.shard(a)
			if r.TaskID != 1 || s.Checkpoint.TaskID != 1 || s.Checkpoint.State != StateRunning || s.Checkpoint.DepVersion != 7 || s.Checkpoint.Cursor != "" {
				t.Fatalf("claim with start: %+v %+v", r, s.Checkpoint)
			}
			// An unfinished task is continued, not restarted.
			h.ok(Flush{Shard: a, Node: "n1", Epoch: 1, TaskID: 1, Cursor: firstCard(t, h, a), Lease: lease})
			h.ok(Release{Shard: a, Node: "n1", Epoch: 1})
			r = h.ok(Claim{Shard: a, Node: "n2", Epoch: 1, Lease: lease, StartTask: true, DepVersion: 8})
			s = h.shard(a)
			if r.TaskID != 1 || s.Checkpoint.Cursor == "" || s.Checkpoint.DepVersion != 7 {
				t.Fatalf("claim with start restarted an unfinished task: %+v", s.Checkpoint)
			}
		}},
		{"same node reclaims", func(h *harness, a, _ string) {
			h.ok(Claim{Shard: a, Node: "n1", Epoch: 0, Lease: lease})
			if r := h.ok(Claim{Shard: a, Node: "n1", Epoch: 1, Lease: lease}); r.Epoch != 2 {
				t.Fatalf("reclaim epoch %d", r.Epoch)
			}
		}},
		{"group serial", func(h *harness, a, b string) {
			h.ok(Claim{Shard: a, Node: "n1", Epoch: 0, Lease: lease})
			h.fail(Claim{Shard: b, Node: "n2", Epoch: 0, Lease: lease}, ErrGroupBusy)
			h.fail(Claim{Shard: b, Node: "n1", Epoch: 0, Lease: lease}, ErrGroupBusy)
			h.ok(Release{Shard: a, Node: "n1", Epoch: 1})
			h.ok(Claim{Shard: b, Node: "n2", Epoch: 0, Lease: lease})
		}},
		{"expired group claim is fenced", func(h *harness, a, b string) {
			ep, task := h.claimTask(a, "n1")
			h.advance(lease + time.Second)
			h.ok(Claim{Shard: b, Node: "n2", Epoch: 0, Lease: lease})
			s := h.shard(a)
			if s.Owner != "" || s.Epoch != ep+1 || s.Checkpoint.Reason == "" {
				t.Fatalf("expired claim not fenced: %+v", s)
			}
			h.fail(Flush{Shard: a, Node: "n1", Epoch: ep, TaskID: task, Lease: lease}, ErrStaleEpoch)
		}},
		{"maintenance blocks claims and tasks", func(h *harness, a, _ string) {
			h.ok(Claim{Shard: a, Node: "n1", Epoch: 0, Lease: lease})
			h.ok(SetMaintenance{On: true, Reason: "upgrade"})
			if on, why, _ := h.f.Maintenance(); !on || why != "upgrade" {
				t.Fatalf("maintenance %v %q", on, why)
			}
			h.fail(Claim{Shard: a, Node: "n1", Epoch: 1, Lease: lease}, ErrMaintenance)
			h.fail(StartTask{Shard: a, Node: "n1", Epoch: 1}, ErrMaintenance)
			h.ok(SetMaintenance{On: false})
			h.ok(StartTask{Shard: a, Node: "n1", Epoch: 1})
		}},
		{"start task needs owner", func(h *harness, a, _ string) {
			h.ok(Claim{Shard: a, Node: "n1", Epoch: 0, Lease: lease})
			h.fail(StartTask{Shard: a, Node: "n2", Epoch: 1}, ErrNotOwner)
			r := h.ok(StartTask{Shard: a, Node: "n1", Epoch: 1, DepVersion: 42})
			s := h.shard(a)
			if r.TaskID != 1 || s.Checkpoint.State != StateRunning || s.Checkpoint.DepVersion != 42 || !s.Checkpoint.StartedAt.Equal(h.now) {
				t.Fatalf("task: %+v %+v", r, s.Checkpoint)
			}
		}},
		{"release needs owner", func(h *harness, a, _ string) {
			h.ok(Claim{Shard: a, Node: "n1", Epoch: 0, Lease: lease})
			h.fail(Release{Shard: a, Node: "n2", Epoch: 1}, ErrNotOwner)
			next := h.now.Add(time.Hour)
			h.ok(Release{Shard: a, Node: "n1", Epoch: 1, Reason: "carrier backoff", NextRunAt: next})
			s := h.shard(a)
			if s.Owner != "" || s.Epoch != 1 || s.Checkpoint.Reason != "carrier backoff" || !s.Checkpoint.NextRunAt.Equal(next) {
				t.Fatalf("after release: %+v", s)
			}
			h.fail(Release{Shard: a, Node: "n1", Epoch: 1}, ErrNotOwner)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, nil)
			a, b := twoShardGroup(h)
			tc.run(h, a, b)
		})
	}
}

// TestStaleEpochRejected checks every epoch-guarded command against an old epoch.
func TestStaleEpochRejected(t *testing.T) {
	h := newHarness(t, nil)
	a, _ := twoShardGroup(h)
	ep, task := h.claimTask(a, "n1")
	h.ok(Release{Shard: a, Node: "n1", Epoch: ep})
	ep2, task2 := h.claimTask(a, "n2")
	if ep2 != ep+1 || task2 != task+1 {
		t.Fatalf("epoch %d task %d", ep2, task2)
	}
	stale := []any{
		Claim{Shard: a, Node: "n1", Epoch: ep, Lease: time.Second},
		StartTask{Shard: a, Node: "n1", Epoch: ep},
		Flush{Shard: a, Node: "n1", Epoch: ep, TaskID: task2, Cursor: iccid(1)},
		Release{Shard: a, Node: "n1", Epoch: ep},
		// Right epoch, old task: also stale.
		Flush{Shard: a, Node: "n2", Epoch: ep2, TaskID: task},
	}
	for _, p := range stale {
		h.fail(p, ErrStaleEpoch)
	}
	if s := h.shard(a); s.Owner != "n2" || s.Epoch != ep2 || s.Checkpoint.TaskID != task2 || s.Checkpoint.Cursor != "" {
		t.Fatalf("stale commands changed the shard: %+v", s)
	}
}

func TestRevokeNodeFencesOwner(t *testing.T) {
	h := newHarness(t, nil)
	ents := []string{"e1", "e2", "e3"}
	h.setupCatalog(ents...)
	for i, e := range ents {
		h.importRange(e, i*10, i*10+2, 64, 500)
	}
	var shards []string
	for _, e := range ents {
		shards = append(shards, ShardID(GroupOf(e, 64), 0))
	}
	type held struct{ epoch, task uint64 }
	n1 := map[string]held{}
	for _, s := range shards[:2] {
		ep, task := h.claimTask(s, "n1")
		n1[s] = held{ep, task}
	}
	h.claimTask(shards[2], "n2")
	h.advance(time.Minute) // n1's leases have expired: revoke covers those too.

	if r := h.ok(RevokeNode{Node: "n1", Reason: "dead"}); r.Updated != 2 {
		t.Fatalf("revoked %d", r.Updated)
	}
	for s, hd := range n1 {
		st := h.shard(s)
		if st.Owner != "" || st.Epoch != hd.epoch+1 || st.Checkpoint.Reason != "dead" || st.Checkpoint.State != StateRunning {
			t.Fatalf("%s after revoke: %+v", s, st)
		}
		h.fail(Flush{Shard: s, Node: "n1", Epoch: hd.epoch, TaskID: hd.task, Cursor: iccid(1)}, ErrStaleEpoch)
		h.fail(Flush{Shard: s, Node: "n1", Epoch: hd.epoch + 1, TaskID: hd.task, Cursor: iccid(1)}, ErrNotOwner)
	}
	if owned, _ := h.f.Shards(ShardFilter{Owner: "n2"}); len(owned) != 1 {
		t.Fatalf("n2's claim touched: %+v", owned)
	}
	if c, _ := h.f.Counts(); c.Claims != 1 {
		t.Fatalf("claims %d", c.Claims)
	}
	if r := h.ok(RevokeNode{Node: "n1"}); r.Updated != 0 {
		t.Fatalf("second revoke %d", r.Updated)
	}
	// The new owner resumes the old task where it stopped.
	s := shards[0]
	st := h.shard(s)
	r := h.ok(Claim{Shard: s, Node: "n3", Epoch: st.Epoch, Lease: time.Minute})
	if r.TaskID != n1[s].task {
		t.Fatalf("task %d after takeover", r.TaskID)
	}
	h.ok(Flush{Shard: s, Node: "n3", Epoch: r.Epoch, TaskID: r.TaskID, Cursor: iccid(0)})

	// n1 stays marked revoked until it is granted a claim again; n2 never was.
	if _, rev, err := h.f.Revoked("n1"); err != nil || !rev {
		t.Fatalf("n1 revoked = %v, %v", rev, err)
	}
	if _, rev, _ := h.f.Revoked("n2"); rev {
		t.Fatal("n2 marked revoked")
	}
	st = h.shard(shards[1])
	h.ok(Claim{Shard: shards[1], Node: "n1", Epoch: st.Epoch, Lease: time.Minute})
	if _, rev, _ := h.f.Revoked("n1"); rev {
		t.Fatal("n1 still marked revoked after a granted claim")
	}
}

func TestForceReleaseAndSetCheckpoint(t *testing.T) {
	h := newHarness(t, nil)
	a, b := twoShardGroup(h)
	ep, task := h.claimTask(a, "n1")
	h.fail(ForceRelease{Shard: "g9-9"}, ErrNotFound)
	if r := h.ok(ForceRelease{Shard: a, Reason: "operator"}); r.Epoch != ep+1 {
		t.Fatalf("force release epoch %d", r.Epoch)
	}
	h.fail(Flush{Shard: a, Node: "n1", Epoch: ep, TaskID: task}, ErrStaleEpoch)
	// The group is free again.
	h.ok(Claim{Shard: b, Node: "n2", Epoch: 0, Lease: time.Minute})

	// SetCheckpoint on a claimed shard fences its owner.
	sb := h.shard(b)
	cursor := iccid(2)
	next := h.now.Add(time.Hour)
	r := h.ok(SetCheckpoint{Shard: b, Cursor: &cursor, NextRunAt: &next})
	after := h.shard(b)
	if r.Epoch != sb.Epoch+1 || after.Owner != "" || after.Checkpoint.Cursor != cursor || !after.Checkpoint.NextRunAt.Equal(next) {
		t.Fatalf("set checkpoint: %+v", after)
	}
	bad := "zz"
	h.fail(SetCheckpoint{Shard: b, Cursor: &bad}, ErrInvalid)
	// NewTask resets the task on an unclaimed shard without bumping the epoch.
	r = h.ok(SetCheckpoint{Shard: b, NewTask: true})
	after = h.shard(b)
	if r.Epoch != sb.Epoch+1 || after.Checkpoint.State != StateIdle || after.Checkpoint.Cursor != "" {
		t.Fatalf("new task: %+v", after)
	}
}

func firstCard(t *testing.T, h *harness, shard string) string {
	t.Helper()
	cards, err := h.f.ShardCards(shard, "", 1)
	if err != nil || len(cards) == 0 {
		t.Fatalf("shard %s cards: %v", shard, err)
	}
	return cards[0].ICCID
}
