// Command flamenco-worker is the render-node agent of a Flamenco v2 render
// farm: a drop-in replacement for the Python Flamenco Worker 2.5.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Exit codes: systemd's RestartPreventExitStatus=2 stops a restart loop on
// a broken config.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// version is stamped by dist.sh (-ldflags "-X main.version=..."); without it
// the VCS revision from the build info is used.
var version string

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// options are the command-line flags of the Python worker, plus ours.
type options struct {
	config     string
	verbose    bool
	version    bool
	reregister bool
	debug      bool
	test       bool
	single     bool
	runTask    string
	check      bool
}

const usageText = `Usage: flamenco-worker [options]

Runs the Flamenco Worker: registers with the Flamenco Manager, fetches
tasks, runs their commands and reports back.

Options:
  -c, --config PATH   read PATH instead of ./flamenco-worker.cfg
                      ($HOME/.flamenco-worker.cfg is still read on top)
  -v, --verbose       print the effective configuration (secrets hidden)
  -V, --version       print the version and exit
  -r, --reregister    register as a new worker, even with credentials
  -d, --debug         log at debug level
  -t, --test          testing mode: only run test-blender-render tasks
  -1, --single        run one task, then shut down
      --run-task FILE run the task in FILE (Manager JSON) locally and print
                      its updates; exit 0 if it completed, 1 if it failed
      --check         check the config, the Manager, Blender, FFmpeg and the
                      pre-task checks; print OK/FAIL per check, exit 0 if all pass
  -h, --help          show this help

Signals: SIGINT/SIGTERM shut down cleanly (a second one exits at once),
SIGUSR1 prints goroutine stacks and the worker's state to stderr,
SIGTSTP sends the worker to sleep, SIGCONT wakes it up.
Exit codes: 0 clean shutdown, 1 runtime failure, 2 usage or config error.
`

// parseFlags parses the command line; flag.ErrHelp means -h was given.
func parseFlags(args []string, stderr io.Writer) (*options, error) {
	var o options
	fs := flag.NewFlagSet("flamenco-worker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usageText) }
	for _, name := range []string{"c", "config"} {
		fs.StringVar(&o.config, name, "", "")
	}
	bools := []struct {
		short, long string
		p           *bool
	}{
		{"v", "verbose", &o.verbose}, {"V", "version", &o.version}, {"r", "reregister", &o.reregister},
		{"d", "debug", &o.debug}, {"t", "test", &o.test}, {"1", "single", &o.single},
	}
	for _, b := range bools {
		fs.BoolVar(b.p, b.short, false, "")
		fs.BoolVar(b.p, b.long, false, "")
	}
	fs.StringVar(&o.runTask, "run-task", "", "")
	fs.BoolVar(&o.check, "check", false, "")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		fmt.Fprint(stderr, usageText)
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return &o, nil
}

// run is the whole program; only main turns its result into an exit.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return runTuned(ctx, args, stdout, stderr, defaultTuning())
}

// tuning holds the worker's fixed delays (spec/python-worker.md §6.10).
// Only tests change them.
type tuning struct {
	intervals
	registerRetry time.Duration // between registration/sign-on attempts
	killGrace     time.Duration // SIGTERM → SIGKILL
	fileWait      time.Duration // grace for a blend file on a slow share
	outputWindow  time.Duration // /output-produced at most once per window
	queueBackoff  time.Duration // first retry delay of the update forwarder
	queueMaxWait  time.Duration // longest retry delay of the update forwarder
	ssdpTargets   []string      // where discovery searches for the Manager
	httpTimeout   time.Duration // deadline of every request to the Manager
}

func defaultTuning() tuning {
	return tuning{
		intervals:     defaultIntervals(),
		registerRetry: 30 * time.Second,
		killGrace:     5 * time.Second,
		fileWait:      5 * time.Second,
		outputWindow:  30 * time.Second,
		queueBackoff:  500 * time.Millisecond,
		queueMaxWait:  time.Minute,
		// IPv4 multicast, and IPv6 site-local, as the Python worker.
		ssdpTargets: []string{"239.255.255.250:1900", "[ff05::c]:1900"},
		httpTimeout: 30 * time.Second,
	}
}

func runTuned(ctx context.Context, args []string, stdout, stderr io.Writer, tune tuning) int {
	opts, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "flamenco-worker: %v\n", err)
		return exitUsage
	}
	if opts.version {
		fmt.Fprintln(stdout, workerVersion())
		return exitOK
	}
	logger := newLogger(stderr, opts.debug)
	home, err := os.UserHomeDir()
	if err != nil {
		fmt.Fprintf(stderr, "flamenco-worker: cannot find the home directory: %v\n", err)
		return exitUsage
	}
	cfg, err := loadConfig(opts.config, home, func(msg string) { logger.Warn(msg) })
	if err != nil {
		fmt.Fprintf(stderr, "flamenco-worker: configuration error: %v\n", err)
		return exitUsage
	}
	if opts.runTask != "" {
		return runTaskFile(ctx, cfg, opts.runTask, stdout, stderr, newRunEnv(cfg, tune, logger))
	}
	applyFlags(cfg, opts, logger)
	if opts.check {
		if !preflight(ctx, cfg, tune, stdout, logger) {
			return exitFailure
		}
		return exitOK
	}
	if opts.verbose {
		if err := cfg.writeEffective(stderr); err != nil {
			fmt.Fprintf(stderr, "flamenco-worker: %v\n", err)
		}
	}
	return serve(ctx, cfg, opts, tune, stderr, logger)
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

