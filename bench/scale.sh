#!/usr/bin/env bash
# Scale: WORKERS (200) workers on this machine, idle-polling one local load
# Manager for IDLE_SECONDS (60). The Manager should see each worker's
# /task poll every 5 s (WORKERS/5 requests per second); no worker may
# exceed the idle footprint (12 MB resident).
source "$(dirname "$0")/lib.sh"
N=${WORKERS:-200}
IDLE=${IDLE_SECONDS:-60}
ulimit -n 65536 2>/dev/null || true
start_manager 18120 "$WORK/events"
pids=()
for i in $(seq "$N"); do
	worker_dir "$WORK/w$i" 18120
	(cd "$WORK/w$i" && HOME="$WORK/w$i" exec "$WORK/flamenco-worker" 2> "$WORK/w$i/log") &
	pids+=($!)
	PIDS+=($!)
done
sleep 10 # all started and signed on
t0=$(date +%s%N)
sleep "$IDLE"
t1=$(date +%s%N)
polls=$(awk -v a="$t0" -v b="$t1" '$1 >= a && $1 < b && $3 == "/task"' "$WORK/events" | wc -l)
for p in "${pids[@]}"; do rss_kib "$p"; done | sort -n > "$WORK/rss"
alive=$(for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && echo; done | wc -l)
printf '%d workers, %d alive after %d s idle: the Manager saw %.1f /task requests per second (expected %.1f)\n' \
	"$N" "$alive" "$IDLE" "$(echo "$polls / $IDLE" | bc -l)" "$(echo "$N / 5" | bc -l)"
printf 'resident memory per worker: median %.1f MB, max %.1f MB\n' "$(median < "$WORK/rss" | awk '{print $1/1024}')" "$(tail -1 "$WORK/rss" | awk '{print $1/1024}')"
