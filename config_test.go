package main

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// configTestRender shows a parsed file compactly: one line per section,
// `[name] key="value"@line ...`, in order of first appearance.
func configTestRender(f *iniFile) string {
	var out []string
	for _, s := range f.sections {
		parts := []string{"[" + s.name + "]"}
		for _, e := range s.entries {
			parts = append(parts, fmt.Sprintf("%s=%q@%d", e.key, e.value, e.line))
		}
		out = append(out, strings.Join(parts, " "))
	}
	return strings.Join(out, "\n")
}

func TestParseINI(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, in, want string
	}{
		{"equals", "[a]\nk = v\n", `[a] k="v"@2`},
		{"colon", "[a]\nk: v", `[a] k="v"@2`},
		{"first delimiter separates", "[a]\nurl = http://m:8083/\nk: v = w", `[a] url="http://m:8083/"@2 k="v = w"@3`},
		{"whitespace trimmed", "[a]\n  k \t =   v  \t\n", `[a] k="v"@2`},
		{"empty value", "[a]\nk =\nj:", `[a] k=""@2 j=""@3`},
		{"comments, no inline comments", "# top\n; top\n[a]\n# k = 1\n   ; indented\nk = v # not a comment ; nor this\n", `[a] k="v # not a comment ; nor this"@6`},
		{"blank lines", "\n\n[a]\n\nk = v\n\n\nj = w\n", `[a] k="v"@5 j="w"@8`},
		{"continuation lines", "[a]\nk = one\n  two\n\n\tthree\nj = x\n", `[a] k="one\ntwo\n\nthree"@2 j="x"@6`},
		{"trailing blank lines of a value dropped", "[a]\nk = one\n  two\n\n\n", `[a] k="one\ntwo"@2`},
		{"comment inside continuation skipped", "[a]\nk = one\n# note\n  two", `[a] k="one\ntwo"@2`},
		{"continuation needs deeper indent", "[a]\n  k = v\n  j = w\n    more", `[a] k="v"@2 j="w\nmore"@3`},
		{"indented line after header is a key", "[a]\n  k = v", `[a] k="v"@2`},
		{"keys case-insensitive, last spelling kept", "[a]\nKey = 1\nKEY = 2", `[a] KEY="2"@3`},
		{"duplicate sections merged", "[a]\nk=1\n[b]\nx=1\n[a]\nk=2\nj=3", "[a] k=\"2\"@6 j=\"3\"@7\n[b] x=\"1\"@4"},
		{"section names case-sensitive", "[A]\nk=1\n[a]\nk=2", "[A] k=\"1\"@2\n[a] k=\"2\"@4"},
		{"CRLF", "[a]\r\nk = v\r\n  w\r\n", `[a] k="v\nw"@2`},
		{"byte order mark", "\ufeff[a]\nk = v", `[a] k="v"@2`},
		{"header with comment", "[a] ; note\nk=v", `[a] k="v"@2`},
		{"header name trimmed", "[ a ]\nk=v", `[a] k="v"@2`},
		{"empty section kept", "[a]\n[b]\nk=v", "[a]\n[b] k=\"v\"@3"},
		{"DEFAULT is a section", "[DEFAULT]\nk=v", `[DEFAULT] k="v"@2`},
		{"dollar kept raw", "[a]\nk = ${x} $$", `[a] k="${x} $$"@2`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := parseINI(strings.NewReader(tt.in), "test.cfg")
			if err != nil {
				t.Fatalf("parseINI(%q) error: %v", tt.in, err)
			}
			if got := configTestRender(f); got != tt.want {
				t.Errorf("parseINI(%q) =\n%s\nwant\n%s", tt.in, got, tt.want)
			}
		})
	}
}

func TestParseINIErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, in, want string
	}{
		{"key outside section", "\n# c\nk = v", `test.cfg:3: "k = v" is outside any section; put a [section] header above it`},
		{"indented key outside section", "  k = v", `test.cfg:1: "k = v" is outside any section; put a [section] header above it`},
		{"no delimiter", "[a]\nk = v\n\njust text", `test.cfg:4: expected "key = value", not "just text"`},
		{"no key", "[a]\n= v", `test.cfg:2: missing key before '='`},
		{"no key colon", "[a]\n  : v", `test.cfg:2: missing key before ':'`},
		{"unclosed header", "[a]\nk=v\n[b\nx=1", `test.cfg:3: section header "[b" has no closing ]`},
		{"empty header", "[ ]", `test.cfg:1: empty section name`},
		{"junk after header", "[a] junk", `test.cfg:1: unexpected "junk" after section header`},
		{"invalid UTF-8", "[a]\nk = \xff", `test.cfg:2: line is not valid UTF-8`},
		{"long line clipped", "[a]\n" + strings.Repeat("x", 100), `test.cfg:2: expected "key = value", not "` + strings.Repeat("x", 60) + `..."`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := parseINI(strings.NewReader(tt.in), "test.cfg")
			if err == nil {
				t.Fatalf("parseINI(%q) = %s, want error %q", tt.in, configTestRender(f), tt.want)
			}
			if err.Error() != tt.want {
				t.Errorf("parseINI(%q) error\n%s\nwant\n%s", tt.in, err, tt.want)
			}
		})
	}
}

// configTestChain returns n keys p1..pn, each referencing the next, the
// last one plain: reading p1 takes n-1 levels of references.
func configTestChain(n int) string {
	var b strings.Builder
	b.WriteString("[a]\n")
	for i := 1; i < n; i++ {
		fmt.Fprintf(&b, "p%d = ${p%d}\n", i, i+1)
	}
	fmt.Fprintf(&b, "p%d = end\n", n)
	return b.String()
}

