package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestSecretsNeverLeak registers a worker (so it makes a secret), runs it
// with --verbose and --debug, runs a task, and greps everything the worker
// printed and everything it sent except the registration itself.
func TestSecretsNeverLeak(t *testing.T) {
	t.Parallel()
	const regSecret = "pre-shared-registration-key"
	f := newFarm(t, "worker_registration_secret = "+regSecret)
	f.fm.set(func(fm *fakeManager) { fm.regSecret = regSecret })
	f.fm.queueTask(taskID(1), echoCmd("hello"), execCmd("env"))
	p := f.start("--verbose", "--debug")
	waitFor(t, 10*time.Second, "the task to complete", func() bool { return f.fm.taskStatus(taskID(1)) == "completed" })
	p.stop()

	home, _ := os.ReadFile(filepath.Join(f.home, ".flamenco-worker.cfg"))
	m := regexp.MustCompile(`worker_secret = (\S+)`).FindSubmatch(home)
	if m == nil {
		t.Fatalf("no secret stored:\n%s", home)
	}
	secrets := []string{string(m[1]), regSecret}
	out := p.out.String()
	if !strings.Contains(out, "-hidden-") {
		t.Errorf("--verbose printed no hidden secret:\n%s", out)
	}
	for _, s := range secrets {
		if strings.Contains(out, s) {
			t.Errorf("the worker printed a secret (%.6s…)", s)
		}
		f.fm.mu.Lock()
		for _, c := range f.fm.calls {
			if c.Path != "/register-worker" && strings.Contains(c.Body, s) {
				t.Errorf("%s %s carried a secret (%.6s…)", c.Method, c.Path, s)
			}
		}
		f.fm.mu.Unlock()
	}
}

func TestReadableSecretFileWarns(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "worker_registration_secret = let-me-in")
	os.Chmod(filepath.Join(f.dir, "flamenco-worker.cfg"), 0o644)
	f.fm.set(func(fm *fakeManager) { fm.regSecret = "let-me-in" })
	p := f.start()
	waitFor(t, 10*time.Second, "a fetch", func() bool { return f.fm.count("POST /task") > 0 })
	p.stop()
	if !strings.Contains(p.out.String(), "holds worker_registration_secret but is readable by other users") {
		t.Errorf("no warning about a world-readable secret:\n%s", p.out.String())
	}
	home := filepath.Join(f.home, ".flamenco-worker.cfg")
	if info, err := os.Stat(home); err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("credentials file %v, %v; want mode 0600", info.Mode(), err)
	}
}

func TestPrivateCA(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "").registered()
	url, ca := f.fm.tlsURL()
	f.fm.queueTask(taskID(1), echoCmd("over TLS"))

	writeFile(t, filepath.Join(f.dir, "flamenco-worker.cfg"), "[flamenco-worker]\nmanager_url = "+url+"\n")
	p := f.start()
	waitFor(t, 10*time.Second, "a refused certificate", func() bool { return strings.Contains(p.out.String(), "certificate") })
	p.stop()
	if f.fm.count("POST /sign-on") != 0 {
		t.Errorf("talked to a Manager whose certificate is not trusted")
	}

	writeFile(t, filepath.Join(f.dir, "flamenco-worker.cfg"), "[flamenco-worker]\nmanager_url = "+url+"\nmanager_ca_file = "+ca+"\n")
	p = f.start()
	waitFor(t, 10*time.Second, "the task over TLS", func() bool { return f.fm.taskStatus(taskID(1)) == "completed" })
	p.stop()
}
