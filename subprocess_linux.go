package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

// childAttrs puts the child in its own process group and asks the kernel
// to SIGKILL it if the worker dies without cleaning up (kill -9, OOM
// killer): a render must not outlive the worker that owns it.
func childAttrs() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// procStat is what the worker needs of /proc/PID/stat.
type procStat struct {
	state byte // R, S, D, Z, ...
	ppid  int
	pgrp  int
	start uint64 // start time in clock ticks since boot (field 22)
}

// readStat parses /proc/PID/stat: "pid (comm) state ppid pgrp ... starttime
// ...". comm may hold spaces and parentheses, so the fields are counted
// from the last ')'. The only /proc/PID/stat parser of the package.
func readStat(pid int) (procStat, bool) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, false
	}
	i := strings.LastIndexByte(string(data), ')')
	if i < 0 {
		return procStat{}, false
	}
	f := strings.Fields(string(data[i+1:])) // f[0] is field 3 (state)
	if len(f) < 20 || len(f[0]) != 1 {
		return procStat{}, false
	}
	var s procStat
	var err1, err2, err3 error
	s.state = f[0][0]
	s.ppid, err1 = strconv.Atoi(f[1])
	s.pgrp, err2 = strconv.Atoi(f[2])
	s.start, err3 = strconv.ParseUint(f[19], 10, 64)
	return s, err1 == nil && err2 == nil && err3 == nil
}

// bootID tells one boot of the machine from another: PIDs and start times
// only mean something within one boot.
func bootID() string {
	data, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(data))
}

// identityOf is pid's identity as the PID file records it; ok is false
// when /proc does not know the process.
func identityOf(pid int) (procIdentity, bool) {
	s, ok := readStat(pid)
	boot := bootID()
	if !ok || boot == "" {
		return procIdentity{}, false
	}
	return procIdentity{pid: pid, pgid: s.pgrp, start: s.start, boot: boot}, true
}

// becomeSubreaper makes the worker a child subreaper: a process its
// commands daemonise (setsid, double fork) is re-parented to the worker
// instead of init, so that the sweep after each command can find and kill
// it. It reports whether that worked.
func becomeSubreaper(logger *slog.Logger) bool {
	const prSetChildSubreaper = 36
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); errno != 0 {
		logger.Warn("cannot become a child subreaper; daemonised subprocesses may outlive their command", "err", errno)
		return false
	}
	return true
}

// descendants lists every process below pid, from the parent links in /proc.
func descendants(pid int) []int {
	children := map[int][]int{}
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		p, err := strconv.Atoi(filepath.Base(d))
		if err != nil {
			continue
		}
		if s, ok := readStat(p); ok {
			children[s.ppid] = append(children[s.ppid], p)
		}
	}
	var out []int
	for todo := children[pid]; len(todo) > 0; {
		p := todo[len(todo)-1]
		todo = append(todo[:len(todo)-1], children[p]...)
		out = append(out, p)
	}
	return out
}

// sweepDescendants kills every process below the worker, which (as a child
// subreaper) inherits what a command daemonised, and reaps those that
// became its own children. Only ever one command runs, and its process has
// been waited for, so every descendant is a leftover. It waits per PID
// (never wait4(-1), which could steal exec.Cmd's status) for at most a few
// seconds and returns the number of processes it killed.
func sweepDescendants() int {
	self := os.Getpid()
	killed := map[int]bool{}
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		left := 0
		for _, pid := range descendants(self) {
			s, ok := readStat(pid)
			if !ok {
				continue
			}
			if s.state != 'Z' {
				left++
				if syscall.Kill(pid, syscall.SIGKILL) == nil {
					killed[pid] = true
				}
				continue
			}
			if s.ppid == self {
				var ws syscall.WaitStatus
				syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
			}
		}
		if left == 0 {
			break
		}
	}
	return len(killed)
}

// groupMembers lists the live (not zombie) processes of group pgid.
func groupMembers(pgid int) []int {
	var live []int
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		p, err := strconv.Atoi(filepath.Base(d))
		if err != nil {
			continue
		}
		if s, ok := readStat(p); ok && s.pgrp == pgid && s.state != 'Z' {
			live = append(live, p)
		}
	}
	return live
}

// killGroup SIGKILLs process group pgid and waits (a few seconds at most)
// until none of its members is alive.
func killGroup(pgid int) error {
	if pgid <= 1 {
		return fmt.Errorf("refusing to kill process group %d", pgid)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		err := syscall.Kill(-pgid, syscall.SIGKILL)
		if errors.Is(err, syscall.ESRCH) || len(groupMembers(pgid)) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("process group %d still has members %v", pgid, groupMembers(pgid))
		}
	}
}

// growPipe gives the output pipe 1 MiB of kernel buffer (64 KiB by
// default), so that a burst of output does not stall the child while the
// reader is busy. Failure (an unprivileged limit) is harmless.
func growPipe(r *os.File) {
	const fSetPipeSz = 1031 // F_SETPIPE_SZ
	if rc, err := r.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			syscall.Syscall(syscall.SYS_FCNTL, fd, fSetPipeSz, 1<<20)
		})
	}
}

// unreadBytes is how much output waits in the pipe (FIONREAD).
func unreadBytes(r *os.File) int {
	n := 0
	if rc, err := r.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			var v int32
			if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCINQ, uintptr(unsafe.Pointer(&v))); errno == 0 {
				n = int(v)
			}
		})
	}
	return n
}
