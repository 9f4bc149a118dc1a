package main

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// shippedLogging is the logging part of the Python worker's shipped
// flamenco-worker.cfg (spec/python-worker.md §1.4).
const shippedLogging = `
[loggers]
keys = root,flamenco_worker

[logger_root]
level = WARNING
handlers = console,file

[logger_flamenco_worker]
level = INFO
qualname = flamenco_worker
handlers = console,file
propagate = 0

[handlers]
keys = console,file

[handler_console]
class = logging.StreamHandler
formatter = flamenco
args = (sys.stderr,)

[handler_file]
class = logging.handlers.TimedRotatingFileHandler
formatter = flamenco
# (filename, when, interval, backupCount, encoding, delay, utc)
args = ('flamenco-worker.log', 'midnight', 1, 7, 'utf8', True, True)

[formatters]
keys = flamenco

[formatter_flamenco]
format = %(asctime)-15s %(levelname)8s %(name)s %(message)s
`

// loggingOf parses text as a config file and returns its logging setup.
func loggingOf(t *testing.T, text string) logConfig {
	t.Helper()
	f, err := parseINI(strings.NewReader(text), "test.cfg")
	if err != nil {
		t.Fatal(err)
	}
	return parseLogging(f)
}

// loggers is [loggers] with root and, if workerLevel is set, flamenco_worker.
func loggers(rootLevel, workerLevel, handlers string) string {
	keys := "root"
	if workerLevel != "" {
		keys += ",flamenco_worker"
	}
	s := "[loggers]\nkeys = " + keys + "\n[logger_root]\nlevel = " + rootLevel + "\nhandlers = " + handlers + "\n"
	if workerLevel != "" {
		s += "[logger_flamenco_worker]\nqualname = flamenco_worker\npropagate = 0\nhandlers = " + handlers + "\nlevel = " + workerLevel + "\n"
	}
	return s
}

