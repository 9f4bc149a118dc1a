package main

import (
	"context"
	"encoding/hex"
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

// Worker states (spec/python-worker.md §6.1; "testing" is only reported),
// the local signals' requests (a local wake-up does not override a sleep
// the Manager asked for) and why the worker is asleep (for STATUS=).
const (
	stateAwake    = "awake"
	stateAsleep   = "asleep"
	stateError    = "error"
	stateShutdown = "shutting-down"

	sleepLocal = "asleep (SIGTSTP)"
	wakeLocal  = "awake (signal)"

	asleepByManager = "requested by the Manager"
	asleepBySignal  = "SIGTSTP"
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
	badTasks int  // undecodable task documents in a row (main loop only)
	requests chan string
	live     *liveness // heartbeats for the watchdog (systemd.go)
	stopped  sync.Map  // task ids the Manager told us to stop: their queued updates go without a status

	mu                sync.Mutex
	state             string
	current           *runningTask
	asleepBy, trouble string // why asleep, why in the error state: for STATUS=
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

// snapshot is what the loop, SIGUSR1 and STATUS= read under mu.
func (w *worker) snapshot() (state string, cur *runningTask, asleepBy, trouble string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.state, w.current, w.asleepBy, w.trouble
}

func (w *worker) setState(s string) { w.mu.Lock(); defer w.mu.Unlock(); w.state = s }

func (w *worker) setCurrent(rt *runningTask) { w.mu.Lock(); defer w.mu.Unlock(); w.current = rt }

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

// loop is the worker's main loop; it ends with ctx or on a shutdown request.
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
		switch state, _, _, _ := w.snapshot(); state {
		case stateAwake:
			if d := w.awake(ctx); d > 0 {
				w.wait(ctx, d)
			}
		case stateAsleep:
			if w.wait(ctx, w.iv.asleepPoll) {
				w.pollStatus(ctx)
			}
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
// and running what it brings. It returns how long to wait before the next.
func (w *worker) awake(ctx context.Context) time.Duration {
	if n := w.q.len(); n > w.iv.queueLimit {
		w.logger.Warn("task update queue too large, waiting until it shrinks", "queued", n, "limit", w.iv.queueLimit)
		return w.iv.fetchFailed
	}
	if err := preTaskChecks(w.cfg.PreTaskChecks); err != nil {
		w.logger.Error("pre-task check failed, waiting until it succeeds", "err", err)
		w.mu.Lock()
		w.trouble = fmt.Sprintf("%v, retrying at %s", err, time.Now().Add(w.cfg.ErrorRetry).Format("15:04"))
		w.mu.Unlock()
		w.changeStatus(ctx, stateError)
		return 0
	}
	resp, err := w.mgr.fetchTask(ctx)
	switch {
	case ctx.Err() != nil:
		return 0
	case err != nil:
		w.logger.Warn("cannot fetch a task, will retry", "err", err, "retry_in", w.iv.fetchFailed)
	case resp.status == http.StatusOK:
		return w.runFetched(ctx, resp.body)
	case resp.status == http.StatusNoContent:
		w.logger.Debug("no task available")
		return w.iv.fetchEmpty
	case resp.status == http.StatusLocked:
		if status, err := decodeStatusRequested(resp.body); err == nil {
			w.logger.Info("status change requested when fetching a task", "status", status)
			w.changeStatus(ctx, status)
			return 0
		}
		w.logger.Warn("Manager answered 423 without a usable status", "response", resp.String())
	default:
		w.logger.Warn("error fetching a task, will retry", "response", resp.String(), "retry_in", w.iv.fetchFailed)
	}
	return w.iv.fetchFailed
}

// runFetched decodes and runs a task, then waits until its final update
// has been delivered: the Manager hands a worker its own still-active task
// again, so fetching before that would run the same task twice.
func (w *worker) runFetched(ctx context.Context, body []byte) time.Duration {
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
		return delay
	}
	w.badTasks = 0
	w.logger.Info("received task", "task_id", t.ID)
	w.live.waiting("fetch", forever) // a task bounds its own time (subprocess and task timeouts)
	// A Manager task id is a 24-hex ObjectId (spec/manager-v2.md §1.1), in either case.
	if _, err := hex.DecodeString(t.ID); len(t.ID) != 24 || err != nil {
		w.refuseTask(t.ID, fmt.Sprintf("task id %q is not a Manager task id (24 hexadecimal digits): not running it", t.ID))
		return w.iv.fetchFailed
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
	return 0
}

// taskIDOf is the _id of a task document that did not decode, if it is a string.
func taskIDOf(body []byte) string {
	var doc struct {
		ID any `json:"_id"`
	}
	json.Unmarshal(body, &doc) // a document that is not even JSON leaves ID nil
	id, _ := doc.ID.(string)
	return id
}

// refuseTask fails a task without running it, unless the id cannot even be
// put in a URL path.
func (w *worker) refuseTask(id, reason string) {
	w.logger.Error("failing a task without running it", "task_id", id, "reason", reason)
	if id != "" && id != "." && id != ".." {
		rep := newReporter(id, w.cfg, w.out)
		failTask(rep, reason)
		rep.close()
	}
}

// failTask writes msg to the task log, and fails the task with it.
func failTask(rep *reporter, msg string) {
	rep.log(msg)
	rep.setStatus("failed", msg)
}

// runTask executes one task and reports its outcome.
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
	w.stopped.Delete(t.ID) // given to us again: ours again
	w.setCurrent(&runningTask{id: t.ID, rep: rep, abort: abort})
	defer w.setCurrent(nil)

	rep.setStatus("active", "")
	var poll sync.WaitGroup
	poll.Go(func() { w.pollMayIRun(taskCtx, t.ID) }) // ends when the task ends (abort below)
	ok, err := runCommands(taskCtx, t, rep, w.env)
	rep.log("Aggregated task timing info: " + rep.timingJSON())
	w.report(ctx, taskCtx, t.ID, rep, ok, err)
	abort(nil)
	poll.Wait()
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
		id, _ := w.mgr.credentials()
		who := fmt.Sprintf("Worker %s (%s)", id, w.mgr.nickname)
		rep.log(who + " stopped running this task, no longer allowed to run by Manager")
		if errors.Is(cause, errNotAllowed) {
			rep.flush()
			w.returnTask(ctx, taskID, rep, who)
		}
	case errors.Is(cause, errGoingAsleep):
		rep.setStatus("canceled", "Task was canceled")
	case errors.Is(cause, errTaskTimeout):
		failTask(rep, fmt.Sprintf("Task timed out after %d seconds (task_timeout_seconds)", int(w.cfg.TaskTimeout.Seconds())))
	default:
		reportOutcome(rep, ok, err)
	}
}

// reportOutcome sends the status of a task that ran to its end.
func reportOutcome(rep *reporter, ok bool, err error) {
	switch {
	case ok:
		rep.setStatus("completed", "Task completed")
	case err != nil: // a task-level problem, such as an unknown command
		failTask(rep, "Task failed: "+err.Error())
	default: // the failing command's activity stays as it was
		rep.setStatus("failed", "")
	}
}

// returnTask gives an aborted task back to the Manager's queue, after its
// pending updates have had one chance to go out.
func (w *worker) returnTask(ctx context.Context, taskID string, rep *reporter, who string) {
	w.commitPending()
	if err := w.q.flush(ctx, w.deliverer()); err != nil {
		w.logger.Warn("some task updates are still queued", "err", err)
	}
	if err := w.mgr.returnTask(ctx, taskID); err != nil {
		w.logger.Warn("cannot return the task to the Manager", "task_id", taskID, "err", err)
		rep.log(who + " could not return this task to the Manager queue")
		return
	}
	rep.log(who + " returned this task to the Manager queue.")
}

// commitPending waits until every update handed to the committer is queued.
func (w *worker) commitPending() {
	done := make(chan struct{})
	w.out <- outgoing{done: done}
	<-done
}

// abortTask stops the running task if it is taskID ("" = whatever runs);
// only going asleep still reports its status.
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
func (w *worker) pollMayIRun(ctx context.Context, taskID string) {
	every(ctx, w.cfg.MayIRunInterval, func() bool {
		answer, err := w.mgr.mayIRun(ctx, taskID)
		if err != nil && ctx.Err() == nil {
			w.logger.Warn("unable to query may-i-run, will ask again", "task_id", taskID, "err", err)
		}
		if err != nil || *answer.MayKeepRunning {
			return true
		}
		w.logger.Warn("not allowed to keep running task", "task_id", taskID, "reason", answer.Reason)
		w.stopped.Store(taskID, true)
		w.abortTask(taskID, errNotAllowed)
		if answer.StatusRequested != "" {
			w.request(answer.StatusRequested)
		}
		return false
	})
}

// deliverer connects the queue to the Manager. An update refused with 404
// or 409 means the task is no longer ours: stop it at once.
func (w *worker) deliverer() deliverer {
	return deliverer{
		send:    w.mgr.postUpdate,
		stopped: func(taskID string) bool { _, ok := w.stopped.Load(taskID); return ok },
		rejected: func(taskID string, status int) {
			if status == http.StatusNotFound || status == http.StatusConflict {
				w.stopped.Store(taskID, true)
				if w.abortTask(taskID, errTaskGone) {
					w.logger.Warn("aborting the running task: the Manager refused its update", "task_id", taskID, "status", status)
				}
			}
		},
	}
}

// changeStatus applies a status requested by the Manager or a signal
// (spec/python-worker.md §6.3) and acknowledges it.
func (w *worker) changeStatus(ctx context.Context, status string) {
	if status = w.enter(status); status != "" && status != stateShutdown {
		w.ack(ctx, status)
	}
}

func (w *worker) ack(ctx context.Context, status string) {
	if err := w.mgr.ackStatusChange(ctx, status); err != nil && ctx.Err() == nil {
		w.logger.Warn("cannot acknowledge status change", "status", status, "err", err)
	}
}

// enter goes to the state a status request leads to, and notes why the
// worker sleeps (always set while asleep); it returns that state, or "" if
// nothing changes.
func (w *worker) enter(status string) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch status {
	case sleepLocal:
		if w.state != stateAsleep { // a sleep the Manager asked for stays its sleep
			w.asleepBy = asleepBySignal
		}
		status = stateAsleep
	case wakeLocal:
		if w.state != stateAsleep {
			return "" // already awake (or in error, which ends by itself)
		}
		if w.asleepBy == asleepByManager {
			w.logger.Info("staying asleep: the Manager asked for it; wake the worker from the Manager")
			return ""
		}
		w.logger.Info("SIGCONT or SIGUSR2: waking up")
		status, w.asleepBy = stateAwake, ""
	case stateShutdown, "shutdown":
		w.logger.Info("the Manager asked us to shut down")
		status, w.asleepBy = stateShutdown, ""
	case stateAwake, stateError:
		w.asleepBy = ""
	default:
		if status != stateAsleep {
			w.logger.Warn("we have no way to go to this status, going to sleep instead", "status", status)
		}
		status, w.asleepBy = stateAsleep, asleepByManager
	}
	if status == stateAwake {
		w.trouble = ""
	}
	w.state = status
	return status
}

