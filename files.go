package main

// The file-management commands of spec/python-worker.md §5.2. Messages that
// reach the task log or the Manager keep the Python worker's wording, even
// where that means a capital letter in an error string.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// filesCopyChunk is how much is copied between checks for an abort;
// io.CopyN keeps the kernel's copy_file_range fast path.
const filesCopyChunk = 64 << 20

// cmdMoveOutOfWay renames an existing render output to "<src>-<mtime>", so
// that a new render does not mix its frames with an old one.
func cmdMoveOutOfWay(ctx context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
	// Python accepts "", the working directory, which is never what a job means.
	r := s.reader()
	src := r.nonEmpty("src")
	return func(context.Context) error {
		info, err := filesStat(src)
		switch {
		case err != nil:
			return err
		case info == nil:
			c.logf("Render output path %s does not exist, not moving out of way", src)
			return nil
		}
		return filesMoveAside(c, src, info.ModTime())
	}, r.err()
}

// filesSrcDestCmd is the commandFunc of a command with the settings "src"
// and "dest"; run gets src's FileInfo, nil when src does not exist.
func filesSrcDestCmd(run func(ctx context.Context, c *cmdCtx, src, dest string, info fs.FileInfo) error) commandFunc {
	return func(_ context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
		r := s.reader()
		src, dest := r.nonEmpty("src", "src may not be empty"), r.nonEmpty("dest", "dest may not be empty")
		return func(ctx context.Context) error {
			info, err := filesStat(src)
			if err != nil {
				return err
			}
			return run(ctx, c, src, dest, info)
		}, r.err()
	}
}

// filesMoveToFinal renames src to dest, moving an existing dest aside first.
func filesMoveToFinal(_ context.Context, c *cmdCtx, src, dest string, info fs.FileInfo) error {
	if info == nil {
		c.logf("Path %s does not exist, not moving", src)
		return nil
	}
	info, err := filesStat(dest)
	if err != nil {
		return err
	}
	if info != nil {
		if err := filesMoveAside(c, dest, info.ModTime()); err != nil {
			return err
		}
	}
	c.logf("Moving %s to %s", src, dest)
	return filesRename(src, dest)
}

// filesCopyFile copies one file over dest, with the source's mode bits.
func filesCopyFile(ctx context.Context, c *cmdCtx, src, dest string, info fs.FileInfo) error {
	if info == nil {
		return fmt.Errorf("Path %s does not exist, unable to copy", src)
	}
	if info.IsDir() { // before dest is touched: Python deleted dest first
		return fmt.Errorf("Error copying %s to %s: %s is a directory", src, dest, src)
	}
	c.logf("Copying %s to %s", src, dest)
	if err := filesMkdirParent(c, dest); err != nil {
		return err
	}
	if err := filesClearDest(c, src, dest, info); err != nil {
		return err
	}
	if err := filesCopyContents(ctx, c, src, dest, info); err != nil {
		return fmt.Errorf("Error copying %s to %s: %w", src, dest, err)
	}
	c.outputProduced(dest)
	return nil
}

// filesMoveWithCounter moves src to dest's name with a counter one above any
// there, so that repeated runs never overwrite an earlier result.
func filesMoveWithCounter(ctx context.Context, c *cmdCtx, src, dest string, info fs.FileInfo) error {
	if info == nil {
		return fmt.Errorf("Path %s does not exist, unable to move", src)
	}
	prefix, suffix := filesCounterParts(filepath.Base(dest))
	n, err := filesNextCounter(filepath.Dir(dest), prefix, suffix)
	if err != nil {
		return err
	}
	target := filepath.Join(filepath.Dir(dest), fmt.Sprintf("%s%03d%s", prefix, n, suffix))
	c.logf("Moving %s to %s", src, target)
	if err := filesMkdirParent(c, target); err != nil {
		return err
	}
	if err := filesMove(ctx, c, src, target, info); err != nil {
		return err
	}
	c.outputProduced(target)
	return nil
}

// filesRemove is remove_tree (a file or a whole tree) or remove_file (one
// file, not a directory). A symbolic link is removed as a link; a missing
// path is a success.
func filesRemove(tree bool) commandFunc {
	emptyMsg := map[bool]string{true: "'path' may not be empty", false: "Parameter 'path' cannot be empty."}[tree]
	return func(_ context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
		r := s.reader()
		path := r.nonEmpty("path", emptyMsg)
		r.then(func() error { return filesCheckRemovable(path, c.env.protected) })
		return func(context.Context) error {
			info, err := filesLstat(path)
			switch {
			case err != nil:
				return err
			case info == nil:
				c.logf("Path %s does not exist, so not removing.", path)
			case tree:
				c.logf("Removing tree rooted at %s", path)
				if err := os.RemoveAll(path); err != nil {
					return fmt.Errorf("removing tree %s: %w", path, err) // names the entry that could not go
				}
			case info.IsDir():
				return fmt.Errorf("Path %s is a directory. Cannot remove with this command; use remove_tree instead.", path)
			default:
				c.logf("Removing file %s", path)
				if err := os.Remove(path); err != nil {
					return fmt.Errorf("removing %s: %w", path, filesBareErr(err))
				}
			}
			return nil
		}, r.err()
	}
}