func TestLoggingSections(t *testing.T) {
	abs := func(p string) string { return absPath(p) }
	tests := []struct {
		name     string
		text     string
		want     logConfig
		warnings []string // regexps, in order
	}{
		{name: "none", text: "[flamenco-worker]\n", want: logConfig{}},
		{name: "shipped", text: shippedLogging, want: logConfig{set: true, level: slog.LevelInfo, console: levelNotSet,
			files: []fileConfig{{name: "file", path: abs("flamenco-worker.log"), level: levelNotSet, when: "MIDNIGHT", interval: 1, backupCount: 7, utc: true}}}},
		{name: "root only", text: loggers("DEBUG", "", ""), want: logConfig{set: true, level: slog.LevelDebug, console: levelNotSet}},
		{name: "worker wins", text: loggers("DEBUG", "ERROR", ""), want: logConfig{set: true, level: slog.LevelError, console: levelNotSet}},
		{name: "worker NOTSET defers to root", text: loggers("warning", "NOTSET", ""), want: logConfig{set: true, level: slog.LevelWarn, console: levelNotSet}},
		{name: "numeric and CRITICAL", text: loggers("15", "CRITICAL", ""), want: logConfig{set: true, level: levelCritical, console: levelNotSet}},
		{name: "numeric", text: loggers("15", "", ""), want: logConfig{set: true, level: -2, console: levelNotSet}},
		{name: "bad level", text: loggers("LOUD", "", ""), want: logConfig{set: true, level: slog.LevelWarn, console: levelNotSet},
			warnings: []string{`^test.cfg:4: \[logger_root\] level: unknown level "LOUD"`}},
		{name: "no [loggers], sections by name", text: "[logger_flamenco_worker]\nlevel = DEBUG\n", want: logConfig{set: true, level: slog.LevelDebug, console: levelNotSet}},
		{name: "FileHandler, kwargs, handler level, console level", text: loggers("INFO", "", "con, f") + `
[handlers]
keys = con,f
[handler_con]
class = StreamHandler
level = ERROR
[handler_f]
class = logging.FileHandler
args = ('/var/log/fw.log',)
kwargs = {'mode': 'w', 'encoding': 'utf8'}
level = WARNING
`, want: logConfig{set: true, level: slog.LevelInfo, console: slog.LevelError,
			files: []fileConfig{{name: "f", path: "/var/log/fw.log", level: slog.LevelWarn, truncate: true, interval: 1}}}},
		{name: "RotatingFileHandler positional", text: loggers("INFO", "", "r") + `
[handler_r]
class = handlers.RotatingFileHandler
args = ("r.log", 'a', 1_000, 3)
`, want: logConfig{set: true, level: slog.LevelInfo, console: levelNotSet,
			files: []fileConfig{{name: "r", path: abs("r.log"), level: levelNotSet, maxBytes: 1000, backupCount: 3, interval: 1}}}},
		{name: "Timed keywords, interpolation", text: "[DEFAULT]\ndir = /logs\n" + loggers("INFO", "", "t") + `
[handler_t]
class = logging.handlers.TimedRotatingFileHandler
args = ('${dir}/t.log',)
kwargs = {"when": "H", "interval": 6, "backupCount": 2}
`, want: logConfig{set: true, level: slog.LevelInfo, console: levelNotSet,
			files: []fileConfig{{name: "t", path: "/logs/t.log", level: levelNotSet, when: "H", interval: 6, backupCount: 2}}}},
		{name: "root propagation and dedup", text: `[loggers]
keys = root,fw
[logger_root]
level = INFO
handlers = a
[logger_fw]
qualname = flamenco_worker
handlers = a,b
[handler_a]
class = FileHandler
args = ('a.log',)
[handler_b]
class = logging.handlers.WatchedFileHandler
args = ('b.log',)
`, want: logConfig{set: true, level: slog.LevelInfo, console: levelNotSet, files: []fileConfig{
			{name: "a", path: abs("a.log"), level: levelNotSet, interval: 1},
			{name: "b", path: abs("b.log"), level: levelNotSet, watched: true, interval: 1}}}},
		{name: "unsupported and broken handlers", text: loggers("INFO", "", "mail,nofile,gone,call,when") + `
[handler_mail]
class = logging.handlers.SMTPHandler
args = ('localhost', 'fw@example.com', ['admin@example.com'], 'Flamenco')
[handler_nofile]
class = FileHandler
args = ()
[handler_call]
class = FileHandler
args = (os.path.expanduser('~/fw.log'),)
[handler_when]
class = logging.handlers.TimedRotatingFileHandler
args = ('w.log', 'fortnightly')
`, want: logConfig{set: true, level: slog.LevelInfo, console: levelNotSet},
			warnings: []string{
				`^test.cfg:8: \[handler_mail\] class logging.handlers.SMTPHandler is not supported; the worker does not log to this handler$`,
				`^test.cfg:11: \[handler_nofile\] FileHandler: no filename in args`,
				`^test.cfg:5: handler "gone" has no \[handler_gone\] section`,
				`^test.cfg:14: \[handler_call\] FileHandler: filename: want a string, not os.path.expanduser\('~/fw.log'\)`,
				`^test.cfg:17: \[handler_when\] .*invalid rollover interval "fortnightly"`,
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := loggingOf(t, tt.text)
			warnings := got.warnings
			got.warnings = nil
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("parseLogging =\n%+v\nwant\n%+v", got, tt.want)
			}
			if len(warnings) != len(tt.warnings) {
				t.Fatalf("warnings = %q, want %d matching %q", warnings, len(tt.warnings), tt.warnings)
			}
			for i, re := range tt.warnings {
				if !regexp.MustCompile(re).MatchString(warnings[i]) {
					t.Errorf("warning %d = %q, want a match for %q", i, warnings[i], re)
				}
			}
		})
	}
}