func TestINIInterpolation(t *testing.T) {
	t.Parallel()
	laughs := "[a]\n"
	for i := 0; i < 9; i++ {
		laughs += fmt.Sprintf("k%d = %s\n", i, strings.Repeat(fmt.Sprintf("${k%d}", i+1), 10))
	}
	laughs += "k9 = $$\n"
	tests := []struct {
		name, in, section, key, want, wantErr string
	}{
		{"plain", "[a]\np = v", "a", "p", "v", ""},
		{"same section", "[a]\nx = 1\np = ${x}/2", "a", "p", "1/2", ""},
		{"reference case-insensitive", "[a]\nX = 1\np = ${x}", "a", "p", "1", ""},
		{"from DEFAULT", "[DEFAULT]\nroot = /r\n[a]\np = ${root}/f", "a", "p", "/r/f", ""},
		{"section before DEFAULT", "[DEFAULT]\nv=d\n[a]\nv=s\np=${v}", "a", "p", "s", ""},
		{"DEFAULT key read in a section", "[DEFAULT]\np=${y}\n[a]\ny=A", "a", "p", "A", ""},
		{"cross-section", "[paths]\nroot=/r\n[a]\np=${paths:root}/x", "a", "p", "/r/x", ""},
		{"cross-section expands in its section", "[b]\nx=${y}\ny=B\n[a]\ny=A\np=${b:x}", "a", "p", "B", ""},
		{"cross-section falls back to DEFAULT", "[DEFAULT]\nd=1\n[b]\n[a]\np=${b:d}", "a", "p", "1", ""},
		{"explicit DEFAULT", "[DEFAULT]\nd=1\n[a]\nd=2\np=${DEFAULT:d}", "a", "p", "1", ""},
		{"double dollar", "[a]\np = 100$$", "a", "p", "100$", ""},
		{"double dollar in referenced value", "[a]\nx=$$y\np=${x}", "a", "p", "$y", ""},
		{"several references", "[a]\nx=1\ny=2\np=${x}${y}$${x}", "a", "p", "12${x}", ""},
		{"multi-line value", "[a]\nx=one\n  two\np=${x}!", "a", "p", "one\ntwo!", ""},
		{"11 keys deep is allowed", configTestChain(11), "a", "p1", "end", ""},
		{"lone dollar", "[a]\np = $x", "a", "p", "", `test.cfg:2: p: '$' must be followed by '$' or '{', found "$x" (write $$ for a literal $)`},
		{"trailing dollar", "[a]\np = 5$", "a", "p", "", `test.cfg:2: p: '$' must be followed by '$' or '{', found "$" (write $$ for a literal $)`},
		{"missing key", "[a]\np = ${x}", "a", "p", "", `test.cfg:2: p: ${x} refers to a missing key`},
		{"missing section", "[DEFAULT]\nx=1\n[a]\np = ${b:x}", "a", "p", "", `test.cfg:4: p: ${b:x} refers to a missing key`},
		{"two colons", "[a]\np = ${a:b:c}", "a", "p", "", `test.cfg:2: p: more than one ':' in ${a:b:c}`},
		{"empty reference", "[a]\np = ${}", "a", "p", "", `test.cfg:2: p: bad reference "${}": want ${key} or ${section:key}`},
		{"unclosed reference", "[a]\np = ${x", "a", "p", "", `test.cfg:2: p: bad reference "${x": want ${key} or ${section:key}`},
		{"error in referenced value names its line", "[a]\np = ${q}\nq = $oops", "a", "p", "", `test.cfg:3: q: '$' must be followed by '$' or '{', found "$oops" (write $$ for a literal $)`},
		{"self reference", "[a]\np = ${p}", "a", "p", "", `test.cfg:2: p: more than 10 levels of ${...} references (a reference loop?)`},
		{"loop", "[a]\np = ${q}\nq = x${p}", "a", "p", "", `test.cfg:2: p: more than 10 levels of ${...} references (a reference loop?)`},
		{"12 keys deep is too deep", configTestChain(12), "a", "p1", "", `test.cfg:12: p11: more than 10 levels of ${...} references (a reference loop?)`},
		{"billion laughs", laughs, "a", "k0", "", `test.cfg:10: k8: more than 1000 ${...} references`},
		{"expansion too long", "[a]\nv = " + strings.Repeat("x", 40<<10) + "\np = ${v}${v}", "a", "p", "", `test.cfg:3: p: ${...} references expand to more than 65536 bytes`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := parseINI(strings.NewReader(tt.in), "test.cfg")
			if err != nil {
				t.Fatalf("parseINI(%q): %v", tt.in, err)
			}
			got, err := f.expand(tt.section, f.lookup(tt.section, tt.key))
			switch {
			case tt.wantErr != "" && (err == nil || err.Error() != tt.wantErr):
				t.Errorf("expand %s:%s of %q = %q, %v; want error\n%s", tt.section, tt.key, tt.in, got, err, tt.wantErr)
			case tt.wantErr == "" && (err != nil || got != tt.want):
				t.Errorf("expand %s:%s of %q = %q, %v; want %q", tt.section, tt.key, tt.in, got, err, tt.want)
			}
		})
	}
}

