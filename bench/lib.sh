# Shared helpers for the bench/ scripts. Source it; it builds the worker
# (static, as shipped) and the test binary that serves the load Manager.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${BENCH_WORK:-$(mktemp -d /tmp/fw-bench.XXXXXX)}
mkdir -p "$WORK"
(cd "$ROOT" && CGO_ENABLED=0 go build -trimpath -o "$WORK/flamenco-worker" . && go test -c -o "$WORK/fw.test" .)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# start_manager PORT EVENTS [TASK_JSON]: the load Manager on 127.0.0.1:PORT.
start_manager() {
	FW_BENCH_MANAGER=127.0.0.1:$1 FW_BENCH_EVENTS=$2 FW_BENCH_TASK=${3:-} \
		"$WORK/fw.test" -test.run '^TestLoadManager$' -test.timeout 0 >/dev/null 2>&1 &
	PIDS+=($!)
	for _ in $(seq 100); do
		if (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; then return; fi
		sleep 0.05
	done
	echo "load Manager did not start" >&2
	exit 1
}

# worker_dir DIR PORT [EXTRA_CFG]: a working directory (and HOME) with a
# config pointing at the load Manager and credentials already present.
worker_dir() {
	mkdir -p "$1"
	printf '[flamenco-worker]\nmanager_url = http://127.0.0.1:%s/\nworker_id = 5eb000000000000000000001\nworker_secret = bench\ntask_types = sleep blender-render video-encoding\n%s\n' \
		"$2" "${3:-}" > "$1/flamenco-worker.cfg"
	chmod 600 "$1/flamenco-worker.cfg"
}

# median of the numbers on stdin
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# rss_kib PID and cpu_ticks PID (user+system, in clock ticks) from /proc
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
