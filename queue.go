package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	_ "modernc.org/sqlite" // the pure-Go SQLite driver, so the binary stays static
)

// The queue's own table. The Python worker's fworker_queue (pickles) in the
// same file is left alone.
const queueSchema = `CREATE TABLE IF NOT EXISTS task_updates (
	id      INTEGER PRIMARY KEY AUTOINCREMENT,
	task_id TEXT NOT NULL,
	payload TEXT NOT NULL
)`

// queue is the durable task-update queue: every update is committed to
// SQLite before anything else happens to it, and a forwarding goroutine
// delivers the rows to the Manager in order.
type queue struct {
	db     *sql.DB
	logger *slog.Logger

	sendMu sync.Mutex // held by the one sender of the head row, so rows go out once and in order

	mu      sync.Mutex
	size    int             // rows in the table
	last    int64           // id of the newest row ever enqueued
	head    int64           // id of the oldest undelivered row; 0 when unknown
	changed chan struct{}   // closed and replaced whenever a row comes or goes
	hs      headState       // the head row as the sender knows it; under sendMu
	passes  chan chan error // flush's requests for a pass, to the running forwarder
	fwdDone chan struct{}   // closed once the forwarder has stopped

	retry backoff // retry delays of the forwarder (update_backoff_min/max_seconds)

	st queueStore // the SQLite file itself (queuestore.go)

	live *liveness // the forwarder's heartbeats, for the watchdog (systemd.go)
}

// openQueue opens (creating if needed) the queue database, see open; retry
// is the forwarder's backoff.
func openQueue(path string, logger *slog.Logger, retry backoff) (*queue, error) {
	q := &queue{logger: logger, changed: make(chan struct{}), retry: retry}
	q.st.path = path
	if abs, err := filepath.Abs(path); err == nil {
		q.st.path = abs // log lines name the file fully
	}
	if err := q.open(); err != nil {
		return nil, err
	}
	return q, nil
}

func (q *queue) close() error { return q.db.Close() }

// enqueue commits one update and returns its row id.
func (q *queue) enqueue(taskID string, payload []byte) (int64, error) {
	id, err := q.insert(taskID, payload)
	if err != nil {
		return 0, fmt.Errorf("queueing task update: %w", err)
	}
	q.mu.Lock()
	q.size++
	q.last = id
	q.st.compacted = false
	q.notifyLocked()
	q.mu.Unlock()
	return id, nil
}

func (q *queue) insert(taskID string, payload []byte) (int64, error) {
	q.st.dbMu.RLock()
	defer q.st.dbMu.RUnlock()
	res, err := q.db.Exec(`INSERT INTO task_updates (task_id, payload) VALUES (?, ?)`, taskID, payload)
	if err != nil {
		return 0, err
	}
	return res.LastInsertId()
}

// len is the number of undelivered updates.
func (q *queue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.size
}

// lastID is the id of the newest update ever enqueued.
func (q *queue) lastID() int64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.last
}

func (q *queue) notifyLocked() {
	close(q.changed)
	q.changed = make(chan struct{})
}

