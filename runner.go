package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

// Worker states (spec/python-worker.md §6.1). "testing" is only reported.
const (
	stateAwake    = "awake"
	stateAsleep   = "asleep"
	stateError    = "error"
	stateShutdown = "shutting-down"
)

// Why a running task was stopped; the cause decides what is reported.
var (
	errNotAllowed  = errors.New("the Manager no longer allows this task to run")
	errTaskGone    = errors.New("the Manager refused an update for this task: it was taken away")
	errGoingAsleep = errors.New("the worker is going asleep")
	errTaskTimeout = errors.New("task_timeout_seconds exceeded")
)

// worker runs the fetch-and-execute loop and obeys the Manager.
type worker struct {
	cfg      *Config
	mgr      *manager
	q        *queue
	env      *runEnv
	logger   *slog.Logger
	out      chan outgoing
	iv       intervals
	single   bool // -1: one task, then shut down
	badTasks int  // task documents in a row that could not be decoded; only the main loop uses it
	requests chan string

	mu      sync.Mutex
	state   string
	current *runningTask
	// Under mu too: why the worker is asleep (asleepByManager, asleepBySignal),
	// and why it is in the error state (noteTrouble), for STATUS=.
	asleepBy, trouble string

	live *liveness // heartbeats for the watchdog (systemd.go)

	stopped map[string]bool // tasks the Manager told us to stop: their queued updates go without a status
}

// runningTask is the task being executed, as seen from other goroutines.
type runningTask struct {
	id    string
	rep   *reporter
	abort context.CancelCauseFunc
}

func newWorker(cfg *Config, mgr *manager, q *queue, env *runEnv, out chan outgoing, logger *slog.Logger) *worker {
	return &worker{
		cfg: cfg, mgr: mgr, q: q, env: env, out: out, logger: logger,
		iv:       cfg.Tuning.intervals,
		requests: make(chan string, 8),
		state:    stateAwake,
	}
}

// getState returns the worker state.
func (w *worker) getState() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.state
}

func (w *worker) setState(s string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.state = s
}

// request asks the main loop to change status (from a signal or a
// may-i-run answer). Going asleep stops a running task at once; the rest
// waits for the main loop. It never blocks; a full inbox drops the oldest.
func (w *worker) request(status string) {
	if status != stateAwake && status != wakeLocal && status != stateError && status != "shutdown" {
		w.abortTask("", errGoingAsleep)
	}
	for {
		select {
		case w.requests <- status:
			return
		default:
			select {
			case <-w.requests:
			default:
			}
		}
	}
}

// loop is the worker's main loop; it returns when ctx ends or the worker
// shuts down on request.
func (w *worker) loop(ctx context.Context) {
	ctx = w.live.in(ctx, "fetch")
	for ctx.Err() == nil {
		w.live.beat("fetch")
		select {
		case status := <-w.requests:
			w.changeStatus(ctx, status)
			continue
		default:
		}
		switch w.getState() {
		case stateAwake:
			w.awake(ctx)
		case stateAsleep:
			w.asleep(ctx)
		case stateError:
			if w.wait(ctx, w.cfg.ErrorRetry) {
				w.changeStatus(ctx, stateAwake)
			}
		case stateShutdown:
			return
		}
	}
}

// wait sleeps d unless a status change or shutdown comes first, which it
// applies. It reports whether d passed undisturbed.
func (w *worker) wait(ctx context.Context, d time.Duration) bool {
	w.live.waiting("fetch", d)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case status := <-w.requests:
		w.changeStatus(ctx, status)
	case <-ctx.Done():
	}
	return false
}