func TestParsePyLiteral(t *testing.T) {
	tests := []struct {
		in   string
		want any
	}{
		{`('flamenco-worker.log', 'midnight', 1, 7, 'utf8', True, True)`, []any{"flamenco-worker.log", "midnight", int64(1), int64(7), "utf8", true, true}},
		{`(sys.stderr,)`, []any{pyName("sys.stderr")}},
		{`()`, []any{}},
		{` ( "a" 'b', None, -3, 0x10, 2.5, r'\n', '\'q\\' ) `, []any{"ab", nil, int64(-3), int64(16), 2.5, `\n`, `'q\`}},
		{`('x')`, "x"},
		{`{'when': 'D', "backupCount": 3,}`, map[string]any{"when": "D", "backupCount": int64(3)}},
		{`(datetime.time(1, 30), [1, 2])`, []any{pyName("datetime.time(1, 30)"), []any{int64(1), int64(2)}}},
	}
	for _, tt := range tests {
		got, err := parsePyLiteral(tt.in)
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("parsePyLiteral(%q) = %#v, %v; want %#v", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{`('a'`, `'open`, `(1 2)`, `{1: 2}`, `(1,) x`, `@`} {
		if got, err := parsePyLiteral(bad); err == nil {
			t.Errorf("parsePyLiteral(%q) = %#v, want an error", bad, got)
		}
	}
}

// fakeClock is a settable clock (timed rotation, the activity throttle).
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

// logSetupFor builds a logSetup with one file handler, its stderr in buf.
func logSetupFor(t *testing.T, fc fileConfig, clock func() time.Time) (*logSetup, *lockedBuffer) {
	t.Helper()
	if fc.interval == 0 {
		fc.interval = 1
	}
	var stderr lockedBuffer
	s := newLogSetup(logConfig{set: true, level: slog.LevelInfo, console: levelNotSet, files: []fileConfig{fc}}, &stderr, false, clock)
	t.Cleanup(s.close)
	return s, &stderr
}

// dirFiles lists the names in dir with their line counts.
func dirFiles(t *testing.T, dir string) map[string]int {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		got[e.Name()] = bytes.Count(b, []byte("\n"))
	}
	return got
}

func TestLogFileMidnightRotation(t *testing.T) {
	dir := t.TempDir()
	clock := &fakeClock{t: time.Date(2026, 12, 1, 23, 59, 58, 0, time.UTC)}
	s, stderr := logSetupFor(t, fileConfig{path: filepath.Join(dir, "fw.log"), when: "MIDNIGHT", backupCount: 2, utc: true}, clock.now)
	logAt := func(at time.Time, msgs ...string) {
		clock.set(at)
		for _, m := range msgs {
			s.logger.Info(m)
		}
		s.sync()
	}
	logAt(clock.now(), "day 1 a", "day 1 b")
	logAt(time.Date(2026, 12, 1, 23, 59, 59, 999e6, time.UTC), "day 1 c")
	if got, want := dirFiles(t, dir), map[string]int{"fw.log": 3}; !reflect.DeepEqual(got, want) {
		t.Fatalf("before midnight: files = %v, want %v", got, want)
	}
	logAt(time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC), "day 2")
	logAt(time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC), "day 3 a", "day 3 b")
	want := map[string]int{"fw.log": 2, "fw.log.2026-12-01": 3, "fw.log.2026-12-02": 1}
	if got := dirFiles(t, dir); !reflect.DeepEqual(got, want) {
		t.Fatalf("after two midnights: files = %v, want %v", got, want)
	}
	logAt(time.Date(2026, 12, 5, 0, 0, 1, 0, time.UTC), "day 5")
	want = map[string]int{"fw.log": 1, "fw.log.2026-12-02": 1, "fw.log.2026-12-03": 2} // backupCount 2
	if got := dirFiles(t, dir); !reflect.DeepEqual(got, want) {
		t.Fatalf("after three midnights: files = %v, want %v", got, want)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "fw.log.2026-12-03")); !strings.Contains(string(b), `level=INFO msg="day 3 b"`) {
		t.Errorf("fw.log.2026-12-03 = %q, want the day 3 lines", b)
	}
	if stderr.String() == "" {
		t.Error("stderr got nothing; it should get every line too")
	}
}

