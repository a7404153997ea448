// Package check records what a cardsync cluster did under faults and judges it: it
// replays the committed Raft log through a fresh FSM to learn every command's outcome and
// the shard states around it, and checks the invariants that say nothing was lost and no
// work was duplicated (fencing, durability of acknowledged flushes, forward-only cursors,
// exclusive shard and group ownership at the carrier, quotas, convergence after faults,
// replica digests, and linearizability of claims and flushes with porcupine).
// See DESIGN.md.
package check
