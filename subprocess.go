package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"
)

// maxLineBytes is where a subprocess line is split; longer output without a
// newline arrives as several log lines instead of failing the command.
const maxLineBytes = 64 << 10

// subprocess runs argv in its own process group with stdin from /dev/null
// and stdout and stderr merged into one pipe. Every output line is logged as
// "pid=<pid> > <line>" after onLine (if any) has seen it. Cancelling ctx
// aborts it: SIGTERM to the group, SIGKILL after the grace period. When the
// process exits, whatever is left of its group is killed, so no process of
// a command outlives it.
func (c *cmdCtx) subprocess(ctx context.Context, argv []string, onLine func(line string)) error {
	c.logf("Executing %s", shellJoin(argv))
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("creating output pipe: %w", err)
	}
	defer r.Close()
	growPipe(r)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = subprocessEnv(os.Environ(), c.env.extraEnv)
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = childAttrs()
	err = cmd.Start()
	w.Close()
	if err != nil {
		return fmt.Errorf("starting %s: %w", argv[0], err)
	}
	p := &proc{cmd: cmd, pid: cmd.Process.Pid, exited: make(chan struct{}), clock: time.Now()}
	c.rep.pid.Store(int64(p.pid))
	defer c.rep.pid.Store(0)
	ident, identOK := identityOf(p.pid) // before Wait: until reaped, /proc knows it
	ident.pid = p.pid
	go func() { // ends when the process has exited and is reaped
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()

	if err := c.writePIDFile(ident, identOK); err != nil {
		p.signalGroup(syscall.SIGKILL)
		<-p.exited
		return err
	}
	defer c.removePIDFile()

	readDone := make(chan error, 1)
	go func() { // ends at EOF on the pipe, or when the pipe is closed
		readDone <- c.readLines(r, p, onLine)
	}()

	failure := c.supervise(ctx, p, r, readDone)
	if failure != nil {
		return failure
	}
	return c.exitError(argv, p)
}

// proc is a running subprocess.
type proc struct {
	cmd        *exec.Cmd
	pid        int
	exited     chan struct{}
	waitErr    error
	clock      time.Time    // when it started; a monotonic clock reading
	lastOutput atomic.Int64 // when a line was last read: nanoseconds since clock
}

// outputSeen records that a line was read just now.
func (p *proc) outputSeen() { p.lastOutput.Store(int64(time.Since(p.clock))) }

// sinceOutput is how long ago a line was last read, on the monotonic
// clock, so that a step of the wall clock (NTP) cannot fake silence.
func (p *proc) sinceOutput() time.Duration {
	return time.Since(p.clock) - time.Duration(p.lastOutput.Load())
}

// signalGroup sends sig to the process group; ESRCH (no such group) is fine.
func (p *proc) signalGroup(sig syscall.Signal) bool {
	return syscall.Kill(-p.pid, sig) == nil
}

// supervise waits until the process has exited and its output is read,
// aborting it on cancellation or silence. It returns the abort reason, if any.
func (c *cmdCtx) supervise(ctx context.Context, p *proc, r *os.File, readDone <-chan error) error {
	var silence <-chan time.Time
	if c.env.silenceTimeout > 0 {
		tick := time.NewTicker(max(min(c.env.silenceTimeout/4, time.Second), 10*time.Millisecond))
		defer tick.Stop()
		silence = tick.C
	}
	var reason error
	suspect := false // silent at the last tick already
	for reason == nil {
		select {
		case <-p.exited:
			c.killLeftovers(p)
			c.drain(ctx, r, p, readDone)
			return nil
		case <-readDone: // the pipe closed; the process exits soon after
			readDone = nil
		case <-ctx.Done():
			reason = ctx.Err()
		case <-silence:
			// Output waiting in the pipe is not silence: the worker itself
			// was stopped (SIGSTOP, a VM pause) or slow. Nor is one late
			// look: right after such a stop the reader gets a tick to catch up.
			switch {
			case p.sinceOutput() < c.env.silenceTimeout || unreadBytes(r) > 0:
				suspect = false
			case !suspect:
				suspect = true
			default:
				reason = fmt.Errorf("command pid=%d produced no output for %d seconds, killed it", p.pid, int(c.env.silenceTimeout.Seconds()))
			}
		}
	}
	c.terminate(p)
	c.killLeftovers(p)
	aborted, cancel := context.WithCancel(ctx)
	cancel() // aborted, whatever the reason: the output gets drainCanceled at most
	c.drain(aborted, r, p, readDone)
	return reason
}

