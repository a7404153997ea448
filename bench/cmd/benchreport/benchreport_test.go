package main

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

const plainOut = `goos: linux
goarch: amd64
pkg: cardsync/fsm
cpu: AMD EPYC
BenchmarkApplyFlush-2   	       1	 52000000 ns/op	    123456 cards/s	        52.00 ms/batch
BenchmarkShards-2       	      10	   1000000 ns/op	     10240 shards
PASS
ok  	cardsync/fsm	3.1s
pkg: cardsync/bench
BenchmarkWritePath/cardsync-2         	       1	4351272284 ns/op	        16.15 claim-p50-ms	         9.016 p50-ms	        21.77 p99-ms	     20684 results/s
BenchmarkWritePath/etcd-2             	       1	4050234583 ns/op	         8.442 p50-ms	        39.35 p99-ms	     22221 results/s
--- FAIL: BenchmarkOther
FAIL	cardsync/other	1.0s
`

// jsonOut is test2json output in which a benchmark logged between its name and its
// result, and whose lines arrive in pieces.
func jsonOut(t *testing.T) string {
	t.Helper()
	evs := []event{
		{Action: "start", Package: "cardsync/membership"},
		{Action: "output", Package: "cardsync/membership", Output: "pkg: cardsync/membership\n"},
		{Action: "output", Package: "cardsync/membership", Output: "BenchmarkFailureDetection/fast-2 \t"},
		{Action: "output", Package: "cardsync/carrier/sim", Output: "BenchmarkSimulator-2   \t       1\t  999 ns/op\t  "},
		{Action: "output", Package: "cardsync/carrier/sim", Output: "6000 calls/s\n"},
		{Action: "output", Package: "cardsync/membership", Output: "\n    detect_test.go:80: trial 1\n"},
		{Action: "output", Package: "cardsync/membership", Output: "       8\t         0 ns/op\t      1500 p50-ms\t      2500 p99-ms\n"},
		{Action: "pass", Package: "cardsync/membership"},
	}
	var b strings.Builder
	for _, e := range evs {
		js, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		b.Write(js)
		b.WriteByte('\n')
	}
	return b.String()
}

func TestParse(t *testing.T) {
	tests := []struct {
		name     string
		in       string
		want     []string // package|name|procs|iterations|first unit=value
		failures int
		cpu      string
	}{
		{"plain", plainOut, []string{
			"cardsync/fsm|BenchmarkApplyFlush|2|1|ns/op=5.2e+07",
			"cardsync/fsm|BenchmarkShards|2|10|ns/op=1e+06",
			"cardsync/bench|BenchmarkWritePath/cardsync|2|1|ns/op=4.351272284e+09",
			"cardsync/bench|BenchmarkWritePath/etcd|2|1|ns/op=4.050234583e+09",
		}, 2, "AMD EPYC"},
		{"json", "", []string{
			"cardsync/carrier/sim|BenchmarkSimulator|2|1|ns/op=999",
			"cardsync/membership|BenchmarkFailureDetection/fast|2|8|ns/op=0",
		}, 0, ""},
		{"no procs suffix", "BenchmarkX \t 3\t 10 ns/op\n", []string{"|BenchmarkX|1|3|ns/op=10"}, 0, ""},
		{"garbage", "hello\nBenchmarkY 1 2\n{not json\n", nil, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := tt.in
			if tt.name == "json" {
				src = jsonOut(t)
			}
			in, err := Parse(strings.NewReader(src))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, r := range in.Runs {
				got = append(got, strings.Join([]string{r.Package, r.Name, itoa(r.Procs), itoa(int(r.Iterations)),
					r.Metrics[0].Unit + "=" + ftoa(r.Metrics[0].Value)}, "|"))
			}
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Fatalf("runs:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			if len(in.Failures) != tt.failures || in.CPU != tt.cpu {
				t.Fatalf("failures %q, cpu %q", in.Failures, in.CPU)
			}
		})
	}
}

