package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
)

// Metric is one value a benchmark reported, with its unit ("ns/op", "results/s", ...).
type Metric struct {
	Unit  string  `json:"unit"`
	Value float64 `json:"value"`
}

// Run is one benchmark result line.
type Run struct {
	Package    string   `json:"package"`
	Name       string   `json:"name"` // without the -GOMAXPROCS suffix
	Procs      int      `json:"procs"`
	Iterations int64    `json:"iterations"`
	Metrics    []Metric `json:"metrics"`
}

// Input is everything benchreport gathered from its input.
type Input struct {
	Runs []Run
	// CPU is the "cpu:" line of go test, when present.
	CPU string
	// Failures are the FAIL lines (a benchmark or package that failed).
	Failures []string
}

// event is the part of a `go test -json` (test2json) event benchreport uses.
type event struct {
	Action  string
	Package string
	Output  string
}

var (
	// "BenchmarkX/sub-2   \t  1\t  123 ns/op\t 4.5 results/s"
	resultLine = regexp.MustCompile(`^(Benchmark\S*?)(?:-(\d+))?\s+(\d+)\s+(\S.*)$`)
	// A benchmark name alone: its result follows on a later line (the benchmark logged
	// something in between).
	nameLine = regexp.MustCompile(`^(Benchmark\S*?)(?:-(\d+))?\s*$`)
	// The result part of a split line: iterations and metrics.
	tailLine = regexp.MustCompile(`^\s*(\d+)\s+(\d\S*\s+\S.*)$`)
)

// parser keeps the state of one package's output.
type parser struct {
	pkg         string
	pendingName string
	pendingProc int
	partial     strings.Builder // text of the current line not yet ended (JSON input)
}

// Parse reads benchmark output, plain or test2json, from r. Lines it does not
// understand are skipped.
func Parse(r io.Reader) (*Input, error) {
	in := &Input{}
	parsers := map[string]*parser{}
	get := func(pkg string) *parser {
		p := parsers[pkg]
		if p == nil {
			p = &parser{pkg: pkg}
			parsers[pkg] = p
		}
		return p
	}
	plain := get("")
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "{") {
			var ev event
			if err := json.Unmarshal([]byte(line), &ev); err == nil {
				if ev.Action != "output" {
					continue
				}
				p := get(ev.Package)
				p.partial.WriteString(ev.Output)
				text := p.partial.String()
				p.partial.Reset()
				lines := strings.Split(text, "\n")
				// The last element is an unfinished line (or "" after a newline).
				p.partial.WriteString(lines[len(lines)-1])
				for _, l := range lines[:len(lines)-1] {
					p.line(in, l)
				}
				continue
			}
		}
		plain.line(in, line)
	}
	if err := sc.Err(); err != nil {
		return in, fmt.Errorf("read input: %w", err)
	}
	for _, p := range parsers {
		if p.partial.Len() > 0 {
			p.line(in, p.partial.String())
		}
	}
	return in, nil
}

func (p *parser) line(in *Input, raw string) {
	line := strings.TrimRight(raw, "\r")
	trimmed := strings.TrimSpace(line)
	switch {
	case strings.HasPrefix(line, "pkg: "):
		p.pkg = strings.TrimSpace(strings.TrimPrefix(line, "pkg: "))
		return
	case strings.HasPrefix(line, "cpu: "):
		in.CPU = strings.TrimSpace(strings.TrimPrefix(line, "cpu: "))
		return
	case strings.HasPrefix(trimmed, "--- FAIL"), strings.HasPrefix(trimmed, "FAIL"), strings.HasPrefix(trimmed, "panic:"):
		in.Failures = append(in.Failures, trimmed)
		return
	}
	if m := resultLine.FindStringSubmatch(line); m != nil {
		if r, ok := makeRun(p.pkg, m[1], m[2], m[3], m[4]); ok {
			in.Runs = append(in.Runs, r)
			p.pendingName = ""
			return
		}
	}
	if m := nameLine.FindStringSubmatch(line); m != nil {
		p.pendingName, p.pendingProc = m[1], atoiOr(m[2], 1)
		return
	}
	if p.pendingName != "" {
		if m := tailLine.FindStringSubmatch(line); m != nil {
			if r, ok := makeRun(p.pkg, p.pendingName, strconv.Itoa(p.pendingProc), m[1], m[2]); ok {
				in.Runs = append(in.Runs, r)
				p.pendingName = ""
			}
		}
	}
}

func atoiOr(s string, def int) int {
	if n, err := strconv.Atoi(s); err == nil {
		return n
	}
	return def
}

// makeRun parses the metrics "v1 unit1   v2 unit2 ..." of a result line.
func makeRun(pkg, name, procs, iters, rest string) (Run, bool) {
	n, err := strconv.ParseInt(iters, 10, 64)
	if err != nil {
		return Run{}, false
	}
	fields := strings.Fields(rest)
	if len(fields) < 2 || len(fields)%2 != 0 {
		return Run{}, false
	}
	r := Run{Package: pkg, Name: name, Procs: atoiOr(procs, 1), Iterations: n}
	for i := 0; i < len(fields); i += 2 {
		v, err := strconv.ParseFloat(fields[i], 64)
		if err != nil {
			return Run{}, false
		}
		r.Metrics = append(r.Metrics, Metric{Unit: fields[i+1], Value: v})
	}
	return r, true
}
