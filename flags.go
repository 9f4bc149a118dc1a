package main

import (
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
)

// options are the command-line flags of the Python worker, plus ours.
type options struct {
	config, runTask                                                string
	verbose, version, reregister, debug, test, single, check, help bool
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

// flagSpec is one option: its short ("" if none) and long names, and the
// field it sets: on for a switch, val for an option with a value.
type flagSpec struct {
	short, long string
	on          *bool
	val         *string
}

func (s *flagSpec) names() string { return strings.TrimPrefix(s.short+"/"+s.long, "/") }

func (s *flagSpec) set(v string) {
	if s.val != nil {
		*s.val = v
	} else {
		*s.on = true
	}
}

func flagSpecs(o *options) []*flagSpec {
	return []*flagSpec{
		{"-h", "--help", &o.help, nil},
		{"-c", "--config", nil, &o.config},
		{"-v", "--verbose", &o.verbose, nil},
		{"-V", "--version", &o.version, nil},
		{"-r", "--reregister", &o.reregister, nil},
		{"-d", "--debug", &o.debug, nil},
		{"-t", "--test", &o.test, nil},
		{"-1", "--single", &o.single, nil},
		{"", "--run-task", nil, &o.runTask},
		{"", "--check", &o.check, nil},
	}
}

// flagArg is one command-line word as argparse classifies it: an option
// (spec set; explicit is a value or more short flags glued to it), a
// positional word, or neither (an unknown option, or "--").
type flagArg struct {
	word       string
	spec       *flagSpec
	explicit   *string // text after "=" or after a short option's letter
	positional bool
}

// parseFlags parses args with the semantics of Python's argparse, which
// the Python worker uses: combined short flags (-vd), attached values
// (-cFILE, -c=FILE, --config=FILE), unambiguous prefixes of long options
// (--verb), "--" ending the options. It returns errHelp for -h/--help, and
// an argparse-worded error for anything it cannot accept.
func parseFlags(args []string) (*options, error) {
	o := &options{}
	specs := flagSpecs(o)
	words := make([]flagArg, len(args))
	// Like argparse, classify every word before acting on any, so that an
	// ambiguous option is an error wherever it is.
	for i, a := range args {
		if a == "--" {
			for j := i + 1; j < len(args); j++ {
				words[j] = flagArg{word: args[j], positional: true}
			}
			words[i] = flagArg{word: a}
			break
		}
		var err error
		if words[i], err = classify(specs, a); err != nil {
			return nil, err
		}
	}
	var extras []string
	for i := 0; i < len(words); i++ {
		if words[i].spec == nil {
			extras = append(extras, words[i].word)
			continue
		}
		var err error
		if i, err = consume(specs, words, i); err != nil {
			return nil, err
		}
		if o.help {
			return nil, errHelp // argparse prints the help at once, ignoring what follows
		}
	}
	if len(extras) > 0 {
		return nil, fmt.Errorf("unrecognized arguments: %s", strings.Join(extras, " "))
	}
	return o, nil
}

// consume applies the option at words[i] (with its glued short flags or
// value) and returns the index of the last word it used.
func consume(specs []*flagSpec, words []flagArg, i int) (int, error) {
	spec, explicit := words[i].spec, words[i].explicit
	for explicit != nil && spec.val == nil {
		var next *flagSpec // a short flag with letters after it: they are more short options
		if !strings.HasPrefix(words[i].word, "--") && *explicit != "" {
			next = findExact(specs, "-"+(*explicit)[:1])
		}
		if next == nil {
			return i, fmt.Errorf("argument %s: ignored explicit argument '%s'", spec.names(), *explicit)
		}
		spec.set("")
		rest := (*explicit)[1:]
		spec, explicit = next, nil
		if rest != "" {
			explicit = &rest
		}
	}
	switch {
	case explicit != nil:
		spec.set(*explicit)
	case spec.val == nil:
		spec.set("")
	case i+1 < len(words) && words[i+1].positional:
		i++
		spec.set(words[i].word)
	default:
		return i, fmt.Errorf("argument %s: expected one argument", spec.names())
	}
	return i, nil
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
	w := flagArg{word: a, positional: len(a) < 2 || a[0] != '-'}
	before, after, hasValue := strings.Cut(a, "=")
	if hasValue {
		w.explicit = &after
	}
	if w.positional {
		return w, nil
	}
	if w.spec = findExact(specs, before); w.spec != nil {
		return w, nil
	}
	var matches []string
	for _, s := range specs {
		if strings.HasPrefix(a, "--") && strings.HasPrefix(s.long, before) {
			matches, w.spec = append(matches, s.long), s
		} else if !strings.HasPrefix(a, "--") && s.short == a[:2] {
			rest := a[2:]
			return flagArg{word: a, spec: s, explicit: &rest}, nil
		}
	}
	if len(matches) > 1 {
		return flagArg{}, fmt.Errorf("ambiguous option: %s could match %s", a, strings.Join(matches, ", "))
	}
	w.positional = w.spec == nil && strings.Contains(a, " ") // argparse: a word with a space is a value
	return w, nil
}

// Exit codes, as the Python worker's: 2 is argparse's usage error, 47 a
// configuration error, which a restart cannot fix (RestartPreventExitStatus).
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
	exitConfig  = 47
)

// baseVersion is this worker's version: 2.5 is the Python worker it
// replaces (same protocol, configuration and command line), so that the
// Manager's "software" column (our User-Agent) shows the generation; go.N
// counts this implementation's releases.
const baseVersion = "2.5.0-go.1"

// workerVersion is baseVersion plus, as semver build metadata, the VCS
// revision the binary was built from ("+0123456789ab", ".dirty" for a
// modified tree) when the build recorded it.
func workerVersion() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return baseVersion
	}
	return versionWith(info.Settings)
}

func versionWith(settings []debug.BuildSetting) string {
	rev, dirty := "", ""
	for _, s := range settings {
		switch {
		case s.Key == "vcs.revision":
			rev = s.Value[:min(12, len(s.Value))]
		case s.Key == "vcs.modified" && s.Value == "true":
			dirty = ".dirty"
		}
	}
	if rev == "" {
		return baseVersion
	}
	return baseVersion + "+" + rev + dirty
}