// awake is one fetch iteration: back-pressure, pre-task checks, POST /task,
// and running what it brings.
func (w *worker) awake(ctx context.Context) {
	if n := w.q.len(); n > w.iv.queueLimit {
		w.logger.Warn("task update queue too large, waiting until it shrinks", "queued", n, "limit", w.iv.queueLimit)
		w.wait(ctx, w.iv.fetchFailed)
		return
	}
	if err := preTaskChecks(w.cfg.PreTaskChecks); err != nil {
		w.logger.Error("pre-task check failed, waiting until it succeeds", "err", err)
		w.noteTrouble(err, w.cfg.ErrorRetry)
		w.changeStatus(ctx, stateError)
		return
	}
	resp, err := w.mgr.fetchTask(ctx)
	switch {
	case ctx.Err() != nil:
	case err != nil:
		w.logger.Warn("cannot fetch a task, will retry", "err", err, "retry_in", w.iv.fetchFailed)
		w.wait(ctx, w.iv.fetchFailed)
	case resp.status == http.StatusOK:
		w.runFetched(ctx, resp.body)
	case resp.status == http.StatusNoContent:
		w.logger.Debug("no task available")
		w.wait(ctx, w.iv.fetchEmpty)
	case resp.status == http.StatusLocked:
		status, err := decodeStatusRequested(resp.body)
		if err != nil {
			w.logger.Warn("Manager answered 423 without a usable status", "response", resp.String())
			w.wait(ctx, w.iv.fetchFailed)
			return
		}
		w.logger.Info("status change requested when fetching a task", "status", status)
		w.changeStatus(ctx, status)
	default:
		w.logger.Warn("error fetching a task, will retry", "response", resp.String(), "retry_in", w.iv.fetchFailed)
		w.wait(ctx, w.iv.fetchFailed)
	}
}

// runFetched decodes and runs a task, then waits until its final update
// has been delivered: the Manager hands a worker its own still-active task
// again, so fetching before that would run the same task twice.
func (w *worker) runFetched(ctx context.Context, body []byte) {
	t, err := decodeTask(body)
	if err != nil {
		// Failed if it has an id, so that the Manager does not hand it out
		// again and again; either way, the next fetch backs off.
		w.badTasks++
		delay := w.iv.fetchFailed << min(w.badTasks-1, 5)
		w.logger.Error("Manager sent a task we cannot read", "err", err, "body", truncate(string(body), 200), "retry_in", delay)
		if id := taskIDOf(body); id != "" {
			w.refuseTask(id, "Worker cannot read this task: "+err.Error())
		}
		w.wait(ctx, delay)
		return
	}
	w.badTasks = 0
	w.logger.Info("received task", "task_id", t.ID)
	w.live.waiting("fetch", forever) // a task bounds its own time (subprocess and task timeouts)
	if !plausibleTaskID(t.ID) {
		w.refuseTask(t.ID, fmt.Sprintf("task id %q is not a Manager task id (24 hexadecimal digits): not running it", t.ID))
		w.wait(ctx, w.iv.fetchFailed)
		return
	}
	w.runTask(ctx, t)
	w.commitPending()
	if err := w.q.waitDelivered(ctx, w.q.lastID()); err == nil {
		w.logger.Debug("final update of the task delivered", "task_id", t.ID)
	}
	if w.single && ctx.Err() == nil {
		w.logger.Info("running in single-task mode, exiting")
		w.setState(stateShutdown)
	}
}

// taskIDOf is the _id of a task document that did not decode, if it has a
// string one.
func taskIDOf(body []byte) string {
	var doc struct {
		ID json.RawMessage `json:"_id"`
	}
	var id string
	if json.Unmarshal(body, &doc) != nil || json.Unmarshal(doc.ID, &id) != nil {
		return ""
	}
	return id
}

