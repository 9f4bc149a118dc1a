# Written by the Flamenco Worker for exr_sequence_to_jpeg; runs inside Blender:
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
