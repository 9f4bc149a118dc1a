package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"image"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// ffmpegTestTools returns once ffmpeg and ffprobe are there; without them
// the test skips, except in CI, where it fails.
func ffmpegTestTools(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"ffmpeg", "ffprobe"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is required in CI: %v", tool, err)
			}
			t.Skipf("%s not installed", tool)
		}
	}
}

func TestFFmpegArgv(t *testing.T) {
	dir := t.TempDir()
	audio := filepath.Join(dir, "audio.flac")
	video := filepath.Join(dir, "video.mkv")
	writeFile(t, audio, "")
	writeFile(t, video, "")

	cases := []struct {
		name     string
		validate func(context.Context, *cmdCtx, settings) (*ffmpegJob, error)
		settings string
		want     []string
	}{
		{"create_video", validateCreateVideo, `{"ffmpeg_cmd": "sh", "input_files": "/tmp/*.png", "output_file": "/tmp/merged.mkv", "fps": 24}`,
			[]string{"sh", "-r", "24", "-pattern_type", "glob", "-i", "/tmp/*.png", "-c:v", "h264", "-crf", "20", "-g", "18",
				"-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-pix_fmt", "yuv420p", "-y", "-bf", "0", "/tmp/merged.mkv"}},
		{"create_video float fps", validateCreateVideo, `{"ffmpeg_cmd": "sh", "input_files": "/tmp/*.png", "output_file": "/tmp/m.mkv", "fps": 24.0}`,
			[]string{"sh", "-r", "24.0", "-pattern_type", "glob", "-i", "/tmp/*.png", "-c:v", "h264", "-crf", "20", "-g", "18",
				"-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-pix_fmt", "yuv420p", "-y", "-bf", "0", "/tmp/m.mkv"}},
		{"concatenate_videos", validateConcatenateVideos, `{"ffmpeg_cmd": "sh", "input_files": "` + dir + `/chunk-*.mkv", "output_file": "/tmp/merged.mkv", "counter_in_output_name": true}`,
			[]string{"sh", "-f", "concat", "-i", dir + "/ffmpeg-input.txt", "-c", "copy", "-y", "/tmp/merged.mkv"}},
		{"mux_audio", validateMuxAudio, `{"ffmpeg_cmd": "sh", "audio_file": "` + audio + `", "video_file": "` + video + `", "output_file": "/tmp/out.mkv"}`,
			[]string{"sh", "-i", audio, "-i", video, "-c", "copy", "-y", "/tmp/out.mkv"}},
		{"encode_audio", validateEncodeAudio, `{"ffmpeg_cmd": "sh", "input_file": "` + audio + `", "output_file": "/tmp/out.aac", "bitrate": "192k", "codec": "aac"}`,
			[]string{"sh", "-i", audio, "-c:a", "aac", "-b:a", "192k", "-y", "/tmp/out.aac"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			job, err := c.validate(context.Background(), nil, testSettings(t, c.settings))
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(job.argv, "\x00") != strings.Join(c.want, "\x00") {
				t.Errorf("argv = %q\nwant   %q", job.argv, c.want)
			}
		})
	}
}

func TestFFmpegValidation(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		command, settings, want string
	}{
		{"create_video", `{"ffmpeg_cmd": "/does/not/exist", "input_files": "x", "output_file": "y", "fps": 24}`, "not found on $PATH"},
		{"create_video", `{"input_files": "x", "output_file": "y", "fps": "24"}`, `"fps"`},
		{"create_video", `{"input_files": "x", "fps": 24}`, `"output_file"`},
		{"concatenate_videos", `{"input_files": 3, "output_file": "y"}`, `"input_files"`},
		{"mux_audio", `{"audio_file": "` + dir + `/none.flac", "video_file": "v", "output_file": "o"}`, "Audio file " + dir + "/none.flac does not exist"},
		{"encode_audio", `{"input_file": "` + dir + `/none.wav", "output_file": "o", "bitrate": "192k", "codec": "aac"}`, "Audio file"},
		{"encode_audio", `{"output_file": "o", "bitrate": "192k", "codec": "aac"}`, `"input_file"`},
		{"create_video", `{"input_files": "", "output_file": "y", "fps": 24}`, `"input_files" may not be empty`},
	}
	for _, c := range cases {
		err := validateCommand(t, c.command, c.settings, testEnv())
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s %s: err = %v, want it to contain %q", c.command, c.settings, err, c.want)
		}
	}
	if _, err := exec.LookPath("ffmpeg"); err == nil {
		job, err := validateCreateVideo(context.Background(), nil, testSettings(t, `{"input_files": "x", "output_file": "y", "fps": 24}`))
		if err != nil || job.argv[0] != "ffmpeg" {
			t.Errorf("default ffmpeg_cmd: %v, %v", job, err)
		}
	}
}

func TestFFmpegIndexFile(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"chunk-2.mkv", "chunk-1.mkv", "chunk-it's.mkv", "other.txt", "ffmpeg-input.txt"} {
		writeFile(t, filepath.Join(dir, name), "")
	}
	if index, err := writeFFmpegIndex(filepath.Join(dir, "*")); err != nil {
		t.Fatal(err)
	} else if data, _ := os.ReadFile(index); strings.Contains(string(data), "ffmpeg-input.txt") {
		t.Errorf("the index lists itself:\n%s", data)
	}
	index, err := writeFFmpegIndex(filepath.Join(dir, "chunk-*.mkv"))
	if err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(index)
	want := "file 'chunk-1.mkv'\nfile 'chunk-2.mkv'\nfile 'chunk-it\\'s.mkv'\n"
	if index != filepath.Join(dir, "ffmpeg-input.txt") || string(data) != want {
		t.Errorf("index %s =\n%s\nwant\n%s", index, data, want)
	}
	if _, err := writeFFmpegIndex(filepath.Join(dir, "none-*.mkv")); err == nil {
		t.Errorf("an empty glob gave no error")
	}
}

