package main

import (
	"bytes"
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

// renderOptions is a compact form of the parsed options for table tests.
func renderOptions(o *options) string {
	var parts []string
	add := func(on bool, name string) {
		if on {
			parts = append(parts, name)
		}
	}
	if o.config != "" {
		parts = append(parts, "config="+o.config)
	}
	add(o.verbose, "verbose")
	add(o.version, "version")
	add(o.reregister, "reregister")
	add(o.debug, "debug")
	add(o.test, "test")
	add(o.single, "single")
	if o.runTask != "" {
		parts = append(parts, "run-task="+o.runTask)
	}
	add(o.check, "check")
	return strings.Join(parts, " ")
}

// TestFlagsLikeArgparse checks every command-line form against what
// Python 3's argparse (the Python worker's parser, set up with the same
// options) answers; the expected values were produced with argparse.
func TestFlagsLikeArgparse(t *testing.T) {
	tests := []struct {
		args []string
		want string // rendered options, "HELP", or "error: <message>"
	}{
		{nil, ""},
		{[]string{"-vd"}, "verbose debug"},
		{[]string{"-1d"}, "debug single"},
		{[]string{"-d1t"}, "debug test single"},
		{[]string{"-vvd"}, "verbose debug"},
		{[]string{"-cFILE"}, "config=FILE"},
		{[]string{"-c=FILE"}, "config=FILE"},
		{[]string{"-vc=FILE"}, "config==FILE verbose"}, // argparse: after a glued flag the rest is the value, "=" included
		{[]string{"-vcFILE"}, "config=FILE verbose"},
		{[]string{"-vc", "FILE"}, "config=FILE verbose"},
		{[]string{"-c", "FILE"}, "config=FILE"},
		{[]string{"-c", "-"}, "config=-"},
		{[]string{"-c", "-x y"}, "config=-x y"},
		{[]string{"-c="}, ""},
		{[]string{"--config=FILE"}, "config=FILE"},
		{[]string{"--conf=FILE"}, "config=FILE"},
		{[]string{"--config", "FILE"}, "config=FILE"},
		{[]string{"--verb"}, "verbose"},
		{[]string{"--sing"}, "single"},
		{[]string{"--re"}, "reregister"},
		{[]string{"--ch"}, "check"},
		{[]string{"--run", "t.json"}, "run-task=t.json"},
		{[]string{"--run=t.json"}, "run-task=t.json"},
		{[]string{"-v=d"}, "verbose debug"},
		{[]string{"-V", "-c", "x", "-1"}, "config=x version single"},
		{[]string{"--verbose", "--version", "--reregister", "--debug", "--test", "--single", "--check"}, "verbose version reregister debug test single check"},
		{[]string{"-h"}, "HELP"},
		{[]string{"--help"}, "HELP"},
		{[]string{"--he"}, "HELP"},
		{[]string{"--h"}, "HELP"},
		{[]string{"-vh"}, "HELP"},
		{[]string{"-x", "-h"}, "HELP"},
		{[]string{"-h", "-c"}, "HELP"},
		{[]string{"--ver"}, "error: ambiguous option: --ver could match --verbose, --version"},
		{[]string{"--v"}, "error: ambiguous option: --v could match --verbose, --version"},
		{[]string{"--c"}, "error: ambiguous option: --c could match --config, --check"},
		{[]string{"--r"}, "error: ambiguous option: --r could match --reregister, --run-task"},
		{[]string{"-h", "--ver"}, "error: ambiguous option: --ver could match --verbose, --version"},
		{[]string{"-v=x"}, "error: argument -v/--verbose: ignored explicit argument 'x'"},
		{[]string{"-vx"}, "error: argument -v/--verbose: ignored explicit argument 'x'"},
		{[]string{"-hx"}, "error: argument -h/--help: ignored explicit argument 'x'"},
		{[]string{"--verbose=1"}, "error: argument -v/--verbose: ignored explicit argument '1'"},
		{[]string{"-c"}, "error: argument -c/--config: expected one argument"},
		{[]string{"-c", "-v"}, "error: argument -c/--config: expected one argument"},
		{[]string{"-c", "--", "x"}, "error: argument -c/--config: expected one argument"},
		{[]string{"--run-task"}, "error: argument --run-task: expected one argument"},
		{[]string{"extra"}, "error: unrecognized arguments: extra"},
		{[]string{"--", "-v"}, "error: unrecognized arguments: -- -v"},
		{[]string{"-5"}, "error: unrecognized arguments: -5"},
		{[]string{"--no-such-flag", "-v", "x"}, "error: unrecognized arguments: --no-such-flag x"},
		{[]string{"-v="}, "error: argument -v/--verbose: ignored explicit argument ''"},
		{[]string{"--verbose="}, "error: argument -v/--verbose: ignored explicit argument ''"},
		{[]string{"-1.5"}, "error: argument -1/--single: ignored explicit argument '.5'"},
		{[]string{"--check=x"}, "error: argument --check: ignored explicit argument 'x'"},
		{[]string{"-c", "a", "b"}, "error: unrecognized arguments: b"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			o, err := parseFlags(tt.args)
			var got string
			switch {
			case errors.Is(err, errHelp):
				got = "HELP"
			case err != nil:
				got = "error: " + err.Error()
			default:
				got = renderOptions(o)
			}
			if got != tt.want {
				t.Errorf("parseFlags(%q) = %q, want %q", tt.args, got, tt.want)
			}
		})
	}
}

