package main

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"
)

// cmdResult is what one command reported while it ran under runTestCommand.
type cmdResult struct {
	ok         bool
	logs       []string // log lines without their timestamps
	activities []string // every activity value sent, in order
	statuses   []string // every task_status sent, in order
	progress   []int    // every command_progress_percentage sent, in order
	outputs    []string // paths passed to outputProduced
}

// logText is all log lines joined by newlines, for substring checks.
func (r cmdResult) logText() string { return strings.Join(r.logs, "\n") }

// testSettings decodes a JSON object the way decodeTask does.
func testSettings(t testing.TB, js string) settings {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(js))
	dec.UseNumber()
	var s map[string]any
	if err := dec.Decode(&s); err != nil {
		t.Fatalf("bad test settings %s: %v", js, err)
	}
	return s
}

// testEnv is a runEnv for tests: no PID file, short grace periods.
func testEnv() *runEnv {
	return &runEnv{
		killGrace:      2 * time.Second,
		fileWait:       100 * time.Millisecond,
		silenceTimeout: time.Hour,
		logger:         quietLogger,
	}
}

// testCmdCtx returns a cmdCtx for command name whose reporter pushes every
// change at once, and a function that closes it and returns what it sent.
func testCmdCtx(t testing.TB, name string, env *runEnv) (*cmdCtx, func() cmdResult) {
	t.Helper()
	out := make(chan outgoing, 16)
	cfg := defaultConfig()
	cfg.PushLogMaxEntries = 0
	cfg.PushLogMaxInterval = 0
	cfg.PushActMaxInterval = 0
	rep := newReporter("5e1234567890abcdef012345", &cfg, out)
	var res cmdResult
	var mu sync.Mutex
	if env.output == nil {
		env.output = func(p string) { mu.Lock(); res.outputs = append(res.outputs, p); mu.Unlock() }
	}
	done := make(chan struct{})
	go func() { // ends when out is closed
		defer close(done)
		for o := range out {
			collectUpdate(t, &res, &mu, o.payload)
		}
	}()
	c := &cmdCtx{name: name, idx: 0, taskID: rep.taskID, rep: rep, env: env, timing: newTiming()}
	finish := func() cmdResult {
		rep.close()
		close(out)
		<-done
		mu.Lock()
		defer mu.Unlock()
		return res
	}
	return c, finish
}

func collectUpdate(t testing.TB, res *cmdResult, mu *sync.Mutex, payload []byte) {
	var u map[string]any
	if err := json.Unmarshal(payload, &u); err != nil {
		t.Errorf("update is not JSON: %s", payload)
		return
	}
	mu.Lock()
	defer mu.Unlock()
	if l, ok := u["log"].(string); ok {
		for _, line := range strings.Split(l, "\n") {
			if logLineRe.MatchString(line) { // continuation lines of a multi-line entry have no timestamp
				_, line, _ = strings.Cut(line, ": ")
			}
			res.logs = append(res.logs, line)
		}
	}
	if a, ok := u["activity"].(string); ok {
		if n := len(res.activities); n == 0 || res.activities[n-1] != a {
			res.activities = append(res.activities, a)
		}
	}
	if s, ok := u["task_status"].(string); ok {
		if n := len(res.statuses); n == 0 || res.statuses[n-1] != s {
			res.statuses = append(res.statuses, s)
		}
	}
	if p, ok := u["command_progress_percentage"].(float64); ok {
		if n := len(res.progress); n == 0 || res.progress[n-1] != int(p) {
			res.progress = append(res.progress, int(p))
		}
	}
}

// runTestCommand validates and runs one command the way a task would.
func runTestCommand(t testing.TB, name, settingsJSON string, env *runEnv) cmdResult {
	t.Helper()
	fn, ok := commandRegistry[name]
	if !ok {
		t.Fatalf("no command %q", name)
	}
	c, finish := testCmdCtx(t, name, env)
	ok = runCommand(context.Background(), c, fn, testSettings(t, settingsJSON))
	res := finish()
	res.ok = ok
	return res
}

// validateCommand runs only a command's validation and returns its error.
func validateCommand(t testing.TB, name, settingsJSON string, env *runEnv) error {
	t.Helper()
	c, finish := testCmdCtx(t, name, env)
	defer finish()
	_, err := commandRegistry[name](context.Background(), c, testSettings(t, settingsJSON))
	return err
}

// logsContaining returns the log lines that contain sub.
func (r cmdResult) logsContaining(sub string) []string {
	var out []string
	for _, l := range r.logs {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return out
}

func TestExecCommand(t *testing.T) {
	res := runTestCommand(t, "exec", `{"cmd": "sh -c 'echo hello, this is two lines; echo Yes, really.'"}`, testEnv())
	if !res.ok {
		t.Fatalf("exec failed: %s", res.logText())
	}
	want := []string{"exec: Starting", "exec: Executing sh -c 'echo hello, this is two lines; echo Yes, really.'"}
	for i, w := range want {
		if res.logs[i] != w {
			t.Errorf("log[%d] = %q, want %q", i, res.logs[i], w)
		}
	}
	if !strings.HasSuffix(res.logs[2], " > hello, this is two lines") || !strings.HasPrefix(res.logs[2], "pid=") {
		t.Errorf("log[2] = %q, want pid=N > hello...", res.logs[2])
	}
	if got := res.logs[len(res.logs)-1]; got != "exec: Finished" {
		t.Errorf("last log = %q", got)
	}
}
