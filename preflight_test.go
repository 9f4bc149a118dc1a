package main

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestPreflightCheck(t *testing.T) {
	t.Parallel()
	t.Run("all pass", func(t *testing.T) {
		f := newFarm(t, "").registered()
		p := f.start("--check")
		if code := p.wait(30 * time.Second); code != 0 {
			t.Errorf("exit code = %d, want 0:\n%s", code, p.out.String())
		}
		for _, want := range []string{"OK   manager", "OK   credentials    accepted", "SKIP blender", "OK   queue"} {
			if !strings.Contains(p.out.String(), want) {
				t.Errorf("output lacks %q:\n%s", want, p.out.String())
			}
		}
		if f.fm.count("POST /task") != 0 || f.fm.count("POST /sign-on") != 0 {
			t.Errorf("--check started working: %v", f.fm.callPaths())
		}
	})
	t.Run("a failing pre-task check and unknown credentials", func(t *testing.T) {
		f := newFarm(t, "task_types = blender-render")
		writeFile(t, filepath.Join(f.home, ".flamenco-worker.cfg"), "[flamenco-worker]\nworker_id = 5e0000000000000000000def\nworker_secret = old\n")
		appendFile(t, filepath.Join(f.dir, "flamenco-worker.cfg"), "[pre_task_check]\nread.0 = /no/such/share\n")
		p := f.start("--check")
		if code := p.wait(30 * time.Second); code != 1 {
			t.Errorf("exit code = %d, want 1", code)
		}
		for _, want := range []string{"FAIL credentials", "FAIL pre_task_check read.0: /no/such/share does not exist\n", "blender"} {
			if !strings.Contains(p.out.String(), want) {
				t.Errorf("output lacks %q:\n%s", want, p.out.String())
			}
		}
	})
}
