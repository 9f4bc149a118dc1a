package main

// Logging: key=value lines on stderr (with sd-daemon priority prefixes when
// stderr is the journal), plus the log files of the Python worker's logging
// sections (spec/python-worker.md §1.4), read as Python's
// logging.config.fileConfig reads them. Formatters are not used: every file
// gets the same key=value lines as stderr.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
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
	p.c.level = slog.LevelWarn // Python's root logger default
	if lvl, ok := p.level(root); ok {
		p.c.level = lvl
	}
	if lvl, ok := p.level(worker); ok && lvl != levelNotSet {
		p.c.level = lvl // the more specific logger wins; NOTSET defers to root
	}
	var names []string
	var refs []*iniEntry
	add := func(logger string) {
		e := p.entry(logger, "handlers")
		for _, n := range splitList(p.value(logger, e)) {
			if !slices.Contains(names, n) { // Python would write such a line twice
				names, refs = append(names, n), append(refs, e)
			}
		}
	}
	if worker != "" {
		add(worker)
	}
	if worker == "" || p.propagates(worker) {
		add(root)
	}
	for i, n := range names {
		p.handler(n, refs[i])
	}
	return p.c
}

// loggers finds the root logger's section and the flamenco_worker one's:
// through [loggers] keys as fileConfig does, else by their usual names.
func (p *logParser) loggers() (root, worker string) {
	keys := p.entry("loggers", "keys")
	if keys == nil {
		if p.f.byName["logger_root"] != nil {
			root = "logger_root"
		}
		if p.f.byName["logger_flamenco_worker"] != nil {
			worker = "logger_flamenco_worker"
		}
		return root, worker
	}
	for _, k := range splitList(p.value("loggers", keys)) {
		sect := "logger_" + k
		if p.f.byName[sect] == nil {
			p.warnf(keys, "[loggers] lists %q but there is no [%s] section; it is ignored", k, sect)
			continue
		}
		if k == "root" {
			root = sect
			continue
		}
		qualname := k
		if e := p.entry(sect, "qualname"); e != nil {
			qualname = p.value(sect, e)
		}
		if qualname == "flamenco_worker" {
			worker = sect
		}
	}
	return root, worker
}

// entry looks key up in section, then DEFAULT, as configparser does.
func (p *logParser) entry(section, key string) *iniEntry {
	if section == "" {
		return nil
	}
	return p.f.lookup(section, key)
}

// value expands e (ExtendedInterpolation, as the Python worker's parser);
// a bad reference is a warning and an empty value.
func (p *logParser) value(section string, e *iniEntry) string {
	if e == nil {
		return ""
	}
	v, err := p.f.expand(section, e)
	if err != nil {
		p.c.warnings = append(p.c.warnings, err.Error()+"; ignored")
		return ""
	}
	return strings.TrimSpace(v)
}

func (p *logParser) warnf(e *iniEntry, format string, args ...any) {
	p.c.warnings = append(p.c.warnings, e.errorf(format, args...).Error())
}

// level reads a section's level key, if it has a valid one.
func (p *logParser) level(section string) (slog.Level, bool) {
	e := p.entry(section, "level")
	if e == nil {
		return 0, false
	}
	v := p.value(section, e)
	lvl, err := parsePyLevel(v)
	if err != nil {
		p.warnf(e, "[%s] level: %v; ignored", section, err)
		return 0, false
	}
	return lvl, true
}

// propagates reads a logger's propagate key (default 1).
func (p *logParser) propagates(section string) bool {
	e := p.entry(section, "propagate")
	if e == nil {
		return true
	}
	n, err := strconv.Atoi(p.value(section, e))
	if err != nil {
		p.warnf(e, "[%s] propagate: want 0 or 1, not %s; using 1", section, clip(e.value))
		return true
	}
	return n != 0
}

