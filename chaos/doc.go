// Package chaos holds cardsync's chaos test: a cluster with the carrier simulator works a
// backlog under a seeded random schedule of faults (kills, graceful stops, restarts,
// zombie pauses, partitions, one-way partitions, slow links, carrier error bursts,
// latency, outages and token expiry), then the faults stop, the cluster converges and
// every invariant of package testcluster/check is checked. It runs only when
// CARDSYNC_CHAOS_SEED is set:
//
//	for s in $(seq 1 10); do CARDSYNC_CHAOS_SEED=$s go test -run TestChaos -count=1 -v ./chaos || exit 1; done
package chaos
