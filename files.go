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

// filesStampLayout is Python's mtime.isoformat() with 'T' → '_' and the
// colons removed: 2012-03-02_191812.
const filesStampLayout = "2006-01-02_150405"

// filesCopyChunk is how much copy_file copies between checks for an abort.
// Copying through io.CopyN keeps the kernel's copy_file_range fast path.
const filesCopyChunk = 64 << 20

// cmdMoveOutOfWay renames an existing render output to "<src>-<mtime>", so
// that a new render does not mix its frames with an old one.
func cmdMoveOutOfWay(ctx context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
	// Python accepts "", which is the working directory; moving that aside
	// is never what a job means, so "" is refused here.
	src, err := s.nonEmptyStr("src")
	if err != nil {
		return nil, err
	}
	return func(context.Context) error {
		info, err := filesStat(src)
		if err != nil {
			return err
		}
		if info == nil {
			c.logf("Render output path %s does not exist, not moving out of way", src)
			return nil
		}
		return filesMoveAside(c, src, info.ModTime())
	}, nil
}

// cmdMoveToFinal renames src to dest, first moving an existing dest aside
// to its timestamped name as move_out_of_way does.
func cmdMoveToFinal(ctx context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
	src, dest, err := filesSrcDest(s)
	if err != nil {
		return nil, err
	}
	return func(context.Context) error {
		info, err := filesStat(src)
		if err != nil {
			return err
		}
		if info == nil {
			c.logf("Path %s does not exist, not moving", src)
			return nil
		}
		if info, err = filesStat(dest); err != nil {
			return err
		}
		if info != nil {
			if err := filesMoveAside(c, dest, info.ModTime()); err != nil {
				return err
			}
		}
		c.logf("Moving %s to %s", src, dest)
		return filesRename(src, dest)
	}, nil
}

// cmdCopyFile copies one file, replacing an existing destination and
// keeping the source's permission bits.
func cmdCopyFile(ctx context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
	src, dest, err := filesSrcDest(s)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context) error {
		info, err := filesStat(src)
		if err != nil {
			return err
		}
		if info == nil {
			return fmt.Errorf("Path %s does not exist, unable to copy", src)
		}
		if info.IsDir() {
			// Checked before dest is touched: Python deleted dest first and
			// only then found out it could not copy a directory.
			return fmt.Errorf("Error copying %s to %s: %s is a directory", src, dest, src)
		}
		c.logf("Copying %s to %s", src, dest)
		if err := filesMkdirParent(c, dest); err != nil {
			return err
		}
		if err := filesClearDest(c, src, dest, info); err != nil {
			return err
		}
		if err := filesCopyContents(ctx, src, dest); err != nil {
			return fmt.Errorf("Error copying %s to %s: %w", src, dest, err)
		}
		if err := os.Chmod(dest, filesModeBits(info)); err != nil {
			c.logf("Unable to copy file mode from %s to %s: %v", src, dest, err)
		}
		c.outputProduced(dest)
		return nil
	}, nil
}

// cmdRemoveTree removes a file or a whole directory tree. A symbolic link is
// removed as a link; what it points to is never touched.
func cmdRemoveTree(ctx context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
	return filesRemove(c, s, "'path' may not be empty", func(path string, info fs.FileInfo) error {
		c.logf("Removing tree rooted at %s", path)
		if err := os.RemoveAll(path); err != nil {
			// RemoveAll's own error names the entry that could not go.
			return fmt.Errorf("removing tree %s: %w", path, err)
		}
		return nil
	})
}

// cmdRemoveFile removes one file (or symbolic link) and refuses directories.
func cmdRemoveFile(ctx context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
	return filesRemove(c, s, "Parameter 'path' cannot be empty.", func(path string, info fs.FileInfo) error {
		if info.IsDir() {
			return fmt.Errorf("Path %s is a directory. Cannot remove with this command; use remove_tree instead.", path)
		}
		c.logf("Removing file %s", path)
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("removing %s: %w", path, filesBareErr(err))
		}
		return nil
	})
}

