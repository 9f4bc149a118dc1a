package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// commandFunc validates a command's settings and returns the function that
// executes it. A validation error fails the task as "Invalid settings"
// before anything runs; an error from run fails it as "Error executing".
type commandFunc func(ctx context.Context, c *cmdCtx, s settings) (run func(ctx context.Context) error, err error)

// commandRegistry maps every command name of the Python worker 2.5 to its
// implementation (spec/python-worker.md §5.7). It is never modified.
var commandRegistry = map[string]commandFunc{
	"echo":      cmdEcho,
	"sleep":     cmdSleep,
	"exec":      cmdExec,
	"log_a_lot": cmdLogALot,

	"move_out_of_way":    cmdMoveOutOfWay,
	"move_to_final":      cmdMoveToFinal,
	"copy_file":          cmdCopyFile,
	"remove_tree":        cmdRemoveTree,
	"remove_file":        cmdRemoveFile,
	"move_with_counter":  cmdMoveWithCounter,
	"create_python_file": cmdCreatePythonFile,

	"blender_render":                    cmdBlenderRender,
	"blender_render_progressive":        cmdBlenderRenderProgressive,
	"blender_render_audio":              cmdBlenderRenderAudio,
	"exr_sequence_to_jpeg":              cmdExrSequenceToJPEG,
	"merge_progressive_renders":         cmdMergeProgressiveRenders,
	"merge_progressive_render_sequence": cmdMergeProgressiveRenderSequence,

	"create_video":       cmdCreateVideo,
	"concatenate_videos": cmdConcatenateVideos,
	"mux_audio":          cmdMuxAudio,
	"encode_audio":       cmdEncodeAudio,
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

// identifier names the command in error messages, as the Python worker does.
func (c *cmdCtx) identifier() string {
	return fmt.Sprintf("%s.(task_id=%s, command_idx=%d)", c.name, c.taskID, c.idx)
}

// logf sends "<command name>: <message>" to the task log.
func (c *cmdCtx) logf(format string, args ...any) {
	c.rep.log(c.name + ": " + fmt.Sprintf(format, args...))
}

// activity replaces the task's activity text.
func (c *cmdCtx) activity(a string) { c.rep.setActivity(a) }

// progress reports the command's progress as a fraction from 0 to 1.
func (c *cmdCtx) progress(frac float64) { c.rep.progress(frac) }

// outputProduced tells the Manager about a new output file (for its
// "latest image"); the notifier throttles.
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

// runCommands runs the task's commands in order and reports whether all of
// them succeeded. The first failing command stops the task. It returns
// ctx's error when the task was aborted.
func runCommands(ctx context.Context, t *task, rep *reporter, env *runEnv) (ok bool, err error) {
	rep.nCommands = max(len(t.Commands), 1)
	for i, cmd := range t.Commands {
		if cmd.Name == "" {
			return false, fmt.Errorf("command %d of task %s has no name", i, t.ID)
		}
		fn, known := commandRegistry[cmd.Name]
		if !known {
			return false, fmt.Errorf("command %d of task %s has unknown command name %q", i, t.ID, cmd.Name)
		}
		if cmd.Settings == nil {
			return false, fmt.Errorf("command %d of task %s has malformed settings %s", i, t.ID, cmd.RawSettings)
		}
		c := &cmdCtx{name: cmd.Name, idx: i, taskID: t.ID, rep: rep, env: env, timing: newTiming()}
		if !runCommand(ctx, c, fn, cmd.Settings) {
			if ctx.Err() != nil {
				return false, ctx.Err()
			}
			rep.log(fmt.Sprintf("Command %d of task %s was not successful, aborting task.", i, t.ID))
			return false, nil
		}
	}
	return true, nil
}

// runCommand is AbstractCommand.run: validate, announce, execute, time, report.
func runCommand(ctx context.Context, c *cmdCtx, fn commandFunc, s settings) bool {
	run, err := fn(ctx, c, s)
	if err != nil {
		if ctx.Err() != nil {
			return false
		}
		c.env.logger.Warn("invalid command settings", "command", c.identifier(), "err", err)
		c.rep.log(fmt.Sprintf("%s: Error in settings: %v", c.identifier(), err))
		c.rep.setStatus("failed", fmt.Sprintf("%s: Invalid settings: %v", c.identifier(), err))
		return false
	}
	c.rep.log(c.name + ": Starting")
	c.rep.commandStarted(c.idx, c.name)

	start := time.Now()
	err = run(ctx)
	c.timing.set("total", time.Since(start))
	c.logf("command timing information: %s", c.timing.String())
	c.rep.addTiming(c.timing.values)
	if err != nil {
		if ctx.Err() != nil {
			return false
		}
		c.env.logger.Warn("command failed", "command", c.identifier(), "err", err)
		c.rep.log(fmt.Sprintf("%s: Error executing: %v", c.identifier(), err))
		c.rep.setActivity(fmt.Sprintf("%s: Error executing: %v", c.identifier(), err))
		return false
	}
	c.rep.log(c.name + ": Finished")
	c.rep.commandFinished(c.idx, c.name)
	return true
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

func (t *timing) String() string { return timingString(t.values) }

func cmdEcho(ctx context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
	msg, err := s.str("message", true, "")
	if err != nil {
		return nil, err
	}
	return func(context.Context) error {
		c.rep.log(msg)
		return nil
	}, nil
}

func cmdSleep(ctx context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
	secs, text, err := s.number("time_in_seconds", true)
	if err != nil {
		return nil, err
	}
	if secs < 0 {
		return nil, fmt.Errorf("%q may not be negative", "time_in_seconds")
	}
	return func(ctx context.Context) error {
		c.logf("Sleeping for %s seconds", text)
		t := time.NewTimer(time.Duration(secs * float64(time.Second)))
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
		c.logf("Done sleeping for %s seconds", text)
		return nil
	}, nil
}

func cmdLogALot(ctx context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
	n, err := s.integer("lines", false, 20000)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context) error {
		c.activity(fmt.Sprintf("logging %d lines", n))
		for i := int64(0); i < n; i++ {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			c.rep.log(strings.Repeat(fmt.Sprintf("This is line %d", i), 30))
			c.progress(float64(i+1) / float64(n))
		}
		return nil
	}, nil
}

func cmdExec(ctx context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
	argv, err := s.commandLine("cmd", true, "")
	if err != nil {
		return nil, err
	}
	if err := c.checkPIDFile(); err != nil {
		return nil, err
	}
	return func(ctx context.Context) error {
		return c.subprocess(ctx, argv, nil)
	}, nil
}

// absPath makes p absolute without touching the file system.
func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}