func TestLogFileRotationFromMtime(t *testing.T) {
	// A log file last written yesterday is rotated at the first line, as
	// Python computes the first rollover from the file's mtime.
	dir := t.TempDir()
	path := filepath.Join(dir, "fw.log")
	writeFile(t, path, "yesterday\n")
	yesterday := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	if err := os.Chtimes(path, yesterday, yesterday); err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{t: time.Date(2026, 12, 2, 9, 0, 0, 0, time.UTC)}
	s, _ := logSetupFor(t, fileConfig{path: path, when: "MIDNIGHT", utc: true}, clock.now)
	s.logger.Info("today")
	s.sync()
	if got, want := dirFiles(t, dir), map[string]int{"fw.log": 1, "fw.log.2026-12-01": 1}; !reflect.DeepEqual(got, want) {
		t.Fatalf("files = %v, want %v", got, want)
	}
}

func TestLogFileHourlyRotation(t *testing.T) {
	dir := t.TempDir()
	start := time.Date(2026, 12, 1, 10, 30, 0, 0, time.UTC)
	clock := &fakeClock{t: start}
	s, _ := logSetupFor(t, fileConfig{path: filepath.Join(dir, "fw.log"), when: "H", interval: 2, utc: true}, clock.now)
	s.logger.Info("a")
	clock.set(start.Add(2 * time.Hour))
	s.logger.Info("b")
	s.sync()
	if got, want := dirFiles(t, dir), map[string]int{"fw.log": 1, "fw.log.2026-12-01_10": 1}; !reflect.DeepEqual(got, want) {
		t.Fatalf("files = %v, want %v", got, want)
	}
}

func TestLogFileSizeRotation(t *testing.T) {
	dir := t.TempDir()
	const maxBytes = 300
	s, _ := logSetupFor(t, fileConfig{path: filepath.Join(dir, "fw.log"), maxBytes: maxBytes, backupCount: 2}, time.Now)
	for i := range 20 {
		s.logger.Info("a line of about a hundred bytes", "i", i)
	}
	s.sync()
	got := dirFiles(t, dir)
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range got {
			if !yield(n) {
				return
			}
		}
	})
	if want := []string{"fw.log", "fw.log.1", "fw.log.2"}; !slices.Equal(names, want) {
		t.Fatalf("files = %v, want %v", got, want)
	}
	for _, n := range names {
		info, _ := os.Stat(filepath.Join(dir, n))
		if info.Size() >= maxBytes {
			t.Errorf("%s is %d bytes, want < maxBytes %d", n, info.Size(), maxBytes)
		}
	}
	last, _ := os.ReadFile(filepath.Join(dir, "fw.log"))
	older, _ := os.ReadFile(filepath.Join(dir, "fw.log.1"))
	if !strings.Contains(string(last), "i=19") || strings.Contains(string(older), "i=19") {
		t.Errorf("the newest line should be in fw.log only:\nfw.log:\n%s\nfw.log.1:\n%s", last, older)
	}
}

func TestLogFileReopen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "fw.log")
	s, _ := logSetupFor(t, fileConfig{path: path}, time.Now)
	s.logger.Info("before")
	s.sync()
	if err := os.Rename(path, path+".old"); err != nil { // as logrotate does
		t.Fatal(err)
	}
	s.logger.Info("after the move")
	if err := s.reopen(); err != nil {
		t.Fatal(err)
	}
	s.logger.Info("after reopen")
	s.sync()
	old, _ := os.ReadFile(path + ".old")
	cur, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("no new file after reopen: %v", err)
	}
	if !strings.Contains(string(old), "after the move") || strings.Contains(string(cur), "after the move") || !strings.Contains(string(cur), "after reopen") {
		t.Errorf("old file:\n%s\nnew file:\n%s\nwant the line before reopen in the old file, the one after in the new", old, cur)
	}
}