// filesRemove is what remove_tree and remove_file share: the "path"
// setting (emptyMsg when it is ""), and success with a log line when the
// path does not exist; remove gets the rest.
func filesRemove(c *cmdCtx, s settings, emptyMsg string, remove func(path string, info fs.FileInfo) error) (func(context.Context) error, error) {
	path, err := s.str("path", true, "")
	if err == nil && path == "" {
		err = errors.New(emptyMsg)
	}
	if err == nil {
		err = filesCheckRemovable(path, c.env.protected)
	}
	if err != nil {
		return nil, err
	}
	return func(context.Context) error {
		info, err := filesLstat(path)
		if err != nil {
			return err
		}
		if info == nil {
			c.logf("Path %s does not exist, so not removing.", path)
			return nil
		}
		return remove(path, info)
	}, nil
}

// protectedPaths is what remove_tree and remove_file refuse to remove, or
// an ancestor of: the working directory and the queue file with SQLite's
// side files, as absolute paths.
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

// filesCheckRemovable refuses a path whose removal would take the
// filesystem root, the working directory or the queue file with it. The
// links in the path's directories are resolved; the last element is
// removed as itself (a symbolic link as a link), unless a trailing slash
// makes the removal follow it.
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

// cmdMoveWithCounter moves src next to dest under dest's name with a
// counter added, one higher than any counter already there, so that
// repeated runs (of a video job, say) never overwrite an earlier result.
func cmdMoveWithCounter(ctx context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
	src, dest, err := filesSrcDest(s)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context) error {
		info, err := filesStat(src)
		if err != nil {
			return err
		}
		if info == nil {
			return fmt.Errorf("Path %s does not exist, unable to move", src)
		}
		prefix, suffix := filesCounterParts(filepath.Base(dest))
		target, err := filesNumberedPath(filepath.Dir(dest), prefix, suffix)
		if err != nil {
			return err
		}
		c.logf("Moving %s to %s", src, target)
		if err := filesMkdirParent(c, target); err != nil {
			return err
		}
		if err := filesMove(ctx, c, src, target, info); err != nil {
			return err
		}
		c.outputProduced(target)
		return nil
	}, nil
}

// cmdCreatePythonFile writes a Python script, typically the
// "<blend>-overrides.py" that blender_render then runs.
func cmdCreatePythonFile(ctx context.Context, c *cmdCtx, s settings) (func(context.Context) error, error) {
	path, err := s.str("filepath", true, "")
	switch {
	case err != nil:
		return nil, err
	case path == "":
		return nil, errors.New("filepath may not be empty")
	case !strings.HasSuffix(path, ".py"):
		return nil, errors.New("filepath must end in .py")
	}
	contents, err := s.str("contents", true, "")
	if err != nil {
		return nil, err
	}
	return func(context.Context) error {
		if err := filesMkdirParent(c, path); err != nil {
			return err
		}
		info, err := filesStat(path)
		if err != nil {
			return err
		}
		if info != nil {
			c.logf("Overwriting Python file %s", path)
		} else {
			c.logf("Creating Python file %s", path)
		}
		c.logf("contents:\n%s", contents)
		// Go strings from JSON are UTF-8 already, so the bytes go out as is.
		if err := os.WriteFile(path, []byte(contents), 0o666); err != nil {
			return fmt.Errorf("writing %s: %w", path, filesBareErr(err))
		}
		return nil
	}, nil
}

// filesSrcDest reads the "src" and "dest" settings, neither of which may be
// empty, with the Python worker's messages for empty values.
func filesSrcDest(s settings) (src, dest string, err error) {
	if src, err = s.str("src", true, ""); err == nil && src == "" {
		err = errors.New("src may not be empty")
	}
	if err != nil {
		return "", "", err
	}
	if dest, err = s.str("dest", true, ""); err == nil && dest == "" {
		err = errors.New("dest may not be empty")
	}
	return src, dest, err
}