// TestUsageOutput: help goes to stdout with exit 0; a usage error prints
// argparse's usage line and the error to stderr, exit 2.
func TestUsageOutput(t *testing.T) {
	tests := []struct {
		args           []string
		code           int
		stdout, stderr string
	}{
		{[]string{"-h"}, exitOK, usageText, ""},
		{[]string{"--help"}, exitOK, usageText, ""},
		{[]string{"--no-such-flag"}, exitUsage, "", usageLine + "flamenco-worker: error: unrecognized arguments: --no-such-flag\n"},
		{[]string{"--ver"}, exitUsage, "", usageLine + "flamenco-worker: error: ambiguous option: --ver could match --verbose, --version\n"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := runTuned(t.Context(), tt.args, &stdout, &stderr, testTuning())
			if code != tt.code || stdout.String() != tt.stdout || stderr.String() != tt.stderr {
				t.Errorf("run(%q) = %d, stdout %q, stderr %q; want %d, %q, %q", tt.args, code, stdout.String(), stderr.String(), tt.code, tt.stdout, tt.stderr)
			}
		})
	}
}

func TestCommandLine(t *testing.T) {
	cases := []struct {
		args     []string
		code     int
		inStdout string
		inStderr string
	}{
		{[]string{"--version"}, 0, "", ""},
		{[]string{"-h"}, 0, "--run-task FILE", ""},
		{[]string{"--no-such-flag"}, 2, "", "unrecognized arguments: --no-such-flag"},
		{[]string{"extra-arg"}, 2, "", "unrecognized arguments: extra-arg"},
		{[]string{"--run-task", "examples/hello-task.json"}, 0, "status: completed", ""},
		{[]string{"--run-task", "testdata/failing-task.json"}, 1, "status: failed", ""},
		{[]string{"--run-task", "/does/not/exist.json"}, 2, "", "no such file"},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			t.Chdir(t.TempDir())
			for i, a := range c.args {
				if strings.HasSuffix(a, ".json") && !strings.HasPrefix(a, "/") {
					c.args[i] = filepath.Join(startDir, a)
				}
			}
			code := runTuned(t.Context(), c.args, &stdout, &stderr, testTuning())
			if code != c.code {
				t.Errorf("exit code = %d, want %d; stderr:\n%s", code, c.code, stderr.String())
			}
			if !strings.Contains(stdout.String(), c.inStdout) || !strings.Contains(stderr.String(), c.inStderr) {
				t.Errorf("stdout:\n%s\nstderr:\n%s\nwant %q / %q", stdout.String(), stderr.String(), c.inStdout, c.inStderr)
			}
		})
	}
}
