//go:build linux

package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startOrphanGroup starts sh -c script as the leader of its own session
// and process group whose parent has exited, as a render whose worker was
// killed, and returns the leader's PID; the test's cleanup kills the group.
func startOrphanGroup(t *testing.T, script string) int {
	t.Helper()
	out, err := exec.Command("sh", "-c", `setsid sh -c "$0" >/dev/null 2>&1 </dev/null & echo $!`, script).Output()
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	if pid <= 1 {
		t.Fatalf("no PID from %q", out)
	}
	t.Cleanup(func() { syscall.Kill(-pid, syscall.SIGKILL) })
	waitFor(t, 5*time.Second, "the group's members to start", func() bool { return len(groupMembers(pid)) >= 3 })
	return pid
}

func mustIdentity(t *testing.T, pid int) procIdentity {
	t.Helper()
	id, ok := identityOf(pid)
	if !ok {
		t.Fatalf("no identity for pid %d", pid)
	}
	return id
}

// TestPIDFileIdentity: the start-up reaper kills a process group only when
// the PID file proves it is what a dead worker left behind; in every other
// case it kills nothing, and commands are refused while the PID lives.
func TestPIDFileIdentity(t *testing.T) {
	deadWorker := procIdentity{pid: 999999999, start: 1, boot: bootID()}
	self := mustIdentity(t, os.Getpid())
	cases := []struct {
		name     string
		content  func(leader procIdentity) string
		wantKill bool
		wantFile bool
	}{
		{"bare number (Python format)", func(l procIdentity) string { return strconv.Itoa(l.pid) }, false, true},
		{"PID reused: another start time", func(l procIdentity) string {
			l.start++
			return formatPIDFile(l, deadWorker)
		}, false, true},
		{"written before the last reboot", func(l procIdentity) string {
			l.boot = "00000000-0000-0000-0000-000000000000"
			return formatPIDFile(l, deadWorker)
		}, false, false},
		{"its worker still runs", func(l procIdentity) string { return formatPIDFile(l, self) }, false, true},
		{"left by a dead worker", func(l procIdentity) string { return formatPIDFile(l, deadWorker) }, true, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			pidFile := filepath.Join(t.TempDir(), "sub.pid")
			leader := startOrphanGroup(t, "sleep 300 & sleep 300; wait")
			writeFile(t, pidFile, c.content(mustIdentity(t, leader)))
			reapOrphan(pidFile, quietLogger)
			live := groupMembers(leader)
			if killed := len(live) == 0; killed != c.wantKill {
				t.Errorf("group killed = %v, want %v (live members %v)", killed, c.wantKill, live)
			}
			if _, err := os.Stat(pidFile); (err == nil) != c.wantFile {
				t.Errorf("PID file kept = %v, want %v", err == nil, c.wantFile)
			}
			if !c.wantFile || c.wantKill {
				return
			}
			env := testEnv()
			env.pidFile = pidFile
			err := validateCommand(t, "exec", `{"cmd": "true"}`, env)
			if want := "Subprocess from " + pidFile + " is still running: pid=" + strconv.Itoa(leader); err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("command validation: %v, want %q", err, want)
			}
		})
	}
}

// TestPIDFileFormat: the first line is the bare PID, the second the
// identity, and parsing gives back what was written.
func TestPIDFileFormat(t *testing.T) {
	sub := procIdentity{pid: 4242, pgid: 4242, start: 123456, boot: "b00t"}
	text := formatPIDFile(sub, procIdentity{pid: 7, start: 99, boot: "b00t"})
	if first, _, _ := strings.Cut(text, "\n"); first != "4242" {
		t.Errorf("first line %q, want the bare PID", first)
	}
	rec, err := parsePIDFile("f", []byte(text))
	if err != nil || rec.ident == nil || *rec.ident != sub || rec.worker.pid != 7 || rec.worker.start != 99 {
		t.Errorf("parsePIDFile(%q) = %+v, %v", text, rec, err)
	}
	for _, bare := range []string{"4242", "\n4242\n", "4242\ngarbage"} {
		if rec, err := parsePIDFile("f", []byte(bare)); err != nil || rec.pid != 4242 || rec.ident != nil {
			t.Errorf("parsePIDFile(%q) = %+v, %v; want a bare PID", bare, rec, err)
		}
	}
}

// TestReadStat: comm may hold spaces and parentheses; the fields count from
// the last ')'.
func TestReadStat(t *testing.T) {
	dir := t.TempDir()
	odd := filepath.Join(dir, "a) b (c")
	if err := os.Symlink("/bin/sleep", odd); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(odd, "300")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	s, ok := readStat(cmd.Process.Pid)
	if !ok || s.ppid != os.Getpid() || s.pgrp != cmd.Process.Pid || s.start == 0 {
		t.Errorf("readStat = %+v, %v; want ppid %d, pgrp %d", s, ok, os.Getpid(), cmd.Process.Pid)
	}
	if self, _ := readStat(os.Getpid()); self.start > s.start {
		t.Errorf("child started (%d) before its parent (%d)", s.start, self.start)
	}
}

