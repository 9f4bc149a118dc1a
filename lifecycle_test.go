package main

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// groupOf waits for a task's "group <pgid>" log line and returns the pgid.
func groupOf(t *testing.T, fm *fakeManager, id string) int {
	t.Helper()
	return loggedNumber(t, fm, id, "group")
}

// loggedNumber waits for a task's "<word> <n>" log line and returns n.
func loggedNumber(t *testing.T, fm *fakeManager, id, word string) int {
	t.Helper()
	var n int
	waitFor(t, 15*time.Second, "the subprocess to log its "+word, func() bool {
		m := regexp.MustCompile(`> ` + word + ` (\d+)`).FindStringSubmatch(fm.logText(id))
		if m != nil {
			n, _ = strconv.Atoi(m[1])
		}
		return n > 0
	})
	return n
}

// longTask prints its process group, then a line every 50 ms for a minute.
const longTask = `sh -c 'echo group $$; i=0; while [ $i -lt 1200 ]; do echo tick $i; i=$((i+1)); sleep 0.05; done'`

func TestMayIRunFalseAbortsAndReturnsTask(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "").registered()
	id := taskID(1)
	f.fm.queueTask(id, execCmd(longTask))
	f.fm.queueTask(taskID(2), echoCmd("next"))
	garbage := 0
	f.fm.set(func(fm *fakeManager) {
		fm.mayIRunHook = func(taskID string) (bool, string) {
			if taskID == id && garbage < 3 {
				garbage++ // a proxy's error page, a non-boolean: the poll must survive
				return true, []string{"<html>502</html>", `{"may_keep_running": "yes"}`, `{}`}[garbage-1]
			}
			return true, ""
		}
	})
	p := f.start()
	pgid := groupOf(t, f.fm, id)
	waitFor(t, 10*time.Second, "the garbage answers", func() bool { return f.fm.count("GET /may-i-run/"+id) > 4 })
	f.fm.set(func(fm *fakeManager) {
		fm.mayIRunHook = func(taskID string) (bool, string) { return taskID != id, "" }
	})
	waitFor(t, 10*time.Second, "the task to be returned", func() bool { return f.fm.count("POST /tasks/"+id+"/return") == 1 })
	waitFor(t, 10*time.Second, "the aborted task's processes to be gone", func() bool { return len(liveGroupMembers(pgid)) == 0 })
	waitFor(t, 10*time.Second, "the next task to complete", func() bool { return f.fm.taskStatus(taskID(2)) == "completed" })
	p.stop()
	if got := transitions(f.fm.statuses(id)); got != "active" {
		t.Errorf("aborted task's statuses = %q, want only active", got)
	}
	if !strings.Contains(f.fm.logText(id), "stopped running this task, no longer allowed to run by Manager") {
		t.Errorf("no 'stopped running' log line")
	}
}

func TestConflictOnUpdateAbortsAtOnce(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "").registered()
	id := taskID(1)
	f.fm.queueTask(id, execCmd(longTask))
	p := f.start()
	pgid := groupOf(t, f.fm, id)
	f.fm.set(func(fm *fakeManager) {
		fm.updateHook = func(_ int, tid string) int {
			if tid == id {
				return http.StatusConflict // assigned to another worker
			}
			return 0
		}
	})
	waitFor(t, 5*time.Second, "the abort", func() bool { return strings.Contains(p.out.String(), "aborting the running task") })
	waitFor(t, 10*time.Second, "the aborted task's processes to be gone", func() bool { return len(liveGroupMembers(pgid)) == 0 })
	p.stop()
	for _, s := range f.fm.statuses(id) {
		if s != "active" {
			t.Errorf("status %q sent for a task taken away", s)
		}
	}
}

func TestAsleepAndAwakeFromManager(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "").registered()
	f.fm.set(func(fm *fakeManager) { fm.statusRequested = "asleep" })
	p := f.start()
	waitFor(t, 10*time.Second, "the asleep ack", func() bool { return f.fm.count("POST /ack-status-change/asleep") == 1 })
	waitFor(t, 10*time.Second, "status-change polls", func() bool { return f.fm.count("GET /status-change") >= 3 })
	fetches := f.fm.count("POST /task")
	if fetches != 1 {
		t.Errorf("%d task fetches while asleep, want only the one answered 423", fetches)
	}
	f.fm.queueTask(taskID(1), echoCmd("good morning"))
	f.fm.set(func(fm *fakeManager) { fm.statusRequested = "awake" })
	waitFor(t, 10*time.Second, "the task to complete", func() bool { return f.fm.taskStatus(taskID(1)) == "completed" })
	p.stop()
	if f.fm.count("POST /ack-status-change/awake") != 1 {
		t.Errorf("calls = %v, want one awake ack", f.fm.callPaths())
	}
}

