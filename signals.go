//go:build unix

package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
)

// handledSignals are caught from the first instant (catchSignals), so none
// gets its default action during start-up. SIGQUIT is left to Go: it dumps
// the goroutines and exits 2, and the unit restarts the worker.
var handledSignals = []os.Signal{
	syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGPIPE,
	syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGTSTP, syscall.SIGCONT,
}

// catchSignals queues handledSignals until a signal loop reads them.
// Catching SIGPIPE, rather than ignoring it (which subprocesses would
// inherit), makes a write to a closed stdout fail with EPIPE instead of killing.
func catchSignals() chan os.Signal {
	ch := make(chan os.Signal, 16)
	signal.Notify(ch, handledSignals...)
	return ch
}

// releaseSignals gives the signals back their default actions (--check,
// --run-task) and re-raises those that arrived meanwhile.
func releaseSignals(ch chan os.Signal) {
	signal.Stop(ch)
	for {
		select {
		case sig := <-ch:
			if sig != syscall.SIGPIPE && sig != syscall.SIGCONT {
				syscall.Kill(os.Getpid(), sig.(syscall.Signal))
			}
		default:
			return
		}
	}
}

// signalLoop turns signals into worker actions (DESIGN.md "Signals").
type signalLoop struct {
	ch       chan os.Signal // from catchSignals
	w        *worker        // nil until attach
	attached chan *worker
	shutdown context.CancelFunc
	stderr   io.Writer
	logger   *slog.Logger
	forced   chan struct{} // closed on the second SIGINT/SIGTERM
	reopen   func()        // on SIGHUP: reopen the log files; nil = nothing to reopen
	pending  []string      // status requests that came before the worker existed
}

func newSignalLoop(ch chan os.Signal, shutdown context.CancelFunc, stderr io.Writer, logger *slog.Logger) *signalLoop {
	return &signalLoop{ch: ch, attached: make(chan *worker, 1), shutdown: shutdown, stderr: stderr, logger: logger, forced: make(chan struct{})}
}

// attach hands the loop the worker once it exists; earlier requests are applied then.
func (s *signalLoop) attach(w *worker) { s.attached <- w }

// run handles signals until done is closed.
func (s *signalLoop) run(done <-chan struct{}) {
	defer signal.Stop(s.ch)
	terminating := false
	for {
		var sig os.Signal
		select {
		case <-done:
			return
		case w := <-s.attached:
			s.w = w
			for _, r := range s.pending {
				w.request(r)
			}
			s.pending = nil
			continue
		case sig = <-s.ch:
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
		case syscall.SIGHUP:
			s.logger.Info("SIGHUP: reopening the log files")
			if s.reopen != nil {
				s.reopen()
			}
		case syscall.SIGPIPE: // a closed stdout or stderr: the write already failed with EPIPE
		case syscall.SIGUSR1:
			s.dump()
		case syscall.SIGTSTP:
			s.logger.Info("SIGTSTP: going asleep")
			s.request(sleepLocal)
		case syscall.SIGCONT, syscall.SIGUSR2: // SIGCONT also follows every SIGSTOP, and systemd's SIGTERM
			s.logger.Debug("wake-up signal", "signal", sig.String())
			s.request(wakeLocal)
		}
	}
}

func (s *signalLoop) request(status string) {
	if s.w == nil {
		s.pending = append(s.pending, status)
		return
	}
	s.w.request(status)
}

// dump writes the state summary and every goroutine's stack to stderr, in
// one write so that no log line lands inside it.
func (s *signalLoop) dump() {
	summary := "state: starting up (no Manager connection yet)."
	if s.w != nil {
		summary = s.w.summary()
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "=== SIGUSR1: Flamenco Worker state ===\n%s\n=== goroutines ===\n", summary)
	pprof.Lookup("goroutine").WriteTo(&b, 2)
	b.WriteString("=== end of dump ===\n")
	s.stderr.Write(b.Bytes())
}
