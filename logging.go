package main

// Logging: key=value lines on stderr (with sd-daemon priority prefixes when
// stderr is the journal), plus the log files of the Python worker's logging
// sections (spec/python-worker.md §1.4), read as Python's
// logging.config.fileConfig reads them. Formatters are not used: every file
// gets the same key=value lines as stderr.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Python's level numbers map linearly onto slog's: DEBUG 10 → -4,
// INFO 20 → 0, WARNING 30 → 4, ERROR 40 → 8, CRITICAL 50 → 12.
const (
	levelCritical = slog.LevelError + 4
	levelNotSet   = slog.LevelDebug - 4 // Python's NOTSET (0): everything passes
)

// logConfig is what the logging sections ask for.
type logConfig struct {
	set      bool         // the files have logging sections
	level    slog.Level   // effective level of the flamenco_worker logger, if set
	console  slog.Level   // the attached StreamHandler's own level, if set
	files    []fileConfig // attached file handlers
	warnings []string     // parts that are not honoured, located file:line
}

// fileConfig is one file handler.
type fileConfig struct {
	name        string     // the handler's key in [handlers]
	path        string     // absolute, as Python's FileHandler makes it
	level       slog.Level // the handler's own level (levelNotSet when unset)
	truncate    bool       // mode 'w'
	watched     bool       // WatchedFileHandler: reopen when the file is moved away
	maxBytes    int64      // RotatingFileHandler
	backupCount int        // rotated files kept (0: all, or no size rotation)
	when        string     // TimedRotatingFileHandler: S, M, H, D, MIDNIGHT, W0..W6; "" = none
	interval    int
	utc         bool
}

// handlerParams are the constructor parameters of the supported classes,
// for binding args and kwargs.
var handlerParams = map[string][]string{
	"StreamHandler":            {"stream"},
	"NullHandler":              {},
	"FileHandler":              {"filename", "mode", "encoding", "delay", "errors"},
	"WatchedFileHandler":       {"filename", "mode", "encoding", "delay", "errors"},
	"RotatingFileHandler":      {"filename", "mode", "maxBytes", "backupCount", "encoding", "delay", "errors"},
	"TimedRotatingFileHandler": {"filename", "when", "interval", "backupCount", "encoding", "delay", "utc", "atTime", "errors"},
}

// logParser reads the logging sections of the merged config files.
type logParser struct {
	f *iniFile
	c logConfig
}

// parseLogging reads [loggers], [logger_root], the logger whose qualname is
// flamenco_worker, and the handlers attached to them. Nothing here is
// fatal (Python would crash on most of it): what cannot be honoured becomes
// a warning and the worker logs to stderr as before.
func parseLogging(f *iniFile) logConfig {
	p := &logParser{f: f}
	root, worker := p.loggers()
	if root == "" && worker == "" {
		return logConfig{}
	}
	p.c.set, p.c.console = true, levelNotSet
	p.c.level = p.level(root, slog.LevelWarn) // Python's root logger default
	if lvl := p.level(worker, levelNotSet); lvl != levelNotSet {
		p.c.level = lvl // the more specific logger wins; NOTSET defers to root
	}
	var names []string
	refs := map[string]*iniEntry{} // the handlers= entry naming each
	add := func(logger string) {
		v, e := p.get(logger, "handlers")
		for _, n := range splitList(v) {
			if refs[n] == nil { // Python would write such a line twice
				names, refs[n] = append(names, n), e
			}
		}
	}
	add(worker)
	if worker == "" || p.propagates(worker) {
		add(root)
	}
	for _, n := range names {
		p.handler(n, refs[n])
	}
	return p.c
}

// loggers finds the sections of the root and flamenco_worker loggers via
// [loggers] keys, as fileConfig does; without it, by their usual names.
func (p *logParser) loggers() (root, worker string) {
	keys, e := p.get("loggers", "keys")
	if e == nil {
		keys = "root,flamenco_worker"
	}
	for _, k := range splitList(keys) {
		switch sect := "logger_" + k; {
		case p.f.byName[sect] == nil:
			if e != nil {
				p.warnf(e, "[loggers] lists %q but there is no [%s] section; it is ignored", k, sect)
			}
		case k == "root":
			root = sect
		case e == nil || p.qualname(sect, k) == "flamenco_worker":
			worker = sect
		}
	}
	return root, worker
}

