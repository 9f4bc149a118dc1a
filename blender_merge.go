package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// exrMerge is a validated merge_progressive_renders or
// merge_progressive_render_sequence command.
type exrMerge struct {
	blender        []string
	input1, input2 string
	weight1        int64
	weight2        int64
	output         string
	sequence       bool
	frameStart     int64
	frameEnd       int64
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

// argv runs Blender without a blend file: the script builds the
// compositor scene that the Python worker shipped as merge-exr.blend.
func (m *exrMerge) argv(renderPath string) []string {
	return append(append([]string{}, m.blender...), "--factory-startup", "--enable-autoexec", "-noaudio",
		"--background", "--python-exit-code", "47", "--python-expr", m.script(renderPath))
}

// script fills in the merge script; every value goes in as a Python literal.
func (m *exrMerge) script(renderPath string) string {
	frameStart, frameEnd := int64(1), int64(1)
	if m.sequence {
		frameStart, frameEnd = m.frameStart, m.frameEnd
	}
	return strings.NewReplacer(
		"$INPUT1", blenderPyQuote(m.input1),
		"$INPUT2", blenderPyQuote(m.input2),
		"$WEIGHT1", fmt.Sprint(m.weight1),
		"$WEIGHT2", fmt.Sprint(m.weight2),
		"$RENDER_PATH", blenderPyQuote(renderPath),
		"$SEQUENCE", map[bool]string{true: "True", false: "False"}[m.sequence],
		"$FRAME_START", fmt.Sprint(frameStart),
		"$FRAME_END", fmt.Sprint(frameEnd),
	).Replace(exrMergeScript)
}

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
		for _, f := range sequenceFiles(m.output) {
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
	if err := c.subprocess(ctx, m.argv(filepath.ToSlash(filepath.Join(tmp, "merged0001.exr"))), nil); err != nil {
		return err
	}
	merged := filepath.Join(tmp, "merged0001.exr")
	c.logf("Moving %s to %s", merged, m.output)
	if err := os.Rename(merged, m.output); err != nil {
		return fmt.Errorf("moving the merged file into place: %w", err)
	}
	c.outputProduced(m.output)
	return nil
}

var hashRun = regexp.MustCompile(`#+`)

// sequenceFiles lists the files a #-pattern matches, sorted.
func sequenceFiles(pattern string) []string {
	matches, _ := filepath.Glob(hashRun.ReplaceAllString(pattern, "*"))
	return matches
}

// exrMergeScript runs inside Blender 2.8x–4.x. It builds the compositor
// graph of the Python worker's merge-exr.blend: two Image nodes (image1,
// image2) and two weights (weight1, weight2), and writes their weighted
// average, alpha included: (image1·weight1 + image2·weight2) / (weight1 +
// weight2), as a 32-bit float EXR at the first image's resolution.
const exrMergeScript = `
import bpy, sys
try:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.engine = 'BLENDER_WORKBENCH'
    scene.use_nodes = True
    tree = scene.node_tree
    for node in list(tree.nodes):
        tree.nodes.remove(node)

    def image_node(name, path):
        img = bpy.data.images.load(path, check_existing=False)
        if $SEQUENCE:
            img.source = 'SEQUENCE'
        node = tree.nodes.new('CompositorNodeImage')
        node.name = name
        node.image = img
        if $SEQUENCE:
            node.frame_duration = $FRAME_END - $FRAME_START + 1
            node.frame_start = $FRAME_START
            node.frame_offset = $FRAME_START - 1
        return node, img

    def value_node(name, value):
        node = tree.nodes.new('CompositorNodeValue')
        node.name = name
        node.outputs[0].default_value = value
        return node

    def math(op, a, b):
        node = tree.nodes.new('CompositorNodeMath')
        node.operation = op
        for i, v in enumerate((a, b)):
            if isinstance(v, (int, float)):
                node.inputs[i].default_value = v
            else:
                tree.links.new(v, node.inputs[i])
        return node.outputs[0]

    def separate(image_output):
        try:
            node = tree.nodes.new('CompositorNodeSeparateColor')
        except RuntimeError:
            node = tree.nodes.new('CompositorNodeSepRGBA')
        tree.links.new(image_output, node.inputs[0])
        return node.outputs[3]

    image1, img1 = image_node('image1', $INPUT1)
    image2, img2 = image_node('image2', $INPUT2)
    weight1 = value_node('weight1', $WEIGHT1)
    weight2 = value_node('weight2', $WEIGHT2)
    total = math('ADD', weight1.outputs[0], weight2.outputs[0])
    factor = math('DIVIDE', weight2.outputs[0], total)

    # Colour: a Mix node with factor w2/(w1+w2) is exactly the weighted average.
    mix = tree.nodes.new('CompositorNodeMixRGB')
    mix.blend_type = 'MIX'
    mix.use_alpha = False
    tree.links.new(factor, mix.inputs[0])
    tree.links.new(image1.outputs['Image'], mix.inputs[1])
    tree.links.new(image2.outputs['Image'], mix.inputs[2])

    # Alpha: the Mix node keeps image1's, so average it separately.
    alpha1 = math('MULTIPLY', separate(image1.outputs['Image']), weight1.outputs[0])
    alpha2 = math('MULTIPLY', separate(image2.outputs['Image']), weight2.outputs[0])
    alpha = math('DIVIDE', math('ADD', alpha1, alpha2), total)
    set_alpha = tree.nodes.new('CompositorNodeSetAlpha')
    if hasattr(set_alpha, 'mode'):
        set_alpha.mode = 'REPLACE_ALPHA'
    tree.links.new(mix.outputs[0], set_alpha.inputs['Image'])
    tree.links.new(alpha, set_alpha.inputs['Alpha'])

    composite = tree.nodes.new('CompositorNodeComposite')
    composite.use_alpha = True
    tree.links.new(set_alpha.outputs[0], composite.inputs['Image'])

    render = scene.render
    render.resolution_x, render.resolution_y = img1.size[0], img1.size[1]
    render.resolution_percentage = 100
    if hasattr(render, 'tile_x'):
        render.tile_x, render.tile_y = img1.size[0], img1.size[1]
    render.film_transparent = True
    render.use_compositing = True
    render.use_sequencer = False
    settings = render.image_settings
    settings.file_format = 'OPEN_EXR'
    settings.color_mode = 'RGBA'
    settings.color_depth = '32'
    settings.exr_codec = 'ZIP'
    render.filepath = $RENDER_PATH
    scene.frame_start, scene.frame_end = $FRAME_START, $FRAME_END
    if $SEQUENCE:
        bpy.ops.render.render(animation=True)
    else:
        scene.frame_set(1)
        bpy.ops.render.render(write_still=True)
except Exception:
    import traceback
    traceback.print_exc()
    sys.exit(47)
`