// ffmpegTestFrames writes n solid-colour 64×48 PNGs named frame-0001.png ...
func ffmpegTestFrames(t *testing.T, dir string, n int) {
	t.Helper()
	for i := 1; i <= n; i++ {
		img := image.NewRGBA(image.Rect(0, 0, 64, 48))
		for p := 0; p < len(img.Pix); p += 4 {
			img.Pix[p], img.Pix[p+1], img.Pix[p+2], img.Pix[p+3] = uint8(30*i), 100, 200, 255
		}
		var buf bytes.Buffer
		png.Encode(&buf, img)
		writeFile(t, filepath.Join(dir, fmt.Sprintf("frame-%04d.png", i)), buf.String())
	}
}

// ffmpegTestWAV writes a 0.5 s 440 Hz-ish mono 16-bit WAV.
func ffmpegTestWAV(t *testing.T, path string) {
	t.Helper()
	const rate, n = 22050, 11025
	var b bytes.Buffer
	b.WriteString("RIFF")
	binary.Write(&b, binary.LittleEndian, uint32(36+2*n))
	b.WriteString("WAVEfmt ")
	for _, v := range []any{uint32(16), uint16(1), uint16(1), uint32(rate), uint32(2 * rate), uint16(2), uint16(16)} {
		binary.Write(&b, binary.LittleEndian, v)
	}
	b.WriteString("data")
	binary.Write(&b, binary.LittleEndian, uint32(2*n))
	for i := range n {
		v := int16(8000)
		if (i/25)%2 == 0 {
			v = -8000
		}
		binary.Write(&b, binary.LittleEndian, v)
	}
	writeFile(t, path, b.String())
}

// ffprobe returns a stream or format property of a media file.
func ffprobe(t *testing.T, path, entries string) string {
	t.Helper()
	out, err := exec.Command("ffprobe", "-v", "error", "-show_entries", entries, "-of", "default=noprint_wrappers=1:nokey=1", path).Output()
	if err != nil {
		t.Fatalf("ffprobe %s: %v", path, err)
	}
	return strings.TrimSpace(string(out))
}

func TestFFmpegReal(t *testing.T) {
	t.Parallel()
	ffmpegTestTools(t)
	dir := t.TempDir()
	frames := filepath.Join(dir, "frames")
	os.Mkdir(frames, 0o755)
	ffmpegTestFrames(t, frames, 7)

	video := filepath.Join(dir, "out", "video.mkv")
	res := runTestCommand(t, "create_video", fmt.Sprintf(`{"input_files": %q, "output_file": %q, "fps": 24}`, frames+"/*.png", video), testEnv())
	if !res.ok {
		t.Fatalf("create_video failed:\n%s", res.logText())
	}
	if d := ffprobe(t, video, "format=duration"); !strings.HasPrefix(d, "0.29") {
		t.Errorf("7 frames at 24 fps: duration %s, want 7/24 = 0.292", d)
	}

	chunks := filepath.Join(dir, "chunks")
	os.Mkdir(chunks, 0o755)
	for i, n := range []int{4, 3} {
		out := filepath.Join(chunks, fmt.Sprintf("chunk-%d.mkv", i+1))
		cmd := exec.Command("ffmpeg", "-v", "error", "-r", "24", "-pattern_type", "glob", "-i", frames+"/*.png", "-frames:v", fmt.Sprint(n), "-c:v", "h264", "-pix_fmt", "yuv420p", "-y", out)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("making chunk: %v\n%s", err, b)
		}
	}
	merged := filepath.Join(dir, "merged.mkv")
	res = runTestCommand(t, "concatenate_videos", fmt.Sprintf(`{"input_files": %q, "output_file": %q}`, chunks+"/chunk-*.mkv", merged), testEnv())
	if !res.ok {
		t.Fatalf("concatenate_videos failed:\n%s", res.logText())
	}
	if n := ffprobe(t, merged, "stream=nb_frames"); n != "7" && !strings.HasPrefix(ffprobe(t, merged, "format=duration"), "0.29") {
		t.Errorf("concatenated video: %s frames, duration %s; want 7 frames", n, ffprobe(t, merged, "format=duration"))
	}
	if _, err := os.Stat(filepath.Join(chunks, "ffmpeg-input.txt")); err == nil {
		t.Errorf("index file left behind")
	}

	wav := filepath.Join(dir, "audio.wav")
	ffmpegTestWAV(t, wav)
	aac := filepath.Join(dir, "audio.aac")
	res = runTestCommand(t, "encode_audio", fmt.Sprintf(`{"input_file": %q, "output_file": %q, "bitrate": "96k", "codec": "aac"}`, wav, aac), testEnv())
	if !res.ok || ffprobe(t, aac, "stream=codec_type") != "audio" {
		t.Fatalf("encode_audio: ok=%v\n%s", res.ok, res.logText())
	}
	muxed := filepath.Join(dir, "muxed.mkv")
	res = runTestCommand(t, "mux_audio", fmt.Sprintf(`{"audio_file": %q, "video_file": %q, "output_file": %q}`, aac, video, muxed), testEnv())
	if !res.ok {
		t.Fatalf("mux_audio failed:\n%s", res.logText())
	}
	if kinds := strings.Fields(ffprobe(t, muxed, "stream=codec_type")); len(kinds) != 2 {
		t.Errorf("muxed streams = %v, want audio and video", kinds)
	}
}
