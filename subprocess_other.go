//go:build !linux

package main

import (
	"errors"
	"log/slog"
	"os"
	"syscall"
)

// childAttrs puts the child in its own process group.
func childAttrs() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }

// procStat: without /proc nothing is known of other processes.
type procStat struct{ state byte }

func readStat(int) (procStat, bool) { return procStat{}, false }

// identityOf cannot prove anything without /proc, so a PID file written
// here never lets a later run kill anything (the Python worker's rule).
func identityOf(int) (procIdentity, bool) { return procIdentity{}, false }

func bootID() string { return "" }

func groupMembers(int) []int { return nil }

// becomeSubreaper: there is no child subreaper outside Linux.
func becomeSubreaper(*slog.Logger) bool { return false }

func sweepDescendants() int { return 0 }

func killGroup(int) error { return errors.New("not supported on this system") }

// growPipe: the pipe keeps its default size.
func growPipe(*os.File) {}

// unreadBytes is unknown here; the silence check then relies on the
// reader having caught up by the next tick.
func unreadBytes(*os.File) int { return 0 }
