package main

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// settings are a command's settings as the Manager sent them, decoded with
// json.Number so that integers (3) and floats (3.0) stay apart, as they do
// for the Python worker.
type settings map[string]any

// str returns a string setting. A missing or null optional setting yields def.
func (s settings) str(key string, required bool, def string) (string, error) {
	v, ok := s[key]
	if !ok || (v == nil && !required) {
		if required {
			return "", fmt.Errorf("missing %q", key)
		}
		return def, nil
	}
	str, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("%q must be a string, not %s", key, jsonType(v))
	}
	return str, nil
}

// nonEmptyStr is str for a required setting that may not be "".
func (s settings) nonEmptyStr(key string) (string, error) {
	v, err := s.str(key, true, "")
	if err == nil && v == "" {
		err = fmt.Errorf("%q may not be empty", key)
	}
	return v, err
}

// integer returns a JSON integer setting; 3.0 is not an integer.
func (s settings) integer(key string, required bool, def int64) (int64, error) {
	v, ok := s[key]
	if !ok || (v == nil && !required) {
		if required {
			return 0, fmt.Errorf("missing %q", key)
		}
		return def, nil
	}
	n, ok := v.(json.Number)
	if !ok || !isJSONInteger(n) {
		return 0, fmt.Errorf("%q must be an integer, not %s", key, jsonType(v))
	}
	i, err := n.Int64()
	if err != nil {
		return 0, fmt.Errorf("%q: %v", key, err)
	}
	return i, nil
}

// number returns a JSON number setting (integer or float) as a float64 and
// as the text Python would print for it ("24" or "24.0").
func (s settings) number(key string, required bool) (float64, string, error) {
	v, ok := s[key]
	if !ok || (v == nil && !required) {
		if required {
			return 0, "", fmt.Errorf("missing %q", key)
		}
		return 0, "", nil
	}
	n, ok := v.(json.Number)
	if !ok {
		return 0, "", fmt.Errorf("%q must be an integer or a float, not %s", key, jsonType(v))
	}
	f, err := n.Float64()
	if err != nil {
		return 0, "", fmt.Errorf("%q: %v", key, err)
	}
	return f, pythonNumber(n), nil
}

// boolean returns a JSON boolean setting.
func (s settings) boolean(key string, required bool, def bool) (bool, error) {
	v, ok := s[key]
	if !ok || (v == nil && !required) {
		if required {
			return false, fmt.Errorf("missing %q", key)
		}
		return def, nil
	}
	b, ok := v.(bool)
	if !ok {
		return false, fmt.Errorf("%q must be a boolean, not %s", key, jsonType(v))
	}
	return b, nil
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

// commandLine reads a command-line setting (exec's cmd, blender_cmd,
// ffmpeg_cmd) and splits it shell-style; it may not be empty.
func (s settings) commandLine(key string, required bool, def string) ([]string, error) {
	line, err := s.str(key, required, def)
	if err != nil {
		return nil, err
	}
	argv, err := shlexSplit(line)
	if err != nil {
		return nil, fmt.Errorf("%q: %v", key, err)
	}
	if len(argv) == 0 {
		return nil, fmt.Errorf("%q may not be empty", key)
	}
	return argv, nil
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
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case c == '\\':
			inWord = true
			if i+1 < len(s) {
				i++
				cur.WriteByte(s[i])
			}
		case c == '\'':
			inWord = true
			end := strings.IndexByte(s[i+1:], '\'')
			if end < 0 {
				return nil, fmt.Errorf("no closing quotation in %q", s)
			}
			cur.WriteString(s[i+1 : i+1+end])
			i += end + 1
		case c == '"':
			inWord = true
			closed := false
			for i++; i < len(s); i++ {
				if s[i] == '"' {
					closed = true
					break
				}
				if s[i] == '\\' && i+1 < len(s) && (s[i+1] == '\\' || s[i+1] == '"') {
					i++
				}
				cur.WriteByte(s[i])
			}
			if !closed {
				return nil, fmt.Errorf("no closing quotation in %q", s)
			}
		default:
			inWord = true
			cur.WriteByte(c)
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

// shellQuote quotes one word as Python's shlex.quote does.
func shellQuote(s string) string {
	if s == "" {
		return "''"
	}
	safe := true
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("_@%+=:,./-", r)) {
			safe = false
			break
		}
	}
	if safe {
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