// TestSIGKILLedWorkerLeavesNoGrandchildren: a task's grandchildren outlive
// a worker killed with SIGKILL (Pdeathsig reaches only the direct child),
// and the restarted worker kills them, from the PID file's identity, before
// it accepts the next task.
func TestSIGKILLedWorkerLeavesNoGrandchildren(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "").registered()
	first, second := taskID(1), taskID(2)
	f.fm.queueTask(first, execCmd(`sh -c 'echo group $$; sleep 300 & sleep 300; wait'`))
	p := f.start()
	pgid := groupOf(t, f.fm, first)
	t.Cleanup(func() { syscall.Kill(-pgid, syscall.SIGKILL) })
	waitFor(t, 10*time.Second, "both sleeps to start", func() bool { return len(groupMembers(pgid)) >= 3 })
	p.signal(syscall.SIGKILL)
	p.wait(5 * time.Second)
	waitFor(t, 5*time.Second, "the shell to die of Pdeathsig", func() bool { return len(groupMembers(pgid)) == 2 })

	f.fm.set(func(fm *fakeManager) { fm.tasks[first] = "canceled"; fm.endActive(first) }) // not re-delivered
	f.fm.queueTask(second, execCmd(`echo second task`))
	p = f.start()
	waitFor(t, 15*time.Second, "the second task to start", func() bool { return strings.Contains(f.fm.logText(second), "> second task") })
	if live := groupMembers(pgid); len(live) > 0 {
		t.Errorf("grandchildren %v of the first task outlived the SIGKILLed worker and its restart", live)
	}
	waitFor(t, 15*time.Second, "the second task to complete", func() bool { return f.fm.taskStatus(second) == "completed" })
	p.stop()
	if !strings.Contains(p.out.String(), "killing the process group left behind") {
		t.Errorf("the restarted worker did not say it killed the group; output:\n%s", p.out.String())
	}
}

// daemonOf waits for a task's "daemon <pid>" log line and returns the PID;
// the test's cleanup kills it.
func daemonOf(t *testing.T, fm *fakeManager, id string) int {
	t.Helper()
	pid := loggedNumber(t, fm, id, "daemon")
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	return pid
}

// TestSetsidDaemonDiesWithItsCommand: a process that left the command's
// process group and session (setsid) is killed when the command ends, when
// it is aborted, and when the worker shuts down cleanly.
func TestSetsidDaemonDiesWithItsCommand(t *testing.T) {
	t.Parallel()
	const daemonize = `setsid sleep 300 >/dev/null 2>&1 </dev/null & echo daemon $!`
	f := newFarm(t, "").registered()
	ended, aborted, shutdown := taskID(1), taskID(2), taskID(3)
	f.fm.queueTask(ended, execCmd(`sh -c '`+daemonize+`'`))
	f.fm.queueTask(aborted, execCmd(`sh -c '`+daemonize+`; sleep 300'`))
	f.fm.queueTask(shutdown, execCmd(`sh -c '`+daemonize+`; sleep 300'`))
	f.fm.set(func(fm *fakeManager) {
		fm.mayIRunHook = func(id string) (bool, string) { return id != aborted, "" }
	})
	p := f.start()
	gone := func(pid int) func() bool { return func() bool { return !processAlive(pid) } }

	d := daemonOf(t, f.fm, ended)
	waitFor(t, 15*time.Second, "the first task to complete", func() bool { return f.fm.taskStatus(ended) == "completed" })
	waitFor(t, 5*time.Second, "the daemon of a command that ended to die", gone(d))

	d = daemonOf(t, f.fm, aborted)
	waitFor(t, 15*time.Second, "the aborted task to be returned", func() bool { return f.fm.count("POST /tasks/"+aborted+"/return") > 0 })
	waitFor(t, 5*time.Second, "the daemon of an aborted command to die", gone(d))

	d = daemonOf(t, f.fm, shutdown)
	p.stop()
	waitFor(t, 5*time.Second, "the daemon of a command stopped by a clean shutdown to die", gone(d))
}

// runCanceled runs one command in a goroutine; the command's context is
// canceled by the returned function. done is closed when the command returns.
func runCanceled(t *testing.T, name, settingsJSON string, env *runEnv) (cancel func(), done <-chan cmdResult) {
	t.Helper()
	fn := commandRegistry[name]
	c, finish := testCmdCtx(t, name, env)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch := make(chan cmdResult, 1)
	s := testSettings(t, settingsJSON)
	go func() { // ends when the command returns
		ok := runCommand(ctx, c, fn, s)
		res := finish()
		res.ok = ok
		ch <- res
	}()
	return cancel, ch
}