// filesStat is os.Stat that reports a missing path as a nil FileInfo. Like
// Python's Path.exists, it follows symbolic links, and a path running
// through a file (ENOTDIR) does not exist either.
func filesStat(path string) (fs.FileInfo, error) {
	return filesMissingIsNil(os.Stat(path))
}

// filesLstat is filesStat without following a final symbolic link, so that
// a dangling link still counts as something to remove.
func filesLstat(path string) (fs.FileInfo, error) {
	return filesMissingIsNil(os.Lstat(path))
}

func filesMissingIsNil(info fs.FileInfo, err error) (fs.FileInfo, error) {
	switch {
	case err == nil:
		return info, nil
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
		return nil, nil
	}
	return nil, fmt.Errorf("checking %s: %w", filesPathOf(err), filesBareErr(err))
}

// filesBareErr drops the operation and path that package os puts into its
// errors, for messages that name their paths themselves.
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

// filesPathOf is the path an os error is about.
func filesPathOf(err error) string {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Path
	}
	return "path"
}

// filesMoveAside renames path to its timestamped backup name.
func filesMoveAside(c *cmdCtx, path string, mtime time.Time) error {
	dst, err := filesBackupPath(path, mtime)
	if err != nil {
		return err
	}
	c.logf("Moving %s to %s", path, dst)
	return filesRename(path, dst)
}

// filesBackupPath is "<path>-<mtime>", or when that is taken
// "<path>-<mtime>~N" with N one above the highest ~N in use.
func filesBackupPath(path string, mtime time.Time) (string, error) {
	// Python's Path drops a trailing slash; the name is appended to the
	// last component, not inside the directory.
	if trimmed := strings.TrimRight(path, string(filepath.Separator)); trimmed != "" {
		path = trimmed
	}
	dst := path + "-" + filesStamp(mtime, time.Local)
	// Lstat: a dangling symbolic link is taken too; renaming onto it would
	// silently replace it.
	if _, err := os.Lstat(dst); errors.Is(err, fs.ErrNotExist) {
		return dst, nil
	}
	return filesUniquePath(dst)
}

// filesStamp formats mtime rounded to whole seconds the way Python's
// round(st_mtime) does (half to even) in loc.
func filesStamp(mtime time.Time, loc *time.Location) string {
	secs := math.RoundToEven(float64(mtime.Unix()) + float64(mtime.Nanosecond())/1e9)
	return time.Unix(int64(secs), 0).In(loc).Format(filesStampLayout)
}

// filesUniquePath is path + "~N", N being 1 + the largest number after the
// last "~" of the names "<path>~*" next to it. Gaps are not filled, so the
// newest backup always has the highest number.
func filesUniquePath(path string) (string, error) {
	dir, base := filepath.Split(path)
	entries, err := os.ReadDir(filesDirOrDot(dir))
	if err != nil {
		return "", fmt.Errorf("listing %s: %w", filesDirOrDot(dir), filesBareErr(err))
	}
	highest := 0
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, base+"~") {
			continue
		}
		if n, ok := filesDigits(name[strings.LastIndex(name, "~")+1:]); ok {
			highest = max(highest, n)
		}
	}
	return fmt.Sprintf("%s~%d", path, highest+1), nil
}

func filesDirOrDot(dir string) string {
	if dir == "" {
		return "."
	}
	return dir
}

