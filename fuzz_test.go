package main

import (
	"encoding/json"
	"sort"
	"strings"
	"testing"
)

// FuzzDecodeTask: whatever the Manager sends as a task, decoding returns a
// task or an error, never panics, and every decoded command either has
// settings or says why not.
func FuzzDecodeTask(f *testing.F) {
	f.Add([]byte(`{"_id": "58514d1e9837734f2e71b479", "commands": [{"name": "echo", "settings": {"message": "hi"}}, {"name": "sleep", "settings": {"time_in_seconds": 3}}]}`))
	f.Add([]byte(`{"_id": "x", "commands": [{"name": "exec", "settings": null}, {"settings": [1, 2]}, {"name": 12}]}`))
	f.Add([]byte(`{"_id": "x", "commands": null}`))
	f.Add([]byte(`<html>`))
	f.Add([]byte(`{"_id": "x", "commands": [{"name": "sleep", "settings": {"time_in_seconds": 1e999}}]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		task, err := decodeTask(body)
		if err != nil {
			return
		}
		if task.ID == "" {
			t.Fatalf("decoded a task without an id from %q", body)
		}
		for _, c := range task.Commands {
			if c.Settings == nil && c.RawSettings == "" {
				t.Fatalf("command without settings and without a reason")
			}
		}
	})
}

// FuzzManagerAnswers: the decoders of Manager answers (423 and
// /status-change bodies, may-i-run, SSDP) never panic and never return a
// half-valid result.
func FuzzManagerAnswers(f *testing.F) {
	f.Add([]byte(`{"status_requested": "asleep"}`))
	f.Add([]byte(`{"may_keep_running": false, "reason": "x", "status_requested": "Сергей"}`))
	f.Add([]byte(`{"may_keep_running": "yes"}`))
	f.Add([]byte("HTTP/1.1 200 OK\r\nLocation: http://manager:8083/\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nLocation: \x00\r\n\r\n"))
	f.Fuzz(func(t *testing.T, body []byte) {
		if s, err := decodeStatusRequested(body); err == nil && s == "" {
			t.Fatalf("decodeStatusRequested(%q) = empty status without error", body)
		}
		if a, err := decodeMayIRun(body); err == nil && a.MayKeepRunning == nil {
			t.Fatalf("decodeMayIRun(%q) = no answer without error", body)
		}
		if loc, err := ssdpLocation(body); err == nil && !strings.HasPrefix(loc, "http") {
			t.Fatalf("ssdpLocation(%q) = %q", body, loc)
		}
	})
}

// FuzzSettingsAccessors: typed settings accessors never panic, and an
// accepted integer really was a JSON integer.
func FuzzSettingsAccessors(f *testing.F) {
	f.Add(`{"k": 3}`)
	f.Add(`{"k": 3.0}`)
	f.Add(`{"k": "3"}`)
	f.Add(`{"k": null}`)
	f.Add(`{"k": 1e400}`)
	f.Add(`{"k": -99999999999999999999}`)
	f.Fuzz(func(t *testing.T, js string) {
		dec := json.NewDecoder(strings.NewReader(js))
		dec.UseNumber()
		var s settings
		if dec.Decode(&s) != nil {
			return
		}
		for _, req := range []bool{true, false} {
			s.reader().str("k", req, "d")
			s.reader().nonEmpty("k")
			s.reader().number("k", req)
			s.reader().commandLine("k", req, "d")
			r := s.reader()
			r.integer("k", req, 0)
			if n, ok := s["k"].(json.Number); ok && r.err() == nil && !isJSONInteger(n) {
				t.Fatalf("integer accepted %v", n)
			}
		}
	})
}

// FuzzCommandValidation: no settings document makes any command's
// validation panic or hang. Validation can create directories
// (render_output's parent), so paths are kept inside a temporary
// working directory.
func FuzzCommandValidation(f *testing.F) {
	names := make([]string, 0, len(commandRegistry))
	for name := range commandRegistry {
		names = append(names, name)
	}
	sort.Strings(names)
	for i := range names {
		f.Add(uint8(i), `{"cmd": "echo hi", "message": "x", "time_in_seconds": 1, "src": "a", "dest": "b", "path": "p"}`)
		f.Add(uint8(i), `{"blender_cmd": "sh", "filepath": "scene.blend", "frames": "1-3", "render_output": "out-####", "format": "OPEN_EXR"}`)
		f.Add(uint8(i), `{"input_files": "*.png", "output_file": "v.mkv", "fps": 24.5, "weight1": 1, "weight2": null, "cycles_chunk": 3}`)
	}
	f.Fuzz(func(t *testing.T, which uint8, js string) {
		if strings.Contains(js, "/") || strings.Contains(js, `\`) || strings.Contains(js, "..") {
			t.Skip("paths stay inside the temporary directory")
		}
		dec := json.NewDecoder(strings.NewReader(js))
		dec.UseNumber()
		var s map[string]any
		if dec.Decode(&s) != nil || s == nil {
			return
		}
		t.Chdir(t.TempDir())
		name := names[int(which)%len(names)]
		env := testEnv()
		env.fileWait = 0
		c := &cmdCtx{name: name, taskID: "t", rep: newReporter("t", &Config{PushLogMaxEntries: 1 << 30}, make(chan outgoing, 1<<16)), env: env, timing: newTiming()}
		commandRegistry[name](t.Context(), c, s)
	})
}
