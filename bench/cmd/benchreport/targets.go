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
