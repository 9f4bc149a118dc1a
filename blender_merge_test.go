package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestMergeValidation(t *testing.T) {
	dir := t.TempDir()
	in1, in2 := filepath.Join(dir, "in1.exr"), filepath.Join(dir, "in2.exr")
	writeFile(t, in1, "")
	writeFile(t, in2, "")
	sh, _ := exec.LookPath("sh")
	base := func(extra string) string {
		return fmt.Sprintf(`{"blender_cmd": %q, "input1": %q, "input2": %q, "output": %q, "weight1": 1, "weight2": 2%s}`,
			sh, in1, in2, dir+"/out-##.exr", extra)
	}
	cases := []struct {
		command, settings, want string
	}{
		{"merge_progressive_renders", `{"blender_cmd": "/no/blender", "input1": "a", "input2": "b", "output": "c", "weight1": 1, "weight2": 1}`, "blender_cmd \"/no/blender\" does not exist"},
		{"merge_progressive_renders", strings.Replace(base(""), in1, dir+"/none.exr", 1), "Input 1 '" + dir + "/none.exr' does not exist"},
		{"merge_progressive_renders", strings.Replace(base(""), in2, dir+`/x\".exr`, 1), "Double quotes are not allowed"},
		{"merge_progressive_renders", strings.Replace(base(""), `"weight1": 1`, `"weight1": 1.5`, 1), `"weight1" must be an integer`},
		{"merge_progressive_renders", strings.Replace(base(""), `, "weight2": 2`, ``, 1), `missing "weight2"`},
		{"merge_progressive_render_sequence", strings.Replace(base(`, "frame_start": 1, "frame_end": 3`), "out-##", "out-#", 1), `at least two "##"`},
		{"merge_progressive_render_sequence", base(`, "frame_start": 1`), `missing "frame_end"`},
	}
	for _, c := range cases {
		err := validateCommand(t, c.command, c.settings, testEnv())
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s %s:\n err = %v, want it to contain %q", c.command, c.settings, err, c.want)
		}
	}
	if err := validateCommand(t, "merge_progressive_renders", base(""), testEnv()); err != nil {
		t.Errorf("valid settings: %v", err)
	}
}

func TestMergeArgvAndScript(t *testing.T) {
	m := &exrMerge{blender: []string{"/opt/blender", "--factory-startup"}, input1: "/r/it's €.exr", input2: "/r/b.exr", weight1: 20, weight2: 100, output: "/r/out.exr"}
	argv := m.argv("/tmp/x/merged")
	want := []string{"/opt/blender", "--factory-startup", "--factory-startup", "--enable-autoexec", "-noaudio", "--background", "--python-exit-code", "47", "--python-expr"}
	if strings.Join(argv[:len(want)], " ") != strings.Join(want, " ") || len(argv) != len(want)+1 {
		t.Errorf("argv = %q", argv)
	}
	script := argv[len(argv)-1]
	for _, s := range []string{"\ndef main(", "\nmain(\"/r/it's €.exr\", \"/r/b.exr\", 20, 100, \"/tmp/x/merged\", False, 1, 1)\n"} {
		if !strings.Contains(script, s) {
			t.Errorf("script lacks %s", s)
		}
	}
}

// mergeTestEXRs writes 32×24 single-colour EXRs with one Blender run.
func mergeTestEXRs(t *testing.T, exe string, colours map[string][4]float64) {
	t.Helper()
	var b strings.Builder
	b.WriteString("import bpy, os\n")
	for path, c := range colours {
		fmt.Fprintf(&b, "os.makedirs(os.path.dirname(%[1]s), exist_ok=True)\n"+
			"img = bpy.data.images.new('x', 32, 24, alpha=True, float_buffer=True)\n"+
			"img.pixels = [%g, %g, %g, %g] * (32 * 24)\n"+
			"img.filepath_raw = %[1]s\nimg.file_format = 'OPEN_EXR'\nimg.save()\n",
			strconv.Quote(path), c[0], c[1], c[2], c[3])
	}
	out, err := exec.Command(exe, "--factory-startup", "-noaudio", "--background", "--python-exit-code", "1", "--python-expr", b.String()).CombinedOutput()
	if err != nil {
		t.Fatalf("writing test EXRs: %v\n%s", err, out)
	}
}