// protectedPaths are what remove_tree and remove_file refuse to remove with
// an ancestor: the working directory, the queue file and SQLite's side files.
func protectedPaths(queueDB string) []string {
	var out []string
	if wd, err := os.Getwd(); err == nil {
		out = append(out, wd)
	}
	if db, err := filepath.Abs(queueDB); err == nil && queueDB != "" {
		out = append(out, db, db+"-wal", db+"-shm", db+"-journal")
	}
	return out
}

// filesCheckRemovable refuses the filesystem root and the ancestors of the
// protected paths. Links are resolved except the last element (removed as a
// link) unless a trailing slash makes the removal follow it.
func filesCheckRemovable(path string, protected []string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("'path' %s: %w", path, err)
	}
	dir, base := filepath.Split(abs)
	target := filepath.Join(filesResolve(dir), base)
	if strings.HasSuffix(path, string(filepath.Separator)) {
		target = filesResolve(abs)
	}
	if filepath.Dir(target) == target {
		return fmt.Errorf("'path' %s is the filesystem root, refusing to remove it", path)
	}
	for _, p := range protected {
		if rp := filesResolve(p); filesWithin(target, rp) {
			return fmt.Errorf("'path' %s holds %s, which the worker needs, refusing to remove it", path, rp)
		}
	}
	return nil
}

// filesResolve resolves the symbolic links of the longest existing leading
// part of the absolute path p.
func filesResolve(p string) string {
	rest := ""
	for {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			return filepath.Join(r, rest)
		}
		parent := filepath.Dir(p)
		if parent == p {
			return filepath.Join(p, rest)
		}
		rest = filepath.Join(filepath.Base(p), rest)
		p = parent
	}
}

// filesWithin reports whether p is dir or lies below it.
func filesWithin(dir, p string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

// cmdCreatePythonFile writes a script, typically the <blend>-overrides.py
// that blender_render runs.
func cmdCreatePythonFile(ctx context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
	r := s.reader()
	path := r.nonEmpty("filepath", "filepath may not be empty")
	if !strings.HasSuffix(path, ".py") {
		r.failf("filepath must end in .py")
	}
	contents := r.str("contents", true, "")
	return func(context.Context) error {
		if err := filesMkdirParent(c, path); err != nil {
			return err
		}
		verb := "Creating"
		if info, err := filesStat(path); err != nil {
			return err
		} else if info != nil {
			verb = "Overwriting"
		}
		c.logf("%s Python file %s", verb, path)
		c.logf("contents:\n%s", contents)
		if err := os.WriteFile(path, []byte(contents), 0o666); err != nil {
			return fmt.Errorf("writing %s: %w", path, filesBareErr(err))
		}
		return nil
	}, r.err()
}

// filesStat is os.Stat with a nil FileInfo for a missing path; like Python's
// Path.exists, a path running through a file (ENOTDIR) is missing too.
func filesStat(path string) (fs.FileInfo, error) { return filesMissingIsNil(os.Stat(path)) }

// filesLstat: a dangling link still counts as something to remove.
func filesLstat(path string) (fs.FileInfo, error) { return filesMissingIsNil(os.Lstat(path)) }

func filesMissingIsNil(info fs.FileInfo, err error) (fs.FileInfo, error) {
	var pe *os.PathError
	switch {
	case err == nil:
		return info, nil
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
		return nil, nil
	case errors.As(err, &pe):
		return nil, fmt.Errorf("checking %s: %w", pe.Path, pe.Err)
	}
	return nil, fmt.Errorf("checking path: %w", err)
}

// filesBareErr drops the operation and path of package os's errors, for
// messages that name their paths themselves.
func filesBareErr(err error) error {
	var pe *os.PathError
	var le *os.LinkError
	switch {
	case errors.As(err, &pe):
		return pe.Err
	case errors.As(err, &le):
		return le.Err
	}
	return err
}

// filesMoveAside renames path to "<path>-<mtime>", or when that is taken
// to "<path>-<mtime>~N" with N one above the highest ~N in use.
func filesMoveAside(c *cmdCtx, path string, mtime time.Time) error {
	// Python's Path drops a trailing slash: the name goes on the last component.
	if trimmed := strings.TrimRight(path, string(filepath.Separator)); trimmed != "" {
		path = trimmed
	}
	dst := path + "-" + filesStamp(mtime, time.Local)
	// Lstat: renaming onto a dangling symbolic link would silently replace it.
	if _, err := os.Lstat(dst); !errors.Is(err, fs.ErrNotExist) {
		n, err := filesNextCounter(filepath.Dir(dst), filepath.Base(dst)+"~", "")
		if err != nil {
			return err
		}
		dst += "~" + strconv.Itoa(n)
	}
	c.logf("Moving %s to %s", path, dst)
	return filesRename(path, dst)
}

// filesStamp is Python's round(st_mtime) (half to even) as isoformat() in
// loc with 'T' → '_' and no colons: 2012-03-02_191812.
func filesStamp(mtime time.Time, loc *time.Location) string {
	secs := math.RoundToEven(float64(mtime.Unix()) + float64(mtime.Nanosecond())/1e9)
	return time.Unix(int64(secs), 0).In(loc).Format("2006-01-02_150405")
}

// filesNextCounter is one more than the highest N (ASCII digits) of the
// names <prefix>N<suffix> in dir; gaps are not filled. Python cut N with
// name[len(prefix):-len(suffix)], empty for an empty suffix (spec §8.2 #14).
func filesNextCounter(dir, prefix, suffix string) (int, error) {
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return 0, fmt.Errorf("listing %s: %w", dir, filesBareErr(err))
	}
	highest := 0
	for _, e := range entries {
		name := e.Name()
		if len(name) <= len(prefix)+len(suffix) || !strings.HasPrefix(name, prefix) || !strings.HasSuffix(name, suffix) {
			continue
		}
		digits := name[len(prefix) : len(name)-len(suffix)]
		if n, err := strconv.Atoi(digits); err == nil && strings.Trim(digits, "0123456789") == "" {
			highest = max(highest, n)
		}
	}
	return highest + 1, nil
}