// newLogger logs key=value lines to stderr.
func newLogger(w io.Writer, debug bool) *slog.Logger {
	level := slog.LevelInfo
	if debug {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// workerVersion is the stamped version, or the VCS revision.
func workerVersion() string {
	if version != "" {
		return version
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "dev"
	}
	if v := info.Main.Version; v != "" && v != "(devel)" {
		return strings.TrimPrefix(v, "v")
	}
	rev, dirty := "", false
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev == "" {
		return "dev"
	}
	if dirty {
		rev += "-dirty"
	}
	return "0.0.0-" + rev
}

// newRunEnv is what commands get from the configuration.
func newRunEnv(cfg *Config, tune tuning, logger *slog.Logger) *runEnv {
	return &runEnv{
		pidFile:        cfg.SubprocessPIDFile,
		silenceTimeout: cfg.SubprocessTimeout,
		killGrace:      tune.killGrace,
		fileWait:       tune.fileWait,
		extraEnv:       cfg.Environment,
		logger:         logger,
		sweep:          becomeSubreaper(logger), // once per worker process: serve and --run-task
		protected:      protectedPaths(cfg.TaskUpdateQueueDB),
	}
}

// Shutdown budget: the running task gets killGrace (5 s) to stop, the queue
// one flush and the Manager a sign-off, all within shutdownBudget of the
// signal, so systemd's stop never has to SIGKILL us.
const shutdownBudget = 9 * time.Second

// serve runs the worker against the Manager until shutdown.
func serve(ctx context.Context, cfg *Config, opts *options, tune tuning, stderr io.Writer, logger *slog.Logger) int {
	logger.Info("starting Flamenco Worker", "version", workerVersion(), "pid", os.Getpid(), "config_files", strings.Join(cfg.LoadedFiles, ", "))
	if cfg.ManagerURL == "" {
		found, err := discoverManager(ctx, tune.ssdpTargets, 5, time.Second, logger)
		if err != nil {
			logger.Error("cannot find the Manager", "err", err)
			return exitFailure
		}
		cfg.ManagerURL = found // kept in memory only, as in the Python worker
	}
	q, err := openQueue(cfg.TaskUpdateQueueDB, logger)
	if err != nil {
		logger.Error("cannot open the task update queue", "err", err)
		return exitFailure
	}
	defer q.close()
	reapOrphan(cfg.SubprocessPIDFile, logger)
	q.minBackoff, q.maxBackoff = tune.queueBackoff, tune.queueMaxWait
	mgr, err := newManager(cfg, cfg.ManagerURL, workerVersion(), logger)
	if err != nil {
		logger.Error("cannot set up the Manager connection", "err", err)
		return exitUsage
	}
	out := make(chan outgoing, 4)
	mgr.retryDelay = tune.registerRetry
	mgr.client.Timeout = tune.httpTimeout
	w := newWorker(cfg, mgr, q, newRunEnv(cfg, tune, logger), out, logger)
	w.single = opts.single
	w.iv = tune.intervals

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	sig := newSignalLoop(w, stop, stderr, logger)
	stopSignals, sigDone := make(chan struct{}), make(chan struct{})
	go func() { // ends when stopSignals is closed, or on the second signal
		defer close(sigDone)
		sig.run(stopSignals)
	}()
	defer func() { close(stopSignals); <-sigDone }()

	done := make(chan int, 1)
	go func() { done <- w.serve(runCtx, stop, opts, tune.outputWindow) }() // ends after the shutdown sequence
	select {
	case code := <-done:
		return code
	case <-sig.forced:
		w.killTask()
		logger.Warn("second signal: exiting at once")
		return exitFailure
	}
}

// serve signs on, runs the loop and shuts down cleanly.
func (w *worker) serve(ctx context.Context, stop context.CancelFunc, opts *options, outputWindow time.Duration) int {
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
	notifier := newOutputNotifier(func(ctx context.Context, p string) error { return w.mgr.outputProduced(ctx, p) }, w.logger)
	notifier.window = outputWindow
	w.env.output = notifier.notify

	fwdCtx, stopForwarding := context.WithCancel(context.Background())
	var bg sync.WaitGroup
	bg.Go(func() { w.q.forward(fwdCtx, w.deliverer()) })       // ends with fwdCtx
	bg.Go(func() { notifier.run(ctx) })                        // ends with ctx
	bg.Go(func() { keepWatchdogFed(ctx, watchdogInterval()) }) // ends with ctx
	commitDone := make(chan struct{})
	go func() { // ends when out is closed, below
		defer close(commitDone)
		w.q.commit(ctx, w.out)
	}()

	w.loop(ctx)
	sdNotify("STOPPING=1")
	deadline := time.Now().Add(shutdownBudget - w.env.killGrace)
	w.setState(stateShutdown)
	stop()
	close(w.out)
	<-commitDone
	stopForwarding()
	bg.Wait()
	w.shutdown(deadline)
	return exitOK
}

// shutdown is the end of a clean shutdown: one last delivery attempt for
// the queued updates, then /sign-off (the Manager re-queues our task).
func (w *worker) shutdown(deadline time.Time) {
	flushCtx, cancel := context.WithDeadline(context.Background(), deadline.Add(-1500*time.Millisecond))
	defer cancel()
	if err := w.q.flush(flushCtx, w.deliverer()); err != nil {
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
