package main

import (
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
)

// options are the command-line flags of the Python worker, plus ours.
type options struct {
	config     string
	verbose    bool
	version    bool
	reregister bool
	debug      bool
	test       bool
	single     bool
	runTask    string
	check      bool
	help       bool
}

// usageLine is argparse's short usage, printed before a usage error.
const usageLine = "usage: flamenco-worker [-h] [-c PATH] [-v] [-V] [-r] [-d] [-t] [-1] [--run-task FILE] [--check]\n"

const usageText = usageLine + `
Runs the Flamenco Worker: registers with the Flamenco Manager, fetches
tasks, runs their commands and reports back.

Options:
  -c, --config PATH   read PATH instead of ./flamenco-worker.cfg
                      ($HOME/.flamenco-worker.cfg is still read on top)
  -v, --verbose       print the effective configuration (secrets hidden)
  -V, --version       print the version and exit
  -r, --reregister    register as a new worker, even with credentials
  -d, --debug         log at debug level
  -t, --test          testing mode: only run test-blender-render tasks
  -1, --single        run one task, then shut down
      --run-task FILE run the task in FILE (Manager JSON) locally and print
                      its updates; exit 0 if it completed, 1 if it failed
      --check         check the config, the Manager, Blender, FFmpeg and the
                      pre-task checks; print OK/FAIL per check, exit 0 if all pass
  -h, --help          show this help and exit

Flags combine and abbreviate as in the Python worker: -vd, -cFILE,
--config=FILE, --verb.

Signals: SIGINT/SIGTERM shut down cleanly (a second one exits at once),
SIGUSR1 prints goroutine stacks and the worker's state to stderr,
SIGTSTP sends the worker to sleep, SIGCONT (or SIGUSR2) wakes it up,
SIGHUP reopens the log files.
Exit codes: 0 clean shutdown, 1 runtime failure, 2 usage error,
47 configuration error.
`

// errHelp means -h or --help was given.
var errHelp = errors.New("help requested")

// flagSpec is one option: its short and long names, and whether it takes
// a value.
type flagSpec struct {
	short string // "-v", or "" when there is none
	long  string // "--verbose"
	value bool
	set   func(o *options, v string)
}

func (s *flagSpec) names() string {
	if s.short == "" {
		return s.long
	}
	return s.short + "/" + s.long
}

func flagSpecs() []*flagSpec {
	on := func(p func(o *options) *bool) func(*options, string) {
		return func(o *options, _ string) { *p(o) = true }
	}
	return []*flagSpec{
		{short: "-h", long: "--help", set: on(func(o *options) *bool { return &o.help })},
		{short: "-c", long: "--config", value: true, set: func(o *options, v string) { o.config = v }},
		{short: "-v", long: "--verbose", set: on(func(o *options) *bool { return &o.verbose })},
		{short: "-V", long: "--version", set: on(func(o *options) *bool { return &o.version })},
		{short: "-r", long: "--reregister", set: on(func(o *options) *bool { return &o.reregister })},
		{short: "-d", long: "--debug", set: on(func(o *options) *bool { return &o.debug })},
		{short: "-t", long: "--test", set: on(func(o *options) *bool { return &o.test })},
		{short: "-1", long: "--single", set: on(func(o *options) *bool { return &o.single })},
		{long: "--run-task", value: true, set: func(o *options, v string) { o.runTask = v }},
		{long: "--check", set: on(func(o *options) *bool { return &o.check })},
	}
}

// flagArg is one command-line word as argparse classifies it: an option
// (spec set; explicit is a value or more short flags glued to it), an
// unknown option, or a positional word.
type flagArg struct {
	word       string
	spec       *flagSpec
	name       string  // the option string matched, e.g. "-v" or "--verbose"
	explicit   *string // text after "=" or after a short option's letter
	positional bool
	terminator bool // the first "--", after which every word is positional
}

// parseFlags parses args with the semantics of Python's argparse, which
// the Python worker uses: combined short flags (-vd), attached values
// (-cFILE, -c=FILE, --config=FILE), unambiguous prefixes of long options
// (--verb), "--" ending the options. It returns errHelp for -h/--help, and
// an argparse-worded error for anything it cannot accept.
func parseFlags(args []string) (*options, error) {
	specs := flagSpecs()
	words := make([]flagArg, len(args))
	// Like argparse, classify every word before acting on any, so that an
	// ambiguous option is an error wherever it is.
	ended := false
	for i, a := range args {
		if ended {
			words[i] = flagArg{word: a, positional: true}
			continue
		}
		if a == "--" {
			words[i] = flagArg{word: a, terminator: true}
			ended = true
			continue
		}
		w, err := classify(specs, a)
		if err != nil {
			return nil, err
		}
		words[i] = w
	}
	o := &options{}
	var extras []string
	for i := 0; i < len(words); i++ {
		w := words[i]
		switch {
		case w.terminator, w.positional, w.spec == nil:
			extras = append(extras, w.word)
			continue
		}
		next, err := consume(o, specs, words, i)
		if err != nil {
			return nil, err
		}
		if o.help {
			return nil, errHelp // argparse prints the help at once, ignoring what follows
		}
		i = next
	}
	if len(extras) > 0 {
		return nil, fmt.Errorf("unrecognized arguments: %s", strings.Join(extras, " "))
	}
	return o, nil
}

