package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"
)

// outgoing is one update on its way to the queue. A nil payload is a
// marker: done is closed once everything sent before it is committed.
type outgoing struct {
	taskID  string
	payload []byte
	done    chan struct{}
}

// queue is the durable task-update queue: every update is committed to
// SQLite before anything else happens to it, and a forwarding goroutine
// delivers the rows to the Manager in order.
type queue struct {
	st     *store // the SQLite file (queuestore.go)
	logger *slog.Logger
	retry  backoff   // the forwarder's retry delays (update_backoff_min/max_seconds)
	live   *liveness // the forwarder's heartbeats, for the watchdog (systemd.go)

	sendMu sync.Mutex // held by the one sender of the head row, so rows go out once and in order
	hs     headState  // the head row as the sender knows it; under sendMu

	mu        sync.Mutex
	last      int64           // id of the newest row ever enqueued
	head      int64           // id of the oldest undelivered row; 0 when unknown
	compacted bool            // the file was shrunk since the queue last emptied
	changed   chan struct{}   // closed and replaced whenever a row comes or goes
	passes    chan chan error // flush's requests for a pass, to the running forwarder
	fwdDone   chan struct{}   // closed while no forwarder runs

	rebuilt func() // tests: runs between the file's rebuild and the queue's bookkeeping
}

// openQueue opens (creating if needed) the queue file, see openStore.
func openQueue(path string, logger *slog.Logger, retry backoff) (*queue, error) {
	st, err := openStore(path, logger)
	if err != nil {
		return nil, err
	}
	q := &queue{st: st, logger: logger, retry: retry, changed: make(chan struct{}), fwdDone: make(chan struct{})}
	close(q.fwdDone)
	if err := q.load(); err != nil {
		st.close()
		return nil, fmt.Errorf("opening queue %s: %w", st.path, err)
	}
	q.compactOnce()
	return q, nil
}

func (q *queue) close() error { return q.st.close() }

// start runs the committer until in is closed (committed is closed then),
// and the forwarder. stop ends the forwarder between sends and waits for
// it; only cut, the hard shutdown deadline, ends a send in flight (the
// Manager may have taken it already, and it would go out twice).
func (q *queue) start(ctx context.Context, in <-chan outgoing, d deliverer) (committed <-chan struct{}, stop, cut func()) {
	stopFwd, fwdDone, commitDone := make(chan struct{}), make(chan struct{}), make(chan struct{})
	sendCtx, cut := context.WithCancel(context.Background())
	go func() { defer close(fwdDone); q.forward(stopFwd, sendCtx, d) }() // ends when stopFwd is closed
	go func() { defer close(commitDone); q.commit(ctx, in) }()           // ends when in is closed
	return commitDone, func() { close(stopFwd); <-fwdDone }, cut
}

func (q *queue) load() error {
	_, last, err := q.st.count()
	if err == nil {
		q.reset(last)
	}
	return err
}

// reset forgets the head after the file was recounted (the store keeps the row count).
func (q *queue) reset(last int64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.last, q.head, q.compacted = max(q.last, last), 0, false
	q.notifyLocked()
}

