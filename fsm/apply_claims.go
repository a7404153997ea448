package fsm

import (
	"encoding/binary"
	"fmt"
)

// checkEpoch is the fencing rule shared by the epoch-guarded commands.
func checkEpoch(id string, s *shardRec, epoch uint64) error {
	if s.Epoch != epoch {
		return reject(ErrStaleEpoch, "shard %s is at epoch %d, command has %d", id, s.Epoch, epoch)
	}
	return nil
}

func checkOwner(id string, s *shardRec, node string) error {
	if s.Owner != node {
		if s.Owner == "" {
			return reject(ErrNotOwner, "shard %s has no owner, not %s", id, node)
		}
		return reject(ErrNotOwner, "shard %s is owned by %s, not %s", id, s.Owner, node)
	}
	return nil
}

func (a *applier) notInMaintenance() error {
	m, err := a.maintenance()
	if err != nil {
		return err
	}
	if m.On {
		return reject(ErrMaintenance, "cluster in maintenance: %s", m.Reason)
	}
	return nil
}

// claim grants a shard's claim when the processing condition holds: not in maintenance,
// current epoch, no live claim by another node, no other live claim in the group.
func (a *applier) claim(p *Claim) (*Result, error) {
	if err := a.notInMaintenance(); err != nil {
		return nil, err
	}
	if err := checkID("node", p.Node); err != nil {
		return nil, err
	}
	if err := checkLease(p.Lease, false); err != nil {
		return nil, err
	}
	s, err := a.shard(p.Shard)
	if err != nil {
		return nil, err
	}
	if err := checkEpoch(p.Shard, s, p.Epoch); err != nil {
		return nil, err
	}
	if s.Owner != "" && s.Owner != p.Node && s.LeaseUntil > a.now {
		return nil, reject(ErrClaimedElsewhere, "shard %s is held by %s until %s", p.Shard, s.Owner, fromNanos(s.LeaseUntil).Format("15:04:05.000"))
	}
	gr, err := a.group(s.Group)
	if err != nil {
		return nil, err
	}
	if gr.Claimed != "" && gr.Claimed != p.Shard {
		other, err := a.shard(gr.Claimed)
		if err != nil {
			return nil, fmt.Errorf("group %d index names shard %s: %w", s.Group, gr.Claimed, err)
		}
		if other.Owner != "" && other.LeaseUntil > a.now {
			return nil, reject(ErrGroupBusy, "group %d is running shard %s on %s", s.Group, gr.Claimed, other.Owner)
		}
		// The group's other claim has expired: fence it so its owner cannot come back
		// and run alongside the new claim.
		if err := a.fence(gr.Claimed, other, "lease expired"); err != nil {
			return nil, err
		}
		if err := a.putShard(gr.Claimed, other); err != nil {
			return nil, err
		}
	}
	if err := a.clearOwner(p.Shard, s); err != nil {
		return nil, err
	}
	s.Epoch++
	s.Owner = p.Node
	s.LeaseUntil = addNanos(a.now, p.Lease)
	s.Reason = ""
	if p.StartTask && s.State != stRunning {
		beginTask(s, p.DepVersion, a.now)
	}
	if err := a.claims.Put(joinKey(p.Node, p.Shard), nil); err != nil {
		return nil, err
	}
	// A granted claim takes the node back after a revocation.
	if err := a.meta.Delete(revokedKey(p.Node)); err != nil {
		return nil, err
	}
	if err := a.putGroup(s.Group, &groupRec{OpenN: gr.OpenN, Claimed: p.Shard}); err != nil {
		return nil, err
	}
	if err := a.putShard(p.Shard, s); err != nil {
		return nil, err
	}
	return &Result{Epoch: s.Epoch, TaskID: s.TaskID, Message: fmt.Sprintf("shard %s claimed by %s", p.Shard, p.Node)}, nil
}

// startTask begins a new task on a shard the proposer owns.
func (a *applier) startTask(p *StartTask) (*Result, error) {
	if err := a.notInMaintenance(); err != nil {
		return nil, err
	}
	s, err := a.shard(p.Shard)
	if err != nil {
		return nil, err
	}
	if err := checkEpoch(p.Shard, s, p.Epoch); err != nil {
		return nil, err
	}
	if err := checkOwner(p.Shard, s, p.Node); err != nil {
		return nil, err
	}
	beginTask(s, p.DepVersion, a.now)
	if err := a.putShard(p.Shard, s); err != nil {
		return nil, err
	}
	return &Result{Epoch: s.Epoch, TaskID: s.TaskID, Message: fmt.Sprintf("shard %s task %d started", p.Shard, s.TaskID)}, nil
}

