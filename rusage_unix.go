//go:build unix

package main

import (
	"runtime"
	"syscall"
	"time"
)

// resourceUsage is the worker's own CPU time and peak resident memory
// (not its subprocesses'), logged at shutdown.
func resourceUsage() (user, system time.Duration, maxRSSKiB int64) {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0, 0, 0
	}
	maxRSSKiB = int64(ru.Maxrss)
	if runtime.GOOS == "darwin" {
		maxRSSKiB /= 1024 // bytes there, KiB on Linux
	}
	return time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano()), maxRSSKiB
}
