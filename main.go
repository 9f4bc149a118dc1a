// Command flamenco-worker is the render-node agent of a Flamenco v2 render
// farm: a drop-in replacement for the Python Flamenco Worker 2.5.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// run is the whole program; only main turns its result into an exit.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return runTuned(ctx, args, stdout, stderr, defaultTuning())
}

// runTuned is run with tune as the defaults of the tuning keys (tests
// shorten them); the config files still override them.
func runTuned(ctx context.Context, args []string, stdout, stderr io.Writer, tune tuning) int {
	sigs := catchSignals() // first of all: no signal may get its default action from here on
	defer signal.Stop(sigs)
	if tune.testHooks.signalsCaught != nil {
		tune.testHooks.signalsCaught()
	}
	opts, err := parseFlags(args)
	if errors.Is(err, errHelp) {
		fmt.Fprint(stdout, usageText)
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "%sflamenco-worker: error: %v\n", usageLine, err)
		return exitUsage
	}
	if opts.version {
		fmt.Fprintln(stdout, workerVersion())
		return exitOK
	}
	logger := newLogger(stderr, opts.debug)
	home, err := os.UserHomeDir()
	if err != nil {
		fmt.Fprintf(stderr, "flamenco-worker: configuration error: cannot find the home directory: %v\n", err)
		return exitConfig
	}
	cfg, err := loadConfigTuned(opts.config, home, tune, func(msg string) { logger.Warn(msg) })
	if err != nil {
		fmt.Fprintf(stderr, "flamenco-worker: configuration error: %v\n", err)
		return exitConfig
	}
	logs := newLogSetup(cfg.Logging, stderr, opts.debug, time.Now)
	defer logs.close()
	logger = logs.logger
	if opts.runTask != "" {
		releaseSignals(sigs)
		return runTaskFile(ctx, cfg, opts.runTask, stdout, stderr, newRunEnv(cfg, logger))
	}
	applyFlags(cfg, opts, logger)
	if opts.check {
		releaseSignals(sigs)
		if !preflight(ctx, cfg, cfg.Tuning, stdout, logger) {
			return exitFailure
		}
		return exitOK
	}
	if opts.verbose {
		if err := cfg.writeEffective(stderr); err != nil {
			fmt.Fprintf(stderr, "flamenco-worker: %v\n", err)
		}
	}
	return serve(ctx, sigs, cfg, opts, stderr, logs)
}

// applyFlags lets --test and --reregister override the config in memory.
func applyFlags(cfg *Config, opts *options, logger *slog.Logger) {
	if opts.test {
		logger.Warn("testing mode: only test-blender-render tasks will be run")
		cfg.TaskTypes = []string{"test-blender-render"}
	}
	if opts.reregister {
		logger.Warn("--reregister: registering as a new worker; the old one stays in the Manager's database")
		cfg.WorkerID, cfg.WorkerSecret = "", ""
	}
	if opts.single {
		logger.Warn("single-task mode: the worker shuts down after one task")
	}
}

// newLogger logs key=value lines to stderr, until the config's logging
// setup (newLogSetup) takes over.
func newLogger(w io.Writer, debug bool) *slog.Logger {
	level := slog.LevelInfo
	if debug {
		level = slog.LevelDebug
	}
	return slog.New(newStderrHandler(w, level, os.Getenv))
}

// newRunEnv is what commands get from the configuration.
func newRunEnv(cfg *Config, logger *slog.Logger) *runEnv {
	return &runEnv{
		pidFile:        cfg.SubprocessPIDFile,
		silenceTimeout: cfg.SubprocessTimeout,
		killGrace:      cfg.Tuning.killGrace,
		fileWait:       cfg.Tuning.fileWait,
		extraEnv:       cfg.Environment,
		logger:         logger,
		sweep:          becomeSubreaper(logger), // once per worker process: serve and --run-task
		protected:      protectedPaths(cfg.TaskUpdateQueueDB),
	}
}

// signOffBudget is the time for the last flush of the queue and the
// sign-off, once the running task has stopped (within kill_grace_seconds):
// with the default 5 s grace the worker is gone 9 s after the signal, well
// within the unit's TimeoutStopSec.
const signOffBudget = 4 * time.Second

// serve runs the worker against the Manager until shutdown.
func serve(ctx context.Context, sigs chan os.Signal, cfg *Config, opts *options, stderr io.Writer, logs *logSetup) int {
	logger := logs.logger
	logger.Info("starting Flamenco Worker", "version", workerVersion(), "pid", os.Getpid(), "config_files", strings.Join(cfg.LoadedFiles, ", "))
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	sig := newSignalLoop(sigs, stop, stderr, logger)
	sig.reopen = func() {
		if err := logs.reopen(); err != nil {
			logger.Error("cannot reopen the log files", "err", err)
		}
	}
	stopSignals, sigDone := make(chan struct{}), make(chan struct{})
	go func() { // ends when stopSignals is closed, or on the second signal
		defer close(sigDone)
		sig.run(stopSignals)
	}()
	defer func() { close(stopSignals); <-sigDone }()

	release, err := takeInstanceLocks(cfg, logger)
	if err != nil {
		logger.Error(err.Error())
		return exitFailure
	}
	defer release()
	w, code := setUp(runCtx, cfg, opts, logger)
	if w == nil {
		return code
	}
	sig.attach(w)
	done := make(chan int, 1)
	go func() { done <- w.serve(runCtx, stop, opts) }() // ends after the shutdown sequence
	select {
	case code := <-done:
		w.q.close()
		return code
	case <-sig.forced:
		// The queue stays open: the shutdown sequence may still be using it
		// until the process exits, and a committed row survives that anyway.
		w.killTask()
		logger.Warn("second signal: exiting at once")
		return exitFailure
	}
}

