package main

import (
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

const (
	defaultSection = "DEFAULT"

	// configparser's MAX_INTERPOLATION_DEPTH: a reference loop is an error.
	maxInterpolationDepth = 10
	// Bounds on the work for one value, so that keys referencing each other
	// many times ("billion laughs") cannot make loading take forever.
	maxInterpolationRefs = 1000
	maxExpandedLen       = 64 << 10
)

// iniEntry is one "key = value" assignment.
type iniEntry struct {
	section string // section name as written in its header
	key     string // the key's spelling in the assignment that set it last
	value   string // raw value, continuation lines joined with "\n", before interpolation
	file    string
	line    int  // line of the "key = value" line
	end     int  // last line of the value, continuation lines included
	builtin bool // a built-in default, not from any file
}

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

// get returns the section's own entry for key (not DEFAULT's), or nil
// (also when s is nil).
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
	s := f.addSection(e.section, e.file, e.line)
	k := strings.ToLower(e.key)
	if old := s.index[k]; old != nil {
		*old = e
		return
	}
	s.entries = append(s.entries, &e)
	s.index[k] = &e
}

// merge lays g over f: g's assignments win. edit, if not nil, may change
// each of g's assignments first, or drop it (by returning false).
func (f *iniFile) merge(g *iniFile, edit func(e *iniEntry) bool) {
	for _, s := range g.sections {
		f.addSection(s.name, s.file, s.line)
	}
	for _, e := range g.raw {
		if edit == nil || edit(&e) {
			f.add(e)
		}
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

// eachValue calls fn with every entry of section (not DEFAULT's) and its
// expanded value, in order, up to the first error.
func (f *iniFile) eachValue(section string, fn func(e *iniEntry, v string) error) error {
	if s := f.byName[section]; s != nil {
		for _, e := range s.entries {
			v, err := f.expand(section, e)
			if err == nil {
				err = fn(e, v)
			}
			if err != nil {
				return err
			}
		}
	}
	return nil
}

type iniParser struct {
	f      *iniFile
	name   string
	sect   *iniSection // nil before the first section header
	cur    *iniEntry   // the assignment continuation lines would extend
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
			p.cur.value += "\n"
		}
		return nil
	case text[0] == '#' || text[0] == ';':
		return nil
	}
	indent := len(line) - len(strings.TrimLeftFunc(line, unicode.IsSpace))
	if p.cur != nil && indent > p.indent {
		p.cur.value += "\n" + text
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
	p.cur = &iniEntry{section: p.sect.name, key: key, value: strings.TrimSpace(text[i+1:]), file: p.name, line: n, end: n}
	p.indent = indent
	return nil
}

// flush stores the assignment being read, if any.
func (p *iniParser) flush() {
	if p.cur == nil {
		return
	}
	p.cur.value = strings.TrimRightFunc(p.cur.value, unicode.IsSpace)
	p.f.add(*p.cur)
	p.sect.last = p.cur.end
	p.cur = nil
}

// clip quotes s for an error message, shortened if long.
func clip(s string) string {
	if c := cutAt(s, 60); c != s {
		s = c + "..."
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
	if err := x.expand(section, e, 1); err != nil {
		return "", err
	}
	return x.b.String(), nil
}

func (x *expander) expand(section string, e *iniEntry, depth int) error {
	if depth > maxInterpolationDepth {
		return e.errorf("%s: more than %d levels of ${...} references (a reference loop?)", e.key, maxInterpolationDepth)
	}
	rest := e.value
	for {
		i := strings.IndexByte(rest, '$')
		if i < 0 {
			return x.write(e, rest)
		}
		err := x.write(e, rest[:i])
		rest = rest[i:]
		end := strings.IndexByte(rest, '}')
		switch {
		case err != nil:
		case strings.HasPrefix(rest, "$$"):
			err, rest = x.write(e, "$"), rest[2:]
		case !strings.HasPrefix(rest, "${"):
			return e.errorf("%s: '$' must be followed by '$' or '{', found %s (write $$ for a literal $)", e.key, clip(rest))
		case end < 3:
			return e.errorf("%s: bad reference %s: want ${key} or ${section:key}", e.key, clip(rest))
		default:
			err, rest = x.reference(section, e, rest[2:end], depth), rest[end+1:]
		}
		if err != nil {
			return err
		}
	}
}

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
	return x.expand(sect, target, depth+1)
}

// writeINILine writes "key = value" so that parseINI reads value back.
func writeINILine(b *strings.Builder, key, value string) {
	if value != "" {
		value = " " + strings.ReplaceAll(escapeINI(value), "\n", "\n\t")
	}
	b.WriteString(key + " =" + value + "\n")
}

// escapeINI protects a literal value from interpolation.
func escapeINI(v string) string {
	return strings.ReplaceAll(v, "$", "$$")
}

// absPath makes p absolute without touching the file system.
func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}
