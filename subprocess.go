package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"
)

// maxLineBytes splits longer output into several log lines instead of failing the command.
const maxLineBytes = 64 << 10

// subprocess runs argv in its own process group, stdin /dev/null, stdout
// and stderr merged, and logs each output line as "pid=<pid> > <line>" after
// onLine has seen it. Cancelling ctx (or silence) sends SIGTERM to the
// group, SIGKILL after the grace; what the process leaves behind is killed.
func (c *cmdCtx) subprocess(ctx context.Context, argv []string, onLine func(line string)) error {
	c.logf("Executing %s", shellJoin(argv))
	r, w, err := os.Pipe() // our own pipe: exec's would be closed by Wait, the drain needs it after
	if err != nil {
		return fmt.Errorf("creating output pipe: %w", err)
	}
	defer r.Close()
	growPipe(r)
	sctx, silenced := context.WithCancelCause(ctx)
	defer silenced(nil)
	cmd := exec.CommandContext(sctx, argv[0], argv[1:]...)
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool { // as the Python worker: a Blender build brings its own libraries
		return strings.HasPrefix(kv, "LD_LIBRARY_PATH=")
	})
	cmd.Env = append(env, c.env.extraEnv...) // of duplicate keys, exec passes the last
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = childAttrs()
	var termAt time.Time // set by Cancel, which exec runs before Wait returns
	cmd.Cancel = func() error {
		termAt = time.Now()
		c.logf("TERMinating subprocess pid=%d", cmd.Process.Pid)
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	}
	cmd.WaitDelay = c.env.killGrace // then Wait KILLs the leader; killLeftovers the rest of the group
	err = cmd.Start()
	w.Close()
	if err != nil {
		return fmt.Errorf("starting %s: %w", argv[0], err)
	}
	p := &proc{pid: cmd.Process.Pid, clock: time.Now()}
	c.rep.pid.Store(int64(p.pid))
	defer c.rep.pid.Store(0)
	if err := c.writePIDFile(p.pid); err != nil { // before Wait: until reaped, /proc knows the process
		syscall.Kill(-p.pid, syscall.SIGKILL)
		cmd.Wait()
		return err
	}
	defer c.removePIDFile()
	readDone := make(chan error, 1)
	go func() { readDone <- c.readLines(r, p, onLine) }() // ends at EOF or when drain cuts the read
	go c.watchSilence(sctx, p, r, silenced)               // ends with sctx
	cmd.Wait()
	ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !termAt.IsZero() && ws.Signal() == syscall.SIGKILL && time.Since(termAt) >= c.env.killGrace {
		c.logf("Process pid=%d did not stop in %d seconds, going to KILL it", p.pid, int(c.env.killGrace.Seconds()))
	} else if !termAt.IsZero() {
		c.graceForGroup(p, termAt)
	}
	c.killLeftovers(p)
	if termAt.IsZero() {
		c.drain(ctx, r, p, readDone)
		return c.exitError(argv, ws, p.pid)
	}
	c.drain(sctx, r, p, readDone) // canceled: the output gets drainCanceled at most
	return cmp.Or(ctx.Err(), context.Cause(sctx))
}

// proc is a running subprocess and when it last wrote a line.
type proc struct {
	pid        int
	clock      time.Time    // start, on the monotonic clock: an NTP step cannot fake silence
	lastOutput atomic.Int64 // nanoseconds since clock
}

func (p *proc) outputSeen() { p.lastOutput.Store(int64(time.Since(p.clock))) }

func (p *proc) sinceOutput() time.Duration {
	return time.Since(p.clock) - time.Duration(p.lastOutput.Load())
}

// watchSilence cancels the command once it was silent for the silence
// timeout at two ticks in a row and no output waits in the pipe: after the
// worker itself was stopped (SIGSTOP, a VM pause) the reader gets a tick to catch up.
func (c *cmdCtx) watchSilence(ctx context.Context, p *proc, r *os.File, cancel context.CancelCauseFunc) {
	limit := c.env.silenceTimeout
	if limit <= 0 {
		return
	}
	tick := time.NewTicker(max(min(limit/4, time.Second), 10*time.Millisecond))
	defer tick.Stop()
	for suspect := false; ; {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		silent := p.sinceOutput() >= limit && unreadBytes(r) == 0
		if silent && suspect {
			cancel(fmt.Errorf("command pid=%d produced no output for %d seconds, killed it", p.pid, int(limit.Seconds())))
			return
		}
		suspect = silent
	}
}

// graceForGroup gives the rest of the group, which got the TERM with its
// leader, what is left of the grace before killLeftovers KILLs it: a
// render under a wrapper shell that exits at once keeps its grace.
func (c *cmdCtx) graceForGroup(p *proc, termAt time.Time) {
	for deadline := termAt.Add(c.env.killGrace); ; time.Sleep(20 * time.Millisecond) {
		left := groupMembers(p.pid)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			c.logf("Processes %v in the process group of pid=%d did not stop in %d seconds, going to KILL them", left, p.pid, int(c.env.killGrace.Seconds()))
			return
		}
	}
}

// killLeftovers kills the rest of the exited process's group and, where
// the worker is a child subreaper, every other descendant (a setsid daemon).
func (c *cmdCtx) killLeftovers(p *proc) {
	if syscall.Kill(-p.pid, syscall.SIGKILL) == nil {
		c.logf("Killed the processes that pid=%d left behind in its process group", p.pid)
	}
	if !c.env.sweep {
		return
	}
	if n := sweepDescendants(); n > 0 {
		c.logf("Killed %d processes that pid=%d left behind outside its process group", n, p.pid)
	}
}