// FuzzParseINI checks that no input makes the parser or the interpolation
// panic or hang, and that every error is located in the file.
func FuzzParseINI(f *testing.F) {
	for _, seed := range []string{
		"[a]\nk = v\n  more\n",
		"[DEFAULT]\nx = ${y}\n[a]\ny = ${x}\nz = ${DEFAULT:x}$$",
		"[a]\nk = ${a:b:c}${}${",
		"  k = v",
		"[a]\r\n\tk: v\r\n#\r\n;\r\n",
		"[]\n[a\n[a]]]\n",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in string) {
		ini, err := parseINI(strings.NewReader(in), "fuzz.cfg")
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.cfg:") {
				t.Fatalf("parseINI(%q) error %q does not name the file", in, err)
			}
			return
		}
		for _, s := range ini.sections {
			for _, e := range s.entries {
				if _, err := ini.expand(s.name, e); err != nil && !strings.HasPrefix(err.Error(), "fuzz.cfg:") {
					t.Fatalf("expand of %q: error %q does not name the file", in, err)
				}
			}
		}
	})
}

// configTestRun is what configTestLoad found.
type configTestRun struct {
	cfg      *Config
	warnings []string
	err      error
	cfgPath  string // the --config file, shown as main.cfg in errors
	homePath string // shown as home.cfg
}

// errText is the error with the temporary paths shortened.
func (r configTestRun) errText() string {
	if r.err == nil {
		return ""
	}
	return strings.NewReplacer(r.cfgPath, "main.cfg", r.homePath, "home.cfg").Replace(r.err.Error())
}

// configTestLoad writes main as the --config file and home (unless "-") as
// the home file, each in its own temp dir, and runs loadConfig.
func configTestLoad(t *testing.T, main, home string) configTestRun {
	t.Helper()
	cfgDir, homeDir := t.TempDir(), t.TempDir()
	r := configTestRun{cfgPath: filepath.Join(cfgDir, "main.cfg"), homePath: filepath.Join(homeDir, homeConfigName)}
	writeFile(t, r.cfgPath, main)
	if home != "-" {
		writeFile(t, r.homePath, home)
	}
	r.cfg, r.err = loadConfig(r.cfgPath, homeDir, func(w string) { r.warnings = append(r.warnings, w) })
	return r
}

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	r := configTestLoad(t, "", "-")
	if r.err != nil {
		t.Fatalf("loadConfig: %v", r.err)
	}
	want := defaultConfig()
	want.HomeConfig = r.homePath
	want.CredSection = instancePrefix + canonicalPath(r.cfgPath)
	want.LoadedFiles = []string{r.cfgPath}
	if !reflect.DeepEqual(*r.cfg, want) {
		t.Errorf("loadConfig of an empty file =\n%+v\nwant\n%+v", *r.cfg, want)
	}
	if len(r.warnings) != 0 {
		t.Errorf("warnings: %q", r.warnings)
	}
}

func TestConfigKeys(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, main, home string
		field            func(c *Config) any
		want             any
	}{
		{"manager_url", "manager_url = https://manager.example:8083/flamenco/", "-", func(c *Config) any { return c.ManagerURL }, "https://manager.example:8083/flamenco/"},
		{"keys case-insensitive", "MANAGER_URL = http://m/", "-", func(c *Config) any { return c.ManagerURL }, "http://m/"},
		{"colon delimiter", "manager_url: http://m:8083/", "-", func(c *Config) any { return c.ManagerURL }, "http://m:8083/"},
		{"task_types split on whitespace", "task_types =  sleep\tblender-render  \n   exr-merge", "-", func(c *Config) any { return c.TaskTypes }, []string{"sleep", "blender-render", "exr-merge"}},
		{"job_types alias", "job_types = sleep file-management", "-", func(c *Config) any { return c.TaskTypes }, []string{"sleep", "file-management"}},
		{"task_types wins over a later job_types", "task_types = a\njob_types = b", "-", func(c *Config) any { return c.TaskTypes }, []string{"a"}},
		{"task_types after job_types wins", "job_types = b\ntask_types = a", "-", func(c *Config) any { return c.TaskTypes }, []string{"a"}},
		{"home task_types over cwd job_types", "job_types = b", "[flamenco-worker]\ntask_types = a", func(c *Config) any { return c.TaskTypes }, []string{"a"}},
		{"cwd task_types over home job_types", "task_types = a", "[flamenco-worker]\njob_types = b", func(c *Config) any { return c.TaskTypes }, []string{"a"}},
		{"task_update_queue_db", "task_update_queue_db = /var/lib/fw/queue.db", "-", func(c *Config) any { return c.TaskUpdateQueueDB }, "/var/lib/fw/queue.db"},
		{"subprocess_pid_file empty disables", "subprocess_pid_file =", "-", func(c *Config) any { return c.SubprocessPIDFile }, ""},
		{"may_i_run_interval_seconds float", "may_i_run_interval_seconds = 2.5", "-", func(c *Config) any { return c.MayIRunInterval }, 2500 * time.Millisecond},
		{"worker_id", "worker_id = 5e1234", "-", func(c *Config) any { return c.WorkerID }, "5e1234"},
		{"worker_secret", "worker_secret = s3cr3t", "-", func(c *Config) any { return c.WorkerSecret }, "s3cr3t"},
		{"worker_registration_secret", "worker_registration_secret = shared", "-", func(c *Config) any { return c.WorkerRegistrationSecret }, "shared"},
		{"push_log_max_interval_seconds", "push_log_max_interval_seconds = 1.5", "-", func(c *Config) any { return c.PushLogMaxInterval }, 1500 * time.Millisecond},
		{"push_log_max_interval_seconds zero", "push_log_max_interval_seconds = 0", "-", func(c *Config) any { return c.PushLogMaxInterval }, time.Duration(0)},
		{"push_log_max_entries", "push_log_max_entries = 2000", "-", func(c *Config) any { return c.PushLogMaxEntries }, 2000},
		{"push_act_max_interval_seconds", "push_act_max_interval_seconds = 7", "-", func(c *Config) any { return c.PushActMaxInterval }, 7 * time.Second},
		{"subprocess_timeout_seconds", "subprocess_timeout_seconds = 90", "-", func(c *Config) any { return c.SubprocessTimeout }, 90 * time.Second},
		{"subprocess_timeout_seconds zero is off", "subprocess_timeout_seconds = 0", "-", func(c *Config) any { return c.SubprocessTimeout }, time.Duration(0)},
		{"task_timeout_seconds", "task_timeout_seconds = 7200", "-", func(c *Config) any { return c.TaskTimeout }, 2 * time.Hour},
		{"error_retry_seconds", "error_retry_seconds = 0.5", "-", func(c *Config) any { return c.ErrorRetry }, 500 * time.Millisecond},
		{"manager_ca_file", "manager_ca_file = /etc/flamenco/ca.pem", "-", func(c *Config) any { return c.ManagerCAFile }, "/etc/flamenco/ca.pem"},
		{"reference to a default", "task_update_queue_db = ${subprocess_pid_file}.db", "-", func(c *Config) any { return c.TaskUpdateQueueDB }, "flamenco-worker-subprocess.pid.db"},
		{"reference to another section", "manager_url = http://${net:host}/\n[net]\nhost = m:8083", "-", func(c *Config) any { return c.ManagerURL }, "http://m:8083/"},
		{"reference resolved over all files", "manager_url = http://${host}/\nhost = cwd", "[flamenco-worker]\nhost = home", func(c *Config) any { return c.ManagerURL }, "http://home/"},
		{"DEFAULT does not override a default", "[DEFAULT]\nmay_i_run_interval_seconds = 9", "-", func(c *Config) any { return c.MayIRunInterval }, 5 * time.Second},
		{"dollar escaped", "worker_secret = a$$b", "-", func(c *Config) any { return c.WorkerSecret }, "a$b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			main := tt.main
			if !strings.HasPrefix(main, "[") {
				main = "[flamenco-worker]\n" + main
			}
			r := configTestLoad(t, main, tt.home)
			if r.err != nil {
				t.Fatalf("loadConfig(%q): %v", main, r.err)
			}
			if got := tt.field(r.cfg); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("loadConfig(%q) gives %#v, want %#v", main, got, tt.want)
			}
		})
	}
}

