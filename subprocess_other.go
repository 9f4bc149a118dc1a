//go:build !linux

package main

import (
	"errors"
	"log/slog"
	"os"
	"syscall"
)

// Without /proc nothing is known of other processes, so a PID file written
// here never lets a later run kill anything (the Python worker's rule).

func childAttrs() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }

type procStat struct {
	state      byte
	ppid, pgrp int
	start      uint64
}

func readStat(int) (procStat, bool)     { return procStat{}, false }
func bootID() string                    { return "" }
func groupMembers(int) []int            { return nil }
func becomeSubreaper(*slog.Logger) bool { return false }
func sweepDescendants() int             { return 0 }
func killGroup(int) error               { return errors.New("not supported on this system") }
func growPipe(*os.File)                 {}

// unreadBytes is unknown: the silence check relies on the reader catching up by the next tick.
func unreadBytes(*os.File) int { return 0 }
