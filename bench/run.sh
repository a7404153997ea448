#!/usr/bin/env bash
# Runs every cardsync benchmark (the product module's and the write path comparison in
# this module) once and writes docs/benchmarks.md and docs/benchmarks.json.
#
#   bench/run.sh            the benchmarks of record
#   QUICK=1 bench/run.sh    -short: smaller workloads, a few minutes
#
# Environment: GO (default go), BENCH (the -bench pattern, default .), BENCHTIME
# (default 1x), COUNT (runs of the write path comparison, reported as the median;
# default 3, QUICK 1), OUT (directory for the reports, default docs at the repository
# root).
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
GO="${GO:-go}"
BENCH="${BENCH:-.}"
BENCHTIME="${BENCHTIME:-1x}"
OUT="${OUT:-$root/docs}"

flags=(-run '^$' -bench "$BENCH" -benchtime "$BENCHTIME" -p 1)
timeout=60m
mode="full"
if [[ "${QUICK:-}" == "1" ]]; then
	flags+=(-short)
	timeout=10m
	mode="quick"
fi
flags+=(-timeout "$timeout")
count="${COUNT:-3}"
[[ "$mode" == "quick" ]] && count="${COUNT:-1}"

log="$(mktemp -d)"
trap 'rm -rf "$log"' EXIT

status=0
echo "== cardsync benchmarks ($mode): product module" >&2
(cd "$root" && "$GO" test "${flags[@]}" ./...) 2>&1 | tee "$log/product.txt" || status=1
echo "== cardsync benchmarks ($mode): write path vs etcd" >&2
(cd "$here" && "$GO" test "${flags[@]}" -count "$count" ./...) 2>&1 | tee "$log/writepath.txt" || status=1

rev="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || true)"
if [[ -n "$rev" ]] && [[ -n "$(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
	rev="$rev with uncommitted changes"
fi
cmd="bench/run.sh"
[[ "$mode" == "quick" ]] && cmd="QUICK=1 bench/run.sh"
(cd "$here" && cat "$log/product.txt" "$log/writepath.txt" |
	"$GO" run ./cmd/benchreport -md "$OUT/benchmarks.md" -json "$OUT/benchmarks.json" \
		-notes "$here/NOTES.md" -command "$cmd" -rev "$rev") || status=1
exit $status