// parsePyLevel reads a Python level name (also lower case, and numbers).
func parsePyLevel(v string) (slog.Level, error) {
	names := map[string]int{"CRITICAL": 50, "FATAL": 50, "ERROR": 40, "WARNING": 30, "WARN": 30, "INFO": 20, "DEBUG": 10, "NOTSET": 0}
	n, ok := names[strings.ToUpper(v)]
	if !ok {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 0 {
			return 0, fmt.Errorf("unknown level %s (want DEBUG, INFO, WARNING, ERROR or CRITICAL)", clip(v))
		}
	}
	if n == 0 {
		return levelNotSet, nil
	}
	return slog.Level((n - 20) * 2 / 5), nil
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
	if p.f.byName[sect] == nil {
		p.warnf(ref, "handler %q has no [%s] section; ignored", name, sect)
		return
	}
	ce := p.entry(sect, "class")
	if ce == nil {
		p.warnf(ref, "[%s] has no class; ignored", sect)
		return
	}
	class := p.value(sect, ce)
	base := strings.TrimPrefix(strings.TrimPrefix(class, "logging."), "handlers.")
	params, ok := handlerParams[base]
	if !ok {
		p.warnf(ce, "[%s] class %s is not supported; the worker does not log to this handler", sect, class)
		return
	}
	args, err := p.handlerArgs(sect, params)
	if err != nil {
		p.warnf(ce, "[%s] %s: %v; the worker does not log to this handler", sect, class, err)
		return
	}
	level := levelNotSet
	if lvl, ok := p.level(sect); ok {
		level = lvl
	}
	switch base {
	case "NullHandler":
	case "StreamHandler":
		// sys.stderr (the default) or sys.stdout: both are the worker's stderr.
		p.c.console = max(p.c.console, level)
	default:
		fc, err := newFileConfig(name, base, args)
		if err != nil {
			p.warnf(ce, "[%s] %s: %v; the worker does not log to this handler", sect, class, err)
			return
		}
		fc.level = level
		p.c.files = append(p.c.files, fc)
	}
}

// handlerArgs parses args (a tuple) and kwargs (a dict) and binds them to
// the constructor's parameters, as a Python call would.
func (p *logParser) handlerArgs(sect string, params []string) (map[string]any, error) {
	bound := map[string]any{}
	if e := p.entry(sect, "args"); e != nil {
		v, err := parsePyLiteral(p.value(sect, e))
		if err != nil {
			return nil, fmt.Errorf("args: %w", err)
		}
		items, ok := v.([]any)
		if !ok {
			items = []any{v} // ('x') is not a tuple in Python; take it as one
		}
		if len(items) > len(params) {
			return nil, fmt.Errorf("args: takes at most %d arguments, got %d", len(params), len(items))
		}
		for i, it := range items {
			bound[params[i]] = it
		}
	}
	if e := p.entry(sect, "kwargs"); e != nil {
		v, err := parsePyLiteral(p.value(sect, e))
		kw, ok := v.(map[string]any)
		if err != nil {
			return nil, fmt.Errorf("kwargs: %w", err)
		}
		if !ok {
			return nil, errors.New("kwargs: want a {'name': value} dict")
		}
		for k, it := range kw {
			if !slices.Contains(params, k) {
				return nil, fmt.Errorf("kwargs: unexpected keyword argument %q", k)
			}
			if _, dup := bound[k]; dup {
				return nil, fmt.Errorf("kwargs: got multiple values for argument %q", k)
			}
			bound[k] = it
		}
	}
	return bound, nil
}

// newFileConfig checks a file handler's arguments.
func newFileConfig(name, class string, args map[string]any) (fileConfig, error) {
	fc := fileConfig{name: name, interval: 1}
	a := pyArgs(args)
	filename, err := a.str("filename", "")
	if err != nil {
		return fc, err
	}
	if filename == "" {
		return fc, errors.New("no filename in args")
	}
	fc.path = absPath(filename)
	fc.watched = class == "WatchedFileHandler"
	mode, err := a.str("mode", "a")
	if err != nil {
		return fc, err
	}
	switch {
	case strings.HasPrefix(mode, "w"):
		fc.truncate = true
	case !strings.HasPrefix(mode, "a"):
		return fc, fmt.Errorf("mode %q is not supported (want 'a' or 'w')", mode)
	}
	var n int64
	if n, err = a.int("maxBytes", 0); err != nil {
		return fc, err
	}
	fc.maxBytes = n
	if fc.maxBytes > 0 {
		fc.truncate = false // as Python's RotatingFileHandler
	}
	if n, err = a.int("backupCount", 0); err != nil {
		return fc, err
	}
	fc.backupCount = int(max(n, 0))
	if class == "TimedRotatingFileHandler" {
		if err := fc.timed(a); err != nil {
			return fc, err
		}
	}
	return fc, nil
}

