package main

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestVersionPlainGoBuild builds the worker as a user would, with a plain
// `go build`, and checks that -V reports the real version (never "dev"),
// with the VCS revision when the build recorded one.
func TestVersionPlainGoBuild(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := filepath.Join(t.TempDir(), "flamenco-worker")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Dir = startDir
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "-V").Output()
	if err != nil {
		t.Fatalf("-V: %v", err)
	}
	got := strings.TrimSpace(string(out))
	if !regexp.MustCompile(`^` + regexp.QuoteMeta(baseVersion) + `(\+[0-9a-f]{12}(\.dirty)?)?$`).MatchString(got) {
		t.Errorf("-V = %q, want %s with an optional +revision", got, baseVersion)
	}
	// If the build recorded a revision (a clean clone; not a git worktree,
	// nor with GOFLAGS=-buildvcs=false), the version must name it.
	info, err := exec.Command("go", "version", "-m", bin).Output()
	if err != nil {
		t.Fatalf("go version -m: %v", err)
	}
	if m := regexp.MustCompile(`vcs\.revision=([0-9a-f]{12})`).FindSubmatch(info); m != nil {
		if !strings.HasPrefix(got, baseVersion+"+"+string(m[1])) {
			t.Errorf("-V = %q, but the binary was built from revision %s", got, m[1])
		}
	} else {
		t.Logf("the build recorded no VCS revision; -V = %q", got)
	}
}

func TestVersionWithRevision(t *testing.T) {
	tests := []struct {
		settings []debug.BuildSetting
		want     string
	}{
		{nil, baseVersion},
		{[]debug.BuildSetting{{Key: "vcs.revision", Value: "c6f3c5b8d6a50ed6818627732ce08f0b02b68d8f"}}, baseVersion + "+c6f3c5b8d6a5"},
		{[]debug.BuildSetting{{Key: "vcs.revision", Value: "c6f3c5b8d6a50ed6818627732ce08f0b02b68d8f"}, {Key: "vcs.modified", Value: "true"}}, baseVersion + "+c6f3c5b8d6a5.dirty"},
		{[]debug.BuildSetting{{Key: "vcs.modified", Value: "true"}}, baseVersion},
	}
	for _, tt := range tests {
		if got := versionWith(tt.settings); got != tt.want {
			t.Errorf("versionWith(%v) = %q, want %q", tt.settings, got, tt.want)
		}
	}
}

// TestVersionEverywhere: -V, the User-Agent, the start-up log line and
// --check give the same version.
func TestVersionEverywhere(t *testing.T) {
	t.Parallel()
	want := workerVersion()
	var stdout, stderr bytes.Buffer
	if code := runTuned(t.Context(), []string{"-V"}, &stdout, &stderr, testTuning()); code != 0 || stdout.String() != want+"\n" {
		t.Errorf("-V: exit %d, %q; want %q", code, stdout.String(), want)
	}
	f := newFarm(t, "").registered()
	var mu sync.Mutex
	agents := map[string]bool{}
	f.fm.set(func(fm *fakeManager) {
		fm.hijack = func(w http.ResponseWriter, r *http.Request) bool {
			mu.Lock()
			agents[r.Header.Get("User-Agent")] = true
			mu.Unlock()
			return false
		}
	})
	p := f.start()
	waitFor(t, 10*time.Second, "a task fetch", func() bool { return f.fm.count("POST /task") > 0 })
	p.stop()
	mu.Lock()
	if len(agents) != 1 || !agents["Flamenco-Worker/"+want] {
		t.Errorf("User-Agents %v, want only Flamenco-Worker/%s", agents, want)
	}
	mu.Unlock()
	if !strings.Contains(p.out.String(), "msg=\"starting Flamenco Worker\" version="+want+" ") {
		t.Errorf("start-up line lacks version=%s:\n%s", want, p.out.String())
	}
	c := f.start("--check")
	c.wait(30 * time.Second)
	if !strings.Contains(c.out.String(), "Flamenco Worker "+want+"\n") {
		t.Errorf("--check output lacks the version %s:\n%s", want, c.out.String())
	}
}

