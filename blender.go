package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// blenderRender is a validated blender_render command (and the shared part
// of the other Blender commands).
type blenderRender struct {
	cmd          []string // blender_cmd, split
	filepath     string   // the blend file
	overrideFile string   // <blend>-overrides.py if it exists; found at run time
	pythonExpr   string
	renderOutput string
	format       string // already mapped to Blender's CLI name
	frames       string
}

// blenderCLIFormats maps the image format names of Blender's DNA (what the
// Server sends) to the names its --render-format option accepts.
var blenderCLIFormats = map[string]string{
	"OPEN_EXR":            "EXR",
	"OPEN_EXR_MULTILAYER": "MULTILAYER",
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

func blenderCLIFormat(format string) string {
	if cli, ok := blenderCLIFormats[format]; ok {
		return cli
	}
	return format
}

// validateBlenderBase is AbstractBlenderCommand.validate: blender_cmd,
// filepath (with one grace wait for a slow network share), the PID file.
func validateBlenderBase(ctx context.Context, c *cmdCtx, sr *settingsReader) ([]string, string) {
	argv, blend := blenderCmd(sr), sr.str("filepath", true, "")
	sr.then(func() error { return c.waitForBlendFile(ctx, blend) })
	sr.then(c.checkPIDFile)
	return argv, blend
}

// waitForBlendFile returns nil when p exists, after waiting c.env.fileWait
// once if it does not exist yet: the file may still be on its way over a
// network file system.
func (c *cmdCtx) waitForBlendFile(ctx context.Context, p string) error {
	if _, err := os.Stat(p); err == nil {
		return nil
	}
	c.env.logger.Warn("blend file does not exist, waiting", "filepath", p, "wait", c.env.fileWait)
	c.logf("Blender file %s does not exist, waiting %s", p, c.env.fileWait)
	t := time.NewTimer(c.env.fileWait)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return ctx.Err()
	}
	if _, err := os.Stat(p); err != nil {
		return fmt.Errorf("filepath %s does not exist", blenderPyQuote(p))
	}
	return nil
}

// overrideFileFor is where the Server's RNA overrides for a blend file
// live: the name up to the last ".blend" (any case) plus "-overrides.py".
// A path without ".blend" has none.
func overrideFileFor(blend string) string {
	i := blenderLastIndexFold(blend, ".blend")
	if i < 0 {
		return ""
	}
	return blend[:i] + "-overrides.py"
}

// blenderLastIndexFold is strings.LastIndex ignoring ASCII case; unlike
// lower-casing first, it keeps byte offsets valid for any UTF-8.
func blenderLastIndexFold(s, sub string) int {
	for i := len(s) - len(sub); i >= 0; i-- {
		if strings.EqualFold(s[i:i+len(sub)], sub) {
			return i
		}
	}
	return -1
}

// findOverrideFile returns the blend file's override script if it exists,
// logging its contents.
func (c *cmdCtx) findOverrideFile(blend string) string {
	p := overrideFileFor(blend)
	if p == "" {
		return ""
	}
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
	argv := append([]string{}, cmd...)
	argv = append(argv, "--enable-autoexec", "-noaudio", "--background", blend)
	if overrideFile != "" {
		argv = append(argv, "--python-exit-code", "42", "--python", overrideFile)
	}
	return argv
}

