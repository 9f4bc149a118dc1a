# Runs inside Blender 2.8x-4.x for merge_progressive_renders and
# merge_progressive_render_sequence; the worker appends the call to main(),
# every value a Python literal. It builds the compositor graph of the Python
# worker's merge-exr.blend: two Image nodes (image1, image2) and two weights
# (weight1, weight2), and writes their weighted average, alpha included:
# (image1*weight1 + image2*weight2) / (weight1 + weight2), as a 32-bit float
# EXR at the first image's resolution.
import sys
import traceback

import bpy


def merge(input1, input2, weight1, weight2, render_path, sequence, frame_start, frame_end):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.engine = 'BLENDER_WORKBENCH'
    scene.use_nodes = True
    tree = scene.node_tree
    for node in list(tree.nodes):
        tree.nodes.remove(node)

    def image_node(name, path):
        img = bpy.data.images.load(path, check_existing=False)
        if sequence:
            img.source = 'SEQUENCE'
        node = tree.nodes.new('CompositorNodeImage')
        node.name = name
        node.image = img
        if sequence:
            node.frame_duration = frame_end - frame_start + 1
            node.frame_start = frame_start
            node.frame_offset = frame_start - 1
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

    image1, img1 = image_node('image1', input1)
    image2, img2 = image_node('image2', input2)
    value1 = value_node('weight1', weight1)
    value2 = value_node('weight2', weight2)
    total = math('ADD', value1.outputs[0], value2.outputs[0])
    factor = math('DIVIDE', value2.outputs[0], total)

    # Colour: a Mix node with factor w2/(w1+w2) is exactly the weighted average.
    mix = tree.nodes.new('CompositorNodeMixRGB')
    mix.blend_type = 'MIX'
    mix.use_alpha = False
    tree.links.new(factor, mix.inputs[0])
    tree.links.new(image1.outputs['Image'], mix.inputs[1])
    tree.links.new(image2.outputs['Image'], mix.inputs[2])

    # Alpha: the Mix node keeps image1's, so average it separately.
    alpha1 = math('MULTIPLY', separate(image1.outputs['Image']), value1.outputs[0])
    alpha2 = math('MULTIPLY', separate(image2.outputs['Image']), value2.outputs[0])
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
    render.filepath = render_path
    scene.frame_start, scene.frame_end = frame_start, frame_end
    if sequence:
        bpy.ops.render.render(animation=True)
    else:
        scene.frame_set(1)
        bpy.ops.render.render(write_still=True)


def main(*args):
    try:
        merge(*args)
    except Exception:
        traceback.print_exc()
        sys.exit(47)
