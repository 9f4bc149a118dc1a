#!/usr/bin/env bash
# Runs every measurement of bench/ and the Go benchmarks, in turn.
set -euo pipefail
dir=$(cd "$(dirname "$0")" && pwd)
for s in startup idle output render scale; do
	echo "== $s"
	bash "$dir/$s.sh" 2>/dev/null
done
echo "== go test -bench"
(cd "$dir/.." && go test -run '^$' -bench . -benchtime 5x . | grep -E '^Benchmark')
