//go:build unix

package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"syscall"
)

// signalLoop turns signals into worker actions (DESIGN.md "Signals"):
// SIGINT/SIGTERM shut down cleanly and a second one exits at once, SIGUSR1
// dumps goroutine stacks and state, SIGTSTP sleeps, SIGCONT wakes.
type signalLoop struct {
	w        *worker
	shutdown context.CancelFunc
	stderr   io.Writer
	logger   *slog.Logger
	forced   chan struct{} // closed on the second SIGINT/SIGTERM
}

func newSignalLoop(w *worker, shutdown context.CancelFunc, stderr io.Writer, logger *slog.Logger) *signalLoop {
	return &signalLoop{w: w, shutdown: shutdown, stderr: stderr, logger: logger, forced: make(chan struct{})}
}

// run handles signals until done is closed.
func (s *signalLoop) run(done <-chan struct{}) {
	ch := make(chan os.Signal, 4)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM, syscall.SIGUSR1, syscall.SIGTSTP, syscall.SIGCONT)
	defer signal.Stop(ch)
	terminating := false
	for {
		var sig os.Signal
		select {
		case <-done:
			return
		case sig = <-ch:
		}
		switch sig {
		case syscall.SIGINT, syscall.SIGTERM:
			if terminating {
				close(s.forced)
				return
			}
			terminating = true
			s.logger.Info("shutting down cleanly; send the signal again to exit at once", "signal", sig.String())
			s.shutdown()
		case syscall.SIGUSR1:
			s.dump()
		case syscall.SIGTSTP:
			s.logger.Info("SIGTSTP: going asleep")
			s.w.request(stateAsleep)
		case syscall.SIGCONT:
			s.logger.Info("SIGCONT: waking up")
			s.w.request(stateAwake)
		}
	}
}

// dump writes every goroutine's stack and a state summary to stderr.
func (s *signalLoop) dump() {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	fmt.Fprintf(s.stderr, "=== SIGUSR1: Flamenco Worker state ===\n%s\n=== goroutines ===\n%s=== end of dump ===\n", s.w.summary(), buf)
}
