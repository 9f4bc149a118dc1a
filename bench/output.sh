#!/usr/bin/env bash
# Output path: a subprocess prints LINES (1 000 000) lines of 80 bytes as
# fast as it can; every line is committed to the queue and delivered to a
# local Manager. Reports the worker's own CPU time and peak resident memory
# (targets ≤ 1.5 CPU-s, ≤ 40 MB), and the producer's wall time under the
# worker against its wall time writing to /dev/null (target within 10 %).
# Median of RUNS (5) runs.
source "$(dirname "$0")/lib.sh"
LINES=${LINES:-1000000}
RUNS=${RUNS:-5}
# PRODUCER=awk (default, ~10 M lines/s) or python (python3's write, ~1.5 M lines/s).
case ${PRODUCER:-awk} in
awk) printf '%s\n' "awk -v n=$LINES 'BEGIN { for (i = 0; i < n; i++) printf \"%079d\\n\", i }'" > "$WORK/gen.sh" ;;
python) printf '%s\n' "python3 -c 'import sys
w = sys.stdout.write
for i in range($LINES): w(\"%079d\\n\" % i)'" > "$WORK/gen.sh" ;;
esac
cat > "$WORK/producer.sh" <<SCRIPT
start=\$(date +%s%N)
. $WORK/gen.sh
end=\$(date +%s%N)
echo \$(( (end - start) / 1000 )) > $WORK/producer-us
SCRIPT

for run in $(seq "$RUNS"); do
	sh "$WORK/producer.sh" > /dev/null
	cat "$WORK/producer-us" >> "$WORK/baseline"
	printf '{"_id": "5eb00000000000000000%04d", "commands": [{"name": "exec", "settings": {"cmd": "sh %s/producer.sh"}}]}' "$run" "$WORK" > "$WORK/task.json"
	port=$((18110 + run))
	start_manager "$port" "$WORK/events$run" "$WORK/task.json"
	worker_dir "$WORK/w$run" "$port"
	(cd "$WORK/w$run" && HOME="$WORK/w$run" "$WORK/flamenco-worker" --single 2> "$WORK/w$run/log")
	cat "$WORK/producer-us" >> "$WORK/worker"
	log="$WORK/w$run/log"
	grep -q 'task updates left' "$log" && { echo "run $run: updates left undelivered" >&2; exit 1; }
	user=$(grep -o 'cpu_user=[^ ]*' "$log" | cut -d= -f2)
	sys=$(grep -o 'cpu_system=[^ ]*' "$log" | cut -d= -f2)
	rss=$(grep -o 'max_rss_kib=[0-9]*' "$log" | cut -d= -f2)
	updates=$(grep -c ' POST /tasks/.*/update ' "$WORK/events$run")
	bytes=$(awk '$3 ~ /update$/ {s += $4} END {print s}' "$WORK/events$run")
	cpu=$(python3 -c "
def s(v):
    return float(v[:-2])/1000 if v.endswith('ms') else float(v[:-1])
print(s('$user') + s('$sys'))")
	echo "run $run: worker CPU ${cpu}s (user $user, system $sys), peak RSS $((rss / 1024)) MB, $updates updates, $((bytes / 1048576)) MiB delivered, producer $(cat "$WORK/producer-us") µs" >&2
	echo "$cpu" >> "$WORK/cpu"
	echo "$rss" >> "$WORK/rss"
done
printf 'output path, %d lines: worker CPU median %.2f s, peak RSS median %.1f MB\n' "$LINES" "$(median < "$WORK/cpu")" "$(median < "$WORK/rss" | awk '{print $1/1024}')"
b=$(median < "$WORK/baseline"); w=$(median < "$WORK/worker")
printf 'producer wall time: %.3f s to /dev/null, %.3f s under the worker (%+.1f %%)\n' "$(echo "$b/1000000" | bc -l)" "$(echo "$w/1000000" | bc -l)" "$(echo "100*($w-$b)/$b" | bc -l)"
