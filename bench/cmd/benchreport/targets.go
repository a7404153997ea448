package main

// Target is a bound on one metric of one benchmark. Benchmark is the name without the
// -GOMAXPROCS suffix; Package, when set, must match too.
type Target struct {
	Package   string  `json:"package,omitempty"`
	Benchmark string  `json:"benchmark"`
	Unit      string  `json:"unit"`
	Op        string  `json:"op"` // ">=" or "<="
	Value     float64 `json:"value"`
	Why       string  `json:"why"`
}

// MetricRef names one metric of one benchmark.
type MetricRef struct {
	Benchmark string `json:"benchmark"`
	Unit      string `json:"unit"`
}

// Comparison is a bound on the ratio of two benchmarks' metrics: Num / Den Op Value.
type Comparison struct {
	Name  string    `json:"name"`
	Num   MetricRef `json:"num"`
	Den   MetricRef `json:"den"`
	Op    string    `json:"op"`
	Value float64   `json:"value"`
	Why   string    `json:"why"`
}

// targets are cardsync's performance targets. A benchmark without a target is still
// reported; its metrics show no target and no ratio.
var targets = []Target{
	{Package: "cardsync/fsm", Benchmark: "BenchmarkApplyFlush", Unit: "cards/s", Op: ">=", Value: 100000,
		Why: "the FSM applies Raft's batches in one fsynced transaction each; bbolt does 107k records/s at 100 a transaction here"},
	{Package: "cardsync/carrier/sim", Benchmark: "BenchmarkSimulator", Unit: "calls/s", Op: ">=", Value: 5000,
		Why: "the simulator must outrun every account quota of a dev or test cluster"},
	{Package: "cardsync/membership", Benchmark: "BenchmarkFailureDetection/fast", Unit: "p99-ms", Op: "<=", Value: 3000,
		Why: "a sub-3-second takeover of a dead node's shards"},
	{Package: "cardsync/bench", Benchmark: "BenchmarkWritePath/cardsync", Unit: "results/s", Op: ">=", Value: 20000,
		Why: "3 shard owners flushing 100 results at a time keep 20k card results/s replicated"},
	{Package: "cardsync/bench", Benchmark: "BenchmarkWritePath/cardsync", Unit: "p99-ms", Op: "<=", Value: 50,
		Why: "a flush must not hold a worker up for long"},
	{Package: "cardsync/syncer", Benchmark: "BenchmarkQuotaUse/batching", Unit: "quota-use", Op: ">=", Value: 0.95,
		Why: "a backlog is synced at the carriers' quota: cards/s over the sum of calls/s x cards per call, from 10% to 90% of the backlog"},
	{Package: "cardsync/syncer", Benchmark: "BenchmarkQuotaUse/batching", Unit: "rejected", Op: "<=", Value: 0,
		Why: "the leader's shared buckets and the members' slot shares never let the cluster call over an account's quota"},
	{Package: "cardsync/syncer", Benchmark: "BenchmarkTakeover/fast", Unit: "p99-ms", Op: "<=", Value: 3000,
		Why: "a hard-killed member's shards progress under new owners within 3 s"},
	{Package: "cardsync/syncer", Benchmark: "BenchmarkIdleCost", Unit: "rss-MB/node", Op: "<=", Value: 300,
		Why: "a member holding a third of 1M valid cards stays under 300 MB (process RSS / 3, an upper bound)"},
	{Package: "cardsync/syncer", Benchmark: "BenchmarkRollingRestart", Unit: "refetched", Op: "<=", Value: 0,
		Why: "a planned handoff resumes at the cursor: no card is fetched twice"},
	{Package: "cardsync/syncer", Benchmark: "BenchmarkRollingRestart", Unit: "rejected", Op: "<=", Value: 0,
		Why: "restarting members never push an account over its quota"},
	{Package: "cardsync/syncer", Benchmark: "BenchmarkRebalance", Unit: "join4-moved/ideal", Op: "<=", Value: 1.1,
		Why: "a 4th member takes about its fair quarter of the shards and no more move (bounded-load consistent hashing, slack 0.10)"},
	{Package: "cardsync/syncer", Benchmark: "BenchmarkRebalance", Unit: "join5-moved/ideal", Op: "<=", Value: 1.1,
		Why: "a 5th member takes about its fair fifth of the shards and no more move"},
	{Package: "cardsync/syncer", Benchmark: "BenchmarkRebalance", Unit: "join4-settle-ms", Op: "<=", Value: rebalanceSettleMs,
		Why: rebalanceSettleWhy},
	{Package: "cardsync/syncer", Benchmark: "BenchmarkRebalance", Unit: "join5-settle-ms", Op: "<=", Value: rebalanceSettleMs,
		Why: rebalanceSettleWhy},
	{Package: "cardsync/syncer", Benchmark: "BenchmarkRebalance", Unit: "rejected", Op: "<=", Value: 0,
		Why: "the quota shares never add up to more than an account's quota while members join"},
	{Package: "cardsync/bench", Benchmark: "BenchmarkScale/1M", Unit: "rss-MB/node", Op: "<=", Value: 300,
		Why: "a member of a 1M-card cluster stays under 300 MB"},
}

