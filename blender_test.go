package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// blenderTestJSON quotes s as a JSON string for building settings.
func blenderTestJSON(s string) string {
	b, _ := json.Marshal(s) // a string always encodes
	return string(b)
}

// blenderTestFile creates a file with the given contents and returns its path.
func blenderTestFile(t *testing.T, p, contents string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(contents), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// blenderTestArgv validates settings for a Blender command and returns the
// command line it would run (script stands in for exr_sequence_to_jpeg's
// temporary script path).
func blenderTestArgv(t *testing.T, command, settingsJSON, script string) ([]string, error) {
	t.Helper()
	c, finish := testCmdCtx(t, command, testEnv())
	defer finish()
	ctx := context.Background()
	s := testSettings(t, settingsJSON)
	switch command {
	case "blender_render":
		r, err := validateBlenderRender(ctx, c, s)
		if err != nil {
			return nil, err
		}
		r.overrideFile = c.findOverrideFile(r.filepath)
		return r.argv(), nil
	case "blender_render_progressive":
		p, err := validateBlenderProgressive(ctx, c, s)
		if err != nil {
			return nil, err
		}
		p.overrideFile = c.findOverrideFile(p.filepath)
		return p.argv(), nil
	case "blender_render_audio":
		a, err := validateBlenderAudio(ctx, c, s)
		if err != nil {
			return nil, err
		}
		return a.argv(), nil
	case "exr_sequence_to_jpeg":
		e, err := validateExrToJPEG(ctx, c, s)
		if err != nil {
			return nil, err
		}
		e.overrideFile = c.findOverrideFile(e.filepath)
		return e.argv(script), nil
	}
	t.Fatalf("no Blender command %q", command)
	return nil, nil
}

func TestBlenderArgv(t *testing.T) {
	dir := t.TempDir()
	exe := blenderTestFile(t, filepath.Join(dir, "bin", "blender"), "")
	cliCmd := blenderTestJSON(shellQuote(exe) + ` --with --cli="args for CLI"`)
	plainCmd := blenderTestJSON(exe)
	blendDir := t.TempDir() // no ".blend" in the name: no override file
	withOverride := blenderTestFile(t, filepath.Join(dir, "scenes", "thefile.blend"), "")
	override := blenderTestFile(t, filepath.Join(dir, "scenes", "thefile-overrides.py"), "import bpy\n")
	upper := blenderTestFile(t, filepath.Join(dir, "scenes", "Upper.BLEND"), "")
	upperOverride := blenderTestFile(t, filepath.Join(dir, "scenes", "Upper-overrides.py"), "")
	noOverride := blenderTestFile(t, filepath.Join(dir, "scenes", "lonely.blend"), "")
	output := filepath.Join(dir, "render", "out", "frame-######")
	base := func(blend string) []string {
		return []string{exe, "--enable-autoexec", "-noaudio", "--background", blend}
	}
	cli := []string{exe, "--with", "--cli=args for CLI", "--enable-autoexec", "-noaudio", "--background", blendDir}
	audioScript := "import bpy\n" +
		"bpy.context.scene.frame_start = 1\n" +
		"bpy.context.scene.frame_end = 47\n" +
		"bpy.ops.sound.mixdown(filepath=\"/tmp/output.flac\", codec='FLAC', container='FLAC', accuracy=128)\n" +
		"bpy.ops.wm.quit_blender()"

	tests := []struct {
		name, command, settings string
		want                    []string
	}{
		{"cli args", "blender_render",
			`{"blender_cmd": ` + cliCmd + `, "filepath": ` + blenderTestJSON(blendDir) + `, "frames": "1..2", "format": "JPEG", "chunk_size": 5}`,
			append(slices.Clone(cli), "--render-format", "JPEG", "--render-frame", "1..2")},
		{"OPEN_EXR is EXR on the CLI", "blender_render",
			`{"blender_cmd": ` + cliCmd + `, "filepath": ` + blenderTestJSON(blendDir) + `, "frames": "1..2", "format": "OPEN_EXR"}`,
			append(slices.Clone(cli), "--render-format", "EXR", "--render-frame", "1..2")},
		{"OPEN_EXR_MULTILAYER is MULTILAYER", "blender_render",
			`{"blender_cmd": ` + plainCmd + `, "filepath": ` + blenderTestJSON(blendDir) + `, "format": "OPEN_EXR_MULTILAYER"}`,
			append(base(blendDir), "--render-format", "MULTILAYER")},
		{"render_format is used without format", "blender_render",
			`{"blender_cmd": ` + plainCmd + `, "filepath": ` + blenderTestJSON(blendDir) + `, "format": null, "render_format": "OPEN_EXR"}`,
			append(base(blendDir), "--render-format", "EXR")},
		{"format wins over render_format", "blender_render",
			`{"blender_cmd": ` + plainCmd + `, "filepath": ` + blenderTestJSON(blendDir) + `, "format": "PNG", "render_format": "JPEG"}`,
			append(base(blendDir), "--render-format", "PNG")},
		{"python_expr goes before format and frames", "blender_render",
			`{"blender_cmd": ` + cliCmd + `, "filepath": ` + blenderTestJSON(blendDir) + `, "frames": "1..2", "format": "JPEG", "python_expr": "print(\"yay in 'quotes'\")"}`,
			append(slices.Clone(cli), "--python-expr", `print("yay in 'quotes'")`, "--render-format", "JPEG", "--render-frame", "1..2")},
		{"override file right after the blend file", "blender_render",
			`{"blender_cmd": ` + plainCmd + `, "filepath": ` + blenderTestJSON(withOverride) + `, "frames": "1..2", "python_expr": "pass"}`,
			append(base(withOverride), "--python-exit-code", "42", "--python", override, "--python-expr", "pass", "--render-frame", "1..2")},
		{"override file for an upper-case .BLEND", "blender_render",
			`{"blender_cmd": ` + plainCmd + `, "filepath": ` + blenderTestJSON(upper) + `}`,
			append(base(upper), "--python-exit-code", "42", "--python", upperOverride)},
		{"no override file next to the blend", "blender_render",
			`{"blender_cmd": ` + plainCmd + `, "filepath": ` + blenderTestJSON(noOverride) + `}`,
			base(noOverride)},
		{"render output", "blender_render",
			`{"blender_cmd": ` + plainCmd + `, "filepath": ` + blenderTestJSON(noOverride) + `, "render_output": ` + blenderTestJSON(output) + `, "frames": "3"}`,
			append(base(noOverride), "--render-output", output, "--render-frame", "3")},
		{"progressive", "blender_render_progressive",
			`{"blender_cmd": ` + cliCmd + `, "filepath": ` + blenderTestJSON(blendDir) + `, "render_output": ` + blenderTestJSON(output) + `, "frames": "1..2", "format": "OPEN_EXR",
			  "cycles_num_chunks": 400, "cycles_chunk_start": 223, "cycles_chunk_end": 311}`,
			append(slices.Clone(cli), "--render-output", output, "--render-format", "EXR", "--render-frame", "1..2",
				"--", "--cycles-resumable-num-chunks", "400", "--cycles-resumable-start-chunk", "223", "--cycles-resumable-end-chunk", "311")},
		{"audio", "blender_render_audio",
			`{"blender_cmd": ` + cliCmd + `, "filepath": ` + blenderTestJSON(withOverride) + `, "render_output": "/tmp/output.flac", "frame_start": 1, "frame_end": 47,
			  "frames": "1..47", "format": "PNG", "python_expr": "pass"}`,
			[]string{exe, "--with", "--cli=args for CLI", "--enable-autoexec", "-noaudio", "--background", withOverride,
				"--python-exit-code", "47", "--python-expr", audioScript}},
		{"audio without frame range", "blender_render_audio",
			`{"blender_cmd": ` + plainCmd + `, "filepath": ` + blenderTestJSON(blendDir) + `, "render_output": "/tmp/it's.flac", "frame_end": null}`,
			append(base(blendDir), "--python-exit-code", "47", "--python-expr",
				"import bpy\nbpy.ops.sound.mixdown(filepath=\"/tmp/it's.flac\", codec='FLAC', container='FLAC', accuracy=128)\nbpy.ops.wm.quit_blender()")},
		{"exr_glob", "exr_sequence_to_jpeg",
			`{"blender_cmd": ` + cliCmd + `, "filepath": ` + blenderTestJSON(blendDir) + `, "exr_glob": "/some/path/to/files-*.exr", "output_pattern": "preview-######"}`,
			append(slices.Clone(cli), "--python-exit-code", "32", "--python", "/tmp/the-script.py",
				"--", "--exr-glob", "/some/path/to/files-*.exr", "--output-pattern", "preview-######")},
		{"exr_directory", "exr_sequence_to_jpeg",
			`{"blender_cmd": ` + cliCmd + `, "filepath": ` + blenderTestJSON(blendDir) + `, "exr_directory": "/some/path/to/exr", "exr_glob": null}`,
			append(slices.Clone(cli), "--python-exit-code", "32", "--python", "/tmp/the-script.py",
				"--", "--exr-glob", "/some/path/to/exr/*.exr", "--output-pattern", "preview-######.jpg")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := blenderTestArgv(t, tc.command, tc.settings, "/tmp/the-script.py")
			if err != nil {
				t.Fatalf("%s: validation failed: %v", tc.command, err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("%s argv =\n  %q\nwant\n  %q", tc.command, got, tc.want)
			}
		})
	}
	if st, err := os.Stat(filepath.Dir(output)); err != nil || !st.IsDir() {
		t.Errorf("render_output's parent %s was not created during validation: %v", filepath.Dir(output), err)
	}
}

func TestBlenderValidationErrors(t *testing.T) {
	dir := t.TempDir()
	exe := blenderTestJSON(blenderTestFile(t, filepath.Join(dir, "blender"), ""))
	blend := blenderTestJSON(blenderTestFile(t, filepath.Join(dir, "scene.blend"), ""))
	aFile := blenderTestFile(t, filepath.Join(dir, "a-file"), "")
	missing := filepath.Join(dir, "missing.blend")
	ok := `"blender_cmd": ` + exe + `, "filepath": ` + blend
	chunks := `"cycles_num_chunks": 4, "cycles_chunk_start": 1, "cycles_chunk_end": 2`

	tests := []struct {
		name, command, settings, want string
	}{
		{"no blender_cmd", "blender_render", `{"filepath": ` + blend + `}`, `missing "blender_cmd"`},
		{"blender_cmd does not exist", "blender_render", `{"blender_cmd": "/does/not/exist/blender --factory-startup", "filepath": ` + blend + `}`, `blender_cmd "/does/not/exist/blender" does not exist`},
		{"blender_cmd not a string", "blender_render", `{"blender_cmd": 3, "filepath": ` + blend + `}`, `"blender_cmd" must be a string`},
		{"no filepath", "blender_render", `{"blender_cmd": ` + exe + `}`, `missing "filepath"`},
		{"filepath does not exist", "blender_render", `{"blender_cmd": ` + exe + `, "filepath": ` + blenderTestJSON(missing) + `}`, "filepath '" + missing + "' does not exist"},
		{"render_output not a string", "blender_render", `{` + ok + `, "render_output": 12}`, `"render_output" must be a string`},
		{"render_output dir cannot be created", "blender_render", `{` + ok + `, "render_output": ` + blenderTestJSON(filepath.Join(aFile, "sub", "frame-###")) + `}`, `"render_output": dir ` + filepath.Join(aFile, "sub") + ` cannot be created`},
		{"frames not a string", "blender_render", `{` + ok + `, "frames": 12}`, `"frames" must be a string`},
		{"format not a string", "blender_render", `{` + ok + `, "format": 12}`, `"format" must be a string`},
		{"render_format not a string", "blender_render", `{` + ok + `, "render_format": 12}`, `"render_format" must be a string`},
		{"python_expr not a string", "blender_render", `{` + ok + `, "python_expr": ["x"]}`, `"python_expr" must be a string`},
		{"obsolete cycles_chunk", "blender_render_progressive", `{` + ok + `, ` + chunks + `, "cycles_chunk": 3}`,
			`"cycles_chunk" is an obsolete setting. Recreate the job using Flamenco Server 2.2 or newer, or use an older Worker.`},
		{"cycles_chunk checked first", "blender_render_progressive", `{"cycles_chunk": null}`, `"cycles_chunk" is an obsolete setting`},
		{"zero chunks", "blender_render_progressive", `{` + ok + `, "cycles_num_chunks": 0, "cycles_chunk_start": 1, "cycles_chunk_end": 2}`, `"cycles_num_chunks" must be a positive integer`},
		{"negative chunk start", "blender_render_progressive", `{` + ok + `, "cycles_num_chunks": 4, "cycles_chunk_start": -1, "cycles_chunk_end": 2}`, `"cycles_chunk_start" must be a positive integer`},
		{"missing chunk end", "blender_render_progressive", `{` + ok + `, "cycles_num_chunks": 4, "cycles_chunk_start": 1}`, `missing "cycles_chunk_end"`},
		{"float chunk count", "blender_render_progressive", `{` + ok + `, "cycles_num_chunks": 4.0, "cycles_chunk_start": 1, "cycles_chunk_end": 2}`, `"cycles_num_chunks" must be an integer`},
		{"progressive checks blender_render first", "blender_render_progressive", `{` + chunks + `}`, `missing "blender_cmd"`},
		{"audio without render_output", "blender_render_audio", `{` + ok + `}`, `'render_output' is a required setting`},
		{"audio with empty render_output", "blender_render_audio", `{` + ok + `, "render_output": ""}`, `'render_output' is a required setting`},
		{"audio frame_start not an integer", "blender_render_audio", `{` + ok + `, "render_output": "/tmp/x.flac", "frame_start": "1"}`, `"frame_start" must be an integer`},
		{"neither exr_glob nor exr_directory", "exr_sequence_to_jpeg", `{` + ok + `}`, `"exr_glob" may not be empty`},
		{"empty exr_glob", "exr_sequence_to_jpeg", `{` + ok + `, "exr_glob": ""}`, `"exr_glob" may not be empty`},
		{"both exr_glob and exr_directory", "exr_sequence_to_jpeg", `{` + ok + `, "exr_glob": "/a/*.exr", "exr_directory": "/a"}`, `Just pass "exr_glob", do not use "exr_directory"`},
		{"empty output_pattern", "exr_sequence_to_jpeg", `{` + ok + `, "exr_glob": "/a/*.exr", "output_pattern": ""}`, `"output_pattern" may not be empty`},
		{"exr checks its own settings first", "exr_sequence_to_jpeg", `{}`, `"exr_glob" may not be empty`},
		{"exr checks blender settings", "exr_sequence_to_jpeg", `{"exr_glob": "/a/*.exr"}`, `missing "blender_cmd"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := validateCommand(t, tc.command, tc.settings, testEnv())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s(%s) error = %v, want it to contain %q", tc.command, tc.settings, err, tc.want)
			}
		})
	}
}

func TestBlenderFilepathGraceWait(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	exe := blenderTestFile(t, filepath.Join(dir, "blender"), "")
	settingsFor := func(blend string) string {
		return `{"blender_cmd": ` + blenderTestJSON(exe) + `, "filepath": ` + blenderTestJSON(blend) + `}`
	}

	t.Run("still missing after the wait", func(t *testing.T) {
		env := testEnv()
		env.fileWait = 200 * time.Millisecond
		start := time.Now()
		err := validateCommand(t, "blender_render", settingsFor(filepath.Join(dir, "never.blend")), env)
		if err == nil || !strings.Contains(err.Error(), "filepath") {
			t.Fatalf("validation error = %v, want one naming filepath", err)
		}
		if waited := time.Since(start); waited < env.fileWait {
			t.Errorf("gave up after %v, want a grace wait of %v", waited, env.fileWait)
		}
	})

	t.Run("appears during the wait", func(t *testing.T) {
		env := testEnv()
		env.fileWait = 300 * time.Millisecond
		late := filepath.Join(dir, "late.blend")
		created := make(chan error, 1)
		time.AfterFunc(10*time.Millisecond, func() { created <- os.WriteFile(late, nil, 0o644) })
		if err := validateCommand(t, "blender_render", settingsFor(late), env); err != nil {
			t.Errorf("validation error = %v, want the late blend file accepted", err)
		}
		if err := <-created; err != nil {
			t.Fatal(err)
		}
	})

	t.Run("abort during the wait", func(t *testing.T) {
		env := testEnv()
		env.fileWait = time.Hour
		c, finish := testCmdCtx(t, "blender_render", env)
		defer finish()
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		_, err := commandRegistry["blender_render"](ctx, c, testSettings(t, settingsFor(filepath.Join(dir, "never.blend"))))
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("validation error = %v, want the context's error", err)
		}
	})
}

func TestBlenderPIDFileChecked(t *testing.T) {
	dir := t.TempDir()
	exe := blenderTestFile(t, filepath.Join(dir, "blender"), "")
	env := testEnv()
	env.pidFile = blenderTestFile(t, filepath.Join(dir, "subprocess.pid"), strconv.Itoa(os.Getpid()))
	for _, command := range []string{"blender_render", "blender_render_progressive", "blender_render_audio", "exr_sequence_to_jpeg"} {
		t.Run(command, func(t *testing.T) {
			settings := `{"blender_cmd": ` + blenderTestJSON(exe) + `, "filepath": ` + blenderTestJSON(dir) + `, "render_output": "/tmp/x.flac",
				"exr_glob": "/a/*.exr", "cycles_num_chunks": 4, "cycles_chunk_start": 1, "cycles_chunk_end": 2}`
			err := validateCommand(t, command, settings, env)
			if err == nil || !strings.Contains(err.Error(), env.pidFile) {
				t.Errorf("%s validation error = %v, want the live PID file %s refused", command, err, env.pidFile)
			}
		})
	}
}

// blenderTestLine renders a parsed render line compactly for comparison.
func blenderTestLine(l renderLine, ok bool) string {
	if !ok {
		return "-"
	}
	s := fmt.Sprintf("fra=%d", l.frame)
	if l.hasRemaining {
		s += fmt.Sprintf(" remaining=%.2f", l.remainingSec)
	}
	s += fmt.Sprintf(" status=%q", l.status)
	if l.tiles > 0 {
		s += fmt.Sprintf(" tile=%d/%d", l.tile, l.tiles)
	}
	if l.samples > 0 {
		s += fmt.Sprintf(" sample=%d/%d", l.sample, l.samples)
	}
	return s
}

func TestParseRenderLine(t *testing.T) {
	tests := []struct{ line, want string }{
		// test_parse_render_line of the Python worker.
		{"Fra:10 Mem:17.52M (0.00M, Peak 33.47M) | Time:00:04.17 | Remaining:00:00.87 | Mem:1.42M, Peak:1.42M | Scene, RenderLayer | Path Tracing Tile 110/135",
			`fra=10 remaining=0.87 status="Path Tracing Tile 110/135" tile=110/135`},
		{"Fra:003 Mem:17.52G (0.00M, Peak 33G) | Time:03:00:04.17 | Remaining:44:00:00.87 | Mem:1.42M, Peak:1.42M | Séance, RenderLayer | Computing cosmic flöw 110/13005",
			`fra=3 remaining=158400.87 status="Computing cosmic flöw 110/13005"`},
		// Blender 3.4.1 Cycles, as printed on this machine.
		{"Fra:1 Mem:8.46M (Peak 10.20M) | Time:00:00.00 | Mem:0.00M, Peak:0.00M | Scene, ViewLayer | Synchronizing object | Cube",
			`fra=1 status="Cube"`},
		{"Fra:1 Mem:8.88M (Peak 10.20M) | Time:00:00.03 | Mem:0.00M, Peak:0.00M | Scene, ViewLayer | Updating Objects | Copying Transformations to device",
			`fra=1 status="Copying Transformations to device"`},
		{"Fra:2 Mem:9.49M (Peak 10.20M) | Time:00:00.00 | Remaining:00:00.00 | Mem:0.86M, Peak:0.86M | Scene, ViewLayer | Sample 1/4",
			`fra=2 remaining=0.00 status="Sample 1/4" sample=1/4`},
		{"Fra:3 Mem:9.54M (Peak 10.20M) | Time:00:00.00 | Mem:0.86M, Peak:0.86M | Scene, ViewLayer | Finished",
			`fra=3 status="Finished"`},
		// Blender 3.4.1 Eevee.
		{"Fra:1 Mem:10.21M (Peak 11.33M) | Time:00:01.00 | Syncing Cube",
			`fra=1 status="Syncing Cube"`},
		{"Fra:1 Mem:10.22M (Peak 11.33M) | Time:00:01.38 | Rendering 1 / 4 samples",
			`fra=1 status="Rendering 1 / 4 samples" sample=1/4`},
		// Blender 2.8x/2.9x Cycles and 4.x shapes.
		{"Fra:7 Mem:62.10M (0.00M, Peak 70.01M) | Time:00:12.41 | Remaining:01:02:03.50 | Mem:10.99M, Peak:11.01M | Scene, View Layer | Path Tracing Sample 3/128",
			`fra=7 remaining=3723.50 status="Path Tracing Sample 3/128" sample=3/128`},
		{"Fra:1 Mem:90.1M (0.00M, Peak 90.2M) | Time:00:02.00 | Remaining:00:10.00 | Mem:20.0M, Peak:20.0M | Scene, View Layer | Rendered 4/16 Tiles, Sample 32/64",
			`fra=1 remaining=10.00 status="Rendered 4/16 Tiles, Sample 32/64" tile=4/16 sample=32/64`},
		{"Fra:1 Mem:12.34M (Peak 56.78M) | Time:00:00.12 | Remaining:00:01.00 | Mem:1.2M, Peak:1.3M | Scene, ViewLayer | Sample 3/4",
			`fra=1 remaining=1.00 status="Sample 3/4" sample=3/4`},
		{"Fra:1 Mem:126.60M (Peak 126.62M) | Time:00:00.43 | Mem:0.00M, Peak:0.00M | Scene, ViewLayer | Rendering 1 / 64 samples",
			`fra=1 status="Rendering 1 / 64 samples" sample=1/64`},
		{"Fra:250 Mem:1.2G (Peak 2.5G) | Time:1:02:03.04 | Remaining:00:00.5", // no trailing space needed, one decimal
			`fra=250 remaining=0.50 status="Remaining:00:00.5"`},
		// A Blender 5.x-style log category prefix.
		{"render | Fra:4 Mem:8.46M (Peak 10.20M) | Time:00:00.10 | Mem:0.00M, Peak:0.00M | Scene, ViewLayer | Sample 2/8",
			`fra=4 status="Sample 2/8" sample=2/8`},
		{"00:01.234  render           | Fra:5 Mem:8.46M (Peak 10.20M) | Time:00:00.10 | Finished",
			`fra=5 status="Finished"`},
		// Frame lines without the usual parts still give the frame.
		{"Fra:12", `fra=12 status=""`},
		{"Fra:12 Mem:3M", `fra=12 status=""`},
		{"Fra:1 Mem:1M (Peak 2M) | Sample 9/4", `fra=1 status="Sample 9/4"`}, // nonsense counter ignored
		// Not render lines.
		{"", "-"},
		{"Fra:", "-"},
		{"Fra:x Mem:1M (Peak 2M)", "-"},
		{"Fra:1Mem:1M", "-"},
		{"Fra:99999999999999999999999 Mem:1M (Peak 2M)", "-"},
		{" Fra:1 Mem:1M (Peak 2M)", "-"},
		{"Saved: '/tmp/frames/000001.png'", "-"},
		{" Time: 00:00.19 (Saving: 00:00.13)", "-"},
		{"Read blend: /tmp/scene.blend", "-"},
		{"Blender quit", "-"},
	}
	for _, tc := range tests {
		info, ok := parseRenderLine(tc.line)
		if got := blenderTestLine(info, ok); got != tc.want {
			t.Errorf("parseRenderLine(%q) =\n  %s\nwant\n  %s", tc.line, got, tc.want)
		}
	}
}

// FuzzParseRenderLine checks that no input makes the parser panic or
// return counters that make no sense.
func FuzzParseRenderLine(f *testing.F) {
	for _, seed := range []string{
		"Fra:10 Mem:17.52M (0.00M, Peak 33.47M) | Time:00:04.17 | Remaining:00:00.87 | Mem:1.42M, Peak:1.42M | Scene, RenderLayer | Path Tracing Tile 110/135",
		"Fra:1 Mem:8.46M (Peak 10.20M) | Time:00:00.00 | Mem:0.00M, Peak:0.00M | Scene, ViewLayer | Sample 1/4",
		"render | Fra:1 Mem:1M (Peak 1M) | Time:99999999999999999999999:00:00.00 | Rendering 0 / 0 samples",
		"Fra:1 (Peak ) | Tile 9/8 | Sample 0/0 | Time:::. | Remaining:00:00.",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, line string) {
		info, ok := parseRenderLine(line)
		if !ok {
			return
		}
		if info.frame < 0 || info.samples < 0 || info.sample > info.samples || info.tile > info.tiles {
			t.Errorf("parseRenderLine(%q) = %+v", line, info)
		}
		if f, ok := info.frameFraction(); ok && (f < 0 || f > 1) {
			t.Errorf("parseRenderLine(%q) frame fraction %v", line, f)
		}
	})
}

func TestParseFrameSpec(t *testing.T) {
	tests := []struct {
		spec  string
		want  string // ranges, "-" for unparseable
		count int
	}{
		{"5", "5..5", 1},
		{"1..3", "1..3", 3},
		{"1-3", "1..3", 3},
		{"1,3,5..7", "1..1 3..3 5..7", 5},
		{" 10..20 , 15..25,30 ", "10..25 30..30", 17},
		{"4,3,2,1", "1..4", 4},
		{"0..0", "0..0", 1},
		{"007..010", "7..10", 4},
		{"", "-", 0},
		{"  ", "-", 0},
		{"-3", "-", 0},
		{"+3", "-", 0},
		{"3..1", "-", 0},
		{"1..", "-", 0},
		{"..3", "-", 0},
		{"1,,2", "-", 0},
		{"1...3", "-", 0},
		{"a..b", "-", 0},
		{"1 2", "-", 0},
		{"1..99999999999999999999", "-", 0},
	}
	for _, tc := range tests {
		spec, ok := parseFrameSpec(tc.spec)
		got := "-"
		if ok {
			var parts []string
			for _, r := range spec {
				parts = append(parts, fmt.Sprintf("%d..%d", r.first, r.last))
			}
			got = strings.Join(parts, " ")
		}
		if got != tc.want || spec.count() != tc.count {
			t.Errorf("parseFrameSpec(%q) = %s (%d frames), want %s (%d frames)", tc.spec, got, spec.count(), tc.want, tc.count)
		}
	}
}

func FuzzParseFrameSpec(f *testing.F) {
	for _, seed := range []string{"1..3", "1-3", "1,3,5..7", "-3", "1073741824", "0..1073741824,5"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		spec, ok := parseFrameSpec(s)
		if !ok {
			return
		}
		for i, r := range spec {
			if r.first > r.last || (i > 0 && r.first <= spec[i-1].last+1) {
				t.Fatalf("parseFrameSpec(%q) = %v: not sorted and merged", s, spec)
			}
		}
		if spec.count() <= 0 {
			t.Fatalf("parseFrameSpec(%q) counts %d frames", s, spec.count())
		}
	})
}

func TestRenderTrackerProgress(t *testing.T) {
	c, finish := testCmdCtx(t, "blender_render", testEnv())
	clock := &fakeClock{t: time.Unix(1700000000, 0)}
	tr := newRenderTracker(c, "1..3")
	tr.now = clock.now
	c.timing.checkpoint("starting blender")
	fra := func(frame int, rest string) string {
		return fmt.Sprintf("Fra:%d Mem:9.49M (Peak 10.20M) | Time:00:00.00 | %sMem:0.86M, Peak:0.86M | Scene, ViewLayer | ", frame, rest)
	}
	steps := []struct {
		advance time.Duration
		line    string
	}{
		{0, "Blender 3.4.1"},
		{0, "Read blend: /tmp/scene.blend"},
		{0, fra(1, "") + "Synchronizing object | Cube"},
		{0, fra(1, "Remaining:00:03.00 | ") + "Sample 1/4"}, // throttled: too soon
		{3 * time.Second, fra(1, "Remaining:00:02.00 | ") + "Sample 2/4"},
		{0, fra(1, "") + "Sample 4/4"},
		{0, fra(1, "") + "Finished"},
		{0, "Saved: '/out/000001.png'"},
		{0, " Time: 00:00.19 (Saving: 00:00.13)"},
		{3 * time.Second, fra(2, "") + "Sample 2/4"},
		{0, "Warning: Unable to open '/textures/wood.png'"},
		{0, "Saved: '/out/000002.png'"},
		{0, fra(3, "") + "Sample 1/4"}, // throttled
		{0, "Warning: Path '/textures/stone.png' not found"},
		{0, fra(3, "") + "Sample 4/4"},
		{0, "Saved: '/out/000003.png'"},
	}
	for _, s := range steps {
		clock.set(clock.now().Add(s.advance))
		tr.line(s.line)
	}
	c.timing.checkpoint("")
	res := finish()

	wantProgress := []int{0, 8, 16, 33, 50, 66, 75, 100} // every update carries a percentage, 0 at first
	if !reflect.DeepEqual(res.progress, wantProgress) {
		t.Errorf("progress = %v, want %v", res.progress, wantProgress)
	}
	wantActivities := []string{
		"Rendering frame 1 (1 of 3)",
		"Rendering frame 1 (1 of 3), sample 2/4, 00:02 remaining",
		"Rendering frame 2 (2 of 3), sample 2/4",
		"Warning: Unable to open '/textures/wood.png'",
		"Warning: Path '/textures/stone.png' not found",
	}
	if !reflect.DeepEqual(res.activities, wantActivities) {
		t.Errorf("activities =\n  %q\nwant\n  %q", res.activities, wantActivities)
	}
	wantOutputs := []string{"/out/000001.png", "/out/000002.png", "/out/000003.png"}
	if !reflect.DeepEqual(res.outputs, wantOutputs) {
		t.Errorf("outputs = %q, want %q", res.outputs, wantOutputs)
	}
	for _, name := range []string{"starting blender", "loading blendfile", "rendering"} {
		if _, ok := c.timing.values[name]; !ok {
			t.Errorf("timing has no %q interval: %v", name, c.timing.values)
		}
	}
}

func TestRenderTrackerUnknownFrames(t *testing.T) {
	for _, frames := range []string{"", "+1", "not frames"} {
		t.Run(frames, func(t *testing.T) {
			c, finish := testCmdCtx(t, "blender_render", testEnv())
			tr := newRenderTracker(c, frames)
			tr.actEvery = 0 // every line may set the activity
			for _, line := range []string{
				"Fra:5 Mem:1M (Peak 1M) | Time:00:00.00 | Sample 4/4",
				"Saved: '/out/5.png'",
				"Fra:6 Mem:1M (Peak 1M) | Time:00:00.00 | Remaining:01:00:00.40 | Sample 2/4",
			} {
				tr.line(line)
			}
			res := finish()
			if slices.ContainsFunc(res.progress, func(p int) bool { return p != 0 }) {
				t.Errorf("progress = %v, want none without a frame count", res.progress)
			}
			want := "Rendering frame 6 (1 done), sample 2/4, 1:00:00 remaining"
			if n := len(res.activities); n == 0 || res.activities[n-1] != want {
				t.Errorf("activities = %q, want the last to be %q", res.activities, want)
			}
		})
	}
}

func TestRenderTrackerNeverGoesBack(t *testing.T) {
	c, finish := testCmdCtx(t, "blender_render", testEnv())
	tr := newRenderTracker(c, "1")
	// Two view layers: the sample counter starts over for the second.
	for _, line := range []string{
		"Fra:1 Mem:1M (Peak 1M) | Time:00:00.00 | Scene, ViewLayer | Sample 2/4",
		"Fra:1 Mem:1M (Peak 1M) | Time:00:00.00 | Scene, ViewLayer | Sample 4/4",
		"Fra:1 Mem:1M (Peak 1M) | Time:00:00.00 | Scene, Other | Sample 1/4",
		"Fra:1 Mem:1M (Peak 1M) | Time:00:00.00 | Scene, Other | Sample 4/4",
	} {
		tr.line(line)
	}
	res := finish()
	if want := []int{50, 100}; !reflect.DeepEqual(res.progress, want) {
		t.Errorf("progress = %v, want %v", res.progress, want)
	}
}

// TestPythonQuote checks the Python literals that strconv.Quote writes
// into the Blender scripts, and with python3 (where it is installed) that
// they evaluate to the same strings.
func TestPythonQuote(t *testing.T) {
	tests := []struct{ in, want string }{
		{"/tmp/output.flac", `"/tmp/output.flac"`},
		{"it's", `"it's"`},
		{`both ' and "`, `"both ' and \""`},
		{`C:\out\x.flac`, `"C:\\out\\x.flac"`},
		{"tab\there\nnew\x01", `"tab\there\nnew\x01"`},
		{"flöw", `"flöw"`},
		{"\a\b\f\v\x7f\u2028\U0001F600", `"\a\b\f\v\x7f\u2028😀"`},
	}
	script := "import sys\n"
	for _, tc := range tests {
		if got := strconv.Quote(tc.in); got != tc.want {
			t.Errorf("strconv.Quote(%q) = %s, want %s", tc.in, got, tc.want)
		}
		script += "sys.stdout.buffer.write(" + strconv.Quote(tc.in) + ".encode() + b'\\0')\n"
	}
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skipf("python3 not found: %v", err)
	}
	out, err := exec.Command(python, "-c", script).Output()
	if err != nil {
		t.Fatalf("python3: %v", err)
	}
	got := strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00")
	for i, tc := range tests {
		if i >= len(got) || got[i] != tc.in {
			t.Errorf("Python evaluates %s to %q, want %q", tc.want, got[min(i, len(got)-1)], tc.in)
		}
	}
}

// blenderTestFakeBlender is a shell script standing in for Blender: it
// prints its arguments, its environment and the first line of any
// --python script, then the file $FAKE_BLENDER_OUTPUT, and exits
// $FAKE_BLENDER_EXIT.
const blenderTestFakeBlender = `#!/bin/sh
prev=
for a in "$@"; do
	printf 'ARG:%s\n' "$a"
	if [ "$prev" = "--python" ]; then
		printf 'SCRIPT:%s\n' "$a"
		head -n 1 "$a"
	fi
	prev=$a
done
env | sed 's/^/ENV:/'
cat "$FAKE_BLENDER_OUTPUT"
exit ${FAKE_BLENDER_EXIT:-0}
`

// blenderTestSubprocessLines returns the subprocess output lines of a run.
func blenderTestSubprocessLines(res cmdResult) []string {
	var out []string
	for _, l := range res.logs {
		if strings.HasPrefix(l, "pid=") {
			if _, line, ok := strings.Cut(l, " > "); ok {
				out = append(out, line)
			}
		}
	}
	return out
}

func TestBlenderFakeRun(t *testing.T) {
	dir := t.TempDir()
	exe := blenderTestFile(t, filepath.Join(dir, "fake-blender"), blenderTestFakeBlender)
	blend := blenderTestFile(t, filepath.Join(dir, "shot.blend"), "")
	override := blenderTestFile(t, filepath.Join(dir, "shot-overrides.py"), "import bpy\nbpy.context.scene.cycles.samples = 2\n")
	t.Setenv("LD_LIBRARY_PATH", "/should/not/reach/blender")
	t.Setenv("FLAMENCO_BLENDER_TEST", "passed-on")
	t.Setenv("FAKE_BLENDER_OUTPUT", blenderTestFile(t, filepath.Join(dir, "output.txt"), "Read blend: "+blend+"\n"+
		"Fra:1 Mem:8.46M (Peak 10.20M) | Time:00:00.00 | Remaining:00:01.00 | Mem:0.00M, Peak:0.00M | Scene, ViewLayer | Sample 1/2\n"+
		"Fra:1 Mem:8.46M (Peak 10.20M) | Time:00:00.00 | Mem:0.00M, Peak:0.00M | Scene, ViewLayer | Finished\n"+
		"Saved: '"+dir+"/frames/000001.png'\n"+
		"Fra:2 Mem:8.46M (Peak 10.20M) | Time:00:00.00 | Mem:0.00M, Peak:0.00M | Scene, ViewLayer | Sample 1/2\n"+
		"Saved: '"+dir+"/frames/000002.png'\n"))

	t.Run("blender_render", func(t *testing.T) {
		settings := `{"blender_cmd": ` + blenderTestJSON(exe+" --factory-startup") + `, "filepath": ` + blenderTestJSON(blend) + `,
			"render_output": ` + blenderTestJSON(dir+"/frames/######") + `, "frames": "1..2", "format": "PNG", "python_expr": "print('hi')"}`
		res := runTestCommand(t, "blender_render", settings, testEnv())
		if !res.ok {
			t.Fatalf("blender_render failed:\n%s", res.logText())
		}
		lines := blenderTestSubprocessLines(res)
		var args, env []string
		for _, l := range lines {
			if a, ok := strings.CutPrefix(l, "ARG:"); ok {
				args = append(args, a)
			}
			if e, ok := strings.CutPrefix(l, "ENV:"); ok {
				env = append(env, e)
			}
		}
		wantArgs := []string{"--factory-startup", "--enable-autoexec", "-noaudio", "--background", blend,
			"--python-exit-code", "42", "--python", override, "--python-expr", "print('hi')",
			"--render-output", dir + "/frames/######", "--render-format", "PNG", "--render-frame", "1..2"}
		if !reflect.DeepEqual(args, wantArgs) {
			t.Errorf("Blender got arguments\n  %q\nwant\n  %q", args, wantArgs)
		}
		if !slices.Contains(env, "FLAMENCO_BLENDER_TEST=passed-on") {
			t.Errorf("the worker's environment did not reach Blender: %q", env)
		}
		for _, e := range env {
			if strings.HasPrefix(e, "LD_LIBRARY_PATH=") {
				t.Errorf("Blender's environment has %s", e)
			}
		}
		// The override's contents follow on the lines after the last one.
		for _, want := range []string{"blender_render: Override file found in " + override, "blender_render: Override file contains:"} {
			if !slices.Contains(res.logs, want) {
				t.Errorf("log has no line %q:\n%s", want, res.logText())
			}
		}
		wantOutputs := []string{dir + "/frames/000001.png", dir + "/frames/000002.png"}
		if !reflect.DeepEqual(res.outputs, wantOutputs) {
			t.Errorf("outputs = %q, want %q", res.outputs, wantOutputs)
		}
		if want := []int{0, 25, 50, 75, 100}; !reflect.DeepEqual(res.progress, want) {
			t.Errorf("progress = %v, want %v", res.progress, want)
		}
		wantActs := []string{"starting blender_render", "Starting Blender", "Rendering frame 1 (1 of 2), sample 1/2, 00:01 remaining", "finished blender_render"}
		if acts := res.activities; len(acts) == 0 || !reflect.DeepEqual(acts[1:], wantActs) { // [0] is the initial ""
			t.Errorf("activities = %q, want %q", res.activities, wantActs)
		}
	})

	t.Run("exr_sequence_to_jpeg script", func(t *testing.T) {
		settings := `{"blender_cmd": ` + blenderTestJSON(exe) + `, "filepath": ` + blenderTestJSON(blend) + `, "exr_glob": "/x/*.exr"}`
		res := runTestCommand(t, "exr_sequence_to_jpeg", settings, testEnv())
		if !res.ok {
			t.Fatalf("exr_sequence_to_jpeg failed:\n%s", res.logText())
		}
		lines := blenderTestSubprocessLines(res)
		var script string
		for i, l := range lines {
			if p, ok := strings.CutPrefix(l, "SCRIPT:"); ok && p != override {
				script = p
				firstLine, _, _ := strings.Cut(exrSequenceToJPEGScript, "\n")
				if i+1 >= len(lines) || lines[i+1] != firstLine {
					t.Errorf("script %s does not hold the bundled script: %q", p, lines[i+1:])
				}
			}
		}
		if script == "" {
			t.Fatalf("no --python script passed:\n%s", res.logText())
		}
		if _, err := os.Stat(script); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("temporary script %s still exists after the command (%v)", script, err)
		}
	})

	t.Run("failing blender", func(t *testing.T) {
		t.Setenv("FAKE_BLENDER_EXIT", "3")
		settings := `{"blender_cmd": ` + blenderTestJSON(exe) + `, "filepath": ` + blenderTestJSON(blend) + `}`
		res := runTestCommand(t, "blender_render", settings, testEnv())
		if res.ok {
			t.Fatalf("blender_render succeeded with Blender exiting 3")
		}
		if len(res.logsContaining("failed with status 3")) == 0 {
			t.Errorf("log does not say Blender failed with status 3:\n%s", res.logText())
		}
	})
}

// blenderTestExecutable finds Blender, skipping the test where it is
// missing unless CI=true.
func blenderTestExecutable(t *testing.T) string {
	t.Helper()
	exe, err := exec.LookPath("blender")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("blender is needed for this test: %v", err)
		}
		t.Skipf("blender not found: %v", err)
	}
	abs, err := filepath.Abs(exe)
	if err != nil {
		t.Fatal(err)
	}
	return abs
}

// blenderTestSceneScript builds a tiny Cycles scene (64×48 px, 4 samples,
// no denoising, frames 1-3, PNG) and saves it where %s says.
const blenderTestSceneScript = `
import bpy, bmesh
bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene
scene.render.engine = 'CYCLES'
scene.cycles.device = 'CPU'
scene.cycles.samples = 4
scene.cycles.use_denoising = False
scene.render.resolution_x = 64
scene.render.resolution_y = 48
scene.render.resolution_percentage = 100
scene.render.image_settings.file_format = 'PNG'
scene.frame_start = 1
scene.frame_end = 3
mesh = bpy.data.meshes.new('Cube')
bm = bmesh.new()
bmesh.ops.create_cube(bm, size=2.0)
bm.to_mesh(mesh)
bm.free()
cube = bpy.data.objects.new('Cube', mesh)
scene.collection.objects.link(cube)
cube.keyframe_insert('rotation_euler', frame=1)
cube.rotation_euler = (0, 0, 1.0)
cube.keyframe_insert('rotation_euler', frame=3)
light = bpy.data.objects.new('Light', bpy.data.lights.new('Light', 'POINT'))
light.location = (4, -4, 6)
light.data.energy = 1000
scene.collection.objects.link(light)
cam = bpy.data.objects.new('Camera', bpy.data.cameras.new('Camera'))
cam.location = (7, -7, 5)
cam.rotation_euler = (1.1, 0, 0.785)
scene.collection.objects.link(cam)
scene.camera = cam
bpy.ops.wm.save_as_mainfile(filepath=%s)
`

// blenderTestScene generates the test scene with Blender itself.
func blenderTestScene(t *testing.T, exe, dir string) string {
	t.Helper()
	blend := filepath.Join(dir, "scene.blend")
	script := fmt.Sprintf(blenderTestSceneScript, strconv.Quote(blend))
	cmd := exec.Command(exe, "--factory-startup", "-noaudio", "--background", "--python-exit-code", "1", "--python-expr", script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("generating the test scene: %v\n%s", err, out)
	}
	if _, err := os.Stat(blend); err != nil {
		t.Fatalf("Blender did not save the test scene: %v\n%s", err, out)
	}
	return blend
}

// blenderTestFileStarts checks that path exists and begins with magic.
func blenderTestFileStarts(t *testing.T, path string, magic []byte) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Errorf("expected output file: %v", err)
		return
	}
	if !bytes.HasPrefix(data, magic) {
		t.Errorf("%s starts with %q, want %q", path, data[:min(len(data), 8)], magic)
	}
}

// TestBlenderRealRender runs the commands with the real Blender on one
// generated scene.
func TestBlenderRealRender(t *testing.T) {
	t.Parallel()
	exe := blenderTestExecutable(t)
	dir := t.TempDir()
	blend := blenderTestScene(t, exe, dir)
	common := `"blender_cmd": ` + blenderTestJSON(exe) + `, "filepath": ` + blenderTestJSON(blend)

	t.Run("blender_render", func(t *testing.T) {
		t.Parallel()
		env := testEnv()
		env.pidFile = filepath.Join(dir, "subprocess.pid")
		res := runTestCommand(t, "blender_render", `{`+common+`, "frames": "1..3", "format": "PNG",
			"render_output": `+blenderTestJSON(dir+"/frames/######")+`}`, env)
		if !res.ok {
			t.Fatalf("blender_render failed:\n%s", res.logText())
		}
		var want []string
		for f := 1; f <= 3; f++ {
			p := filepath.Join(dir, "frames", fmt.Sprintf("%06d.png", f))
			want = append(want, p)
			blenderTestFileStarts(t, p, []byte("\x89PNG"))
		}
		if !reflect.DeepEqual(res.outputs, want) {
			t.Errorf("outputs = %q, want %q", res.outputs, want)
		}
		if n := len(res.progress); n == 0 || res.progress[n-1] != 100 ||
			!slices.ContainsFunc(res.progress, func(p int) bool { return p > 0 && p < 100 }) {
			t.Errorf("progress = %v, want intermediate values up to 100", res.progress)
		}
		if !slices.IsSorted(res.progress) {
			t.Errorf("progress = %v went backwards", res.progress)
		}
		if len(res.logsContaining("> Fra:")) == 0 {
			t.Errorf("log has no Fra: lines:\n%s", res.logText())
		}
		if !slices.ContainsFunc(res.activities, func(a string) bool { return strings.HasPrefix(a, "Rendering frame ") }) {
			t.Errorf("activities = %q, want render progress", res.activities)
		}
		timing := res.logsContaining("command timing information")
		if len(timing) != 1 || !strings.Contains(timing[0], `"loading blendfile"`) || !strings.Contains(timing[0], `"rendering"`) {
			t.Errorf("timing log = %q, want loading and rendering intervals", timing)
		}
		if _, err := os.Stat(env.pidFile); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("PID file left behind: %v", err)
		}
	})

	t.Run("exr_sequence_to_jpeg", func(t *testing.T) {
		t.Parallel()
		exrDir := filepath.Join(dir, "exr")
		res := runTestCommand(t, "blender_render", `{`+common+`, "frames": "1..2", "format": "OPEN_EXR",
			"render_output": `+blenderTestJSON(exrDir+"/frame-######")+`}`, testEnv())
		if !res.ok {
			t.Fatalf("rendering EXRs failed:\n%s", res.logText())
		}
		res = runTestCommand(t, "exr_sequence_to_jpeg", `{`+common+`, "exr_glob": `+blenderTestJSON(exrDir+"/frame-*.exr")+`,
			"output_pattern": "preview-######.jpg"}`, testEnv())
		if !res.ok {
			t.Fatalf("exr_sequence_to_jpeg failed:\n%s", res.logText())
		}
		for f := 1; f <= 2; f++ {
			blenderTestFileStarts(t, filepath.Join(exrDir, fmt.Sprintf("preview-%06d.jpg", f)), []byte{0xff, 0xd8, 0xff})
		}
		if len(res.outputs) != 2 {
			t.Errorf("outputs = %q, want the two previews", res.outputs)
		}
	})

	t.Run("blender_render_audio", func(t *testing.T) {
		t.Parallel()
		flac := filepath.Join(dir, "audio", "mix.flac")
		res := runTestCommand(t, "blender_render_audio", `{`+common+`, "render_output": `+blenderTestJSON(flac)+`,
			"frame_start": 1, "frame_end": 3}`, testEnv())
		if !res.ok {
			t.Fatalf("blender_render_audio failed:\n%s", res.logText())
		}
		blenderTestFileStarts(t, flac, []byte("fLaC"))
	})
}

// FuzzRenderTracker feeds arbitrary output to the tracker: it must not
// panic, and progress must stay between 0 and 100 and never go back.
func FuzzRenderTracker(f *testing.F) {
	f.Add("1..3", "Fra:1 Mem:1M (Peak 1M) | Sample 1/4\nSaved: 'x'\nFra:2 Mem:1M (Peak 1M) | Rendering 3 / 4 samples\nFra:9 | Tile 1/2, Sample 2/2")
	f.Add("", "Saved: ''\nFra:0\nWarning: Path '' not found\nRead blend: x")
	f.Fuzz(func(t *testing.T, frames, output string) {
		c, finish := testCmdCtx(t, "blender_render", testEnv())
		tr := newRenderTracker(c, frames)
		for _, line := range strings.Split(output, "\n") {
			tr.line(line)
		}
		res := finish()
		if !slices.IsSorted(res.progress) || slices.ContainsFunc(res.progress, func(p int) bool { return p < 0 || p > 100 }) {
			t.Errorf("frames %q, output %q: progress %v", frames, output, res.progress)
		}
	})
}

// TestExampleRenderTask runs the README's render example as a user would,
// in a worker process of its own.
func TestExampleRenderTask(t *testing.T) {
	t.Parallel()
	blenderTestExecutable(t)
	if _, err := os.Stat("/usr/bin/blender"); err != nil {
		t.Skip("the example uses /usr/bin/blender (Debian's package)")
	}
	os.RemoveAll("/tmp/flamenco-example")
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(os.Args[0], "--run-task", filepath.Join(startDir, "examples/render-task.json"))
	cmd.Dir, cmd.Stdout, cmd.Stderr = t.TempDir(), &stdout, &stderr
	cmd.Env = append(os.Environ(), "FW_TEST_WORKER=1")
	if err := cmd.Run(); err != nil {
		t.Fatalf("%v; stdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	for _, frame := range []string{"000001.png", "000002.png", "000003.png"} {
		if _, err := os.Stat("/tmp/flamenco-example/frames/" + frame); err != nil {
			t.Errorf("frame %s not rendered: %v", frame, err)
		}
		if !strings.Contains(stdout.String(), "output produced: /tmp/flamenco-example/frames/"+frame) {
			t.Errorf("no output-produced line for %s", frame)
		}
	}
}
