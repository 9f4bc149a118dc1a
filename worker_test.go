package main

import (
	"bytes"
	"context"
	"database/sql"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestMain lets the test binary double as the worker: with
// FW_TEST_WORKER=1 it runs the real worker (run, with short fixed delays)
// on its arguments. End-to-end tests start it as a real process, so that
// signals, SIGKILL and process groups are real, and -race covers it too.
func TestMain(m *testing.M) {
	if os.Getenv("FW_TEST_WORKER") == "1" {
		tune := testTuning()
		applyTestHooks(&tune) // signals_test.go
		if os.Getenv("FW_TEST_REAL_TUNING") == "1" {
			tune = defaultTuning() // bench/: the real delays, with a profile
		}
		if path := os.Getenv("FW_CPUPROFILE"); path != "" {
			f, _ := os.Create(path)
			pprof.StartCPUProfile(f)
			code := runTuned(context.Background(), os.Args[1:], os.Stdout, os.Stderr, tune)
			pprof.StopCPUProfile()
			os.Exit(code)
		}
		os.Exit(runTuned(context.Background(), os.Args[1:], os.Stdout, os.Stderr, tune))
	}
	// Every child (re-exec'd workers and tests) skips the race detector's
	// 1 s sleep at exit; a race still fails it through exit code 66.
	os.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	// The end-to-end tests (t.Parallel) spend their time waiting for a
	// worker process; run 8 at once unless -parallel says otherwise.
	flag.Parse()
	explicit := false
	flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "test.parallel" })
	if !explicit {
		flag.Set("test.parallel", "8")
	}
	os.Exit(m.Run())
}

func testTuning() tuning {
	return tuning{
		intervals:     intervals{fetchEmpty: 50 * time.Millisecond, fetchFailed: 100 * time.Millisecond, asleepPoll: 100 * time.Millisecond, queueLimit: 10},
		registerRetry: 100 * time.Millisecond,
		killGrace:     2 * time.Second,
		fileWait:      100 * time.Millisecond,
		outputWindow:  300 * time.Millisecond,
		updateBackoff: backoff{min: 20 * time.Millisecond, max: 200 * time.Millisecond},
		http:          httpTimeouts{connect: time.Second, header: time.Second, idle: time.Second},
		ssdpTargets:   strings.Fields(os.Getenv("FW_TEST_SSDP")),
	}
}

// startDir is the package directory (tests run in it before any Chdir).
var startDir, _ = os.Getwd()

// farm is one worker's directories and its fake Manager.
type farm struct {
	t    *testing.T
	fm   *fakeManager
	dir  string // the worker's working directory: config, queue, PID file
	home string
	env  []string // extra environment for the worker process
}

// newFarm writes ./flamenco-worker.cfg pointing at a new fake Manager, with
// short intervals; extra is appended to the [flamenco-worker] section.
func newFarm(t *testing.T, extra string) *farm {
	f := &farm{t: t, fm: newFakeManager(t), dir: t.TempDir(), home: t.TempDir()}
	cfg := fmt.Sprintf(`[flamenco-worker]
manager_url = %s
task_types = sleep debug
may_i_run_interval_seconds = 0.2
push_act_max_interval_seconds = 0.1
push_log_max_interval_seconds = 0.1
%s
`, f.fm.URL(), extra)
	writeFile(t, filepath.Join(f.dir, "flamenco-worker.cfg"), cfg)
	return f
}

// registered makes the worker known to the Manager, with credentials in
// the home config file, as after an earlier run.
func (f *farm) registered() *farm {
	f.fm.addWorker("5e0000000000000000000abc", "s3cret-s3cret")
	writeFile(f.t, filepath.Join(f.home, ".flamenco-worker.cfg"), "[flamenco-worker]\nworker_id = 5e0000000000000000000abc\nworker_secret = s3cret-s3cret\n")
	return f
}

