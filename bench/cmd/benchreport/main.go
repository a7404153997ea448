package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

func main() {
	if err := run(os.Args[1:], os.Stdin, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "benchreport:", err)
		os.Exit(1)
	}
}

func run(args []string, stdin io.Reader, stderr io.Writer) error {
	fs := flag.NewFlagSet("benchreport", flag.ContinueOnError)
	fs.SetOutput(stderr)
	mdPath := fs.String("md", "docs/benchmarks.md", "Markdown report to write")
	jsonPath := fs.String("json", "docs/benchmarks.json", "JSON report to write")
	notes := fs.String("notes", "", "Markdown file appended to the report as its notes")
	command := fs.String("command", "", "the command that produced the input, shown in the report")
	rev := fs.String("rev", "", "the source revision benchmarked, shown in the report")
	benchstat := fs.String("benchstat", "", "benchstat's comparison of the previous run with this one, shown in the report")
	if err := fs.Parse(args); err != nil {
		return err
	}
	in, err := Parse(stdin)
	if err != nil {
		return err
	}
	if len(in.Runs) == 0 {
		return errors.New("no benchmark lines in the input")
	}
	m := machine(*command)
	m.Revision = *rev
	rep := Build(in, m, targets, comparisons)
	if *notes != "" {
		b, err := os.ReadFile(*notes)
		if err != nil {
			return fmt.Errorf("notes: %w", err)
		}
		rep.Notes = string(b)
	}
	if *benchstat != "" {
		b, err := os.ReadFile(*benchstat)
		if err != nil {
			return fmt.Errorf("benchstat: %w", err)
		}
		rep.Benchstat = string(b)
	}
	var js bytes.Buffer
	enc := json.NewEncoder(&js)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(rep); err != nil {
		return err
	}
	if err := writeFile(*jsonPath, js.Bytes()); err != nil {
		return err
	}
	if err := writeFile(*mdPath, []byte(rep.Markdown())); err != nil {
		return err
	}
	missed := 0
	for _, c := range slices.Concat(rep.Checks, rep.Comparisons) {
		if c.Measured != nil && !c.Met {
			missed++
		}
	}
	fmt.Fprintf(stderr, "benchreport: %d benchmarks, %d targets missed; wrote %s and %s\n", len(rep.Benchmarks), missed, *mdPath, *jsonPath)
	return nil
}

func writeFile(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// machine describes this machine from /proc (Linux); fields it cannot read stay empty.
func machine(command string) Machine {
	m := Machine{Cores: runtime.NumCPU(), Go: runtime.Version(), OS: runtime.GOOS + "/" + runtime.GOARCH,
		Date: time.Now().UTC(), Command: command}
	m.CPU = procField("/proc/cpuinfo", "model name")
	if kb := procField("/proc/meminfo", "MemTotal"); kb != "" {
		if n, err := strconv.ParseFloat(strings.Fields(kb)[0], 64); err == nil {
			m.MemoryGB = n / (1 << 20)
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

// procField returns the value of the first "key: value" line of a /proc file.
func procField(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
