#!/usr/bin/env bash
# Runs every fuzz target of the module for FUZZTIME (a count such as 100000x, or a
# duration such as 10m). A target that fails is retried once only when its output is the
# Go 1.26 fuzz coordinator's deadline race: "context deadline exceeded" with no failing
# input written and no panic. Any other failure fails the run at once.
set -uo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
FUZZTIME=${FUZZTIME:-100000x}

deadline_race() {
	grep -q 'context deadline exceeded' "$1" &&
		! grep -qE 'Failing input written|panic:|_test\.go:[0-9]+:' "$1"
}

log=$(mktemp)
trap 'rm -f "$log"' EXIT
for pkg in $($GO list ./...); do
	for t in $($GO test -list '^Fuzz' "$pkg" 2>/dev/null | grep '^Fuzz'); do
		for attempt in 1 2; do
			echo "fuzz $pkg $t (budget $FUZZTIME, attempt $attempt)"
			if $GO test -run '^$' -fuzz "^$t\$" -fuzztime "$FUZZTIME" "$pkg" 2>&1 | tee "$log"; then
				break
			fi
			if [ "$attempt" = 1 ] && deadline_race "$log"; then
				echo "fuzz $t: the coordinator's deadline race, no failing input; running it once more"
				continue
			fi
			exit 1
		done
	done
done
