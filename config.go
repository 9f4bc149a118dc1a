package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Config is the worker's effective configuration: built-in defaults, overlaid
// by the working-directory (or --config) file, overlaid by the home file.
type Config struct {
	ManagerURL               string
	TaskTypes                []string
	TaskUpdateQueueDB        string
	SubprocessPIDFile        string
	MayIRunInterval          time.Duration
	WorkerID                 string
	WorkerSecret             string
	WorkerRegistrationSecret string
	PushLogMaxInterval       time.Duration
	PushLogMaxEntries        int
	PushActMaxInterval       time.Duration

	// Keys this worker adds (DESIGN.md).
	SubprocessTimeout time.Duration
	TaskTimeout       time.Duration
	ErrorRetry        time.Duration
	ManagerCAFile     string

	// Tuning holds the keys for what were constants in the Python worker:
	// delays, timeouts and limits.
	Tuning tuning

	// Environment holds the [environment] section as "KEY=value" pairs, in
	// file order; they are set in every subprocess's environment.
	Environment []string

	// PreTaskChecks holds the [pre_task_check] section, read checks first.
	PreTaskChecks []preTaskCheck

	// Logging holds what the Python logging sections ask for (logging.go).
	Logging logConfig

	// HomeConfig is where registration writes the credentials, in section
	// CredSection: [flamenco-worker] for the default instance, or
	// [flamenco-worker:<absolute --config path>] for one started with
	// another --config file (see instanceSection).
	HomeConfig  string
	CredSection string

	// LoadedFiles lists the config files that were read, in layer order, so
	// the caller can log them as the Python worker does.
	LoadedFiles []string
}

// preTaskCheck is one [pre_task_check] entry: a path that must be readable
// or writable before every task fetch.
type preTaskCheck struct {
	Key   string // the config key, e.g. "write.0"
	Write bool
	Path  string
}

// defaultConfig returns the Python worker's DEFAULT_CONFIG plus our additions.
func defaultConfig() Config {
	return Config{
		TaskTypes:          []string{"sleep", "blender-render", "file-management", "exr-merge", "video-encoding"},
		TaskUpdateQueueDB:  "flamenco-worker.db",
		SubprocessPIDFile:  "flamenco-worker-subprocess.pid",
		MayIRunInterval:    5 * time.Second,
		PushLogMaxInterval: 30 * time.Second,
		PushLogMaxEntries:  1000,
		PushActMaxInterval: 15 * time.Second,
		SubprocessTimeout:  3600 * time.Second,
		ErrorRetry:         600 * time.Second,
		Tuning:             defaultTuning(),
	}
}

const (
	cwdConfigName   = "flamenco-worker.cfg"
	homeConfigName  = ".flamenco-worker.cfg"
	workerSection   = "flamenco-worker"
	checkSection    = "pre_task_check"
	envSection      = "environment"
	defaultSection  = "DEFAULT"
	hiddenSecret    = "-hidden-"
	jobTypesKey     = "job_types" // the seed README's name for task_types
	credIDKey       = "worker_id"
	credSecretKey   = "worker_secret"
	builtinFileName = "(built-in defaults)"

	// maxInterpolationDepth is Python configparser's MAX_INTERPOLATION_DEPTH:
	// a reference loop becomes an error instead of a hang.
	maxInterpolationDepth = 10
	// maxInterpolationRefs and maxExpandedLen bound the work for one value,
	// so that keys referencing each other many times ("billion laughs")
	// cannot make loading take forever. Real values are far smaller.
	maxInterpolationRefs = 1000
	maxExpandedLen       = 64 << 10
)

// ---------------------------------------------------------------------------
// INI parsing, with Python configparser's default syntax.

// iniEntry is one "key = value" assignment.
type iniEntry struct {
	section string // section name as written in its header
	key     string // the key's spelling in the assignment that set it last
	value   string // raw value, continuation lines joined with "\n", before interpolation
	file    string
	line    int  // line of the "key = value" line
	end     int  // last line of the value, continuation lines included
	seq     int  // order of assignment over all merged files
	builtin bool // a built-in default, not from any file
}

// errorf returns an error located at e's file and line.
func (e *iniEntry) errorf(format string, args ...any) error {
	return fmt.Errorf("%s:%d: "+format, append([]any{e.file, e.line}, args...)...)
}

// iniSection holds a section's keys after merging: one entry per
// lower-cased key, in order of first appearance, the last assignment winning.
type iniSection struct {
	name    string
	file    string // where the section first appeared
	line    int
	last    int // in a single parsed file: the last line of its last block
	entries []*iniEntry
	index   map[string]*iniEntry
}

// get returns the section's own entry for key (not DEFAULT's), or nil,
// also when the section does not exist (s is nil).
func (s *iniSection) get(key string) *iniEntry {
	if s == nil {
		return nil
	}
	return s.index[strings.ToLower(key)]
}

// iniFile is one parsed file, or several merged ones.
type iniFile struct {
	sections []*iniSection // in order of first appearance, DEFAULT included
	byName   map[string]*iniSection
	raw      []iniEntry // every assignment in file order, duplicates included
	seq      int
}

func newINIFile() *iniFile {
	return &iniFile{byName: map[string]*iniSection{}}
}

