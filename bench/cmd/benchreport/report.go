package main

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Machine describes where the benchmarks ran.
type Machine struct {
	CPU      string    `json:"cpu"`
	Cores    int       `json:"cores"`
	MemoryGB float64   `json:"memory_gib"`
	Go       string    `json:"go"`
	OS       string    `json:"os"`
	Kernel   string    `json:"kernel,omitempty"`
	Date     time.Time `json:"date"`
	Command  string    `json:"command,omitempty"`
	Revision string    `json:"revision,omitempty"`
}

// Check is one target or comparison evaluated against the results.
type Check struct {
	Name     string   `json:"name"`
	Op       string   `json:"op"`
	Target   float64  `json:"target"`
	Measured *float64 `json:"measured"` // nil: the benchmark did not run
	// Ratio is how far the target is met: measured/target for ">=", target/measured for
	// "<="; 1 or more means met. Nil when not run or not finite.
	Ratio *float64 `json:"ratio"`
	Met   bool     `json:"met"`
	Why   string   `json:"why"`
}

// BenchResult is one benchmark's metrics, the median over its runs.
type BenchResult struct {
	Package    string             `json:"package"`
	Name       string             `json:"name"`
	Procs      int                `json:"procs"`
	Runs       int                `json:"runs"`
	Iterations int64              `json:"iterations"`
	Units      []string           `json:"units"`
	Metrics    map[string]float64 `json:"metrics"`
	Targets    map[string]Check   `json:"targets,omitempty"`
}

// Report is the whole report, as written to benchmarks.json.
type Report struct {
	Machine     Machine       `json:"machine"`
	Checks      []Check       `json:"checks"`
	Comparisons []Check       `json:"comparisons"`
	Benchmarks  []BenchResult `json:"benchmarks"`
	Failures    []string      `json:"failures,omitempty"`
	// Benchstat is benchstat's comparison of the previous run's micro-benchmarks with
	// this run's, when there was a previous run.
	Benchstat string `json:"benchstat,omitempty"`
	Notes     string `json:"-"`
}

// Build aggregates the runs, in the order benchmarks first appeared, and evaluates the
// targets and comparisons.
func Build(in *Input, m Machine, tgts []Target, cmps []Comparison) *Report {
	rep := &Report{Machine: m, Failures: in.Failures}
	if rep.Machine.CPU == "" {
		rep.Machine.CPU = in.CPU
	}
	type key struct{ pkg, name string }
	idx := map[key]int{}
	values := []map[string][]float64{}
	for _, r := range in.Runs {
		k := key{r.Package, r.Name}
		i, ok := idx[k]
		if !ok {
			i = len(rep.Benchmarks)
			idx[k] = i
			rep.Benchmarks = append(rep.Benchmarks, BenchResult{Package: r.Package, Name: r.Name, Procs: r.Procs, Metrics: map[string]float64{}})
			values = append(values, map[string][]float64{})
		}
		b := &rep.Benchmarks[i]
		b.Runs++
		b.Iterations += r.Iterations
		for _, mt := range r.Metrics {
			if _, seen := values[i][mt.Unit]; !seen {
				b.Units = append(b.Units, mt.Unit)
			}
			values[i][mt.Unit] = append(values[i][mt.Unit], mt.Value)
		}
	}
	for i := range rep.Benchmarks {
		for u, vs := range values[i] {
			rep.Benchmarks[i].Metrics[u] = median(vs)
		}
	}
	find := func(pkg, name, unit string) (float64, bool) {
		for _, b := range rep.Benchmarks {
			if b.Name == name && (pkg == "" || b.Package == pkg) {
				v, ok := b.Metrics[unit]
				return v, ok
			}
		}
		return 0, false
	}
	for _, t := range tgts {
		c := Check{Name: t.Benchmark + " " + t.Unit, Op: t.Op, Target: t.Value, Why: t.Why}
		if v, ok := find(t.Package, t.Benchmark, t.Unit); ok {
			c.evaluate(v)
			for i := range rep.Benchmarks {
				b := &rep.Benchmarks[i]
				if b.Name == t.Benchmark && (t.Package == "" || b.Package == t.Package) {
					if b.Targets == nil {
						b.Targets = map[string]Check{}
					}
					b.Targets[t.Unit] = c
				}
			}
		}
		rep.Checks = append(rep.Checks, c)
	}
	for _, cm := range cmps {
		c := Check{Name: cm.Name, Op: cm.Op, Target: cm.Value, Why: cm.Why}
		num, ok1 := find("", cm.Num.Benchmark, cm.Num.Unit)
		den, ok2 := find("", cm.Den.Benchmark, cm.Den.Unit)
		if ok1 && ok2 && den != 0 {
			c.evaluate(num / den)
		}
		rep.Comparisons = append(rep.Comparisons, c)
	}
	return rep
}

func (c *Check) evaluate(v float64) {
	c.Measured = &v
	var r float64
	switch c.Op {
	case "<=":
		r = c.Target / v
	default:
		r = v / c.Target
	}
	if !math.IsNaN(r) && !math.IsInf(r, 0) {
		c.Ratio = &r
	}
	switch c.Op {
	case "<=":
		c.Met = v <= c.Target
	default:
		c.Met = v >= c.Target
	}
}