// rebalanceSettleMs bounds the time from a member's start until the quota shares follow
// the new ring, on the test clusters' timings (fast gossip profile, 200 ms poll): the join
// itself (gossip, Raft voter, readiness and the 500 ms ring stabilisation, about 1.5 s),
// the handoffs (the old owner ends its carrier call at quota, flushes and releases; the
// new owner claims on its 100 ms fast poll: under 1 s), then the share grace period a
// gaining member waits (2 polls + 1 s = 1.4 s) and a last poll on every member.
const rebalanceSettleMs = 5000

const rebalanceSettleWhy = "shares follow a join within join (~1.5 s) + handoff (<1 s) + share grace (2 polls + 1 s) + a poll, with slack"

// scaleMetrics are the metrics BenchmarkScale reports for each cluster size.
var scaleMetrics = []string{"import-s", "rss-MB/node", "snapshot-s", "restore-s", "rejoin-s", "poll-ms/node"}

// scaleGrowth bounds each BenchmarkScale metric at 5M cards by 5x its value at 1M:
// linear growth or better.
func scaleGrowth() []Comparison {
	out := make([]Comparison, 0, len(scaleMetrics))
	for _, u := range scaleMetrics {
		out = append(out, Comparison{Name: "scale growth 5M / 1M " + u,
			Num: MetricRef{"BenchmarkScale/5M", u}, Den: MetricRef{"BenchmarkScale/1M", u},
			Op: "<=", Value: 5.0, Why: "5x the cards costs at most 5x (linear or better)"})
	}
	return out
}

// comparisons are the targets relative to another system measured in the same run.
var comparisons = append([]Comparison{
	{Name: "write path: cardsync / etcd results/s",
		Num: MetricRef{"BenchmarkWritePath/cardsync", "results/s"}, Den: MetricRef{"BenchmarkWritePath/etcd", "results/s"},
		Op: ">=", Value: 1.0, Why: "cardsync's replicated write path is at least as fast as a 3-member etcd doing the same transactions"},
	{Name: "write path: etcd / cardsync flush p99-ms",
		Num: MetricRef{"BenchmarkWritePath/etcd", "p99-ms"}, Den: MetricRef{"BenchmarkWritePath/cardsync", "p99-ms"},
		Op: ">=", Value: 1.0, Why: "cardsync's flush tail latency is no worse than etcd's"},
	{Name: "write path: cardsync / bbolt-limit results/s",
		Num: MetricRef{"BenchmarkWritePath/cardsync", "results/s"}, Den: MetricRef{"BenchmarkWritePath/bbolt-limit", "results/s"},
		Op: ">=", Value: 0.25, Why: "replication (three logs and three state files on one disk) costs at most 4x the single-file limit"},
}, scaleGrowth()...)
