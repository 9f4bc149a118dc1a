package main

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestRegistrationSecret(t *testing.T) {
	t.Parallel()
	t.Run("right secret: Bearer JWT accepted", func(t *testing.T) {
		f := newFarm(t, "worker_registration_secret = let-me-in")
		f.fm.set(func(fm *fakeManager) { fm.regSecret = "let-me-in" })
		p := f.start()
		waitFor(t, 10*time.Second, "a task fetch", func() bool { return f.fm.count("POST /task") > 0 })
		p.stop()
	})
	t.Run("wrong secret: clear error, exit 1", func(t *testing.T) {
		f := newFarm(t, "worker_registration_secret = wrong")
		f.fm.set(func(fm *fakeManager) { fm.regSecret = "let-me-in" })
		p := f.start()
		if code := p.wait(10 * time.Second); code != 1 {
			t.Errorf("exit code = %d, want 1", code)
		}
		if out := p.out.String(); !strings.Contains(out, "worker_registration_secret") {
			t.Errorf("output does not name worker_registration_secret:\n%s", out)
		}
		if f.fm.count("POST /register-worker") != 1 {
			t.Errorf("registration retried after a 403: %v", f.fm.callPaths())
		}
	})
}

func TestManagerForgetsWorkerMidRun(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "").registered()
	p := f.start()
	waitFor(t, 10*time.Second, "a task fetch", func() bool { return f.fm.count("POST /task") > 0 })
	// The Manager's database is reset: our credentials are unknown now.
	f.fm.set(func(fm *fakeManager) { fm.workers = map[string]string{} })
	f.fm.queueTask(taskID(1), echoCmd("after the reset"))
	waitFor(t, 10*time.Second, "the task to complete", func() bool { return f.fm.taskStatus(taskID(1)) == "completed" })
	p.stop()
	if f.fm.count("POST /register-worker") != 1 {
		t.Errorf("calls = %v, want one re-registration", f.fm.callPaths())
	}
}

func TestNoFetchWhileQueueIsFull(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "push_log_max_entries = 1").registered()
	id := taskID(1)
	f.fm.queueTask(id, logALot(30), `{"name": "sleep", "settings": {"time_in_seconds": 60}}`)
	f.fm.set(func(fm *fakeManager) {
		fm.updateHook = func(int, string) int { return http.StatusServiceUnavailable }
	})
	p := f.start()
	db := filepath.Join(f.dir, "flamenco-worker.db")
	waitFor(t, 10*time.Second, "updates to pile up", func() bool { return len(queuedPayloads(t, db)) > 20 })
	p.signal(syscall.SIGKILL)
	p.wait(5 * time.Second)

	// Restarted with more than 10 updates queued and the Manager still refusing them.
	fetches := f.fm.count("POST /task")
	p2 := f.start()
	waitFor(t, 10*time.Second, "the back-pressure message", func() bool {
		return strings.Contains(p2.out.String(), "task update queue too large")
	})
	time.Sleep(300 * time.Millisecond) // several fetch intervals: no fetch may happen
	if n := f.fm.count("POST /task"); n != fetches {
		t.Errorf("fetched %d times while more than 10 updates were queued", n-fetches)
	}
	f.fm.set(func(fm *fakeManager) { fm.updateHook = nil })
	waitFor(t, 10*time.Second, "fetching to resume", func() bool { return f.fm.count("POST /task") > fetches })
	p2.stop()
}

func TestSingleTaskMode(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "").registered()
	f.fm.queueTask(taskID(1), echoCmd("one"))
	f.fm.queueTask(taskID(2), echoCmd("two"))
	p := f.start("--single")
	if code := p.wait(15 * time.Second); code != 0 {
		t.Fatalf("exit code = %d, want 0", code)
	}
	if f.fm.taskStatus(taskID(1)) != "completed" || f.fm.taskStatus(taskID(2)) != "queued" {
		t.Errorf("task statuses %s, %s; want completed, queued", f.fm.taskStatus(taskID(1)), f.fm.taskStatus(taskID(2)))
	}
	calls := f.fm.callPaths()
	if calls[len(calls)-1] != "POST /sign-off" {
		t.Errorf("last call = %s, want POST /sign-off", calls[len(calls)-1])
	}
}

func TestGarbageTaskDoesNotCrash(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "").registered()
	served := 0
	f.fm.set(func(fm *fakeManager) {
		fm.hijack = func(w http.ResponseWriter, r *http.Request) bool {
			if r.URL.Path != "/task" || served >= 3 {
				return false
			}
			served++
			w.WriteHeader(http.StatusOK)
			w.Write([]byte([]string{"<html>proxy error</html>", `{"_id": 12}`, `{"commands": "nope"`}[served-1]))
			return true
		}
	})
	f.fm.queueTask(taskID(1), echoCmd("real task"))
	p := f.start()
	waitFor(t, 15*time.Second, "the real task to complete", func() bool { return f.fm.taskStatus(taskID(1)) == "completed" })
	p.stop()
	if !strings.Contains(p.out.String(), "Manager sent a task we cannot read") {
		t.Errorf("garbage task not logged")
	}
}