// enqueue commits one update and returns its row id.
func (q *queue) enqueue(taskID string, payload []byte) (int64, error) {
	id, err := q.st.insert(taskID, payload)
	if err != nil {
		return 0, fmt.Errorf("queueing task update: %w", err)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	q.last, q.compacted = id, false
	q.notifyLocked()
	return id, nil
}

func (q *queue) gone(id int64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.head = max(q.head, id+1)
	q.notifyLocked()
}

// len is the number of undelivered updates, lastID the newest ever enqueued.
func (q *queue) len() int { return int(q.st.rows.Load()) }

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
		done := q.len() == 0 || (q.head != 0 && q.head > id)
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

// compactOnce shrinks the file once per emptying of the queue.
func (q *queue) compactOnce() {
	q.mu.Lock()
	due := q.len() == 0 && !q.compacted
	q.compacted = q.compacted || due
	q.mu.Unlock()
	if due {
		q.st.shrink()
	}
}

// rebuild rebuilds the file (see store.rebuild). Called with sendMu held.
func (q *queue) rebuild(why, what string) error {
	q.mu.Lock()
	head, last := q.head, q.last
	q.mu.Unlock()
	size, last, err := q.st.rebuild(why, what, head, last)
	if q.rebuilt != nil {
		q.rebuilt()
	}
	if size >= 0 {
		q.reset(last)
	}
	return err
}

// peek returns the oldest row, or nil when the queue is empty. A row that
// cannot be read is set aside (the file is rebuilt without it), so that the
// rows behind it are delivered; a file deleted or replaced is recreated
// with the rows still queued. Called with sendMu held.
func (q *queue) peek() (*queuedUpdate, error) {
	if how := q.st.moved(); how != "" {
		q.logger.Error("the task update queue file was "+how+" while the worker ran: recreating it with the updates still queued", "queue", q.st.path)
		if err := q.rebuild("the queue file was "+how, "replaced"); err != nil {
			q.logger.Error("cannot recreate the task update queue file; updates stay in the "+how+" file until the worker stops", "queue", q.st.path, "err", err)
		}
	}
	for rebuilt := false; ; rebuilt = true {
		u, err := q.st.head()
		switch {
		case err == nil && u == nil:
			q.compactOnce()
			return nil, nil
		case err == nil:
			// Not checked as JSON (that cost 0.9 CPU-s per million lines):
			// the Manager refuses garbage from a damaged page 400, and it is set aside.
			q.mu.Lock()
			q.head = u.id
			q.mu.Unlock()
			return u, nil
		case isDamaged(err) && !rebuilt:
			err = q.rebuild("a row cannot be read: "+err.Error(), "corrupt")
		}
		if err != nil {
			return nil, fmt.Errorf("reading task update queue: %w", err)
		}
	}
}

// setAside moves row id into task_updates_aside and logs it once.
func (q *queue) setAside(id int64, reason string) error {
	taskID, err := q.st.setAside(id, reason)
	if err != nil {
		return fmt.Errorf("setting a task update aside: %w", err)
	}
	q.logger.Error("task update set aside: it will not be delivered; it is kept in table task_updates_aside",
		"task_id", taskID, "reason", reason, "row", id, "queue", q.st.path)
	q.gone(id)
	return nil
}

// deliverer sends queued updates to the Manager and tells the rest of the
// worker when it refuses one for good.
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

const (
	maxRefusals = 5   // refusals neither retryable nor final (a WAF's 403) before a row is set aside, so that the rows after it flow
	minCutBytes = 256 // the shortest a log line or activity is cut to when even one line is too large
)

// headState is what the sender knows of the head row beyond the table.
type headState struct {
	id int64
	// pending is a write that must reach the table before anything more is
	// sent: the delete of the delivered head (rest nil), or its rewrite to
	// rest once a part of it was delivered. Retried with the forwarder's
	// backoff; the row is never sent again.
	pending  bool
	rest     []byte
	refusals int // non-retryable refusals of this row so far
	// After a 413: at most lines log lines per request (0: the row goes
	// whole), each cut to lineBytes (0: whole); and the last part's shape.
	lines, lineBytes       int
	partLines, partLongest int
}

// deliverOne sends the oldest row, if any, under sendCtx. It reports
// whether the queue was empty and what became of the row.
func (q *queue) deliverOne(sendCtx context.Context, d deliverer) (empty bool, _ outcome, _ error) {
	q.sendMu.Lock()
	defer q.sendMu.Unlock()
	if q.hs.pending {
		if result, err := q.settle(); err != nil {
			return false, result, err
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
	if q.hs.lines > 0 || stopped { // in parts, or without a status that would claim a task no longer ours
		if doc, lines, ok := decodeUpdate(u.payload); ok {
			if stopped {
				delete(doc, "task_status")
			}
			part, rest, q.hs.partLines, q.hs.partLongest = splitParts(doc, lines, q.hs.lines, q.hs.lineBytes)
		}
	}
	resp, err := d.send(sendCtx, u.taskID, part)
	if err != nil {
		return false, retryLater, fmt.Errorf("sending task update: %w", err)
	}
	result, err := q.answered(u, resp, d, part, rest)
	return false, result, err
}

// answered acts on the Manager's answer to the head row, or to its part
// (rest: the row after it).
func (q *queue) answered(u *queuedUpdate, resp *response, d deliverer, part, rest []byte) (outcome, error) {
	switch s := resp.status; {
	case resp.ok() && rest != nil: // a part went out: the row becomes the rest
		q.hs.pending, q.hs.rest = true, rest
		return q.settle()
	case resp.ok():
	case s == http.StatusRequestEntityTooLarge && q.shrink(u, part):
		return delivered, nil // at once, in smaller parts
	case s == http.StatusBadRequest || s == http.StatusUnprocessableEntity:
		return q.setHeadAside("refused as malformed: " + resp.String()) // e.g. read from a damaged page
	case s == http.StatusNotFound || s == http.StatusConflict:
		q.logger.Error("Manager refused a task update for good, discarding it", "task_id", u.taskID, "response", resp.String())
		if d.rejected != nil {
			d.rejected(u.taskID, s)
		}
	case retryable(s):
		return retryLater, fmt.Errorf("the Manager did not accept a task update: %s", resp)
	default: // a 403 from a WAF, a 405, a 413 that no split helps
		if q.hs.refusals++; q.hs.refusals < maxRefusals {
			return retryLater, fmt.Errorf("the Manager refused a task update (attempt %d of %d): %s", q.hs.refusals, maxRefusals, resp)
		}
		return q.setHeadAside(fmt.Sprintf("refused %d times: %s", q.hs.refusals, resp))
	}
	q.hs.pending, q.hs.rest = true, nil
	return q.settle()
}

func (q *queue) setHeadAside(reason string) (outcome, error) {
	if err := q.setAside(q.hs.id, reason); err != nil {
		return retryLater, fmt.Errorf("setting a refused task update aside: %w", err)
	}
	q.hs = headState{}
	return delivered, nil
}

// settle writes the head row's pending change: its delete, or its rewrite
// to the rest (one UPDATE, so a crash re-sends at most the part). If the
// database refuses (a full disk), the row stays pending and is not sent
// again; the write is retried after a backoff.
func (q *queue) settle() (outcome, error) {
	var err error
	if q.hs.rest == nil {
		if err = q.st.remove(q.hs.id); err == nil {
			q.gone(q.hs.id)
			q.hs = headState{}
		} else {
			err = fmt.Errorf("removing delivered task update: %w", err)
		}
	} else if err = q.st.rewrite(q.hs.id, q.hs.rest); err == nil {
		q.hs.pending, q.hs.rest = false, nil
	} else {
		err = fmt.Errorf("storing the rest of a task update sent in parts: %w", err)
	}
	if err != nil {
		q.st.reclaim()
		return retryLater, err
	}
	return delivered, nil
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

// shrink makes the next request for the head row smaller after a 413:
// half as many log lines, down to one; then the longest line (or the
// activity) cut in half, down to minCutBytes. It reports false when
// nothing is left to make smaller.
func (q *queue) shrink(u *queuedUpdate, part []byte) bool {
	if q.hs.lines == 0 { // the whole row was refused: measure it
		doc, lines, ok := decodeUpdate(part)
		if !ok {
			return false
		}
		_, _, q.hs.partLines, q.hs.partLongest = splitParts(doc, lines, 0, 0)
	}
	lines, longest := q.hs.partLines, q.hs.partLongest
	q.logger.Warn("the Manager refused a task update as too large, sending it in smaller parts", "task_id", u.taskID, "bytes", len(part), "log_lines", lines)
	switch next := max(longest/2, minCutBytes); {
	case lines > 1:
		q.hs.lines = lines / 2
	case longest > minCutBytes && (q.hs.lineBytes == 0 || next < q.hs.lineBytes):
		q.hs.lines, q.hs.lineBytes = max(lines, 1), next
	default:
		return false
	}
	return true
}

// decodeUpdate splits a queued update into its log lines and its other
// fields, so that it can be sent in parts.
func decodeUpdate(payload []byte) (doc map[string]json.RawMessage, lines []string, ok bool) {
	if json.Unmarshal(payload, &doc) != nil || doc == nil {
		return nil, nil, false
	}
	var text string
	json.Unmarshal(doc["log"], &text)
	if text != "" {
		lines = strings.Split(text, "\n")
	}
	delete(doc, "log")
	return doc, lines, true
}

// splitParts is the next part of an update refused as too large: at most
// maxLines of its log lines (0: all), each, like the activity, cut to
// lineBytes (0: whole). Activity, progress, status and metrics go with the
// last part only, so that they arrive once every line before them has;
// rest is the update after the part, nil when part is the last one. n is
// the number of lines in part, longest its longest line (or activity) as
// sent.
func splitParts(doc map[string]json.RawMessage, lines []string, maxLines, lineBytes int) (part, rest []byte, n, longest int) {
	if n = len(lines); maxLines > 0 {
		n = min(n, maxLines)
	}
	if n < len(lines) {
		part, longest = encodeUpdate(nil, lines[:n], lineBytes)
		rest, _ = encodeUpdate(doc, lines[n:], 0)
		return part, rest, n, longest
	}
	if raw, ok := doc["activity"]; ok && lineBytes > 0 {
		var act string
		json.Unmarshal(raw, &act)
		doc = maps.Clone(doc)
		doc["activity"], _ = json.Marshal(cutText(act, lineBytes))
	}
	part, longest = encodeUpdate(doc, lines, lineBytes)
	if raw, ok := doc["activity"]; ok {
		longest = max(longest, len(raw)-2)
	}
	return part, nil, n, longest
}

// encodeUpdate is the JSON object of doc's fields plus lines (each cut to
// lineBytes unless 0) as its log, and the longest line as cut. (The fast
// appendJSONString is the reporter's: this runs only after a 413.)
func encodeUpdate(doc map[string]json.RawMessage, lines []string, lineBytes int) ([]byte, int) {
	out, longest := map[string]json.RawMessage{}, 0
	maps.Copy(out, doc)
	if len(lines) > 0 {
		cut := make([]string, len(lines))
		for i, l := range lines {
			if lineBytes > 0 {
				l = cutText(l, lineBytes)
			}
			cut[i], longest = l, max(longest, len(l))
		}
		out["log"], _ = json.Marshal(strings.Join(cut, "\n"))
	}
	b, _ := json.Marshal(out)
	return b, longest
}

// cutText cuts s, valid UTF-8, to about n bytes, with a marker saying how
// much went.
func cutText(s string, n int) string {
	c := cutAt(s, n)
	if c == s {
		return s
	}
	return fmt.Sprintf("%s… [truncated by the worker: %d bytes]", c, len(s)-len(c))
}

// errStopping ends a pass the forwarder was told to stop.
var errStopping = errors.New("the update forwarder is stopping")

// forward delivers rows as they come until stop is closed. While it runs
// it is the only goroutine that sends: flush asks it for a pass. Sends run
// under sendCtx, which closing stop never cuts (see start): the forwarder
// stops between sends. Failures back off exponentially with jitter, up to
// q.retry.max; nothing is dropped for being old.
func (q *queue) forward(stop <-chan struct{}, sendCtx context.Context, d deliverer) {
	passes, done := make(chan chan error), make(chan struct{})
	q.mu.Lock()
	q.passes, q.fwdDone = passes, done
	q.mu.Unlock()
	defer close(done)
	wait := time.Duration(0)
	var retry <-chan time.Time // set while backing off
	sendCtx = q.live.in(sendCtx, "forward")
	for {
		q.live.beat("forward")
		q.mu.Lock()
		changed := q.changed
		q.mu.Unlock()
		if retry == nil {
			switch empty, result, err := q.deliverOne(sendCtx, d); {
			case empty:
				wait = 0
				q.live.waiting("forward", forever)
			case result == retryLater && sendCtx.Err() != nil:
				return
			case result == retryLater:
				wait = nextBackoff(wait, q.retry.min, q.retry.max)
				q.logger.Warn("cannot deliver task updates, will retry", "err", err, "queued", q.len(), "retry_in", wait.Round(time.Millisecond))
				q.live.waiting("forward", wait)
				retry = time.After(wait)
			default:
				wait = 0
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
				wait, retry = 0, nil
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
	return next + time.Duration(rand.Int64N(int64(next)/5+1)) - next/10
}

// pass delivers rows without backoff until the queue is empty or a
// delivery fails, stopping between sends if stop is closed.
func (q *queue) pass(stop <-chan struct{}, sendCtx context.Context, d deliverer) error {
	for {
		err := sendCtx.Err()
		select {
		case <-stop:
			err = errStopping
		default:
		}
		empty, result := false, retryLater
		if err == nil {
			empty, result, err = q.deliverOne(sendCtx, d)
		}
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
	reply := make(chan error, 1)
	select {
	case passes <- reply:
		select {
		case err := <-reply:
			return err
		case <-ctx.Done():
		}
	case <-done:
		return q.pass(nil, ctx, d)
	case <-ctx.Done():
	}
	return fmt.Errorf("%d task updates still queued: %w", q.len(), ctx.Err())
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
			q.st.reclaim()
		}
	}
}
