package main

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestTuningKeys: each key that was a constant is parsed into the tuning
// the constructors get.
func TestTuningKeys(t *testing.T) {
	t.Parallel()
	tests := []struct {
		line  string
		field func(c *Config) any
		want  any
	}{
		{"kill_grace_seconds = 2.5", func(c *Config) any { return c.Tuning.killGrace }, 2500 * time.Millisecond},
		{"fetch_empty_retry_seconds = 1", func(c *Config) any { return c.Tuning.fetchEmpty }, time.Second},
		{"fetch_error_retry_seconds = 20", func(c *Config) any { return c.Tuning.fetchFailed }, 20 * time.Second},
		{"asleep_poll_interval_seconds = 60", func(c *Config) any { return c.Tuning.asleepPoll }, time.Minute},
		{"register_retry_seconds = 0.1", func(c *Config) any { return c.Tuning.registerRetry }, 100 * time.Millisecond},
		{"queue_size_threshold = 50", func(c *Config) any { return c.Tuning.queueLimit }, 50},
		{"queue_size_threshold = 0", func(c *Config) any { return c.Tuning.queueLimit }, 0},
		{"update_backoff_min_seconds = 2", func(c *Config) any { return c.Tuning.updateBackoff.min }, 2 * time.Second},
		{"update_backoff_max_seconds = 300", func(c *Config) any { return c.Tuning.updateBackoff.max }, 5 * time.Minute},
		{"http_connect_timeout_seconds = 1", func(c *Config) any { return c.Tuning.http.connect }, time.Second},
		{"http_response_timeout_seconds = 30", func(c *Config) any { return c.Tuning.http.header }, 30 * time.Second},
		{"http_idle_timeout_seconds = 7", func(c *Config) any { return c.Tuning.http.idle }, 7 * time.Second},
		{"output_produced_interval_seconds = 10", func(c *Config) any { return c.Tuning.outputWindow }, 10 * time.Second},
		{"blend_file_wait_seconds = 0", func(c *Config) any { return c.Tuning.fileWait }, time.Duration(0)},
		{"blend_file_wait_seconds = 30", func(c *Config) any { return c.Tuning.fileWait }, 30 * time.Second},
	}
	for _, tt := range tests {
		r := configTestLoad(t, "[flamenco-worker]\n"+tt.line, "-")
		if r.err != nil {
			t.Errorf("loadConfig(%q): %v", tt.line, r.err)
			continue
		}
		if got := tt.field(r.cfg); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("loadConfig(%q) gives %v, want %v", tt.line, got, tt.want)
		}
	}
}

// TestTuningBounds: intervals and timeouts have minimums and maximums,
// reported with file, line and key.
func TestTuningBounds(t *testing.T) {
	t.Parallel()
	tests := []struct{ main, want string }{
		{"may_i_run_interval_seconds = 0.000000001", "main.cfg:2: may_i_run_interval_seconds: must be at least 0.1 seconds, not 0.000000001"},
		{"may_i_run_interval_seconds = 86400", "main.cfg:2: may_i_run_interval_seconds: must be at most 3600 seconds, not 86400"},
		{"subprocess_timeout_seconds = 0.000000003", "main.cfg:2: subprocess_timeout_seconds: must be 0 or at least 0.1 seconds, not 0.000000003"},
		{"push_log_max_interval_seconds = 0.01", "main.cfg:2: push_log_max_interval_seconds: must be 0 or at least 0.1 seconds, not 0.01"},
		{"push_log_max_entries = 1000000", "main.cfg:2: push_log_max_entries: must be at most 100000, not 1000000"},
		{"error_retry_seconds = 0.05", "main.cfg:2: error_retry_seconds: must be at least 0.1 seconds, not 0.05"},
		{"kill_grace_seconds = 0", "main.cfg:2: kill_grace_seconds: must be more than 0, not 0"},
		{"kill_grace_seconds = 120", "main.cfg:2: kill_grace_seconds: must be at most 60 seconds, not 120"},
		{"fetch_empty_retry_seconds = 0.001", "main.cfg:2: fetch_empty_retry_seconds: must be at least 0.1 seconds, not 0.001"},
		{"fetch_error_retry_seconds = -1", "main.cfg:2: fetch_error_retry_seconds: must not be negative, not -1"},
		{"asleep_poll_interval_seconds = soon", `main.cfg:2: asleep_poll_interval_seconds: "soon" is not a number of seconds`},
		{"register_retry_seconds = 0", "main.cfg:2: register_retry_seconds: must be more than 0, not 0"},
		{"queue_size_threshold = 1.5", `main.cfg:2: queue_size_threshold: "1.5" is not a whole number`},
		{"http_connect_timeout_seconds = 0", "main.cfg:2: http_connect_timeout_seconds: must be more than 0, not 0"},
		{"http_response_timeout_seconds = 3600", "main.cfg:2: http_response_timeout_seconds: must be at most 300 seconds, not 3600"},
		{"http_idle_timeout_seconds = 0.01", "main.cfg:2: http_idle_timeout_seconds: must be at least 0.1 seconds, not 0.01"},
		{"output_produced_interval_seconds = 0", "main.cfg:2: output_produced_interval_seconds: must be more than 0, not 0"},
		{"blend_file_wait_seconds = 3600", "main.cfg:2: blend_file_wait_seconds: must be at most 600 seconds, not 3600"},
		{"update_backoff_min_seconds = 0.01", "main.cfg:2: update_backoff_min_seconds: must be at least 0.1 seconds, not 0.01"},
		{"update_backoff_min_seconds = 10\nupdate_backoff_max_seconds = 5", "main.cfg:3: update_backoff_max_seconds: update_backoff_max_seconds (5) must not be less than update_backoff_min_seconds (10)"},
		{"update_backoff_min_seconds = 120", "main.cfg:2: update_backoff_min_seconds: update_backoff_max_seconds (60) must not be less than update_backoff_min_seconds (120)"},
	}
	for _, tt := range tests {
		r := configTestLoad(t, "[flamenco-worker]\n"+tt.main, "-")
		if got := strings.ReplaceAll(r.errText(), r.cfgPath, "main.cfg"); got != tt.want {
			t.Errorf("loadConfig(%q) error\n%s\nwant\n%s", tt.main, got, tt.want)
		}
	}
}

