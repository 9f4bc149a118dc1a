#!/usr/bin/env bash
# Render overhead: a real Blender render of 3 frames, run through the
# worker (--run-task, the same runner as under a Manager) against the same
# Blender command run by hand (target ≤ 2 % longer). Runs alternate, RUNS
# (5) of each; medians. SIZE and SAMPLES set the scene (default 320x240, 16).
source "$(dirname "$0")/lib.sh"
RUNS=${RUNS:-5}
SIZE=${SIZE:-320x240}
SAMPLES=${SAMPLES:-16}
BLENDER=${BLENDER:-$(command -v blender)}
scene="$WORK/scene.blend"
python_scene=$(python3 - "$ROOT/examples/render-task.json" "$scene" "${SIZE%x*}" "${SIZE#*x}" "$SAMPLES" <<'PY'
import json, sys
task = json.load(open(sys.argv[1]))
cmd = task["commands"][0]["settings"]["cmd"]
script = cmd[cmd.index('"') + 1:cmd.rindex('"')]
script = script.replace("/tmp/flamenco-example/scene.blend", sys.argv[2])
script = script.replace("resolution_x = 64", "resolution_x = " + sys.argv[3]).replace("resolution_y = 48", "resolution_y = " + sys.argv[4])
script = script.replace("cycles.samples = 4", "cycles.samples = " + sys.argv[5])
print(script)
PY
)
"$BLENDER" --factory-startup -noaudio --background --python-exit-code 1 --python-expr "$python_scene" > /dev/null
printf '{"_id": "5eb000000000000000000777", "commands": [{"name": "blender_render", "settings": {"blender_cmd": "%s", "filepath": "%s", "render_output": "%s/frames/######", "format": "PNG", "frames": "1..3"}}]}' \
	"$BLENDER" "$scene" "$WORK" > "$WORK/render.json"
direct=("$BLENDER" --enable-autoexec -noaudio --background "$scene" --render-output "$WORK/frames/######" --render-format PNG --render-frame 1..3)
worker_dir "$WORK/w" 1
for run in $(seq "$RUNS"); do
	t0=$(date +%s%N); "${direct[@]}" > /dev/null; t1=$(date +%s%N)
	(cd "$WORK/w" && HOME="$WORK/w" "$WORK/flamenco-worker" --run-task "$WORK/render.json" > "$WORK/run.log" 2>&1) || { cat "$WORK/run.log"; exit 1; }
	t2=$(date +%s%N)
	echo "run $run: by hand $(( (t1 - t0) / 1000000 )) ms, through the worker $(( (t2 - t1) / 1000000 )) ms" >&2
	echo $(( (t1 - t0) / 1000 )) >> "$WORK/direct"
	echo $(( (t2 - t1) / 1000 )) >> "$WORK/worker"
done
d=$(median < "$WORK/direct"); w=$(median < "$WORK/worker")
printf 'render of 3 frames (%s, %s samples): by hand %.3f s, through the worker %.3f s (%+.1f %%)\n' \
	"$SIZE" "$SAMPLES" "$(echo "$d/1000000" | bc -l)" "$(echo "$w/1000000" | bc -l)" "$(echo "100*($w-$d)/$d" | bc -l)"