// beginTask starts a new task on the shard record.
func beginTask(s *shardRec, depVersion uint64, now int64) {
	s.TaskID++
	s.State = stRunning
	s.Cursor = ""
	s.Synced, s.Skipped, s.Failed = 0, 0, 0
	s.DepVersion = depVersion
	s.StartedAt, s.UpdatedAt = now, now
	s.Reason = ""
}

// release gives up the proposer's claim; the epoch stays (the next claim bumps it).
func (a *applier) release(p *Release) (*Result, error) {
	if err := checkText("reason", p.Reason); err != nil {
		return nil, err
	}
	s, err := a.shard(p.Shard)
	if err != nil {
		return nil, err
	}
	if err := checkEpoch(p.Shard, s, p.Epoch); err != nil {
		return nil, err
	}
	if err := checkOwner(p.Shard, s, p.Node); err != nil {
		return nil, err
	}
	if err := a.clearOwner(p.Shard, s); err != nil {
		return nil, err
	}
	s.Reason = p.Reason
	if !p.NextRunAt.IsZero() {
		s.NextRunAt = toNanos(p.NextRunAt)
	}
	if err := a.putShard(p.Shard, s); err != nil {
		return nil, err
	}
	return &Result{Epoch: s.Epoch, TaskID: s.TaskID, Message: fmt.Sprintf("shard %s released by %s", p.Shard, p.Node)}, nil
}

// revokeNode fences every shard whose claim (live or expired) is held by the node.
func (a *applier) revokeNode(p *RevokeNode) (*Result, error) {
	if err := checkID("node", p.Node); err != nil {
		return nil, err
	}
	if err := checkText("reason", p.Reason); err != nil {
		return nil, err
	}
	reason := p.Reason
	if reason == "" {
		reason = "node " + p.Node + " revoked"
	}
	prefix := prefixKey(p.Node)
	var ids []string
	c := a.claims.Cursor()
	for k, _ := c.Seek(prefix); k != nil && hasPrefix(k, prefix); k, _ = c.Next() {
		ids = append(ids, string(k[len(prefix):]))
	}
	for _, id := range ids {
		s, err := a.shard(id)
		if err != nil {
			return nil, fmt.Errorf("claim index names shard %s: %w", id, err)
		}
		if err := a.fence(id, s, reason); err != nil {
			return nil, err
		}
		if err := a.putShard(id, s); err != nil {
			return nil, err
		}
	}
	// Mark the node revoked until the leader grants it a claim again: the node itself
	// may still believe it is a member (a one-way partition lets it hear the leader
	// while the others have declared it dead), and the mark tells it otherwise.
	var at [8]byte
	binary.BigEndian.PutUint64(at[:], uint64(a.now))
	if err := a.meta.Put(revokedKey(p.Node), a.keep(at[:])); err != nil {
		return nil, err
	}
	return &Result{Updated: len(ids), Message: fmt.Sprintf("%d claims of %s revoked", len(ids), p.Node)}, nil
}

// forceRelease fences a shard whatever its owner.
func (a *applier) forceRelease(p *ForceRelease) (*Result, error) {
	if err := checkText("reason", p.Reason); err != nil {
		return nil, err
	}
	s, err := a.shard(p.Shard)
	if err != nil {
		return nil, err
	}
	reason := p.Reason
	if reason == "" {
		reason = "forced release"
	}
	if err := a.fence(p.Shard, s, reason); err != nil {
		return nil, err
	}
	if err := a.putShard(p.Shard, s); err != nil {
		return nil, err
	}
	return &Result{Epoch: s.Epoch, TaskID: s.TaskID, Message: fmt.Sprintf("shard %s released by force", p.Shard)}, nil
}

// setCheckpoint edits a shard's checkpoint; a claimed shard is fenced first.
func (a *applier) setCheckpoint(p *SetCheckpoint) (*Result, error) {
	s, err := a.shard(p.Shard)
	if err != nil {
		return nil, err
	}
	var cursor string
	if p.Cursor != nil {
		cursor = *p.Cursor
		if cursor != "" {
			n, ok := normICCID(cursor)
			if !ok {
				return nil, reject(ErrInvalid, "cursor %q is not an ICCID", cursor)
			}
			cursor = n
		}
	}
	if s.Owner != "" {
		if err := a.fence(p.Shard, s, "checkpoint set by operator"); err != nil {
			return nil, err
		}
	}
	if p.NewTask {
		s.State = stIdle
		s.Cursor = ""
		s.Synced, s.Skipped, s.Failed = 0, 0, 0
	}
	if p.Cursor != nil {
		s.Cursor = cursor
	}
	if p.NextRunAt != nil {
		s.NextRunAt = toNanos(*p.NextRunAt)
	}
	s.UpdatedAt = a.now
	if err := a.putShard(p.Shard, s); err != nil {
		return nil, err
	}
	return &Result{Epoch: s.Epoch, TaskID: s.TaskID, Message: fmt.Sprintf("shard %s checkpoint set", p.Shard)}, nil
}
