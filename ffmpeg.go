package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// ffmpegIndexName is the concat index file FFmpeg reads, written next to
// the input files (spec/python-worker.md §5.6).
const ffmpegIndexName = "ffmpeg-input.txt"

// ffmpegCmd reads "ffmpeg_cmd" (the Manager fills in {ffmpeg}); its first
// word must be on $PATH.
func ffmpegCmd(r *settingsReader) []string {
	argv := r.commandLine("ffmpeg_cmd", false, "ffmpeg")
	r.then(func() error {
		if _, err := exec.LookPath(argv[0]); err != nil {
			return fmt.Errorf("FFmpeg command %q not found on $PATH", argv[0])
		}
		return nil
	})
	return argv
}

// ffmpegJob is a validated FFmpeg command.
type ffmpegJob struct {
	argv      []string
	indexGlob string // write ffmpeg-input.txt for this glob before running
	output    string
}

// run creates the output's directory (the Python worker let FFmpeg fail on
// a missing one) and the index if needed, and runs FFmpeg.
func (j *ffmpegJob) run(ctx context.Context, c *cmdCtx) error {
	if err := c.mkdirAll(filepath.Dir(j.output)); err != nil {
		return fmt.Errorf("creating the output directory: %w", err)
	}
	if j.indexGlob != "" {
		index, err := writeFFmpegIndex(j.indexGlob)
		if err != nil {
			return err
		}
		defer func() {
			if err := os.Remove(index); err != nil && !errors.Is(err, os.ErrNotExist) {
				c.logf("unable to unlink file %s, ignoring: %v", index, err)
			}
		}()
	}
	return c.subprocess(ctx, j.argv, nil)
}

// ffmpegIndexPath is where the concat index for glob goes: its directory.
func ffmpegIndexPath(glob string) string {
	return filepath.Join(absPath(filepath.Dir(glob)), ffmpegIndexName)
}

// writeFFmpegIndex writes one "file '<name>'" line per match of glob, in
// sorted order, with ' escaped as \'.
func writeFFmpegIndex(glob string) (string, error) {
	matches, err := filepath.Glob(glob)
	if err != nil {
		return "", fmt.Errorf("input_files %q: %w", glob, err)
	}
	if len(matches) == 0 {
		return "", fmt.Errorf("input_files %q matches no files", glob)
	}
	sort.Strings(matches)
	var b strings.Builder
	for _, m := range matches {
		if filepath.Base(m) == ffmpegIndexName {
			continue // a glob like "*" must not list the index itself
		}
		fmt.Fprintf(&b, "file '%s'\n", strings.ReplaceAll(filepath.Base(m), "'", `\'`))
	}
	index := ffmpegIndexPath(glob)
	if err := os.WriteFile(index, []byte(b.String()), 0o644); err != nil {
		return "", fmt.Errorf("writing the FFmpeg index: %w", err)
	}
	return index, nil
}

// validateCreateVideo: a glob of frames to an H.264 video at fps.
func validateCreateVideo(_ context.Context, _ *cmdCtx, s settings) (*ffmpegJob, error) {
	r := s.reader()
	ff, input, output := ffmpegCmd(r), r.nonEmpty("input_files"), r.nonEmpty("output_file")
	_, fps := r.number("fps", true)
	argv := append(ff, "-r", fps, "-pattern_type", "glob", "-i", filepath.ToSlash(input),
		"-c:v", "h264", "-crf", "20", "-g", "18", "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2",
		"-pix_fmt", "yuv420p", "-y", "-bf", "0", output)
	return &ffmpegJob{argv: argv, output: output}, r.err()
}

// validateConcatenateVideos: chunks matching a glob joined without re-encoding.
func validateConcatenateVideos(_ context.Context, _ *cmdCtx, s settings) (*ffmpegJob, error) {
	r := s.reader()
	ff, input, output := ffmpegCmd(r), r.nonEmpty("input_files"), r.nonEmpty("output_file")
	argv := append(ff, "-f", "concat", "-i", filepath.ToSlash(ffmpegIndexPath(input)),
		"-c", "copy", "-y", filepath.ToSlash(output))
	return &ffmpegJob{argv: argv, indexGlob: input, output: output}, r.err()
}

// validateMuxAudio: an audio and a video stream into one file, copied.
func validateMuxAudio(_ context.Context, _ *cmdCtx, s settings) (*ffmpegJob, error) {
	r := s.reader()
	ff := ffmpegCmd(r)
	audio, video := existingFile(r, "audio_file", "Audio"), existingFile(r, "video_file", "Video")
	output := r.nonEmpty("output_file")
	argv := append(ff, "-i", audio, "-i", video, "-c", "copy", "-y", absPath(output))
	return &ffmpegJob{argv: argv, output: output}, r.err()
}

// validateEncodeAudio: an audio file re-encoded with a codec and bitrate.
func validateEncodeAudio(_ context.Context, _ *cmdCtx, s settings) (*ffmpegJob, error) {
	r := s.reader()
	ff, input := ffmpegCmd(r), existingFile(r, "input_file", "Audio")
	output, bitrate, codec := r.nonEmpty("output_file"), r.nonEmpty("bitrate"), r.nonEmpty("codec")
	argv := append(ff, "-i", input, "-c:a", codec, "-b:a", bitrate, "-y", absPath(output))
	return &ffmpegJob{argv: argv, output: output}, r.err()
}

// existingFile reads a path setting that must exist, and makes it absolute.
func existingFile(r *settingsReader, key, what string) string {
	p := r.nonEmpty(key)
	r.then(func() error {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("%s file %s does not exist (%s)", what, p, key)
		}
		return nil
	})
	return absPath(p)
}