// killLeftovers kills what the exited process left behind: the rest of its
// process group and, where the worker is a child subreaper, every other
// descendant of the worker (a daemon that left the group with setsid).
func (c *cmdCtx) killLeftovers(p *proc) {
	if p.signalGroup(syscall.SIGKILL) {
		c.logf("Killed the processes that pid=%d left behind in its process group", p.pid)
	}
	if !c.env.sweep {
		return
	}
	if n := sweepDescendants(); n > 0 {
		c.logf("Killed %d processes that pid=%d left behind outside its process group", n, p.pid)
	}
}

// terminate stops the process group: SIGTERM, then SIGKILL after the grace period.
func (c *cmdCtx) terminate(p *proc) {
	c.logf("TERMinating subprocess pid=%d", p.pid)
	p.signalGroup(syscall.SIGTERM)
	grace := time.NewTimer(c.env.killGrace)
	defer grace.Stop()
	select {
	case <-p.exited:
	case <-grace.C:
		c.logf("Process pid=%d did not stop in %d seconds, going to KILL it", p.pid, int(c.env.killGrace.Seconds()))
	}
	p.signalGroup(syscall.SIGKILL) // also whatever the leader left behind
	<-p.exited
}

// Bounds on drain: a process that left the group can hold the output pipe
// open for ever, so the read is cut once nothing came for drainQuiet, once
// the command has been canceled for drainCanceled (what is still in the
// pipe is read first), and in any case drainLimit after the exit.
const (
	drainQuiet    = 2 * time.Second
	drainCanceled = time.Second
	drainLimit    = 30 * time.Second
)

// drain waits for the reader to reach EOF, or cuts the read (see drainQuiet).
func (c *cmdCtx) drain(ctx context.Context, r *os.File, p *proc, readDone <-chan error) {
	if readDone == nil {
		return
	}
	start := time.Now()
	var canceledAt time.Time
	cut := false
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-readDone:
			return
		case <-tick.C:
			if ctx.Err() != nil && canceledAt.IsZero() {
				canceledAt = time.Now()
			}
			quiet := p.sinceOutput() > drainQuiet && unreadBytes(r) == 0
			if quiet || time.Since(start) > drainLimit || (!canceledAt.IsZero() && time.Since(canceledAt) > drainCanceled) {
				if !cut {
					c.logf("Stopped reading the output of pid=%d: a process that left its process group holds the output open", p.pid)
				}
				cut = true
				r.SetReadDeadline(time.Now())
			}
		}
	}
}

// readLines reads the merged output until EOF, line by line.
func (c *cmdCtx) readLines(r io.Reader, p *proc, onLine func(string)) error {
	br := bufio.NewReaderSize(r, maxLineBytes)
	prefix := "pid=" + strconv.Itoa(p.pid) + " > "
	for {
		raw, err := br.ReadSlice('\n')
		if len(raw) > 0 {
			now := time.Now()
			p.outputSeen()
			line := cleanLine(raw)
			if onLine != nil {
				onLine(string(line))
			}
			c.rep.logOutput(now, prefix, line)
		}
		switch {
		case err == nil, errors.Is(err, bufio.ErrBufferFull):
		case errors.Is(err, io.EOF):
			return nil
		default:
			return err
		}
	}
}

// cleanLine strips trailing white space and replaces invalid UTF-8. The
// result may share raw's memory.
func cleanLine(raw []byte) []byte {
	end := len(raw)
	for end > 0 && (raw[end-1] == ' ' || raw[end-1] == '\n' || raw[end-1] == '\r' || raw[end-1] == '\t' || raw[end-1] == '\v' || raw[end-1] == '\f') {
		end--
	}
	raw = raw[:end]
	if utf8.Valid(raw) {
		return raw
	}
	return bytes.ToValidUTF8(raw, []byte("\uFFFD"))
}

// exitError logs how the process ended and turns a failure into an error.
func (c *cmdCtx) exitError(argv []string, p *proc) error {
	ws, _ := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		sig := signalName(ws.Signal())
		c.logf("Subprocess %s: Process pid=%d terminated due to signal %s", argv[0], p.pid, sig)
		return fmt.Errorf("subprocess %s (pid=%d) terminated by signal %s", argv[0], p.pid, sig)
	}
	code := ws.ExitStatus()
	c.logf("Subprocess %s: Process pid=%d exited with status code %d", argv[0], p.pid, code)
	if code != 0 {
		return fmt.Errorf("command %s (pid=%d) failed with status %d", argv[0], p.pid, code)
	}
	return nil
}