// plausibleTaskID reports whether id can be a Manager v2 task id: a
// 24-hex ObjectId (spec/manager-v2.md §1.1; either case, as the Manager's
// own check accepts).
func plausibleTaskID(id string) bool {
	if len(id) != 24 {
		return false
	}
	for _, c := range []byte(id) {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// refuseTask fails a task the worker will not run, without running it:
// one error log line, and a failed update unless the id cannot even be put
// in a URL path.
func (w *worker) refuseTask(id, reason string) {
	w.logger.Error("failing a task without running it", "task_id", id, "reason", reason)
	if id == "" || id == "." || id == ".." {
		return
	}
	rep := newReporter(id, w.cfg, w.out)
	rep.log(reason)
	rep.setStatus("failed", reason)
	rep.close()
}

// runTask executes one task and reports its outcome, unless it was taken
// away or the worker is shutting down, in which case no status is sent.
func (w *worker) runTask(ctx context.Context, t *task) {
	taskCtx, abort := context.WithCancelCause(ctx)
	defer abort(nil)
	if w.cfg.TaskTimeout > 0 {
		var cancel context.CancelFunc
		taskCtx, cancel = context.WithTimeoutCause(taskCtx, w.cfg.TaskTimeout, errTaskTimeout)
		defer cancel()
	}
	rep := newReporter(t.ID, w.cfg, w.out)
	rep.nCommands = max(len(t.Commands), 1)
	w.markStopped(t.ID, false) // given to us again: ours again
	w.setCurrent(&runningTask{id: t.ID, rep: rep, abort: abort})
	defer w.setCurrent(nil)

	rep.setStatus("active", "")
	pollDone := make(chan struct{})
	go func() { // ends when the task ends (taskCtx is cancelled by the deferred abort)
		defer close(pollDone)
		w.pollMayIRun(taskCtx, t.ID, rep, abort)
	}()

	ok, err := runCommands(taskCtx, t, rep, w.env)
	rep.log("Aggregated task timing info: " + rep.timingJSON())
	w.report(ctx, taskCtx, t.ID, rep, ok, err)
	abort(nil)
	<-pollDone
}

// report sends a finished task's outcome according to why it ended.
func (w *worker) report(ctx, taskCtx context.Context, taskID string, rep *reporter, ok bool, err error) {
	defer rep.close()
	cause := context.Cause(taskCtx)
	switch {
	case ctx.Err() != nil:
		rep.silence()
		rep.log("Worker is shutting down; the Manager re-queues this task when the worker signs off")
	case errors.Is(cause, errNotAllowed), errors.Is(cause, errTaskGone):
		rep.silence()
		id, _ := w.mgr.credentials()
		rep.logf("Worker %s (%s) stopped running this task, no longer allowed to run by Manager", id, w.mgr.nickname)
		if errors.Is(cause, errNotAllowed) {
			rep.flush()
			w.returnTask(ctx, taskID, rep)
		}
	case errors.Is(cause, errGoingAsleep):
		rep.setStatus("canceled", "Task was canceled")
	case errors.Is(cause, errTaskTimeout):
		msg := fmt.Sprintf("Task timed out after %d seconds (task_timeout_seconds)", int(w.cfg.TaskTimeout.Seconds()))
		rep.log(msg)
		rep.setStatus("failed", msg)
	default:
		reportOutcome(rep, ok, err)
	}
}

// reportOutcome sends the status of a task that ran to its end: completed,
// or failed with the error (a task-level problem such as an unknown
// command) or with the failing command's activity left as it was.
func reportOutcome(rep *reporter, ok bool, err error) {
	switch {
	case ok:
		rep.setStatus("completed", "Task completed")
	case err != nil:
		rep.log("Task failed: " + err.Error())
		rep.setStatus("failed", "Task failed: "+err.Error())
	default:
		rep.setStatus("failed", "")
	}
}

// returnTask gives an aborted task back to the Manager's queue, after its
// pending updates have had one chance to go out.
func (w *worker) returnTask(ctx context.Context, taskID string, rep *reporter) {
	w.commitPending()
	if err := w.q.flush(ctx, w.deliverer()); err != nil {
		w.logger.Warn("some task updates are still queued", "err", err)
	}
	id, _ := w.mgr.credentials()
	if err := w.mgr.returnTask(ctx, taskID); err != nil {
		w.logger.Warn("cannot return the task to the Manager", "task_id", taskID, "err", err)
		rep.logf("Worker %s (%s) could not return this task to the Manager queue", id, w.mgr.nickname)
		return
	}
	rep.logf("Worker %s (%s) returned this task to the Manager queue.", id, w.mgr.nickname)
}

// commitPending waits until every update handed to the committer so far is
// in the queue.
func (w *worker) commitPending() {
	done := make(chan struct{})
	w.out <- outgoing{done: done}
	<-done
}

func (w *worker) setCurrent(rt *runningTask) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.current = rt
}

// abortTask stops the running task if it is taskID ("" = whatever runs).
func (w *worker) abortTask(taskID string, cause error) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.current == nil || (taskID != "" && w.current.id != taskID) {
		return false
	}
	if cause != errGoingAsleep {
		w.current.rep.silence()
	}
	w.current.abort(cause)
	return true
}