// addSection returns the section called name, creating it if needed.
// Section names are case-sensitive, as in configparser.
func (f *iniFile) addSection(name, file string, line int) *iniSection {
	if s := f.byName[name]; s != nil {
		return s
	}
	s := &iniSection{name: name, file: file, line: line, index: map[string]*iniEntry{}}
	f.sections = append(f.sections, s)
	f.byName[name] = s
	return s
}

// add records an assignment; a later assignment to the same key replaces
// the value but keeps the key's position.
func (f *iniFile) add(e iniEntry) {
	f.raw = append(f.raw, e)
	f.seq++
	e.seq = f.seq
	s := f.addSection(e.section, e.file, e.line)
	k := strings.ToLower(e.key)
	if old := s.index[k]; old != nil {
		*old = e
		return
	}
	s.entries = append(s.entries, &e)
	s.index[k] = &e
}

// merge lays g over f: g's assignments win.
func (f *iniFile) merge(g *iniFile) {
	for _, s := range g.sections {
		f.addSection(s.name, s.file, s.line)
	}
	for _, e := range g.raw {
		f.add(e)
	}
}

// lookup finds key in section, then in DEFAULT, as configparser does.
func (f *iniFile) lookup(section, key string) *iniEntry {
	s := f.byName[section]
	if s == nil && section != defaultSection {
		return nil
	}
	if e := s.get(key); e != nil {
		return e
	}
	return f.byName[defaultSection].get(key)
}

// iniParser holds the state of parseINI between lines.
type iniParser struct {
	f      *iniFile
	name   string
	sect   *iniSection // nil before the first section header
	cur    *iniEntry   // the assignment continuation lines would extend
	parts  []string    // value lines of cur
	indent int         // indentation of cur's key line
}

// parseINI reads an INI file the way Python's configparser does by default:
// "key = value" or "key: value", full-line "#" and ";" comments (no inline
// comments), indented continuation lines, case-insensitive keys. Duplicate
// sections and keys are merged, the last value winning. Values are kept raw;
// interpolation happens on lookup (see expand). name is used in errors.
func parseINI(r io.Reader, name string) (*iniFile, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	p := &iniParser{f: newINIFile(), name: name}
	text := strings.TrimPrefix(string(data), "\ufeff")
	for i, line := range strings.Split(text, "\n") {
		if err := p.line(i+1, strings.TrimSuffix(line, "\r")); err != nil {
			return nil, err
		}
	}
	p.flush()
	return p.f, nil
}

func (p *iniParser) errorf(n int, format string, args ...any) error {
	return fmt.Errorf("%s:%d: "+format, append([]any{p.name, n}, args...)...)
}

func (p *iniParser) line(n int, line string) error {
	if !utf8.ValidString(line) {
		return p.errorf(n, "line is not valid UTF-8")
	}
	text := strings.TrimSpace(line)
	switch {
	case text == "":
		// Blank lines belong to a multi-line value if one follows; trailing
		// ones are trimmed in flush.
		if p.cur != nil {
			p.parts = append(p.parts, "")
		}
		return nil
	case text[0] == '#' || text[0] == ';':
		return nil
	}
	indent := len(line) - len(strings.TrimLeftFunc(line, unicode.IsSpace))
	if p.cur != nil && indent > p.indent {
		p.parts = append(p.parts, text)
		p.cur.end = n
		return nil
	}
	p.flush()
	if text[0] == '[' {
		return p.header(n, text)
	}
	return p.assignment(n, text, indent)
}

func (p *iniParser) header(n int, text string) error {
	end := strings.IndexByte(text, ']')
	if end < 0 {
		return p.errorf(n, "section header %s has no closing ]", clip(text))
	}
	if rest := strings.TrimSpace(text[end+1:]); rest != "" && rest[0] != '#' && rest[0] != ';' {
		return p.errorf(n, "unexpected %s after section header", clip(rest))
	}
	name := strings.TrimSpace(text[1:end])
	if name == "" {
		return p.errorf(n, "empty section name")
	}
	p.sect = p.f.addSection(name, p.name, n)
	p.sect.last = n
	return nil
}

func (p *iniParser) assignment(n int, text string, indent int) error {
	if p.sect == nil {
		return p.errorf(n, "%s is outside any section; put a [section] header above it", clip(text))
	}
	i := strings.IndexAny(text, "=:")
	if i < 0 {
		return p.errorf(n, "expected \"key = value\", not %s", clip(text))
	}
	key := strings.TrimSpace(text[:i])
	if key == "" {
		return p.errorf(n, "missing key before %q", text[i])
	}
	p.cur = &iniEntry{section: p.sect.name, key: key, file: p.name, line: n, end: n}
	p.parts = []string{strings.TrimSpace(text[i+1:])}
	p.indent = indent
	return nil
}

// flush stores the assignment being read, if any.
func (p *iniParser) flush() {
	if p.cur == nil {
		return
	}
	p.cur.value = strings.TrimRightFunc(strings.Join(p.parts, "\n"), unicode.IsSpace)
	p.f.add(*p.cur)
	p.sect.last = p.cur.end
	p.cur, p.parts = nil, nil
}

// clip quotes s for an error message, shortened if long.
func clip(s string) string {
	const limit = 60
	if len(s) > limit {
		cut := limit
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "..."
	}
	return strconv.Quote(s)
}

// expander expands the ${...} references of one value.
type expander struct {
	f    *iniFile
	b    strings.Builder
	refs int
}

