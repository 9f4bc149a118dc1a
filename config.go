package main

import (
	"cmp"
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
	Tuning            tuning

	Environment   []string       // [environment] as "KEY=value", in file order
	PreTaskChecks []preTaskCheck // [pre_task_check], read checks first
	Logging       logConfig      // the Python logging sections (logging.go)

	// HomeConfig is where registration writes the credentials, in section
	// CredSection (see instanceSection).
	HomeConfig  string
	CredSection string
	LoadedFiles []string // the config files read, in layer order
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
	homeConfigName = ".flamenco-worker.cfg"
	checkSection   = "pre_task_check"
	envSection     = "environment"
	jobTypesKey    = "job_types" // the seed README's name for task_types
)

// configKey describes one [flamenco-worker] key.
type configKey struct {
	name   string
	field  func(c *Config) any // pointer to the Config field
	zeroOK bool                // numbers: whether 0 is allowed (negative never is)
	check  func(string) error  // strings: extra validation
	secret bool                // hidden in writeEffective
	max    float64             // numbers: the largest allowed (seconds for a duration), or 0
}

// Bounds of the time keys: a loop that talks to the Manager must not spin
// (may_i_run_interval_seconds = 0.000000001 once sent 2,700 requests a
// second), and a delay of years is a typo. A zeroOK key may also be 0
// (off, or "at once").
const (
	minSeconds = 0.1
	hour       = 3600.0
	day        = 24 * hour
)

// configKeys lists the [flamenco-worker] keys in the order the Python worker
// documents them, then ours.
func configKeys() []configKey {
	return []configKey{
		{name: "manager_url", field: func(c *Config) any { return &c.ManagerURL }, check: checkManagerURL},
		{name: "task_types", field: func(c *Config) any { return &c.TaskTypes }},
		{name: "task_update_queue_db", field: func(c *Config) any { return &c.TaskUpdateQueueDB }, check: checkNotEmpty},
		{name: "subprocess_pid_file", field: func(c *Config) any { return &c.SubprocessPIDFile }},
		{name: "may_i_run_interval_seconds", field: func(c *Config) any { return &c.MayIRunInterval }, max: hour},
		{name: credIDKey, field: func(c *Config) any { return &c.WorkerID }},
		{name: credSecretKey, field: func(c *Config) any { return &c.WorkerSecret }, secret: true},
		{name: "worker_registration_secret", field: func(c *Config) any { return &c.WorkerRegistrationSecret }, secret: true},
		{name: "push_log_max_interval_seconds", field: func(c *Config) any { return &c.PushLogMaxInterval }, zeroOK: true, max: hour},
		{name: "push_log_max_entries", field: func(c *Config) any { return &c.PushLogMaxEntries }, zeroOK: true, max: 100000},
		{name: "push_act_max_interval_seconds", field: func(c *Config) any { return &c.PushActMaxInterval }, zeroOK: true, max: hour},
		{name: "subprocess_timeout_seconds", field: func(c *Config) any { return &c.SubprocessTimeout }, zeroOK: true, max: 30 * day},
		{name: "task_timeout_seconds", field: func(c *Config) any { return &c.TaskTimeout }, zeroOK: true, max: 365 * day},
		{name: "error_retry_seconds", field: func(c *Config) any { return &c.ErrorRetry }, max: day},
		{name: "manager_ca_file", field: func(c *Config) any { return &c.ManagerCAFile }},
		// What were constants in the Python worker (spec/python-worker.md §6.10).
		{name: "kill_grace_seconds", field: func(c *Config) any { return &c.Tuning.killGrace }, max: 60},
		{name: "fetch_empty_retry_seconds", field: func(c *Config) any { return &c.Tuning.fetchEmpty }, max: hour},
		{name: "fetch_error_retry_seconds", field: func(c *Config) any { return &c.Tuning.fetchFailed }, max: hour},
		{name: "asleep_poll_interval_seconds", field: func(c *Config) any { return &c.Tuning.asleepPoll }, max: hour},
		{name: "register_retry_seconds", field: func(c *Config) any { return &c.Tuning.registerRetry }, max: hour},
		{name: "queue_size_threshold", field: func(c *Config) any { return &c.Tuning.queueLimit }, zeroOK: true, max: 100000},
		{name: "update_backoff_min_seconds", field: func(c *Config) any { return &c.Tuning.updateBackoff.min }, max: hour},
		{name: "update_backoff_max_seconds", field: func(c *Config) any { return &c.Tuning.updateBackoff.max }, max: day},
		{name: "http_connect_timeout_seconds", field: func(c *Config) any { return &c.Tuning.http.connect }, max: 300},
		{name: "http_response_timeout_seconds", field: func(c *Config) any { return &c.Tuning.http.header }, max: 300},
		{name: "http_idle_timeout_seconds", field: func(c *Config) any { return &c.Tuning.http.idle }, max: 300},
		{name: "output_produced_interval_seconds", field: func(c *Config) any { return &c.Tuning.outputWindow }, max: hour},
		{name: "blend_file_wait_seconds", field: func(c *Config) any { return &c.Tuning.fileWait }, zeroOK: true, max: 600},
	}
}