// TestConfigErrorsExit47: every kind of configuration error makes the
// worker (a real process) exit 47, as the Python worker does, naming the
// place, without talking to the Manager.
func TestConfigErrorsExit47(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, cfg string
		args      []string
		want      []string
	}{
		{"bad number", "[flamenco-worker]\nmanager_url = http://localhost:8083/\npush_log_max_entries = lots\n", nil,
			[]string{"flamenco-worker.cfg:3", "push_log_max_entries"}},
		{"quoted manager_url", "[flamenco-worker]\nmanager_url = \"http://localhost:8083/\"\n", nil,
			[]string{"manager_url", "quoted"}},
		{"not a URL", "[flamenco-worker]\nmanager_url = localhost\n", nil, []string{"manager_url"}},
		{"syntax", "[flamenco-worker]\nmanager_url = http://localhost/\nthis line is nonsense\n", nil, []string{"flamenco-worker.cfg:3"}},
		{"pre-task check key", "[flamenco-worker]\nmanager_url = http://localhost/\n[pre_task_check]\nexecute.0 = /x\n", nil,
			[]string{"flamenco-worker.cfg:4", "execute.0"}},
		{"bad interpolation", "[flamenco-worker]\nmanager_url = http://${nope}/\n", nil, []string{"flamenco-worker.cfg:2", "${nope}"}},
		{"bad environment name", "[flamenco-worker]\nmanager_url = http://localhost/\n[environment]\nA B = 1\n", nil, []string{"flamenco-worker.cfg:4"}},
		{"interval below its minimum", "[flamenco-worker]\nmanager_url = http://localhost/\nmay_i_run_interval_seconds = 0.000000001\n", nil,
			[]string{"flamenco-worker.cfg:3", "may_i_run_interval_seconds", "at least 0.1"}},
		{"backoff cap below its start", "[flamenco-worker]\nmanager_url = http://localhost/\nupdate_backoff_max_seconds = 1\nupdate_backoff_min_seconds = 5\n", nil,
			[]string{"flamenco-worker.cfg:3", "update_backoff_max_seconds"}},
		{"missing --config file", "", []string{"--config", "/does/not/exist.cfg"}, []string{"/does/not/exist.cfg"}},
		{"--config is a directory", "", []string{"--config", "/"}, []string{"configuration error"}},
		{"unreadable manager_ca_file", "[flamenco-worker]\nmanager_url = https://localhost/\nmanager_ca_file = /does/not/exist.pem\n", nil,
			[]string{"manager_ca_file", "/does/not/exist.pem"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			f := newFarm(t, "").registered()
			if c.cfg != "" {
				writeFile(t, filepath.Join(f.dir, "flamenco-worker.cfg"), c.cfg)
			}
			p := f.start(c.args...)
			if code := p.wait(10 * time.Second); code != exitConfig {
				t.Errorf("exit code = %d, want %d:\n%s", code, exitConfig, p.out.String())
			}
			for _, w := range c.want {
				if !strings.Contains(p.out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, p.out.String())
				}
			}
			if n := len(f.fm.callPaths()); n != 0 {
				t.Errorf("%d requests to the Manager with a bad config", n)
			}
		})
	}
}

// TestTaskTypesAndJobTypes: job_types alone is honoured; with task_types,
// task_types wins wherever each is, with one warning naming both.
func TestTaskTypesAndJobTypes(t *testing.T) {
	tests := []struct {
		name, main, home string
		want             []string
		warning          string // with main.cfg and home.cfg for the files
	}{
		{"job_types alone", "job_types = sleep file-management", "-", []string{"sleep", "file-management"}, ""},
		{"task_types alone", "task_types = sleep", "-", []string{"sleep"}, ""},
		{"task_types then job_types", "task_types = a\njob_types = b", "-", []string{"a"},
			"main.cfg:2: task_types and main.cfg:3: job_types are both set; task_types is used, job_types ignored"},
		{"job_types then task_types", "job_types = b\ntask_types = a", "-", []string{"a"},
			"main.cfg:3: task_types and main.cfg:2: job_types are both set; task_types is used, job_types ignored"},
		{"job_types in the home file", "task_types = a", "[flamenco-worker]\njob_types = b", []string{"a"},
			"main.cfg:2: task_types and home.cfg:2: job_types are both set; task_types is used, job_types ignored"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := configTestLoad(t, "[flamenco-worker]\n"+tt.main, tt.home)
			if r.err != nil {
				t.Fatal(r.err)
			}
			if strings.Join(r.cfg.TaskTypes, " ") != strings.Join(tt.want, " ") {
				t.Errorf("task types %q, want %q", r.cfg.TaskTypes, tt.want)
			}
			var warnings []string
			for _, w := range r.warnings {
				w = strings.ReplaceAll(w, r.cfgPath, "main.cfg")
				warnings = append(warnings, strings.ReplaceAll(w, r.homePath, "home.cfg"))
			}
			want := []string{}
			if tt.warning != "" {
				want = append(want, tt.warning)
			}
			if strings.Join(warnings, "\n") != strings.Join(want, "\n") {
				t.Errorf("warnings %q, want %q", warnings, want)
			}
		})
	}
}