func TestAsleepWhileRunningViaMayIRun(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "").registered()
	id := taskID(1)
	f.fm.queueTask(id, execCmd(longTask))
	p := f.start()
	pgid := groupOf(t, f.fm, id)
	f.fm.set(func(fm *fakeManager) { fm.statusRequested = "asleep" }) // immediate: may-i-run says no
	waitFor(t, 10*time.Second, "the asleep ack", func() bool { return f.fm.count("POST /ack-status-change/asleep") == 1 })
	if live := liveGroupMembers(pgid); len(live) > 0 {
		t.Errorf("processes %v still alive", live)
	}
	if f.fm.count("POST /tasks/"+id+"/return") != 1 {
		t.Errorf("task not returned: %v", f.fm.callPaths())
	}
	p.stop()
	if got := transitions(f.fm.statuses(id)); got != "active" {
		t.Errorf("statuses = %q, want only active (silent abort)", got)
	}
}

func TestShutdownRequestedByManager(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "").registered()
	p := f.start()
	waitFor(t, 10*time.Second, "a fetch", func() bool { return f.fm.count("POST /task") > 0 })
	f.fm.set(func(fm *fakeManager) { fm.statusRequested = "shutdown" })
	if code := p.wait(10 * time.Second); code != 0 {
		t.Fatalf("exit code = %d, want 0", code)
	}
	calls := f.fm.callPaths()
	if calls[len(calls)-1] != "POST /sign-off" || f.fm.count("POST /ack-status-change/shutdown") != 0 {
		t.Errorf("calls = %v, want sign-off last and no shutdown ack", calls)
	}
}

// TestSleepAndWakeSignals: SIGTSTP sends the worker to sleep; SIGCONT, or
// SIGUSR2 (the Python worker's wake-up signal), wakes it.
func TestSleepAndWakeSignals(t *testing.T) {
	t.Parallel()
	for _, wake := range []syscall.Signal{syscall.SIGCONT, syscall.SIGUSR2} {
		t.Run(wake.String(), func(t *testing.T) {
			t.Parallel()
			f := newFarm(t, "").registered()
			p := f.start()
			waitFor(t, 10*time.Second, "a fetch", func() bool { return f.fm.count("POST /task") > 0 })
			p.signal(syscall.SIGTSTP)
			waitFor(t, 10*time.Second, "the asleep ack", func() bool { return f.fm.count("POST /ack-status-change/asleep") == 1 })
			fetches := f.fm.count("POST /task")
			waitFor(t, 5*time.Second, "status-change polls", func() bool { return f.fm.count("GET /status-change") >= 2 })
			if n := f.fm.count("POST /task"); n != fetches {
				t.Errorf("%d fetches while asleep", n-fetches)
			}
			p.signal(wake)
			waitFor(t, 10*time.Second, "the awake ack", func() bool { return f.fm.count("POST /ack-status-change/awake") == 1 })
			waitFor(t, 5*time.Second, "fetching again", func() bool { return f.fm.count("POST /task") > fetches })
			p.stop()
		})
	}
}

func TestPreTaskChecks(t *testing.T) {
	t.Parallel()
	t.Run("failing check: error state, no fetch", func(t *testing.T) {
		missing := filepath.Join(t.TempDir(), "not-mounted", "render")
		f := newFarm(t, "error_retry_seconds = 0.3").registered()
		appendFile(t, filepath.Join(f.dir, "flamenco-worker.cfg"), "[pre_task_check]\nread.0 = "+missing+"\n")
		p := f.start()
		waitFor(t, 10*time.Second, "the error ack", func() bool { return f.fm.count("POST /ack-status-change/error") == 1 })
		if n := f.fm.count("POST /task"); n != 0 {
			t.Errorf("%d fetches despite a failing pre-task check", n)
		}
		waitFor(t, 5*time.Second, "the failing path in the log", func() bool { return strings.Contains(p.out.String(), missing) })
		// The share comes back: after error_retry_seconds the worker wakes and works.
		os.MkdirAll(missing, 0o755)
		waitFor(t, 10*time.Second, "waking up", func() bool { return f.fm.count("POST /ack-status-change/awake") >= 1 })
		waitFor(t, 10*time.Second, "a fetch", func() bool { return f.fm.count("POST /task") > 0 })
		p.stop()
	})
	t.Run("write check on a new file leaves nothing behind", func(t *testing.T) {
		dir := t.TempDir()
		target := filepath.Join(dir, "probe.txt")
		existing := filepath.Join(dir, "existing.txt")
		writeFile(t, existing, "keep me")
		f := newFarm(t, "").registered()
		appendFile(t, filepath.Join(f.dir, "flamenco-worker.cfg"), "[pre_task_check]\nwrite.0 = "+target+"\nwrite.1 = "+existing+"\nwrite.2 = "+dir+"\n")
		p := f.start()
		waitFor(t, 10*time.Second, "fetches", func() bool { return f.fm.count("POST /task") >= 2 })
		p.stop()
		entries, _ := os.ReadDir(dir)
		if len(entries) != 1 {
			t.Errorf("directory holds %d entries after write checks, want only existing.txt", len(entries))
		}
		if data, _ := os.ReadFile(existing); string(data) != "keep me" {
			t.Errorf("existing file changed to %q", data)
		}
	})
}