func median(vs []float64) float64 {
	s := slices.Clone(vs)
	sort.Float64s(s)
	n := len(s)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// num formats a metric value: integers above 100, else a few significant digits.
func num(v float64) string {
	a := math.Abs(v)
	switch {
	case a >= 100:
		return groupThousands(strconv.FormatFloat(v, 'f', 0, 64))
	case a >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	case a == 0:
		return "0"
	default:
		return strconv.FormatFloat(v, 'g', 3, 64)
	}
}

func groupThousands(s string) string {
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func ratioText(c Check) string {
	if c.Ratio == nil {
		if c.Measured != nil {
			return "∞"
		}
		return "-"
	}
	return strconv.FormatFloat(*c.Ratio, 'f', 2, 64)
}

func metText(c Check) string {
	switch {
	case c.Measured == nil:
		return "not run"
	case c.Met:
		return "yes"
	default:
		return "**no**"
	}
}

// sideBySide writes one table with a column per sub-benchmark of parent, when it has
// more than one.
func (r *Report) sideBySide(b *strings.Builder, pkg, parent string) {
	var subs []BenchResult
	var units []string
	for _, br := range r.Benchmarks {
		if br.Package == pkg && strings.HasPrefix(br.Name, parent+"/") {
			subs = append(subs, br)
			for _, u := range br.Units {
				if !slices.Contains(units, u) {
					units = append(units, u)
				}
			}
		}
	}
	if len(subs) < 2 {
		return
	}
	fmt.Fprintf(b, "\n#### %s side by side\n\n| metric |", parent)
	for _, s := range subs {
		fmt.Fprintf(b, " %s |", strings.TrimPrefix(s.Name, parent+"/"))
	}
	b.WriteString("\n| --- |" + strings.Repeat(" ---: |", len(subs)) + "\n")
	for _, u := range units {
		fmt.Fprintf(b, "| %s |", u)
		for _, s := range subs {
			if v, ok := s.Metrics[u]; ok {
				fmt.Fprintf(b, " %s |", num(v))
			} else {
				b.WriteString(" |")
			}
		}
		b.WriteString("\n")
	}
}

// Markdown renders the report.
func (r *Report) Markdown() string {
	var b strings.Builder
	m := r.Machine
	b.WriteString("# cardsync benchmarks\n\n")
	fmt.Fprintf(&b, "Generated by `bench/cmd/benchreport` on %s.", m.Date.UTC().Format("2006-01-02 15:04 MST"))
	if m.Command != "" {
		fmt.Fprintf(&b, " Command: `%s`.", m.Command)
	}
	if m.Revision != "" {
		fmt.Fprintf(&b, " Source revision: %s.", m.Revision)
	}
	b.WriteString(" Every metric is what the benchmark reported with `b.ReportMetric` (the median when a benchmark ran more than once). A ratio of 1.00 or more meets the target.\n\n")

	b.WriteString("## Machine\n\n| | |\n| --- | --- |\n")
	fmt.Fprintf(&b, "| CPU | %s |\n| Cores | %d |\n| Memory | %.1f GiB |\n| Go | %s |\n| OS | %s |\n", m.CPU, m.Cores, m.MemoryGB, m.Go, m.OS)
	if m.Kernel != "" {
		fmt.Fprintf(&b, "| Kernel | %s |\n", m.Kernel)
	}
	b.WriteString("\n")

	b.WriteString("## Targets\n\n| target | measured | bound | ratio | met | why |\n| --- | ---: | ---: | ---: | --- | --- |\n")
	for _, c := range slices.Concat(r.Checks, r.Comparisons) {
		meas := "-"
		if c.Measured != nil {
			meas = num(*c.Measured)
		}
		fmt.Fprintf(&b, "| %s | %s | %s %s | %s | %s | %s |\n", c.Name, meas, c.Op, num(c.Target), ratioText(c), metText(c), c.Why)
	}
	b.WriteString("\n")

	if len(r.Failures) > 0 {
		b.WriteString("## Failures\n\n")
		for _, f := range r.Failures {
			fmt.Fprintf(&b, "- `%s`\n", f)
		}
		b.WriteString("\n")
	}

	b.WriteString("## Results\n")
	pkg := "\x00"
	for i, br := range r.Benchmarks {
		if br.Package != pkg {
			pkg = br.Package
			name := pkg
			if name == "" {
				name = "(package not named in the input)"
			}
			fmt.Fprintf(&b, "\n### %s\n", name)
		}
		if parent, _, ok := strings.Cut(br.Name, "/"); ok && (i == 0 || !strings.HasPrefix(r.Benchmarks[i-1].Name, parent+"/")) {
			r.sideBySide(&b, br.Package, parent)
		}
		runs := "1 run"
		if br.Runs != 1 {
			runs = fmt.Sprintf("%d runs", br.Runs)
		}
		iters := "1 iteration"
		if br.Iterations != 1 {
			iters = fmt.Sprintf("%d iterations", br.Iterations)
		}
		fmt.Fprintf(&b, "\n#### %s\n\n%s, %s, GOMAXPROCS %d.\n\n| metric | value | target | ratio |\n| --- | ---: | ---: | ---: |\n", br.Name, runs, iters, br.Procs)
		for _, u := range br.Units {
			tgt, ratio := "", ""
			if c, ok := br.Targets[u]; ok {
				tgt = c.Op + " " + num(c.Target)
				ratio = ratioText(c)
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", u, num(br.Metrics[u]), tgt, ratio)
		}
	}
	if strings.TrimSpace(r.Benchstat) != "" {
		b.WriteString("\n## Micro-benchmarks against the previous run\n\n")
		b.WriteString("`benchstat` over the micro-benchmarks of the previous `docs/benchmarks.txt` (old) and of this run (new): the median of each with its 95% confidence interval, and the change where it is significant (p < 0.05; `~` otherwise).\n\n")
		b.WriteString("```text\n")
		b.WriteString(strings.TrimRight(strings.ReplaceAll(r.Benchstat, "```", "` ` `"), "\n"))
		b.WriteString("\n```\n")
	}
	if strings.TrimSpace(r.Notes) != "" {
		b.WriteString("\n## Notes\n\n")
		b.WriteString(strings.TrimSpace(r.Notes))
		b.WriteString("\n")
	}
	return b.String()
}
