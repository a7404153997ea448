package testcluster

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"cardsync/fsm"
	"cardsync/testcluster/check"
)

// started is called once a member's agent runs: with a fault switchboard, every proposal
// the member makes is recorded from then on.
func (c *Cluster) started(m *Member) {
	if c.faults == nil {
		return
	}
	n := m.Node()
	if n == nil {
		return
	}
	name := m.Name
	f := c.faults
	// Forwarded proposals dial the leader's HTTP address.
	f.register(name, n.HTTPAddr())
	n.SetProposalObserver(func(cmd []byte, res *fsm.Result, err error, start, end time.Time) {
		op := check.NewOp(name, cmd, res, err, start, end)
		f.opsMu.Lock()
		f.ops = append(f.ops, op)
		f.opsMu.Unlock()
	})
}

// Ops returns every proposal recorded so far (clusters built with Options.Faults).
func (c *Cluster) Ops() []check.Op {
	if c.faults == nil {
		return nil
	}
	c.faults.opsMu.Lock()
	defer c.faults.opsMu.Unlock()
	return append([]check.Op(nil), c.faults.ops...)
}

// CommittedLog reads a stopped member's Raft log from its data dir, first entry to last.
func (c *Cluster) CommittedLog(m *Member) ([]*raft.Log, error) {
	if m.Up() {
		return nil, fmt.Errorf("testcluster: %s is running; stop it before reading its log", m.Name)
	}
	store, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(m.Dir, "raft.db")})
	if err != nil {
		return nil, fmt.Errorf("open %s raft log: %w", m.Name, err)
	}
	defer store.Close()
	first, err := store.FirstIndex()
	if err != nil {
		return nil, err
	}
	last, err := store.LastIndex()
	if err != nil {
		return nil, err
	}
	out := make([]*raft.Log, 0, last-first+1)
	for i := first; i <= last && i > 0; i++ {
		l := new(raft.Log)
		if err := store.GetLog(i, l); err != nil {
			return nil, fmt.Errorf("%s log %d: %w", m.Name, i, err)
		}
		out = append(out, l)
	}
	return out, nil
}

// Digests returns every running member's FSM digest and applied index.
func (c *Cluster) Digests() []check.Digest {
	var out []check.Digest
	for _, m := range c.Up() {
		if n := m.Node(); n != nil {
			if idx, sum, err := n.FSM().Digest(); err == nil {
				out = append(out, check.Digest{Node: m.Name, Index: idx, Sum: sum})
			}
		}
	}
	return out
}

// ShardViews returns every running member's shard states.
func (c *Cluster) ShardViews() map[string]map[string]check.ShardView {
	out := map[string]map[string]check.ShardView{}
	for _, m := range c.Up() {
		n := m.Node()
		if n == nil {
			continue
		}
		shards, err := n.FSM().Shards(fsm.ShardFilter{})
		if err != nil {
			continue
		}
		v := make(map[string]check.ShardView, len(shards))
		for _, s := range shards {
			v[s.ID] = check.ViewOf(s)
		}
		out[m.Name] = v
	}
	return out
}