// waitFile waits for path to hold a PID and returns it.
func waitFile(t *testing.T, path string) int {
	t.Helper()
	var pid int
	waitFor(t, 10*time.Second, path+" to be written", func() bool {
		data, _ := os.ReadFile(path)
		pid, _ = strconv.Atoi(strings.TrimSpace(string(data)))
		return pid > 0
	})
	return pid
}

// TestCancelDoesNotWaitForPipeHolder: a chatty process in its own session
// that holds the output pipe open does not keep a canceled command running.
func TestCancelDoesNotWaitForPipeHolder(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	holderPID := filepath.Join(dir, "holder.pid")
	script := filepath.Join(dir, "hold.sh")
	writeFile(t, script, `setsid sh -c 'echo $$ > `+holderPID+`; i=0; while [ $i -lt 3000 ]; do echo hold $i; i=$((i+1)); sleep 0.1; done' &
sleep 300
`)
	cancel, done := runCanceled(t, "exec", `{"cmd": "sh `+script+`"}`, testEnv())
	holder := waitFile(t, holderPID)
	t.Cleanup(func() { syscall.Kill(-holder, syscall.SIGKILL) })
	cancel()
	select {
	case res := <-done:
		if res.ok {
			t.Errorf("a canceled command succeeded")
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("the canceled command still runs 15 s later: it waits for the pipe holder (300 s)")
	}
}

// TestStoppedWorkerKeepsChattyChild: a worker stopped (SIGSTOP, a VM pause)
// for longer than subprocess_timeout_seconds finds the child's output
// waiting in the pipe when it resumes: the child was not silent.
func TestStoppedWorkerKeepsChattyChild(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "subprocess_timeout_seconds = 1").registered()
	id := taskID(1)
	f.fm.queueTask(id, execCmd(`sh -c 'i=0; while [ $i -lt 100 ]; do echo tick $i; i=$((i+1)); sleep 0.05; done'`))
	p := f.start()
	waitFor(t, 15*time.Second, "the child's output", func() bool { return strings.Contains(f.fm.logText(id), "> tick 5") })
	for range 2 {
		p.signal(syscall.SIGSTOP)
		time.Sleep(1500 * time.Millisecond) // the pause itself, longer than the silence timeout
		p.signal(syscall.SIGCONT)
		time.Sleep(300 * time.Millisecond)
	}
	waitFor(t, 20*time.Second, "the task to end", func() bool { return f.fm.taskStatus(id) != "active" })
	if got := f.fm.taskStatus(id); got != "completed" {
		t.Errorf("task %s after the worker was stopped and continued, want completed; log:\n%s", got, f.fm.logText(id))
	}
	p.stop()
}

// TestTinySilenceTimeout: a silence timeout of a few nanoseconds is not a
// zero ticker period (which panics).
func TestTinySilenceTimeout(t *testing.T) {
	env := testEnv()
	env.silenceTimeout = 3 * time.Nanosecond
	runTestCommand(t, "exec", `{"cmd": "sh -c 'echo hi; sleep 0.2'"}`, env)
}

