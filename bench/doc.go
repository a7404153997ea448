// Package bench holds cardsync's benchmarks of record that need more than the product
// module: the replicated write path of a shard owner (claim by compare-and-set on the
// shard's epoch, then epoch-guarded flushes of 100 card results) measured on a 3-node
// cardsync cluster, on a 3-member embedded etcd cluster doing the same work with
// transactions, and on a single bbolt file with group commit (the disk's limit for
// fsynced batched writes). The report generator is cmd/benchreport; run.sh runs every
// benchmark of the repository and writes docs/benchmarks.md and docs/benchmarks.json.
//
// This is a separate Go module so that etcd and its dependencies never enter the
// product module's go.mod.
package bench