// testSeed is the seed of a test's random choices: FW_TEST_SEED, or a new
// one; it is logged so that a failure can be replayed.
func testSeed(t *testing.T) uint64 {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("FW_TEST_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("random seed %d (replay with FW_TEST_SEED=%d)", seed, seed)
	return seed
}

// quietLogger discards everything, for tests that do not read the log.
var quietLogger = slog.New(slog.DiscardHandler)

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// workerProc is the worker running as a real process.
type workerProc struct {
	t    *testing.T
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{}
	code int
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// start runs the worker in the farm's directory with the farm's HOME.
func (f *farm) start(args ...string) *workerProc {
	f.t.Helper()
	return startWith(f, func(*exec.Cmd) {}, args...)
}

// startWith is farm.start with a chance to change the command first.
func startWith(f *farm, prepare func(*exec.Cmd), args ...string) *workerProc {
	f.t.Helper()
	p := &workerProc{t: f.t, out: &lockedBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(os.Args[0], args...)
	p.cmd.Dir = f.dir
	p.cmd.Env = append(os.Environ(), "FW_TEST_WORKER=1", "HOME="+f.home)
	p.cmd.Env = append(p.cmd.Env, f.env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	prepare(p.cmd)
	if err := p.cmd.Start(); err != nil {
		f.t.Fatal(err)
	}
	go func() { // ends when the worker exits
		p.cmd.Wait()
		p.code = p.cmd.ProcessState.ExitCode()
		close(p.done)
	}()
	f.t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
		if f.t.Failed() {
			f.t.Logf("worker output:\n%s", p.out.String())
		}
	})
	return p
}

// wait waits for the worker to exit and returns its exit code.
func (p *workerProc) wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
		return p.code
	case <-time.After(timeout):
		p.t.Fatalf("worker still running after %v; output:\n%s", timeout, p.out.String())
		return -1
	}
}

func (p *workerProc) signal(sig syscall.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("signal %v: %v", sig, err)
	}
}

// stop shuts the worker down with SIGTERM and expects a clean exit.
func (p *workerProc) stop() {
	p.t.Helper()
	p.signal(syscall.SIGTERM)
	if code := p.wait(15 * time.Second); code != 0 {
		p.t.Fatalf("exit code after SIGTERM = %d, want 0; output:\n%s", code, p.out.String())
	}
}

func echoCmd(msg string) string {
	return fmt.Sprintf(`{"name": "echo", "settings": {"message": %q}}`, msg)
}
func execCmd(cmd string) string { return fmt.Sprintf(`{"name": "exec", "settings": {"cmd": %q}}`, cmd) }

func TestFirstStartRegistersAndStoresCredentials(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "")
	p := f.start()
	waitFor(t, 10*time.Second, "a task fetch", func() bool { return f.fm.count("POST /task") > 0 })
	p.stop()

	calls := f.fm.callPaths()
	if calls[0] != "POST /register-worker" || f.fm.count("POST /sign-on") != 0 {
		t.Errorf("calls = %v, want /register-worker first and no /sign-on", calls)
	}
	home := filepath.Join(f.home, ".flamenco-worker.cfg")
	info, err := os.Stat(home)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Errorf("home config mode = %v, want 0600", info.Mode().Perm())
	}
	data, _ := os.ReadFile(home)
	if !regexp.MustCompile(`worker_id = [0-9a-f]{24}\n`).Match(data) || !regexp.MustCompile(`worker_secret = [A-Za-z0-9]{64}\n`).Match(data) {
		t.Errorf("home config lacks the new credentials:\n%s", data)
	}
	if calls[len(calls)-1] != "POST /sign-off" {
		t.Errorf("last call = %s, want POST /sign-off", calls[len(calls)-1])
	}
}

func TestStartWithCredentialsSignsOn(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "").registered()
	p := f.start()
	waitFor(t, 10*time.Second, "a task fetch", func() bool { return f.fm.count("POST /task") > 0 })
	p.stop()
	calls := f.fm.callPaths()
	if calls[0] != "POST /sign-on" || f.fm.count("POST /register-worker") != 0 {
		t.Errorf("calls = %v, want /sign-on first and no registration", calls)
	}
	f.fm.mu.Lock()
	signOn := f.fm.calls[0]
	f.fm.mu.Unlock()
	if !strings.Contains(signOn.Body, `"supported_task_types":["sleep","debug"]`) || !strings.Contains(signOn.Body, `"nickname"`) {
		t.Errorf("sign-on body = %s", signOn.Body)
	}
}

func TestSignOnRefusedReregisters(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "")
	// Credentials the Manager forgot (its database was reset).
	writeFile(t, filepath.Join(f.home, ".flamenco-worker.cfg"), "[flamenco-worker]\nworker_id = 5e0000000000000000000def\nworker_secret = old\n")
	p := f.start()
	waitFor(t, 10*time.Second, "a task fetch", func() bool { return f.fm.count("POST /task") > 0 })
	p.stop()
	want := []string{"POST /sign-on", "POST /register-worker", "POST /sign-on", "POST /task"}
	if got := f.fm.callPaths()[:4]; strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("calls = %v, want %v", got, want)
	}
	data, _ := os.ReadFile(filepath.Join(f.home, ".flamenco-worker.cfg"))
	if strings.Contains(string(data), "5e0000000000000000000def") || strings.Contains(string(data), "secret = old") {
		t.Errorf("old credentials still in the home config:\n%s", data)
	}
}