// argv is the blender_render command line.
func (r *blenderRender) argv() []string {
	argv := blenderBaseArgv(r.cmd, r.filepath, r.overrideFile)
	if r.pythonExpr != "" {
		argv = append(argv, "--python-expr", r.pythonExpr)
	}
	if r.renderOutput != "" {
		argv = append(argv, "--render-output", r.renderOutput)
	}
	if r.format != "" {
		argv = append(argv, "--render-format", r.format)
	}
	if r.frames != "" {
		argv = append(argv, "--render-frame", r.frames)
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

// argv is the audio mixdown command line: no override file, expression,
// format or frames, only a script that mixes the scene's sound down to FLAC.
func (a *blenderAudio) argv() []string {
	lines := []string{"import bpy"}
	if a.hasStart {
		lines = append(lines, fmt.Sprintf("bpy.context.scene.frame_start = %d", a.frameStart))
	}
	if a.hasEnd {
		lines = append(lines, fmt.Sprintf("bpy.context.scene.frame_end = %d", a.frameEnd))
	}
	lines = append(lines,
		fmt.Sprintf("bpy.ops.sound.mixdown(filepath=%s, codec='FLAC', container='FLAC', accuracy=128)", blenderPyQuote(a.renderOutput)),
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
	script, err := blenderWriteTempScript("flamenco-exr-sequence-to-jpeg-*.py", exrSequenceToJPEGScript)
	if err != nil {
		return err
	}
	defer os.Remove(script)
	e.overrideFile = c.findOverrideFile(e.filepath)
	return c.runBlender(ctx, e.argv(script), e.frames)
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

// blenderWriteTempScript writes a script that ships inside the binary to a
// temporary file and returns its path; the caller removes it.
func blenderWriteTempScript(pattern, contents string) (string, error) {
	f, err := os.CreateTemp("", pattern)
	if err != nil {
		return "", fmt.Errorf("creating script file: %w", err)
	}
	_, err = f.WriteString(contents)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", fmt.Errorf("writing script file: %w", err)
	}
	return f.Name(), nil
}

// runBlender runs a Blender command line, following its output for
// progress, produced files and missing-file warnings.
func (c *cmdCtx) runBlender(ctx context.Context, argv []string, frames string) error {
	c.activity("Starting Blender")
	c.timing.checkpoint("starting blender")
	defer c.timing.checkpoint("")
	t := newRenderTracker(c, frames)
	return c.subprocess(ctx, argv, t.line)
}

// blenderPyQuote writes s as a Python string literal the way Python's
// repr() does, so it can go into a Python expression and into messages
// that match the Python worker's.
func blenderPyQuote(s string) string {
	quote := byte('\'')
	if strings.Contains(s, "'") && !strings.Contains(s, `"`) {
		quote = '"'
	}
	var b strings.Builder
	b.WriteByte(quote)
	for _, r := range s {
		switch {
		case r == '\\' || r == rune(quote):
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		case !strconv.IsPrint(r) && r < 0x10000:
			fmt.Fprintf(&b, `\u%04x`, r)
		case !strconv.IsPrint(r):
			fmt.Fprintf(&b, `\U%08x`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte(quote)
	return b.String()
}

// exrSequenceToJPEGScript runs inside Blender (2.8x to 4.x, and 5.x's
// renamed sequencer API) to turn a sorted sequence of EXR files into JPEG
// previews next to them, each at the frame its file name ends in.
const exrSequenceToJPEGScript = `# Written by the Flamenco Worker for exr_sequence_to_jpeg; runs inside Blender:
#   blender file.blend --python this.py -- --exr-glob '/dir/frame-*.exr' --output-pattern 'preview-######.jpg'
import argparse
import glob
import os
import re
import sys

import bpy


def parse_cli():
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    parser = argparse.ArgumentParser(prog="exr_sequence_to_jpeg")
    parser.add_argument("--exr-glob", required=True)
    parser.add_argument("--output-pattern", required=True)
    args, _ = parser.parse_known_args(argv)
    return args


def frame_number(path):
    stem = os.path.splitext(os.path.basename(path))[0]
    digits = re.search(r"[0-9]+$", stem)
    if digits is None:
        raise SystemExit("no frame number at the end of file name %s" % os.path.basename(path))
    return int(digits.group(0))


def strip_collection(editor):
    # Blender 4.4 added "strips"; 5.0 removed the old name "sequences".
    if hasattr(editor, "strips"):
        return editor.strips
    return editor.sequences


def main():
    args = parse_cli()
    files = sorted(glob.glob(args.exr_glob))
    if not files:
        raise SystemExit("no files match %s" % args.exr_glob)

    # An empty scene that keeps the blend file's render settings.
    bpy.ops.scene.new(type="EMPTY")
    scene = bpy.context.scene
    strips = strip_collection(scene.sequence_editor_create())

    frames = []
    for path in files:
        frame = frame_number(path)
        frames.append(frame)
        print("exr_sequence_to_jpeg: %s is frame %d" % (path, frame))
        strips.new_image(os.path.basename(path), path, 1, frame)
    sys.stdout.flush()

    # The previews get the EXR files' own size.
    image = bpy.data.images.load(files[0], check_existing=True)
    width, height = image.size
    render = scene.render
    if width > 0 and height > 0:
        render.resolution_x = width
        render.resolution_y = height
        render.resolution_percentage = 100

    scene.frame_start = min(frames)
    scene.frame_end = max(frames)
    scene.frame_step = 1
    render.use_sequencer = True
    render.use_compositing = False
    render.filepath = os.path.join(os.path.dirname(args.exr_glob), args.output_pattern)
    render.image_settings.file_format = "JPEG"
    render.image_settings.color_mode = "RGB"
    render.image_settings.quality = 90
    render.use_overwrite = True  # replace the previews of an earlier, noisier pass
    render.use_file_extension = True

    bpy.ops.render.render(animation=True, scene=scene.name)
    bpy.ops.wm.quit_blender()


main()
`

// renderActivityInterval is how often render progress may replace the
// task's activity; the Manager does not need every sample.
const renderActivityInterval = 2 * time.Second

var (
	// reBlenderLogPrefix is a log-category prefix such as Blender 5's "render | ",
	// optionally after a timestamp.
	reBlenderLogPrefix = regexp.MustCompile(`^\s*(?:[0-9][0-9:.]*\s+)?[A-Za-z][A-Za-z0-9_.]*\s*\|\s*`)
	reBlenderFrame     = regexp.MustCompile(`^Fra:(\d+)(?:\s|$)`)
	// Blender 2.8x prints "Mem:17.52M (0.00M, Peak 33.47M)", 3.x and later
	// "Mem:8.46M (Peak 10.20M)".
	reBlenderMem       = regexp.MustCompile(`^Fra:\d+ Mem:(\S+) \((?:[^()]*?, )?Peak ([^ ()]+)\)`)
	reBlenderTime      = regexp.MustCompile(`\| Time:(?:(\d+):)?(\d+):(\d+)\.(\d+)(?:\s|$)`)
	reBlenderRemaining = regexp.MustCompile(`\| Remaining:(?:(\d+):)?(\d+):(\d+)\.(\d+)(?:\s|$)`)
	reBlenderStatus    = regexp.MustCompile(`\| ([^|]+)$`)
	// Cycles 3.x+ "Sample 3/4", 2.8x "Path Tracing Sample 3/4" and
	// "..., Sample 16/64", Eevee "Rendering 3 / 64 samples".
	reBlenderSample      = regexp.MustCompile(`\bSample (\d+)/(\d+)`)
	reBlenderEeveeSample = regexp.MustCompile(`\bRendering (\d+) / (\d+) samples`)
	// Cycles 2.8x-2.9x "Path Tracing Tile 110/135" or "Rendered 3/135 Tiles".
	reBlenderTile         = regexp.MustCompile(`\bTile (\d+)/(\d+)`)
	reBlenderRenderedTile = regexp.MustCompile(`\bRendered (\d+)/(\d+) Tiles`)

	reBlenderSaved       = regexp.MustCompile(`Saved: '(.*)'`)
	reBlenderPathMissing = regexp.MustCompile(`Warning: Path '.*' not found`)
)

// renderLine is what one "Fra:" line of Blender's render output says.
type renderLine struct {
	frame        int
	mem, peakMem string // as printed, "17.52M"; "" when absent
	timeSec      float64
	hasTime      bool
	remainingSec float64
	hasRemaining bool
	status       string // the last "|" segment
	sample       int    // sample counter; samples == 0 when there is none
	samples      int
	tile, tiles  int // tile counter; tiles == 0 when there is none
}

// parseRenderLine parses a render progress line of any Blender from 2.8x
// on. ok is false for every other line. It never panics, whatever the input.
func parseRenderLine(line string) (info renderLine, ok bool) {
	line = stripBlenderLogPrefix(line)
	m := reBlenderFrame.FindStringSubmatch(line)
	if m == nil {
		return renderLine{}, false
	}
	frame, err := strconv.Atoi(m[1])
	if err != nil {
		return renderLine{}, false
	}
	info.frame = frame
	if m := reBlenderMem.FindStringSubmatch(line); m != nil {
		info.mem, info.peakMem = m[1], m[2]
	}
	info.timeSec, info.hasTime = parseBlenderTime(reBlenderTime, line)
	info.remainingSec, info.hasRemaining = parseBlenderTime(reBlenderRemaining, line)
	if m := reBlenderStatus.FindStringSubmatch(line); m != nil {
		info.status = strings.TrimSpace(m[1])
	}
	info.sample, info.samples = parseBlenderCounter(line, reBlenderSample, reBlenderEeveeSample)
	info.tile, info.tiles = parseBlenderCounter(line, reBlenderTile, reBlenderRenderedTile)
	return info, true
}

// stripBlenderLogPrefix removes a log-category prefix ("render | ") from a line
// that otherwise starts with something we look for.
func stripBlenderLogPrefix(line string) string {
	if strings.HasPrefix(line, "Fra:") {
		return line
	}
	if loc := reBlenderLogPrefix.FindStringIndex(line); loc != nil {
		return line[loc[1]:]
	}
	return line
}

// parseBlenderTime reads "[h:]mm:ss.hh" after the label re matches, in seconds.
func parseBlenderTime(re *regexp.Regexp, line string) (float64, bool) {
	m := re.FindStringSubmatch(line)
	if m == nil {
		return 0, false
	}
	h := 0.0
	if m[1] != "" {
		var err error
		if h, err = strconv.ParseFloat(m[1], 64); err != nil {
			return 0, false
		}
	}
	mins, err1 := strconv.ParseFloat(m[2], 64)
	secs, err2 := strconv.ParseFloat(m[3]+"."+m[4], 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return 3600*h + 60*mins + secs, true
}

// parseBlenderCounter finds "done/total" with the first pattern that matches. A
// counter that does not make sense (total 0, done > total) is no counter.
func parseBlenderCounter(line string, res ...*regexp.Regexp) (done, total int) {
	for _, re := range res {
		m := re.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		d, err1 := strconv.Atoi(m[1])
		t, err2 := strconv.Atoi(m[2])
		if err1 != nil || err2 != nil || t <= 0 || d > t {
			return 0, 0
		}
		return d, t
	}
	return 0, 0
}

// frameFraction is how far into its frame a render line is, from its
// tile and sample counters; ok is false without counters.
func (l renderLine) frameFraction() (frac float64, ok bool) {
	switch {
	case l.tiles > 0 && l.samples > 0:
		return (float64(max(l.tile-1, 0)) + float64(l.sample)/float64(l.samples)) / float64(l.tiles), true
	case l.tiles > 0:
		return float64(l.tile) / float64(l.tiles), true
	case l.samples > 0:
		return float64(l.sample) / float64(l.samples), true
	}
	return 0, false
}

// counterText describes the counters for the activity, "sample 3/4".
func (l renderLine) counterText() string {
	var parts []string
	if l.tiles > 0 {
		parts = append(parts, fmt.Sprintf("tile %d/%d", l.tile, l.tiles))
	}
	if l.samples > 0 {
		parts = append(parts, fmt.Sprintf("sample %d/%d", l.sample, l.samples))
	}
	return strings.Join(parts, ", ")
}

// maxFrameNumber bounds frame numbers in a frame spec (Blender's own
// limit is about a million), so counting frames cannot overflow.
const maxFrameNumber = 1 << 30

// frameRange is an inclusive range of frame numbers.
type frameRange struct{ first, last int }

// frameSpec is a sorted list of frame ranges that do not touch.
type frameSpec []frameRange

// parseFrameSpec parses what the Server puts in "frames" and Blender's
// --render-frame accepts: "5", "1..3", "1-3", "1,3,5..7". Relative frames
// ("+3", "-3") and anything else unparseable give ok == false. The result
// is sorted and has no overlaps.
func parseFrameSpec(spec string) (frames frameSpec, ok bool) {
	spec = strings.TrimSpace(spec)
	if spec == "" {
		return nil, false
	}
	var ranges []frameRange
	for _, part := range strings.Split(spec, ",") {
		r, ok := parseFramePart(strings.TrimSpace(part))
		if !ok {
			return nil, false
		}
		ranges = append(ranges, r)
	}
	return mergeFrameRanges(ranges), true
}

func parseFramePart(part string) (frameRange, bool) {
	first, last, isRange := strings.Cut(part, "..")
	if !isRange {
		first, last, isRange = strings.Cut(part, "-")
	}
	if !isRange {
		last = first
	}
	a, okA := parseFrameNumber(first)
	b, okB := parseFrameNumber(last)
	if !okA || !okB || b < a {
		return frameRange{}, false
	}
	return frameRange{a, b}, true
}

// parseFrameNumber accepts plain decimal digits only: a sign would make
// the frame relative to the scene's range, which we cannot know.
func parseFrameNumber(s string) (int, bool) {
	if s == "" || strings.TrimLeft(s, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	if err != nil || n > maxFrameNumber {
		return 0, false
	}
	return n, true
}

func mergeFrameRanges(ranges []frameRange) frameSpec {
	sort.Slice(ranges, func(i, j int) bool { return ranges[i].first < ranges[j].first })
	merged := ranges[:1]
	for _, r := range ranges[1:] {
		last := &merged[len(merged)-1]
		if r.first <= last.last+1 {
			last.last = max(last.last, r.last)
			continue
		}
		merged = append(merged, r)
	}
	return merged
}

// count is the number of frames.
func (f frameSpec) count() int {
	n := 0
	for _, r := range f {
		n += r.last - r.first + 1
	}
	return n
}

func (f frameSpec) contains(frame int) bool {
	for _, r := range f {
		if frame >= r.first && frame <= r.last {
			return true
		}
	}
	return false
}

// renderTracker follows one Blender run's output: timing checkpoints,
// produced files, warnings, and progress over the frames of "frames".
// It is only used from the goroutine that reads the output.
type renderTracker struct {
	c        *cmdCtx
	frames   frameSpec    // nil when "frames" is absent or unparseable
	total    int          // frames in frames; 0 = unknown
	done     map[int]bool // frames finished
	doneIn   int          // finished frames that are in frames
	current  int
	started  bool // current is valid
	frac     float64
	last     renderLine // the latest line of the current frame
	reported float64    // progress already reported; it never goes back

	now        func() time.Time
	actEvery   time.Duration
	lastActSet time.Time
}

func newRenderTracker(c *cmdCtx, frames string) *renderTracker {
	t := &renderTracker{c: c, done: map[int]bool{}, now: time.Now, actEvery: renderActivityInterval}
	if spec, ok := parseFrameSpec(frames); ok {
		t.frames, t.total = spec, spec.count()
	}
	return t
}

// line handles one line of Blender's output.
func (t *renderTracker) line(line string) {
	if strings.Contains(line, "Warning: Unable to open") || reBlenderPathMissing.MatchString(line) {
		t.c.activity(line)
	}
	plain := stripBlenderLogPrefix(line)
	if t.c.timing.lastName == "starting blender" &&
		(strings.HasPrefix(plain, "Read blend:") || strings.HasPrefix(plain, "Info: Read library:")) {
		t.c.timing.checkpoint("loading blendfile")
	}
	if info, ok := parseRenderLine(line); ok {
		if t.c.timing.lastName != "rendering" {
			t.c.timing.checkpoint("rendering")
		}
		t.renderProgress(info)
	}
	if m := reBlenderSaved.FindStringSubmatch(line); m != nil {
		t.c.outputProduced(m[1])
		if t.started {
			t.frameDone(t.current)
			t.reportProgress()
		}
	}
}

// renderProgress takes in a "Fra:" line.
func (t *renderTracker) renderProgress(info renderLine) {
	if !t.started || info.frame != t.current {
		if t.started {
			t.frameDone(t.current)
		}
		t.current, t.started, t.frac = info.frame, true, 0
	}
	t.last = info
	if f, ok := info.frameFraction(); ok {
		t.frac = f
	}
	if info.status == "Finished" {
		t.frac = 1
	}
	t.reportProgress()
	t.reportActivity()
}

func (t *renderTracker) frameDone(frame int) {
	if t.done[frame] {
		return
	}
	t.done[frame] = true
	if t.frames.contains(frame) {
		t.doneIn++
	}
}

// reportProgress reports frames done plus the current frame's fraction,
// out of the frames to render. Without a known total there is nothing to
// report until the command finishes.
func (t *renderTracker) reportProgress() {
	if t.total == 0 {
		return
	}
	units := float64(t.doneIn)
	if t.started && !t.done[t.current] && t.frames.contains(t.current) {
		units += t.frac
	}
	p := math.Min(units/float64(t.total), 1)
	if p > t.reported {
		t.reported = p
		t.c.progress(p)
	}
}

// reportActivity sets "Rendering frame 2 (2 of 3), sample 3/4, 00:04
// remaining" (or "Rendering frame 7 (4 done), ..." without a known total),
// at most every actEvery.
func (t *renderTracker) reportActivity() {
	now := t.now()
	if !t.lastActSet.IsZero() && now.Sub(t.lastActSet) < t.actEvery {
		return
	}
	t.lastActSet = now
	t.c.activity(t.activityText())
}

func (t *renderTracker) activityText() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Rendering frame %d", t.current)
	if t.total > 0 {
		nth := t.doneIn
		if !t.done[t.current] {
			nth++
		}
		fmt.Fprintf(&b, " (%d of %d)", min(max(nth, 1), t.total), t.total)
	} else if len(t.done) > 0 {
		fmt.Fprintf(&b, " (%d done)", len(t.done))
	}
	if c := t.last.counterText(); c != "" {
		b.WriteString(", " + c)
	}
	if t.last.hasRemaining {
		b.WriteString(", " + formatRenderDuration(t.last.remainingSec) + " remaining")
	}
	return b.String()
}

// formatRenderDuration prints seconds as Blender does, "mm:ss" or "h:mm:ss".
func formatRenderDuration(sec float64) string {
	if math.IsNaN(sec) || sec < 0 {
		sec = 0
	}
	s := int64(math.Min(math.Round(sec), 1e12))
	if s >= 3600 {
		return fmt.Sprintf("%d:%02d:%02d", s/3600, s/60%60, s%60)
	}
	return fmt.Sprintf("%02d:%02d", s/60, s%60)
}
