package main

import (
	"fmt"
	"os"
	"strings"
	"syscall"
)

// childAttrs puts the child in its own process group and asks the kernel
// to SIGKILL it if the worker dies without cleaning up (kill -9, OOM
// killer): a render must not outlive the worker that owns it.
func childAttrs() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// orphaned reports whether pid's parent is no longer a worker: its parent
// process does not run the same executable as we do.
func orphaned(pid int) bool {
	ppid, ok := parentPID(pid)
	if !ok {
		return false
	}
	self, err1 := os.Readlink("/proc/self/exe")
	parent, err2 := os.Readlink(fmt.Sprintf("/proc/%d/exe", ppid))
	if err1 != nil {
		return false
	}
	return err2 != nil || parent != self
}

// parentPID reads the parent of pid from /proc.
func parentPID(pid int) (int, bool) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	// "pid (comm) state ppid ...": comm may contain spaces and parentheses.
	rest := string(data[strings.LastIndexByte(string(data), ')')+1:])
	var state string
	var ppid int
	if _, err := fmt.Sscan(rest, &state, &ppid); err != nil {
		return 0, false
	}
	return ppid, true
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
