package main

import (
	"cmp"
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

const (
	cwdConfigName = "flamenco-worker.cfg"
	workerSection = "flamenco-worker"
	credIDKey     = "worker_id"
	credSecretKey = "worker_secret"
	// instancePrefix starts the home-file section of a --config instance.
	instancePrefix = workerSection + ":"
)

// instanceSection names the home-file section that holds the credentials
// of the instance started with cfgFile: [flamenco-worker] for the default
// instance (no --config, or ./flamenco-worker.cfg), as in the Python worker;
// [flamenco-worker:<absolute path, symlinks resolved>] for any other, so that
// two instances with different config files are two workers, each keeping
// its identity across restarts.
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

// writeCredentials stores worker_id and worker_secret in [flamenco-worker].
func writeCredentials(homeFile, workerID, secret string) error {
	return writeSectionCredentials(homeFile, workerSection, workerID, secret)
}

// writeSectionCredentials stores worker_id and worker_secret in section of
// homeFile. Unlike the Python worker it keeps the file's comments and
// layout. The file is replaced atomically, with mode 0600.
func writeSectionCredentials(homeFile, section, workerID, secret string) error {
	if err := storeCredentials(homeFile, section, workerID, secret, false); err != nil {
		return fmt.Errorf("storing credentials: %w", err)
	}
	return nil
}

// credentialsWritable does all that writeSectionCredentials does but the
// rename, so that a worker that could not keep a new identity never
// creates one on the Manager (and another at every restart).
func credentialsWritable(homeFile, section string) error {
	return storeCredentials(homeFile, section, "probe-id", "probe-secret", true)
}

// storeCredentials rewrites homeFile, following a symlink so that a
// symlinked dotfile stays one, holding a flock on its directory: workers
// sharing a home file (each with its own section) must not lose each
// other's credentials in concurrent read-modify-write cycles. The lock is
// brief, so waiting for it is fine; where a directory cannot be locked (NFS
// emulates flock with POSIX locks, which need a file open for writing),
// the rewrite goes on unlocked.
func storeCredentials(homeFile, section, workerID, secret string, probe bool) error {
	if homeFile == "" {
		return errors.New("no home config file (is $HOME set?)")
	}
	path := homeFile
	if real, err := filepath.EvalSymlinks(homeFile); err == nil {
		path = real
	}
	cannotWrite := func(err error) error {
		if probe {
			return fmt.Errorf("cannot write in the directory of %s: %w", path, err)
		}
		return err
	}
	dir, err := os.Open(filepath.Dir(path))
	if err != nil {
		return cannotWrite(err)
	}
	defer dir.Close()
	flock(dir, syscall.LOCK_EX)
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	text, err := setSectionCredentials(string(old), homeFile, section, workerID, secret)
	if err != nil {
		return err
	}
	tmp, err := writeTemp(path, []byte(text))
	switch {
	case err != nil:
		return cannotWrite(err)
	case probe:
		return os.Remove(tmp)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	dir.Sync() // makes the rename durable; some file systems refuse, but the rename happened anyway
	return nil
}

// setSectionCredentials returns text with the credentials set in section:
// existing credential lines rewritten in place, missing ones added after
// the section's last line. Should that change how the rest of the file
// parses (an oddly indented line after it), the missing ones go into a
// new section block at the end instead.
func setSectionCredentials(text, name, section, workerID, secret string) (string, error) {
	for _, v := range []string{workerID, secret} {
		if strings.ContainsAny(v, "\r\n\x00") || v != strings.TrimSpace(v) {
			return "", errors.New("worker ID or secret has line breaks or surrounding spaces")
		}
	}
	f, err := parseINI(strings.NewReader(text), name)
	if err != nil {
		return "", fmt.Errorf("not changing a file that does not parse: %w", err)
	}
	want := map[string]string{credIDKey: escapeINI(workerID), credSecretKey: escapeINI(secret)}
	nl := "\n"
	if i := strings.IndexByte(text, '\n'); i > 0 && text[i-1] == '\r' {
		nl = "\r\n"
	}
	if text != "" && !strings.HasSuffix(text, "\n") {
		text += nl
	}
	lines := strings.SplitAfter(text, "\n") // the last one empty
	missing := []string{credIDKey, credSecretKey}
	for _, e := range f.raw {
		if k := strings.ToLower(e.key); e.section == section && isCredentialKey(k) {
			lines[e.line-1] = leadingSpace(lines[e.line-1]) + e.key + " = " + want[k] + nl
			clear(lines[e.line:e.end]) // its continuation lines
			missing = slices.DeleteFunc(missing, func(m string) bool { return m == k })
		}
	}
	assignments := func(indent string) (add []string) {
		for _, k := range missing {
			add = append(add, indent+k+" = "+want[k]+nl)
		}
		return add
	}
	if s := f.byName[section]; s != nil {
		out := slices.Insert(slices.Clone(lines), s.last, assignments(leadingSpace(lines[s.last-1]))...)
		if out := strings.Join(out, ""); credentialsSet(f, out, name, section, want) {
			return out, nil
		}
	}
	if text != "" {
		lines = append(lines, nl) // a blank line before the new block
	}
	return strings.Join(slices.Concat(lines, []string{"[" + section + "]" + nl}, assignments("")), ""), nil
}

// credentialsSet reports whether out has the wanted credentials in section
// and, apart from them, the same assignments as the original file f.
func credentialsSet(f *iniFile, out, name, section string, want map[string]string) bool {
	g, err := parseINI(strings.NewReader(out), name)
	if err != nil {
		return false
	}
	for k, v := range want {
		if e := g.byName[section].get(k); e == nil || e.value != v {
			return false
		}
	}
	others := func(f *iniFile) (list []string) {
		for _, e := range f.raw {
			if e.section != section || !isCredentialKey(e.key) {
				list = append(list, e.section+"\x00"+e.key+"\x00"+e.value)
			}
		}
		return list
	}
	return slices.Equal(others(f), others(g))
}

func leadingSpace(line string) string {
	return line[:len(line)-len(strings.TrimLeftFunc(line, unicode.IsSpace))]
}

// writeTemp writes data to a new, synced 0600 file next to path and
// returns its name.
func writeTemp(path string, data []byte) (string, error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return "", err
	}
	write := func() error { _, err := tmp.Write(data); return err }
	if err := cmp.Or(tmp.Chmod(0o600), write(), tmp.Sync(), tmp.Close()); err != nil { // each step runs; the first error counts
		os.Remove(tmp.Name())
		return "", err
	}
	return tmp.Name(), nil
}

// flock is syscall.Flock, repeated when a signal interrupts it.
func flock(f *os.File, how int) error {
	for {
		if err := syscall.Flock(int(f.Fd()), how); err != syscall.EINTR {
			return err
		}
	}
}

// instanceCredentials edits the home file's assignments for the instance
// of section (nil for the default instance): its other [flamenco-worker]
// keys apply to every instance, its credentials to the default one only.
func instanceCredentials(section string) func(e *iniEntry) bool {
	if section == workerSection {
		return nil
	}
	return func(e *iniEntry) bool {
		if isCredentialKey(e.key) && e.section == section {
			e.section = workerSection
		} else if isCredentialKey(e.key) && e.section == workerSection {
			return false
		}
		return true
	}
}
