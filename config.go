package main

import (
	"time"
)

// Config is the worker's effective configuration: built-in defaults, overlaid
// by the working-directory (or --config) file, overlaid by the home file.
type Config struct {
	ManagerURL               string
	TaskTypes                []string
	TaskUpdateQueueDB        string
	SubprocessPIDFile        string
	MayIRunInterval          time.Duration
	WorkerID                 string
	WorkerSecret             string
	WorkerRegistrationSecret string
	PushLogMaxInterval       time.Duration
	PushLogMaxEntries        int
	PushActMaxInterval       time.Duration

	// Keys this worker adds (DESIGN.md).
	SubprocessTimeout time.Duration
	TaskTimeout       time.Duration
	ErrorRetry        time.Duration
	ManagerCAFile     string

	// Environment holds the [environment] section as "KEY=value" pairs, in
	// file order; they are set in every subprocess's environment.
	Environment []string

	// PreTaskChecks holds the [pre_task_check] section, read checks first.
	PreTaskChecks []preTaskCheck

	// HomeConfig is where registration writes the credentials.
	HomeConfig string
}

// preTaskCheck is one [pre_task_check] entry: a path that must be readable
// or writable before every task fetch.
type preTaskCheck struct {
	Key   string // the config key, e.g. "write.0"
	Write bool
	Path  string
}

// defaultConfig returns the Python worker's DEFAULT_CONFIG plus our additions.
func defaultConfig() Config {
	return Config{
		TaskTypes:          []string{"sleep", "blender-render", "file-management", "exr-merge", "video-encoding"},
		TaskUpdateQueueDB:  "flamenco-worker.db",
		SubprocessPIDFile:  "flamenco-worker-subprocess.pid",
		MayIRunInterval:    5 * time.Second,
		PushLogMaxInterval: 30 * time.Second,
		PushLogMaxEntries:  1000,
		PushActMaxInterval: 15 * time.Second,
		SubprocessTimeout:  3600 * time.Second,
		ErrorRetry:         600 * time.Second,
	}
}
