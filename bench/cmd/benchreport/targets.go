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
		Why: "the members' quota shares never add up to more than an account's quota"},
	{Package: "cardsync/syncer", Benchmark: "BenchmarkTakeover/fast", Unit: "p99-ms", Op: "<=", Value: 3000,
		Why: "a hard-killed member's shards progress under new owners within 3 s"},
	{Package: "cardsync/syncer", Benchmark: "BenchmarkIdleCost", Unit: "rss-MB/node", Op: "<=", Value: 300,
		Why: "a member holding a third of 1M valid cards stays under 300 MB (process RSS / 3, an upper bound)"},
	{Package: "cardsync/syncer", Benchmark: "BenchmarkRollingRestart", Unit: "refetched", Op: "<=", Value: 0,
		Why: "a planned handoff resumes at the cursor: no card is fetched twice"},
	{Package: "cardsync/syncer", Benchmark: "BenchmarkRollingRestart", Unit: "rejected", Op: "<=", Value: 0,
		Why: "restarting members never push an account over its quota"},
}

// comparisons are the targets relative to another system measured in the same run.
var comparisons = []Comparison{
	{Name: "write path: cardsync / etcd results/s",
		Num: MetricRef{"BenchmarkWritePath/cardsync", "results/s"}, Den: MetricRef{"BenchmarkWritePath/etcd", "results/s"},
		Op: ">=", Value: 1.0, Why: "cardsync's replicated write path is at least as fast as a 3-member etcd doing the same transactions"},
	{Name: "write path: etcd / cardsync flush p99-ms",
		Num: MetricRef{"BenchmarkWritePath/etcd", "p99-ms"}, Den: MetricRef{"BenchmarkWritePath/cardsync", "p99-ms"},
		Op: ">=", Value: 1.0, Why: "cardsync's flush tail latency is no worse than etcd's"},
	{Name: "write path: cardsync / bbolt-limit results/s",
		Num: MetricRef{"BenchmarkWritePath/cardsync", "results/s"}, Den: MetricRef{"BenchmarkWritePath/bbolt-limit", "results/s"},
		Op: ">=", Value: 0.25, Why: "replication (three logs and three state files on one disk) costs at most 4x the single-file limit"},
}
