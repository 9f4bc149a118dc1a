package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// preTaskChecks runs the [pre_task_check] read and write checks
// (spec/python-worker.md §6.7). The error names the path and what failed.
func preTaskChecks(checks []preTaskCheck) error {
	for _, c := range checks {
		check := checkReadable
		if c.Write {
			check = checkWritable
		}
		if err := check(c.Path); err != nil {
			return fmt.Errorf("pre-task check %s: %w", c.Key, err)
		}
	}
	return nil
}

// checkReadable: the path exists; a directory can be listed, a file read.
func checkReadable(path string) error {
	info, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s does not exist", path)
	}
	var f *os.File
	if err == nil {
		f, err = os.Open(path)
	}
	if err == nil {
		if info.IsDir() {
			_, err = f.ReadDir(1)
		} else {
			_, err = f.Read(make([]byte, 1))
		}
		f.Close()
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("%s is not readable: %w", path, err)
	}
	return nil
}

// checkWritable: in a directory a temporary file can be created; a file can
// be opened for appending. Unlike the Python worker it writes nothing into
// an existing file, and removes a file it had to create.
func checkWritable(path string) error {
	info, err := os.Stat(path)
	if err == nil && info.IsDir() {
		f, err := os.CreateTemp(path, ".flamenco-worker-write-check-*")
		if err != nil {
			return fmt.Errorf("%s is not writable: %w", path, err)
		}
		f.Close()
		return os.Remove(f.Name())
	}
	existed := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s is not writable: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o666)
	if err != nil {
		return fmt.Errorf("%s is not writable: %w", filepath.Clean(path), err)
	}
	f.Close()
	if !existed {
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("removing write-check file %s: %w", path, err)
		}
	}
	return nil
}