// validWhen matches TimedRotatingFileHandler's when (upper-cased).
var validWhen = regexp.MustCompile(`^(S|M|H|D|MIDNIGHT|W[0-6])$`)

// timed reads TimedRotatingFileHandler's when, interval and utc.
func (fc *fileConfig) timed(a pyArgs) error {
	when, err := a.str("when", "h")
	if err != nil {
		return err
	}
	fc.when = strings.ToUpper(when)
	if !validWhen.MatchString(fc.when) {
		return fmt.Errorf("invalid rollover interval %q (want S, M, H, D, midnight or W0-W6)", when)
	}
	n, err := a.int("interval", 1)
	if err != nil {
		return err
	}
	if n < 1 {
		return fmt.Errorf("interval %d: want 1 or more", n)
	}
	fc.interval = int(n)
	if fc.utc, err = a.bool("utc", false); err != nil {
		return err
	}
	if v, ok := a["atTime"]; ok && v != nil {
		return errors.New("atTime is not supported")
	}
	return nil
}

// pyArgs are bound constructor arguments.
type pyArgs map[string]any

func (a pyArgs) str(name, def string) (string, error) {
	switch v := a[name].(type) {
	case nil:
		return def, nil
	case string:
		return v, nil
	default:
		return "", fmt.Errorf("%s: want a string, not %v", name, v)
	}
}

func (a pyArgs) int(name string, def int64) (int64, error) {
	switch v := a[name].(type) {
	case nil:
		return def, nil
	case int64:
		return v, nil
	default:
		return 0, fmt.Errorf("%s: want an integer, not %v", name, v)
	}
}

func (a pyArgs) bool(name string, def bool) (bool, error) {
	switch v := a[name].(type) {
	case nil:
		return def, nil
	case bool:
		return v, nil
	case int64:
		return v != 0, nil
	default:
		return false, fmt.Errorf("%s: want True or False, not %v", name, v)
	}
}

// ---------------------------------------------------------------------------
// Python literals (the args and kwargs of a handler).

// pyName is a name such as sys.stderr, or a call such as
// datetime.time(1, 0), kept as text: nothing here evaluates it.
type pyName string

type pyParser struct {
	s string
	i int
}

// parsePyLiteral reads a Python literal: strings, numbers, True, False,
// None, names, and tuples, lists and dicts of them. Tuples and lists
// become []any, dicts map[string]any, integers int64.
func parsePyLiteral(s string) (any, error) {
	p := &pyParser{s: s}
	v, err := p.value()
	if err != nil {
		return nil, err
	}
	if p.space(); p.i < len(p.s) {
		return nil, fmt.Errorf("unexpected %s", clip(p.s[p.i:]))
	}
	return v, nil
}

func (p *pyParser) space() {
	for p.i < len(p.s) && strings.IndexByte(" \t\r\n", p.s[p.i]) >= 0 {
		p.i++
	}
}

func (p *pyParser) peek() byte {
	if p.space(); p.i < len(p.s) {
		return p.s[p.i]
	}
	return 0
}

func (p *pyParser) value() (any, error) {
	switch c := p.peek(); {
	case c == 0:
		return nil, errors.New("unexpected end")
	case c == '(':
		return p.seq(')')
	case c == '[':
		return p.seq(']')
	case c == '{':
		return p.dict()
	case c == '\'' || c == '"':
		return p.str(false)
	case c == '-' || c == '+' || c == '.' || c >= '0' && c <= '9':
		return p.number()
	case c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
		return p.name()
	default:
		return nil, fmt.Errorf("unexpected %s", clip(p.s[p.i:]))
	}
}

// seq reads a tuple or list; (x) without a comma is just x.
func (p *pyParser) seq(end byte) (any, error) {
	p.i++
	items, comma := []any{}, false
	for {
		if p.peek() == end {
			p.i++
			break
		}
		v, err := p.value()
		if err != nil {
			return nil, err
		}
		items = append(items, v)
		switch p.peek() {
		case ',':
			p.i++
			comma = true
			continue
		case end:
			p.i++
		default:
			return nil, fmt.Errorf("expected ',' or '%c' at %s", end, clip(p.s[p.i:]))
		}
		break
	}
	if end == ')' && len(items) == 1 && !comma {
		return items[0], nil
	}
	return items, nil
}