// pollMayIRun asks the Manager every may_i_run_interval whether the task
// may keep running. A bad answer or a network error is logged and the
// poll goes on: one odd answer must not end the checking for good.
func (w *worker) pollMayIRun(ctx context.Context, taskID string, rep *reporter, abort context.CancelCauseFunc) {
	tick := time.NewTicker(w.cfg.MayIRunInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		answer, err := w.mgr.mayIRun(ctx, taskID)
		if err != nil {
			if ctx.Err() == nil {
				w.logger.Warn("unable to query may-i-run, will ask again", "task_id", taskID, "err", err)
			}
			continue
		}
		if *answer.MayKeepRunning {
			continue
		}
		w.logger.Warn("not allowed to keep running task", "task_id", taskID, "reason", answer.Reason)
		w.markStopped(taskID, true)
		rep.silence()
		abort(errNotAllowed)
		if answer.StatusRequested != "" {
			w.request(answer.StatusRequested)
		}
		return
	}
}

// deliverer connects the queue to the Manager. An update refused with 404
// or 409 means the task is no longer ours: stop it at once.
func (w *worker) deliverer() deliverer {
	return deliverer{
		send:    w.mgr.postUpdate,
		stopped: w.isStopped,
		rejected: func(taskID string, status int) {
			if status == http.StatusNotFound || status == http.StatusConflict {
				w.markStopped(taskID, true)
				if w.abortTask(taskID, errTaskGone) {
					w.logger.Warn("aborting the running task: the Manager refused its update", "task_id", taskID, "status", status)
				}
			}
		},
	}
}

// markStopped records that the Manager told us to stop taskID (or, with
// false, that it gave the task to us again). The updates queued before we
// knew keep their log lines, but must not claim the task is still active.
func (w *worker) markStopped(taskID string, stopped bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case stopped && w.stopped == nil:
		w.stopped = map[string]bool{taskID: true}
	case stopped:
		w.stopped[taskID] = true
	default:
		delete(w.stopped, taskID)
	}
}

func (w *worker) isStopped(taskID string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.stopped[taskID]
}

// changeStatus applies a status requested by the Manager or a signal
// (spec/python-worker.md §6.3) and acknowledges it.
func (w *worker) changeStatus(ctx context.Context, status string) {
	if status = w.localRequest(status); status == "" {
		return
	}
	switch status {
	case stateAwake:
		w.setState(stateAwake)
		w.ack(ctx, stateAwake)
	case stateShutdown, "shutdown":
		w.logger.Info("the Manager asked us to shut down")
		w.setState(stateShutdown)
	case stateError:
		w.setState(stateError)
		w.ack(ctx, stateError)
	default:
		if status != stateAsleep {
			w.logger.Warn("we have no way to go to this status, going to sleep instead", "status", status)
		}
		w.setState(stateAsleep)
		w.ack(ctx, stateAsleep)
	}
}

func (w *worker) ack(ctx context.Context, status string) {
	if err := w.mgr.ackStatusChange(ctx, status); err != nil && ctx.Err() == nil {
		w.logger.Warn("cannot acknowledge status change", "status", status, "err", err)
	}
}