func TestConfigBadValues(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, main, home, want string
	}{
		{"int not a number", "push_log_max_entries = lots", "-", `main.cfg:2: push_log_max_entries: "lots" is not a whole number`},
		{"int with fraction", "push_log_max_entries = 2.0", "-", `main.cfg:2: push_log_max_entries: "2.0" is not a whole number`},
		{"int negative", "push_log_max_entries = -1", "-", `main.cfg:2: push_log_max_entries: must not be negative, not -1`},
		{"key as written", "\n\nPUSH_LOG_MAX_ENTRIES = x", "-", `main.cfg:4: PUSH_LOG_MAX_ENTRIES: "x" is not a whole number`},
		{"may_i_run zero", "may_i_run_interval_seconds = 0", "-", `main.cfg:2: may_i_run_interval_seconds: must be more than 0, not 0`},
		{"may_i_run negative", "may_i_run_interval_seconds = -1", "-", `main.cfg:2: may_i_run_interval_seconds: must not be negative, not -1`},
		{"push interval negative", "push_log_max_interval_seconds = -0.5", "-", `main.cfg:2: push_log_max_interval_seconds: must not be negative, not -0.5`},
		{"push act not a number", "push_act_max_interval_seconds = soon", "-", `main.cfg:2: push_act_max_interval_seconds: "soon" is not a number of seconds`},
		{"nan", "subprocess_timeout_seconds = nan", "-", `main.cfg:2: subprocess_timeout_seconds: "nan" is not a number of seconds`},
		{"inf", "task_timeout_seconds = inf", "-", `main.cfg:2: task_timeout_seconds: "inf" is not a number of seconds`},
		{"too long", "task_timeout_seconds = 1e300", "-", `main.cfg:2: task_timeout_seconds: 1e300 seconds is too long`},
		{"error_retry zero", "error_retry_seconds = 0", "-", `main.cfg:2: error_retry_seconds: must be more than 0, not 0`},
		{"no task types", "task_types =", "-", `main.cfg:2: task_types: must list at least one task type`},
		{"no job types", "job_types = ", "-", `main.cfg:2: job_types: must list at least one task type`},
		{"empty queue db", "task_update_queue_db =", "-", `main.cfg:2: task_update_queue_db: must not be empty`},
		{"bad value in home file", "", "# creds\n[flamenco-worker]\npush_log_max_entries = many", `home.cfg:3: push_log_max_entries: "many" is not a whole number`},
		{"home value is the one checked", "push_log_max_entries = many", "[flamenco-worker]\npush_log_max_entries = 5", ""},
		{"bad interpolation", "manager_url = ${nope}", "-", `main.cfg:2: manager_url: ${nope} refers to a missing key`},
		{"syntax error in home file", "", "[flamenco-worker]\nworker_id", `home.cfg:2: expected "key = value", not "worker_id"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := configTestLoad(t, "[flamenco-worker]\n"+tt.main, tt.home)
			if got := r.errText(); got != tt.want {
				t.Errorf("loadConfig(%q, home %q) error\n%s\nwant\n%s", tt.main, tt.home, got, tt.want)
			}
		})
	}
}

func TestConfigManagerURL(t *testing.T) {
	t.Parallel()
	tests := []struct{ url, want string }{
		{"", ""},
		{"http://manager:8083/", ""},
		{"https://manager.example/flamenco/", ""},
		{"HTTP://manager/", ""},
		{"'http://manager/'", `main.cfg:2: manager_url: should not be quoted: 'http://manager/'`},
		{`"http://manager/"`, `main.cfg:2: manager_url: should not be quoted: "http://manager/"`},
		{"manager:8083", `main.cfg:2: manager_url: should be a URL (so https://something/ or http://something/), not manager:8083`},
		{"ftp://manager/", `main.cfg:2: manager_url: should be an http or https URL (so https://something/ or http://something/), not ftp://manager/`},
		{"http:///path", `main.cfg:2: manager_url: has no host name: http:///path`},
		{"http://manager:port/", `main.cfg:2: manager_url: is not a valid URL: parse "http://manager:port/": invalid port ":port" after host`},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			t.Parallel()
			r := configTestLoad(t, "[flamenco-worker]\nmanager_url = "+tt.url, "-")
			if got := r.errText(); got != tt.want {
				t.Errorf("manager_url = %s: error %q, want %q", tt.url, got, tt.want)
			}
			if r.err == nil && r.cfg.ManagerURL != tt.url {
				t.Errorf("manager_url = %s: got %q", tt.url, r.cfg.ManagerURL)
			}
		})
	}
}