func (p *pyParser) dict() (any, error) {
	p.i++
	d := map[string]any{}
	for p.peek() != '}' {
		k, err := p.value()
		if err != nil {
			return nil, err
		}
		key, ok := k.(string)
		if !ok {
			return nil, fmt.Errorf("dict key %v is not a string", k)
		}
		if p.peek() != ':' {
			return nil, fmt.Errorf("expected ':' after %q", key)
		}
		p.i++
		if d[key], err = p.value(); err != nil {
			return nil, err
		}
		if p.peek() == ',' {
			p.i++
		} else if p.peek() != '}' {
			return nil, fmt.Errorf("expected ',' or '}' at %s", clip(p.s[p.i:]))
		}
	}
	p.i++
	return d, nil
}

// pyEscapes are the backslash escapes a log file name might use.
var pyEscapes = [256]byte{'\\': '\\', '\'': '\'', '"': '"', 'n': '\n', 't': '\t', 'r': '\r'}

// str reads one or more adjacent string literals ('a' 'b' is 'ab').
func (p *pyParser) str(raw bool) (any, error) {
	var b strings.Builder
	for {
		q := p.s[p.i]
		p.i++
		for {
			if p.i >= len(p.s) {
				return nil, errors.New("unterminated string")
			}
			c := p.s[p.i]
			p.i++
			if c == q {
				break
			}
			if c != '\\' || p.i >= len(p.s) {
				b.WriteByte(c)
				continue
			}
			e := p.s[p.i]
			p.i++
			if r := pyEscapes[e]; r != 0 && !raw {
				b.WriteByte(r)
			} else {
				b.WriteByte('\\')
				b.WriteByte(e) // Python keeps unknown escapes as written
			}
		}
		if c := p.peek(); c != '\'' && c != '"' {
			return b.String(), nil
		}
		raw = false
	}
}

func (p *pyParser) number() (any, error) {
	start := p.i
	if c := p.s[p.i]; c == '-' || c == '+' {
		p.i++
	}
	for p.i < len(p.s) {
		c := p.s[p.i]
		exp := (c == '-' || c == '+') && strings.ContainsRune("eE", rune(p.s[p.i-1]))
		if !exp && !strings.ContainsRune("0123456789._eExXoObBabcdefABCDEF", rune(c)) {
			break
		}
		p.i++
	}
	text := p.s[start:p.i]
	if n, err := strconv.ParseInt(text, 0, 64); err == nil {
		return n, nil
	}
	if f, err := strconv.ParseFloat(strings.ReplaceAll(text, "_", ""), 64); err == nil {
		return f, nil
	}
	return nil, fmt.Errorf("bad number %s", clip(text))
}

func (p *pyParser) name() (any, error) {
	start := p.i
	for p.i < len(p.s) {
		c := p.s[p.i]
		if c != '_' && c != '.' && !(c >= 'a' && c <= 'z') && !(c >= 'A' && c <= 'Z') && !(c >= '0' && c <= '9') {
			break
		}
		p.i++
	}
	word := p.s[start:p.i]
	if p.i < len(p.s) && (p.s[p.i] == '\'' || p.s[p.i] == '"') {
		switch strings.ToLower(word) {
		case "r", "u", "b", "rb", "br":
			return p.str(strings.Contains(strings.ToLower(word), "r"))
		}
	}
	switch word {
	case "True":
		return true, nil
	case "False":
		return false, nil
	case "None":
		return nil, nil
	}
	if p.peek() == '(' {
		if _, err := p.seq(')'); err != nil {
			return nil, err
		}
		return pyName(p.s[start:p.i]), nil
	}
	return pyName(word), nil
}

// ---------------------------------------------------------------------------
// Handlers.

// logSetup is the worker's logging: stderr, plus the configured files.
type logSetup struct {
	logger *slog.Logger
	files  []*logFile
}