var logLineRe = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00: `)

func TestTaskRunsToCompletion(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "").registered()
	id := taskID(1)
	f.fm.queueTask(id, echoCmd("Preparing to sleep"),
		`{"name": "sleep", "settings": {"time_in_seconds": 0.2}}`,
		execCmd(`sh -c 'echo from the subprocess; echo to stderr >&2'`))
	p := f.start()
	waitFor(t, 15*time.Second, "the task to complete", func() bool { return f.fm.taskStatus(id) == "completed" })
	p.stop()

	if got := transitions(f.fm.statuses(id)); got != "active completed" {
		t.Errorf("status transitions = %q, want \"active completed\"", got)
	}
	first := f.fm.taskUpdates(id)[0].Doc
	for _, k := range []string{"activity", "current_command_idx", "task_progress_percentage", "command_progress_percentage"} {
		if _, ok := first[k]; !ok {
			t.Errorf("first update lacks %q: %v", k, first)
		}
	}
	log := f.fm.logText(id)
	for _, want := range []string{"Preparing to sleep", "sleep: Sleeping for 0.2 seconds", "> from the subprocess", "> to stderr", "exec: Finished"} {
		if !strings.Contains(log, want) {
			t.Errorf("task log lacks %q:\n%s", want, log)
		}
	}
	for _, line := range strings.Split(strings.TrimSpace(log), "\n") {
		if !logLineRe.MatchString(line) {
			t.Errorf("log line without UTC timestamp prefix: %q", line)
		}
	}
	ups := f.fm.taskUpdates(id)
	last := ups[len(ups)-1].Doc
	if last["activity"] != "Task completed" || last["task_progress_percentage"] != float64(100) {
		t.Errorf("last update = %v, want activity 'Task completed' at 100%%", last)
	}
}

func TestFailedTasksDoNotStopTheWorker(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "").registered()
	f.fm.queueTask(taskID(1), execCmd("sh -c 'echo failing; exit 3'"))
	f.fm.queueTask(taskID(2), `{"name": "render_in_my_dreams", "settings": {}}`)
	f.fm.queueTask(taskID(3), `{"name": "exec", "settings": {"cmd": ["not", "a", "string"]}}`)
	f.fm.queueTask(taskID(4), echoCmd("still alive"))
	p := f.start()
	waitFor(t, 20*time.Second, "task 4 to complete", func() bool { return f.fm.taskStatus(taskID(4)) == "completed" })
	p.stop()

	cases := []struct {
		id       string
		activity string
	}{
		{taskID(1), "Error executing: command sh (pid="},
		{taskID(2), `command 0 of task ` + taskID(2) + ` has unknown command name "render_in_my_dreams"`},
		{taskID(3), `exec.(task_id=` + taskID(3) + `, command_idx=0): Invalid settings: "cmd" must be a string, not an array`},
	}
	for _, c := range cases {
		if got := f.fm.taskStatus(c.id); got != "failed" {
			t.Errorf("task %s status = %s, want failed", c.id, got)
		}
		var acts []string
		for _, u := range f.fm.taskUpdates(c.id) {
			acts = append(acts, fmt.Sprint(u.Doc["activity"]))
		}
		if !strings.Contains(strings.Join(acts, "\n"), c.activity) {
			t.Errorf("task %s activities %q lack %q", c.id, acts, c.activity)
		}
	}
	if !strings.Contains(f.fm.logText(taskID(1)), "> failing") {
		t.Errorf("failing command's output not in its log")
	}
}

// logALot is a task that logs n numbered lines through a subprocess.
func logALot(n int) string {
	return execCmd(fmt.Sprintf(`sh -c 'i=0; while [ $i -lt %d ]; do echo "line $i"; i=$((i+1)); done'`, n))
}

// checkLinesOnceInOrder asserts "line 0".."line n-1" each arrived exactly once, in order.
func checkLinesOnceInOrder(t *testing.T, log string, n int) {
	t.Helper()
	next := 0
	for _, l := range strings.Split(log, "\n") {
		_, text, ok := strings.Cut(l, " > line ")
		if !ok {
			continue
		}
		if text != fmt.Sprint(next) {
			t.Fatalf("got line %s, want line %d (duplicated, lost or reordered)", text, next)
		}
		next++
	}
	if next != n {
		t.Fatalf("got %d lines, want %d", next, n)
	}
}

func TestUpdatesSurviveAFlakyManager(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "push_log_max_entries = 20").registered()
	id := taskID(1)
	f.fm.queueTask(id, logALot(300))
	attempts := 0
	f.fm.set(func(fm *fakeManager) {
		fm.updateHook = func(n int, _ string) int {
			attempts++
			if attempts%3 == 0 {
				return http.StatusServiceUnavailable
			}
			return 0
		}
		// Every fourth update request: the connection drops without an answer.
		drops := 0
		fm.hijack = func(w http.ResponseWriter, r *http.Request) bool {
			if !strings.HasSuffix(r.URL.Path, "/update") {
				return false
			}
			drops++
			if drops%4 != 0 {
				return false
			}
			panic(http.ErrAbortHandler) // the connection drops without an answer
		}
	})
	p := f.start()
	waitFor(t, 30*time.Second, "the task to complete", func() bool { return f.fm.taskStatus(id) == "completed" })
	p.stop()
	checkLinesOnceInOrder(t, f.fm.logText(id), 300)
	if got := transitions(f.fm.statuses(id)); got != "active completed" {
		t.Errorf("status transitions = %q, want \"active completed\"", got)
	}
}

// liveGroupMembers lists the processes of group pgid that are not zombies
// (a killed orphan stays a zombie until init reaps it, which in a container
// may be never). SIGKILL is asynchronous, so it gives them a second.
func liveGroupMembers(pgid int) []int {
	for deadline := time.Now().Add(time.Second); ; time.Sleep(20 * time.Millisecond) {
		if live := groupMembers(pgid); len(live) == 0 || time.Now().After(deadline) {
			return live
		}
	}
}

// transitions squeezes repeated statuses: every update of a running task
// carries task_status "active", as the Python worker's do.
func transitions(statuses []string) string {
	var out []string
	for _, s := range statuses {
		if len(out) == 0 || out[len(out)-1] != s {
			out = append(out, s)
		}
	}
	return strings.Join(out, " ")
}

// queuedPayloads reads the queue database a worker left behind.
func queuedPayloads(t *testing.T, path string) []string {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(`SELECT payload FROM task_updates ORDER BY id`)
	if err != nil {
		return nil // not created yet
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var p string
		rows.Scan(&p)
		out = append(out, p)
	}
	return out
}

func TestQueueSurvivesSIGKILL(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "push_log_max_entries = 5").registered()
	id := taskID(1)
	f.fm.queueTask(id, logALot(40), `{"name": "sleep", "settings": {"time_in_seconds": 60}}`)
	f.fm.set(func(fm *fakeManager) {
		fm.updateHook = func(int, string) int { return http.StatusServiceUnavailable } // down for updates
	})
	p := f.start()
	waitFor(t, 15*time.Second, "the task to start sleeping", func() bool {
		return len(queuedPayloads(t, filepath.Join(f.dir, "flamenco-worker.db"))) >= 9
	})
	p.signal(syscall.SIGKILL)
	p.wait(5 * time.Second)
	left := queuedPayloads(t, filepath.Join(f.dir, "flamenco-worker.db"))
	if len(left) < 9 {
		t.Fatalf("only %d updates queued before the kill", len(left))
	}

	f.fm.set(func(fm *fakeManager) { fm.updateHook = nil })
	p2 := f.start()
	waitFor(t, 15*time.Second, "the old updates to arrive", func() bool { return len(f.fm.taskUpdates(id)) >= len(left) })
	p2.stop()
	got := f.fm.taskUpdates(id)
	for i, want := range left {
		if got[i].Raw != want {
			t.Fatalf("update %d after restart = %s, want the queued %s", i, got[i].Raw, want)
		}
	}
}

func TestSIGTERMAbortsTaskAndSignsOff(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "").registered()
	id := taskID(1)
	// The task starts a background child, then waits: both must be gone.
	f.fm.queueTask(id, execCmd(`sh -c 'echo group $$; sleep 300 & sleep 300; wait'`))
	p := f.start()
	pgid := groupOf(t, f.fm, id)
	p.stop() // a clean exit 0; bench/ measures how long it takes
	if live := liveGroupMembers(pgid); len(live) > 0 {
		t.Errorf("processes %v of the task's group %d still alive after shutdown", live, pgid)
	}
	if got := transitions(f.fm.statuses(id)); got != "active" {
		t.Errorf("status transitions = %q, want only active (no status for an aborted task)", got)
	}
	calls := f.fm.callPaths()
	if calls[len(calls)-1] != "POST /sign-off" {
		t.Errorf("last call = %s, want POST /sign-off", calls[len(calls)-1])
	}
}

func TestSIGUSR1DumpsStacksAndCarriesOn(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "").registered()
	p := f.start()
	waitFor(t, 10*time.Second, "a task fetch", func() bool { return f.fm.count("POST /task") > 0 })
	p.signal(syscall.SIGUSR1)
	waitFor(t, 5*time.Second, "the dump", func() bool { return strings.Contains(p.out.String(), "=== end of dump ===") })
	out := p.out.String()
	for _, want := range []string{"state: awake", "task updates queued", "goroutine 1 [", "(*worker).loop"} {
		if !strings.Contains(out, want) {
			t.Errorf("dump lacks %q", want)
		}
	}
	n := f.fm.count("POST /task")
	waitFor(t, 5*time.Second, "fetching to go on", func() bool { return f.fm.count("POST /task") > n })
	p.stop()
}
