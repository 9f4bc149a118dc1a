package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// commandRegistry maps every command name of the Python worker 2.5 to its
// implementation (spec/python-worker.md §5.7). It is never modified.
var commandRegistry = map[string]commandFunc{
	"echo":      cmdEcho,
	"sleep":     cmdSleep,
	"exec":      cmdExec,
	"log_a_lot": cmdLogALot,

	"move_out_of_way":    cmdMoveOutOfWay,
	"move_to_final":      filesSrcDestCmd(filesMoveToFinal),
	"copy_file":          filesSrcDestCmd(filesCopyFile),
	"remove_tree":        filesRemove(true),
	"remove_file":        filesRemove(false),
	"move_with_counter":  filesSrcDestCmd(filesMoveWithCounter),
	"create_python_file": cmdCreatePythonFile,

	"blender_render":                    validated(validateBlenderRender),
	"blender_render_progressive":        validated(validateBlenderProgressive),
	"blender_render_audio":              validated(validateBlenderAudio),
	"exr_sequence_to_jpeg":              validated(validateExrToJPEG),
	"merge_progressive_renders":         validated(validateExrMerge(false)),
	"merge_progressive_render_sequence": validated(validateExrMerge(true)),

	"create_video":       validated(validateCreateVideo),
	"concatenate_videos": validated(validateConcatenateVideos),
	"mux_audio":          validated(validateMuxAudio),
	"encode_audio":       validated(validateEncodeAudio),
}

// runCommands runs the task's commands until one fails and reports whether
// all succeeded; it returns ctx's error when the task was aborted.
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
	c.logf("command timing information: %s", timingString(c.timing.values))
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

func cmdEcho(ctx context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
	r := s.reader()
	msg := r.str("message", true, "")
	return func(context.Context) error { c.rep.log(msg); return nil }, r.err()
}

func cmdSleep(ctx context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
	r := s.reader()
	secs, text := r.number("time_in_seconds", true)
	if secs < 0 {
		r.failf("%q may not be negative", "time_in_seconds")
	}
	return func(ctx context.Context) error {
		c.logf("Sleeping for %s seconds", text)
		select {
		case <-time.After(time.Duration(secs * float64(time.Second))):
		case <-ctx.Done():
			return ctx.Err()
		}
		c.logf("Done sleeping for %s seconds", text)
		return nil
	}, r.err()
}

func cmdLogALot(ctx context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
	r := s.reader()
	n := r.integer("lines", false, 20000)
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
	}, r.err()
}

func cmdExec(ctx context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
	r := s.reader()
	argv := r.commandLine("cmd", true, "")
	r.then(c.checkPIDFile)
	return func(ctx context.Context) error { return c.subprocess(ctx, argv, nil) }, r.err()
}

// task is what the worker uses of the Manager's Task document (§2.1).
type task struct {
	ID       string
	Commands []taskCommand
}

// taskCommand is one command of a task. Settings is nil when the Manager
// sent something other than a JSON object; RawSettings then says what.
type taskCommand struct {
	Name        string
	Settings    settings
	RawSettings string
}

// decodeTask parses a /task response body. Settings are decoded with
// json.Number so that integer and float settings stay apart.
func decodeTask(body []byte) (*task, error) {
	var doc struct {
		ID       string `json:"_id"`
		Commands *[]struct {
			Name     string          `json:"name"`
			Settings json.RawMessage `json:"settings"`
		} `json:"commands"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("decoding task: %w", err)
	}
	if doc.ID == "" {
		return nil, fmt.Errorf("decoding task: no _id")
	}
	if doc.Commands == nil {
		return nil, fmt.Errorf("decoding task: no commands list")
	}
	t := &task{ID: doc.ID}
	for _, c := range *doc.Commands {
		tc := taskCommand{Name: c.Name, RawSettings: cmp.Or(string(c.Settings), "(none)")}
		dec := json.NewDecoder(bytes.NewReader(c.Settings))
		dec.UseNumber()
		if dec.Decode(&tc.Settings) != nil {
			tc.Settings = nil
		}
		t.Commands = append(t.Commands, tc)
	}
	return t, nil
}