// newLogSetup builds the logger: stderr at the configured level (debug
// with -d), each file at the higher of that and its handler's own level.
// now is the clock of timed rotation.
func newLogSetup(lc logConfig, stderr io.Writer, debug bool, now func() time.Time) *logSetup {
	level := slog.LevelInfo
	if lc.set {
		level = lc.level
	}
	if debug {
		level = slog.LevelDebug
	}
	errLevel := max(level, lc.console)
	if debug {
		errLevel = slog.LevelDebug
	}
	errHandler := newStderrHandler(stderr, errLevel, os.Getenv)
	report := slog.New(errHandler) // about the files, so to stderr only
	s := &logSetup{}
	hs := []slog.Handler{errHandler}
	for _, fc := range lc.files {
		lf := openLogFile(fc, now, report)
		s.files = append(s.files, lf)
		hs = append(hs, slog.NewTextHandler(lf, &slog.HandlerOptions{Level: max(level, fc.level)}))
	}
	s.logger = slog.New(errHandler)
	if len(hs) > 1 {
		s.logger = slog.New(fanout(hs))
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

// close writes what is queued and closes the files, waiting a bounded time
// for a file system that hangs.
func (s *logSetup) close() {
	for _, lf := range s.files {
		lf.close()
	}
}

// fanout sends each record to every handler that takes its level.
type fanout []slog.Handler

func (f fanout) Enabled(ctx context.Context, l slog.Level) bool {
	for _, h := range f {
		if h.Enabled(ctx, l) {
			return true
		}
	}
	return false
}

func (f fanout) Handle(ctx context.Context, r slog.Record) error {
	var errs []error
	for _, h := range f {
		if h.Enabled(ctx, r.Level) {
			errs = append(errs, h.Handle(ctx, r))
		}
	}
	return errors.Join(errs...)
}

func (f fanout) WithAttrs(as []slog.Attr) slog.Handler {
	g := make(fanout, len(f))
	for i, h := range f {
		g[i] = h.WithAttrs(as)
	}
	return g
}

func (f fanout) WithGroup(name string) slog.Handler {
	g := make(fanout, len(f))
	for i, h := range f {
		g[i] = h.WithGroup(name)
	}
	return g
}

// newStderrHandler writes key=value lines to w; when w is the journal's
// stream (JOURNAL_STREAM), with priority prefixes and without time=.
func newStderrHandler(w io.Writer, level slog.Leveler, getenv func(string) string) slog.Handler {
	if !onJournal(w, getenv("JOURNAL_STREAM")) {
		return slog.NewTextHandler(w, &slog.HandlerOptions{Level: level})
	}
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
		if len(groups) == 0 && a.Key == slog.TimeKey {
			return slog.Attr{} // journald stamps each line itself
		}
		return a
	}}
	var j journalHandler
	for i, prefix := range journalPrefixes {
		j[i] = slog.NewTextHandler(prefixWriter{w, []byte(prefix)}, opts)
	}
	return j
}

// onJournal reports whether w is the stream JOURNAL_STREAM ("dev:inode")
// names, as sd_journal_stream_fd documents: systemd sets the variable for
// the unit, but a child may have another stderr.
func onJournal(w io.Writer, stream string) bool {
	f, ok := w.(*os.File)
	dev, ino, found := strings.Cut(stream, ":")
	if !ok || !found {
		return false
	}
	info, err := f.Stat()
	if err != nil {
		return false
	}
	d, ino2, ok := fileID(info)
	return ok && strconv.FormatUint(d, 10) == dev && strconv.FormatUint(ino2, 10) == ino
}

// fileID is a file's device and inode number.
func fileID(info fs.FileInfo) (dev, ino uint64, ok bool) {
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, false
	}
	return uint64(st.Dev), uint64(st.Ino), true
}

// journalPrefixes are the sd-daemon priorities (crit, err, warning, info,
// debug), in journalHandler's order.
var journalPrefixes = [...]string{"<2>", "<3>", "<4>", "<6>", "<7>"}

// journalHandler holds one text handler per priority prefix.
type journalHandler [len(journalPrefixes)]slog.Handler

func (j journalHandler) pick(l slog.Level) slog.Handler {
	switch {
	case l >= levelCritical:
		return j[0]
	case l >= slog.LevelError:
		return j[1]
	case l >= slog.LevelWarn:
		return j[2]
	case l >= slog.LevelInfo:
		return j[3]
	}
	return j[4]
}

func (j journalHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return j.pick(l).Enabled(ctx, l)
}

func (j journalHandler) Handle(ctx context.Context, r slog.Record) error {
	return j.pick(r.Level).Handle(ctx, r)
}

func (j journalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	for i := range j {
		j[i] = j[i].WithAttrs(as)
	}
	return j
}

