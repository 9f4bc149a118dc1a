package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestSubprocessOutput(t *testing.T) {
	cases := []struct {
		name, cmd string
		ok        bool
		want      []string // log lines that must be there
	}{
		{"stderr merged", `sh -c 'echo out; echo err >&2'`, true, []string{"> out", "> err"}},
		{"exit status", `sh -c 'echo FAIL; exit 1'`, false, []string{"> FAIL", "exited with status code 1", "Error executing: command sh (pid="}},
		{"killed by signal", `sh -c 'kill -TERM $$'`, false, []string{"terminated due to signal SIGTERM (15)"}},
		{"invalid UTF-8 replaced", `printf 'a\200\200b\n'`, true, []string{"> a\uFFFDb"}},
		{"trailing white space stripped", `printf 'x  \r\n'`, true, []string{"> x"}},
		{"missing binary", `/does/not/exist`, false, []string{"starting /does/not/exist"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res := runTestCommand(t, "exec", `{"cmd": `+strconv.Quote(c.cmd)+`}`, testEnv())
			if res.ok != c.ok {
				t.Errorf("ok = %v, want %v; log:\n%s", res.ok, c.ok, res.logText())
			}
			for _, w := range c.want {
				if !strings.Contains(res.logText(), w) {
					t.Errorf("log lacks %q:\n%s", w, res.logText())
				}
			}
		})
	}
}

func TestSubprocessLongLineIsSplit(t *testing.T) {
	res := runTestCommand(t, "exec", `{"cmd": "sh -c 'head -c 200000 /dev/zero | tr \\\\0 x; echo; echo after'"}`, testEnv())
	if !res.ok {
		t.Fatalf("failed: %s", res.logText())
	}
	total := 0
	for _, l := range res.logsContaining("> x") {
		total += len(l) - strings.Index(l, "> ") - 2
		if len(l) > maxLineBytes+100 {
			t.Errorf("log line of %d bytes", len(l))
		}
	}
	if total != 200000 {
		t.Errorf("got %d x's back, want 200000", total)
	}
	if len(res.logsContaining("> after")) != 1 {
		t.Errorf("line after the long one lost")
	}
}

func TestSubprocessEnvironment(t *testing.T) {
	t.Setenv("LD_LIBRARY_PATH", "/opt/bad/lib")
	t.Setenv("FW_KEEP", "kept")
	env := testEnv()
	env.extraEnv = []string{"CUDA_VISIBLE_DEVICES=1", "FW_KEEP=overridden"}
	res := runTestCommand(t, "exec", `{"cmd": "env"}`, env)
	log := res.logText()
	if strings.Contains(log, "LD_LIBRARY_PATH") {
		t.Errorf("LD_LIBRARY_PATH reached the subprocess")
	}
	for _, want := range []string{"> CUDA_VISIBLE_DEVICES=1", "> FW_KEEP=overridden", "> PATH="} {
		if !strings.Contains(log, want) {
			t.Errorf("environment lacks %q", want)
		}
	}
	if strings.Contains(log, "FW_KEEP=kept") {
		t.Errorf("[environment] did not override FW_KEEP")
	}
}

func TestSubprocessSilenceTimeout(t *testing.T) {
	t.Parallel()
	env := testEnv()
	env.silenceTimeout = 300 * time.Millisecond
	res := runTestCommand(t, "exec", `{"cmd": "sh -c 'echo hi; sleep 30'"}`, env)
	if res.ok {
		t.Fatalf("a silent command succeeded; log:\n%s", res.logText())
	}
	for _, want := range []string{"> hi", "TERMinating subprocess", "produced no output for 0 seconds, killed it"} {
		if !strings.Contains(res.logText(), want) {
			t.Errorf("log lacks %q:\n%s", want, res.logText())
		}
	}
}