// consume applies the option at words[i] (with its glued short flags or
// value) and returns the index of the last word it used.
func consume(o *options, specs []*flagSpec, words []flagArg, i int) (int, error) {
	spec, name, explicit := words[i].spec, words[i].name, words[i].explicit
	for {
		if explicit == nil {
			if !spec.value {
				spec.set(o, "")
				return i, nil
			}
			j := i + 1
			if j >= len(words) || !words[j].positional {
				return i, fmt.Errorf("argument %s: expected one argument", spec.names())
			}
			spec.set(o, words[j].word)
			return j, nil
		}
		if spec.value {
			spec.set(o, *explicit)
			return i, nil
		}
		if strings.HasPrefix(name, "--") || *explicit == "" {
			return i, fmt.Errorf("argument %s: ignored explicit argument '%s'", spec.names(), *explicit)
		}
		// A short flag with letters after it: they are more short options.
		spec.set(o, "")
		name = "-" + (*explicit)[:1]
		rest := (*explicit)[1:]
		next := findExact(specs, name)
		if next == nil {
			return i, fmt.Errorf("argument %s: ignored explicit argument '%s'", spec.names(), *explicit)
		}
		spec, explicit = next, nil
		if rest != "" {
			explicit = &rest
		}
	}
}

// findExact returns the spec with the option string name, or nil.
func findExact(specs []*flagSpec, name string) *flagSpec {
	for _, s := range specs {
		if name == s.short || name == s.long {
			return s
		}
	}
	return nil
}

// classify is argparse's _parse_optional for one word.
func classify(specs []*flagSpec, a string) (flagArg, error) {
	w := flagArg{word: a}
	if len(a) < 2 || a[0] != '-' {
		w.positional = true
		return w, nil
	}
	if s := findExact(specs, a); s != nil {
		w.spec, w.name = s, a
		return w, nil
	}
	if before, after, ok := strings.Cut(a, "="); ok {
		if s := findExact(specs, before); s != nil {
			w.spec, w.name, w.explicit = s, before, &after
			return w, nil
		}
	}
	var matches []flagArg
	if strings.HasPrefix(a, "--") {
		prefix, value, hasValue := strings.Cut(a, "=")
		for _, s := range specs {
			if strings.HasPrefix(s.long, prefix) {
				m := flagArg{word: a, spec: s, name: s.long}
				if hasValue {
					m.explicit = &value
				}
				matches = append(matches, m)
			}
		}
	} else {
		rest := a[2:]
		for _, s := range specs {
			if s.short == a[:2] {
				matches = append(matches, flagArg{word: a, spec: s, name: s.short, explicit: &rest})
			}
		}
	}
	switch {
	case len(matches) > 1:
		names := make([]string, len(matches))
		for i, m := range matches {
			names[i] = m.name
		}
		return w, fmt.Errorf("ambiguous option: %s could match %s", a, strings.Join(names, ", "))
	case len(matches) == 1:
		return matches[0], nil
	}
	if strings.Contains(a, " ") {
		w.positional = true // argparse: a word with a space is a value, not an option
	}
	return w, nil
}

// Exit codes, as the Python worker's: 2 is argparse's usage error, 47 a
// configuration error, which a restart cannot fix (the unit's
// RestartPreventExitStatus).
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
	exitConfig  = 47
)

// baseVersion is this worker's version. 2.5 is the Python worker it
// replaces (the same protocol, configuration and command line), so a farm
// admin reading the Manager's "software" column (our User-Agent) sees which
// generation it is; go.N counts this implementation's releases and tells
// it apart from the Python worker's 2.5. Every build reports it (a plain
// go build too), with the VCS revision added when the build knows it.
const baseVersion = "2.5.0-go.1"

// workerVersion is baseVersion plus, as semver build metadata, the VCS
// revision the binary was built from ("+0123456789ab", ".dirty" for a
// modified tree) when the build recorded it. -V, the User-Agent, --check
// and the start-up log line all use it.
func workerVersion() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return baseVersion
	}
	return versionWith(info.Settings)
}

// versionWith is workerVersion for the given build settings.
func versionWith(settings []debug.BuildSetting) string {
	rev, dirty := "", false
	for _, s := range settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return baseVersion
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += ".dirty"
	}
	return baseVersion + "+" + rev
}