// qualname is a logger's qualname, by default its key in [loggers].
func (p *logParser) qualname(sect, key string) string {
	if q, e := p.get(sect, "qualname"); e != nil {
		return q
	}
	return key
}

// get looks key up in section, then DEFAULT, and expands it; a bad
// reference is a warning and an empty value. The entry is nil if unset.
func (p *logParser) get(section, key string) (string, *iniEntry) {
	e := p.f.lookup(section, key)
	if e == nil {
		return "", nil
	}
	v, err := p.f.expand(section, e)
	if err != nil {
		p.c.warnings = append(p.c.warnings, err.Error()+"; ignored")
		return "", e
	}
	return strings.TrimSpace(v), e
}

func (p *logParser) warnf(e *iniEntry, format string, args ...any) {
	p.c.warnings = append(p.c.warnings, e.errorf(format, args...).Error())
}

// level reads a section's level: a Python level name (also lower case) or
// number; def if it has no valid one.
func (p *logParser) level(section string, def slog.Level) slog.Level {
	v, e := p.get(section, "level")
	names := map[string]int{"CRITICAL": 50, "FATAL": 50, "ERROR": 40, "WARNING": 30, "WARN": 30, "INFO": 20, "DEBUG": 10, "NOTSET": 0}
	n, ok := names[strings.ToUpper(v)]
	if !ok {
		var err error
		n, err = strconv.Atoi(v)
		ok = err == nil && n >= 0
	}
	switch {
	case e == nil:
		return def
	case !ok:
		p.warnf(e, "[%s] level: unknown level %s (want DEBUG, INFO, WARNING, ERROR or CRITICAL); ignored", section, clip(v))
		return def
	case n == 0:
		return levelNotSet
	}
	return slog.Level((n - 20) * 2 / 5)
}

// propagates reads a logger's propagate key (default 1).
func (p *logParser) propagates(section string) bool {
	v, e := p.get(section, "propagate")
	n, err := strconv.Atoi(v)
	if e != nil && err != nil {
		p.warnf(e, "[%s] propagate: want 0 or 1, not %s; using 1", section, clip(e.value))
	}
	return e == nil || err != nil || n != 0
}

// splitList splits a comma-separated list, dropping empty items.
func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// handler reads [handler_<name>]; ref is the handlers= entry naming it.
func (p *logParser) handler(name string, ref *iniEntry) {
	sect := "handler_" + name
	class, ce := p.get(sect, "class") // nil when there is no such section
	switch base := strings.TrimPrefix(strings.TrimPrefix(class, "logging."), "handlers."); {
	case p.f.byName[sect] == nil:
		p.warnf(ref, "handler %q has no [%s] section; ignored", name, sect)
	case ce == nil:
		p.warnf(ref, "[%s] has no class; ignored", sect)
	case handlerParams[base] == nil:
		p.warnf(ce, "[%s] class %s is not supported; the worker does not log to this handler", sect, class)
	default:
		if err := p.attach(name, base, sect); err != nil {
			p.warnf(ce, "[%s] %s: %v; the worker does not log to this handler", sect, class, err)
		}
	}
}

// attach adds the handler of class base to the config.
func (p *logParser) attach(name, base, sect string) error {
	args, err := p.handlerArgs(sect, handlerParams[base])
	if err != nil {
		return err
	}
	level := p.level(sect, levelNotSet)
	switch base {
	case "NullHandler":
	case "StreamHandler": // sys.stderr (the default) or sys.stdout: both are the worker's stderr
		p.c.console = max(p.c.console, level)
	default:
		fc, err := newFileConfig(name, base, args)
		fc.level = level
		if err == nil {
			p.c.files = append(p.c.files, fc)
		}
		return err
	}
	return nil
}

// handlerArgs parses args (a tuple) and kwargs (a dict) and binds them to
// the constructor's parameters, as a Python call would.
func (p *logParser) handlerArgs(sect string, params []string) (map[string]any, error) {
	bound := map[string]any{}
	if v, e := p.get(sect, "args"); e != nil {
		lit, err := parsePyLiteral(v)
		if err != nil {
			return nil, fmt.Errorf("args: %w", err)
		}
		items, ok := lit.([]any)
		if !ok {
			items = []any{lit} // ('x') is not a tuple in Python; take it as one
		}
		if len(items) > len(params) {
			return nil, fmt.Errorf("args: takes at most %d arguments, got %d", len(params), len(items))
		}
		for i, it := range items {
			bound[params[i]] = it
		}
	}
	if v, e := p.get(sect, "kwargs"); e != nil {
		lit, err := parsePyLiteral(v)
		kw, ok := lit.(map[string]any)
		if err != nil {
			return nil, fmt.Errorf("kwargs: %w", err)
		}
		if !ok {
			return nil, errors.New("kwargs: want a {'name': value} dict")
		}
		for _, k := range slices.Sorted(maps.Keys(kw)) {
			if !slices.Contains(params, k) {
				return nil, fmt.Errorf("kwargs: unexpected keyword argument %q", k)
			}
			if _, dup := bound[k]; dup {
				return nil, fmt.Errorf("kwargs: got multiple values for argument %q", k)
			}
			bound[k] = kw[k]
		}
	}
	return bound, nil
}

