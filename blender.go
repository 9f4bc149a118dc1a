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

func (r *blenderRender) run(ctx context.Context, c *cmdCtx) error {
	r.overrideFile = c.findOverrideFile(r.filepath)
	return c.runBlender(ctx, r.argv(), r.frames)
}

// validateBlenderRender checks blender_render's own settings, then the
// settings every Blender command shares, in the Python worker's order.
func validateBlenderRender(ctx context.Context, c *cmdCtx, s settings) (*blenderRender, error) {
	sr := s.reader()
	r := &blenderRender{renderOutput: sr.str("render_output", false, "")}
	if r.renderOutput != "" {
		dir := filepath.Dir(r.renderOutput)
		if err := c.mkdirAll(dir); err != nil {
			sr.failf("%q: dir %s cannot be created: %w", "render_output", dir, err)
		}
	}
	r.frames = sr.str("frames", false, "")
	// The Python worker validated render_format but only used format; we
	// fall back to render_format when format is absent.
	r.format = blenderCLIFormat(sr.str("format", false, sr.str("render_format", false, "")))
	r.pythonExpr = sr.str("python_expr", false, "")
	r.cmd, r.filepath = validateBlenderBase(ctx, c, sr)
	return r, sr.err()
}

// blenderCLIFormat maps an image format name of Blender's DNA (what the
// Server sends) to the name --render-format accepts.
func blenderCLIFormat(format string) string {
	return cmp.Or(map[string]string{"OPEN_EXR": "EXR", "OPEN_EXR_MULTILAYER": "MULTILAYER"}[format], format)
}

// blenderCmd validates the "blender_cmd" setting: it is split shell-style
// and its first word must exist as a path (no $PATH lookup, as in the
// Python worker; the Manager fills in {blender} with a full path).
func blenderCmd(r *settingsReader) []string {
	argv := r.commandLine("blender_cmd", true, "")
	r.then(func() error {
		if _, err := os.Stat(argv[0]); err != nil {
			return fmt.Errorf("blender_cmd %q does not exist", argv[0])
		}
		return nil
	})
	return argv
}

// validateBlenderBase is AbstractBlenderCommand.validate: blender_cmd,
// filepath (with one grace wait for a slow network share), the PID file.
func validateBlenderBase(ctx context.Context, c *cmdCtx, sr *settingsReader) ([]string, string) {
	argv, blend := blenderCmd(sr), sr.str("filepath", true, "")
	sr.then(func() error { return c.waitForBlendFile(ctx, blend) })
	sr.then(c.checkPIDFile)
	return argv, blend
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

func (p *blenderProgressive) run(ctx context.Context, c *cmdCtx) error {
	p.overrideFile = c.findOverrideFile(p.filepath)
	return c.runBlender(ctx, p.argv(), p.frames)
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
	sr := s.reader()
	for _, f := range []struct {
		key string
		dst *int64
	}{
		{"cycles_num_chunks", &p.numChunks},
		{"cycles_chunk_start", &p.startChunk},
		{"cycles_chunk_end", &p.endChunk},
	} {
		if *f.dst = sr.integer(f.key, true, 0); *f.dst < 1 {
			sr.failf("%q must be a positive integer", f.key)
		}
	}
	return p, sr.err()
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

func (a *blenderAudio) run(ctx context.Context, c *cmdCtx) error {
	return c.runBlender(ctx, a.argv(), "")
}

func validateBlenderAudio(ctx context.Context, c *cmdCtx, s settings) (*blenderAudio, error) {
	r, err := validateBlenderRender(ctx, c, s)
	if err != nil {
		return nil, err
	}
	if r.renderOutput == "" {
		return nil, errors.New("'render_output' is a required setting")
	}
	a := &blenderAudio{cmd: r.cmd, filepath: r.filepath, renderOutput: r.renderOutput,
		hasStart: s["frame_start"] != nil, hasEnd: s["frame_end"] != nil}
	sr := s.reader()
	a.frameStart, a.frameEnd = sr.integer("frame_start", false, 0), sr.integer("frame_end", false, 0)
	return a, sr.err()
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

func (e *blenderExrToJPEG) run(ctx context.Context, c *cmdCtx) error {
	f, err := os.CreateTemp("", "flamenco-exr-sequence-to-jpeg-*.py")
	if err != nil {
		return fmt.Errorf("creating script file: %w", err)
	}
	defer os.Remove(f.Name())
	_, err = f.WriteString(exrSequenceToJPEGScript)
	if err = cmp.Or(err, f.Close()); err != nil {
		return fmt.Errorf("writing script file: %w", err)
	}
	e.overrideFile = c.findOverrideFile(e.filepath)
	return c.runBlender(ctx, e.argv(f.Name()), e.frames)
}

func validateExrToJPEG(ctx context.Context, c *cmdCtx, s settings) (*blenderExrToJPEG, error) {
	sr := s.reader()
	glob, dir := sr.str("exr_glob", false, ""), sr.str("exr_directory", false, "")
	switch {
	case glob == "" && dir == "":
		sr.failf("%q may not be empty", "exr_glob")
	case glob != "" && dir != "":
		sr.failf(`Just pass "exr_glob", do not use "exr_directory"`)
	case dir != "":
		glob = path.Join(filepath.ToSlash(dir), "*.exr")
	}
	pattern := sr.str("output_pattern", false, "preview-######.jpg")
	if pattern == "" {
		sr.failf("%q may not be empty", "output_pattern")
	}
	if err := sr.err(); err != nil {
		return nil, err
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