// TestTuningReachesConstructors: the tuning from the config is what each
// constructor uses; nothing is set afterwards.
func TestTuningReachesConstructors(t *testing.T) {
	r := configTestLoad(t, `[flamenco-worker]
manager_url = http://localhost:1/
kill_grace_seconds = 1.5
blend_file_wait_seconds = 2
register_retry_seconds = 3
fetch_empty_retry_seconds = 4
fetch_error_retry_seconds = 6
asleep_poll_interval_seconds = 7
queue_size_threshold = 8
update_backoff_min_seconds = 0.25
update_backoff_max_seconds = 9
http_connect_timeout_seconds = 1
http_response_timeout_seconds = 2
http_idle_timeout_seconds = 3
output_produced_interval_seconds = 11
`, "-")
	if r.err != nil {
		t.Fatal(r.err)
	}
	cfg := r.cfg
	env := newRunEnv(cfg, quietLogger)
	if env.killGrace != 1500*time.Millisecond || env.fileWait != 2*time.Second {
		t.Errorf("runEnv kill grace %v, file wait %v", env.killGrace, env.fileWait)
	}
	m, err := newManager(cfg, cfg.ManagerURL, "test", quietLogger)
	if err != nil {
		t.Fatal(err)
	}
	tr := m.client.Transport.(*http.Transport)
	if m.retryDelay != 3*time.Second || tr.ResponseHeaderTimeout != 2*time.Second || tr.TLSHandshakeTimeout != time.Second ||
		m.limits.idle != 3*time.Second || m.client.Timeout != 0 {
		t.Errorf("manager: retry %v, header timeout %v, TLS %v, idle %v, client timeout %v", m.retryDelay, tr.ResponseHeaderTimeout, tr.TLSHandshakeTimeout, m.limits.idle, m.client.Timeout)
	}
	q, err := openQueue(filepath.Join(t.TempDir(), "q.db"), quietLogger, cfg.Tuning.updateBackoff)
	if err != nil {
		t.Fatal(err)
	}
	defer q.close()
	if q.retry != (backoff{250 * time.Millisecond, 9 * time.Second}) {
		t.Errorf("queue backoff %v", q.retry)
	}
	w := newWorker(cfg, m, q, env, nil, quietLogger)
	if want := (intervals{fetchEmpty: 4 * time.Second, fetchFailed: 6 * time.Second, asleepPoll: 7 * time.Second, queueLimit: 8}); w.iv != want {
		t.Errorf("worker intervals %+v, want %+v", w.iv, want)
	}
	if n := newOutputNotifier(nil, cfg.Tuning.outputWindow, quietLogger); n.window != 11*time.Second {
		t.Errorf("output window %v", n.window)
	}
}