// filesDigits parses a non-empty run of ASCII digits. Python's int() also
// takes signs, spaces and "1_000"; a counter never looks like that.
func filesDigits(s string) (int, bool) {
	if s == "" || strings.Trim(s, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	return n, err == nil
}

// filesRename is os.Rename with an error naming both paths once.
func filesRename(src, dst string) error {
	if err := os.Rename(src, dst); err != nil {
		return fmt.Errorf("moving %s to %s: %w", src, dst, filesBareErr(err))
	}
	return nil
}

// filesMkdirParent creates the directory that will hold path.
func filesMkdirParent(c *cmdCtx, path string) error {
	dir := filepath.Dir(path)
	if err := c.mkdirAll(dir); err != nil {
		return fmt.Errorf("creating directory %s: %w", dir, filesBareErr(err))
	}
	return nil
}

// filesClearDest deletes an existing copy_file destination, refusing a
// directory and the source itself (Python deleted both and lost the file).
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

// filesCopyContents copies src's bytes into the new file dst. A partly
// written dst is removed again, so a failed copy leaves nothing behind.
func filesCopyContents(ctx context.Context, src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return filesBareErr(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o666)
	if err != nil {
		return filesBareErr(err)
	}
	err = filesCopyChunks(ctx, out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(dst)
		return filesBareErr(err)
	}
	return nil
}

// filesCopyChunks copies in chunks so that an abort stops a large copy.
func filesCopyChunks(ctx context.Context, out *os.File, in *os.File) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		// CopyN reports io.EOF once the source ran out before the chunk did.
		_, err := io.CopyN(out, in, filesCopyChunk)
		switch {
		case err == io.EOF:
			return nil
		case err != nil:
			return err
		}
	}
}

// filesModeBits are the bits Python's shutil.copymode copies.
func filesModeBits(info fs.FileInfo) fs.FileMode {
	return info.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
}

// filesCounterParts splits a file name into what goes before and after the
// counter: "2018_06_12-spring.mkv" → "2018_06_12_", "-spring.mkv" (the
// regex ^([0-9_]+)(.*)$), otherwise stem + "_" and extension as Python's
// pathlib defines them ("jemoeder.mkv" → "jemoeder_", ".mkv").
func filesCounterParts(name string) (prefix, suffix string) {
	if n := len(name) - len(strings.TrimLeft(name, "0123456789_")); n > 0 {
		return name[:n] + "_", name[n:]
	}
	if i := strings.LastIndex(name, "."); i > 0 && i < len(name)-1 {
		return name[:i] + "_", name[i:]
	}
	return name + "_", ""
}

// filesNumberedPath is dir/<prefix>NNN<suffix>, NNN (at least three digits)
// being one more than the highest number between prefix and suffix of the
// names already in dir.
//
// Python cut the number out with name[len(prefix):-len(suffix)], which is
// always empty when the suffix is empty, so such names never found their
// earlier counters (spec §8.2 #14). Cutting by length here fixes that.
func filesNumberedPath(dir, prefix, suffix string) (string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("listing %s: %w", dir, filesBareErr(err))
	}
	highest := 0
	for _, e := range entries {
		name := e.Name()
		if len(name) < len(prefix)+len(suffix) || !strings.HasPrefix(name, prefix) || !strings.HasSuffix(name, suffix) {
			continue
		}
		if n, ok := filesDigits(name[len(prefix) : len(name)-len(suffix)]); ok {
			highest = max(highest, n)
		}
	}
	return filepath.Join(dir, fmt.Sprintf("%s%03d%s", prefix, highest+1, suffix)), nil
}

// filesMove renames src to dst. Like Python's shutil.move it falls back to
// copy-and-delete when dst is on another file system, here for regular
// files only.
func filesMove(ctx context.Context, c *cmdCtx, src, dst string, info fs.FileInfo) error {
	err := os.Rename(src, dst)
	if err == nil {
		return nil
	}
	if !errors.Is(err, syscall.EXDEV) || !info.Mode().IsRegular() {
		return fmt.Errorf("moving %s to %s: %w", src, dst, filesBareErr(err))
	}
	if err := filesCopyContents(ctx, src, dst); err != nil {
		return fmt.Errorf("copying %s to %s: %w", src, dst, err)
	}
	if err := os.Chmod(dst, filesModeBits(info)); err != nil {
		c.logf("Unable to copy file mode from %s to %s: %v", src, dst, err)
	}
	if err := os.Chtimes(dst, time.Time{}, info.ModTime()); err != nil {
		c.logf("Unable to copy modification time from %s to %s: %v", src, dst, err)
	}
	if err := os.Remove(src); err != nil {
		return fmt.Errorf("removing %s after copying it to %s: %w", src, dst, filesBareErr(err))
	}
	return nil
}
