package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// instanceLock is one resource that two worker processes must never share:
// its lock file, what it protects and what to change so that a second
// worker gets its own (both for the error message).
type instanceLock struct{ path, what, advice string }

// instanceLocks lists what this worker process must have to itself: its
// identity (the credentials section of the home file), its task update
// queue and its subprocess PID file (whose process a second worker would
// otherwise take for a leftover and kill).
func instanceLocks(cfg *Config) []instanceLock {
	var locks []instanceLock
	if cfg.HomeConfig != "" {
		path := cfg.HomeConfig + ".lock" // [flamenco-worker]; a --config instance's section has its own
		if cfg.CredSection != workerSection {
			sum := sha256.Sum256([]byte(cfg.CredSection))
			path = cfg.HomeConfig + "." + hex.EncodeToString(sum[:6]) + ".lock"
		}
		locks = append(locks, instanceLock{path, fmt.Sprintf("the credentials in %s [%s]", cfg.HomeConfig, cfg.CredSection),
			"give this one its own --config with its own task_update_queue_db, or its own HOME"})
	}
	fileLock := func(path, what, key string) instanceLock {
		return instanceLock{path + ".lock", what + " " + canonicalPath(path), "give this one its own " + key + " (or its own working directory)"}
	}
	locks = append(locks, fileLock(cfg.TaskUpdateQueueDB, "the task update queue", "task_update_queue_db"))
	if cfg.SubprocessPIDFile != "" {
		locks = append(locks, fileLock(cfg.SubprocessPIDFile, "the subprocess PID file", "subprocess_pid_file"))
	}
	return locks
}

// takeInstanceLocks takes every lock of instanceLocks for the life of the
// process (release, or the process's end, frees them: a crashed worker's
// flock dies with it). A lock held by another process is an error naming
// its PID; a lock file that cannot be created (a read-only home) only
// costs the protection, so it is a warning: what needs the file fails
// later with its own message.
func takeInstanceLocks(cfg *Config, logger *slog.Logger) (release func(), err error) {
	var held []*os.File
	release = func() {
		for _, f := range held {
			f.Close()
		}
	}
	for _, l := range instanceLocks(cfg) {
		f, busy, err := lockFile(l)
		switch {
		case busy:
			release()
			return nil, err
		case err != nil:
			logger.Warn("cannot take a lock file; nothing stops a second worker from using the same "+strings.TrimPrefix(l.what, "the "), "lock_file", l.path, "err", err)
		default:
			held = append(held, f)
		}
	}
	return release, nil
}

// lockFile takes an exclusive flock on l.path and writes our PID into it;
// busy means another live process holds it. The file descriptor is
// close-on-exec, so no child inherits the lock.
func lockFile(l instanceLock) (f *os.File, busy bool, err error) {
	if f, err = os.OpenFile(l.path, os.O_RDWR|os.O_CREATE, 0o644); err != nil {
		return nil, false, err
	}
	err = flock(f, syscall.LOCK_EX|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		defer f.Close()
		who := "another worker"
		if pid := lockOwner(f); pid > 0 { // 0 if it had not written its PID yet
			who = fmt.Sprintf("another worker (pid %d)", pid)
		}
		return nil, true, fmt.Errorf("%s already uses %s; %s", who, l.what, l.advice)
	}
	if err == nil {
		err = f.Truncate(0)
	}
	if err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	if err != nil {
		f.Close()
		return nil, false, err
	}
	return f, false, nil
}

// lockOwner reads the PID the lock's holder wrote; a holder that has just
// taken the lock gets a moment to write it.
func lockOwner(f *os.File) int {
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		buf := make([]byte, 32)
		n, _ := f.ReadAt(buf, 0)
		if pid, err := strconv.Atoi(strings.TrimSpace(string(buf[:n]))); err == nil && pid > 0 {
			return pid
		}
	}
	return 0
}
