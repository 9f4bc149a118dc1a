package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"time"
)

// preflight is --check: it tests what a render node needs before it is
// put to work and prints one line per check. It reports whether all passed.
func preflight(ctx context.Context, cfg *Config, tune tuning, stdout io.Writer, logger *slog.Logger) bool {
	ok := true
	report := func(passed bool, name, detail string) {
		word := "OK  "
		if !passed {
			word, ok = "FAIL", false
		}
		fmt.Fprintf(stdout, "%s %-14s %s\n", word, name, detail)
	}
	fmt.Fprintf(stdout, "Flamenco Worker %s\n", workerVersion())
	report(true, "config", "valid")
	checkManager(ctx, cfg, tune, logger, report)
	checkQueue(cfg.TaskUpdateQueueDB, report)
	tools := []struct{ name, flag, needed string }{
		{"blender", "--version", "blender-render exr-merge test-blender-render"}, {"ffmpeg", "-version", "video-encoding"}}
	for _, tool := range tools {
		if !slices.ContainsFunc(cfg.TaskTypes, func(t string) bool { return slices.Contains(strings.Fields(tool.needed), t) }) {
			fmt.Fprintf(stdout, "SKIP %-14s not needed for task types %s\n", tool.name, strings.Join(cfg.TaskTypes, " "))
			continue
		}
		detail, err := toolVersion(ctx, tool.name, tool.flag)
		report(err == nil, tool.name, detail)
	}
	for _, c := range cfg.PreTaskChecks {
		detail, err := c.Key+": "+c.Path, preTaskChecks([]preTaskCheck{c})
		if err != nil {
			detail = strings.TrimPrefix(err.Error(), "pre-task check ")
		}
		report(err == nil, "pre_task_check", detail)
	}
	return ok
}

// checkManager finds the Manager (discovering it if need be), reaches it,
// and tells whether it accepts our credentials.
func checkManager(ctx context.Context, cfg *Config, tune tuning, logger *slog.Logger, report func(bool, string, string)) {
	url := cfg.ManagerURL
	if url == "" {
		found, err := discoverManager(ctx, tune.ssdpTargets, 2, time.Second, logger)
		if err != nil {
			report(false, "manager", err.Error())
			return
		}
		url = found
	}
	mgr, err := newManager(cfg, url, workerVersion(), logger)
	if err != nil {
		report(false, "manager", redactIn(err.Error(), url))
		return
	}
	resp, err := mgr.do(ctx, http.MethodGet, "/status-change", nil, true)
	if err != nil {
		report(false, "manager", redactIn(fmt.Sprintf("%s: %v", redactURL(url), err), url))
		return
	}
	report(true, "manager", fmt.Sprintf("%s answers (%s)", redactURL(url), resp))
	switch {
	case !mgr.hasCredentials():
		report(true, "credentials", "none yet: the worker registers at its first start")
	case resp.status == http.StatusUnauthorized:
		report(false, "credentials", "worker_id/worker_secret refused: the worker registers again at start")
	case resp.ok():
		report(true, "credentials", "accepted for worker_id "+cfg.WorkerID)
	default:
		report(false, "credentials", "unexpected answer "+resp.String())
	}
}

// toolVersion finds a tool on $PATH and returns its path and version line.
func toolVersion(ctx context.Context, name, flag string) (string, error) {
	path, err := exec.LookPath(name)
	if err != nil {
		return fmt.Sprintf("%s not found on $PATH", name), err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, flag).Output()
	if err != nil {
		return fmt.Sprintf("%s %s: %v", path, flag, err), err
	}
	first, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return path + ": " + first, nil
}