// TestRemoveRefusesDangerousPaths: remove_tree and remove_file refuse the
// root, the working directory, its ancestors and the queue file, however
// the path is spelled, with the "Invalid settings" failure.
func TestRemoveRefusesDangerousPaths(t *testing.T) {
	tmp := t.TempDir()
	work, qdir := filepath.Join(tmp, "work"), filepath.Join(tmp, "q")
	for _, d := range []string{filepath.Join(work, "sub"), qdir, filepath.Join(work, "victim")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	queue := filepath.Join(qdir, "queue.db")
	writeFile(t, queue, "")
	writeFile(t, filepath.Join(work, "file.txt"), "x")
	os.Symlink(qdir, filepath.Join(work, "link-to-q"))
	os.Symlink("/", filepath.Join(work, "link-to-root"))
	t.Chdir(work)
	env := testEnv()
	env.protected = protectedPaths(queue)

	cases := []struct {
		cmd, path string
		wantErr   string // "" = allowed
	}{
		{"remove_tree", "/", "is the filesystem root"},
		{"remove_tree", "//", "is the filesystem root"},
		{"remove_tree", "", "may not be empty"},
		{"remove_tree", "..", "which the worker needs"},
		{"remove_tree", "../", "which the worker needs"},
		{"remove_tree", "./", "which the worker needs"},
		{"remove_tree", ".", "which the worker needs"},
		{"remove_tree", "sub/..", "which the worker needs"},
		{"remove_tree", work, "which the worker needs"},
		{"remove_tree", tmp, "which the worker needs"},
		{"remove_tree", qdir, "which the worker needs"},
		{"remove_tree", queue, "which the worker needs"},
		{"remove_tree", "link-to-q/", "which the worker needs"},
		{"remove_tree", "link-to-q/queue.db", "which the worker needs"},
		{"remove_tree", "link-to-root/", "is the filesystem root"},
		{"remove_file", queue, "which the worker needs"},
		{"remove_file", "", "cannot be empty"},
		{"remove_tree", "victim", ""},
		{"remove_tree", filepath.Join(work, "sub", "missing"), ""},
		{"remove_file", "file.txt", ""},
		{"remove_tree", "link-to-q", ""}, // removes the link only
	}
	for _, c := range cases {
		err := validateCommand(t, c.cmd, `{"path": `+strconv.Quote(c.path)+`}`, env)
		if (err == nil) != (c.wantErr == "") || (err != nil && !strings.Contains(err.Error(), c.wantErr)) {
			t.Errorf("%s %q: err = %v, want %q", c.cmd, c.path, err, c.wantErr)
		}
		if err != nil && c.path != "" && !strings.Contains(err.Error(), "'path'") {
			t.Errorf("%s %q: error %q does not name the setting", c.cmd, c.path, err)
		}
	}

	res := runTestCommand(t, "remove_tree", `{"path": "../"}`, env)
	if res.ok || !strings.Contains(res.logText(), "Invalid settings") && !strings.Contains(strings.Join(res.activities, "\n"), "Invalid settings") {
		t.Errorf("remove_tree ../: ok=%v, want an Invalid settings failure; log:\n%s", res.ok, res.logText())
	}
	for _, keep := range []string{queue, work, filepath.Join(work, "file.txt")} {
		if _, err := os.Stat(keep); err != nil {
			t.Errorf("%s is gone: %v", keep, err)
		}
	}
	if res := runTestCommand(t, "remove_tree", `{"path": "link-to-q"}`, env); !res.ok {
		t.Errorf("removing a link failed: %s", res.logText())
	}
	if _, err := os.Stat(queue); err != nil {
		t.Errorf("removing a link to the queue's directory removed the queue: %v", err)
	}
}

// TestAbortSendsTERMThenKILLAfterGrace: an aborted command first gets
// SIGTERM (a render can save its state) and SIGKILL only after the grace
// period (2 s in testEnv): the trapping process writes a marker and a log
// line, is still alive half a second later, and ignores TERM until KILLed;
// as the command itself, and as a grandchild under a shell that dies of
// the TERM at once.
func TestAbortSendsTERMThenKILLAfterGrace(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, cmd string }{
		{"the render itself", "sh SCRIPT"},
		{"a grandchild under a shell", `sh -c "sh SCRIPT; echo after"`}, // TERM goes to the whole group
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			ready, termMark, aliveMark := filepath.Join(dir, "ready"), filepath.Join(dir, "term"), filepath.Join(dir, "alive")
			script := filepath.Join(dir, "stubborn.sh")
			writeFile(t, script, `trap 'echo term > `+termMark+`; echo saving after TERM; t=1' TERM
echo $$ > `+ready+`
n=0
while :; do
	sleep 0.1
	if [ -n "$t" ]; then n=$((n+1)); [ $n -eq 5 ] && echo alive > `+aliveMark+`; fi
done
`)
			settings := `{"cmd": ` + strconv.Quote(strings.ReplaceAll(tc.cmd, "SCRIPT", script)) + `}`
			cancel, done := runCanceled(t, "exec", settings, testEnv())
			pid := waitFile(t, ready)
			t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
			cancel()
			var res cmdResult
			select {
			case res = <-done:
			case <-time.After(30 * time.Second):
				t.Fatalf("the aborted command did not return")
			}
			if _, err := os.Stat(termMark); err != nil {
				t.Errorf("the trapping process never ran its TERM trap (KILLed first, or not sent TERM?): %v", err)
			}
			if _, err := os.Stat(aliveMark); err != nil {
				t.Errorf("the trapping process was not alive 0.5 s after TERM (KILLed before the grace ended?): %v", err)
			}
			if processAlive(pid) {
				t.Errorf("the trapping process %d outlived the abort", pid)
			}
			if !strings.Contains(res.logText(), "did not stop in 2 seconds, going to KILL") {
				t.Errorf("log lacks the KILL line:\n%s", res.logText())
			}
			if !strings.Contains(res.logText(), "> saving after TERM") {
				t.Errorf("what the process wrote after the TERM is not in the log:\n%s", res.logText())
			}
		})
	}
}