func TestLogFileWatched(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "fw.log")
	s, _ := logSetupFor(t, fileConfig{path: path, watched: true}, time.Now)
	s.logger.Info("before")
	s.sync()
	if err := os.Rename(path, path+".old"); err != nil {
		t.Fatal(err)
	}
	s.logger.Info("after the move")
	s.sync()
	if cur, _ := os.ReadFile(path); !strings.Contains(string(cur), "after the move") {
		t.Errorf("new file = %q, want the line after the move (WatchedFileHandler)", cur)
	}
}

func TestLogFileWriteErrorReportedOnce(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full")
	}
	s, stderr := logSetupFor(t, fileConfig{path: "/dev/full"}, time.Now)
	for i := range 3 {
		s.logger.Info("line", "i", i)
	}
	s.sync()
	out := stderr.String()
	if n := strings.Count(out, "cannot write the log file"); n != 1 || !strings.Contains(out, "no space left on device") {
		t.Errorf("stderr:\n%s\nwant the write error reported once", out)
	}
	if n := strings.Count(out, `msg=line`); n != 3 {
		t.Errorf("stderr has %d of the 3 lines, want all:\n%s", n, out)
	}
	if err := s.reopen(); err != nil { // retried on reopen
		t.Errorf("reopen: %v", err)
	}
	s.logger.Info("again")
	s.sync()
	if n := strings.Count(stderr.String(), "cannot write the log file"); n != 2 {
		t.Errorf("after reopen the failing file should be tried (and reported) again; stderr:\n%s", stderr.String())
	}
}

func TestLogSetupLevels(t *testing.T) {
	tests := []struct {
		name    string
		lc      logConfig
		debug   bool
		stderr  []string // levels that reach stderr
		logFile []string // levels that reach the file
	}{
		{"default", logConfig{}, false, []string{"INFO", "WARN", "ERROR"}, nil},
		{"default -d", logConfig{}, true, []string{"DEBUG", "INFO", "WARN", "ERROR"}, nil},
		{"WARNING", logConfig{set: true, level: slog.LevelWarn, console: levelNotSet}, false, []string{"WARN", "ERROR"}, nil},
		{"WARNING -d", logConfig{set: true, level: slog.LevelWarn, console: levelNotSet}, true, []string{"DEBUG", "INFO", "WARN", "ERROR"}, nil},
		{"console ERROR", logConfig{set: true, level: slog.LevelInfo, console: slog.LevelError}, false, []string{"ERROR"}, nil},
		{"file WARNING", logConfig{set: true, level: slog.LevelDebug, console: levelNotSet, files: []fileConfig{{level: slog.LevelWarn}}}, false,
			[]string{"DEBUG", "INFO", "WARN", "ERROR"}, []string{"WARN", "ERROR"}},
		{"file -d", logConfig{set: true, level: slog.LevelInfo, console: levelNotSet, files: []fileConfig{{level: levelNotSet}}}, true,
			[]string{"DEBUG", "INFO", "WARN", "ERROR"}, []string{"DEBUG", "INFO", "WARN", "ERROR"}},
	}
	levelRE := regexp.MustCompile(`level=(\w+)`)
	levels := func(text string) []string {
		var out []string
		for _, m := range levelRE.FindAllStringSubmatch(text, -1) {
			out = append(out, m[1])
		}
		return out
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "fw.log")
			for i := range tt.lc.files {
				tt.lc.files[i].path = path
			}
			var stderr lockedBuffer
			s := newLogSetup(tt.lc, &stderr, tt.debug, time.Now)
			s.logger.Debug("d")
			s.logger.With("k", "v").Info("i")
			s.logger.Warn("w")
			s.logger.Error("e")
			s.close()
			if got := levels(stderr.String()); !slices.Equal(got, tt.stderr) {
				t.Errorf("stderr levels = %v, want %v:\n%s", got, tt.stderr, stderr.String())
			}
			b, _ := os.ReadFile(path)
			if got := levels(string(b)); !slices.Equal(got, tt.logFile) {
				t.Errorf("file levels = %v, want %v:\n%s", got, tt.logFile, b)
			}
		})
	}
}

