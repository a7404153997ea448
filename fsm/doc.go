// Package fsm is cardsync's replicated database: the deterministic state machine behind
// Raft, stored in one bbolt file. It defines the commands (a small binary envelope with a
// leader-stamped time and a payload), applies them in batches of log entries inside one
// bbolt transaction that also records the applied index, takes snapshots as hot copies of
// the file and restores them by replacing it, and answers read-only queries about
// accounts, enterprises, cards, shards, claims, checkpoints and the change feed.
//
// The package knows nothing about networks, clocks or carriers: "now" is always the
// stamp carried by the command, so every replica that applies the same log ends in the
// same bytes (see Digest).
package fsm