// isConfigKey reports whether key (lower-cased) belongs in [flamenco-worker].
func isConfigKey(key string) bool {
	return key == jobTypesKey || slices.ContainsFunc(configKeys(), func(k configKey) bool { return k.name == key })
}

// set parses v into the key's Config field.
func (k configKey) set(c *Config, v string) error {
	switch p := k.field(c).(type) {
	case *string:
		if k.check != nil {
			if err := k.check(v); err != nil {
				return errors.New(redactIn(err.Error(), v)) // the error may quote a URL with a password
			}
		}
		*p = v
	case *[]string:
		if *p = strings.Fields(v); len(*p) == 0 {
			return errors.New("must list at least one task type")
		}
	case *int:
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("%s is not a whole number", clip(v))
		}
		if n < 0 {
			return fmt.Errorf("must not be negative, not %d", n)
		}
		*p = n
		return k.inBounds(float64(n), 0, v, "")
	case *time.Duration:
		d, err := parseSeconds(v, k.zeroOK)
		if err != nil {
			return err
		}
		*p = d
		return k.inBounds(d.Seconds(), minSeconds, v, " seconds")
	}
	return nil
}

// inBounds checks a number against min and the key's max; a zeroOK key's
// 0 is always fine.
func (k configKey) inBounds(f, min float64, v, unit string) error {
	switch {
	case f == 0 && k.zeroOK:
	case f < min && k.zeroOK:
		return fmt.Errorf("must be 0 or at least %s%s, not %s", formatNumber(min), unit, v)
	case f < min:
		return fmt.Errorf("must be at least %s%s, not %s", formatNumber(min), unit, v)
	case k.max > 0 && f > k.max:
		return fmt.Errorf("must be at most %s%s, not %s", formatNumber(k.max), unit, v)
	}
	return nil
}

func formatNumber(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }

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
		return formatNumber(p.Seconds())
	}
	return ""
}

