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
// its lock file, what it protects (for the error message) and what to
// change so that a second worker gets its own.
type instanceLock struct {
	path   string
	what   string
	advice string
}

// lockHeldError is a lock taken by another live process.
type lockHeldError struct {
	lock instanceLock
	pid  int // 0 if the other process had not written its PID yet
}

func (e *lockHeldError) Error() string {
	who := "another worker"
	if e.pid > 0 {
		who = fmt.Sprintf("another worker (pid %d)", e.pid)
	}
	return fmt.Sprintf("%s already uses %s; %s", who, e.lock.what, e.lock.advice)
}

// instanceLocks lists what this worker process must have to itself: its
// identity (the credentials section of the home file), its task update
// queue and its subprocess PID file (whose process a second worker would
// otherwise take for a leftover and kill).
func instanceLocks(cfg *Config) []instanceLock {
	var locks []instanceLock
	if cfg.HomeConfig != "" {
		locks = append(locks, instanceLock{
			path:   identityLockPath(cfg.HomeConfig, cfg.CredSection),
			what:   fmt.Sprintf("the credentials in %s [%s]", cfg.HomeConfig, cfg.CredSection),
			advice: "give this one its own --config with its own task_update_queue_db, or its own HOME",
		})
	}
	locks = append(locks, instanceLock{
		path:   cfg.TaskUpdateQueueDB + ".lock",
		what:   "the task update queue " + canonicalPath(cfg.TaskUpdateQueueDB),
		advice: "give this one its own task_update_queue_db (or its own working directory)",
	})
	if cfg.SubprocessPIDFile != "" {
		locks = append(locks, instanceLock{
			path:   cfg.SubprocessPIDFile + ".lock",
			what:   "the subprocess PID file " + canonicalPath(cfg.SubprocessPIDFile),
			advice: "give this one its own subprocess_pid_file (or its own working directory)",
		})
	}
	return locks
}

// identityLockPath is the lock file of one credentials section of homeFile:
// homeFile.lock for [flamenco-worker], homeFile.<hash>.lock for the section
// of a --config instance.
func identityLockPath(homeFile, section string) string {
	if section == workerSection {
		return homeFile + ".lock"
	}
	sum := sha256.Sum256([]byte(section))
	return homeFile + "." + hex.EncodeToString(sum[:6]) + ".lock"
}

// takeInstanceLocks takes every lock of instanceLocks for the life of the
// process (release, or the process's end, frees them: flock locks die with
// their last file descriptor, so a crashed worker's lock is no obstacle).
// A lock held by another process is an error naming its PID; a lock file
// that cannot be created (a read-only home) only costs the protection, so
// it is a warning: what needs the file fails later with its own message.
func takeInstanceLocks(cfg *Config, logger *slog.Logger) (release func(), err error) {
	var held []*os.File
	release = func() {
		for _, f := range held {
			f.Close()
		}
	}
	for _, l := range instanceLocks(cfg) {
		f, err := lockFile(l)
		var busy *lockHeldError
		switch {
		case errors.As(err, &busy):
			release()
			return nil, err
		case err != nil:
			logger.Warn("cannot take a lock file; nothing stops a second worker from using the same "+strings.TrimPrefix(l.what, "the "), "lock_file", l.path, "err", err)
			continue
		}
		held = append(held, f)
	}
	return release, nil
}

// lockFile takes an exclusive flock on l.path and writes our PID into it.
// The file descriptor is close-on-exec, so no child inherits the lock.
func lockFile(l instanceLock) (*os.File, error) {
	f, err := os.OpenFile(l.path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	err = flockNB(f)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		pid := lockOwner(f)
		f.Close()
		return nil, &lockHeldError{lock: l, pid: pid}
	}
	if err == nil {
		err = f.Truncate(0)
	}
	if err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// flockNB is flock(LOCK_EX|LOCK_NB), repeated when a signal interrupts it.
func flockNB(f *os.File) error {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err != syscall.EINTR {
			return err
		}
	}
}

// lockOwner reads the PID the lock's holder wrote; a holder that has just
// taken the lock gets a moment to write it.
func lockOwner(f *os.File) int {
	for deadline := time.Now().Add(time.Second); ; time.Sleep(20 * time.Millisecond) {
		buf := make([]byte, 32)
		n, _ := f.ReadAt(buf, 0)
		if pid, err := strconv.Atoi(strings.TrimSpace(string(buf[:n]))); err == nil && pid > 0 {
			return pid
		}
		if time.Now().After(deadline) {
			return 0
		}
	}
}