// pollStatus asks the Manager, while asleep, whether to wake up.
func (w *worker) pollStatus(ctx context.Context) {
	status, err := w.mgr.statusChange(ctx)
	if err != nil && ctx.Err() == nil {
		w.logger.Warn("cannot poll for a status change, will retry", "err", err)
	}
	if err == nil && status != "" {
		w.changeStatus(ctx, status)
	}
}

// summary is the one-paragraph state report of SIGUSR1.
func (w *worker) summary() string {
	state, cur, _, _ := w.snapshot()
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

// every calls f every d until f returns false or ctx ends.
func every(ctx context.Context, d time.Duration, f func() bool) {
	tick := time.NewTicker(d)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if !f() {
			return
		}
	}
}

// pingWhileAlive pings systemd's watchdog every timeout/4 while no loop is
// stuck for over timeout/2, so that systemd restarts a stuck worker.
func (w *worker) pingWhileAlive(ctx context.Context, timeout time.Duration) {
	if timeout <= 0 {
		return
	}
	warned := false
	every(ctx, timeout/4, func() bool {
		stuck := w.live.stale(timeout / 2)
		if len(stuck) == 0 {
			sdNotify("WATCHDOG=1")
		} else if !warned {
			w.logger.Error("a loop of the worker is stuck: no more watchdog pings, systemd will restart the worker", "loops", strings.Join(stuck, ","))
		}
		warned = len(stuck) > 0
		return true
	})
}

// statusLine says what the worker does, for systemctl status.
func (w *worker) statusLine() string {
	state, cur, asleepBy, trouble := w.snapshot()
	var s string
	switch {
	case state == stateShutdown:
		return "shutting down"
	case cur != nil:
		act, _ := cur.rep.snapshot()
		s = fmt.Sprintf("task %s: %s, %d %%", cur.id, truncate(act.Activity, 200), act.TaskProgressPercentage)
	case state == stateAsleep:
		s = "asleep (" + asleepBy + ")"
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

// reportStatus sends systemd's STATUS= line when it changed, at most once
// every interval, until ctx ends.
func (w *worker) reportStatus(ctx context.Context, interval time.Duration) {
	if os.Getenv("NOTIFY_SOCKET") == "" {
		return
	}
	last := ""
	send := func() bool {
		if line := w.statusLine(); line != last {
			sdNotify("STATUS=" + line)
			last = line
		}
		return true
	}
	send()
	every(ctx, interval, send)
}