// statID returns "dev:inode" of a file, as systemd sets JOURNAL_STREAM.
func statID(t *testing.T, f *os.File) string {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

func TestJournalPrefixes(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	id := statID(t, f)
	other := strings.Split(id, ":")[0] + ":1"
	tests := []struct {
		stream string
		want   string // the lines, time= replaced by T
	}{
		{id, "<7>level=DEBUG msg=d k=v\n<6>level=INFO msg=i k=v\n<4>level=WARN msg=w k=v\n<3>level=ERROR msg=e k=v\n"},
		{other, "T level=DEBUG msg=d k=v\nT level=INFO msg=i k=v\nT level=WARN msg=w k=v\nT level=ERROR msg=e k=v\n"},
		{"", "T level=DEBUG msg=d k=v\nT level=INFO msg=i k=v\nT level=WARN msg=w k=v\nT level=ERROR msg=e k=v\n"},
		{"garbage", "T level=DEBUG msg=d k=v\nT level=INFO msg=i k=v\nT level=WARN msg=w k=v\nT level=ERROR msg=e k=v\n"},
	}
	timeRE := regexp.MustCompile(`(?m)^time=\S+`)
	for _, tt := range tests {
		if err := f.Truncate(0); err != nil {
			t.Fatal(err)
		}
		f.Seek(0, 0)
		l := slog.New(newStderrHandler(f, slog.LevelDebug, func(k string) string {
			if k == "JOURNAL_STREAM" {
				return tt.stream
			}
			return ""
		})).With("k", "v")
		l.Debug("d")
		l.Info("i")
		l.Warn("w")
		l.Error("e")
		b, _ := os.ReadFile(f.Name())
		if got := timeRE.ReplaceAllString(string(b), "T"); got != tt.want {
			t.Errorf("JOURNAL_STREAM=%q: stderr =\n%s\nwant\n%s", tt.stream, got, tt.want)
		}
	}
}

// startWithStderrFile runs the worker of f with its stderr on a real file,
// and extra environment.
func startWithStderrFile(t *testing.T, f *farm, stderr *os.File, env ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Dir = f.dir
	cmd.Env = append(os.Environ(), "FW_TEST_WORKER=1", "HOME="+f.home)
	cmd.Env = append(cmd.Env, env...)
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

func TestJournalPrefixesEndToEnd(t *testing.T) {
	t.Parallel()
	for _, match := range []bool{true, false} {
		t.Run(fmt.Sprintf("match=%v", match), func(t *testing.T) {
			f := newFarm(t, "").registered()
			errFile, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
			if err != nil {
				t.Fatal(err)
			}
			defer errFile.Close()
			stream := statID(t, errFile)
			if !match {
				stream = "0:0"
			}
			cmd := startWithStderrFile(t, f, errFile, "JOURNAL_STREAM="+stream)
			read := func() string { b, _ := os.ReadFile(errFile.Name()); return string(b) }
			waitFor(t, 10*time.Second, "signed on", func() bool { return strings.Contains(read(), "signed on") })
			cmd.Process.Signal(syscall.SIGTERM)
			if err := cmd.Wait(); err != nil {
				t.Fatalf("worker: %v\n%s", err, read())
			}
			out := read()
			hasPrefix := regexp.MustCompile(`(?m)^<6>level=INFO msg="starting Flamenco Worker"`).MatchString(out)
			hasTime := regexp.MustCompile(`(?m)^time=\S+ level=INFO msg="signed on at the Manager"`).MatchString(out)
			if hasPrefix != match || hasTime == match {
				t.Errorf("JOURNAL_STREAM matching=%v: stderr:\n%s\nwant <6> prefixes and no time= only when it matches", match, out)
			}
		})
	}
}

func TestLogFileEndToEnd(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		extra   string
		logFile string
		warning string // on stderr and in the file
	}{
		{name: "shipped Python config", extra: shippedLogging, logFile: "flamenco-worker.log"},
		{name: "FileHandler and an unsupported class", extra: `
[loggers]
keys = root
[logger_root]
level = DEBUG
handlers = f,mail
[handlers]
keys = f,mail
[handler_f]
class = FileHandler
args = ('logs/worker.log', 'a')
[handler_mail]
class = logging.handlers.SMTPHandler
args = ('localhost', 'fw@example.com', ['admin@example.com'], 'Flamenco')
`, logFile: "logs/worker.log", warning: `flamenco-worker.cfg:19: [handler_mail] class logging.handlers.SMTPHandler is not supported`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFarm(t, tt.extra).registered()
			os.Mkdir(filepath.Join(f.dir, "logs"), 0o755)
			p := f.start()
			path := filepath.Join(f.dir, tt.logFile)
			read := func() string { b, _ := os.ReadFile(path); return string(b) }
			waitFor(t, 10*time.Second, "the signed-on line in "+tt.logFile, func() bool {
				return strings.Contains(read(), `level=INFO msg="signed on at the Manager"`)
			})
			p.stop()
			out, logged := p.out.String(), read()
			if !strings.Contains(logged, `msg="Flamenco Worker is shut down"`) {
				t.Errorf("%s lacks the last line:\n%s", tt.logFile, logged)
			}
			if !strings.Contains(out, `msg="signed on at the Manager"`) {
				t.Errorf("stderr lacks the signed-on line:\n%s", out)
			}
			if tt.warning != "" && (strings.Count(out, tt.warning) != 1 || !strings.Contains(logged, tt.warning)) {
				t.Errorf("want one warning %q on stderr and in the file; stderr:\n%s", tt.warning, out)
			}
		})
	}
}