// mergeTestPixels reads the first pixel of each image with one Blender run.
func mergeTestPixels(t *testing.T, exe string, paths ...string) [][4]float64 {
	t.Helper()
	var b strings.Builder
	b.WriteString("import bpy\n")
	for _, p := range paths {
		fmt.Fprintf(&b, "print('PIXEL', *bpy.data.images.load(%s).pixels[0:4])\n", strconv.Quote(p))
	}
	out, err := exec.Command(exe, "--factory-startup", "-noaudio", "--background", "--python-exit-code", "1", "--python-expr", b.String()).CombinedOutput()
	if err != nil {
		t.Fatalf("reading pixels: %v\n%s", err, out)
	}
	var pixels [][4]float64
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) == 5 && f[0] == "PIXEL" {
			var px [4]float64
			for i := range px {
				px[i], _ = strconv.ParseFloat(f[i+1], 64)
			}
			pixels = append(pixels, px)
		}
	}
	if len(pixels) != len(paths) {
		t.Fatalf("read %d pixels of %d images:\n%s", len(pixels), len(paths), out)
	}
	return pixels
}

func TestMergeRealBlender(t *testing.T) {
	t.Parallel()
	exe := blenderTestExecutable(t)
	dir := t.TempDir()
	a, b := [4]float64{0.2, 0.4, 0.6, 1}, [4]float64{1, 0.8, 0, 0.5}
	in1, in2 := filepath.Join(dir, "in1.exr"), filepath.Join(dir, "in2.exr")
	seq := filepath.Join(dir, "seq")
	fixtures := map[string][4]float64{in1: a, in2: b}
	for f := 3; f <= 5; f++ {
		fixtures[filepath.Join(seq, fmt.Sprintf("s1-%06d.exr", f))] = a
		fixtures[filepath.Join(seq, fmt.Sprintf("s2-%06d.exr", f))] = b
	}
	mergeTestEXRs(t, exe, fixtures)

	t.Run("single", func(t *testing.T) {
		t.Parallel()
		out := filepath.Join(dir, "merged", "out.exr")
		res := runTestCommand(t, "merge_progressive_renders", fmt.Sprintf(
			`{"blender_cmd": %q, "input1": %q, "input2": %q, "output": %q, "weight1": 20, "weight2": 100}`, exe, in1, in2, out), testEnv())
		if !res.ok {
			t.Fatalf("merge failed:\n%s", res.logText())
		}
		blenderTestFileStarts(t, out, []byte{0x76, 0x2f, 0x31, 0x01})
		// Compare with the inputs as Blender reads them back (colour
		// management may have changed the values written).
		px := mergeTestPixels(t, exe, in1, in2, out)
		pa, pb, got := px[0], px[1], px[2]
		for i := range got {
			want := (pa[i]*20 + pb[i]*100) / 120
			if d := got[i] - want; d > 0.002 || d < -0.002 {
				t.Errorf("channel %d = %.4f, want the weighted average %.4f", i, got[i], want)
			}
		}
		if len(res.outputs) != 1 || res.outputs[0] != out {
			t.Errorf("outputs = %v", res.outputs)
		}
		if entries, _ := os.ReadDir(filepath.Dir(out)); len(entries) != 1 {
			t.Errorf("temporary files left next to the output: %v", entries)
		}
	})

	t.Run("sequence", func(t *testing.T) {
		t.Parallel()
		out := filepath.Join(seq, "merged", "merged-samples-######.exr")
		res := runTestCommand(t, "merge_progressive_render_sequence", fmt.Sprintf(
			`{"blender_cmd": %q, "input1": %q, "input2": %q, "output": %q, "weight1": 1, "weight2": 1, "frame_start": 3, "frame_end": 5}`,
			exe, filepath.Join(seq, "s1-000003.exr"), filepath.Join(seq, "s2-000003.exr"), out), testEnv())
		if !res.ok {
			t.Fatalf("sequence merge failed:\n%s", res.logText())
		}
		for f := 3; f <= 5; f++ {
			blenderTestFileStarts(t, filepath.Join(seq, "merged", fmt.Sprintf("merged-samples-%06d.exr", f)), []byte{0x76, 0x2f, 0x31, 0x01})
		}
		if len(res.outputs) != 3 {
			t.Errorf("outputs = %v, want the three merged frames", res.outputs)
		}
	})
}