// expand returns e's value with ExtendedInterpolation applied: ${key} is
// looked up in section (then DEFAULT), ${sect:key} in sect, and $$ is a
// literal $. section is the section the value is read for, which differs
// from e.section when e comes from DEFAULT.
func (f *iniFile) expand(section string, e *iniEntry) (string, error) {
	x := &expander{f: f}
	if err := x.expand(section, e, e.value, 1); err != nil {
		return "", err
	}
	return x.b.String(), nil
}

func (x *expander) expand(section string, e *iniEntry, rest string, depth int) error {
	if depth > maxInterpolationDepth {
		return e.errorf("%s: more than %d levels of ${...} references (a reference loop?)", e.key, maxInterpolationDepth)
	}
	for {
		i := strings.IndexByte(rest, '$')
		if i < 0 {
			return x.write(e, rest)
		}
		if err := x.write(e, rest[:i]); err != nil {
			return err
		}
		rest = rest[i:]
		switch {
		case strings.HasPrefix(rest, "$$"):
			if err := x.write(e, "$"); err != nil {
				return err
			}
			rest = rest[2:]
		case strings.HasPrefix(rest, "${"):
			end := strings.IndexByte(rest, '}')
			if end < 3 {
				return e.errorf("%s: bad reference %s: want ${key} or ${section:key}", e.key, clip(rest))
			}
			if err := x.reference(section, e, rest[2:end], depth); err != nil {
				return err
			}
			rest = rest[end+1:]
		default:
			return e.errorf("%s: '$' must be followed by '$' or '{', found %s (write $$ for a literal $)", e.key, clip(rest))
		}
	}
}

// write adds text from e's value to the result.
func (x *expander) write(e *iniEntry, text string) error {
	if x.b.Len()+len(text) > maxExpandedLen {
		return e.errorf("%s: ${...} references expand to more than %d bytes", e.key, maxExpandedLen)
	}
	x.b.WriteString(text)
	return nil
}

// reference expands one ${ref} found in e's value.
func (x *expander) reference(section string, e *iniEntry, ref string, depth int) error {
	x.refs++
	if x.refs > maxInterpolationRefs {
		return e.errorf("%s: more than %d ${...} references", e.key, maxInterpolationRefs)
	}
	sect, key := section, ref
	if parts := strings.Split(ref, ":"); len(parts) > 2 {
		return e.errorf("%s: more than one ':' in ${%s}", e.key, ref)
	} else if len(parts) == 2 {
		sect, key = parts[0], parts[1]
	}
	target := x.f.lookup(sect, key)
	if target == nil {
		return e.errorf("%s: ${%s} refers to a missing key", e.key, ref)
	}
	if !strings.Contains(target.value, "$") {
		return x.write(e, target.value) // as configparser, which counts depth only for values it must expand
	}
	return x.expand(sect, target, target.value, depth+1)
}

// ---------------------------------------------------------------------------
// Config keys.

// configKey describes one [flamenco-worker] key.
type configKey struct {
	name   string
	field  func(c *Config) any // pointer to the Config field
	zeroOK bool                // numbers: whether 0 is allowed (negative never is)
	check  func(string) error  // strings: extra validation
	secret bool                // hidden in writeEffective
	// min and max bound a number (seconds for a duration); 0 means no
	// bound. A zeroOK key may also be 0 (off, or "at once").
	min, max float64
}

// Bounds of the time keys: a loop that talks to the Manager must not spin
// (may_i_run_interval_seconds = 0.000000001 once sent 2,700 requests a
// second), and a delay of years is a typo.
const (
	minSeconds = 0.1
	hour       = 3600.0
	day        = 24 * hour
)