// setUp finds the Manager if no manager_url is set, opens the queue, reaps
// an orphan of a crashed run and builds the worker; without a worker, the
// exit code says why.
func setUp(ctx context.Context, cfg *Config, opts *options, logger *slog.Logger) (*worker, int) {
	if cfg.ManagerURL == "" {
		found, err := discoverManager(ctx, cfg.Tuning.ssdpTargets, 5, time.Second, logger)
		if ctx.Err() != nil {
			return nil, exitOK // stopped while looking for the Manager
		}
		if err != nil {
			logger.Error("cannot find the Manager", "err", err)
			return nil, exitFailure
		}
		cfg.ManagerURL = found // kept in memory only, as in the Python worker
	}
	q, err := openQueue(cfg.TaskUpdateQueueDB, logger, cfg.Tuning.updateBackoff)
	if err != nil {
		logger.Error("cannot open the task update queue", "err", err)
		return nil, exitFailure
	}
	reapOrphan(cfg.SubprocessPIDFile, logger)
	mgr, err := newManager(cfg, cfg.ManagerURL, workerVersion(), logger)
	if err != nil {
		q.close()
		logger.Error("configuration error: cannot set up the Manager connection", "err", err)
		return nil, exitConfig
	}
	w := newWorker(cfg, mgr, q, newRunEnv(cfg, logger), make(chan outgoing, 4), logger)
	w.single = opts.single
	w.live = newLiveness(cfg.Tuning.testHooks.beat)
	q.live = w.live
	return w, exitOK
}

// serve signs on, runs the loop and shuts down cleanly.
func (w *worker) serve(ctx context.Context, stop context.CancelFunc, opts *options) int {
	sdNotify("STATUS=signing on at the Manager")
	if err := w.mgr.startup(ctx); err != nil {
		if ctx.Err() != nil {
			return exitOK // stopped while still registering or signing on
		}
		w.logger.Error("cannot register or sign on at the Manager", "err", err)
		return exitFailure
	}
	sdNotify("READY=1")
	if opts.test {
		w.ack(ctx, "testing")
	}
	notifier := newOutputNotifier(func(ctx context.Context, p string) error { return w.mgr.outputProduced(ctx, p) }, w.cfg.Tuning.outputWindow, w.logger)
	w.env.output = notifier.notify

	committed, stopForwarding, cutSends := w.q.start(ctx, w.out, w.deliverer()) // the committer ends when out is closed, below
	defer cutSends()
	var bg sync.WaitGroup
	bg.Go(func() { notifier.run(ctx) })                        // ends with ctx
	bg.Go(func() { w.pingWhileAlive(ctx, watchdogTimeout()) }) // ends with ctx
	bg.Go(func() { w.reportStatus(ctx, time.Second) })         // ends with ctx

	w.loop(ctx)
	sdNotify("STOPPING=1\nSTATUS=shutting down: flushing the queue, signing off")
	deadline := time.Now().Add(signOffBudget)
	w.setState(stateShutdown)
	stop()
	close(w.out)
	<-committed
	bg.Wait()
	w.shutdown(deadline, stopForwarding, cutSends)
	return exitOK
}

// shutdown is the end of a clean shutdown: one last delivery pass of the
// forwarder over the queued updates, then /sign-off (the Manager re-queues
// our task). A send still in flight at the flush deadline is cut then
// (cutSends), so that the sign-off keeps its time.
func (w *worker) shutdown(deadline time.Time, stopForwarding, cutSends func()) {
	flushDeadline := deadline.Add(-1500 * time.Millisecond)
	hard := time.AfterFunc(time.Until(flushDeadline), cutSends)
	defer hard.Stop()
	flushCtx, cancel := context.WithDeadline(context.Background(), flushDeadline)
	defer cancel()
	err := w.q.flush(flushCtx, w.deliverer())
	stopForwarding() // between sends; a send in flight ends first
	if err != nil {
		w.logger.Warn("task updates left in the queue; they are sent after the next start", "queued", w.q.len(), "err", err)
	}
	signOffCtx, cancel2 := context.WithDeadline(context.Background(), deadline)
	defer cancel2()
	if err := w.mgr.signOff(signOffCtx); err != nil {
		w.logger.Warn("error signing off, continuing with shutdown", "err", err)
	}
	user, sys, rss := resourceUsage()
	w.logger.Info("Flamenco Worker is shut down", "cpu_user", user.Round(time.Millisecond),
		"cpu_system", sys.Round(time.Millisecond), "max_rss_kib", rss)
}

// killTask kills the running task's process group at once (forced exit).
func (w *worker) killTask() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.current != nil {
		if pid := w.current.rep.pid.Load(); pid > 0 {
			syscall.Kill(-int(pid), syscall.SIGKILL)
		}
	}
}
