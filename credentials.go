package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"unicode"
)

// The names in the config files that the credentials rewrite works on.
const (
	cwdConfigName = "flamenco-worker.cfg"
	workerSection = "flamenco-worker"
	credIDKey     = "worker_id"
	credSecretKey = "worker_secret"
)

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

// withDirLock runs fn holding an exclusive flock on directory dir, so that
// workers sharing a home file (each with its own section) do not lose each
// other's credentials in concurrent read-modify-write cycles. The lock is
// held for a few milliseconds only, so waiting for it is fine. Where a
// directory cannot be locked (NFS emulates flock with POSIX locks, which
// need a file open for writing), fn runs unlocked, as before.
func withDirLock(dir string, fn func() error) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	for {
		err = syscall.Flock(int(d.Fd()), syscall.LOCK_EX)
		if err != syscall.EINTR {
			break
		}
	}
	return fn()
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