// validWhen matches TimedRotatingFileHandler's when (upper-cased).
var validWhen = regexp.MustCompile(`^(S|M|H|D|MIDNIGHT|W[0-6])$`)

// newFileConfig checks a file handler's arguments, reporting the first
// that is wrong.
func newFileConfig(name, class string, args map[string]any) (fileConfig, error) {
	a := &pyArgs{m: args}
	filename := pyArg(a, "filename", "", "a string")
	a.fail(filename == "", "no filename in args")
	mode := pyArg(a, "mode", "a", "a string")
	a.fail(!strings.HasPrefix(mode, "a") && !strings.HasPrefix(mode, "w"), "mode %q is not supported (want 'a' or 'w')", mode)
	fc := fileConfig{name: name, path: absPath(filename), watched: class == "WatchedFileHandler", interval: 1,
		maxBytes: pyArg(a, "maxBytes", int64(0), "an integer")}
	fc.truncate = strings.HasPrefix(mode, "w") && fc.maxBytes <= 0 // RotatingFileHandler appends
	fc.backupCount = int(max(pyArg(a, "backupCount", int64(0), "an integer"), 0))
	if class == "TimedRotatingFileHandler" {
		when := pyArg(a, "when", "h", "a string")
		fc.when = strings.ToUpper(when)
		a.fail(!validWhen.MatchString(fc.when), "invalid rollover interval %q (want S, M, H, D, midnight or W0-W6)", when)
		fc.interval = int(pyArg(a, "interval", int64(1), "an integer"))
		a.fail(fc.interval < 1, "interval %d: want 1 or more", fc.interval)
		if n, ok := args["utc"].(int64); ok {
			args["utc"] = n != 0
		}
		fc.utc = pyArg(a, "utc", false, "True or False")
		a.fail(args["atTime"] != nil, "atTime is not supported")
	}
	return fc, a.err
}

// pyArgs are bound constructor arguments, and the first error found in them.
type pyArgs struct {
	m   map[string]any
	err error
}

// pyArg reads argument name as a T: def when it is absent or None.
func pyArg[T any](a *pyArgs, name string, def T, want string) T {
	if a.m[name] == nil {
		return def
	}
	v, ok := a.m[name].(T)
	a.fail(!ok, "%s: want %s, not %v", name, want, a.m[name])
	return v
}

func (a *pyArgs) fail(bad bool, format string, args ...any) {
	if bad && a.err == nil {
		a.err = fmt.Errorf(format, args...)
	}
}

// ---------------------------------------------------------------------------
// Python literals (the args and kwargs of a handler).

// pyName is a name such as sys.stderr, or a call such as
// datetime.time(1, 0), kept as text: nothing here evaluates it.
type pyName string

// pyToken is one token after blanks (group 1): a string with its prefix
// (2, 3), a number (4), an unterminated string's quote, a name (5), or any
// other character.
var pyToken = regexp.MustCompile(`(?s)\s*((?i:(rb|br|[rub])?)('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")|([-+.0-9](?:[eE][-+]|[0-9._a-fA-FxXoO])*)|(?i:rb|br|[rub])?['"]|([A-Za-z_][\w.]*)|\S)`)