func TestConfigLayers(t *testing.T) {
	t.Parallel()
	main := "[flamenco-worker]\nmanager_url = http://cwd/\ntask_types = a b\nworker_id = from-cwd\n"
	home := "[flamenco-worker]\nmanager_url = http://home/\nworker_id = from-home\nworker_secret = s\n"
	r := configTestLoad(t, main, home)
	if r.err != nil {
		t.Fatal(r.err)
	}
	got := []any{r.cfg.ManagerURL, r.cfg.TaskTypes, r.cfg.WorkerID, r.cfg.WorkerSecret, r.cfg.HomeConfig, r.cfg.LoadedFiles}
	// The home file's [flamenco-worker] credentials belong to the default
	// instance; this one (--config main.cfg) has its own (identity_test.go).
	want := []any{"http://home/", []string{"a", "b"}, "from-cwd", "", r.homePath, []string{r.cfgPath, r.homePath}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("layered config = %q, want %q", got, want)
	}

	t.Run("missing --config file", func(t *testing.T) {
		t.Parallel()
		missing := filepath.Join(t.TempDir(), "nope.cfg")
		_, err := loadConfig(missing, t.TempDir(), nil)
		if want := "config file " + missing + " does not exist"; err == nil || err.Error() != want {
			t.Errorf("loadConfig(%s) error = %v, want %q", missing, err, want)
		}
	})
	t.Run("unreadable home file", func(t *testing.T) {
		t.Parallel()
		homeDir := t.TempDir()
		if err := os.Mkdir(filepath.Join(homeDir, homeConfigName), 0o755); err != nil {
			t.Fatal(err)
		}
		_, err := loadConfig("", homeDir, nil)
		if err == nil || !strings.Contains(err.Error(), "is a directory") {
			t.Errorf("loadConfig with a directory as home file: error = %v, want 'is a directory'", err)
		}
	})
	t.Run("no home dir", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "main.cfg")
		writeFile(t, path, main)
		cfg, err := loadConfig(path, "", nil)
		if err != nil || cfg.HomeConfig != "" || cfg.WorkerID != "from-cwd" {
			t.Errorf("loadConfig without home dir = %+v, %v", cfg, err)
		}
	})
}

// TestConfigWorkingDirectory uses the real default file name in the working
// directory, so it changes directory and cannot run in parallel.
func TestConfigWorkingDirectory(t *testing.T) {
	cwd, homeDir := t.TempDir(), t.TempDir()
	t.Chdir(cwd)
	writeFile(t, filepath.Join(homeDir, homeConfigName), "[flamenco-worker]\nworker_id = home-id\n")

	cfg, err := loadConfig("", homeDir, nil)
	if err != nil || cfg.WorkerID != "home-id" || len(cfg.LoadedFiles) != 1 {
		t.Fatalf("loadConfig without a working-directory file = %+v, %v; want the home file only", cfg, err)
	}

	writeFile(t, cwdConfigName, "[flamenco-worker]\nworker_id = cwd-id\ntask_types = sleep\n")
	cfg, err = loadConfig("", homeDir, nil)
	if err != nil || cfg.WorkerID != "home-id" || !reflect.DeepEqual(cfg.TaskTypes, []string{"sleep"}) {
		t.Fatalf("loadConfig = %+v, %v; want task_types from ./%s and worker_id from home", cfg, err, cwdConfigName)
	}

	writeFile(t, cwdConfigName, "[flamenco-worker]\n\nmay_i_run_interval_seconds = 0\n")
	_, err = loadConfig("", homeDir, nil)
	if want := "flamenco-worker.cfg:3: may_i_run_interval_seconds: must be more than 0, not 0"; err == nil || err.Error() != want {
		t.Errorf("loadConfig error = %v, want %q", err, want)
	}

	other := filepath.Join(t.TempDir(), "other.cfg")
	writeFile(t, other, "[flamenco-worker]\nmanager_url = http://other/\n")
	cfg, err = loadConfig(other, homeDir, nil)
	if err != nil || cfg.ManagerURL != "http://other/" || cfg.WorkerID != "" {
		t.Errorf("loadConfig(--config) = %+v, %v; want the --config file instead of ./%s, plus the home file without the default instance's credentials", cfg, err, cwdConfigName)
	}
	writeFile(t, cwdConfigName, "[flamenco-worker]\n")
	cfg, err = loadConfig("./"+cwdConfigName, homeDir, nil)
	if err != nil || cfg.WorkerID != "home-id" || cfg.CredSection != workerSection {
		t.Errorf("loadConfig(--config ./%s) = %+v, %v; want the default instance", cwdConfigName, cfg, err)
	}
}