// asleep polls /status-change until the Manager wakes us.
func (w *worker) asleep(ctx context.Context) {
	if !w.wait(ctx, w.iv.asleepPoll) {
		return
	}
	status, err := w.mgr.statusChange(ctx)
	switch {
	case err != nil:
		if ctx.Err() == nil {
			w.logger.Warn("cannot poll for a status change, will retry", "err", err)
		}
	case status != "":
		w.changeStatus(ctx, status)
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// summary is the one-paragraph state report of SIGUSR1.
func (w *worker) summary() string {
	w.mu.Lock()
	state, cur := w.state, w.current
	w.mu.Unlock()
	s := fmt.Sprintf("state: %s; ", state)
	if cur == nil {
		s += "no task running; "
	} else {
		act, pid := cur.rep.snapshot()
		s += fmt.Sprintf("task %s, command %d at %d%% (task %d%%), activity %q; ", cur.id, act.CurrentCommandIdx, act.CommandProgressPercentage, act.TaskProgressPercentage, act.Activity)
		if pid > 0 {
			s += fmt.Sprintf("subprocess pid %d; ", pid)
		}
	}
	return s + fmt.Sprintf("%d task updates queued.", w.q.len())
}

// Status requests that come from a local signal rather than the Manager:
// a local wake-up does not override a sleep the Manager asked for.
const (
	sleepLocal = "asleep (SIGTSTP)"
	wakeLocal  = "awake (signal)"
)

// Why the worker is asleep, for the log and systemd's STATUS= line.
const (
	asleepByManager = "requested by the Manager"
	asleepBySignal  = "SIGTSTP"
)

// localRequest applies what a status request means for the reason the
// worker sleeps, and turns a local request into the status to go to; ""
// means: nothing to do. Called by changeStatus, on the main loop.
func (w *worker) localRequest(status string) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch status {
	case sleepLocal:
		if w.state != stateAsleep || w.asleepBy == "" {
			w.asleepBy = asleepBySignal
		}
		return stateAsleep
	case wakeLocal:
		switch {
		case w.state == stateAsleep && w.asleepBy == asleepByManager:
			w.logger.Info("staying asleep: the Manager asked for it; wake the worker from the Manager")
			return ""
		case w.state != stateAsleep:
			return "" // already awake (or in error, which ends by itself)
		}
		w.logger.Info("SIGCONT or SIGUSR2: waking up")
		w.asleepBy = ""
		return stateAwake
	case stateAwake, stateError, stateShutdown, "shutdown":
		w.asleepBy = ""
		if status == stateAwake {
			w.trouble = ""
		}
	default: // asleep, or a status we cannot go to, which means asleep
		w.asleepBy = asleepByManager
	}
	return status
}

// pingWhileAlive pings systemd's watchdog every timeout/4, but only while no
// loop is stuck for longer than timeout/2; a stuck loop stops the pings and
// systemd restarts the worker. It ends with ctx.
func (w *worker) pingWhileAlive(ctx context.Context, timeout time.Duration) {
	if timeout <= 0 {
		return
	}
	tick := time.NewTicker(timeout / 4)
	defer tick.Stop()
	warned := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		stuck := w.live.stale(timeout / 2)
		if len(stuck) == 0 {
			sdNotify("WATCHDOG=1")
			warned = false
			continue
		}
		if !warned {
			w.logger.Error("a loop of the worker is stuck: no more watchdog pings, systemd will restart the worker", "loops", strings.Join(stuck, ","))
			warned = true
		}
	}
}

// noteTrouble records why the worker goes to the error state and when it
// tries again, for the STATUS= line; waking up clears it.
func (w *worker) noteTrouble(err error, retry time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.trouble = fmt.Sprintf("%v, retrying at %s", err, time.Now().Add(retry).Format("15:04"))
}

// statusLine says what the worker does, for systemctl status.
func (w *worker) statusLine() string {
	w.mu.Lock()
	state, cur, asleepBy, trouble := w.state, w.current, w.asleepBy, w.trouble
	w.mu.Unlock()
	var s string
	switch {
	case state == stateShutdown:
		return "shutting down"
	case cur != nil:
		act, _ := cur.rep.snapshot()
		s = fmt.Sprintf("task %s: %s, %d %%", cur.id, truncate(act.Activity, 200), act.TaskProgressPercentage)
	case state == stateAsleep && asleepBy != "":
		s = "asleep (" + asleepBy + ")"
	case state == stateAsleep:
		s = "asleep"
	case state == stateError:
		s = "error: " + trouble
	default:
		s = "idle, waiting for a task"
	}
	if since := w.mgr.reach.downSince(); !since.IsZero() {
		down := fmt.Sprintf("Manager unreachable since %s, %d updates queued", since.Format("15:04:05"), w.q.len())
		if cur == nil && state == stateAwake {
			return down
		}
		s += "; " + down
	}
	return s
}

// reportStatus keeps systemd's STATUS= line current: it sends the line
// when it changed, at most once every interval. It ends with ctx.
func (w *worker) reportStatus(ctx context.Context, interval time.Duration) {
	if os.Getenv("NOTIFY_SOCKET") == "" {
		return
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	last := ""
	for {
		if line := w.statusLine(); line != last {
			sdNotify("STATUS=" + line)
			last = line
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