// waitDelivered returns once every update up to id has left the queue.
func (q *queue) waitDelivered(ctx context.Context, id int64) error {
	for {
		q.mu.Lock()
		done := q.size == 0 || (q.head != 0 && q.head > id)
		changed := q.changed
		q.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// queuedUpdate is one row of the queue.
type queuedUpdate struct {
	id      int64
	taskID  string
	payload []byte
}

// peek returns the oldest row, or nil when the queue is empty. A row that
// cannot be read is set aside (the file is rebuilt without it), so that the
// rows behind it are delivered. Called with sendMu held.
func (q *queue) peek() (*queuedUpdate, error) {
	q.watchFile()
	rebuilt := false
	for {
		u, err := q.readHead()
		switch {
		case err == nil && u == nil:
			q.compactOnce()
			return nil, nil
		case err == nil:
			// Not checked as JSON here (that pass over every payload cost
			// 0.9 CPU-s per million lines): garbage from a damaged page that
			// SQLite did not notice is refused 400 by the Manager and set aside.
			q.mu.Lock()
			q.head = u.id
			q.mu.Unlock()
			return u, nil
		}
		if !isDamaged(err) || rebuilt {
			return nil, fmt.Errorf("reading task update queue: %w", err)
		}
		if err := q.rebuild("a row cannot be read: "+err.Error(), "corrupt"); err != nil {
			return nil, fmt.Errorf("reading task update queue: %w", err)
		}
		rebuilt = true
	}
}

// remove deletes a delivered row. Inserts wait for the disk
// (synchronous=FULL); a delete does not need to: if a power cut loses it,
// the update is sent again, which at-least-once delivery allows anyway.
// This halves the fsyncs of a chatty task.
func (q *queue) remove(id int64) error {
	ctx := context.Background()
	conn, err := q.db.Conn(ctx) // the only connection: no insert can slip in between
	if err != nil {
		return fmt.Errorf("removing delivered task update: %w", err)
	}
	defer conn.Close()
	_, err = conn.ExecContext(ctx, `PRAGMA synchronous=NORMAL`)
	if err == nil {
		_, err = conn.ExecContext(ctx, `DELETE FROM task_updates WHERE id = ?`, id)
	}
	if _, perr := conn.ExecContext(ctx, `PRAGMA synchronous=FULL`); err == nil {
		err = perr
	}
	if err != nil {
		return fmt.Errorf("removing delivered task update: %w", err)
	}
	q.mu.Lock()
	q.size--
	q.head = id + 1
	q.notifyLocked()
	q.mu.Unlock()
	return nil
}

// deliverer sends queued updates to the Manager and tells the rest of the
// worker when the Manager refuses one for good.
type deliverer struct {
	send     func(ctx context.Context, taskID string, payload []byte) (*response, error)
	rejected func(taskID string, status int) // the Manager will never take updates for this task
	stopped  func(taskID string) bool        // the Manager told us to stop this task: send no status
}

// outcome of one delivery attempt.
type outcome int

const (
	delivered  outcome = iota // progress (accepted, refused for good, set aside, or to be sent in smaller parts): go on at once
	retryLater                // network error, timeout, 5xx, a refusal still counted, a failed write: try again after a backoff
)

// maxRefusals is how many times a row may be refused with an answer that
// is neither a success nor retryable (e.g. a WAF's 403 for that one
// update) before it is set aside, so that the rows after it flow.
const maxRefusals = 5

// minCutBytes is the shortest a log line or an activity is cut to when the
// Manager refuses even a one-line update as too large.
const minCutBytes = 256

// headState is what the sender knows of the head row beyond the table.
type headState struct {
	id int64
	// pending is a write that must reach the table before anything more
	// is sent: the head was delivered but its delete failed (rest nil), or
	// a part of it was delivered and the row must become the rest. It is
	// retried with the forwarder's backoff; the row is never sent again.
	pending   bool
	rest      []byte
	lines     int // after a 413: at most this many log lines per request; 0 = all
	lineBytes int // after a 413 on one line: lines cut to this many bytes; 0 = whole
	refusals  int // non-retryable refusals of this row so far

	// Once the row goes in parts: the row decoded (fields, and the log
	// lines not yet delivered), and the shape of the last part sent.
	doc         map[string]json.RawMessage
	logLines    []string
	partLines   int
	partLongest int
}

// deliverOne sends the oldest row, if any, under sendCtx. It reports
// whether the queue was empty and what became of the row.
func (q *queue) deliverOne(sendCtx context.Context, d deliverer) (empty bool, _ outcome, _ error) {
	q.sendMu.Lock()
	defer q.sendMu.Unlock()
	if q.hs.pending {
		if err := q.applyPending(); err != nil {
			q.reclaim()
			return false, retryLater, err
		}
	}
	u, err := q.peek()
	if err != nil || u == nil {
		return u == nil && err == nil, retryLater, err
	}
	if q.hs.id != u.id {
		q.hs = headState{id: u.id}
	}
	stopped := d.stopped != nil && d.stopped(u.taskID)
	part, rest := u.payload, []byte(nil)
	if q.hs.doc != nil {
		if stopped {
			delete(q.hs.doc, "task_status")
		}
		part, rest, q.hs.partLines, q.hs.partLongest = splitParts(q.hs.doc, q.hs.logLines, q.hs.lines, q.hs.lineBytes)
	} else if stopped {
		part = withoutStatus(part)
	}
	resp, err := d.send(sendCtx, u.taskID, part)
	if err != nil {
		return false, retryLater, fmt.Errorf("sending task update: %w", err)
	}
	switch {
	case resp.ok():
		if rest != nil { // a part went out: the row becomes the rest
			q.hs.logLines = q.hs.logLines[q.hs.partLines:]
			q.hs.pending, q.hs.rest = true, rest
			return q.settle()
		}
	case resp.status == http.StatusRequestEntityTooLarge:
		if q.shrink(u, part, stopped) {
			return false, delivered, nil // at once, in smaller parts
		}
		return q.refused(u, resp)
	case resp.status == http.StatusBadRequest || resp.status == http.StatusUnprocessableEntity:
		// The update itself is malformed (e.g. read from a damaged page):
		// kept aside for inspection, and the queue moves on.
		if err := q.setAside(u.id, "refused as malformed: "+resp.String()); err != nil {
			return false, retryLater, fmt.Errorf("setting a refused task update aside: %w", err)
		}
		q.hs = headState{}
		return false, delivered, nil
	case resp.status == http.StatusNotFound || resp.status == http.StatusConflict:
		q.logger.Error("Manager refused a task update for good, discarding it", "task_id", u.taskID, "response", resp.String())
		if d.rejected != nil {
			d.rejected(u.taskID, resp.status)
		}
	case retryable(resp.status):
		return false, retryLater, fmt.Errorf("the Manager did not accept a task update: %s", resp)
	default:
		return q.refused(u, resp)
	}
	q.hs.pending, q.hs.rest = true, nil
	return q.settle()
}

// settle writes the pending change of a row just delivered; if the
// database refuses (a full disk), the row stays pending, is not sent
// again, and the write is retried after a backoff.
func (q *queue) settle() (bool, outcome, error) {
	if err := q.applyPending(); err != nil {
		q.reclaim()
		return false, retryLater, err
	}
	return false, delivered, nil
}

// retryable reports whether an answer to an update may change by itself:
// a 5xx, a redirect from a proxy, 401 (the Manager forgot us, and signing
// on again did not help yet), 408, 425, 429.
func retryable(status int) bool {
	switch status {
	case http.StatusUnauthorized, http.StatusRequestTimeout, http.StatusTooEarly, http.StatusTooManyRequests:
		return true
	}
	return status < 400 || status >= 500
}

// refused counts a non-retryable refusal of the head row (a 403 from a
// WAF, a 405, a 413 that no split helps) and sets the row aside after
// maxRefusals, so that it no longer holds up the queue.
func (q *queue) refused(u *queuedUpdate, resp *response) (bool, outcome, error) {
	q.hs.refusals++
	if q.hs.refusals < maxRefusals {
		return false, retryLater, fmt.Errorf("the Manager refused a task update (attempt %d of %d): %s", q.hs.refusals, maxRefusals, resp)
	}
	reason := fmt.Sprintf("refused %d times: %s", q.hs.refusals, resp)
	if err := q.setAside(u.id, reason); err != nil {
		return false, retryLater, fmt.Errorf("setting a refused task update aside: %w", err)
	}
	q.hs = headState{}
	return false, delivered, nil
}

// shrink makes the next request for the head row smaller after a 413:
// half as many log lines, down to one; then the longest line (or the
// activity) cut in half, down to minCutBytes. It reports false when
// nothing is left to make smaller.
func (q *queue) shrink(u *queuedUpdate, part []byte, stopped bool) bool {
	if q.hs.doc == nil { // the whole row was refused: decode it, once
		doc, lines, ok := decodeUpdate(u.payload)
		if !ok {
			return false
		}
		if stopped {
			delete(doc, "task_status")
		}
		q.hs.doc, q.hs.logLines = doc, lines
		q.hs.partLines, q.hs.partLongest = len(lines), len(doc["activity"])
		for _, l := range lines {
			q.hs.partLongest = max(q.hs.partLongest, len(l))
		}
	}
	lines, longest := q.hs.partLines, q.hs.partLongest
	q.logger.Warn("the Manager refused a task update as too large, sending it in smaller parts", "task_id", u.taskID, "bytes", len(part), "log_lines", lines)
	switch {
	case lines > 1:
		q.hs.lines = lines / 2
		return true
	case longest > minCutBytes:
		next := max(longest/2, minCutBytes)
		if q.hs.lineBytes != 0 && next >= q.hs.lineBytes {
			return false
		}
		q.hs.lines, q.hs.lineBytes = max(lines, 1), next
		return true
	}
	return false
}

// applyPending writes the head row's pending change: its delete, or its
// rewrite to the rest once a part of it was delivered (one UPDATE, so a
// crash re-sends at most that part).
func (q *queue) applyPending() error {
	if q.hs.rest == nil {
		if err := q.remove(q.hs.id); err != nil {
			return err
		}
		q.hs = headState{}
		return nil
	}
	if _, err := q.db.Exec(`UPDATE task_updates SET payload = ? WHERE id = ?`, q.hs.rest, q.hs.id); err != nil {
		return fmt.Errorf("storing the rest of a task update sent in parts: %w", err)
	}
	q.hs.pending, q.hs.rest = false, nil
	return nil
}

// errStopping ends a pass that the forwarder could not finish because it
// was told to stop.
var errStopping = errors.New("the update forwarder is stopping")

// forward delivers rows as they come until stop is closed. While it runs
// it is the only goroutine that sends: flush asks it for a pass. Sends run
// under sendCtx, which only the hard shutdown deadline cancels: closing
// stop never cuts a send in flight (the Manager may already have taken
// it, and the update would go out twice), the forwarder stops between
// sends. Failures back off exponentially with jitter, up to maxBackoff;
// nothing is dropped for being old.
func (q *queue) forward(stop <-chan struct{}, sendCtx context.Context, d deliverer) {
	passes := make(chan chan error)
	done := make(chan struct{})
	q.mu.Lock()
	q.passes, q.fwdDone = passes, done
	q.mu.Unlock()
	defer close(done)
	backoff := time.Duration(0)
	var retry <-chan time.Time // set while backing off
	sendCtx = q.live.in(sendCtx, "forward")
	for {
		q.live.beat("forward")
		q.mu.Lock()
		changed := q.changed
		q.mu.Unlock()
		if retry == nil {
			empty, result, err := q.deliverOne(sendCtx, d)
			switch {
			case empty:
				backoff = 0
				q.live.waiting("forward", forever)
			case result == retryLater:
				if sendCtx.Err() != nil {
					return
				}
				backoff = nextBackoff(backoff, q.retry.min, q.retry.max)
				q.logger.Warn("cannot deliver task updates, will retry", "err", err, "queued", q.len(), "retry_in", backoff.Round(time.Millisecond))
				q.live.waiting("forward", backoff)
				retry = time.After(backoff)
			default:
				backoff = 0
				select {
				case <-stop:
					return
				default:
					continue
				}
			}
		}
		if retry != nil {
			changed = nil // a new row does not cut a backoff short
		}
		select {
		case <-stop:
			return
		case reply := <-passes:
			err := q.pass(stop, sendCtx, d)
			reply <- err
			if err == nil {
				backoff, retry = 0, nil
			}
		case <-retry:
			retry = nil
		case <-changed:
		}
	}
}

// nextBackoff doubles the previous delay (starting at least) up to limit,
// with ±10 % jitter so that a farm of workers does not retry in step.
func nextBackoff(prev, least, limit time.Duration) time.Duration {
	next := min(max(2*prev, least), limit)
	jitter := time.Duration(rand.Int64N(int64(next)/5+1)) - next/10
	return next + jitter
}

// pass delivers rows without backoff until the queue is empty or a
// delivery fails, stopping between sends if stop is closed.
func (q *queue) pass(stop <-chan struct{}, sendCtx context.Context, d deliverer) error {
	for {
		select {
		case <-stop:
			return fmt.Errorf("%d task updates still queued: %w", q.len(), errStopping)
		default:
		}
		if sendCtx.Err() != nil {
			return fmt.Errorf("%d task updates still queued: %w", q.len(), sendCtx.Err())
		}
		empty, result, err := q.deliverOne(sendCtx, d)
		if empty {
			return nil
		}
		if result == retryLater {
			return fmt.Errorf("%d task updates still queued: %w", q.len(), err)
		}
	}
}

// flush makes one pass over the queue without backoff, stopping at the
// first failure: used before returning a task and at shutdown. While the
// forwarder runs, the pass is the forwarder's, so that one sender owns the
// queue head; ctx then only bounds the wait, never a send in flight.
// Without a forwarder, flush sends itself, under ctx.
func (q *queue) flush(ctx context.Context, d deliverer) error {
	q.mu.Lock()
	passes, done := q.passes, q.fwdDone
	q.mu.Unlock()
	if passes != nil {
		reply := make(chan error, 1)
		select {
		case passes <- reply:
			select {
			case err := <-reply:
				return err
			case <-ctx.Done():
				return fmt.Errorf("%d task updates still queued: %w", q.len(), ctx.Err())
			}
		case <-done: // stopped: send ourselves
		case <-ctx.Done():
			return fmt.Errorf("%d task updates still queued: %w", q.len(), ctx.Err())
		}
	}
	return q.pass(nil, ctx, d)
}

// commit moves updates from the reporters into the queue, in order. If the
// database refuses an update (disk full), it retries while the worker runs
// and gives up only once the worker is stopping. It ends when in is closed.
func (q *queue) commit(ctx context.Context, in <-chan outgoing) {
	for o := range in {
		if o.done != nil {
			close(o.done)
			continue
		}
		for {
			_, err := q.enqueue(o.taskID, o.payload)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				q.logger.Error("task update lost: cannot store it while shutting down", "task_id", o.taskID, "err", err)
				break
			}
			q.logger.Error("cannot store a task update, retrying", "task_id", o.taskID, "err", err)
			sleepCtx(ctx, time.Second)
			q.reclaim()
		}
	}
}