func TestConfigWarnings(t *testing.T) {
	t.Parallel()
	main := `[flamenco-worker]
manager_url =
frobnicate = yes
[mystery]
x = 1
[loggers]
keys = root
[logger_root]
level = INFO
[handler_console]
args = (sys.stderr,)
[DEFAULT]
base = /b
`
	r := configTestLoad(t, main, "[flamenco-worker]\n\nFrobnicate = no\n")
	if r.err != nil {
		t.Fatal(r.err)
	}
	want := []string{
		"main.cfg:4: unknown section [mystery] ignored",
		`main.cfg:3: unknown key "frobnicate" in [flamenco-worker] ignored`,
		`home.cfg:3: unknown key "Frobnicate" in [flamenco-worker] ignored`,
	}
	var got []string
	for _, w := range r.warnings {
		got = append(got, strings.NewReplacer(r.cfgPath, "main.cfg", r.homePath, "home.cfg").Replace(w))
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("warnings =\n%q\nwant\n%q", got, want)
	}
}

func TestConfigPreTaskChecks(t *testing.T) {
	t.Parallel()
	main := "[pre_task_check]\nwrite.0 = /w0\nread.b = /r1\nWRITE.1 = rel/w1\nread.a = /r2/../r2b\n[DEFAULT]\nbase = /b\n"
	home := "[pre_task_check]\nread.c = ${base}/r3\nwrite.0 = /w0-home\n"
	r := configTestLoad(t, main, home)
	if r.err != nil {
		t.Fatal(r.err)
	}
	rel, err := filepath.Abs("rel/w1")
	if err != nil {
		t.Fatal(err)
	}
	want := []preTaskCheck{
		{Key: "read.b", Path: "/r1"},
		{Key: "read.a", Path: "/r2b"},
		{Key: "read.c", Path: "/b/r3"},
		{Key: "write.0", Write: true, Path: "/w0-home"},
		{Key: "WRITE.1", Write: true, Path: rel},
	}
	if !reflect.DeepEqual(r.cfg.PreTaskChecks, want) {
		t.Errorf("PreTaskChecks =\n%+v\nwant\n%+v", r.cfg.PreTaskChecks, want)
	}

	bad := []struct{ main, want string }{
		{"[pre_task_check]\nread.0 = /r\nrender = /x", `main.cfg:3: [pre_task_check] key "render" should start with "read" or "write"`},
		{"[pre_task_check]\nwrite.0 =", `main.cfg:2: [pre_task_check] write.0: empty path`},
		{"[pre_task_check]\nread.0 = $HOME", `main.cfg:2: read.0: '$' must be followed by '$' or '{', found "$HOME" (write $$ for a literal $)`},
	}
	for _, tt := range bad {
		if got := configTestLoad(t, tt.main, "-").errText(); got != tt.want {
			t.Errorf("loadConfig(%q) error\n%s\nwant\n%s", tt.main, got, tt.want)
		}
	}
}

func TestConfigEnvironment(t *testing.T) {
	t.Parallel()
	main := "[environment]\nCUDA_VISIBLE_DEVICES = 1\nPath_Extra = /opt/${CUDA_VISIBLE_DEVICES}\nDOLLAR = a$$b\n[DEFAULT]\nbase = /b\n"
	home := "[environment]\ncuda_visible_devices = 0,1\nNEW = x\n"
	r := configTestLoad(t, main, home)
	if r.err != nil {
		t.Fatal(r.err)
	}
	want := []string{"cuda_visible_devices=0,1", "Path_Extra=/opt/0,1", "DOLLAR=a$b", "NEW=x"}
	if !reflect.DeepEqual(r.cfg.Environment, want) {
		t.Errorf("Environment = %q, want %q", r.cfg.Environment, want)
	}
	bad := "[environment]\nMY VAR = 1"
	if got, want := configTestLoad(t, bad, "-").errText(), `main.cfg:2: [environment] "MY VAR" is not a valid environment variable name`; got != want {
		t.Errorf("loadConfig(%q) error %q, want %q", bad, got, want)
	}
}