// configKeys lists the [flamenco-worker] keys in the order the Python worker
// documents them, then ours.
func configKeys() []configKey {
	return []configKey{
		{name: "manager_url", field: func(c *Config) any { return &c.ManagerURL }, check: checkManagerURLRedacted},
		{name: "task_types", field: func(c *Config) any { return &c.TaskTypes }},
		{name: "task_update_queue_db", field: func(c *Config) any { return &c.TaskUpdateQueueDB }, check: checkNotEmpty},
		{name: "subprocess_pid_file", field: func(c *Config) any { return &c.SubprocessPIDFile }},
		{name: "may_i_run_interval_seconds", field: func(c *Config) any { return &c.MayIRunInterval }, min: minSeconds, max: hour},
		{name: credIDKey, field: func(c *Config) any { return &c.WorkerID }},
		{name: credSecretKey, field: func(c *Config) any { return &c.WorkerSecret }, secret: true},
		{name: "worker_registration_secret", field: func(c *Config) any { return &c.WorkerRegistrationSecret }, secret: true},
		{name: "push_log_max_interval_seconds", field: func(c *Config) any { return &c.PushLogMaxInterval }, zeroOK: true, min: minSeconds, max: hour},
		{name: "push_log_max_entries", field: func(c *Config) any { return &c.PushLogMaxEntries }, zeroOK: true, max: 100000},
		{name: "push_act_max_interval_seconds", field: func(c *Config) any { return &c.PushActMaxInterval }, zeroOK: true, min: minSeconds, max: hour},
		{name: "subprocess_timeout_seconds", field: func(c *Config) any { return &c.SubprocessTimeout }, zeroOK: true, min: minSeconds, max: 30 * day},
		{name: "task_timeout_seconds", field: func(c *Config) any { return &c.TaskTimeout }, zeroOK: true, min: minSeconds, max: 365 * day},
		{name: "error_retry_seconds", field: func(c *Config) any { return &c.ErrorRetry }, min: minSeconds, max: day},
		{name: "manager_ca_file", field: func(c *Config) any { return &c.ManagerCAFile }},
		// What were constants in the Python worker (spec/python-worker.md §6.10).
		{name: "kill_grace_seconds", field: func(c *Config) any { return &c.Tuning.killGrace }, min: minSeconds, max: 60},
		{name: "fetch_empty_retry_seconds", field: func(c *Config) any { return &c.Tuning.fetchEmpty }, min: minSeconds, max: hour},
		{name: "fetch_error_retry_seconds", field: func(c *Config) any { return &c.Tuning.fetchFailed }, min: minSeconds, max: hour},
		{name: "asleep_poll_interval_seconds", field: func(c *Config) any { return &c.Tuning.asleepPoll }, min: minSeconds, max: hour},
		{name: "register_retry_seconds", field: func(c *Config) any { return &c.Tuning.registerRetry }, min: minSeconds, max: hour},
		{name: "queue_size_threshold", field: func(c *Config) any { return &c.Tuning.queueLimit }, zeroOK: true, max: 100000},
		{name: "update_backoff_min_seconds", field: func(c *Config) any { return &c.Tuning.updateBackoff.min }, min: minSeconds, max: hour},
		{name: "update_backoff_max_seconds", field: func(c *Config) any { return &c.Tuning.updateBackoff.max }, min: minSeconds, max: day},
		{name: "http_connect_timeout_seconds", field: func(c *Config) any { return &c.Tuning.http.connect }, min: minSeconds, max: 300},
		{name: "http_response_timeout_seconds", field: func(c *Config) any { return &c.Tuning.http.header }, min: minSeconds, max: 300},
		{name: "http_idle_timeout_seconds", field: func(c *Config) any { return &c.Tuning.http.idle }, min: minSeconds, max: 300},
		{name: "output_produced_interval_seconds", field: func(c *Config) any { return &c.Tuning.outputWindow }, min: minSeconds, max: hour},
		{name: "blend_file_wait_seconds", field: func(c *Config) any { return &c.Tuning.fileWait }, zeroOK: true, min: minSeconds, max: 600},
	}
}

// isConfigKey reports whether key (lower-cased) belongs in [flamenco-worker].
func isConfigKey(key string) bool {
	if key == jobTypesKey {
		return true
	}
	for _, k := range configKeys() {
		if k.name == key {
			return true
		}
	}
	return false
}

// set parses v into the key's Config field.
func (k configKey) set(c *Config, v string) error {
	switch p := k.field(c).(type) {
	case *string:
		if k.check != nil {
			if err := k.check(v); err != nil {
				return err
			}
		}
		*p = v
	case *[]string:
		types := strings.Fields(v)
		if len(types) == 0 {
			return errors.New("must list at least one task type")
		}
		*p = types
	case *int:
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("%s is not a whole number", clip(v))
		}
		if n < 0 {
			return fmt.Errorf("must not be negative, not %d", n)
		}
		if err := k.inBounds(float64(n), v, ""); err != nil {
			return err
		}
		*p = n
	case *time.Duration:
		d, err := parseSeconds(v, k.zeroOK)
		if err != nil {
			return err
		}
		if err := k.inBounds(d.Seconds(), v, " seconds"); err != nil {
			return err
		}
		*p = d
	}
	return nil
}

// inBounds checks a number against the key's min and max; a zeroOK key's
// 0 is always fine.
func (k configKey) inBounds(f float64, v, unit string) error {
	if f == 0 && k.zeroOK {
		return nil
	}
	fmtNum := func(x float64) string { return strconv.FormatFloat(x, 'f', -1, 64) }
	switch {
	case k.min > 0 && f < k.min && k.zeroOK:
		return fmt.Errorf("must be 0 or at least %s%s, not %s", fmtNum(k.min), unit, v)
	case k.min > 0 && f < k.min:
		return fmt.Errorf("must be at least %s%s, not %s", fmtNum(k.min), unit, v)
	case k.max > 0 && f > k.max:
		return fmt.Errorf("must be at most %s%s, not %s", fmtNum(k.max), unit, v)
	}
	return nil
}

// format renders the key's Config field as it would be written in the file.
func (k configKey) format(c *Config) string {
	switch p := k.field(c).(type) {
	case *string:
		return *p
	case *[]string:
		return strings.Join(*p, " ")
	case *int:
		return strconv.Itoa(*p)
	case *time.Duration:
		return strconv.FormatFloat(p.Seconds(), 'f', -1, 64)
	}
	return ""
}

// parseSeconds parses a number of seconds as the Python worker does (a
// float), refusing what would make an interval meaningless.
func parseSeconds(v string, zeroOK bool) (time.Duration, error) {
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, fmt.Errorf("%s is not a number of seconds", clip(v))
	}
	if f < 0 {
		return 0, fmt.Errorf("must not be negative, not %s", v)
	}
	if f > float64(math.MaxInt64)/float64(time.Second) {
		return 0, fmt.Errorf("%s seconds is too long", v)
	}
	d := time.Duration(f * float64(time.Second))
	if d == 0 && !zeroOK {
		return 0, fmt.Errorf("must be more than 0, not %s", v)
	}
	return d, nil
}

func checkNotEmpty(v string) error {
	if v == "" {
		return errors.New("must not be empty")
	}
	return nil
}