func TestSecondSignalExitsAtOnce(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "").registered()
	// A task whose process ignores SIGTERM: a clean shutdown would wait the grace period.
	f.fm.queueTask(taskID(1), execCmd(`sh -c 'trap "" TERM; echo started; sleep 60'`))
	p := f.start()
	waitFor(t, 10*time.Second, "the task to start", func() bool { return strings.Contains(f.fm.logText(taskID(1)), "> started") })
	p.signal(syscall.SIGTERM)
	waitFor(t, 5*time.Second, "the shutdown to begin", func() bool { return strings.Contains(p.out.String(), "shutting down cleanly") })
	// A sign-off that never ends holds the clean shutdown for its whole
	// budget (9 s); the forced exit must not wait for it.
	hold := make(chan struct{})
	defer close(hold)
	f.fm.set(func(fm *fakeManager) {
		fm.hijack = func(w http.ResponseWriter, r *http.Request) bool {
			if r.URL.Path != "/sign-off" {
				return false
			}
			select {
			case <-hold:
			case <-r.Context().Done():
			}
			return true
		}
	})
	p.signal(syscall.SIGTERM)
	if code := p.wait(5 * time.Second); code != 1 {
		t.Errorf("second SIGTERM: exit %d, want 1", code)
	}
	if strings.Contains(p.out.String(), "database is closed") {
		t.Errorf("the forced exit closed the queue under a running goroutine:\n%s", p.out.String())
	}
}

func TestCommandLine(t *testing.T) {
	cases := []struct {
		args     []string
		code     int
		inStdout string
		inStderr string
	}{
		{[]string{"--version"}, 0, "", ""},
		{[]string{"-h"}, 0, "--run-task FILE", ""},
		{[]string{"--no-such-flag"}, 2, "", "unrecognized arguments: --no-such-flag"},
		{[]string{"extra-arg"}, 2, "", "unrecognized arguments: extra-arg"},
		{[]string{"--run-task", "examples/hello-task.json"}, 0, "status: completed", ""},
		{[]string{"--run-task", "testdata/failing-task.json"}, 1, "status: failed", ""},
		{[]string{"--run-task", "/does/not/exist.json"}, 2, "", "no such file"},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			t.Chdir(t.TempDir())
			for i, a := range c.args {
				if strings.HasSuffix(a, ".json") && !strings.HasPrefix(a, "/") {
					c.args[i] = filepath.Join(repoDir(t), a)
				}
			}
			code := runTuned(t.Context(), c.args, &stdout, &stderr, testTuning())
			if code != c.code {
				t.Errorf("exit code = %d, want %d; stderr:\n%s", code, c.code, stderr.String())
			}
			if !strings.Contains(stdout.String(), c.inStdout) || !strings.Contains(stderr.String(), c.inStderr) {
				t.Errorf("stdout:\n%s\nstderr:\n%s\nwant %q / %q", stdout.String(), stderr.String(), c.inStdout, c.inStderr)
			}
		})
	}
}

// repoDir is the package directory (tests run in it before any Chdir).
var startDir, _ = os.Getwd()

func repoDir(t *testing.T) string { return startDir }

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

// TestExampleRenderTask runs the README's render example as a user would.
func TestExampleRenderTask(t *testing.T) {
	blenderTestExecutable(t)
	if _, err := os.Stat("/usr/bin/blender"); err != nil {
		t.Skip("the example uses /usr/bin/blender (Debian's package)")
	}
	os.RemoveAll("/tmp/flamenco-example")
	var stdout, stderr bytes.Buffer
	t.Chdir(t.TempDir())
	code := runTuned(t.Context(), []string{"--run-task", filepath.Join(startDir, "examples/render-task.json")}, &stdout, &stderr, testTuning())
	if code != 0 {
		t.Fatalf("exit code %d; stdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
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

func TestSilentSubprocessIsKilled(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "subprocess_timeout_seconds = 0.5").registered()
	id := taskID(1)
	f.fm.queueTask(id, execCmd(`sh -c 'echo group $$; sleep 60'`))
	p := f.start()
	pgid := groupOf(t, f.fm, id)
	waitFor(t, 10*time.Second, "the task to fail", func() bool { return f.fm.taskStatus(id) == "failed" })
	p.stop()
	if live := liveGroupMembers(pgid); len(live) > 0 {
		t.Errorf("processes %v of the silent command still alive", live)
	}
	if !strings.Contains(f.fm.logText(id), "produced no output for 0 seconds") {
		t.Errorf("task log does not say why:\n%s", f.fm.logText(id))
	}
}

func TestOutputProducedReachesManager(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "").registered()
	src, dest := filepath.Join(f.dir, "frame.png"), filepath.Join(f.dir, "out", "frame.png")
	writeFile(t, src, "png")
	f.fm.queueTask(taskID(1), fmt.Sprintf(`{"name": "copy_file", "settings": {"src": %q, "dest": %q}}`, src, dest))
	p := f.start()
	waitFor(t, 10*time.Second, "the output notification", func() bool { return f.fm.count("POST /output-produced") == 1 })
	p.stop()
	f.fm.mu.Lock()
	defer f.fm.mu.Unlock()
	for _, c := range f.fm.calls {
		if c.Path == "/output-produced" && (c.Status != 204 || !strings.Contains(c.Body, dest)) {
			t.Errorf("output-produced: %d %s", c.Status, c.Body)
		}
	}
}
