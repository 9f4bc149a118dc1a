package main

import (
	"context"
	_ "embed"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// exrMergeScript defines main(), which builds the compositor scene that the
// Python worker shipped as merge-exr.blend and renders the merge.
//
//go:embed merge_exr.py
var exrMergeScript string

// exrMerge is a validated merge_progressive_renders or
// merge_progressive_render_sequence command.
type exrMerge struct {
	blender              []string
	input1, input2       string
	weight1, weight2     int64
	output               string
	sequence             bool
	frameStart, frameEnd int64
}

// validateExrMerge checks the settings in the Python worker's order
// (spec/python-worker.md §5.5).
func validateExrMerge(sequence bool) func(context.Context, *cmdCtx, settings) (*exrMerge, error) {
	return func(_ context.Context, c *cmdCtx, s settings) (*exrMerge, error) {
		r := s.reader()
		m := &exrMerge{sequence: sequence, blender: blenderCmd(r)}
		for i, p := range []*string{&m.input1, &m.input2} {
			*p = mergePath(r, fmt.Sprintf("input%d", i+1))
			r.then(func() error {
				if _, err := os.Stat(*p); err != nil {
					return fmt.Errorf("Input %d '%s' does not exist", i+1, *p)
				}
				return nil
			})
		}
		m.output = mergePath(r, "output")
		m.weight1, m.weight2 = r.integer("weight1", true, 0), r.integer("weight2", true, 0)
		if m.weight1 < 0 || m.weight2 < 0 || m.weight1+m.weight2 == 0 {
			r.failf("%q and %q must not be negative and not both zero", "weight1", "weight2")
		}
		if sequence {
			if !strings.Contains(m.output, "##") {
				r.failf("Output filename should contain at least two \"##\" marks")
			}
			m.frameStart, m.frameEnd = r.integer("frame_start", true, 0), r.integer("frame_end", true, 0)
			if m.frameEnd < m.frameStart {
				r.failf("%q must not be before %q", "frame_end", "frame_start")
			}
		}
		r.then(c.checkPIDFile)
		return m, r.err()
	}
}

// mergePath reads a path setting; double quotes are refused, as in the
// Python worker. The result uses forward slashes.
func mergePath(r *settingsReader, key string) string {
	p := r.str(key, true, "")
	if strings.Contains(p, `"`) {
		r.failf("Double quotes are not allowed in filenames: %s", p)
	}
	return filepath.ToSlash(p)
}

// argv runs Blender without a blend file: the script builds the scene, and
// the call to its main() has every value as a Python literal.
func (m *exrMerge) argv(renderPath string) []string {
	frameStart, frameEnd, sequence := int64(1), int64(1), "False"
	if m.sequence {
		frameStart, frameEnd, sequence = m.frameStart, m.frameEnd, "True"
	}
	script := exrMergeScript + fmt.Sprintf("\nmain(%s, %s, %d, %d, %s, %s, %d, %d)\n", strconv.Quote(m.input1),
		strconv.Quote(m.input2), m.weight1, m.weight2, strconv.Quote(renderPath), sequence, frameStart, frameEnd)
	return slices.Concat(m.blender, []string{"--factory-startup", "--enable-autoexec", "-noaudio",
		"--background", "--python-exit-code", "47", "--python-expr", script})
}

// hashRun is a run of "#" in a frame pattern.
var hashRun = regexp.MustCompile(`#+`)

// run renders the merge. A single merge renders into a temporary directory
// next to the output and moves the result into place, so a failed merge
// never leaves half a file at the output path.
func (m *exrMerge) run(ctx context.Context, c *cmdCtx) error {
	outDir := filepath.Dir(m.output)
	if err := c.mkdirAll(outDir); err != nil {
		return fmt.Errorf("creating the output directory: %w", err)
	}
	if m.sequence {
		c.activity("Starting Blender to merge EXR sequence")
		if err := c.subprocess(ctx, m.argv(m.output), nil); err != nil {
			return err
		}
		matches, _ := filepath.Glob(hashRun.ReplaceAllString(m.output, "*"))
		for _, f := range matches {
			c.outputProduced(f)
		}
		return nil
	}
	tmp, err := os.MkdirTemp(outDir, ".merge-exr-")
	if err != nil {
		return fmt.Errorf("creating a temporary directory: %w", err)
	}
	defer os.RemoveAll(tmp)
	c.activity("Starting Blender to merge EXR files")
	merged := filepath.Join(tmp, "merged0001.exr")
	if err := c.subprocess(ctx, m.argv(filepath.ToSlash(merged)), nil); err != nil {
		return err
	}
	c.logf("Moving %s to %s", merged, m.output)
	if err := os.Rename(merged, m.output); err != nil {
		return fmt.Errorf("moving the merged file into place: %w", err)
	}
	c.outputProduced(m.output)
	return nil
}