func TestConfigWriteEffective(t *testing.T) {
	t.Parallel()
	cfg := defaultConfig()
	cfg.ManagerURL = "http://m:8083/"
	cfg.WorkerID = "5e1234"
	cfg.WorkerSecret = "very-secret-value"
	cfg.WorkerRegistrationSecret = "shared-secret-value"
	cfg.PreTaskChecks = []preTaskCheck{{Key: "read.0", Path: "/shared"}, {Key: "write.0", Write: true, Path: "/render"}}
	cfg.Environment = []string{"CUDA_VISIBLE_DEVICES=1", "PRICE=5$"}
	var buf bytes.Buffer
	if err := cfg.writeEffective(&buf); err != nil {
		t.Fatal(err)
	}
	want := `[flamenco-worker]
manager_url = http://m:8083/
task_types = sleep blender-render file-management exr-merge video-encoding
task_update_queue_db = flamenco-worker.db
subprocess_pid_file = flamenco-worker-subprocess.pid
may_i_run_interval_seconds = 5
worker_id = 5e1234
worker_secret = -hidden-
worker_registration_secret = -hidden-
push_log_max_interval_seconds = 30
push_log_max_entries = 1000
push_act_max_interval_seconds = 15
subprocess_timeout_seconds = 3600
task_timeout_seconds = 0
error_retry_seconds = 600
manager_ca_file =
kill_grace_seconds = 5
fetch_empty_retry_seconds = 5
fetch_error_retry_seconds = 10
asleep_poll_interval_seconds = 30
register_retry_seconds = 30
queue_size_threshold = 10
update_backoff_min_seconds = 0.5
update_backoff_max_seconds = 60
http_connect_timeout_seconds = 3
http_response_timeout_seconds = 5
http_idle_timeout_seconds = 5
output_produced_interval_seconds = 30
blend_file_wait_seconds = 5

[pre_task_check]
read.0 = /shared
write.0 = /render

[environment]
CUDA_VISIBLE_DEVICES = 1
PRICE = 5$$
`
	if got := buf.String(); got != want {
		t.Errorf("writeEffective =\n%s\nwant\n%s", got, want)
	}
	if strings.Contains(buf.String(), "secret-value") {
		t.Errorf("writeEffective shows a secret:\n%s", buf.String())
	}

	t.Run("empty secrets shown empty", func(t *testing.T) {
		c := defaultConfig()
		var b bytes.Buffer
		if err := c.writeEffective(&b); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(b.String(), "\nworker_secret =\n") || strings.Contains(b.String(), "[environment]") {
			t.Errorf("writeEffective of the defaults =\n%s", b.String())
		}
	})
}

// TestConfigWriteEffectiveRoundTrip reads writeEffective's output back: the
// same config, apart from the hidden secrets.
func TestConfigWriteEffectiveRoundTrip(t *testing.T) {
	t.Parallel()
	main := `[flamenco-worker]
manager_url = https://m/
task_types = a b
may_i_run_interval_seconds = 0.25
push_log_max_entries = 3
task_timeout_seconds = 1.5
[pre_task_check]
write.x = /w
read.y = /r
[environment]
MULTI = one
  two

  three
DOLLAR = $${x}
`
	r := configTestLoad(t, main, "-")
	if r.err != nil {
		t.Fatal(r.err)
	}
	var buf bytes.Buffer
	if err := r.cfg.writeEffective(&buf); err != nil {
		t.Fatal(err)
	}
	again := configTestLoad(t, buf.String(), "-")
	if again.err != nil {
		t.Fatalf("reading back\n%s: %v", buf.String(), again.err)
	}
	again.cfg.HomeConfig, again.cfg.LoadedFiles, again.cfg.CredSection = r.cfg.HomeConfig, r.cfg.LoadedFiles, r.cfg.CredSection
	if !reflect.DeepEqual(again.cfg, r.cfg) {
		t.Errorf("read back\n%+v\nwant\n%+v\nfrom\n%s", again.cfg, r.cfg, buf.String())
	}
}

func TestConfigExampleFile(t *testing.T) {
	t.Parallel()
	var warnings []string
	cfg, err := loadConfig(filepath.Join("examples", "flamenco-worker.cfg"), "", func(w string) { warnings = append(warnings, w) })
	if err != nil {
		t.Fatalf("loading the example config: %v", err)
	}
	if len(warnings) != 0 {
		t.Errorf("example config warnings: %q", warnings)
	}
	if cfg.ManagerURL != "" || cfg.PushLogMaxEntries != 2000 || !reflect.DeepEqual(cfg.TaskTypes[len(cfg.TaskTypes)-2:], []string{"debug", "video-encoding"}) {
		t.Errorf("example config = %+v", cfg)
	}
	if len(cfg.PreTaskChecks) != 0 || len(cfg.Environment) != 0 {
		t.Errorf("example config has active checks or environment: %+v", cfg)
	}
}

func TestCredentialsWrite(t *testing.T) {
	t.Parallel()
	const id, secret = "5e1234", "s3cr3t"
	tests := []struct {
		name, old, want string // old "-": no file
	}{
		{"no file", "-", "[flamenco-worker]\nworker_id = 5e1234\nworker_secret = s3cr3t\n"},
		{"empty file", "", "[flamenco-worker]\nworker_id = 5e1234\nworker_secret = s3cr3t\n"},
		{"added to the section, layout kept",
			"# my settings\n[flamenco-worker]\nmanager_url = http://m/\n; keep this\ntask_types = sleep\n\n[pre_task_check]\nread.0 = /x\n",
			"# my settings\n[flamenco-worker]\nmanager_url = http://m/\n; keep this\ntask_types = sleep\nworker_id = 5e1234\nworker_secret = s3cr3t\n\n[pre_task_check]\nread.0 = /x\n"},
		{"replaced in place",
			"[flamenco-worker]\n  Worker_ID = old\n    continued\n# comment\nworker_secret: oldsecret\nmanager_url = http://m/\n",
			"[flamenco-worker]\n  Worker_ID = 5e1234\n# comment\nworker_secret = s3cr3t\nmanager_url = http://m/\n"},
		{"no section, no final newline",
			"[environment]\nA = 1",
			"[environment]\nA = 1\n\n[flamenco-worker]\nworker_id = 5e1234\nworker_secret = s3cr3t\n"},
		{"only the section header",
			"[flamenco-worker]\n[environment]\nA = 1\n",
			"[flamenco-worker]\nworker_id = 5e1234\nworker_secret = s3cr3t\n[environment]\nA = 1\n"},
		{"CRLF kept",
			"[flamenco-worker]\r\nworker_id = old\r\n",
			"[flamenco-worker]\r\nworker_id = 5e1234\r\nworker_secret = s3cr3t\r\n"},
		{"repeated section",
			"[flamenco-worker]\nworker_id = a\n[other]\nx = 1\n[flamenco-worker]\nmanager_url = http://m/\n",
			"[flamenco-worker]\nworker_id = 5e1234\n[other]\nx = 1\n[flamenco-worker]\nmanager_url = http://m/\nworker_secret = s3cr3t\n"},
		{"DEFAULT credentials left alone",
			"[DEFAULT]\nworker_id = d\n[flamenco-worker]\n",
			"[DEFAULT]\nworker_id = d\n[flamenco-worker]\nworker_id = 5e1234\nworker_secret = s3cr3t\n"},
		{"new section when adding would change the file's meaning",
			"[flamenco-worker]\n  [other]\nx = 1\n",
			"[flamenco-worker]\n  [other]\nx = 1\n\n[flamenco-worker]\nworker_id = 5e1234\nworker_secret = s3cr3t\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			path := filepath.Join(dir, homeConfigName)
			if tt.old != "-" {
				writeFile(t, path, tt.old)
			}
			if err := writeCredentials(path, id, secret); err != nil {
				t.Fatalf("writeCredentials: %v", err)
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("writeCredentials on %q gave\n%q\nwant\n%q", tt.old, got, tt.want)
			}
			cfg, err := loadConfig("", dir, nil)
			if err != nil || cfg.WorkerID != id || cfg.WorkerSecret != secret {
				t.Errorf("loading the written file: %+v, %v", cfg, err)
			}
		})
	}
}