func TestBuildTargets(t *testing.T) {
	in, err := Parse(strings.NewReader(plainOut + plainOut + jsonOut(t)))
	if err != nil {
		t.Fatal(err)
	}
	rep := Build(in, Machine{Cores: 2}, targets, comparisons)
	checks := map[string]Check{}
	for _, c := range slices.Concat(rep.Checks, rep.Comparisons) {
		checks[c.Name] = c
	}
	tests := []struct {
		name    string
		run     bool
		met     bool
		measure float64
	}{
		{"BenchmarkApplyFlush cards/s", true, true, 123456},
		{"BenchmarkSimulator calls/s", true, true, 6000},
		{"BenchmarkFailureDetection/fast p99-ms", true, true, 2500},
		{"BenchmarkWritePath/cardsync results/s", true, true, 20684},
		{"BenchmarkWritePath/cardsync p99-ms", true, true, 21.77},
		{"write path: cardsync / etcd results/s", true, false, 20684.0 / 22221},
		{"write path: etcd / cardsync flush p99-ms", true, true, 39.35 / 21.77},
		{"write path: cardsync / bbolt-limit results/s", false, false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, ok := checks[tt.name]
			if !ok {
				t.Fatalf("no check named %q", tt.name)
			}
			if (c.Measured != nil) != tt.run {
				t.Fatalf("measured %v, want run=%v", c.Measured, tt.run)
			}
			if !tt.run {
				return
			}
			if c.Met != tt.met || *c.Measured != tt.measure {
				t.Fatalf("met %v measured %v, want %v %v", c.Met, *c.Measured, tt.met, tt.measure)
			}
			if c.Ratio == nil || (*c.Ratio >= 1) != tt.met {
				t.Fatalf("ratio %v disagrees with met %v", c.Ratio, tt.met)
			}
		})
	}
	for _, b := range rep.Benchmarks {
		if b.Name == "BenchmarkApplyFlush" && (b.Runs != 2 || b.Iterations != 2) {
			t.Fatalf("ApplyFlush aggregated %d runs, %d iterations", b.Runs, b.Iterations)
		}
	}
}