var signalNames = map[syscall.Signal]string{
	syscall.SIGHUP: "SIGHUP", syscall.SIGINT: "SIGINT", syscall.SIGQUIT: "SIGQUIT",
	syscall.SIGILL: "SIGILL", syscall.SIGABRT: "SIGABRT", syscall.SIGBUS: "SIGBUS",
	syscall.SIGFPE: "SIGFPE", syscall.SIGKILL: "SIGKILL", syscall.SIGUSR1: "SIGUSR1",
	syscall.SIGSEGV: "SIGSEGV", syscall.SIGUSR2: "SIGUSR2", syscall.SIGPIPE: "SIGPIPE",
	syscall.SIGALRM: "SIGALRM", syscall.SIGTERM: "SIGTERM", syscall.SIGXCPU: "SIGXCPU",
}

// signalName is "SIGTERM (15)", as Python prints it.
func signalName(s syscall.Signal) string {
	name, ok := signalNames[s]
	if !ok {
		name = s.String()
	}
	return fmt.Sprintf("%s (%d)", name, int(s))
}

// subprocessEnv is the worker's environment without LD_LIBRARY_PATH (the
// Python worker 2.5 removes it: a Blender build brings its own libraries),
// with the [environment] section's pairs set on top.
func subprocessEnv(base, extra []string) []string {
	env := make([]string, 0, len(base)+len(extra))
	overridden := map[string]bool{"LD_LIBRARY_PATH": true}
	for _, kv := range extra {
		k, _, _ := strings.Cut(kv, "=")
		overridden[k] = true
	}
	for _, kv := range base {
		k, _, _ := strings.Cut(kv, "=")
		if !overridden[k] {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// The PID file (subprocess_pid_file) names the running subprocess. Its
// first line is the bare PID, as the Python worker writes it, so people and
// scripts can read it; the second line is the identity that lets a later
// run prove the process is its own despite PID reuse:
//
//	12345
//	pgid=12345 start=8812345 boot=6b1f...-...-... worker=12000 worker_start=8800000
//
// start is field 22 of /proc/PID/stat (clock ticks since boot), boot the
// kernel's boot_id, worker and worker_start the same for the worker that
// started it. A file without that line (a bare number: the Python worker's,
// or one written where /proc is missing) proves nothing: nothing is ever
// killed on its account, and commands are refused while its PID is alive.

// procIdentity tells one process from any other that later gets its PID.
type procIdentity struct {
	pid, pgid int
	start     uint64
	boot      string
}

// same reports whether a and b are the same process.
func (a procIdentity) same(b procIdentity) bool {
	return a.pid == b.pid && a.start == b.start && a.boot == b.boot && a.boot != ""
}

// pidRecord is a parsed PID file.
type pidRecord struct {
	pid    int
	ident  *procIdentity // nil for a bare number
	worker procIdentity  // the worker that wrote the file, when ident != nil
}

// formatPIDFile is the PID file's content for the process sub, started by
// the worker self.
func formatPIDFile(sub, self procIdentity) string {
	return fmt.Sprintf("%d\npgid=%d start=%d boot=%s worker=%d worker_start=%d\n", sub.pid, sub.pgid, sub.start, sub.boot, self.pid, self.start)
}

// parsePIDFile reads a PID file's content; text is the trimmed content.
func parsePIDFile(path string, data []byte) (pidRecord, error) {
	text := strings.TrimSpace(string(data))
	if text == "" {
		return pidRecord{}, fmt.Errorf("empty PID file %s, refusing to create new subprocess just to be sure", path)
	}
	first, rest, _ := strings.Cut(text, "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil || pid <= 0 {
		return pidRecord{}, fmt.Errorf("PID file %s holds %q, which is not a process ID", path, text)
	}
	rec := pidRecord{pid: pid}
	kv := map[string]string{}
	for _, f := range strings.Fields(rest) {
		k, v, _ := strings.Cut(f, "=")
		kv[k] = v
	}
	id := procIdentity{pid: pid, boot: kv["boot"]}
	var e1, e2, e3, e4 error
	id.pgid, e1 = strconv.Atoi(kv["pgid"])
	id.start, e2 = strconv.ParseUint(kv["start"], 10, 64)
	rec.worker.boot = id.boot
	rec.worker.pid, e3 = strconv.Atoi(kv["worker"])
	rec.worker.start, e4 = strconv.ParseUint(kv["worker_start"], 10, 64)
	if errors.Join(e1, e2, e3, e4) == nil && id.boot != "" && id.pgid > 1 {
		rec.ident = &id
	}
	return rec, nil
}

// alive reports whether the process id names is running (not a zombie).
func (id procIdentity) alive() bool {
	live, ok := identityOf(id.pid)
	return ok && live.same(id) && processAlive(id.pid)
}

// checkPIDFile refuses to start a subprocess while the process recorded in
// subprocess_pid_file is alive, whoever it is, and removes a stale file.
func (c *cmdCtx) checkPIDFile() error {
	path := c.env.pidFile
	if path == "" {
		c.env.logger.Warn("no subprocess PID file configured; this is not recommended")
		return nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading PID file %s: %w", path, err)
	}
	rec, err := parsePIDFile(path, data)
	if err != nil {
		return err
	}
	if processAlive(rec.pid) {
		return fmt.Errorf("Subprocess from %s is still running: %s", path, describeProcess(rec.pid))
	}
	c.env.logger.Warn("removing stale subprocess PID file", "path", path, "pid", rec.pid)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing stale PID file: %w", err)
	}
	return nil
}

// writePIDFile records the process sub in the PID file, which must not
// exist yet. ok is false when sub's identity is unknown: the file then
// holds the bare PID.
func (c *cmdCtx) writePIDFile(sub procIdentity, ok bool) error {
	path := c.env.pidFile
	if path == "" {
		return nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if errors.Is(err, os.ErrExist) {
		old, _ := os.ReadFile(path)
		first, _, _ := strings.Cut(strings.TrimSpace(string(old)), "\n")
		c.logf("PID file %s already exists (has pid=%s), killing just-spawned process pid=%d", path, first, sub.pid)
		return fmt.Errorf("PID file %s already exists", path)
	}
	if err != nil {
		return fmt.Errorf("creating PID file: %w", err)
	}
	content := strconv.Itoa(sub.pid)
	if self, selfOK := identityOf(os.Getpid()); ok && selfOK {
		content = formatPIDFile(sub, self)
	}
	_, err = f.WriteString(content)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing PID file: %w", err)
	}
	return nil
}

func (c *cmdCtx) removePIDFile() {
	if c.env.pidFile == "" {
		return
	}
	if err := os.Remove(c.env.pidFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		c.env.logger.Warn("removing PID file", "path", c.env.pidFile, "err", err)
	}
}

// processAlive reports whether a live (not zombie) process has this PID.
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	if err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	s, ok := readStat(pid)
	return !ok || s.state != 'Z'
}

// describeProcess is "pid=<pid> (<command line>)" where /proc tells it.
func describeProcess(pid int) string {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || len(cmdline) == 0 {
		return fmt.Sprintf("pid=%d", pid)
	}
	return fmt.Sprintf("pid=%d (%s)", pid, strings.TrimSpace(strings.ReplaceAll(string(cmdline), "\x00", " ")))
}

// reapOrphan runs at start-up, before any work is accepted. When the PID
// file proves that its process group is what an earlier run of a worker
// left behind (that worker was killed with SIGKILL, so its cleanup never
// ran), it kills the whole group, grandchildren included, waits until they
// are gone and removes the file: otherwise the orphans keep rendering and
// the file blocks every task. It never kills on a bare PID, a process that
// reuses the recorded PID, or a subprocess of a worker that still runs.
func reapOrphan(pidFile string, logger *slog.Logger) {
	if pidFile == "" {
		return
	}
	data, err := os.ReadFile(pidFile)
	if err != nil {
		return
	}
	rec, err := parsePIDFile(pidFile, data)
	if err != nil || rec.ident == nil {
		return // proves nothing; commands refuse to start while that PID lives
	}
	log := logger.With("pid_file", pidFile, "pid", rec.pid)
	id, boot := *rec.ident, bootID()
	if boot == "" {
		return // no /proc: nothing can be proved
	}
	switch live, ok := identityOf(rec.pid); {
	case id.boot != boot:
		log.Warn("removing a subprocess PID file written before the last reboot")
	case rec.worker.alive():
		log.Info("the subprocess in the PID file belongs to a worker that still runs; leaving it alone", "worker_pid", rec.worker.pid)
		return
	case ok && live.start != id.start:
		log.Warn("the PID file's process ID now belongs to another process; not killing it", "process", describeProcess(rec.pid))
		return
	default: // the recorded process, alive or dead: its group is ours
		if members := groupMembers(id.pgid); len(members) > 0 {
			log.Warn("killing the process group left behind by an earlier worker run", "pgid", id.pgid, "members", fmt.Sprint(members), "process", describeProcess(rec.pid))
		}
		if err := killGroup(id.pgid); err != nil {
			log.Error("cannot kill the process group left behind by an earlier worker run", "err", err)
			return
		}
	}
	if err := os.Remove(pidFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Warn("removing the subprocess PID file", "err", err)
	}
}