func TestPIDFile(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "sub.pid")
	cases := []struct {
		name     string
		content  *string
		wantErr  string
		wantFile bool
	}{
		{"no file", nil, "", false},
		{"alive", ptr(strconv.Itoa(os.Getpid())), "is still running: pid=" + strconv.Itoa(os.Getpid()), true},
		{"alive with newlines", ptr("\n" + strconv.Itoa(os.Getpid()) + "\n"), "is still running", true},
		{"dead", ptr("999999999"), "", false},
		{"empty", ptr(""), "empty PID file", true},
		{"garbage", ptr("hello"), "not a process ID", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			os.Remove(pidFile)
			if c.content != nil {
				writeFile(t, pidFile, *c.content)
			}
			env := testEnv()
			env.pidFile = pidFile
			err := validateCommand(t, "exec", `{"cmd": "true"}`, env)
			if (err == nil) != (c.wantErr == "") || (err != nil && !strings.Contains(err.Error(), c.wantErr)) {
				t.Errorf("err = %v, want %q", err, c.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), pidFile) {
				t.Errorf("error %q does not name the PID file", err)
			}
			if _, statErr := os.Stat(pidFile); (statErr == nil) != c.wantFile {
				t.Errorf("PID file exists = %v, want %v", statErr == nil, c.wantFile)
			}
		})
	}
	t.Run("written while running, removed after", func(t *testing.T) {
		os.Remove(pidFile)
		env := testEnv()
		env.pidFile = pidFile
		// The file is written right after the process starts: wait for it.
		script := filepath.Join(dir, "show-pid.sh")
		writeFile(t, script, "i=0; while [ ! -s "+pidFile+" ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done\necho pidfile=$(head -n 1 "+pidFile+") self=$$\n")
		res := runTestCommand(t, "exec", `{"cmd": "sh `+script+`"}`, env)
		var a, b string
		for _, l := range res.logsContaining("pidfile=") {
			_, rest, _ := strings.Cut(l, "pidfile=")
			a, b, _ = strings.Cut(rest, " self=")
		}
		if a == "" || a != b {
			t.Errorf("PID file held %q while the process was %q", a, b)
		}
		if _, err := os.Stat(pidFile); err == nil {
			t.Errorf("PID file left behind")
		}
	})
}

func ptr(s string) *string { return &s }

func TestShlex(t *testing.T) {
	cases := []struct {
		in   string
		want []string
	}{
		{`a b  c`, []string{"a", "b", "c"}},
		{`'/x y/blender' --with --cli="args for CLI"`, []string{"/x y/blender", "--with", "--cli=args for CLI"}},
		{`a\ b "c\"d" 'e\f'`, []string{"a b", `c"d`, `e\f`}},
		{`"a\$b"`, []string{`a\$b`}},
		{`''`, []string{""}},
		{``, nil},
	}
	for _, c := range cases {
		got, err := shlexSplit(c.in)
		if err != nil || strings.Join(got, "|") != strings.Join(c.want, "|") || len(got) != len(c.want) {
			t.Errorf("shlexSplit(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	if _, err := shlexSplit(`"unclosed`); err == nil {
		t.Errorf("shlexSplit of an unclosed quote: no error")
	}
	for in, want := range map[string]string{"": "''", "a-b.c/d": "a-b.c/d", "it's": `'it'"'"'s'`, "a b": "'a b'"} {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestSilentSubprocessIsKilled(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "subprocess_timeout_seconds = 0.5").registered()
	id := taskID(1)
	f.fm.queueTask(id, execCmd(`sh -c 'echo group $$; sleep 60'`))
	p := f.start()
	pgid := groupOf(t, f.fm, id)
	waitFor(t, 10*time.Second, "the task to fail", func() bool { return f.fm.taskStatus(id) == "failed" })
	p.stop()
	if live := liveGroupMembers(pgid); len(live) > 0 {
		t.Errorf("processes %v of the silent command still alive", live)
	}
	if !strings.Contains(f.fm.logText(id), "produced no output for 0 seconds") {
		t.Errorf("task log does not say why:\n%s", f.fm.logText(id))
	}
}