func TestTimedRotationSchedule(t *testing.T) {
	// 2026-12-02 is a Wednesday (Python's weekday 2).
	at := time.Date(2026, 12, 2, 15, 4, 5, 0, time.UTC)
	tests := []struct {
		when     string
		interval int
		next     time.Time
		name     string // the rotated file's suffix at next
	}{
		{"MIDNIGHT", 1, time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC), "2026-12-02"},
		{"MIDNIGHT", 3, time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC), "2026-12-02"},
		{"W2", 1, time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC), "2026-11-26"},
		{"W0", 1, time.Date(2026, 12, 8, 0, 0, 0, 0, time.UTC), "2026-12-01"},
		{"D", 2, at.Add(48 * time.Hour), "2026-12-02"},
		{"H", 1, at.Add(time.Hour), "2026-12-02_15"},
		{"M", 5, at.Add(5 * time.Minute), "2026-12-02_15-04"},
		{"S", 10, at.Add(10 * time.Second), "2026-12-02_15-04-05"},
	}
	for _, tt := range tests {
		lf := &logFile{cfg: fileConfig{path: "/l/fw.log", when: tt.when, interval: tt.interval, utc: true}}
		next := lf.nextRollover(at)
		lf.rolloverAt = next
		if name := lf.timedName(); !next.Equal(tt.next) || name != "/l/fw.log."+tt.name {
			t.Errorf("%s×%d at %v: next rollover %v, name %s; want %v, fw.log.%s", tt.when, tt.interval, at, next, name, tt.next, tt.name)
		}
	}
}
