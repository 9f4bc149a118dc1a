#!/usr/bin/env bash
# Idle footprint: resident memory after 60 s of polling a Manager that has
# no work (target ≤ 12 MB), and CPU over that minute (target ≤ 0.1 % of one
# core). Five workers run side by side; the figures are their medians.
source "$(dirname "$0")/lib.sh"
IDLE=${IDLE_SECONDS:-60}
start_manager 18102 "$WORK/events"
pids=()
for i in 1 2 3 4 5; do
	worker_dir "$WORK/w$i" 18102
	(cd "$WORK/w$i" && HOME="$WORK/w$i" exec "$WORK/flamenco-worker" 2>>"$WORK/w$i/log") &
	pids+=($!)
	PIDS+=($!)
done
sleep 2 # signed on and polling
declare -A start
for p in "${pids[@]}"; do start[$p]=$(cpu_ticks "$p"); done
sleep "$((IDLE - 2))"
hz=$(getconf CLK_TCK)
for p in "${pids[@]}"; do
	echo "$(rss_kib "$p") $(( $(cpu_ticks "$p") - ${start[$p]} ))"
done > "$WORK/idle"
awk '{print $1}' "$WORK/idle" | median | awk '{printf "idle resident memory after %s s: median %.1f MB\n", '"$IDLE"', $1/1024}'
awk '{print $2}' "$WORK/idle" | median | awk -v hz="$hz" -v s="$((IDLE - 2))" '{printf "idle CPU: median %.3f %% of one core (%d ticks in %d s)\n", 100*$1/hz/s, $1, s}'
echo "fetches seen by the Manager: $(grep -c ' POST /task ' "$WORK/events") in $IDLE s from 5 workers"
