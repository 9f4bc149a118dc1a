//go:build !linux

package main

import (
	"os"
	"syscall"
)

// childAttrs puts the child in its own process group.
func childAttrs() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }

// orphaned cannot be told without /proc; a live PID in the PID file is
// then left alone, as the Python worker does.
func orphaned(int) bool { return false }

// growPipe: the pipe keeps its default size.
func growPipe(*os.File) {}
