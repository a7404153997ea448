// Command benchreport turns benchmark output into cardsync's benchmark report. It reads
// `go test -bench` output from stdin, either plain text or the JSON event stream of
// `go test -json`, keeps every benchmark line it sees (every metric reported with
// b.ReportMetric), compares the metrics with the targets it keeps in targets.go, and
// writes a Markdown report (machine, a table per benchmark with metric, value, target and
// ratio) and the same data as JSON.
//
//	go test -run '^$' -bench . -benchtime 1x ./... | benchreport -md docs/benchmarks.md -json docs/benchmarks.json
package main