// A process that left the group can hold the pipe open for ever: the read
// is cut after drainQuiet without output, drainCanceled after cancellation
// (what is in the pipe is read first) and drainLimit after the exit.
const (
	drainQuiet    = 2 * time.Second
	drainCanceled = time.Second
	drainLimit    = 30 * time.Second
)

// drain waits for the reader to reach EOF, or cuts the read.
func (c *cmdCtx) drain(ctx context.Context, r *os.File, p *proc, readDone <-chan error) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for deadline := time.Now().Add(drainLimit); ; {
		select {
		case <-readDone:
			return
		case <-tick.C:
		}
		if ctx.Err() != nil && time.Until(deadline) > drainCanceled {
			deadline = time.Now().Add(drainCanceled)
		}
		if time.Now().After(deadline) || p.sinceOutput() > drainQuiet && unreadBytes(r) == 0 {
			c.logf("Stopped reading the output of pid=%d: a process that left its process group holds the output open", p.pid)
			r.SetReadDeadline(time.Now())
			<-readDone
			return
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

// cleanLine strips trailing white space and replaces invalid UTF-8; it may share raw's memory.
func cleanLine(raw []byte) []byte {
	raw = bytes.TrimRight(raw, " \n\r\t\v\f")
	if utf8.Valid(raw) { // the common case, without the copy ToValidUTF8 makes
		return raw
	}
	return bytes.ToValidUTF8(raw, []byte("\uFFFD"))
}

// exitError logs how the process ended and turns a failure into an error.
func (c *cmdCtx) exitError(argv []string, ws syscall.WaitStatus, pid int) error {
	if ws.Signaled() {
		sig := signalName(ws.Signal())
		c.logf("Subprocess %s: Process pid=%d terminated due to signal %s", argv[0], pid, sig)
		return fmt.Errorf("subprocess %s (pid=%d) terminated by signal %s", argv[0], pid, sig)
	}
	code := ws.ExitStatus()
	c.logf("Subprocess %s: Process pid=%d exited with status code %d", argv[0], pid, code)
	if code != 0 {
		return fmt.Errorf("command %s (pid=%d) failed with status %d", argv[0], pid, code)
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

// The PID file (subprocess_pid_file): the bare PID first, as the Python
// worker writes it, then the identity that proves the process ours despite
// PID reuse (start: field 22 of /proc/PID/stat; boot: the kernel's boot_id):
//
//	12345
//	pgid=12345 start=8812345 boot=6b1f...-...-... worker=12000 worker_start=8800000
//
// A bare number (the Python worker's, or written without /proc) proves
// nothing: nothing is killed on its account; commands wait while it lives.

// procIdentity tells one process from any other that later gets its PID.
type procIdentity struct {
	pid, pgid int
	start     uint64
	boot      string
}

// identityOf is pid's identity; ok is false when /proc does not know it.
func identityOf(pid int) (procIdentity, bool) {
	s, ok := readStat(pid)
	boot := bootID()
	if !ok || boot == "" {
		return procIdentity{}, false
	}
	return procIdentity{pid: pid, pgid: s.pgrp, start: s.start, boot: boot}, true
}

// alive reports whether the process id names is running (not a zombie).
func (id procIdentity) alive() bool {
	live, ok := identityOf(id.pid)
	return ok && live.start == id.start && live.boot == id.boot && processAlive(id.pid)
}

// pidRecord is a parsed PID file.
type pidRecord struct {
	pid    int
	ident  *procIdentity // nil for a bare number
	worker procIdentity  // the worker that wrote the file, when ident != nil
}

// formatPIDFile is the PID file's content for the process sub, started by the worker self.
func formatPIDFile(sub, self procIdentity) string {
	return fmt.Sprintf("%d\npgid=%d start=%d boot=%s worker=%d worker_start=%d\n", sub.pid, sub.pgid, sub.start, sub.boot, self.pid, self.start)
}

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
	rec, id := pidRecord{pid: pid}, procIdentity{pid: pid}
	_, err = fmt.Sscanf(rest, "pgid=%d start=%d boot=%s worker=%d worker_start=%d", &id.pgid, &id.start, &id.boot, &rec.worker.pid, &rec.worker.start)
	if rec.worker.boot = id.boot; err == nil && id.pgid > 1 {
		rec.ident = &id
	}
	return rec, nil
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

// writePIDFile records the process pid in the PID file, which must not
// exist yet: the bare PID where its identity is unknown.
func (c *cmdCtx) writePIDFile(pid int) error {
	path := c.env.pidFile
	if path == "" {
		return nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if errors.Is(err, os.ErrExist) {
		old, _ := os.ReadFile(path)
		first, _, _ := strings.Cut(strings.TrimSpace(string(old)), "\n")
		c.logf("PID file %s already exists (has pid=%s), killing just-spawned process pid=%d", path, first, pid)
		return fmt.Errorf("PID file %s already exists", path)
	}
	if err != nil {
		return fmt.Errorf("creating PID file: %w", err)
	}
	content := strconv.Itoa(pid)
	sub, subOK := identityOf(pid)
	if self, selfOK := identityOf(os.Getpid()); subOK && selfOK {
		content = formatPIDFile(sub, self)
	}
	_, err = f.WriteString(content)
	if err = errors.Join(err, f.Close()); err != nil {
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
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
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

// reapOrphan runs at start-up, before any work is accepted: a process group
// that the PID file proves an earlier, SIGKILLed worker left behind would
// keep rendering and block every task, so it is killed, grandchildren
// included, and the file removed. Never on a bare PID, a reused PID, or a
// subprocess of a worker that still runs.
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