func TestCredentialsReplaceAndMode(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, homeConfigName)
	writeFile(t, path, "[flamenco-worker]\nmanager_url = http://m/\n[environment]\nA = 1\n")
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := writeCredentials(path, "first-id", "first-secret"); err != nil {
		t.Fatal(err)
	}
	if err := writeCredentials(path, "second-id", "dollar$secret"); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := "[flamenco-worker]\nmanager_url = http://m/\nworker_id = second-id\nworker_secret = dollar$$secret\n[environment]\nA = 1\n"
	if string(got) != want {
		t.Errorf("after two writeCredentials:\n%q\nwant\n%q", got, want)
	}
	cfg, err := loadConfig("", dir, nil)
	if err != nil || cfg.WorkerID != "second-id" || cfg.WorkerSecret != "dollar$secret" || cfg.ManagerURL != "http://m/" || len(cfg.Environment) != 1 {
		t.Errorf("loading the written file: %+v, %v", cfg, err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode = %v, want 0600", st.Mode().Perm())
	}
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 1 {
		t.Errorf("directory holds %v (%v), want only the config file (no temp files)", entries, err)
	}
}

func TestCredentialsSymlink(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	real := filepath.Join(dir, "dotfiles-worker.cfg")
	link := filepath.Join(dir, homeConfigName)
	writeFile(t, real, "[flamenco-worker]\n")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	if err := writeCredentials(link, "id", "secret"); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Lstat(link); err != nil || st.Mode()&fs.ModeSymlink == 0 {
		t.Errorf("home file is no longer a symlink: %v, %v", st, err)
	}
	if got, _ := os.ReadFile(real); !strings.Contains(string(got), "worker_secret = secret\n") {
		t.Errorf("symlink target = %q, want the credentials", got)
	}
}

func TestCredentialsErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, homeConfigName)
	broken := "[flamenco-worker]\nthis is not ini\n"
	writeFile(t, path, broken)
	tests := []struct{ name, id, secret, want string }{
		{"unparsable file left alone", "id", "secret", "storing credentials: not changing a file that does not parse: " + path + `:2: expected "key = value", not "this is not ini"`},
		{"line break in secret", "id", "top\nsecret", "storing credentials: worker ID or secret has line breaks or surrounding spaces"},
		{"spaces around id", " id", "secret", "storing credentials: worker ID or secret has line breaks or surrounding spaces"},
	}
	for _, tt := range tests {
		err := writeCredentials(path, tt.id, tt.secret)
		if err == nil || err.Error() != tt.want {
			t.Errorf("%s: writeCredentials error = %v, want %q", tt.name, err, tt.want)
		}
		if got, _ := os.ReadFile(path); string(got) != broken {
			t.Errorf("%s: file changed to %q", tt.name, got)
		}
	}
	if err := writeCredentials("", "id", "secret"); err == nil {
		t.Error("writeCredentials with no home file: no error")
	}
	missingDir := filepath.Join(dir, "no-such-dir", homeConfigName)
	if err := writeCredentials(missingDir, "id", "secret"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("writeCredentials in a missing directory: error = %v, want not-exist", err)
	}
}

// FuzzSetCredentials checks that credentials can be added to every file
// that parses, without changing any other assignment.
func FuzzSetCredentials(f *testing.F) {
	for _, seed := range []string{
		"",
		"[flamenco-worker]\n  worker_id = a\n    b\n[x]\n  y = 1",
		"[flamenco-worker]\n  [other]\nx = 1",
		"[DEFAULT]\nworker_secret=x\n[flamenco-worker]\r\nk=v",
		"[a]\nk = v\n[flamenco-worker]",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in string) {
		old, err := parseINI(strings.NewReader(in), "fuzz.cfg")
		if err != nil {
			return
		}
		out, err := setSectionCredentials(in, "fuzz.cfg", workerSection, "id", "se$cret")
		if err != nil {
			t.Fatalf("setSectionCredentials(%q): %v", in, err)
		}
		want := map[string]string{credIDKey: "id", credSecretKey: "se$$cret"}
		if !credentialsSet(old, out, "fuzz.cfg", workerSection, want) {
			t.Fatalf("setSectionCredentials(%q) = %q: credentials missing or other values changed", in, out)
		}
	})
}
