package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// settings are a command's settings, decoded with json.Number so that
// integers (3) and floats (3.0) stay apart, as for the Python worker.
type settings map[string]any

// settingsReader keeps the first error and makes the reads after it no-ops:
// the first bad setting is the one reported, as by the Python worker.
type settingsReader struct {
	s     settings
	first error
}

func (s settings) reader() *settingsReader { return &settingsReader{s: s} }

func (r *settingsReader) err() error { return r.first }

// failf records an error unless an earlier one stands.
func (r *settingsReader) failf(format string, args ...any) {
	if r.first == nil {
		r.first = fmt.Errorf(format, args...)
	}
}

// then runs check, a step that is not a read (it may touch the file
// system), unless an earlier step failed.
func (r *settingsReader) then(check func() error) {
	if r.first == nil {
		r.first = check()
	}
}

var errWrongType = errors.New("wrong type")

// get is what every accessor shares: a missing setting is an error when
// required, a missing or null optional one yields def. conv returns
// errWrongType for a value of the wrong type, which is "not <want>".
func get[T any](r *settingsReader, key string, required bool, def T, want string, conv func(any) (T, error)) T {
	var zero T
	v, ok := r.s[key]
	switch {
	case r.first != nil:
		return zero
	case !ok && required:
		r.failf("missing %q", key)
		return zero
	case !ok || v == nil && !required:
		return def
	}
	t, err := conv(v)
	if err == errWrongType {
		r.failf("%q must be %s, not %s", key, want, jsonType(v))
	} else if err != nil {
		r.failf("%q: %v", key, err)
	}
	return t
}

func (r *settingsReader) str(key string, required bool, def string) string {
	return get(r, key, required, def, "a string", func(v any) (string, error) {
		if s, ok := v.(string); ok {
			return s, nil
		}
		return "", errWrongType
	})
}

// nonEmpty is str for a required setting that may not be "", with emptyMsg
// (default: "<key>" may not be empty) as the error for "".
func (r *settingsReader) nonEmpty(key string, emptyMsg ...string) string {
	v := r.str(key, true, "")
	if v == "" && len(emptyMsg) > 0 {
		r.failf("%s", emptyMsg[0])
	} else if v == "" {
		r.failf("%q may not be empty", key)
	}
	return v
}

// integer returns a JSON integer setting; 3.0 is not an integer.
func (r *settingsReader) integer(key string, required bool, def int64) int64 {
	return get(r, key, required, def, "an integer", func(v any) (int64, error) {
		if n, ok := v.(json.Number); ok && isJSONInteger(n) {
			return n.Int64()
		}
		return 0, errWrongType
	})
}

// number returns a JSON number setting (integer or float) as a float64 and
// as the text Python would print for it ("24" or "24.0").
func (r *settingsReader) number(key string, required bool) (float64, string) {
	n := get(r, key, required, "", "an integer or a float", func(v any) (json.Number, error) {
		n, ok := v.(json.Number)
		if !ok {
			return "", errWrongType
		}
		_, err := n.Float64()
		return n, err
	})
	f, _ := n.Float64()
	return f, pythonNumber(n)
}

// commandLine reads a command-line setting (exec's cmd, blender_cmd,
// ffmpeg_cmd) and splits it shell-style; it may not be empty.
func (r *settingsReader) commandLine(key string, required bool, def string) []string {
	argv, err := shlexSplit(r.str(key, required, def)) // "" after an error: no words
	if err != nil {
		r.failf("%q: %v", key, err)
	} else if len(argv) == 0 {
		r.failf("%q may not be empty", key)
	}
	return argv
}

func isJSONInteger(n json.Number) bool {
	return !strings.ContainsAny(string(n), ".eE")
}

// pythonNumber prints a JSON number the way Python's str() prints the value
// json.loads makes of it: integers as is, floats with at least one decimal.
func pythonNumber(n json.Number) string {
	if isJSONInteger(n) {
		return string(n)
	}
	f, err := n.Float64()
	if err != nil {
		return string(n)
	}
	s := strconv.FormatFloat(f, 'f', -1, 64)
	if !strings.Contains(s, ".") {
		s += ".0"
	}
	return s
}

// jsonType names a decoded JSON value's type for error messages.
func jsonType(v any) string {
	switch v := v.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case json.Number:
		if isJSONInteger(v) {
			return "an integer"
		}
		return "a float"
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("a %T", v)
}

// shlexSplit splits a command line the way Python's shlex.split does in POSIX
// mode: whitespace separates words, single quotes keep everything literal,
// double quotes allow only \" and \\ escapes, a backslash outside quotes escapes
// the next character. There is no variable or glob expansion.
func shlexSplit(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case strings.IndexByte(" \t\n\r", c) >= 0:
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
			}
			inWord = false
			continue
		case c == '\\':
			if i+1 < len(s) {
				i++
				cur.WriteByte(s[i])
			}
		case c == '\'':
			end := strings.IndexByte(s[i+1:], '\'')
			if end < 0 {
				return nil, fmt.Errorf("no closing quotation in %q", s)
			}
			cur.WriteString(s[i+1 : i+1+end])
			i += end + 1
		case c == '"':
			for i++; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) && (s[i+1] == '\\' || s[i+1] == '"') {
					i++
				}
				cur.WriteByte(s[i])
			}
			if i == len(s) {
				return nil, fmt.Errorf("no closing quotation in %q", s)
			}
		default:
			cur.WriteByte(c)
		}
		inWord = true
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

// shellUnsafe is what makes Python's shlex.quote quote a word.
var shellUnsafe = regexp.MustCompile(`[^\w@%+=:,./-]`)

func shellQuote(s string) string {
	if s == "" {
		return "''"
	}
	if !shellUnsafe.MatchString(s) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'"'"'`) + "'"
}

// shellJoin quotes and joins argv for log lines, as the Python worker does.
func shellJoin(argv []string) string {
	quoted := make([]string, len(argv))
	for i, a := range argv {
		quoted[i] = shellQuote(a)
	}
	return strings.Join(quoted, " ")
}
