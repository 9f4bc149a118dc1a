package main

import (
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"
)

func TestRedactURL(t *testing.T) {
	tests := []struct{ in, want string }{
		{"http://manager:8083/", "http://manager:8083/"},
		{"http://user:pass@manager:8083/", "http://user:xxxxx@manager:8083/"},
		{"https://user@manager/", "https://user@manager/"},
		{"http://u:p@ss@manager/x@y", "http://u:xxxxx@manager/x@y"},
		{"http://user:pass@manager:port/", "http://user:xxxxx@manager:port/"}, // url.Parse refuses this one
		{"not a url", "not a url"},
	}
	for _, tt := range tests {
		if got := redactURL(tt.in); got != tt.want {
			t.Errorf("redactURL(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestManagerURLPasswordNeverPrinted runs real workers with a password in
// manager_url (a proxy with Basic auth) and greps everything they print:
// a registration and a task with --verbose --debug, a sign-on, --check, an
// unreachable Manager and a manager_url that does not parse.
func TestManagerURLPasswordNeverPrinted(t *testing.T) {
	t.Parallel()
	const password = "hunter2-in-the-url"
	f := newFarm(t, "")
	withPassword := func(url string) string {
		return strings.Replace(url, "http://", "http://render:"+password+"@", 1)
	}
	config := func(url string) {
		writeFile(t, filepath.Join(f.dir, "flamenco-worker.cfg"), "[flamenco-worker]\nmanager_url = "+url+"\ntask_types = sleep debug\n")
	}
	var outputs []string
	config(withPassword(f.fm.URL()) + "/")
	f.fm.queueTask(taskID(1), echoCmd("hello"))
	p := f.start("--verbose", "--debug")
	waitFor(t, 15*time.Second, "the task to complete", func() bool { return f.fm.taskStatus(taskID(1)) == "completed" })
	p.stop()
	outputs = append(outputs, p.out.String())

	p = f.start("--verbose", "--debug")
	waitFor(t, 15*time.Second, "the sign-on", func() bool { return strings.Contains(p.out.String(), "signed on") })
	p.stop()
	if out := p.out.String(); !strings.Contains(out, "render:xxxxx@") {
		t.Errorf("the redacted URL is not shown:\n%s", out)
	}
	outputs = append(outputs, p.out.String())

	p = f.start("--check")
	if code := p.wait(30 * time.Second); code != 0 {
		t.Errorf("--check exit code = %d, want 0:\n%s", code, p.out.String())
	}
	outputs = append(outputs, p.out.String())

	config(withPassword("http://127.0.0.1:1/")) // nothing listens on port 1
	p = f.start("--debug")
	waitFor(t, 15*time.Second, "a connection error", func() bool { return strings.Contains(p.out.String(), "cannot reach the Manager") })
	p.signal(syscall.SIGKILL) // only its output matters; a SIGTERM this early may beat the signal handler
	p.wait(5 * time.Second)
	outputs = append(outputs, p.out.String())
	p = f.start("--check")
	p.wait(30 * time.Second)
	outputs = append(outputs, p.out.String())

	config(withPassword("http://manager:port/"))
	p = f.start()
	if code := p.wait(10 * time.Second); code == 0 {
		t.Errorf("a manager_url with a bad port was accepted")
	}
	outputs = append(outputs, p.out.String())

	for i, out := range outputs {
		if strings.Contains(out, password) {
			t.Errorf("run %d printed the manager_url password:\n%s", i, out)
		}
	}
}

// TestTruncateKeepsUTF8: a long activity or task body cut for the log
// (SIGUSR1's summary, the bad-task line) never ends in half a character.
func TestTruncateKeepsUTF8(t *testing.T) {
	tests := []struct {
		in   string
		n    int
		want string
	}{
		{"short", 10, "short"},
		{"abcdef", 3, "abc…"},
		{"ab€cd", 3, "ab…"}, // € is 3 bytes: cut before it, not inside
		{"ab€cd", 5, "ab€…"},
		{"€€", 1, "…"},
	}
	for _, tt := range tests {
		got := truncate(tt.in, tt.n)
		if got != tt.want || !utf8.ValidString(got) {
			t.Errorf("truncate(%q, %d) = %q, want %q", tt.in, tt.n, got, tt.want)
		}
	}
}