// pyEscapes are the backslash escapes a log file name might use; Python
// keeps unknown ones as written.
var pyEscapes = strings.NewReplacer(`\\`, `\`, `\'`, `'`, `\"`, `"`, `\n`, "\n", `\t`, "\t", `\r`, "\r")

// pyTok is a token: kind is 's' for a string, '0' a number, 'a' a name,
// the character itself for punctuation, 0 at the end.
type pyTok struct {
	kind byte
	text string // a string's value; the token as written otherwise
	pos  int
}

// pyTokens splits s into tokens, the end token last.
func pyTokens(s string) []pyTok {
	var toks []pyTok
	for _, m := range pyToken.FindAllStringSubmatchIndex(s, -1) {
		t := pyTok{kind: s[m[3]-1], text: s[m[2]:m[3]], pos: m[2]} // r' is a quote
		switch {
		case m[6] >= 0:
			t.kind, t.text = 's', s[m[6]+1:m[7]-1]
			if !strings.ContainsAny(s[m[2]:m[6]], "rR") {
				t.text = pyEscapes.Replace(t.text)
			}
		case m[8] >= 0:
			t.kind = '0'
		case m[10] >= 0:
			t.kind = 'a'
		}
		toks = append(toks, t)
	}
	return append(toks, pyTok{pos: len(s)})
}

type pyParser struct {
	s    string
	toks []pyTok // what is left, the end token last
}

// parsePyLiteral reads a Python literal: strings, numbers, True, False,
// None, names, and tuples, lists and dicts of them. Tuples and lists
// become []any, dicts map[string]any, integers int64.
func parsePyLiteral(s string) (any, error) {
	p := &pyParser{s: s, toks: pyTokens(s)}
	v, err := p.value()
	if err == nil && p.toks[0].kind != 0 {
		return nil, fmt.Errorf("unexpected %s", clip(s[p.toks[0].pos:]))
	}
	return v, err
}

func (p *pyParser) next() pyTok {
	t := p.toks[0]
	if len(p.toks) > 1 {
		p.toks = p.toks[1:]
	}
	return t
}

func (p *pyParser) value() (any, error) {
	switch t := p.next(); t.kind {
	case 0:
		return nil, errors.New("unexpected end")
	case '(', '[', '{':
		return p.container(t.kind)
	case '\'', '"': // that starts no string
		return nil, errors.New("unterminated string")
	case 's':
		for p.toks[0].kind == 's' { // 'a' 'b' is 'ab'
			t.text += p.next().text
		}
		if k := p.toks[0].kind; k == '\'' || k == '"' {
			return nil, errors.New("unterminated string")
		}
		return t.text, nil
	case '0':
		if n, err := strconv.ParseInt(t.text, 0, 64); err == nil {
			return n, nil
		}
		if f, err := strconv.ParseFloat(strings.ReplaceAll(t.text, "_", ""), 64); err == nil {
			return f, nil
		}
		return nil, fmt.Errorf("bad number %s", clip(t.text))
	case 'a':
		if v, ok := map[string]any{"True": true, "False": false, "None": nil}[t.text]; ok {
			return v, nil
		}
		if p.toks[0].kind != '(' {
			return pyName(t.text), nil
		}
		p.next()
		if _, err := p.container('('); err != nil {
			return nil, err
		}
		return pyName(strings.TrimSpace(p.s[t.pos:p.toks[0].pos])), nil // a call
	default:
		return nil, fmt.Errorf("unexpected %s", clip(p.s[t.pos:]))
	}
}

// container reads the items of a tuple, list or dict after its opening
// bracket; (x) without a comma is just x.
func (p *pyParser) container(open byte) (any, error) {
	end := map[byte]byte{'(': ')', '[': ']', '{': '}'}[open]
	items, dict, comma := []any{}, map[string]any{}, false
	for p.toks[0].kind != end {
		v, err := p.value()
		if err != nil {
			return nil, err
		}
		if open == '{' {
			key, ok := v.(string)
			switch {
			case !ok:
				return nil, fmt.Errorf("dict key %v is not a string", v)
			case p.next().kind != ':':
				return nil, fmt.Errorf("expected ':' after %q", key)
			}
			if dict[key], err = p.value(); err != nil {
				return nil, err
			}
		}
		items = append(items, v)
		if comma = p.toks[0].kind == ','; !comma {
			break
		}
		p.next()
	}
	if t := p.next(); t.kind != end {
		return nil, fmt.Errorf("expected ',' or '%c' at %s", end, clip(p.s[t.pos:]))
	}
	switch {
	case open == '{':
		return dict, nil
	case open == '(' && len(items) == 1 && !comma:
		return items[0], nil
	}
	return items, nil
}

// ---------------------------------------------------------------------------
// Handlers.

// logSetup is the worker's logging: stderr, plus the configured files.
type logSetup struct {
	logger *slog.Logger
	files  []*logFile
}

// newLogSetup builds the logger: stderr at the configured level (debug
// with -d), each file at the higher of that and its handler's own level;
// now is the clock of timed rotation.
func newLogSetup(lc logConfig, stderr io.Writer, debug bool, now func() time.Time) *logSetup {
	level := slog.LevelInfo
	if lc.set {
		level = lc.level
	}
	errLevel := max(level, lc.console)
	if debug {
		level, errLevel = slog.LevelDebug, slog.LevelDebug
	}
	errHandler := newStderrHandler(stderr, errLevel, os.Getenv)
	report := slog.New(errHandler) // about the files, so to stderr only
	s := &logSetup{logger: report}
	hs := []slog.Handler{errHandler}
	for _, fc := range lc.files {
		lf := openLogFile(fc, now, report)
		s.files = append(s.files, lf)
		hs = append(hs, slog.NewTextHandler(lf, &slog.HandlerOptions{Level: max(level, fc.level)}))
	}
	if len(hs) > 1 {
		s.logger = slog.New(slog.NewMultiHandler(hs...))
	}
	for _, w := range lc.warnings {
		s.logger.Warn(w)
	}
	return s
}

// reopen reopens every log file (after logrotate moved it away, on SIGHUP).
func (s *logSetup) reopen() error {
	var errs []error
	for _, lf := range s.files {
		errs = append(errs, lf.call(lf.reopen))
	}
	return errors.Join(errs...)
}

// sync waits until every line logged so far is in the files (or dropped).
func (s *logSetup) sync() {
	for _, lf := range s.files {
		lf.call(func() error { return nil })
	}
}

// close writes what is queued and closes the files.
func (s *logSetup) close() {
	for _, lf := range s.files {
		lf.close()
	}
}

// newStderrHandler writes key=value lines to w; when w is the journal's
// stream (JOURNAL_STREAM), with priority prefixes and without time=.
func newStderrHandler(w io.Writer, level slog.Leveler, getenv func(string) string) slog.Handler {
	opts := &slog.HandlerOptions{Level: level}
	if onJournal(w, getenv("JOURNAL_STREAM")) {
		w = journalWriter{w}
		opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{} // journald stamps each line itself
			}
			return a
		}
	}
	return slog.NewTextHandler(w, opts)
}

// onJournal reports whether w is the stream JOURNAL_STREAM ("dev:inode")
// names, as sd_journal_stream_fd documents: systemd sets the variable for
// the unit, but a child may have another stderr.
func onJournal(w io.Writer, stream string) bool {
	if f, ok := w.(*os.File); ok {
		if info, err := f.Stat(); err == nil {
			st, ok := info.Sys().(*syscall.Stat_t)
			return ok && fmt.Sprintf("%d:%d", st.Dev, st.Ino) == stream
		}
	}
	return false
}

// journalWriter puts the sd-daemon priority of a line's level (its first
// field, without time=) before the line, in one Write so that lines cannot
// interleave.
type journalWriter struct{ w io.Writer }

func (j journalWriter) Write(b []byte) (int, error) {
	var l slog.Level
	word, _, _ := bytes.Cut(bytes.TrimPrefix(b, []byte("level=")), []byte(" "))
	l.UnmarshalText(word) // "ERROR+4" is critical
	prefix := "<7>"
	switch {
	case l >= levelCritical:
		prefix = "<2>"
	case l >= slog.LevelError:
		prefix = "<3>"
	case l >= slog.LevelWarn:
		prefix = "<4>"
	case l >= slog.LevelInfo:
		prefix = "<6>"
	}
	if _, err := j.w.Write(append([]byte(prefix), b...)); err != nil {
		return 0, err
	}
	return len(b), nil
}

// ---------------------------------------------------------------------------
// Log files.

const (
	logFileQueue = 4096            // lines waiting for the file before they are dropped
	logFileWait  = 5 * time.Second // longest wait for the writer to reopen
	logFileClose = 2 * time.Second // longest wait at exit for the last lines
)

// logFile is one file handler. Write only queues the line for the one
// goroutine that writes, rotates and reopens (not a mutex): a file system
// that hangs or is full must never block the worker's logging.
type logFile struct {
	cfg     fileConfig
	now     func() time.Time
	report  *slog.Logger // stderr only
	ops     chan func()  // lines to write and calls, in order; nil ends the writer
	done    chan struct{}
	stalled atomic.Bool // a line was dropped (reported once)

	// Owned by run.
	f          *os.File
	info       fs.FileInfo // of f, for WatchedFileHandler
	size       int64
	rolloverAt time.Time
}

// openLogFile opens the file (or reports why not: reopen tries again) and
// starts its writer.
func openLogFile(fc fileConfig, now func() time.Time, report *slog.Logger) *logFile {
	lf := &logFile{cfg: fc, now: now, report: report, ops: make(chan func(), logFileQueue), done: make(chan struct{})}
	start := now()
	if info, err := os.Stat(fc.path); err == nil && !fc.truncate {
		start = info.ModTime() // as Python: a file last written yesterday rotates at once
	}
	if fc.when != "" {
		lf.rolloverAt = lf.nextRollover(start)
	}
	if err := lf.open(fc.truncate); err != nil {
		report.Error(openFailed, "file", fc.path, "err", err)
	}
	go lf.run() // ends on close
	return lf
}

// Write queues a copy of one line (slog reuses b); it never blocks.
func (lf *logFile) Write(b []byte) (int, error) {
	line, at := slices.Clone(b), lf.now()
	select {
	case lf.ops <- func() { lf.write(line, at) }:
	default:
		if !lf.stalled.Swap(true) {
			lf.report.Error("the log file is not keeping up; lines for it are dropped", "file", lf.cfg.path)
		}
	}
	return len(b), nil
}

func (lf *logFile) run() {
	for op := <-lf.ops; op != nil; op = <-lf.ops {
		op()
	}
	lf.closeFile()
	close(lf.done)
}

// call runs op in the writer, after the lines queued before it.
func (lf *logFile) call(op func() error) error {
	reply, stuck := make(chan error, 1), time.After(logFileWait)
	select {
	case lf.ops <- func() { reply <- op() }:
		select {
		case err := <-reply:
			return err
		case <-stuck:
		}
	case <-stuck:
	}
	return fmt.Errorf("log file %s: the writer is stuck", lf.cfg.path)
}

// close ends the writer after the lines queued before, waiting a bounded
// time: a hung file system does not hold up the exit.
func (lf *logFile) close() {
	timeout := time.After(logFileClose)
	select {
	case lf.ops <- nil:
		select {
		case <-lf.done:
		case <-timeout:
		}
	case <-timeout:
	}
}

const openFailed = "cannot open the log file; it gets no lines until it is reopened (SIGHUP)"

func (lf *logFile) open(truncate bool) error {
	flags := os.O_WRONLY | os.O_CREATE | os.O_APPEND
	if truncate {
		flags |= os.O_TRUNC
	}
	f, err := os.OpenFile(lf.cfg.path, flags, 0o666)
	if err != nil {
		return err
	}
	info, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	lf.f, lf.info, lf.size = f, info, info.Size()
	return nil
}

func (lf *logFile) closeFile() {
	if lf.f != nil {
		lf.f.Close()
		lf.f = nil
	}
}

// reopen closes and opens the file by name, also after a write error.
func (lf *logFile) reopen() error {
	lf.closeFile()
	if err := lf.open(false); err != nil {
		return fmt.Errorf("reopen log file: %w", err)
	}
	lf.stalled.Store(false)
	return nil
}

// write writes one line, rotating first when it is time. After a write
// error the file gets nothing until reopen, so the error is reported once.
func (lf *logFile) write(line []byte, at time.Time) {
	if lf.cfg.watched {
		lf.checkMoved()
	}
	lf.rotateIfDue(len(line), at)
	if lf.f == nil {
		return
	}
	n, err := lf.f.Write(line)
	lf.size += int64(n)
	if err != nil {
		lf.report.Error("cannot write the log file; it gets no lines until it is reopened (SIGHUP)", "file", lf.cfg.path, "err", err)
		lf.closeFile()
	}
}

// checkMoved reopens the file when its name points elsewhere (Python's WatchedFileHandler).
func (lf *logFile) checkMoved() {
	info, err := os.Stat(lf.cfg.path)
	if lf.f != nil && err == nil && os.SameFile(info, lf.info) || lf.f == nil && err != nil {
		return // unmoved, or the name is gone and nothing was open
	}
	if err := lf.reopen(); err != nil {
		lf.report.Error("cannot reopen the log file", "file", lf.cfg.path, "err", err)
	}
}

func (lf *logFile) rotateIfDue(n int, now time.Time) {
	switch {
	case lf.cfg.when != "":
		if !now.Before(lf.rolloverAt) {
			lf.rotate(lf.timedName())
			lf.pruneTimed()
			lf.rolloverAt = lf.nextRollover(now)
		}
	case lf.cfg.maxBytes > 0 && lf.cfg.backupCount > 0 && lf.f != nil && lf.size > 0 && lf.size+int64(n) >= lf.cfg.maxBytes:
		for i := lf.cfg.backupCount - 1; i > 0; i-- { // name.1 becomes name.2 ..., the oldest falling off
			os.Rename(fmt.Sprintf("%s.%d", lf.cfg.path, i), fmt.Sprintf("%s.%d", lf.cfg.path, i+1))
		}
		lf.rotate(lf.cfg.path + ".1")
	}
}

// rotate renames the file to dst (replacing it) and opens a new one.
func (lf *logFile) rotate(dst string) {
	lf.closeFile()
	if err := os.Rename(lf.cfg.path, dst); err != nil && !errors.Is(err, fs.ErrNotExist) {
		lf.report.Warn("cannot rotate the log file", "file", lf.cfg.path, "err", err)
	}
	if err := lf.open(false); err != nil {
		lf.report.Error(openFailed, "file", lf.cfg.path, "err", err)
	}
}

func (lf *logFile) loc() *time.Location {
	if lf.cfg.utc {
		return time.UTC
	}
	return time.Local
}

// timedUnits are the periods of S, M, H and D, and the suffixes of rotated
// names (strftime in Python); MIDNIGHT and W0-W6 use D's.
var timedUnits = map[string]struct {
	step   time.Duration
	layout string
}{"S": {time.Second, "2006-01-02_15-04-05"}, "M": {time.Minute, "2006-01-02_15-04"}, "H": {time.Hour, "2006-01-02_15"}, "D": {24 * time.Hour, "2006-01-02"}}

func (lf *logFile) step() time.Duration {
	return timedUnits[lf.cfg.when].step * time.Duration(lf.cfg.interval)
}

func (lf *logFile) layout() string {
	if len(lf.cfg.when) > 1 {
		return timedUnits["D"].layout
	}
	return timedUnits[lf.cfg.when].layout
}

// nextRollover is TimedRotatingFileHandler.computeRollover: the next
// midnight (for W0-W6 the midnight that ends that weekday), or t plus the
// interval. interval is ignored for midnight and W0-W6.
func (lf *logFile) nextRollover(t time.Time) time.Time {
	t = t.In(lf.loc())
	midnight := time.Date(t.Year(), t.Month(), t.Day()+1, 0, 0, 0, 0, lf.loc())
	switch w := lf.cfg.when; {
	case w == "MIDNIGHT":
		return midnight
	case w[0] == 'W':
		day := (int(t.Weekday()) + 6) % 7 // Monday is 0, as in Python
		return midnight.AddDate(0, 0, (int(w[1]-'0')-day+7)%7)
	}
	return t.Add(lf.step())
}

// timedName names the rotated file after the start of the period that
// ends at rolloverAt: name.2026-12-01 for the day that just ended.
func (lf *logFile) timedName() string {
	start := lf.rolloverAt.In(lf.loc())
	switch w := lf.cfg.when; {
	case w == "MIDNIGHT":
		start = start.AddDate(0, 0, -1)
	case w[0] == 'W':
		start = start.AddDate(0, 0, -7)
	default:
		start = start.Add(-lf.step())
	}
	return lf.cfg.path + "." + start.Format(lf.layout())
}

// pruneTimed deletes the oldest rotated files beyond backupCount: those
// whose suffix has digits where the layout has them, and maybe an
// extension, as Python's extMatch.
func (lf *logFile) pruneTimed() {
	if lf.cfg.backupCount <= 0 {
		return
	}
	dir, base := filepath.Split(lf.cfg.path)
	suffix := regexp.MustCompile(`[0-9]`).ReplaceAllLiteralString(lf.layout(), `[0-9]`)
	re := regexp.MustCompile(`^` + regexp.QuoteMeta(base) + `\.` + suffix + `(\.\w+)?$`)
	entries, _ := os.ReadDir(dir)
	var old []string
	for _, e := range entries {
		if re.MatchString(e.Name()) {
			old = append(old, e.Name())
		}
	}
	for _, name := range old[:max(len(old)-lf.cfg.backupCount, 0)] { // ReadDir sorts by name
		os.Remove(filepath.Join(dir, name))
	}
}
