// Package syncer implements the sync method of patent CN 115543585 A on a cardsync node:
// timed polling of the shards the hash ring gives this node, claiming them through the
// replicated state machine, the serial per-shard worker with validity and dependency
// checks, checkpoint batching, carrier-error handling and cluster-wide quota shares. It
// never talks to Raft directly: it gets a proposer and a read view.
package syncer
