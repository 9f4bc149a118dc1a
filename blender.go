package main

import (
	"cmp"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// exrSequenceToJPEGScript turns a sequence of EXR files into JPEG previews
// inside Blender; it goes to a temporary file for --python.
//
//go:embed exr_sequence_to_jpeg.py
var exrSequenceToJPEGScript string

// blenderRender is a validated blender_render command, the shared part of the others.
type blenderRender struct {
	cmd          []string // blender_cmd, split
	filepath     string   // the blend file
	overrideFile string   // <blend>-overrides.py if it exists; found at run time
	pythonExpr   string
	renderOutput string
	format       string // already mapped to Blender's CLI name
	frames       string
}

func cmdBlenderRender(ctx context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
	r, err := validateBlenderRender(ctx, c, s)
	return blenderCommand(err, func(ctx context.Context) error { return c.renderBlend(ctx, r, r.argv) })
}

// blenderCommand hands run to the runner once validation has passed.
func blenderCommand(err error, run func(context.Context) error) (func(context.Context) error, error) {
	if err != nil {
		return nil, err
	}
	return run, nil
}

// renderBlend looks up the blend file's override script, then runs argv().
func (c *cmdCtx) renderBlend(ctx context.Context, r *blenderRender, argv func() []string) error {
	r.overrideFile = c.findOverrideFile(r.filepath)
	return c.runBlender(ctx, argv(), r.frames)
}

// validateBlenderRender checks blender_render's own settings, then the
// settings every Blender command shares, in the Python worker's order.
func validateBlenderRender(ctx context.Context, c *cmdCtx, s settings) (*blenderRender, error) {
	r := &blenderRender{}
	var err error
	if r.renderOutput, err = s.str("render_output", false, ""); err != nil {
		return nil, err
	}
	if r.renderOutput != "" {
		dir := filepath.Dir(r.renderOutput)
		if err := c.mkdirAll(dir); err != nil {
			return nil, fmt.Errorf("%q: dir %s cannot be created: %w", "render_output", dir, err)
		}
	}
	if r.frames, err = s.str("frames", false, ""); err != nil {
		return nil, err
	}
	renderFormat, err := s.str("render_format", false, "")
	if err != nil {
		return nil, err
	}
	// The Python worker validated render_format but only used format; we
	// fall back to render_format when format is absent.
	format, err := s.str("format", false, renderFormat)
	if err != nil {
		return nil, err
	}
	r.format = blenderCLIFormat(format)
	if r.pythonExpr, err = s.str("python_expr", false, ""); err != nil {
		return nil, err
	}
	if r.cmd, r.filepath, err = validateBlenderBase(ctx, c, s); err != nil {
		return nil, err
	}
	return r, nil
}

// blenderCLIFormat maps an image format name of Blender's DNA (what the
// Server sends) to the name --render-format accepts.
func blenderCLIFormat(format string) string {
	return cmp.Or(map[string]string{"OPEN_EXR": "EXR", "OPEN_EXR_MULTILAYER": "MULTILAYER"}[format], format)
}

// blenderCmd validates the "blender_cmd" setting: it is split shell-style
// and its first word must exist as a path (no $PATH lookup, as in the
// Python worker; the Manager fills in {blender} with a full path).
func blenderCmd(s settings) ([]string, error) {
	argv, err := s.commandLine("blender_cmd", true, "")
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(argv[0]); err != nil {
		return nil, fmt.Errorf("blender_cmd %q does not exist", argv[0])
	}
	return argv, nil
}

// validateBlenderBase is AbstractBlenderCommand.validate: blender_cmd, filepath, the PID file.
func validateBlenderBase(ctx context.Context, c *cmdCtx, s settings) ([]string, string, error) {
	argv, err := blenderCmd(s)
	if err != nil {
		return nil, "", err
	}
	blend, err := s.str("filepath", true, "")
	if err != nil {
		return nil, "", err
	}
	if err := c.waitForBlendFile(ctx, blend); err != nil {
		return nil, "", err
	}
	if err := c.checkPIDFile(); err != nil {
		return nil, "", err
	}
	return argv, blend, nil
}

// waitForBlendFile waits c.env.fileWait once for a blend file that does not
// exist yet: it may still be on its way over a network file system.
func (c *cmdCtx) waitForBlendFile(ctx context.Context, p string) error {
	if _, err := os.Stat(p); err == nil {
		return nil
	}
	c.env.logger.Warn("blend file does not exist, waiting", "filepath", p, "wait", c.env.fileWait)
	c.logf("Blender file %s does not exist, waiting %s", p, c.env.fileWait)
	select {
	case <-time.After(c.env.fileWait):
	case <-ctx.Done():
		return ctx.Err()
	}
	if _, err := os.Stat(p); err != nil {
		return fmt.Errorf("filepath '%s' does not exist", p)
	}
	return nil
}

// findOverrideFile returns the Server's RNA override script for a blend
// file if it exists, logging its contents: the name up to the last ".blend"
// (any case) plus "-overrides.py".
func (c *cmdCtx) findOverrideFile(blend string) string {
	i := len(blend) - len(".blend")
	for i >= 0 && !strings.EqualFold(blend[i:i+len(".blend")], ".blend") { // lower-casing could move byte offsets
		i--
	}
	if i < 0 {
		return ""
	}
	p := blend[:i] + "-overrides.py"
	contents, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	c.logf("Override file found in %s", p)
	c.logf("Override file contains:\n%s", contents)
	return filepath.ToSlash(p)
}

// blenderBaseArgv is the start of every Blender render command line.
func blenderBaseArgv(cmd []string, blend, overrideFile string) []string {
	argv := slices.Concat(cmd, []string{"--enable-autoexec", "-noaudio", "--background", blend})
	if overrideFile != "" {
		argv = append(argv, "--python-exit-code", "42", "--python", overrideFile)
	}
	return argv
}

// argv is the blender_render command line.
func (r *blenderRender) argv() []string {
	argv := blenderBaseArgv(r.cmd, r.filepath, r.overrideFile)
	for _, opt := range [][2]string{
		{"--python-expr", r.pythonExpr}, {"--render-output", r.renderOutput},
		{"--render-format", r.format}, {"--render-frame", r.frames},
	} {
		if opt[1] != "" {
			argv = append(argv, opt[0], opt[1])
		}
	}
	return argv
}

// blenderProgressive is a validated blender_render_progressive command.
type blenderProgressive struct {
	blenderRender
	numChunks, startChunk, endChunk int64
}

func cmdBlenderRenderProgressive(ctx context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
	p, err := validateBlenderProgressive(ctx, c, s)
	return blenderCommand(err, func(ctx context.Context) error { return c.renderBlend(ctx, &p.blenderRender, p.argv) })
}

func validateBlenderProgressive(ctx context.Context, c *cmdCtx, s settings) (*blenderProgressive, error) {
	if _, ok := s["cycles_chunk"]; ok {
		return nil, errors.New(`"cycles_chunk" is an obsolete setting. Recreate the job using Flamenco Server 2.2 or newer, or use an older Worker.`)
	}
	r, err := validateBlenderRender(ctx, c, s)
	if err != nil {
		return nil, err
	}
	p := &blenderProgressive{blenderRender: *r}
	for _, f := range []struct {
		key string
		dst *int64
	}{
		{"cycles_num_chunks", &p.numChunks},
		{"cycles_chunk_start", &p.startChunk},
		{"cycles_chunk_end", &p.endChunk},
	} {
		if *f.dst, err = s.integer(f.key, true, 0); err != nil {
			return nil, err
		}
		if *f.dst < 1 {
			return nil, fmt.Errorf("%q must be a positive integer", f.key)
		}
	}
	return p, nil
}

// argv is the blender_render command line plus Cycles' resumable-render options.
func (p *blenderProgressive) argv() []string {
	return append(p.blenderRender.argv(), "--",
		"--cycles-resumable-num-chunks", strconv.FormatInt(p.numChunks, 10),
		"--cycles-resumable-start-chunk", strconv.FormatInt(p.startChunk, 10),
		"--cycles-resumable-end-chunk", strconv.FormatInt(p.endChunk, 10))
}

// blenderAudio is a validated blender_render_audio command.
type blenderAudio struct {
	cmd                  []string
	filepath             string
	renderOutput         string
	frameStart, frameEnd int64
	hasStart, hasEnd     bool
}

func cmdBlenderRenderAudio(ctx context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
	a, err := validateBlenderAudio(ctx, c, s)
	return blenderCommand(err, func(ctx context.Context) error { return c.runBlender(ctx, a.argv(), "") })
}

func validateBlenderAudio(ctx context.Context, c *cmdCtx, s settings) (*blenderAudio, error) {
	r, err := validateBlenderRender(ctx, c, s)
	if err != nil {
		return nil, err
	}
	if r.renderOutput == "" {
		return nil, errors.New("'render_output' is a required setting")
	}
	a := &blenderAudio{cmd: r.cmd, filepath: r.filepath, renderOutput: r.renderOutput}
	if a.frameStart, a.hasStart, err = blenderOptionalInt(s, "frame_start"); err != nil {
		return nil, err
	}
	if a.frameEnd, a.hasEnd, err = blenderOptionalInt(s, "frame_end"); err != nil {
		return nil, err
	}
	return a, nil
}

// blenderOptionalInt reads an optional integer setting and says whether it was given.
func blenderOptionalInt(s settings, key string) (int64, bool, error) {
	if s[key] == nil {
		return 0, false, nil
	}
	n, err := s.integer(key, true, 0)
	return n, err == nil, err
}

// argv is the audio mixdown command line: no override file, expression, format or
// frames. strconv.Quote writes a Python literal: settings are JSON, so valid UTF-8.
func (a *blenderAudio) argv() []string {
	lines := []string{"import bpy"}
	if a.hasStart {
		lines = append(lines, fmt.Sprintf("bpy.context.scene.frame_start = %d", a.frameStart))
	}
	if a.hasEnd {
		lines = append(lines, fmt.Sprintf("bpy.context.scene.frame_end = %d", a.frameEnd))
	}
	lines = append(lines,
		fmt.Sprintf("bpy.ops.sound.mixdown(filepath=%s, codec='FLAC', container='FLAC', accuracy=128)", strconv.Quote(a.renderOutput)),
		"bpy.ops.wm.quit_blender()")
	argv := blenderBaseArgv(a.cmd, a.filepath, "")
	return append(argv, "--python-exit-code", "47", "--python-expr", strings.Join(lines, "\n"))
}

// blenderExrToJPEG is a validated exr_sequence_to_jpeg command.
type blenderExrToJPEG struct {
	blenderRender
	exrGlob, outputPattern string
}

func cmdExrSequenceToJPEG(ctx context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
	e, err := validateExrToJPEG(ctx, c, s)
	return blenderCommand(err, func(ctx context.Context) error {
		f, err := os.CreateTemp("", "flamenco-exr-sequence-to-jpeg-*.py")
		if err != nil {
			return fmt.Errorf("creating script file: %w", err)
		}
		defer os.Remove(f.Name())
		_, err = f.WriteString(exrSequenceToJPEGScript)
		if err = cmp.Or(err, f.Close()); err != nil {
			return fmt.Errorf("writing script file: %w", err)
		}
		return c.renderBlend(ctx, &e.blenderRender, func() []string { return e.argv(f.Name()) })
	})
}

func validateExrToJPEG(ctx context.Context, c *cmdCtx, s settings) (*blenderExrToJPEG, error) {
	glob, err := s.str("exr_glob", false, "")
	if err != nil {
		return nil, err
	}
	dir, err := s.str("exr_directory", false, "")
	if err != nil {
		return nil, err
	}
	switch {
	case glob == "" && dir == "":
		return nil, fmt.Errorf("%q may not be empty", "exr_glob")
	case glob != "" && dir != "":
		return nil, errors.New(`Just pass "exr_glob", do not use "exr_directory"`)
	case dir != "":
		glob = path.Join(filepath.ToSlash(dir), "*.exr")
	}
	pattern, err := s.str("output_pattern", false, "preview-######.jpg")
	if err != nil {
		return nil, err
	}
	if pattern == "" {
		return nil, fmt.Errorf("%q may not be empty", "output_pattern")
	}
	r, err := validateBlenderRender(ctx, c, s)
	if err != nil {
		return nil, err
	}
	return &blenderExrToJPEG{blenderRender: *r, exrGlob: glob, outputPattern: pattern}, nil
}

// argv is the blender_render command line plus the conversion script.
func (e *blenderExrToJPEG) argv(script string) []string {
	return append(e.blenderRender.argv(),
		"--python-exit-code", "32", "--python", script,
		"--", "--exr-glob", e.exrGlob, "--output-pattern", e.outputPattern)
}

// runBlender runs Blender, following its output for progress, files and warnings.
func (c *cmdCtx) runBlender(ctx context.Context, argv []string, frames string) error {
	c.activity("Starting Blender")
	c.timing.checkpoint("starting blender")
	defer c.timing.checkpoint("")
	t := newRenderTracker(c, frames)
	return c.subprocess(ctx, argv, t.line)
}
