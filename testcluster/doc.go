// Package testcluster starts N real cardsync nodes in one process (real Raft, real gossip,
// real sockets on 127.0.0.1, temporary data directories) together with the carrier
// simulator, injects faults, and waits on conditions with deadlines. Integration tests and
// benchmarks use it; production code never imports it.
package testcluster
