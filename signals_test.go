package main

import (
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// applyTestHooks sets the test hooks a re-exec'd worker reads from its
// environment: FW_TEST_CAUGHT_FD=3 writes one byte to fd 3 once signals are
// caught, then waits until fd 4 is closed; FW_TEST_WEDGE=LOOP blocks LOOP for good right after its first heartbeat
// after one second.
func applyTestHooks(tune *tuning) {
	if os.Getenv("FW_TEST_CAUGHT_FD") == "3" {
		tune.testHooks.signalsCaught = func() {
			f := os.NewFile(3, "caught")
			f.Write([]byte{1})
			f.Close()
			g := os.NewFile(4, "go on")
			g.Read(make([]byte, 1)) // EOF once the test has sent its signal
			g.Close()
		}
	}
	if loop := os.Getenv("FW_TEST_WEDGE"); loop != "" {
		start := time.Now()
		tune.testHooks.beat = func(l string) {
			if l == loop && time.Since(start) > time.Second {
				select {} // wedged: this loop never beats again
			}
		}
	}
}

// startEarly starts the worker with a pipe on fd 3, sends sig once the
// worker has caught its signals (the earliest moment a Go program can
// handle one: before it, between execve and the Go runtime's start, the
// kernel's default action applies to any program), then lets it go on.
func startEarly(f *farm, sig syscall.Signal) *workerProc {
	f.t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		f.t.Fatal(err)
	}
	defer r.Close()
	goOnR, goOn, err := os.Pipe()
	if err != nil {
		f.t.Fatal(err)
	}
	f.env = append(f.env, "FW_TEST_CAUGHT_FD=3")
	p := startWith(f, func(c *exec.Cmd) { c.ExtraFiles = []*os.File{w, goOnR} })
	w.Close()
	goOnR.Close()
	defer goOn.Close() // the worker goes on once sig is sent
	if _, err := r.Read(make([]byte, 1)); err != nil {
		f.t.Fatalf("worker did not report catching its signals: %v; output:\n%s", err, p.out.String())
	}
	p.signal(sig)
	return p
}

// exitedBy says how a worker ended: "exit N" or the signal that killed it.
func exitedBy(p *workerProc) string {
	ws := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		return "killed by " + ws.Signal().String()
	}
	return "exit " + strings.TrimPrefix(p.cmd.ProcessState.String(), "exit status ")
}

func TestEarlySignals(t *testing.T) {
	t.Parallel()
	t.Run("SIGTERM before the Manager connection: clean exit", func(t *testing.T) {
		f := newFarm(t, "").registered()
		p := startEarly(f, syscall.SIGTERM)
		p.wait(15 * time.Second)
		if got := exitedBy(p); got != "exit 0" {
			t.Fatalf("worker sent SIGTERM at its start: %s, want exit 0; output:\n%s", got, p.out.String())
		}
	})
	t.Run("SIGTSTP at the start: asleep, not stopped", func(t *testing.T) {
		f := newFarm(t, "").registered()
		p := startEarly(f, syscall.SIGTSTP)
		waitFor(t, 10*time.Second, "the asleep ack", func() bool { return f.fm.count("POST /ack-status-change/asleep") == 1 })
		if n := f.fm.count("POST /task"); n != 0 {
			t.Errorf("%d task fetches after an early SIGTSTP", n)
		}
		p.stop()
	})
}

// TestSIGHUPKeepsRunning is logrotate's cycle: the log file is moved away,
// SIGHUP makes the worker reopen it, and it keeps running.
func TestSIGHUPKeepsRunning(t *testing.T) {
	t.Parallel()
	f := newFarm(t, `
[loggers]
keys = root
[logger_root]
level = DEBUG
handlers = file
[handlers]
keys = file
[handler_file]
class = logging.FileHandler
args = ('worker.log',)
`).registered()
	p := f.start()
	logPath := filepath.Join(f.dir, "worker.log")
	read := func(path string) string { b, _ := os.ReadFile(path); return string(b) }
	waitFor(t, 10*time.Second, "the signed-on line in worker.log", func() bool { return strings.Contains(read(logPath), "signed on at the Manager") })
	if err := os.Rename(logPath, logPath+".1"); err != nil {
		t.Fatal(err)
	}
	p.signal(syscall.SIGHUP)
	waitFor(t, 10*time.Second, "the SIGHUP log line", func() bool { return strings.Contains(p.out.String(), "SIGHUP: reopening the log files") })
	fetches := f.fm.count("POST /task")
	waitFor(t, 10*time.Second, "fetching on after SIGHUP", func() bool { return f.fm.count("POST /task") > fetches+2 })
	p.stop()
	if fresh := read(logPath); !strings.Contains(fresh, "Flamenco Worker is shut down") {
		t.Errorf("after SIGHUP the reopened worker.log lacks the shutdown line:\n%s", fresh)
	}
	if strings.Contains(read(logPath+".1"), "Flamenco Worker is shut down") {
		t.Errorf("the rotated worker.log.1 was still written to after SIGHUP")
	}
}