// checkManagerURL validates a non-empty manager_url like the Python worker's
// check_config; an empty one means SSDP discovery and is fine.
func checkManagerURL(v string) error {
	if v == "" {
		return nil
	}
	if v[0] == '\'' || v[0] == '"' {
		return fmt.Errorf("should not be quoted: %s", v)
	}
	const example = "(so https://something/ or http://something/)"
	scheme, _, ok := strings.Cut(v, "://")
	if !ok {
		return fmt.Errorf("should be a URL %s, not %s", example, v)
	}
	if s := strings.ToLower(scheme); s != "http" && s != "https" {
		return fmt.Errorf("should be an http or https URL %s, not %s", example, v)
	}
	u, err := url.Parse(v)
	if err != nil {
		return fmt.Errorf("is not a valid URL: %w", err)
	}
	if u.Host == "" {
		return fmt.Errorf("has no host name: %s", v)
	}
	return nil
}

// ---------------------------------------------------------------------------
// Loading the layers.

// configFile is one layer: a path and whether it must exist.
type configFile struct {
	path     string
	required bool
	// credSection, when set, is the section whose worker_id and
	// worker_secret count as this file's [flamenco-worker] credentials.
	credSection string
}

// loadConfig builds the effective config: defaults < ./flamenco-worker.cfg
// (or cfgFile, which must exist) < <homeDir>/.flamenco-worker.cfg. Both
// default files are optional. An empty homeDir means no home file (and no
// place to store credentials). Unknown sections and keys are reported
// through warn (which may be nil) and otherwise ignored.
func loadConfig(cfgFile, homeDir string, warn func(string)) (*Config, error) {
	return loadConfigTuned(cfgFile, homeDir, defaultTuning(), warn)
}

// loadConfigTuned is loadConfig with tune as the defaults of the tuning
// keys (tests shorten them; a file still overrides them).
func loadConfigTuned(cfgFile, homeDir string, tune tuning, warn func(string)) (*Config, error) {
	files := []configFile{{path: cwdConfigName}}
	if cfgFile != "" {
		files[0] = configFile{path: cfgFile, required: true}
	}
	section, err := instanceSection(cfgFile)
	if err != nil {
		return nil, err
	}
	home := ""
	if homeDir != "" {
		home = filepath.Join(homeDir, homeConfigName)
		files = append(files, configFile{path: home, credSection: section})
	}
	cfg, err := loadConfigFiles(files, home, tune, warn)
	if err != nil {
		return nil, err
	}
	cfg.CredSection = section
	return cfg, nil
}

// loadConfigFiles lays files over the defaults, in order.
func loadConfigFiles(files []configFile, home string, tune tuning, warn func(string)) (*Config, error) {
	if warn == nil {
		warn = func(string) {}
	}
	merged := builtinINI()
	var loaded []string
	for _, cf := range files {
		f, err := readINIFile(cf)
		if err != nil {
			return nil, err
		}
		if f == nil {
			continue
		}
		warnUnknown(f, warn)
		warnReadableSecret(f, cf.path, warn)
		if cf.credSection != "" && cf.credSection != workerSection {
			f = f.withCredentialsFrom(cf.credSection)
		}
		merged.merge(f)
		loaded = append(loaded, cf.path)
	}
	warnTaskTypesAlias(merged, warn)
	cfg := defaultConfig()
	cfg.Tuning = tune
	cfg.HomeConfig = home
	cfg.LoadedFiles = loaded
	if err := cfg.apply(merged); err != nil {
		return nil, err
	}
	if b := cfg.Tuning.updateBackoff; b.max < b.min {
		e := merged.lookup(workerSection, "update_backoff_max_seconds")
		if e.builtin {
			e = merged.lookup(workerSection, "update_backoff_min_seconds")
		}
		return nil, e.errorf("%s: update_backoff_max_seconds (%s) must not be less than update_backoff_min_seconds (%s)",
			e.key, strconv.FormatFloat(b.max.Seconds(), 'f', -1, 64), strconv.FormatFloat(b.min.Seconds(), 'f', -1, 64))
	}
	return &cfg, nil
}

// warnReadableSecret warns when a file holding a secret can be read by
// other users: with worker_secret anyone on the node can act as this worker.
func warnReadableSecret(f *iniFile, path string, warn func(string)) {
	info, err := os.Stat(path)
	if err != nil || info.Mode().Perm()&0o044 == 0 {
		return
	}
	for _, key := range []string{credSecretKey, "worker_registration_secret"} {
		if e := f.lookup(workerSection, key); e != nil && e.value != "" {
			warn(fmt.Sprintf("%s holds %s but is readable by other users (mode %04o); run: chmod 600 %s", path, key, info.Mode().Perm(), path))
			return
		}
	}
}

// readINIFile parses one layer; it returns nil for a missing optional file.
func readINIFile(cf configFile) (*iniFile, error) {
	fh, err := os.Open(cf.path)
	if errors.Is(err, fs.ErrNotExist) && !cf.required {
		return nil, nil
	}
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("config file %s does not exist", cf.path)
	}
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	defer fh.Close()
	return parseINI(fh, cf.path)
}

// builtinINI holds the defaults as INI values, so that ${key} references to
// keys no file sets resolve as in Python, where the defaults are read into
// the same parser.
func builtinINI() *iniFile {
	f := newINIFile()
	def := defaultConfig()
	for _, k := range configKeys() {
		f.add(iniEntry{section: workerSection, key: k.name, value: escapeINI(k.format(&def)), file: builtinFileName, builtin: true})
	}
	return f
}

