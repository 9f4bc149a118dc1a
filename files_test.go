package main

import (
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// filesTestMtime is the mtime of the Python tests, 2012-03-02 19:18:12 CET.
const filesTestMtime = 1330712292

// filesTestCase is one run of a file command against a small tree in a
// temporary directory. Paths are relative to that directory; in want,
// wantLogs and wantOutputs, {dir} stands for it and {stamp} for
// filesTestMtime as a backup-name timestamp in local time.
type filesTestCase struct {
	name        string
	files       map[string]string      // content by path; "dir/" is a directory, "->x" a symlink to x
	mtimes      map[string]float64     // Unix seconds, set after all files exist
	modes       map[string]fs.FileMode // set after all files exist
	settings    map[string]string      // values are paths relative to the test directory
	wantOK      bool
	want        map[string]string // the whole tree afterwards, as in files
	wantModes   map[string]fs.FileMode
	wantLogs    []string // in this order; a line matches when it ends with the text
	wantOutputs []string
}

func filesTestRun(t *testing.T, cmd string, tests []filesTestCase) {
	t.Helper()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			subst := strings.NewReplacer("{dir}", dir, "{stamp}", filesTestStamp(filesTestMtime))
			filesTestSetup(t, dir, subst, tc)
			res := runTestCommand(t, cmd, filesTestSettings(t, dir, tc.settings), testEnv())
			if res.ok != tc.wantOK {
				t.Errorf("%s ok = %v, want %v; log:\n%s", cmd, res.ok, tc.wantOK, res.logText())
			}
			want := map[string]string{}
			for p, content := range tc.want {
				want[subst.Replace(p)] = content
			}
			filesTestCheckTree(t, dir, want)
			for p, mode := range tc.wantModes {
				filesTestCheckMode(t, filepath.Join(dir, p), mode)
			}
			filesTestCheckLogs(t, res, subst, tc.wantLogs)
			var wantOutputs []string
			for _, o := range tc.wantOutputs {
				wantOutputs = append(wantOutputs, subst.Replace(o))
			}
			if !slices.Equal(res.outputs, wantOutputs) {
				t.Errorf("outputs = %q, want %q", res.outputs, wantOutputs)
			}
		})
	}
}

