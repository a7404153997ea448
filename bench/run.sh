#!/usr/bin/env bash
# Runs every cardsync benchmark (the product module's and the write path comparison in
# this module) and writes docs/benchmarks.md, docs/benchmarks.json and the raw
# `go test -bench` output docs/benchmarks.txt.
#
#   bench/run.sh            the benchmarks of record
#   QUICK=1 bench/run.sh    -short: every scenario at a smaller size, under 5 minutes
#
# Three passes:
#   1. micro-benchmarks (decoding, validity scan, ring) with -benchmem, MICROCOUNT runs
#      of MICROTIME each, so that benchstat can compare them with the previous run;
#   2. the product module's scenario benchmarks, once each (-benchtime 1x);
#   3. the write path comparison and the scale benchmark in this module.
# When OUT/benchmarks.txt exists from a previous run, benchstat compares its
# micro-benchmarks with this run's and the table goes into the report; then
# benchmarks.txt is replaced by this run's output.
#
# Environment: GO (default go), BENCH (the -bench pattern of passes 2 and 3, default .;
# any other pattern skips pass 1), BENCHTIME (default 1x), COUNT (runs of pass 3,
# reported as the median; default 3, QUICK 1), MICROTIME (default 200ms, QUICK 50ms),
# MICROCOUNT (default 6, QUICK 4), OUT (directory for the reports, default docs at the
# repository root).
#
# QUICK skips the runs that cannot be made short (the lan profile's failure detection,
# leader failover and takeover: their timing is the profile's, whatever the workload;
# the fast profile's runs stay; the fixed 30 s false-death watch), the 500k-card scale
# run, and the quota-use variants that only compare with the batching run (interleaved
# import, static split, no batching, no sharing). What remains, with -short sizes, and its wall time
# on this 2-core machine (3 min 30 s to 4 min 15 s in all, go build cache warm; the scenarios
# wait on clusters, so a busy machine stretches them):
#   micro-benchmarks, 4 runs of 50 ms each                                   ~6 s
#   QuotaUse/batching: 10,000 cards on 3 members, 10% to 90% answered       ~15 s
#   Takeover/fast: 3 kills of a member holding running shards               ~20-50 s
#   IdleCost: 100,000 synced cards, 5 s measured                            ~12 s
#   RollingRestart: 12,000 cards, undisturbed and with a rolling restart    ~45-50 s
#   Rebalance: 16,000 cards, joins to 4 and 5 members                       ~20-30 s
#   LeaderFailover/fast (3 kills), Import (100,000 cards)                   ~25-30 s
#   FailureDetection/fast, fsm, simulator and webhook benchmarks            ~12 s
#   Scale/100k: the cardsync binary as 3 processes, import to rejoin        ~45 s
#   WritePath: cardsync, etcd and bbolt                                     ~10 s
#   compiling the test binaries, the report                                 ~15 s
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
GO="${GO:-go}"
BENCH="${BENCH:-.}"
BENCHTIME="${BENCHTIME:-1x}"
OUT="${OUT:-$root/docs}"

# The micro-benchmarks: top-level names, and the packages holding them.
micro='^(BenchmarkDecode|BenchmarkValidityScan|BenchmarkOwner|BenchmarkAssign1000|BenchmarkNewRing)$'
micro_pkgs=(./carrier ./fsm ./membership)
micro_filter='.name:/^(Decode|ValidityScan|Owner|Assign1000|NewRing)$/'

flags=(-run '^$' -bench "$BENCH" -benchtime "$BENCHTIME" -p 1)
timeout=60m
mode="full"
skip=""
if [[ "${QUICK:-}" == "1" ]]; then
	flags+=(-short)
	timeout=10m
	mode="quick"
	# -skip splits at top-level slashes and bars: each alternative names its levels.
	skip='^BenchmarkFailureDetection$/^lan$|^BenchmarkLeaderFailover$/^lan$|^BenchmarkTakeover$/^lan$'
	skip+='|^BenchmarkIdleFalseDeaths$|^BenchmarkScale$/^500k$'
	skip+='|^BenchmarkQuotaUse$/^(batching-interleaved|static-split|no-batching|no-share)$'
fi
flags+=(-timeout "$timeout")
count="${COUNT:-3}"
microtime="${MICROTIME:-200ms}"
microcount="${MICROCOUNT:-6}"
if [[ "$mode" == "quick" ]]; then
	count="${COUNT:-1}"
	microtime="${MICROTIME:-50ms}"
	microcount="${MICROCOUNT:-4}"
fi
run_micro=0
[[ "$BENCH" == "." ]] && run_micro=1
product_skip="$skip"
if [[ $run_micro == 1 ]]; then
	product_skip="${skip:+$skip|}$micro"
fi
product_flags=("${flags[@]}")
[[ -n "$product_skip" ]] && product_flags+=(-skip "$product_skip")
writepath_flags=("${flags[@]}" -count "$count")
[[ -n "$skip" ]] && writepath_flags+=(-skip "$skip")

log="$(mktemp -d)"
trap 'rm -rf "$log"' EXIT
: >"$log/micro.txt"

status=0
if [[ $run_micro == 1 ]]; then
	echo "== cardsync benchmarks ($mode): micro-benchmarks" >&2
	(cd "$root" && "$GO" test -run '^$' -bench "$micro" -benchmem -benchtime "$microtime" -count "$microcount" \
		-p 1 -timeout "$timeout" "${micro_pkgs[@]}") 2>&1 | tee "$log/micro.txt" || status=1
fi
echo "== cardsync benchmarks ($mode): product module" >&2
(cd "$root" && "$GO" test "${product_flags[@]}" ./...) 2>&1 | tee "$log/product.txt" || status=1
echo "== cardsync benchmarks ($mode): write path vs etcd, scale" >&2
(cd "$here" && "$GO" test "${writepath_flags[@]}" ./...) 2>&1 | tee "$log/writepath.txt" || status=1
cat "$log/micro.txt" "$log/product.txt" "$log/writepath.txt" >"$log/benchmarks.txt"

# benchstat: the previous run's micro-benchmarks (old) against this run's (new).
statflag=()
if [[ $run_micro == 1 && -s "$OUT/benchmarks.txt" ]]; then
	cp "$OUT/benchmarks.txt" "$log/old.txt"
	cp "$log/micro.txt" "$log/new.txt"
	if (cd "$here" && "$GO" tool benchstat -filter "$micro_filter" "old=$log/old.txt" "new=$log/new.txt") >"$log/benchstat.txt" 2>"$log/benchstat.err"; then
		statflag=(-benchstat "$log/benchstat.txt")
	else
		echo "benchstat failed; the report has no comparison with the previous run:" >&2
		cat "$log/benchstat.err" >&2
	fi
fi

rev="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || true)"
if [[ -n "$rev" ]] && [[ -n "$(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
	rev="$rev with uncommitted changes"
fi
cmd="bench/run.sh"
[[ "$mode" == "quick" ]] && cmd="QUICK=1 bench/run.sh"
(cd "$here" && "$GO" run ./cmd/benchreport -md "$OUT/benchmarks.md" -json "$OUT/benchmarks.json" \
	-notes "$here/NOTES.md" -command "$cmd" -rev "$rev" "${statflag[@]}" <"$log/benchmarks.txt") || status=1
mkdir -p "$OUT" && cp "$log/benchmarks.txt" "$OUT/benchmarks.txt" || status=1
exit $status