func TestSIGPIPEOnClosedStderr(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "").registered()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	p := startWith(f, func(c *exec.Cmd) { c.Stderr = w })
	w.Close()
	waitFor(t, 10*time.Second, "a fetch", func() bool { return f.fm.count("POST /task") > 0 })
	r.Close() // every log line now gets EPIPE and a SIGPIPE
	p.signal(syscall.SIGUSR1)
	fetches := f.fm.count("POST /task")
	waitFor(t, 10*time.Second, "fetching on with stderr closed", func() bool {
		select {
		case <-p.done:
			t.Fatalf("worker with a closed stderr: %s", exitedBy(p))
		default:
		}
		return f.fm.count("POST /task") > fetches+3
	})
	p.signal(syscall.SIGTERM)
	p.wait(15 * time.Second)
	if got := exitedBy(p); got != "exit 0" {
		t.Errorf("worker with a closed stderr, after SIGTERM: %s, want exit 0", got)
	}
	if calls := f.fm.callPaths(); calls[len(calls)-1] != "POST /sign-off" {
		t.Errorf("last call = %s, want the sign-off", calls[len(calls)-1])
	}
}

func TestSIGQUITDumpsAndExits(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "").registered()
	p := f.start()
	waitFor(t, 10*time.Second, "a fetch", func() bool { return f.fm.count("POST /task") > 0 })
	p.signal(syscall.SIGQUIT)
	p.wait(15 * time.Second)
	// Go's dump and exit 2: not 47, so the unit restarts the worker.
	if got := exitedBy(p); got != "exit 2" || !strings.Contains(p.out.String(), "goroutine ") {
		t.Errorf("after SIGQUIT: %s, want Go's goroutine dump and exit 2", got)
	}
}

func TestSIGCONTKeepsManagerSleep(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "").registered()
	f.fm.set(func(fm *fakeManager) { fm.statusRequested = "asleep" })
	p := f.start()
	waitFor(t, 10*time.Second, "the asleep ack", func() bool { return f.fm.count("POST /ack-status-change/asleep") == 1 })
	p.signal(syscall.SIGCONT)
	waitFor(t, 10*time.Second, "the log line saying why", func() bool {
		return strings.Contains(p.out.String(), "staying asleep: the Manager asked for it")
	})
	polls := f.fm.count("GET /status-change")
	waitFor(t, 10*time.Second, "more status-change polls", func() bool { return f.fm.count("GET /status-change") > polls+2 })
	if n := f.fm.count("POST /ack-status-change/awake") + f.fm.count("POST /task") - 1; n != 0 {
		t.Errorf("a local SIGCONT overrode the Manager's sleep: calls %v", f.fm.callPaths())
	}
	// A local sleep on top of the Manager's is still the Manager's: SIGCONT keeps it.
	p.signal(syscall.SIGTSTP)
	waitFor(t, 10*time.Second, "the second asleep ack", func() bool { return f.fm.count("POST /ack-status-change/asleep") == 2 })
	p.signal(syscall.SIGCONT)
	waitFor(t, 10*time.Second, "the second log line saying why", func() bool {
		return strings.Count(p.out.String(), "staying asleep: the Manager asked for it") == 2
	})
	// The Manager wakes it.
	f.fm.set(func(fm *fakeManager) { fm.statusRequested = "awake" })
	waitFor(t, 10*time.Second, "the awake ack", func() bool { return f.fm.count("POST /ack-status-change/awake") == 1 })
	p.stop()
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
