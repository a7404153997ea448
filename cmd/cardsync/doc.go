// Command cardsync is the single cardsync binary: the agent (a cluster node), the carrier
// simulator, and HTTP clients for operators (status, members, shards, ring, card, import,
// resync).
package main
