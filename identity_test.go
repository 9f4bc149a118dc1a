package main

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// authIDs lists the distinct worker ids of the Basic-auth calls to
// "METHOD /path", in order of first use.
func (fm *fakeManager) authIDs(call string) []string {
	fm.mu.Lock()
	defer fm.mu.Unlock()
	var ids []string
	for _, c := range fm.calls {
		scheme, cred, _ := strings.Cut(c.Auth, " ")
		raw, err := base64.StdEncoding.DecodeString(cred)
		id, _, _ := strings.Cut(string(raw), ":")
		if c.Method+" "+c.Path == call && scheme == "Basic" && err == nil && !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	return ids
}

// instanceConfig writes a config file for one more instance in f's
// working directory, with its own queue and PID file.
func (f *farm) instanceConfig(name string) string {
	writeFile(f.t, filepath.Join(f.dir, name), fmt.Sprintf(`[flamenco-worker]
manager_url = %s
task_types = sleep debug
task_update_queue_db = %s.db
subprocess_pid_file = %s.pid
`, f.fm.URL(), name, name))
	return name
}

// elsewhere is a second working directory for the same HOME and Manager,
// with the same default config.
func (f *farm) elsewhere() *farm {
	g := &farm{t: f.t, fm: f.fm, dir: f.t.TempDir(), home: f.home, env: f.env}
	data, err := os.ReadFile(filepath.Join(f.dir, "flamenco-worker.cfg"))
	if err != nil {
		f.t.Fatal(err)
	}
	writeFile(f.t, filepath.Join(g.dir, "flamenco-worker.cfg"), string(data))
	return g
}

func TestTwoConfigsAreTwoWorkers(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "")
	a, b := f.instanceConfig("gpu0.cfg"), f.instanceConfig("gpu1.cfg")
	pa, pb := f.start("--config", a), f.start("--config", b)
	waitFor(t, 15*time.Second, "both instances to fetch", func() bool { return len(f.fm.authIDs("POST /task")) == 2 })
	waitFor(t, 15*time.Second, "both instances to store their credentials", func() bool {
		return strings.Contains(pa.out.String(), "updated configuration file") && strings.Contains(pb.out.String(), "updated configuration file")
	})
	pa.stop()
	pb.stop()
	ids := f.fm.authIDs("POST /task")
	if n := f.fm.count("POST /register-worker"); n != 2 {
		t.Fatalf("%d registrations, want 2 (one per instance)", n)
	}
	home, _ := os.ReadFile(filepath.Join(f.home, ".flamenco-worker.cfg"))
	for _, name := range []string{a, b} {
		if !strings.Contains(string(home), "[flamenco-worker:"+canonicalPath(filepath.Join(f.dir, name))+"]") {
			t.Errorf("home config has no section for %s:\n%s", name, home)
		}
	}

	// Restarted, each signs on with its own identity; nobody registers.
	pa, pb = f.start("--config", a), f.start("--config", b)
	waitFor(t, 15*time.Second, "both instances to sign on", func() bool {
		return strings.Contains(pa.out.String(), "signed on") && strings.Contains(pb.out.String(), "signed on")
	})
	pa.stop()
	pb.stop()
	if n := f.fm.count("POST /register-worker"); n != 2 {
		t.Errorf("%d registrations after the restart, want still 2", n)
	}
	if got := f.fm.authIDs("POST /sign-on"); !slices.Equal(got, ids) && !slices.Equal(got, []string{ids[1], ids[0]}) {
		t.Errorf("signed on as %v, want the registered %v", got, ids)
	}

	// The default instance keeps [flamenco-worker], as the Python worker.
	p := f.start()
	waitFor(t, 15*time.Second, "the default instance to fetch", func() bool { return len(f.fm.authIDs("POST /task")) == 3 })
	p.stop()
	home, _ = os.ReadFile(filepath.Join(f.home, ".flamenco-worker.cfg"))
	if !strings.HasPrefix(string(home), "[flamenco-worker]\n") && !strings.Contains(string(home), "\n[flamenco-worker]\n") {
		t.Errorf("default instance did not store its credentials in [flamenco-worker]:\n%s", home)
	}
}

// TestSecondWorkerOnSharedFilesRefused starts a second process that would
// share the first one's identity or queue: it must exit 1 naming the first
// one's PID, without a word to the Manager, while the first carries on.
func TestSecondWorkerOnSharedFilesRefused(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		second func(f *farm) *workerProc
		want   string
	}{
		{"same identity, other directory", func(f *farm) *workerProc { return f.elsewhere().start() },
			"already uses the credentials in " + "HOME" + "/.flamenco-worker.cfg [flamenco-worker]; give this one its own --config"},
		{"same directory and config", func(f *farm) *workerProc { return f.start() },
			"already uses the credentials in "},
		{"other config, same queue", func(f *farm) *workerProc {
			writeFile(t, filepath.Join(f.dir, "other.cfg"), "[flamenco-worker]\nmanager_url = "+f.fm.URL()+"\nsubprocess_pid_file = other.pid\n")
			return f.start("--config", "other.cfg")
		}, "already uses the task update queue DIR/flamenco-worker.db; give this one its own task_update_queue_db"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFarm(t, "").registered()
			first := f.start()
			waitFor(t, 15*time.Second, "the first worker to fetch", func() bool { return f.fm.count("POST /task") > 0 })
			calls := len(f.fm.callPaths())
			second := c.second(f)
			if code := second.wait(15 * time.Second); code != 1 {
				t.Fatalf("second worker exit code = %d, want 1; output:\n%s", code, second.out.String())
			}
			want := strings.NewReplacer("HOME", f.home, "DIR", canonicalPath(f.dir)).Replace(c.want)
			want = fmt.Sprintf("another worker (pid %d) %s", first.cmd.Process.Pid, want)
			if out := second.out.String(); !strings.Contains(out, want) {
				t.Errorf("second worker's output lacks %q:\n%s", want, out)
			}
			if n := f.fm.count("POST /sign-on") + f.fm.count("POST /register-worker"); n != 1 {
				t.Errorf("the second worker talked to the Manager: %v", f.fm.callPaths())
			}
			waitFor(t, 10*time.Second, "the first worker to go on fetching", func() bool { return len(f.fm.callPaths()) > calls+2 })
			first.stop()
		})
	}
}

