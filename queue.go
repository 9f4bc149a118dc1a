package main

import (
	"context"
	"database/sql"
	"encoding/json"
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

	sendMu sync.Mutex // one delivery at a time, so rows go out in order

	mu      sync.Mutex
	size    int           // rows in the table
	last    int64         // id of the newest row ever enqueued
	head    int64         // id of the oldest undelivered row; 0 when unknown
	changed chan struct{} // closed and replaced whenever a row comes or goes

	retry backoff // retry delays of the forwarder (update_backoff_min/max_seconds)

	st queueStore // the SQLite file itself (queuestore.go)

	live *liveness // the forwarder's heartbeats, for the watchdog (notify.go)
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
		case err == nil && json.Valid(u.payload):
			q.mu.Lock()
			q.head = u.id
			q.mu.Unlock()
			return u, nil
		case err == nil: // SQLite read garbage without noticing: a damaged page
			if err = q.setAside(u.id, "unreadable: payload is not valid JSON (a damaged page?)"); err == nil {
				continue
			}
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
}

// outcome of one delivery attempt.
type outcome int

const (
	delivered  outcome = iota // accepted, or refused for good: the row is gone
	retryLater                // network error, timeout, 5xx: try again after a backoff
)

// deliverOne sends the oldest row, if any. It reports whether the queue
// was empty and what became of the row.
func (q *queue) deliverOne(ctx context.Context, d deliverer) (empty bool, _ outcome, _ error) {
	q.sendMu.Lock()
	defer q.sendMu.Unlock()
	u, err := q.peek()
	if err != nil || u == nil {
		return u == nil && err == nil, retryLater, err
	}
	resp, err := d.send(ctx, u.taskID, u.payload)
	if err != nil {
		return false, retryLater, fmt.Errorf("sending task update: %w", err)
	}
	switch {
	case resp.ok():
	case resp.status == http.StatusBadRequest || resp.status == http.StatusNotFound ||
		resp.status == http.StatusConflict || resp.status == http.StatusUnprocessableEntity ||
		resp.status == http.StatusRequestEntityTooLarge:
		q.logger.Error("Manager refused a task update for good, discarding it", "task_id", u.taskID, "response", resp.String())
		if d.rejected != nil {
			d.rejected(u.taskID, resp.status)
		}
	default: // 5xx, 401/403 after signing on again, 3xx from a proxy, ...
		return false, retryLater, fmt.Errorf("the Manager did not accept a task update: %s", resp)
	}
	return false, delivered, q.remove(u.id)
}

// forward delivers rows as they come until ctx ends. Failures back off
// exponentially with jitter, up to maxBackoff; nothing is dropped for
// being old. It ends when ctx is done.
func (q *queue) forward(ctx context.Context, d deliverer) {
	backoff := time.Duration(0)
	ctx = q.live.in(ctx, "forward")
	for ctx.Err() == nil {
		q.live.beat("forward")
		q.mu.Lock()
		changed := q.changed
		q.mu.Unlock()
		empty, result, err := q.deliverOne(ctx, d)
		switch {
		case empty:
			backoff = 0
			q.live.waiting("forward", forever)
			select {
			case <-changed:
			case <-ctx.Done():
			}
		case result == retryLater:
			if ctx.Err() != nil {
				return
			}
			backoff = nextBackoff(backoff, q.retry.min, q.retry.max)
			q.logger.Warn("cannot deliver task updates, will retry", "err", err, "queued", q.len(), "retry_in", backoff.Round(time.Millisecond))
			q.live.waiting("forward", backoff)
			sleepCtx(ctx, backoff)
		default:
			backoff = 0
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

// flush makes one pass over the queue without backoff, stopping at the
// first failure: used before returning a task and at shutdown.
func (q *queue) flush(ctx context.Context, d deliverer) error {
	for ctx.Err() == nil {
		empty, result, err := q.deliverOne(ctx, d)
		if empty {
			return nil
		}
		if result == retryLater {
			return fmt.Errorf("%d task updates still queued: %w", q.len(), err)
		}
	}
	return ctx.Err()
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
		}
	}
}
