// Package fsm is cardsync's replicated database: the deterministic state machine behind
// Raft, stored in one bbolt file. It defines the commands (a small binary envelope with a
// leader-stamped time and a payload), applies them in batches of log entries inside one
// bbolt transaction that also records the applied index, takes snapshots as hot copies of
// the file and restores them by replacing it, and answers read-only queries about
// accounts, enterprises, cards, shards, claims, checkpoints and the change feed.
//
// Commits are not fsynced one by one: the Raft log already holds every applied entry on
// a quorum, so the file is synced in the background, and a marker beside it (the kernel
// boot id and a clean flag) lets Open tell a stopped process from a power loss, after
// which the file is moved aside and rebuilt from Raft (see Config.SyncInterval, Rebuilt).
//
// The package knows nothing about networks, clocks or carriers: "now" is always the
// stamp carried by the command, so every replica that applies the same log ends in the
// same bytes (see Digest).
package fsm