// parseSeconds parses a number of seconds as the Python worker does (a
// float), refusing what would make an interval meaningless.
func parseSeconds(v string, zeroOK bool) (time.Duration, error) {
	f, err := strconv.ParseFloat(v, 64)
	switch {
	case err != nil || math.IsNaN(f) || math.IsInf(f, 0):
		return 0, fmt.Errorf("%s is not a number of seconds", clip(v))
	case f < 0:
		return 0, fmt.Errorf("must not be negative, not %s", v)
	case f > float64(math.MaxInt64)/float64(time.Second):
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
	const example = "(so https://something/ or http://something/)"
	scheme, _, isURL := strings.Cut(v, "://")
	switch {
	case v == "":
		return nil
	case v[0] == '\'' || v[0] == '"':
		return fmt.Errorf("should not be quoted: %s", v)
	case !isURL:
		return fmt.Errorf("should be a URL %s, not %s", example, v)
	case !slices.Contains([]string{"http", "https"}, strings.ToLower(scheme)):
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
	if warn == nil {
		warn = func(string) {}
	}
	section, err := instanceSection(cfgFile)
	if err != nil {
		return nil, err
	}
	cfg := defaultConfig()
	cfg.Tuning, cfg.CredSection = tune, section
	if homeDir != "" {
		cfg.HomeConfig = filepath.Join(homeDir, homeConfigName)
	}
	merged, edits := builtinINI(&cfg), []func(*iniEntry) bool{nil, instanceCredentials(section)}
	for i, path := range []string{cmp.Or(cfgFile, cwdConfigName), cfg.HomeConfig} {
		f, err := readINIFile(path, i == 0 && cfgFile != "")
		if err != nil {
			return nil, err
		}
		if f == nil {
			continue
		}
		warnUnknown(f, warn)
		warnReadableSecret(f, path, warn)
		merged.merge(f, edits[i])
		cfg.LoadedFiles = append(cfg.LoadedFiles, path)
	}
	warnTaskTypesAlias(merged, warn)
	cfg.Logging = parseLogging(merged)
	for _, apply := range []func(*iniFile) error{cfg.applyWorker, cfg.applyPreTaskChecks, cfg.applyEnvironment} {
		if err := apply(merged); err != nil {
			return nil, err
		}
	}
	if b := cfg.Tuning.updateBackoff; b.max < b.min {
		sec := merged.byName[workerSection]
		e := sec.get("update_backoff_max_seconds")
		if e.builtin {
			e = sec.get("update_backoff_min_seconds")
		}
		return nil, e.errorf("%s: update_backoff_max_seconds (%s) must not be less than update_backoff_min_seconds (%s)",
			e.key, formatNumber(b.max.Seconds()), formatNumber(b.min.Seconds()))
	}
	return &cfg, nil
}

// readINIFile parses one layer; it returns nil for a missing optional
// file, or no file ("").
func readINIFile(path string, required bool) (*iniFile, error) {
	if path == "" {
		return nil, nil
	}
	fh, err := os.Open(path)
	switch {
	case errors.Is(err, fs.ErrNotExist) && required:
		return nil, fmt.Errorf("config file %s does not exist", path)
	case errors.Is(err, fs.ErrNotExist):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("reading config: %w", err)
	}
	defer fh.Close()
	return parseINI(fh, path)
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

// builtinINI holds c's values as INI values, so that ${key} references to
// keys no file sets resolve as in Python, where the defaults are read into
// the same parser.
func builtinINI(c *Config) *iniFile {
	f := newINIFile()
	for _, k := range configKeys() {
		f.add(iniEntry{section: workerSection, key: k.name, value: escapeINI(k.format(c)), file: "(built-in defaults)", builtin: true})
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
	if tt, jt := sec.get("task_types"), sec.get(jobTypesKey); jt != nil && !tt.builtin {
		warn(fmt.Sprintf("%s:%d: task_types and %s:%d: job_types are both set; task_types is used, job_types ignored", tt.file, tt.line, jt.file, jt.line))
	}
}

// knownSection reports whether a section is used; the Python logging
// sections are read by parseLogging.
func knownSection(name string) bool {
	switch name {
	case workerSection, checkSection, envSection, defaultSection, "loggers", "handlers", "formatters":
		return true
	}
	return slices.ContainsFunc([]string{"logger_", "handler_", "formatter_", instancePrefix}, func(prefix string) bool {
		return strings.HasPrefix(name, prefix)
	})
}

// applyWorker sets c from [flamenco-worker].
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
	var reads, writes []preTaskCheck
	err := f.eachValue(checkSection, func(e *iniEntry, v string) error {
		key := strings.ToLower(e.key)
		write := strings.HasPrefix(key, "write")
		switch {
		case !write && !strings.HasPrefix(key, "read"):
			return e.errorf("[%s] key %q should start with \"read\" or \"write\"", checkSection, e.key)
		case v == "":
			return e.errorf("[%s] %s: empty path", checkSection, e.key)
		case write:
			writes = append(writes, preTaskCheck{Key: e.key, Write: true, Path: absPath(v)})
		default:
			reads = append(reads, preTaskCheck{Key: e.key, Path: absPath(v)})
		}
		return nil
	})
	c.PreTaskChecks = append(reads, writes...)
	return err
}

// applyEnvironment reads [environment], keeping the keys' spelling since
// environment variable names are case-sensitive.
func (c *Config) applyEnvironment(f *iniFile) error {
	return f.eachValue(envSection, func(e *iniEntry, v string) error {
		if strings.ContainsFunc(e.key, func(r rune) bool { return unicode.IsSpace(r) || r == 0 }) {
			return e.errorf("[%s] %q is not a valid environment variable name", envSection, e.key)
		}
		if strings.ContainsRune(v, 0) {
			return e.errorf("[%s] %s: value contains a NUL character", envSection, e.key)
		}
		c.Environment = append(c.Environment, e.key+"="+v)
		return nil
	})
}

// writeEffective writes the effective config in INI form (for --verbose),
// with the secrets shown as "-hidden-".
func (c *Config) writeEffective(w io.Writer) error {
	var b strings.Builder
	b.WriteString("[" + workerSection + "]\n")
	for _, k := range configKeys() {
		v := k.format(c)
		if k.secret && v != "" {
			v = "-hidden-"
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
