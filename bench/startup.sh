#!/usr/bin/env bash
# Start-up: from exec to the first POST /task at a local Manager, with
# credentials present (target ≤ 20 ms). Median of 5 runs.
source "$(dirname "$0")/lib.sh"
start_manager 18101 "$WORK/events"
worker_dir "$WORK/w" 18101
for run in 1 2 3 4 5; do
	before=$(wc -l < "$WORK/events")
	t0=$(date +%s%N)
	(cd "$WORK/w" && HOME="$WORK/w" exec "$WORK/flamenco-worker" 2>>"$WORK/worker.log") &
	pid=$!
	until tail -n +"$((before + 1))" "$WORK/events" | grep -q ' POST /task '; do sleep 0.001; done
	t1=$(tail -n +"$((before + 1))" "$WORK/events" | awk '$3 == "/task" {print $1; exit}')
	kill -TERM "$pid"; wait "$pid" || true
	echo "run $run: $(( (t1 - t0) / 1000 )) µs" >&2
	echo "$(( (t1 - t0) / 1000 ))"
done | median | awk '{printf "start-up to first POST /task: median %.1f ms (5 runs)\n", $1/1000}'
