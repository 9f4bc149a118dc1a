package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

// childAttrs: its own process group, and SIGKILL if the worker dies
// without cleaning up (kill -9, OOM killer).
func childAttrs() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// procStat is what the worker needs of /proc/PID/stat.
type procStat struct {
	state      byte // R, S, D, Z, ...
	ppid, pgrp int
	start      uint64 // clock ticks since boot (field 22)
}

// readStat parses /proc/PID/stat, the package's only parser of it. comm
// (field 2) may hold spaces and parentheses: fields count from the last ')'.
func readStat(pid int) (procStat, bool) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	i := strings.LastIndexByte(string(data), ')')
	if err != nil || i < 0 {
		return procStat{}, false
	}
	f := strings.Fields(string(data[i+1:])) // f[0] is field 3 (state)
	if len(f) < 20 || len(f[0]) != 1 {
		return procStat{}, false
	}
	s := procStat{state: f[0][0]}
	var err1, err2, err3 error
	s.ppid, err1 = strconv.Atoi(f[1])
	s.pgrp, err2 = strconv.Atoi(f[2])
	s.start, err3 = strconv.ParseUint(f[19], 10, 64)
	return s, err1 == nil && err2 == nil && err3 == nil
}

// bootID tells one boot from another: PIDs and start times mean something within one.
func bootID() string {
	data, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(data))
}

// becomeSubreaper makes the worker a child subreaper, so what its commands
// daemonise (setsid, double fork) is re-parented to it and the sweep after
// each command finds it. It reports whether that worked.
func becomeSubreaper(logger *slog.Logger) bool {
	const prSetChildSubreaper = 36
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); errno != 0 {
		logger.Warn("cannot become a child subreaper; daemonised subprocesses may outlive their command", "err", errno)
		return false
	}
	return true
}

// allStats is every process's /proc/PID/stat, by PID.
func allStats() map[int]procStat {
	stats := map[int]procStat{}
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		if p, err := strconv.Atoi(filepath.Base(d)); err == nil {
			if s, ok := readStat(p); ok {
				stats[p] = s
			}
		}
	}
	return stats
}

// sweepDescendants kills every process below the worker, which as a
// subreaper inherits what a command daemonised (after the command's wait,
// all are leftovers): its children, whose own children then become its
// children. Zombies are reaped per PID: wait4(-1) could steal exec.Cmd's
// status. It gives up after 3 s and returns how many it killed.
func sweepDescendants() int {
	self := os.Getpid()
	killed := map[int]bool{}
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		left := 0
		for pid, s := range allStats() {
			switch {
			case s.ppid != self:
			case s.state == 'Z':
				var ws syscall.WaitStatus
				syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
			default:
				left++
				if syscall.Kill(pid, syscall.SIGKILL) == nil {
					killed[pid] = true
				}
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
	for p, s := range allStats() {
		if s.pgrp == pgid && s.state != 'Z' {
			live = append(live, p)
		}
	}
	slices.Sort(live)
	return live
}

// killGroup SIGKILLs process group pgid and waits (5 s at most) until none of its members lives.
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

// growPipe gives the output pipe 1 MiB (64 KiB by default) so that a burst
// does not stall the child while the reader is busy; failure is harmless.
func growPipe(r *os.File) {
	const fSetPipeSz = 1031 // F_SETPIPE_SZ
	if rc, err := r.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { syscall.Syscall(syscall.SYS_FCNTL, fd, fSetPipeSz, 1<<20) })
	}
}

// unreadBytes is how much output waits in the pipe (FIONREAD).
func unreadBytes(r *os.File) int {
	var n int32
	if rc, err := r.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCINQ, uintptr(unsafe.Pointer(&n)))
		})
	}
	return int(n)
}