// warnUnknown reports sections and [flamenco-worker] keys that this worker
// does not use; they are ignored, never fatal.
func warnUnknown(f *iniFile, warn func(string)) {
	for _, s := range f.sections {
		if !knownSection(s.name) {
			warn(fmt.Sprintf("%s:%d: unknown section [%s] ignored", s.file, s.line, s.name))
		}
	}
	for _, e := range f.raw {
		if e.section == workerSection && !isConfigKey(strings.ToLower(e.key)) {
			warn(fmt.Sprintf("%s:%d: unknown key %q in [%s] ignored", e.file, e.line, e.key, workerSection))
		}
	}
}

// warnTaskTypesAlias warns when both task_types and its alias job_types
// are set: task_types wins, wherever each of them is.
func warnTaskTypesAlias(f *iniFile, warn func(string)) {
	sec := f.byName[workerSection]
	tt, jt := sec.get("task_types"), sec.get(jobTypesKey)
	if tt == nil || jt == nil || tt.builtin {
		return
	}
	warn(fmt.Sprintf("%s:%d: task_types and %s:%d: job_types are both set; task_types is used, job_types ignored", tt.file, tt.line, jt.file, jt.line))
}

// knownSection reports whether a section is used; the Python logging
// sections are read by parseLogging.
func knownSection(name string) bool {
	switch name {
	case workerSection, checkSection, envSection, defaultSection, "loggers", "handlers", "formatters":
		return true
	}
	for _, prefix := range []string{"logger_", "handler_", "formatter_", instancePrefix} {
		if strings.HasPrefix(name, prefix) {
			return true
		}
	}
	return false
}

// apply sets c from the merged files.
func (c *Config) apply(f *iniFile) error {
	if err := c.applyWorker(f); err != nil {
		return err
	}
	if err := c.applyPreTaskChecks(f); err != nil {
		return err
	}
	c.Logging = parseLogging(f)
	return c.applyEnvironment(f)
}

func (c *Config) applyWorker(f *iniFile) error {
	sec := f.byName[workerSection]
	for _, k := range configKeys() {
		e := sec.get(k.name)
		if alias := sec.get(jobTypesKey); k.name == "task_types" && alias != nil && e.builtin {
			e = alias // job_types alone is honoured; with task_types, task_types wins
		}
		if e.builtin {
			continue
		}
		v, err := f.expand(workerSection, e)
		if err != nil {
			return err
		}
		if err := k.set(c, v); err != nil {
			return e.errorf("%s: %w", e.key, err)
		}
	}
	return nil
}

// applyPreTaskChecks reads [pre_task_check]: read checks first, then write
// checks, each in file order, with absolute paths. Only the section's own
// keys count, not DEFAULT's.
func (c *Config) applyPreTaskChecks(f *iniFile) error {
	sec := f.byName[checkSection]
	if sec == nil {
		return nil
	}
	var reads, writes []preTaskCheck
	for _, e := range sec.entries {
		v, err := f.expand(checkSection, e)
		if err != nil {
			return err
		}
		key := strings.ToLower(e.key)
		write := strings.HasPrefix(key, "write")
		if !write && !strings.HasPrefix(key, "read") {
			return e.errorf("[%s] key %q should start with \"read\" or \"write\"", checkSection, e.key)
		}
		if v == "" {
			return e.errorf("[%s] %s: empty path", checkSection, e.key)
		}
		chk := preTaskCheck{Key: e.key, Write: write, Path: absPath(v)}
		if write {
			writes = append(writes, chk)
		} else {
			reads = append(reads, chk)
		}
	}
	c.PreTaskChecks = append(reads, writes...)
	return nil
}

// applyEnvironment reads [environment], keeping the keys' spelling since
// environment variable names are case-sensitive.
func (c *Config) applyEnvironment(f *iniFile) error {
	sec := f.byName[envSection]
	if sec == nil {
		return nil
	}
	for _, e := range sec.entries {
		v, err := f.expand(envSection, e)
		if err != nil {
			return err
		}
		if strings.ContainsFunc(e.key, func(r rune) bool { return unicode.IsSpace(r) || r == 0 }) {
			return e.errorf("[%s] %q is not a valid environment variable name", envSection, e.key)
		}
		if strings.ContainsRune(v, 0) {
			return e.errorf("[%s] %s: value contains a NUL character", envSection, e.key)
		}
		c.Environment = append(c.Environment, e.key+"="+v)
	}
	return nil
}

// ---------------------------------------------------------------------------
// Writing.