// TestStaleLockIsNoObstacle: a SIGKILLed worker leaves its lock files with
// its PID behind; the next worker starts anyway.
func TestStaleLockIsNoObstacle(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "").registered()
	p := f.start()
	waitFor(t, 15*time.Second, "a fetch", func() bool { return f.fm.count("POST /task") > 0 })
	p.signal(syscall.SIGKILL)
	p.wait(5 * time.Second)
	data, err := os.ReadFile(filepath.Join(f.dir, "flamenco-worker.db.lock"))
	if err != nil || strings.TrimSpace(string(data)) != fmt.Sprint(p.cmd.Process.Pid) {
		t.Errorf("queue lock file = %q, %v; want the PID %d", data, err, p.cmd.Process.Pid)
	}
	p2 := f.start()
	waitFor(t, 15*time.Second, "the restarted worker to sign on", func() bool { return f.fm.count("POST /sign-on") == 2 })
	p2.stop()
}

// TestInstanceCredentialSections: an instance started with its own
// --config file reads and writes its credentials in its own home-file
// section; the home file's other [flamenco-worker] keys still apply to it.
func TestInstanceCredentialSections(t *testing.T) {
	cfgDir, homeDir := t.TempDir(), t.TempDir()
	gpu1 := filepath.Join(cfgDir, "gpu1.cfg")
	writeFile(t, gpu1, "[flamenco-worker]\ntask_types = sleep\nworker_id = from-gpu1-cfg\n")
	section := "flamenco-worker:" + canonicalPath(gpu1)
	home := filepath.Join(homeDir, homeConfigName)
	writeFile(t, home, "# shared\n[flamenco-worker]\nmanager_url = http://m/\nworker_id = default-id\nworker_secret = default-secret\n\n["+section+"]\nworker_id = gpu1-id\nworker_secret = gpu1-secret\n")

	os.Chmod(home, 0o600)
	var warnings []string
	cfg, err := loadConfig(gpu1, homeDir, func(w string) { warnings = append(warnings, w) })
	if err != nil {
		t.Fatal(err)
	}
	if got := []string{cfg.ManagerURL, cfg.WorkerID, cfg.WorkerSecret, cfg.CredSection}; !slices.Equal(got, []string{"http://m/", "gpu1-id", "gpu1-secret", section}) {
		t.Errorf("loadConfig(--config gpu1.cfg) = %q", got)
	}
	if len(warnings) != 0 {
		t.Errorf("warnings: %q", warnings)
	}

	// Without an entry of its own, the --config file's credentials count
	// (the Python worker's way), never the default instance's.
	gpu2 := filepath.Join(cfgDir, "gpu2.cfg")
	writeFile(t, gpu2, "[flamenco-worker]\nworker_id = from-gpu2-cfg\nworker_secret = s2\n")
	if cfg, err := loadConfig(gpu2, homeDir, nil); err != nil || cfg.WorkerID != "from-gpu2-cfg" || cfg.WorkerSecret != "s2" {
		t.Errorf("loadConfig(--config gpu2.cfg) = %+v, %v; want its own file's credentials", cfg, err)
	}

	if err := writeSectionCredentials(home, section, "new-gpu1-id", "new-secret"); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(home)
	want := "# shared\n[flamenco-worker]\nmanager_url = http://m/\nworker_id = default-id\nworker_secret = default-secret\n\n[" + section + "]\nworker_id = new-gpu1-id\nworker_secret = new-secret\n"
	if string(data) != want {
		t.Errorf("after writeSectionCredentials:\n%s\nwant\n%s", data, want)
	}
	if err := writeSectionCredentials(home, instancePrefix+"/elsewhere/gpu3.cfg", "id3", "s3"); err != nil {
		t.Fatal(err)
	}
	data, _ = os.ReadFile(home)
	if want += "\n[flamenco-worker:/elsewhere/gpu3.cfg]\nworker_id = id3\nworker_secret = s3\n"; string(data) != want {
		t.Errorf("after adding a section:\n%s\nwant\n%s", data, want)
	}

	odd := filepath.Join(cfgDir, "gpu[1].cfg")
	writeFile(t, odd, "[flamenco-worker]\n")
	if _, err := loadConfig(odd, homeDir, nil); err == nil || !strings.Contains(err.Error(), "rename the file") {
		t.Errorf("loadConfig(%q) error = %v, want a refusal", odd, err)
	}
}