func TestMedian(t *testing.T) {
	tests := []struct {
		in   []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{5, 1, 3}, 3}, {[]float64{4, 1, 3, 2}, 2.5}}
	for _, tt := range tests {
		if got := median(tt.in); got != tt.want {
			t.Errorf("median(%v) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestNum(t *testing.T) {
	tests := []struct {
		in   float64
		want string
	}{{0, "0"}, {0.01234, "0.0123"}, {9.016, "9.02"}, {20684.4, "20,684"}, {-1234567, "-1,234,567"}, {100, "100"}}
	for _, tt := range tests {
		if got := num(tt.in); got != tt.want {
			t.Errorf("num(%v) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestRunWritesReports(t *testing.T) {
	dir := t.TempDir()
	notes := filepath.Join(dir, "notes.md")
	if err := os.WriteFile(notes, []byte("Why cardsync trails etcd.\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	md, js := filepath.Join(dir, "docs", "benchmarks.md"), filepath.Join(dir, "docs", "benchmarks.json")
	var stderr bytes.Buffer
	if err := run([]string{"-md", md, "-json", js, "-notes", notes, "-command", "make bench", "-rev", "abc1234"}, strings.NewReader(plainOut), &stderr); err != nil {
		t.Fatalf("%v: %s", err, stderr.String())
	}
	mdText, err := os.ReadFile(md)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"## Machine", "| Cores |", "1 run, 1 iteration, GOMAXPROCS 2.", "`make bench`", "Source revision: abc1234.",
		"| BenchmarkApplyFlush cards/s | 123,456 | >= 100,000 | 1.23 | yes |",
		"| write path: cardsync / etcd results/s | 0.931 | >= 1.00 | 0.93 | **no** | cardsync",
		"#### BenchmarkWritePath/cardsync", "| results/s | 20,684 | >= 20,000 | 1.03 |", "| claim-p50-ms | 16.15 |  |  |",
		"#### BenchmarkWritePath side by side\n\n| metric | cardsync | etcd |\n| --- | ---: | ---: |\n| ns/op | 4,351,272,284 | 4,050,234,583 |\n| claim-p50-ms | 16.15 | |",
		"## Failures", "--- FAIL: BenchmarkOther", "## Notes\n\nWhy cardsync trails etcd.",
	} {
		if !strings.Contains(string(mdText), want) {
			t.Errorf("markdown lacks %q:\n%s", want, mdText)
		}
	}
	var rep Report
	b, err := os.ReadFile(js)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Benchmarks) != 4 || rep.Machine.Cores == 0 || rep.Machine.Date.Before(time.Now().Add(-time.Hour)) {
		t.Fatalf("json report: %+v", rep)
	}
	if err := run([]string{"-md", md, "-json", js}, strings.NewReader("no benchmarks here\n"), &stderr); err == nil {
		t.Fatal("empty input accepted")
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func ftoa(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }

const rebalanceScaleOut = `pkg: cardsync/syncer
BenchmarkRebalance-2   	       1	 52000000000 ns/op	         1.05 join4-moved/ideal	      3100 join4-settle-ms	         1.20 join5-moved/ideal	      6200 join5-settle-ms	         0 rejected
pkg: cardsync/bench
BenchmarkScale/1M-2    	       1	 90000000000 ns/op	        40.0 import-s	       250 rss-MB/node	         2.0 snapshot-s	         3.0 restore-s	        10.0 rejoin-s	         4.0 poll-ms/node
BenchmarkScale/5M-2    	       1	 450000000000 ns/op	       220.0 import-s	      1100 rss-MB/node	        10.0 snapshot-s	        12.0 restore-s	        30.0 rejoin-s	        25.0 poll-ms/node
`

func TestRebalanceAndScaleChecks(t *testing.T) {
	in, err := Parse(strings.NewReader(rebalanceScaleOut))
	if err != nil {
		t.Fatal(err)
	}
	rep := Build(in, Machine{Cores: 2}, targets, comparisons)
	checks := map[string]Check{}
	for _, c := range slices.Concat(rep.Checks, rep.Comparisons) {
		checks[c.Name] = c
	}
	tests := []struct {
		name    string
		met     bool
		measure float64
	}{
		{"BenchmarkRebalance join4-moved/ideal", true, 1.05},
		{"BenchmarkRebalance join5-moved/ideal", false, 1.20},
		{"BenchmarkRebalance join4-settle-ms", true, 3100},
		{"BenchmarkRebalance join5-settle-ms", false, 6200},
		{"BenchmarkRebalance rejected", true, 0},
		{"BenchmarkScale/1M rss-MB/node", true, 250},
		{"scale growth 5M / 1M import-s", false, 220.0 / 40},
		{"scale growth 5M / 1M rss-MB/node", true, 1100.0 / 250},
		{"scale growth 5M / 1M snapshot-s", true, 5},
		{"scale growth 5M / 1M restore-s", true, 4},
		{"scale growth 5M / 1M rejoin-s", true, 3},
		{"scale growth 5M / 1M poll-ms/node", false, 25.0 / 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, ok := checks[tt.name]
			if !ok {
				t.Fatalf("no check named %q", tt.name)
			}
			if c.Measured == nil {
				t.Fatal("not measured")
			}
			if c.Met != tt.met || math.Abs(*c.Measured-tt.measure) > 1e-9 {
				t.Fatalf("met %v measured %v, want %v %v", c.Met, *c.Measured, tt.met, tt.measure)
			}
			if c.Ratio != nil && (*c.Ratio >= 1) != tt.met {
				t.Fatalf("ratio %v disagrees with met %v", *c.Ratio, tt.met)
			}
		})
	}
	// Without the 5M run the growth comparisons are reported as not run.
	in, err = Parse(strings.NewReader(strings.Split(rebalanceScaleOut, "BenchmarkScale/5M")[0]))
	if err != nil {
		t.Fatal(err)
	}
	rep = Build(in, Machine{Cores: 2}, targets, comparisons)
	for _, c := range rep.Comparisons {
		if strings.HasPrefix(c.Name, "scale growth") && (c.Measured != nil || c.Met) {
			t.Errorf("%s evaluated without the 5M run: %+v", c.Name, c)
		}
	}
	if n := len(scaleGrowth()); n != len(scaleMetrics) {
		t.Fatalf("%d growth comparisons for %d metrics", n, len(scaleMetrics))
	}
}

func TestRunIncludesBenchstat(t *testing.T) {
	dir := t.TempDir()
	table := "goos: linux\n          │ old.txt │ new.txt │\n          │ sec/op  │ sec/op  vs base │\nDecode/onelink-2   812.5µ ± 3%   640.1µ ± 2%  -21.22% (p=0.002 n=6)\n"
	stat := filepath.Join(dir, "benchstat.txt")
	if err := os.WriteFile(stat, []byte(table), 0o644); err != nil {
		t.Fatal(err)
	}
	md, js := filepath.Join(dir, "benchmarks.md"), filepath.Join(dir, "benchmarks.json")
	var stderr bytes.Buffer
	if err := run([]string{"-md", md, "-json", js, "-benchstat", stat}, strings.NewReader(plainOut), &stderr); err != nil {
		t.Fatalf("%v: %s", err, stderr.String())
	}
	mdText, err := os.ReadFile(md)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(mdText), "## Micro-benchmarks against the previous run") ||
		!strings.Contains(string(mdText), "```text\n"+strings.TrimRight(table, "\n")+"\n```\n") {
		t.Fatalf("markdown lacks the benchstat table:\n%s", mdText)
	}
	var rep Report
	b, err := os.ReadFile(js)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Benchstat != table {
		t.Fatalf("json benchstat %q", rep.Benchstat)
	}
	// Without -benchstat the section is absent; a missing file is an error.
	if err := run([]string{"-md", md, "-json", js}, strings.NewReader(plainOut), &stderr); err != nil {
		t.Fatal(err)
	}
	if mdText, _ := os.ReadFile(md); strings.Contains(string(mdText), "against the previous run") {
		t.Fatal("benchstat section without -benchstat")
	}
	if err := run([]string{"-md", md, "-json", js, "-benchstat", filepath.Join(dir, "none")}, strings.NewReader(plainOut), &stderr); err == nil {
		t.Fatal("missing benchstat file accepted")
	}
}
