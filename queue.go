package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
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
	passes  chan chan error // flush's requests for a pass, to the running forwarder
	fwdDone chan struct{}   // closed once the forwarder has stopped

	minBackoff, maxBackoff time.Duration // retry delays of the forwarder
}

// openQueue opens (creating if needed) the queue database.
func openQueue(path string, logger *slog.Logger) (*queue, error) {
	dsn := (&url.URL{Scheme: "file", Opaque: path, RawQuery: "_pragma=page_size(65536)&_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_pragma=busy_timeout(10000)&_pragma=journal_size_limit(16777216)"}).String()
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("opening queue %s: %w", path, err)
	}
	db.SetMaxOpenConns(1) // one writer; also keeps the pragmas on one connection
	q := &queue{db: db, logger: logger, changed: make(chan struct{}), minBackoff: 500 * time.Millisecond, maxBackoff: time.Minute}
	if err := q.init(); err != nil {
		db.Close()
		return nil, fmt.Errorf("opening queue %s: %w", path, err)
	}
	return q, nil
}

func (q *queue) init() error {
	if _, err := q.db.Exec(queueSchema); err != nil {
		return err
	}
	var size int
	var last sql.NullInt64
	if err := q.db.QueryRow(`SELECT count(*), max(id) FROM task_updates`).Scan(&size, &last); err != nil {
		return err
	}
	if size == 0 {
		// Give back the space of rows delivered before; cheap on an empty table.
		if _, err := q.db.Exec(`VACUUM`); err != nil {
			return err
		}
	}
	q.size, q.last = size, last.Int64
	return nil
}

func (q *queue) close() error { return q.db.Close() }

// enqueue commits one update and returns its row id.
func (q *queue) enqueue(taskID string, payload []byte) (int64, error) {
	res, err := q.db.Exec(`INSERT INTO task_updates (task_id, payload) VALUES (?, ?)`, taskID, payload)
	if err != nil {
		return 0, fmt.Errorf("queueing task update: %w", err)
	}
	id, err := res.LastInsertId()
	if err != nil {
		return 0, fmt.Errorf("queueing task update: %w", err)
	}
	q.mu.Lock()
	q.size++
	q.last = id
	q.notifyLocked()
	q.mu.Unlock()
	return id, nil
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

// peek returns the oldest row, or nil when the queue is empty.
func (q *queue) peek() (*queuedUpdate, error) {
	var u queuedUpdate
	err := q.db.QueryRow(`SELECT id, task_id, payload FROM task_updates ORDER BY id LIMIT 1`).Scan(&u.id, &u.taskID, &u.payload)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading task update queue: %w", err)
	}
	q.mu.Lock()
	q.head = u.id
	q.mu.Unlock()
	return &u, nil
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
	delivered  outcome = iota // accepted, or refused for good: the row is gone
	retryLater                // network error, timeout, 5xx: try again after a backoff
)

// deliverOne sends the oldest row, if any, under sendCtx. It reports
// whether the queue was empty and what became of the row.
func (q *queue) deliverOne(sendCtx context.Context, d deliverer) (empty bool, _ outcome, _ error) {
	q.sendMu.Lock()
	defer q.sendMu.Unlock()
	u, err := q.peek()
	if err != nil || u == nil {
		return u == nil && err == nil, retryLater, err
	}
	payload := u.payload
	if d.stopped != nil && d.stopped(u.taskID) {
		payload = withoutStatus(payload)
	}
	resp, err := d.send(sendCtx, u.taskID, payload)
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
	for {
		q.mu.Lock()
		changed := q.changed
		q.mu.Unlock()
		if retry == nil {
			empty, result, err := q.deliverOne(sendCtx, d)
			switch {
			case empty:
				backoff = 0
			case result == retryLater:
				if sendCtx.Err() != nil {
					return
				}
				backoff = nextBackoff(backoff, q.minBackoff, q.maxBackoff)
				q.logger.Warn("cannot deliver task updates, will retry", "err", err, "queued", q.len(), "retry_in", backoff.Round(time.Millisecond))
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
		}
	}
}
