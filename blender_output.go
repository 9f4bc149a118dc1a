package main

import (
	"cmp"
	"fmt"
	"math"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

var (
	// A log-category prefix such as Blender 5's "render | ", optionally after a timestamp.
	reBlenderLogPrefix = regexp.MustCompile(`^\s*(?:[0-9][0-9:.]*\s+)?[A-Za-z][A-Za-z0-9_.]*\s*\|\s*`)
	reBlenderFrame     = regexp.MustCompile(`^Fra:(\d+)(?:\s|$)`)
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
	var err error
	if info.frame, err = strconv.Atoi(m[1]); err != nil {
		return renderLine{}, false
	}
	info.remainingSec, info.hasRemaining = parseBlenderRemaining(line)
	if m := reBlenderStatus.FindStringSubmatch(line); m != nil {
		info.status = strings.TrimSpace(m[1])
	}
	info.sample, info.samples = parseBlenderCounter(line, reBlenderSample, reBlenderEeveeSample)
	info.tile, info.tiles = parseBlenderCounter(line, reBlenderTile, reBlenderRenderedTile)
	return info, true
}

// stripBlenderLogPrefix removes a log-category prefix ("render | ") from a line.
func stripBlenderLogPrefix(line string) string {
	if loc := reBlenderLogPrefix.FindStringIndex(line); loc != nil {
		return line[loc[1]:]
	}
	return line
}

// parseBlenderRemaining reads "Remaining:[h:]mm:ss.hh", in seconds.
func parseBlenderRemaining(line string) (float64, bool) {
	m := reBlenderRemaining.FindStringSubmatch(line)
	if m == nil {
		return 0, false
	}
	h, err1 := strconv.ParseFloat(cmp.Or(m[1], "0"), 64)
	mins, err2 := strconv.ParseFloat(m[2], 64)
	secs, err3 := strconv.ParseFloat(m[3]+"."+m[4], 64)
	if err1 != nil || err2 != nil || err3 != nil {
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

// frameRange is an inclusive range of frame numbers.
type frameRange struct{ first, last int }

// frameSpec is a sorted list of frame ranges that do not touch.
type frameSpec []frameRange

// parseFrameSpec parses what the Server puts in "frames" and Blender's
// --render-frame accepts: "5", "1..3", "1-3", "1,3,5..7". Relative frames
// ("+3", "-3") and anything else unparseable give ok == false.
func parseFrameSpec(spec string) (frames frameSpec, ok bool) {
	if strings.TrimSpace(spec) == "" {
		return nil, false
	}
	for _, part := range strings.Split(spec, ",") {
		r, ok := parseFramePart(strings.TrimSpace(part))
		if !ok {
			return nil, false
		}
		frames = append(frames, r)
	}
	sort.Slice(frames, func(i, j int) bool { return frames[i].first < frames[j].first })
	merged := frames[:1]
	for _, r := range frames[1:] {
		if last := &merged[len(merged)-1]; r.first <= last.last+1 {
			last.last = max(last.last, r.last)
		} else {
			merged = append(merged, r)
		}
	}
	return merged, true
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
	return frameRange{a, b}, okA && okB && a <= b
}

// parseFrameNumber accepts plain decimal digits only: a sign would make the frame
// relative to the scene's range, which we cannot know. The bound (Blender's is about
// a million) keeps frame counts from overflowing.
func parseFrameNumber(s string) (int, bool) {
	if s == "" || strings.TrimLeft(s, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	return n, err == nil && n <= 1<<30
}

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
	current  int          // -1 before the first "Fra:" line
	frac     float64
	last     renderLine // the latest line of the current frame
	reported float64    // progress already reported; it never goes back

	now        func() time.Time
	actEvery   time.Duration // how often progress may set the activity; the Manager does not need every sample
	lastActSet time.Time
}

func newRenderTracker(c *cmdCtx, frames string) *renderTracker {
	t := &renderTracker{c: c, done: map[int]bool{}, current: -1, now: time.Now, actEvery: 2 * time.Second}
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
		if t.current >= 0 {
			t.frameDone(t.current)
			t.reportProgress()
		}
	}
}

// renderProgress takes in a "Fra:" line.
func (t *renderTracker) renderProgress(info renderLine) {
	if info.frame != t.current {
		if t.current >= 0 {
			t.frameDone(t.current)
		}
		t.current, t.frac = info.frame, 0
	}
	t.last = info
	if f, ok := info.frameFraction(); ok {
		t.frac = f
	}
	if info.status == "Finished" {
		t.frac = 1
	}
	t.reportProgress()
	if now := t.now(); t.lastActSet.IsZero() || now.Sub(t.lastActSet) >= t.actEvery {
		t.lastActSet = now
		t.c.activity(t.activityText())
	}
}

func (t *renderTracker) frameDone(frame int) {
	if !t.done[frame] && t.frames.contains(frame) {
		t.doneIn++
	}
	t.done[frame] = true
}

// reportProgress reports frames done plus the current frame's fraction,
// out of the frames to render. Without a known total there is nothing to
// report until the command finishes.
func (t *renderTracker) reportProgress() {
	if t.total == 0 {
		return
	}
	units := float64(t.doneIn)
	if !t.done[t.current] && t.frames.contains(t.current) { // never for current -1
		units += t.frac
	}
	if p := math.Min(units/float64(t.total), 1); p > t.reported {
		t.reported = p
		t.c.progress(p)
	}
}

// activityText is "Rendering frame 2 (2 of 3), sample 3/4, 00:04 remaining",
// or "Rendering frame 7 (4 done), ..." without a known total.
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