func (j journalHandler) WithGroup(name string) slog.Handler {
	for i := range j {
		j[i] = j[i].WithGroup(name)
	}
	return j
}

// prefixWriter writes prefix and line in one Write, so that lines of
// different priorities cannot interleave.
type prefixWriter struct {
	w      io.Writer
	prefix []byte
}

func (p prefixWriter) Write(b []byte) (int, error) {
	if _, err := p.w.Write(append(slices.Clip(p.prefix), b...)); err != nil {
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

// logFile is one file handler. Write only queues the line: one goroutine
// writes, rotates and reopens, so a file system that hangs or is full
// never blocks the worker's logging.
type logFile struct {
	cfg       fileConfig
	now       func() time.Time
	report    *slog.Logger // stderr only
	items     chan logItem
	quit      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	stalled   atomic.Bool // a line was dropped (reported once)

	// Owned by run.
	f          *os.File
	info       fs.FileInfo // of f, for WatchedFileHandler
	size       int64
	rolloverAt time.Time
}

// logItem is a line to write, or an operation to run in order with them.
type logItem struct {
	line  []byte
	at    time.Time // when it was logged, for timed rotation
	op    func() error
	reply chan error
}

// openLogFile opens the file and starts its writer; the writer ends on
// close. A file that cannot be opened is reported, and tried again on
// reopen.
func openLogFile(fc fileConfig, now func() time.Time, report *slog.Logger) *logFile {
	lf := &logFile{cfg: fc, now: now, report: report, items: make(chan logItem, logFileQueue),
		quit: make(chan struct{}), done: make(chan struct{})}
	start := now()
	if info, err := os.Stat(fc.path); err == nil && !fc.truncate {
		start = info.ModTime() // as Python: a file last written yesterday rotates at once
	}
	if fc.when != "" {
		lf.rolloverAt = lf.nextRollover(start)
	}
	if err := lf.open(fc.truncate); err != nil {
		report.Error("cannot open the log file; it gets no lines until it is reopened (SIGHUP)", "file", fc.path, "err", err)
	}
	go lf.run() // ends on close
	return lf
}

// Write queues a copy of one line (slog reuses b); it never blocks.
func (lf *logFile) Write(b []byte) (int, error) {
	select {
	case <-lf.quit:
		return len(b), nil
	case lf.items <- logItem{line: slices.Clone(b), at: lf.now()}:
	default:
		if !lf.stalled.Swap(true) {
			lf.report.Error("the log file is not keeping up; lines for it are dropped", "file", lf.cfg.path)
		}
	}
	return len(b), nil
}

func (lf *logFile) run() {
	defer close(lf.done)
	for {
		select {
		case it := <-lf.items:
			lf.handle(it)
		case <-lf.quit:
			for {
				select {
				case it := <-lf.items:
					lf.handle(it)
				default:
					lf.closeFile()
					return
				}
			}
		}
	}
}

func (lf *logFile) handle(it logItem) {
	if it.op != nil {
		it.reply <- it.op()
		return
	}
	lf.write(it.line, it.at)
}

// call runs op in the writer, after the lines queued before it.
func (lf *logFile) call(op func() error) error {
	reply := make(chan error, 1)
	timeout := time.NewTimer(logFileWait)
	defer timeout.Stop()
	select {
	case <-lf.quit:
		return fmt.Errorf("log file %s is closed", lf.cfg.path)
	case lf.items <- logItem{op: op, reply: reply}:
	case <-timeout.C:
		return fmt.Errorf("log file %s: the writer is stuck", lf.cfg.path)
	}
	select {
	case err := <-reply:
		return err
	case <-timeout.C:
		return fmt.Errorf("log file %s: the writer is stuck", lf.cfg.path)
	}
}

func (lf *logFile) close() {
	lf.closeOnce.Do(func() { close(lf.quit) })
	select {
	case <-lf.done:
	case <-time.After(logFileClose): // a hung file system does not hold up the exit
	}
}

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

// checkMoved reopens the file when its name points elsewhere (Python's
// WatchedFileHandler).
func (lf *logFile) checkMoved() {
	info, err := os.Stat(lf.cfg.path)
	if lf.f != nil && err == nil && os.SameFile(info, lf.info) {
		return
	}
	if lf.f == nil && err != nil {
		return // not reopened: the name is gone and nothing was open
	}
	if err := lf.reopen(); err != nil {
		lf.report.Error("cannot reopen the log file", "file", lf.cfg.path, "err", err)
	}
}

func (lf *logFile) rotateIfDue(n int, now time.Time) {
	switch {
	case lf.cfg.when != "":
		if !now.Before(lf.rolloverAt) {
			lf.rotate(lf.timedName(), lf.pruneTimed)
			lf.rolloverAt = lf.nextRollover(now)
		}
	case lf.cfg.maxBytes > 0 && lf.cfg.backupCount > 0:
		if lf.f != nil && lf.size > 0 && lf.size+int64(n) >= lf.cfg.maxBytes {
			lf.shiftBackups()
			lf.rotate(fmt.Sprintf("%s.1", lf.cfg.path), func() {})
		}
	}
}

// rotate renames the file to dst and opens a new one.
func (lf *logFile) rotate(dst string, prune func()) {
	lf.closeFile()
	os.Remove(dst)
	if err := os.Rename(lf.cfg.path, dst); err != nil && !errors.Is(err, fs.ErrNotExist) {
		lf.report.Warn("cannot rotate the log file", "file", lf.cfg.path, "err", err)
	}
	prune()
	if err := lf.open(false); err != nil {
		lf.report.Error("cannot open the log file; it gets no lines until it is reopened (SIGHUP)", "file", lf.cfg.path, "err", err)
	}
}

// shiftBackups renames name.N-1 to name.N ... name.1 to name.2, the oldest
// falling off, as RotatingFileHandler does.
func (lf *logFile) shiftBackups() {
	for i := lf.cfg.backupCount - 1; i > 0; i-- {
		src, dst := fmt.Sprintf("%s.%d", lf.cfg.path, i), fmt.Sprintf("%s.%d", lf.cfg.path, i+1)
		if _, err := os.Stat(src); err == nil {
			os.Remove(dst)
			os.Rename(src, dst)
		}
	}
}

func (lf *logFile) loc() *time.Location {
	if lf.cfg.utc {
		return time.UTC
	}
	return time.Local
}

// step is the rotation interval of S, M, H and D.
func (lf *logFile) step() time.Duration {
	unit := map[byte]time.Duration{'S': time.Second, 'M': time.Minute, 'H': time.Hour, 'D': 24 * time.Hour}[lf.cfg.when[0]]
	return unit * time.Duration(lf.cfg.interval)
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
	default:
		return t.Add(lf.step())
	}
}

// timedSuffixes are the strftime patterns of TimedRotatingFileHandler's
// names, in Go's layout, and the regexps that find them when pruning.
var timedSuffixes = map[string]struct {
	layout string
	re     *regexp.Regexp
}{
	"S": {"2006-01-02_15-04-05", regexp.MustCompile(`^\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}(\.\w+)?$`)},
	"M": {"2006-01-02_15-04", regexp.MustCompile(`^\d{4}-\d{2}-\d{2}_\d{2}-\d{2}(\.\w+)?$`)},
	"H": {"2006-01-02_15", regexp.MustCompile(`^\d{4}-\d{2}-\d{2}_\d{2}(\.\w+)?$`)},
	"D": {"2006-01-02", regexp.MustCompile(`^\d{4}-\d{2}-\d{2}(\.\w+)?$`)},
}

// timedSuffix is the name pattern of lf's rotated files.
func (lf *logFile) timedSuffix() (layout string, re *regexp.Regexp) {
	key := lf.cfg.when
	if len(key) > 1 { // MIDNIGHT and W0-W6 name files by day
		key = "D"
	}
	s := timedSuffixes[key]
	return s.layout, s.re
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
	layout, _ := lf.timedSuffix()
	return lf.cfg.path + "." + start.Format(layout)
}

// pruneTimed deletes the oldest rotated files beyond backupCount.
func (lf *logFile) pruneTimed() {
	if lf.cfg.backupCount <= 0 {
		return
	}
	dir, base := filepath.Split(lf.cfg.path)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	_, re := lf.timedSuffix()
	var old []string
	for _, e := range entries {
		if s, ok := strings.CutPrefix(e.Name(), base+"."); ok && re.MatchString(s) {
			old = append(old, e.Name())
		}
	}
	slices.Sort(old)
	for len(old) > lf.cfg.backupCount {
		os.Remove(filepath.Join(dir, old[0]))
		old = old[1:]
	}
}
