// Package node is one cardsync cluster member: it owns Raft (raft-boltdb/v2 log and stable
// store, file snapshots, TCP transport), bootstraps a cluster (-dev or -bootstrap-expect),
// reconciles the Raft voter set with gossip membership, forwards proposals from followers
// to the leader, keeps the hash ring of live, caught-up members, and serves the HTTP API
// and dashboard. It holds no sync logic: the syncer gets a proposer and a read view from it.
package node