func appendFile(t *testing.T, path, text string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.WriteString(text)
}

func TestTestModeAcksTesting(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "").registered()
	p := f.start("--test")
	waitFor(t, 10*time.Second, "the testing ack", func() bool { return f.fm.count("POST /ack-status-change/testing") == 1 })
	p.stop()
	f.fm.mu.Lock()
	signOn := f.fm.calls[0].Body
	f.fm.mu.Unlock()
	if !strings.Contains(signOn, `"supported_task_types":["test-blender-render"]`) {
		t.Errorf("sign-on body %s, want only test-blender-render", signOn)
	}
}

func TestTaskTimeout(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "task_timeout_seconds = 0.5").registered()
	id := taskID(1)
	f.fm.queueTask(id, execCmd(longTask))
	p := f.start()
	pgid := groupOf(t, f.fm, id)
	waitFor(t, 10*time.Second, "the task to fail", func() bool { return f.fm.taskStatus(id) == "failed" })
	p.stop()
	if live := liveGroupMembers(pgid); len(live) > 0 {
		t.Errorf("processes %v still alive", live)
	}
	if !strings.Contains(f.fm.logText(id), "timed out after") {
		t.Errorf("no timeout message in the task log")
	}
}

func TestSIGTSTPWhileRunning(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "").registered()
	id := taskID(1)
	f.fm.queueTask(id, execCmd(longTask))
	p := f.start()
	pgid := groupOf(t, f.fm, id)
	p.signal(syscall.SIGTSTP)
	waitFor(t, 10*time.Second, "the asleep ack", func() bool { return f.fm.count("POST /ack-status-change/asleep") == 1 })
	if live := liveGroupMembers(pgid); len(live) > 0 {
		t.Errorf("processes %v still alive after going asleep", live)
	}
	waitFor(t, 5*time.Second, "the canceled status", func() bool { return f.fm.taskStatus(id) == "canceled" })
	p.stop()
}

func TestUnknownStatusRequestMeansAsleep(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "").registered()
	f.fm.set(func(fm *fakeManager) { fm.statusRequested = "sleep" }) // not a status the worker knows
	p := f.start()
	waitFor(t, 10*time.Second, "the asleep ack", func() bool { return f.fm.count("POST /ack-status-change/asleep") == 1 })
	p.stop()
	if !strings.Contains(p.out.String(), "going to sleep instead") {
		t.Errorf("no warning about the unknown status")
	}
}

func TestTaskRunsWhileManagerIsDown(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "").registered()
	id := taskID(1)
	f.fm.queueTask(id, logALot(20000), echoCmd("all printed"))
	f.fm.set(func(fm *fakeManager) {
		fm.updateHook = func(int, string) int { return http.StatusServiceUnavailable }
	})
	p := f.start()
	db := filepath.Join(f.dir, "flamenco-worker.db")
	waitFor(t, 20*time.Second, "the completed status in the local queue", func() bool {
		rows := queuedPayloads(t, db)
		return len(rows) > 0 && strings.Contains(rows[len(rows)-1], `"task_status":"completed"`)
	})
	p.stop()
	if n := len(f.fm.taskUpdates(id)); n != 0 {
		t.Errorf("the Manager accepted %d updates while refusing them all", n)
	}
}

func TestSIGUSR1DuringTask(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "").registered()
	id := taskID(1)
	f.fm.queueTask(id, echoCmd("first"), execCmd(longTask))
	p := f.start()
	pgid := groupOf(t, f.fm, id)
	p.signal(syscall.SIGUSR1)
	waitFor(t, 5*time.Second, "the dump", func() bool { return strings.Contains(p.out.String(), "=== end of dump ===") })
	p.stop()
	out := p.out.String()
	for _, want := range []string{"state: awake", "task " + id + ", command 1 at", fmt.Sprintf("subprocess pid %d", pgid), "task updates queued"} {
		if !strings.Contains(out, want) {
			t.Errorf("state summary lacks %q", want)
		}
	}
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
