// Package membership is cardsync's view of who is in the cluster.
//
// It runs hashicorp/memberlist gossip (join by seed address, failure
// detection, graceful leave, optional AES gossip encryption), carries each
// node's metadata (Raft and HTTP addresses, bootstrap expectation, readiness
// and drain flags) in a compact encoding that never exceeds memberlist's
// 512-byte limit, keeps a member table that also remembers dead and departed
// members, and publishes member events to subscribers without ever blocking
// gossip.
//
// It also owns the 2^32 consistent-hash ring of patent CN 115543585 A claims
// 2-3: nodes and task shards are both hashed onto the ring, and a shard
// belongs to the first node met clockwise (Ring.Owner). Ring.Assign adds
// bounded loads on top so that no node carries much more than its share.
//
// The package knows nothing about Raft or the replicated state.
package membership