// TestTuningInVerbose: --verbose lists every key; a file's value wins over
// the built-in (here: the tests') default.
func TestTuningInVerbose(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "kill_grace_seconds = 1.5").registered()
	p := f.start("--verbose")
	waitFor(t, 10*time.Second, "a task fetch", func() bool { return f.fm.count("POST /task") > 0 })
	p.stop()
	out := p.out.String()
	for _, k := range configKeys() {
		if !strings.Contains(out, "\n"+k.name+" =") {
			t.Errorf("--verbose lacks %s", k.name)
		}
	}
	for _, want := range []string{"\nkill_grace_seconds = 1.5\n", "\nfetch_empty_retry_seconds = 0.05\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("--verbose lacks %q:\n%s", want, out)
		}
	}
}

// TestHTTPTimeouts: a Manager that accepts and never answers, or stops in
// the middle of a body, costs the timeout, not more; a body that keeps
// moving may take longer than any single timeout.
func TestHTTPTimeouts(t *testing.T) {
	limits := httpTimeouts{connect: time.Second, header: 500 * time.Millisecond, idle: 500 * time.Millisecond}
	release := make(chan struct{})
	defer close(release)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/task": // headers never come
			select {
			case <-r.Context().Done():
			case <-release:
			}
		case "/status-change": // headers, half a body, then nothing
			w.WriteHeader(http.StatusOK)
			w.Write([]byte(`{"status_requ`))
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
			case <-release:
			}
		case "/may-i-run/5e0000000000000000000abc": // a slow body that keeps moving
			w.WriteHeader(http.StatusOK)
			for _, part := range []string{`{"may_`, `keep_`, `running"`, `: true`, `}`, ` `} {
				w.Write([]byte(part))
				w.(http.Flusher).Flush()
				time.Sleep(200 * time.Millisecond) // 1.2 s in all, more than any limit
			}
		}
	}))
	defer srv.Close()
	m := testManager(t, srv.URL, limits)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()

	if _, err := m.fetchTask(ctx); err == nil || !strings.Contains(err.Error(), "timeout awaiting response headers") {
		t.Errorf("fetchTask from a Manager that never answers: %v, want a response-header timeout", err)
	}
	if _, err := m.statusChange(ctx); !errors.Is(err, errStalled) {
		t.Errorf("statusChange from a Manager that stops mid-body: %v, want %v", err, errStalled)
	}
	a, err := m.mayIRun(ctx, "5e0000000000000000000abc")
	if err != nil || a.MayKeepRunning == nil || !*a.MayKeepRunning {
		t.Errorf("mayIRun over a slow but moving body: %+v, %v", a, err)
	}
	if ctx.Err() != nil {
		t.Errorf("the requests were bounded only by the test's deadline")
	}
}

// TestHTTPTimeoutUpload: a Manager that stops reading a large update is
// given up on after the idle timeout.
func TestHTTPTimeoutUpload(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // ends when the listener is closed
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // accepted, never read
		}
	}()
	m := testManager(t, "http://"+ln.Addr().String(), httpTimeouts{connect: time.Second, header: time.Second, idle: 500 * time.Millisecond})
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	body := []byte(`{"log": "` + strings.Repeat("x", 64<<20) + `"}`) // more than any socket buffer
	_, err = m.postUpdate(ctx, taskID(1), body)
	if !errors.Is(err, errStalled) || ctx.Err() != nil {
		t.Errorf("postUpdate to a Manager that does not read: %v, want %v", err, errStalled)
	}
}

// TestHangingTaskFetchIsRetried: a Manager that accepts POST /task and
// never answers costs the response timeout; the worker then fetches again.
func TestHangingTaskFetchIsRetried(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "http_response_timeout_seconds = 1").registered()
	hung := make(chan struct{})
	f.fm.set(func(fm *fakeManager) {
		first := true
		fm.hijack = func(w http.ResponseWriter, r *http.Request) bool {
			if r.URL.Path != "/task" || !first {
				return false
			}
			first = false
			close(hung)
			<-r.Context().Done() // until the worker gives up
			return true
		}
	})
	p := f.start()
	<-hung
	waitFor(t, 15*time.Second, "a second POST /task", func() bool { return f.fm.count("POST /task") >= 2 })
	p.stop()
	if !strings.Contains(p.out.String(), "timeout awaiting response headers") {
		t.Errorf("the log does not say why the fetch failed:\n%s", p.out.String())
	}
}