func filesRename(src, dst string) error {
	if err := os.Rename(src, dst); err != nil {
		return fmt.Errorf("moving %s to %s: %w", src, dst, filesBareErr(err))
	}
	return nil
}

func filesMkdirParent(c *cmdCtx, path string) error {
	dir := filepath.Dir(path)
	if err := c.mkdirAll(dir); err != nil {
		return fmt.Errorf("creating directory %s: %w", dir, filesBareErr(err))
	}
	return nil
}

// filesClearDest deletes an existing copy_file dest, refusing a directory and
// the source itself (Python deleted both).
func filesClearDest(c *cmdCtx, src, dest string, srcInfo fs.FileInfo) error {
	info, err := filesLstat(dest)
	if err != nil || info == nil {
		return err
	}
	if target, err := os.Stat(dest); err == nil && os.SameFile(srcInfo, target) {
		return fmt.Errorf("Error copying %s to %s: they are the same file", src, dest)
	}
	if info.IsDir() {
		return fmt.Errorf("Error unlinking destination %s: it is a directory", dest)
	}
	c.logf("Destination %s exists, going to delete it first.", dest)
	if err := os.Remove(dest); err != nil {
		return fmt.Errorf("Error unlinking destination %s: %w", dest, filesBareErr(err))
	}
	return nil
}

// filesCopyContents copies src into the new file dst in chunks, so that an
// abort stops a large copy, then shutil.copymode's bits. A partial dst goes.
func filesCopyContents(ctx context.Context, c *cmdCtx, src, dst string, info fs.FileInfo) error {
	in, err := os.Open(src)
	if err != nil {
		return filesBareErr(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o666)
	if err != nil {
		return filesBareErr(err)
	}
	for err == nil {
		if err = ctx.Err(); err == nil {
			_, err = io.CopyN(out, in, filesCopyChunk)
		}
	}
	if cerr := out.Close(); err == io.EOF { // the source ran out: done
		err = cerr
	}
	if err != nil {
		os.Remove(dst)
		return filesBareErr(err)
	}
	if err := os.Chmod(dst, info.Mode()&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)); err != nil {
		c.logf("Unable to copy file mode from %s to %s: %v", src, dst, err)
	}
	return nil
}

// filesCounterParts splits a name around the counter: the regex
// ^([0-9_]+)(.*)$ ("2018_06_12-spring.mkv" → "2018_06_12_", "-spring.mkv"),
// else pathlib's stem + "_" and suffix ("jemoeder.mkv" → "jemoeder_", ".mkv").
func filesCounterParts(name string) (prefix, suffix string) {
	if n := len(name) - len(strings.TrimLeft(name, "0123456789_")); n > 0 {
		return name[:n] + "_", name[n:]
	}
	if i := strings.LastIndex(name, "."); i > 0 && i < len(name)-1 {
		return name[:i] + "_", name[i:]
	}
	return name + "_", ""
}

// filesMove is shutil.move: rename, or copy-and-delete (of a regular file)
// across file systems.
func filesMove(ctx context.Context, c *cmdCtx, src, dst string, info fs.FileInfo) error {
	if err := filesRename(src, dst); err == nil || !errors.Is(err, syscall.EXDEV) || !info.Mode().IsRegular() {
		return err
	}
	if err := filesCopyContents(ctx, c, src, dst, info); err != nil {
		return fmt.Errorf("copying %s to %s: %w", src, dst, err)
	}
	if err := os.Chtimes(dst, time.Time{}, info.ModTime()); err != nil {
		c.logf("Unable to copy modification time from %s to %s: %v", src, dst, err)
	}
	if err := os.Remove(src); err != nil {
		return fmt.Errorf("removing %s after copying it to %s: %w", src, dst, filesBareErr(err))
	}
	return nil
}