// writeEffective writes the effective config in INI form (for --verbose),
// with the secrets shown as "-hidden-".
func (c *Config) writeEffective(w io.Writer) error {
	var b strings.Builder
	b.WriteString("[" + workerSection + "]\n")
	for _, k := range configKeys() {
		v := k.format(c)
		if k.secret && v != "" {
			v = hiddenSecret
		}
		if k.name == "manager_url" {
			v = redactURL(v)
		}
		writeINILine(&b, k.name, v)
	}
	if len(c.PreTaskChecks) > 0 {
		b.WriteString("\n[" + checkSection + "]\n")
		for _, chk := range c.PreTaskChecks {
			writeINILine(&b, chk.Key, chk.Path)
		}
	}
	if len(c.Environment) > 0 {
		b.WriteString("\n[" + envSection + "]\n")
		for _, kv := range c.Environment {
			k, v, _ := strings.Cut(kv, "=")
			writeINILine(&b, k, v)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeINILine writes "key = value" so that parseINI reads value back.
func writeINILine(b *strings.Builder, key, value string) {
	b.WriteString(key)
	if value == "" {
		b.WriteString(" =\n")
		return
	}
	b.WriteString(" = ")
	b.WriteString(strings.ReplaceAll(escapeINI(value), "\n", "\n\t"))
	b.WriteByte('\n')
}

// escapeINI protects a literal value from interpolation.
func escapeINI(v string) string {
	return strings.ReplaceAll(v, "$", "$$")
}

// instancePrefix starts the name of a --config instance's credentials
// section in the home file (instanceSection).
const instancePrefix = workerSection + ":"

// instanceSection names the home-file section that holds the credentials
// of the instance started with cfgFile. The default instance (no --config,
// or --config naming ./flamenco-worker.cfg) uses [flamenco-worker], as the
// Python worker does; any other config file gets its own section named
// after its absolute path with symlinks resolved, e.g.
// [flamenco-worker:/etc/flamenco-worker/gpu1.cfg], so that two instances
// with different config files are two workers, each keeping its identity
// across restarts.
func instanceSection(cfgFile string) (string, error) {
	if cfgFile == "" {
		return workerSection, nil
	}
	path := canonicalPath(cfgFile)
	if path == canonicalPath(cwdConfigName) {
		return workerSection, nil
	}
	if strings.ContainsAny(path, "[]\r\n") || path != strings.TrimSpace(path) {
		return "", fmt.Errorf("config file %q: the worker keeps its credentials in a home-file section named after the config file's path, "+
			"which cannot hold brackets, line breaks or surrounding spaces; rename the file", path)
	}
	return instancePrefix + path, nil
}

// canonicalPath is path made absolute, with symlinks resolved if it exists.
func canonicalPath(path string) string {
	if real, err := filepath.EvalSymlinks(path); err == nil {
		path = real
	}
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	return path
}

// withCredentialsFrom returns f with the credentials of [flamenco-worker]
// replaced by those of section: the home file's [flamenco-worker] keys other
// than the credentials still apply to every instance, but its worker_id and
// worker_secret belong to the default instance only.
func (f *iniFile) withCredentialsFrom(section string) *iniFile {
	g := newINIFile()
	for _, s := range f.sections {
		g.addSection(s.name, s.file, s.line)
	}
	for _, e := range f.raw {
		cred := isCredentialKey(e.key)
		switch {
		case cred && e.section == workerSection:
			continue
		case cred && e.section == section:
			e.section = workerSection
		}
		g.add(e)
	}
	return g
}

func isCredentialKey(key string) bool {
	k := strings.ToLower(key)
	return k == credIDKey || k == credSecretKey
}

// writeCredentials stores worker_id and worker_secret in [flamenco-worker]
// of homeFile; see writeSectionCredentials.
func writeCredentials(homeFile, workerID, secret string) error {
	return writeSectionCredentials(homeFile, workerSection, workerID, secret)
}

// writeSectionCredentials stores worker_id and worker_secret in section of
// homeFile, creating it if needed. Unlike the Python worker it keeps the
// file's comments and layout: only the credential lines change, or are
// added to the section. The file is replaced atomically, with mode 0600.
func writeSectionCredentials(homeFile, section, workerID, secret string) error {
	if homeFile == "" {
		return errors.New("storing credentials: no home config file (is $HOME set?)")
	}
	err := withDirLock(filepath.Dir(canonicalPath(homeFile)), func() error {
		path, text, err := credentialsText(homeFile, section, workerID, secret)
		if err != nil {
			return err
		}
		return writeFileAtomic(path, []byte(text))
	})
	if err != nil {
		return fmt.Errorf("storing credentials: %w", err)
	}
	return nil
}

// credentialsWritable proves, before registering, that credentials can be
// stored in section of homeFile: it does everything writeSectionCredentials
// does except the final rename, so that a worker that could not keep its
// new identity never creates one on the Manager (and then another at every
// restart).
func credentialsWritable(homeFile, section string) error {
	path, text, err := credentialsText(homeFile, section, "probe-id", "probe-secret")
	if err != nil {
		return err
	}
	tmp, err := writeTemp(path, []byte(text))
	if err != nil {
		return fmt.Errorf("cannot write in the directory of %s: %w", path, err)
	}
	return os.Remove(tmp)
}

// credentialsText reads homeFile (following a symlink, so that a symlinked
// dotfile stays a symlink) and returns the path to replace and its new text.
func credentialsText(homeFile, section, workerID, secret string) (path, text string, err error) {
	if homeFile == "" {
		return "", "", errors.New("no home config file (is $HOME set?)")
	}
	for _, v := range []string{workerID, secret} {
		if strings.ContainsAny(v, "\r\n\x00") || v != strings.TrimSpace(v) {
			return "", "", errors.New("worker ID or secret has line breaks or surrounding spaces")
		}
	}
	path = homeFile
	if real, err := filepath.EvalSymlinks(homeFile); err == nil {
		path = real
	}
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", "", err
	}
	text, err = setSectionCredentials(string(old), homeFile, section, workerID, secret)
	return path, text, err
}

// setCredentials is setSectionCredentials for [flamenco-worker].
func setCredentials(text, name, workerID, secret string) (string, error) {
	return setSectionCredentials(text, name, workerSection, workerID, secret)
}

// setSectionCredentials returns text with the credentials set in section.
// It rewrites existing credential lines in place and adds missing ones
// after the last line of the section. Should that change how the rest of
// the file parses (an oddly indented line after it), the missing ones go
// into a new section header at the end instead.
func setSectionCredentials(text, name, section, workerID, secret string) (string, error) {
	f, err := parseINI(strings.NewReader(text), name)
	if err != nil {
		return "", fmt.Errorf("not changing a file that does not parse: %w", err)
	}
	want := map[string]string{credIDKey: escapeINI(workerID), credSecretKey: escapeINI(secret)}
	lines, nl := splitLines(text)
	missing, after := replaceCredentials(f, section, lines, want, nl)
	inSection := insertLines(lines, after, missing, want, nl)
	if out := strings.Join(inSection, ""); sectionCredentialsSet(f, out, name, section, want) {
		return out, nil
	}
	block := []string{"[" + section + "]" + nl}
	for _, k := range missing {
		block = append(block, k+" = "+want[k]+nl)
	}
	lines = append(lines, nl)
	if len(lines) == 1 {
		lines = lines[:0] // an empty file needs no blank line first
	}
	out := strings.Join(append(lines, block...), "")
	if !sectionCredentialsSet(f, out, name, section, want) {
		return "", errors.New("could not add the credentials to the file") // cannot happen: a header at column 0 always ends the previous value
	}
	return out, nil
}

// splitLines splits text into lines that keep their line ending, making sure
// the last one has one, and returns the file's line ending.
func splitLines(text string) ([]string, string) {
	nl := "\n"
	if i := strings.IndexByte(text, '\n'); i > 0 && text[i-1] == '\r' {
		nl = "\r\n"
	}
	if text == "" {
		return nil, nl
	}
	if !strings.HasSuffix(text, "\n") {
		text += nl
	}
	return strings.SplitAfter(text, "\n")[:strings.Count(text, "\n")], nl
}

// replaceCredentials rewrites every credential assignment in section in
// place, keeping its indentation. It returns the keys not found and the
// line after which to add them: the section's last line (0 if no section).
func replaceCredentials(f *iniFile, section string, lines []string, want map[string]string, nl string) (missing []string, after int) {
	found := map[string]bool{}
	if s := f.byName[section]; s != nil {
		after = s.last
	}
	for _, e := range f.raw {
		k := strings.ToLower(e.key)
		if _, ok := want[k]; !ok || e.section != section {
			continue
		}
		found[k] = true
		lines[e.line-1] = leadingSpace(lines[e.line-1]) + e.key + " = " + want[k] + nl
		for i := e.line; i < e.end; i++ {
			lines[i] = ""
		}
	}
	for _, k := range []string{credIDKey, credSecretKey} {
		if !found[k] {
			missing = append(missing, k)
		}
	}
	return missing, after
}

// insertLines returns lines with the missing credentials added after line
// after (1-based), indented like it; nothing when there is no section.
func insertLines(lines []string, after int, missing []string, want map[string]string, nl string) []string {
	if len(missing) == 0 || after == 0 {
		return lines
	}
	indent := leadingSpace(lines[after-1])
	out := append([]string{}, lines[:after]...)
	for _, k := range missing {
		out = append(out, indent+k+" = "+want[k]+nl)
	}
	return append(out, lines[after:]...)
}

// credentialsSet is sectionCredentialsSet for [flamenco-worker].
func credentialsSet(f *iniFile, out, name string, want map[string]string) bool {
	return sectionCredentialsSet(f, out, name, workerSection, want)
}

// sectionCredentialsSet reports whether out has the wanted credentials in
// section and, apart from them, the same assignments as the original file f.
func sectionCredentialsSet(f *iniFile, out, name, section string, want map[string]string) bool {
	g, err := parseINI(strings.NewReader(out), name)
	if err != nil {
		return false
	}
	for k, v := range want {
		if e := g.byName[section].get(k); e == nil || e.value != v {
			return false
		}
	}
	return slices.Equal(otherAssignments(f, section), otherAssignments(g, section))
}

// otherAssignments lists f's assignments other than section's credentials.
func otherAssignments(f *iniFile, section string) []string {
	var list []string
	for _, e := range f.raw {
		if e.section == section && isCredentialKey(e.key) {
			continue
		}
		list = append(list, e.section+"\x00"+e.key+"\x00"+e.value)
	}
	return list
}

func leadingSpace(line string) string {
	return line[:len(line)-len(strings.TrimLeftFunc(line, unicode.IsSpace))]
}

// writeFileAtomic replaces path with data through a 0600 temporary file in
// the same directory, so that a crash leaves either the old or the new file.
func writeFileAtomic(path string, data []byte) error {
	tmp, err := writeTemp(path, data)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	syncDir(filepath.Dir(path))
	return nil
}

// writeTemp writes data to a new, synced 0600 file next to path and
// returns its name.
func writeTemp(path string, data []byte) (string, error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return "", err
	}
	err = tmp.Chmod(0o600)
	if err == nil {
		_, err = tmp.Write(data)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp.Name())
		return "", err
	}
	return tmp.Name(), nil
}

// syncDir makes a rename in dir durable. Some file systems refuse to sync a
// directory; the rename has happened anyway, so errors are ignored.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