func filesTestSetup(t *testing.T, dir string, subst *strings.Replacer, tc filesTestCase) {
	t.Helper()
	for p, content := range tc.files {
		full := filepath.Join(dir, subst.Replace(p))
		var err error
		switch {
		case strings.HasSuffix(p, "/"):
			err = os.MkdirAll(full, 0o777)
		case strings.HasPrefix(content, "->"):
			if err = os.MkdirAll(filepath.Dir(full), 0o777); err == nil {
				err = os.Symlink(content[2:], full)
			}
		default:
			if err = os.MkdirAll(filepath.Dir(full), 0o777); err == nil {
				err = os.WriteFile(full, []byte(content), 0o666)
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	for p, mode := range tc.modes {
		if err := os.Chmod(filepath.Join(dir, p), mode); err != nil {
			t.Fatal(err)
		}
	}
	for p, secs := range tc.mtimes {
		filesTestSetMtime(t, filepath.Join(dir, p), secs)
	}
}

func filesTestSetMtime(t *testing.T, path string, secs float64) {
	t.Helper()
	whole := int64(secs)
	mt := time.Unix(whole, int64((secs-float64(whole))*1e9))
	if err := os.Chtimes(path, mt, mt); err != nil {
		t.Fatal(err)
	}
}

// filesTestStamp is how a backup name shows Unix time secs: local time, as
// the Python worker's datetime.fromtimestamp does.
func filesTestStamp(secs int64) string {
	return time.Unix(secs, 0).In(time.Local).Format("2006-01-02_150405")
}

// filesTestSettings makes a settings object of paths inside dir. A value
// ending in "/" keeps its slash.
func filesTestSettings(t *testing.T, dir string, rel map[string]string) string {
	t.Helper()
	abs := map[string]string{}
	for k, v := range rel {
		abs[k] = dir + string(filepath.Separator) + v
	}
	js, err := json.Marshal(abs)
	if err != nil {
		t.Fatal(err)
	}
	return string(js)
}

// filesTestTree describes everything under dir in the form of
// filesTestCase.files.
func filesTestTree(t *testing.T, dir string) map[string]string {
	t.Helper()
	tree := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			tree[rel] = "->" + target
			return err
		case d.IsDir():
			tree[rel+"/"] = ""
		default:
			b, err := os.ReadFile(p)
			tree[rel] = string(b)
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

func filesTestCheckTree(t *testing.T, dir string, want map[string]string) {
	t.Helper()
	got := filesTestTree(t, dir)
	for p, content := range want {
		if g, ok := got[p]; !ok {
			t.Errorf("%s is missing", p)
		} else if g != content {
			t.Errorf("%s holds %q, want %q", p, g, content)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("%s exists, but should not", p)
		}
	}
}

func filesTestCheckMode(t *testing.T, path string, want fs.FileMode) {
	t.Helper()
	info, err := os.Stat(path)
	if err != nil {
		t.Error(err)
		return
	}
	if got := info.Mode().Perm(); got != want {
		t.Errorf("mode of %s = %v, want %v", path, got, want)
	}
}

// filesTestCheckLogs checks that the wanted lines were logged in order.
func filesTestCheckLogs(t *testing.T, res cmdResult, subst *strings.Replacer, want []string) {
	t.Helper()
	i := 0
	for _, w := range want {
		w = subst.Replace(w)
		for i < len(res.logs) && !strings.HasSuffix(res.logs[i], w) {
			i++
		}
		if i == len(res.logs) {
			t.Errorf("log line %q missing or out of order; log:\n%s", w, res.logText())
			return
		}
		i++
	}
}

func TestFileCommandsValidation(t *testing.T) {
	tests := []struct {
		cmd, settings string
		want          string // part of the error; "" means valid
	}{
		{"move_out_of_way", `{"src": "/some/path"}`, ""},
		{"move_out_of_way", `{"src": 12}`, `"src"`},
		{"move_out_of_way", `{"src": ""}`, `"src"`},
		{"move_out_of_way", `{}`, `missing "src"`},

		{"move_to_final", `{"src": "/a", "dest": "/b"}`, ""},
		{"move_to_final", `{"src": 12, "dest": "/b"}`, `"src"`},
		{"move_to_final", `{"src": "/a", "dest": 12}`, `"dest"`},
		{"move_to_final", `{"src": "", "dest": "/b"}`, "src may not be empty"},
		{"move_to_final", `{"src": "/a", "dest": ""}`, "dest may not be empty"},
		{"move_to_final", `{"dest": "/b"}`, `missing "src"`},
		{"move_to_final", `{"src": "/a"}`, `missing "dest"`},

		{"copy_file", `{"src": "/a", "dest": "/b"}`, ""},
		{"copy_file", `{"src": 12, "dest": "/b"}`, `"src"`},
		{"copy_file", `{"src": "/a", "dest": 12}`, `"dest"`},
		{"copy_file", `{"src": "", "dest": "/b"}`, "src may not be empty"},
		{"copy_file", `{"src": "/a", "dest": ""}`, "dest may not be empty"},
		{"copy_file", `{"src": null, "dest": "/b"}`, `"src"`},
		{"copy_file", `{}`, `missing "src"`},
		{"copy_file", `{"src": "/a"}`, `missing "dest"`},

		{"move_with_counter", `{"src": "/a", "dest": "/b"}`, ""},
		{"move_with_counter", `{"src": 12, "dest": "/b"}`, `"src"`},
		{"move_with_counter", `{"src": "/a", "dest": 12}`, `"dest"`},
		{"move_with_counter", `{"src": "", "dest": "/b"}`, "src may not be empty"},
		{"move_with_counter", `{"src": "/a", "dest": ""}`, "dest may not be empty"},
		{"move_with_counter", `{"dest": "/b"}`, `missing "src"`},

		{"remove_tree", `{"path": "/a"}`, ""},
		{"remove_tree", `{"path": 12}`, `"path"`},
		{"remove_tree", `{"path": ""}`, "'path' may not be empty"},
		{"remove_tree", `{}`, `missing "path"`},

		{"remove_file", `{"path": "/a"}`, ""},
		{"remove_file", `{"path": 12}`, `"path"`},
		{"remove_file", `{"path": ""}`, "Parameter 'path' cannot be empty."},
		{"remove_file", `{}`, `missing "path"`},

		{"create_python_file", `{"filepath": "/a/b.py", "contents": "print('hi')"}`, ""},
		{"create_python_file", `{"filepath": "/a/b.py", "contents": ""}`, ""},
		{"create_python_file", `{"filepath": 12, "contents": ""}`, `"filepath"`},
		{"create_python_file", `{"filepath": "", "contents": ""}`, "filepath may not be empty"},
		{"create_python_file", `{"filepath": "/a/b.txt", "contents": ""}`, "filepath must end in .py"},
		{"create_python_file", `{"contents": ""}`, `missing "filepath"`},
		{"create_python_file", `{"filepath": "/a/b.py", "contents": 12}`, `"contents"`},
		{"create_python_file", `{"filepath": "/a/b.py"}`, `missing "contents"`},
		{"create_python_file", `{"filepath": "/a/b.py", "contents": null}`, `"contents"`},
	}
	for _, tc := range tests {
		t.Run(tc.cmd+" "+tc.settings, func(t *testing.T) {
			err := validateCommand(t, tc.cmd, tc.settings, testEnv())
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("validate(%s) = %v, want nil", tc.settings, err)
			case tc.want != "" && err == nil:
				t.Errorf("validate(%s) = nil, want an error with %q", tc.settings, tc.want)
			case tc.want != "" && !strings.Contains(err.Error(), tc.want):
				t.Errorf("validate(%s) = %v, want an error with %q", tc.settings, err, tc.want)
			}
		})
	}
}

func TestFilesStamp(t *testing.T) {
	cet := time.FixedZone("CET", 3600)
	tests := []struct {
		mtime time.Time
		want  string
	}{
		{time.Unix(filesTestMtime, 0), "2012-03-02_191812"},
		{time.Unix(filesTestMtime, 20_000_000), "2012-03-02_191812"},
		{time.Unix(filesTestMtime-1, 600_000_000), "2012-03-02_191812"},
		{time.Unix(filesTestMtime, 500_000_000), "2012-03-02_191812"}, // half to even, as Python's round()
		{time.Unix(filesTestMtime+1, 500_000_000), "2012-03-02_191814"},
	}
	for _, tc := range tests {
		if got := filesStamp(tc.mtime, cet); got != tc.want {
			t.Errorf("filesStamp(%v) = %q, want %q", tc.mtime, got, tc.want)
		}
	}
}

func TestMoveOutOfWay(t *testing.T) {
	filesTestRun(t, "move_out_of_way", []filesTestCase{{
		name:     "nonexistent source",
		files:    map[string]string{"other/": ""},
		settings: map[string]string{"src": "existing-dir"},
		wantOK:   true,
		want:     map[string]string{"other/": ""},
		wantLogs: []string{"move_out_of_way: Render output path {dir}/existing-dir does not exist, not moving out of way"},
	}, {
		name:     "existing directory",
		files:    map[string]string{"existing-dir/frame-0001.png": "png"},
		mtimes:   map[string]float64{"existing-dir": filesTestMtime},
		settings: map[string]string{"src": "existing-dir"},
		wantOK:   true,
		want:     map[string]string{"existing-dir-{stamp}/": "", "existing-dir-{stamp}/frame-0001.png": "png"},
		wantLogs: []string{"move_out_of_way: Moving {dir}/existing-dir to {dir}/existing-dir-{stamp}"},
	}, {
		name:     "source is a file",
		files:    map[string]string{"existing-file.txt": "text"},
		mtimes:   map[string]float64{"existing-file.txt": filesTestMtime},
		settings: map[string]string{"src": "existing-file.txt"},
		wantOK:   true,
		want:     map[string]string{"existing-file.txt-{stamp}": "text"},
	}, {
		name:     "mtime rounded to whole seconds",
		files:    map[string]string{"existing-dir/": ""},
		mtimes:   map[string]float64{"existing-dir": filesTestMtime - 0.4},
		settings: map[string]string{"src": "existing-dir"},
		wantOK:   true,
		want:     map[string]string{"existing-dir-{stamp}/": ""},
	}, {
		name:     "trailing slash",
		files:    map[string]string{"existing-dir/": ""},
		mtimes:   map[string]float64{"existing-dir": filesTestMtime},
		settings: map[string]string{"src": "existing-dir/"},
		wantOK:   true,
		want:     map[string]string{"existing-dir-{stamp}/": ""},
	}, {
		name: "backups exist, gaps not filled",
		files: map[string]string{
			"existing-dir/a.txt":         "new",
			"existing-dir-{stamp}":       "first",
			"existing-dir-{stamp}~2":     "second",
			"existing-dir-{stamp}~4":     "fourth",
			"existing-dir-{stamp}~x":     "not a number",
			"existing-dir-{stamp}~7.bak": "not a suffix",
		},
		mtimes:   map[string]float64{"existing-dir": filesTestMtime},
		settings: map[string]string{"src": "existing-dir"},
		wantOK:   true,
		want: map[string]string{
			"existing-dir-{stamp}~5/":      "",
			"existing-dir-{stamp}~5/a.txt": "new",
			"existing-dir-{stamp}":         "first",
			"existing-dir-{stamp}~2":       "second",
			"existing-dir-{stamp}~4":       "fourth",
			"existing-dir-{stamp}~x":       "not a number",
			"existing-dir-{stamp}~7.bak":   "not a suffix",
		},
		wantLogs: []string{"move_out_of_way: Moving {dir}/existing-dir to {dir}/existing-dir-{stamp}~5"},
	}, {
		name:     "backup numbers compared as numbers",
		files:    map[string]string{"out.mkv": "new", "out.mkv-{stamp}": "1", "out.mkv-{stamp}~9": "9", "out.mkv-{stamp}~10": "10"},
		mtimes:   map[string]float64{"out.mkv": filesTestMtime},
		settings: map[string]string{"src": "out.mkv"},
		wantOK:   true,
		want:     map[string]string{"out.mkv-{stamp}": "1", "out.mkv-{stamp}~9": "9", "out.mkv-{stamp}~10": "10", "out.mkv-{stamp}~11": "new"},
	}})
}

// TestMoveOutOfWayInCET is the Python test as written, which expects CET:
// it runs itself again in a child process with TZ=Europe/Amsterdam, so that
// a backup name in UTC instead of local time cannot go unnoticed on a
// machine that runs in UTC.
func TestMoveOutOfWayInCET(t *testing.T) {
	t.Parallel()
	if os.Getenv("FILES_TEST_IN_CET") == "" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestMoveOutOfWayInCET$", "-test.v")
		cmd.Env = append(os.Environ(), "FILES_TEST_IN_CET=1", "TZ=Europe/Amsterdam")
		out, err := cmd.CombinedOutput()
		switch {
		case err != nil:
			t.Fatalf("child test failed: %v\n%s", err, out)
		case strings.Contains(string(out), "--- SKIP"):
			t.Skipf("child test skipped:\n%s", out)
		}
		return
	}
	if zone, _ := time.Unix(filesTestMtime, 0).Zone(); zone != "CET" {
		t.Skipf("no time zone data for Europe/Amsterdam (zone %s)", zone)
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "existing-dir")
	if err := os.Mkdir(src, 0o777); err != nil {
		t.Fatal(err)
	}
	filesTestSetMtime(t, src, filesTestMtime)
	settings, _ := json.Marshal(map[string]string{"src": src})
	if res := runTestCommand(t, "move_out_of_way", string(settings), testEnv()); !res.ok {
		t.Fatalf("move_out_of_way failed; log:\n%s", res.logText())
	}
	if _, err := os.Stat(filepath.Join(dir, "existing-dir-2012-03-02_191812")); err != nil {
		t.Errorf("backup not at the name the Python test expects: %v", err)
	}
}

func TestMoveToFinal(t *testing.T) {
	filesTestRun(t, "move_to_final", []filesTestCase{{
		name:     "nonexistent source",
		settings: map[string]string{"src": "render", "dest": "final"},
		wantOK:   true,
		want:     map[string]string{},
		wantLogs: []string{"move_to_final: Path {dir}/render does not exist, not moving"},
	}, {
		name:     "existing source and dest",
		files:    map[string]string{"render/new.png": "new", "final/old/deep.png": "old"},
		mtimes:   map[string]float64{"final": filesTestMtime + 0.02},
		settings: map[string]string{"src": "render", "dest": "final"},
		wantOK:   true,
		want: map[string]string{
			"final/":                     "",
			"final/new.png":              "new",
			"final-{stamp}/":             "",
			"final-{stamp}/old/":         "",
			"final-{stamp}/old/deep.png": "old",
		},
		wantLogs: []string{
			"move_to_final: Moving {dir}/final to {dir}/final-{stamp}",
			"move_to_final: Moving {dir}/render to {dir}/final",
		},
	}, {
		name:     "nonexistent dest",
		files:    map[string]string{"render/new.png": "new"},
		settings: map[string]string{"src": "render", "dest": "final"},
		wantOK:   true,
		want:     map[string]string{"final/": "", "final/new.png": "new"},
		wantLogs: []string{"move_to_final: Moving {dir}/render to {dir}/final"},
	}, {
		name:     "dest and its backup exist",
		files:    map[string]string{"render.mkv": "new", "final.mkv": "old", "final.mkv-{stamp}": "older"},
		mtimes:   map[string]float64{"final.mkv": filesTestMtime},
		settings: map[string]string{"src": "render.mkv", "dest": "final.mkv"},
		wantOK:   true,
		want:     map[string]string{"final.mkv": "new", "final.mkv-{stamp}": "older", "final.mkv-{stamp}~1": "old"},
		wantLogs: []string{"move_to_final: Moving {dir}/final.mkv to {dir}/final.mkv-{stamp}~1"},
	}, {
		name:     "parent of dest missing",
		files:    map[string]string{"render.mkv": "new"},
		settings: map[string]string{"src": "render.mkv", "dest": "sub/final.mkv"},
		wantOK:   false,
		want:     map[string]string{"render.mkv": "new"},
		wantLogs: []string{"Error executing: moving {dir}/render.mkv to {dir}/sub/final.mkv: no such file or directory"},
	}})
}

func TestCopyFile(t *testing.T) {
	filesTestRun(t, "copy_file", []filesTestCase{{
		name:     "nonexistent source and dest",
		settings: map[string]string{"src": "src.txt", "dest": "dest.txt"},
		wantOK:   false,
		want:     map[string]string{},
		wantLogs: []string{"Error executing: Path {dir}/src.txt does not exist, unable to copy"},
	}, {
		name:        "existing source, nonexistent dest",
		files:       map[string]string{"src.txt": "source"},
		settings:    map[string]string{"src": "src.txt", "dest": "dest.txt"},
		wantOK:      true,
		want:        map[string]string{"src.txt": "source", "dest.txt": "source"},
		wantLogs:    []string{"copy_file: Copying {dir}/src.txt to {dir}/dest.txt", "copy_file: Finished"},
		wantOutputs: []string{"{dir}/dest.txt"},
	}, {
		name:     "nonexistent source, existing dest",
		files:    map[string]string{"dest.txt": "keep me"},
		settings: map[string]string{"src": "src.txt", "dest": "dest.txt"},
		wantOK:   false,
		want:     map[string]string{"dest.txt": "keep me"},
		wantLogs: []string{"Error executing: Path {dir}/src.txt does not exist, unable to copy"},
	}, {
		name:      "existing source and dest",
		files:     map[string]string{"src.txt": "source", "dest.txt": "a much longer old destination"},
		modes:     map[string]fs.FileMode{"src.txt": 0o640, "dest.txt": 0o600},
		settings:  map[string]string{"src": "src.txt", "dest": "dest.txt"},
		wantOK:    true,
		want:      map[string]string{"src.txt": "source", "dest.txt": "source"},
		wantModes: map[string]fs.FileMode{"dest.txt": 0o640},
		wantLogs: []string{
			"copy_file: Copying {dir}/src.txt to {dir}/dest.txt",
			"copy_file: Destination {dir}/dest.txt exists, going to delete it first.",
		},
		wantOutputs: []string{"{dir}/dest.txt"},
	}, {
		name:      "dest in nonexistent subdirectory, mode copied",
		files:     map[string]string{"render.sh": "#!/bin/sh\n"},
		modes:     map[string]fs.FileMode{"render.sh": 0o751},
		settings:  map[string]string{"src": "render.sh", "dest": "a/b/c/render.sh"},
		wantOK:    true,
		want:      map[string]string{"render.sh": "#!/bin/sh\n", "a/": "", "a/b/": "", "a/b/c/": "", "a/b/c/render.sh": "#!/bin/sh\n"},
		wantModes: map[string]fs.FileMode{"a/b/c/render.sh": 0o751},
		wantLogs: []string{
			"copy_file: Copying {dir}/render.sh to {dir}/a/b/c/render.sh",
			"copy_file: Directory {dir}/a/b/c does not exist; creating.",
		},
		wantOutputs: []string{"{dir}/a/b/c/render.sh"},
	}, {
		name:     "source is a directory",
		files:    map[string]string{"frames/0001.png": "png", "dest": "keep me"},
		settings: map[string]string{"src": "frames", "dest": "dest"},
		wantOK:   false,
		want:     map[string]string{"frames/": "", "frames/0001.png": "png", "dest": "keep me"},
		wantLogs: []string{"Error executing: Error copying {dir}/frames to {dir}/dest: {dir}/frames is a directory"},
	}, {
		name:     "dest is a directory",
		files:    map[string]string{"src.txt": "source", "dest/": ""},
		settings: map[string]string{"src": "src.txt", "dest": "dest"},
		wantOK:   false,
		want:     map[string]string{"src.txt": "source", "dest/": ""},
		wantLogs: []string{"Error executing: Error unlinking destination {dir}/dest: it is a directory"},
	}, {
		name:     "source and dest are the same file",
		files:    map[string]string{"src.txt": "source", "link.txt": "->src.txt"},
		settings: map[string]string{"src": "src.txt", "dest": "link.txt"},
		wantOK:   false,
		want:     map[string]string{"src.txt": "source", "link.txt": "->src.txt"},
		wantLogs: []string{"Error executing: Error copying {dir}/src.txt to {dir}/link.txt: they are the same file"},
	}, {
		name:     "parent of dest cannot be created",
		files:    map[string]string{"src.txt": "source", "file": "in the way"},
		settings: map[string]string{"src": "src.txt", "dest": "file/sub/dest.txt"},
		wantOK:   false,
		want:     map[string]string{"src.txt": "source", "file": "in the way"},
		wantLogs: []string{"Error executing: creating directory {dir}/file/sub: not a directory"},
	}})
}

func TestRemoveFile(t *testing.T) {
	filesTestRun(t, "remove_file", []filesTestCase{{
		name:     "nonexistent path",
		files:    map[string]string{"other.txt": "x"},
		settings: map[string]string{"path": "gone.txt"},
		wantOK:   true,
		want:     map[string]string{"other.txt": "x"},
		wantLogs: []string{"remove_file: Path {dir}/gone.txt does not exist, so not removing."},
	}, {
		name:     "file",
		files:    map[string]string{"file.txt": "x", "other.txt": "y"},
		settings: map[string]string{"path": "file.txt"},
		wantOK:   true,
		want:     map[string]string{"other.txt": "y"},
		wantLogs: []string{"remove_file: Removing file {dir}/file.txt"},
	}, {
		name:     "directory with files",
		files:    map[string]string{"dir/a.txt": "a", "dir/b.txt": "b"},
		settings: map[string]string{"path": "dir"},
		wantOK:   false,
		want:     map[string]string{"dir/": "", "dir/a.txt": "a", "dir/b.txt": "b"},
		wantLogs: []string{"Error executing: Path {dir}/dir is a directory. Cannot remove with this command; use remove_tree instead."},
	}, {
		name:     "symlink to a file removes the link only",
		files:    map[string]string{"target.txt": "x", "link.txt": "->target.txt"},
		settings: map[string]string{"path": "link.txt"},
		wantOK:   true,
		want:     map[string]string{"target.txt": "x"},
	}, {
		name:     "dangling symlink",
		files:    map[string]string{"link.txt": "->nowhere.txt"},
		settings: map[string]string{"path": "link.txt"},
		wantOK:   true,
		want:     map[string]string{},
		wantLogs: []string{"remove_file: Removing file {dir}/link.txt"},
	}})
}

func TestRemoveTree(t *testing.T) {
	filesTestRun(t, "remove_tree", []filesTestCase{{
		name:     "nonexistent path",
		files:    map[string]string{"other/": ""},
		settings: map[string]string{"path": "gone"},
		wantOK:   true,
		want:     map[string]string{"other/": ""},
		wantLogs: []string{"remove_tree: Path {dir}/gone does not exist, so not removing."},
	}, {
		name:     "file",
		files:    map[string]string{"file.txt": "x", "other.txt": "y"},
		settings: map[string]string{"path": "file.txt"},
		wantOK:   true,
		want:     map[string]string{"other.txt": "y"},
		wantLogs: []string{"remove_tree: Removing tree rooted at {dir}/file.txt"},
	}, {
		name:     "directory with files",
		files:    map[string]string{"dir/a.txt": "a", "dir/b.txt": "b", "dir-sibling/c.txt": "c"},
		settings: map[string]string{"path": "dir"},
		wantOK:   true,
		want:     map[string]string{"dir-sibling/": "", "dir-sibling/c.txt": "c"},
		wantLogs: []string{"remove_tree: Removing tree rooted at {dir}/dir"},
	}, {
		name: "directory with files and directories",
		files: map[string]string{
			"dir/a.txt": "a", "dir/sub/b.txt": "b", "dir/sub/deeper/c.txt": "c", "dir/empty/": "",
			"keep/d.txt": "d",
		},
		settings: map[string]string{"path": "dir"},
		wantOK:   true,
		want:     map[string]string{"keep/": "", "keep/d.txt": "d"},
	}, {
		name:     "symlink to a directory removes the link only",
		files:    map[string]string{"target/a.txt": "a", "link": "->target"},
		settings: map[string]string{"path": "link"},
		wantOK:   true,
		want:     map[string]string{"target/": "", "target/a.txt": "a"},
	}})
}

func TestMoveWithCounter(t *testing.T) {
	filesTestRun(t, "move_with_counter", []filesTestCase{{
		name: "numbers with holes",
		files: map[string]string{
			"render.mkv":                          "video",
			"videos/2018_06_12_001-spring.mkv":    "1",
			"videos/2018_06_12_004-spring.mkv":    "4",
			"videos/2018_06_12_009-autumn.mkv":    "other suffix",
			"videos/2018_06_12_x12-spring.mkv":    "not a number",
			"videos/2018_06_12_007-spring.mkv.gz": "other suffix",
		},
		settings: map[string]string{"src": "render.mkv", "dest": "videos/2018_06_12-spring.mkv"},
		wantOK:   true,
		want: map[string]string{
			"videos/":                             "",
			"videos/2018_06_12_001-spring.mkv":    "1",
			"videos/2018_06_12_004-spring.mkv":    "4",
			"videos/2018_06_12_005-spring.mkv":    "video",
			"videos/2018_06_12_009-autumn.mkv":    "other suffix",
			"videos/2018_06_12_x12-spring.mkv":    "not a number",
			"videos/2018_06_12_007-spring.mkv.gz": "other suffix",
		},
		wantLogs:    []string{"move_with_counter: Moving {dir}/render.mkv to {dir}/videos/2018_06_12_005-spring.mkv"},
		wantOutputs: []string{"{dir}/videos/2018_06_12_005-spring.mkv"},
	}, {
		name:        "no regexp match",
		files:       map[string]string{"render.mkv": "video"},
		settings:    map[string]string{"src": "render.mkv", "dest": "jemoeder.mkv"},
		wantOK:      true,
		want:        map[string]string{"jemoeder_001.mkv": "video"},
		wantOutputs: []string{"{dir}/jemoeder_001.mkv"},
	}, {
		name:        "no regexp match, counters exist",
		files:       map[string]string{"render.mkv": "video", "jemoeder_001.mkv": "1", "jemoeder_012.mkv": "12"},
		settings:    map[string]string{"src": "render.mkv", "dest": "jemoeder.mkv"},
		wantOK:      true,
		want:        map[string]string{"jemoeder_001.mkv": "1", "jemoeder_012.mkv": "12", "jemoeder_013.mkv": "video"},
		wantOutputs: []string{"{dir}/jemoeder_013.mkv"},
	}, {
		name:        "empty suffix finds existing counters",
		files:       map[string]string{"render": "video", "2018_06_12_002": "2"},
		settings:    map[string]string{"src": "render", "dest": "2018_06_12"},
		wantOK:      true,
		want:        map[string]string{"2018_06_12_002": "2", "2018_06_12_003": "video"},
		wantOutputs: []string{"{dir}/2018_06_12_003"},
	}, {
		name:     "directory created",
		files:    map[string]string{"render.mkv": "video"},
		settings: map[string]string{"src": "render.mkv", "dest": "a/b/spring.mkv"},
		wantOK:   true,
		want:     map[string]string{"a/": "", "a/b/": "", "a/b/spring_001.mkv": "video"},
		wantLogs: []string{
			"move_with_counter: Moving {dir}/render.mkv to {dir}/a/b/spring_001.mkv",
			"move_with_counter: Directory {dir}/a/b does not exist; creating.",
		},
		wantOutputs: []string{"{dir}/a/b/spring_001.mkv"},
	}, {
		name:     "nonexistent source",
		settings: map[string]string{"src": "render.mkv", "dest": "videos/spring.mkv"},
		wantOK:   false,
		want:     map[string]string{},
		wantLogs: []string{"Error executing: Path {dir}/render.mkv does not exist, unable to move"},
	}})
}

func TestMoveWithCounterParts(t *testing.T) {
	tests := []struct{ name, prefix, suffix string }{
		{"2018_06_12-spring.mkv", "2018_06_12_", "-spring.mkv"},
		{"jemoeder.mkv", "jemoeder_", ".mkv"},
		{"archive.tar.gz", "archive.tar_", ".gz"},
		{".hidden", ".hidden_", ""},
		{"name.", "name._", ""},
		{"noext", "noext_", ""},
		{"123", "123_", ""},
	}
	for _, tc := range tests {
		if p, s := filesCounterParts(tc.name); p != tc.prefix || s != tc.suffix {
			t.Errorf("filesCounterParts(%q) = %q, %q, want %q, %q", tc.name, p, s, tc.prefix, tc.suffix)
		}
	}
}

// TestMoveWithCounterAcrossFileSystems moves a file onto /dev/shm (tmpfs),
// where a rename fails and the copy fallback has to do the work.
func TestMoveWithCounterAcrossFileSystems(t *testing.T) {
	other, err := os.MkdirTemp("/dev/shm", "files-test-")
	if err != nil {
		t.Skipf("no second file system to move to: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(other) })
	src := filepath.Join(t.TempDir(), "render.mkv")
	if err := os.WriteFile(src, []byte("video"), 0o640); err != nil {
		t.Fatal(err)
	}
	if filesTestDevice(t, src) == filesTestDevice(t, other) {
		t.Skipf("%s and %s are on the same file system", src, other)
	}
	filesTestSetMtime(t, src, filesTestMtime)

	settings, _ := json.Marshal(map[string]string{"src": src, "dest": filepath.Join(other, "spring.mkv")})
	res := runTestCommand(t, "move_with_counter", string(settings), testEnv())
	if !res.ok {
		t.Fatalf("move_with_counter failed; log:\n%s", res.logText())
	}
	dst := filepath.Join(other, "spring_001.mkv")
	if b, err := os.ReadFile(dst); err != nil || string(b) != "video" {
		t.Errorf("%s holds %q (%v), want %q", dst, b, err, "video")
	}
	if _, err := os.Lstat(src); !os.IsNotExist(err) {
		t.Errorf("%s still exists after the move (%v)", src, err)
	}
	filesTestCheckMode(t, dst, 0o640)
	if info, err := os.Stat(dst); err == nil && info.ModTime().Unix() != filesTestMtime {
		t.Errorf("mtime of %s = %v, want %v", dst, info.ModTime(), time.Unix(filesTestMtime, 0))
	}
}

func filesTestDevice(t *testing.T, path string) uint64 {
	t.Helper()
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return uint64(info.Sys().(*syscall.Stat_t).Dev)
}

func TestCreatePythonFile(t *testing.T) {
	tests := []struct {
		name     string
		existing string // content before; "" means no file
		contents string
		wantLog  string
	}{
		{"nonexistent path", "", "import bpy\nbpy.context.scene.render.resolution_x = 320\n", "Creating Python file"},
		{"existing path", "old contents that are longer", "öpje", "Overwriting Python file"},
		{"empty contents", "", "", "Creating Python file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "sub", "dir")
			path := filepath.Join(dir, "file-overrides.py")
			if tc.existing != "" {
				if err := os.MkdirAll(dir, 0o777); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(tc.existing), 0o666); err != nil {
					t.Fatal(err)
				}
			}
			settings, _ := json.Marshal(map[string]string{"filepath": path, "contents": tc.contents})
			res := runTestCommand(t, "create_python_file", string(settings), testEnv())
			ok, log := res.ok, "\n"+res.logText()+"\n"
			if !ok {
				t.Fatalf("create_python_file failed; log:\n%s", log)
			}
			b, err := os.ReadFile(path)
			if err != nil || string(b) != tc.contents {
				t.Errorf("%s holds %q (%v), want %q", path, b, err, tc.contents)
			}
			for _, want := range []string{
				"\ncreate_python_file: " + tc.wantLog + " " + path + "\n",
				"\ncreate_python_file: contents:\n" + tc.contents + "\n",
			} {
				if !strings.Contains(log, want) {
					t.Errorf("log lacks %q; log:\n%s", want, log)
				}
			}
			mkdirLine := "create_python_file: Directory " + dir + " does not exist; creating."
			if got := strings.Contains(log, mkdirLine); got != (tc.existing == "") {
				t.Errorf("log has %q: %v, want %v", mkdirLine, got, tc.existing == "")
			}
		})
	}
}
