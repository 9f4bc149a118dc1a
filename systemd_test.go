package main

import (
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// notifySocket is a systemd notify socket: a real unix datagram socket
// that records what the worker sends.
type notifySocket struct {
	path string
	mu   sync.Mutex
	got  []string
}

func newNotifySocket(t *testing.T) *notifySocket {
	ns := &notifySocket{path: filepath.Join(t.TempDir(), "notify.sock")}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: ns.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	go func() { // ends when conn is closed
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			ns.mu.Lock()
			ns.got = append(ns.got, strings.Split(string(buf[:n]), "\n")...)
			ns.mu.Unlock()
		}
	}()
	return ns
}

// messages returns what arrived, the lines starting with prefix only.
func (ns *notifySocket) messages(prefix string) []string {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	var out []string
	for _, m := range ns.got {
		if strings.HasPrefix(m, prefix) {
			out = append(out, m)
		}
	}
	return out
}

func (ns *notifySocket) has(line string) bool {
	for _, m := range ns.messages("") {
		if m == line {
			return true
		}
	}
	return false
}

func TestSystemdNotify(t *testing.T) {
	t.Parallel()
	ns := newNotifySocket(t)
	f := newFarm(t, "").registered()
	f.env = []string{"NOTIFY_SOCKET=" + ns.path, "WATCHDOG_USEC=200000"}
	p := f.start()
	waitFor(t, 10*time.Second, "READY=1 and watchdog pings", func() bool {
		return strings.HasPrefix(strings.Join(ns.messages("READY=1"), ",")+","+strings.Join(ns.messages("WATCHDOG=1"), ","), "READY=1,WATCHDOG=1,WATCHDOG=1")
	})
	if f.fm.count("POST /sign-on") != 1 {
		t.Errorf("READY=1 before signing on")
	}
	p.stop()
	if !ns.has("STOPPING=1") {
		t.Errorf("notifications = %q, want STOPPING=1 at shutdown", ns.messages(""))
	}
}

// TestWatchdogStopsWhenALoopIsStuck wedges one loop of a real worker (a
// test hook blocks it at a heartbeat after one second): the pings stop.
// Without a wedge they keep coming.
func TestWatchdogStopsWhenALoopIsStuck(t *testing.T) {
	t.Parallel()
	for _, loop := range []string{"", "fetch", "forward"} {
		name := loop
		if name == "" {
			name = "no wedge"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ns := newNotifySocket(t)
			f := newFarm(t, "").registered()
			if loop == "forward" { // the forwarder beats when an update comes: give it a task to report on
				f.fm.queueTask(taskID(1), execCmd(longTask))
			}
			f.env = []string{"NOTIFY_SOCKET=" + ns.path, "WATCHDOG_USEC=1000000", "FW_TEST_WEDGE=" + loop}
			p := f.start()
			if loop == "" {
				// 12 pings at one per 250 ms: well past a wedge's 1 s and 500 ms of staleness.
				waitFor(t, 20*time.Second, "12 watchdog pings", func() bool { return len(ns.messages("WATCHDOG=1")) >= 12 })
				p.stop()
				return
			}
			waitFor(t, 10*time.Second, "the stuck-loop error", func() bool {
				return strings.Contains(p.out.String(), "a loop of the worker is stuck") && strings.Contains(p.out.String(), "loops="+loop)
			})
			n := len(ns.messages("WATCHDOG=1"))
			time.Sleep(time.Second) // an observation window of four ping intervals
			if got := len(ns.messages("WATCHDOG=1")); got != n {
				t.Errorf("%d watchdog pings after %s got stuck", got-n, loop)
			}
			p.signal(syscall.SIGKILL)
		})
	}
}

func TestSystemdStatusLine(t *testing.T) {
	t.Parallel()
	ns := newNotifySocket(t)
	missing := filepath.Join(t.TempDir(), "not-mounted")
	f := newFarm(t, "error_retry_seconds = 0.5").registered()
	appendFile(t, filepath.Join(f.dir, "flamenco-worker.cfg"), "[pre_task_check]\nread.0 = "+missing+"\n")
	id := taskID(1)
	f.fm.queueTask(id, echoCmd("first"), execCmd(longTask))
	f.env = []string{"NOTIFY_SOCKET=" + ns.path}
	p := f.start()
	from := 0 // each expected line comes with or after the previous one
	status := func(want string) {
		t.Helper()
		waitFor(t, 15*time.Second, want, func() bool {
			got := ns.messages("STATUS=")
			for i := from; i < len(got); i++ {
				if strings.Contains(got[i], want) {
					from = i
					return true
				}
			}
			return false
		})
	}
	status("STATUS=error: pre-task check read.0: " + missing + " does not exist, retrying at ")
	os.MkdirAll(missing, 0o755)
	status("STATUS=task " + id + ": ")
	status(", 50 %") // the second of two commands
	p.signal(syscall.SIGTSTP)
	status("STATUS=asleep (SIGTSTP)")
	p.signal(syscall.SIGCONT)
	status("STATUS=idle, waiting for a task")
	f.fm.set(func(fm *fakeManager) { fm.statusRequested = "asleep" })
	status("STATUS=asleep (requested by the Manager)")
	f.fm.set(func(fm *fakeManager) {
		fm.statusRequested = "awake"
		fm.hijack = func(w http.ResponseWriter, r *http.Request) bool {
			if r.URL.Path == "/sign-off" {
				return false
			}
			http.Error(w, "proxy: upstream down", http.StatusBadGateway)
			return true
		}
	})
	status("; Manager unreachable since ")
	status(" updates queued")
	p.stop()
	if !ns.has("STATUS=shutting down: flushing the queue, signing off") {
		t.Errorf("no STATUS= line at shutdown: %q", ns.messages("STATUS="))
	}
}

func TestLivenessStale(t *testing.T) {
	l := newLiveness(nil)
	ctx := l.in(t.Context(), "fetch")
	l.waiting("fetch", forever)      // a running task
	waitingOnPurpose(ctx, time.Hour) // a retry deep down must not shorten it
	l.beat("forward")
	l.waiting("idle", time.Millisecond)
	time.Sleep(20 * time.Millisecond)
	stale := l.stale(10 * time.Millisecond)
	slices.Sort(stale)
	if got := strings.Join(stale, ","); got != "forward,idle" {
		t.Errorf("stale(10ms) = %q, want forward,idle (beat or wait ended 20 ms ago), not fetch", got)
	}
	if until := l.loops["fetch"]; time.Until(until) < 24*time.Hour {
		t.Errorf("waitingOnPurpose shortened a running task's wait to %v", until)
	}
	waitingOnPurpose(t.Context(), time.Hour) // no loop in ctx: nothing, no panic
}
