package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"
)

// commandFunc validates a command's settings and returns the function that
// executes it. A validation error fails the task as "Invalid settings"
// before anything runs; an error from run fails it as "Error executing".
type commandFunc func(ctx context.Context, c *cmdCtx, s settings) (run func(ctx context.Context) error, err error)

// runner is what a validator returns: the command, validated, ready to run.
type runner interface {
	run(context.Context, *cmdCtx) error
}

// validated adapts a validator to a commandFunc.
func validated[T runner](validate func(context.Context, *cmdCtx, settings) (T, error)) commandFunc {
	return func(ctx context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
		v, err := validate(ctx, c, s)
		return func(ctx context.Context) error { return v.run(ctx, c) }, err
	}
}

// runEnv is what commands need from the worker, the same for every task.
type runEnv struct {
	pidFile        string        // subprocess_pid_file; "" disables it
	silenceTimeout time.Duration // kill a subprocess silent this long; 0 = never
	killGrace      time.Duration // between SIGTERM and SIGKILL on abort
	fileWait       time.Duration // grace wait for a blend file on a slow network share
	extraEnv       []string      // [environment] section, "KEY=value"
	output         func(path string)
	logger         *slog.Logger
	sweep          bool     // the worker is a child subreaper: kill its descendants after each command
	protected      []string // absolute paths remove_tree and remove_file must not take away
}

// cmdCtx is one command of one task while it runs.
type cmdCtx struct {
	name   string
	idx    int
	taskID string
	rep    *reporter
	env    *runEnv
	timing *timing
}

// identifier names the command in error messages, as in the Python worker.
func (c *cmdCtx) identifier() string {
	return fmt.Sprintf("%s.(task_id=%s, command_idx=%d)", c.name, c.taskID, c.idx)
}

// logf sends "<command name>: <message>" to the task log.
func (c *cmdCtx) logf(format string, args ...any) {
	c.rep.log(c.name + ": " + fmt.Sprintf(format, args...))
}

func (c *cmdCtx) activity(a string) { c.rep.setActivity(a) }

// progress is the command's progress as a fraction from 0 to 1.
func (c *cmdCtx) progress(frac float64) { c.rep.progress(frac) }

// outputProduced tells the Manager about a new file for its "latest image".
func (c *cmdCtx) outputProduced(path string) {
	if c.env.output != nil {
		c.env.output(path)
	}
}

// mkdirAll creates dir and its parents, logging when it had to.
func (c *cmdCtx) mkdirAll(dir string) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	c.logf("Directory %s does not exist; creating.", dir)
	return os.MkdirAll(dir, 0o777)
}

// timing records named durations of one command (Python's timing.Timing):
// checkpoint starts a named interval that ends at the next checkpoint.
type timing struct {
	values    map[string]float64
	lastName  string
	lastStart time.Time
}

func newTiming() *timing { return &timing{values: map[string]float64{}} }

func (t *timing) set(name string, d time.Duration) { t.values[name] += d.Seconds() }

// checkpoint closes the running interval (if any) and starts name; "" only closes.
func (t *timing) checkpoint(name string) {
	now := time.Now()
	if t.lastName != "" {
		t.set(t.lastName, now.Sub(t.lastStart))
	}
	t.lastName, t.lastStart = name, now
}