// TestManagerURLPathIsDropped: as with the Python worker, the routes
// replace manager_url's path, and the path gets one warning at start-up.
func TestManagerURLPathIsDropped(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "").registered()
	writeFile(t, filepath.Join(f.dir, "flamenco-worker.cfg"), "[flamenco-worker]\nmanager_url = "+f.fm.URL()+"/flamenco/\ntask_types = sleep\n")
	f.fm.queueTask(taskID(1), echoCmd("path dropped"))
	p := f.start()
	waitFor(t, 10*time.Second, "the task to complete", func() bool { return f.fm.taskStatus(taskID(1)) == "completed" })
	p.stop()
	for _, c := range f.fm.callPaths() {
		if strings.Contains(c, "/flamenco") {
			t.Errorf("request %s kept the path", c)
		}
	}
	if n := strings.Count(p.out.String(), "manager_url has a path"); n != 1 {
		t.Errorf("%d warnings about the path, want 1:\n%s", n, p.out.String())
	}
}

func TestManagerBase(t *testing.T) {
	tests := []struct {
		url, want string
		warns     bool
	}{
		{"http://manager:8083/", "http://manager:8083", false},
		{"http://manager:8083", "http://manager:8083", false},
		{"http://manager:8083/flamenco/", "http://manager:8083", true},
		{"https://user:pw@manager/sub/path?x=1#frag", "https://user:pw@manager", true},
	}
	for _, tt := range tests {
		var logs bytes.Buffer
		got, err := managerBase(tt.url, newLogger(&logs, false))
		if err != nil || got != tt.want || (logs.Len() > 0) != tt.warns {
			t.Errorf("managerBase(%q) = %q, %v, log %q; want %q, warning %v", tt.url, got, err, logs.String(), tt.want, tt.warns)
		}
	}
}

// TestExampleCrontab runs the shipped office-hours crontab's commands
// against a real worker (systemctl stands in for the unit): the 08:00 line
// sends it to sleep, the 20:00 line wakes it.
func TestExampleCrontab(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(filepath.Join(startDir, "examples", "crontab"))
	if err != nil {
		t.Fatal(err)
	}
	var jobs [][]string // schedule fields, then the command
	for _, line := range strings.Split(string(data), "\n") {
		if line = strings.TrimSpace(line); line == "" || line[0] == '#' {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 6 {
			t.Fatalf("crontab line %q: want five time fields and a command", line)
		}
		jobs = append(jobs, append(fields[:5:5], strings.Join(fields[5:], " ")))
	}
	if len(jobs) != 2 || strings.Join(jobs[0][:5], " ") != "0 8 * * 1-5" || strings.Join(jobs[1][:5], " ") != "0 20 * * 1-5" {
		t.Fatalf("crontab jobs %q, want sleep at 08:00 and wake at 20:00 on weekdays", jobs)
	}
	if strings.Contains(string(data), "kill -USR1") || strings.Contains(string(data), "-USR1 ") {
		t.Errorf("the crontab still sends SIGUSR1 to sleep")
	}
	f := newFarm(t, "").registered()
	p := f.start()
	waitFor(t, 10*time.Second, "a task fetch", func() bool { return f.fm.count("POST /task") > 0 })
	bin := t.TempDir()
	writeFile(t, filepath.Join(bin, "systemctl"), fmt.Sprintf("#!/bin/sh\necho %d\n", p.cmd.Process.Pid))
	os.Chmod(filepath.Join(bin, "systemctl"), 0o755)
	cron := func(command string) {
		t.Helper()
		sh := exec.Command("/bin/sh", "-c", command)
		sh.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"))
		if out, err := sh.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", command, err, out)
		}
	}
	cron(jobs[0][5])
	waitFor(t, 10*time.Second, "the asleep ack", func() bool { return f.fm.count("POST /ack-status-change/asleep") == 1 })
	cron(jobs[1][5])
	waitFor(t, 10*time.Second, "the awake ack", func() bool { return f.fm.count("POST /ack-status-change/awake") == 1 })
	p.stop()
}

// TestREADMEListsEveryKey: the README's configuration reference has a row
// for every [flamenco-worker] key, with its default.
func TestREADMEListsEveryKey(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(startDir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		cells := strings.Split(line, "|")
		if len(cells) > 3 && strings.HasPrefix(strings.TrimSpace(cells[1]), "`") {
			rows[strings.Trim(strings.TrimSpace(cells[1]), "`")] = strings.TrimSpace(cells[2])
		}
	}
	def := defaultConfig()
	for _, k := range configKeys() {
		got, ok := rows[k.name]
		want := k.format(&def)
		switch {
		case !ok:
			t.Errorf("README has no row for %s", k.name)
		case want == "" && !strings.HasPrefix(got, "("):
			t.Errorf("README: %s default %q, want an explanation in parentheses", k.name, got)
		case want != "" && got != want:
			t.Errorf("README: %s default %q, want %q", k.name, got, want)
		}
	}
	if !strings.Contains(string(data), "\n## Moving from the Python worker\n") {
		t.Errorf("README has no section \"Moving from the Python worker\"")
	}
}
