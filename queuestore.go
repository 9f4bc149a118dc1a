package main

import (
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"modernc.org/sqlite"
)

// The set-aside table: updates that will never be delivered (unreadable, or
// refused again and again) are moved here, for an admin to inspect, so that
// the updates behind them flow.
const asideSchema = `CREATE TABLE IF NOT EXISTS task_updates_aside (
	id           INTEGER PRIMARY KEY,
	task_id      TEXT NOT NULL,
	payload      BLOB,
	reason       TEXT NOT NULL,
	set_aside_at TEXT NOT NULL
)`

const (
	queuePageSize = 4096    // measured: 64 KiB pages cut durable enqueues from ~3,400/s to ~1,300/s (every fsync'd commit writes whole pages)
	shrinkAbove   = 1 << 20 // free pages or WAL bytes worth giving back once the queue is empty
)

// SQLite primary result codes (the low byte of an extended code).
const (
	sqliteCorrupt  = 11
	sqliteCantOpen = 14
	sqliteNotADB   = 26
)

// queueStore is what the queue knows about its SQLite file. The database
// handle is replaced only while both sendMu and dbMu are held, so the
// forwarder's own uses of q.db (under sendMu) need no more locking.
type queueStore struct {
	path      string
	dbMu      sync.RWMutex // shared by enqueue, peek and setAside; exclusive while q.db is replaced
	file      os.FileInfo  // the file q.db has open, to notice it being deleted or replaced
	retryAt   time.Time    // after a failed rebuild, when to try again
	compacted bool         // under q.mu: the file was shrunk since the queue last emptied
}

// queueDSN opens path with queuePageSize pages and the given journal mode.
// The driver runs the _pragma entries before _journal_mode, and the page
// size must be set before WAL (or the first table) fixes it. The WAL is
// checkpointed every 1000 pages (4 MiB).
func queueDSN(path, journal string) string {
	return (&url.URL{Scheme: "file", Opaque: path, RawQuery: "_pragma=busy_timeout(10000)&_pragma=page_size(4096)&_pragma=journal_size_limit(16777216)&_pragma=wal_autocheckpoint(1000)&_pragma=synchronous(FULL)&_journal_mode=" + journal}).String()
}

// reclaim gives the WAL's space back to the file system (a checkpoint that
// truncates it): after a write failed on a full disk, the frames of the
// failed transactions would otherwise keep the space that was freed since.
func (q *queue) reclaim() {
	q.st.dbMu.RLock()
	defer q.st.dbMu.RUnlock()
	q.db.Exec(`PRAGMA wal_checkpoint(TRUNCATE)`)
}

func sqliteCode(err error) int {
	var e *sqlite.Error
	if errors.As(err, &e) {
		return e.Code() & 0xff
	}
	return 0
}

// isDamaged tells whether err says the file or a page of it is corrupt.
func isDamaged(err error) bool {
	c := sqliteCode(err)
	return c == sqliteCorrupt || c == sqliteNotADB
}

// open opens (creating if needed) the database at q.st.path. A file that is
// not a database, or whose schema cannot be read, is moved aside and an
// empty queue started; a file with damaged rows is rebuilt from the rows
// that can still be read.
func (q *queue) open() error {
	path := q.st.path
	adoptRebuilt(path, q.logger)
	err := q.openDB()
	if isDamaged(err) {
		kept, merr := moveDBFiles(path, "corrupt")
		if merr != nil {
			return fmt.Errorf("opening queue %s: %w (and cannot move it aside: %v)", path, err, merr)
		}
		q.logger.Error("the task update queue file is damaged beyond reading: moved it aside and started an empty queue; the updates in it are not delivered",
			"queue", path, "moved_to", kept, "err", err)
		err = q.openDB()
	}
	if err != nil {
		return explainOpen(path, err)
	}
	if err := q.load(); isDamaged(err) {
		return q.rebuild("rows of the queue cannot be read: "+err.Error(), "corrupt")
	} else if err != nil {
		q.db.Close()
		return fmt.Errorf("opening queue %s: %w", path, err)
	}
	q.compactOnce()
	q.warnPython()
	return nil
}

// openDB opens the file and creates the tables.
func (q *queue) openDB() error {
	db, err := sql.Open("sqlite", queueDSN(q.st.path, "WAL"))
	if err != nil {
		return err
	}
	db.SetMaxOpenConns(1) // one writer; also keeps the pragmas on one connection
	for _, schema := range []string{queueSchema, asideSchema} {
		if _, err := db.Exec(schema); err != nil {
			db.Close()
			return err
		}
	}
	q.db = db
	q.st.file, _ = os.Stat(q.st.path)
	return nil
}

// load reads the queue's size. (Not compactOnce: rebuild calls it with
// dbMu held.)
func (q *queue) load() error {
	var size int
	var last sql.NullInt64
	if err := q.db.QueryRow(`SELECT count(*), max(id) FROM task_updates`).Scan(&size, &last); err != nil {
		return err
	}
	q.mu.Lock()
	q.size, q.last, q.head = size, max(q.last, last.Int64), 0
	q.st.compacted = false
	q.notifyLocked()
	q.mu.Unlock()
	return nil
}

// warnPython says once that the Python worker's queue, in the same file,
// is not sent: its rows are pickles this worker cannot read.
func (q *queue) warnPython() {
	var n int
	if err := q.db.QueryRow(`SELECT count(*) FROM fworker_queue`).Scan(&n); err != nil || n == 0 {
		return // no such table, or nothing left in it
	}
	q.logger.Warn("the queue file holds task updates the Python worker never sent (table fworker_queue); they are not replayed",
		"queue", q.st.path, "count", n)
}

// compactOnce gives the space of delivered rows back once per emptying of
// the queue, and applies queuePageSize to an empty file made with another
// pages. On an empty queue this is cheap.
func (q *queue) compactOnce() {
	q.mu.Lock()
	due := q.size == 0 && !q.st.compacted
	q.st.compacted = q.st.compacted || due
	q.mu.Unlock()
	if !due {
		return
	}
	q.st.dbMu.RLock()
	defer q.st.dbMu.RUnlock()
	if err := q.compact(); err != nil {
		q.logger.Warn("cannot shrink the empty task update queue file", "queue", q.st.path, "err", err)
	}
}

func (q *queue) compact() error {
	var pageSize, free int64
	if err := q.db.QueryRow(`PRAGMA page_size`).Scan(&pageSize); err != nil {
		return err
	}
	if err := q.db.QueryRow(`PRAGMA freelist_count`).Scan(&free); err != nil {
		return err
	}
	var steps []string
	switch {
	case pageSize != queuePageSize: // a WAL file's page size is fixed: leave WAL for the VACUUM
		steps = []string{`PRAGMA journal_mode=DELETE`, fmt.Sprintf(`PRAGMA page_size=%d`, queuePageSize), `VACUUM`, `PRAGMA journal_mode=WAL`}
	case free*pageSize >= shrinkAbove:
		steps = []string{`VACUUM`, `PRAGMA wal_checkpoint(TRUNCATE)`}
	case fileSize(q.st.path+"-wal") >= shrinkAbove:
		steps = []string{`PRAGMA wal_checkpoint(TRUNCATE)`}
	}
	for _, s := range steps {
		if _, err := q.db.Exec(s); err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
	}
	return nil
}

func fileSize(path string) int64 {
	info, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return info.Size()
}

// readHead reads the oldest row.
func (q *queue) readHead() (*queuedUpdate, error) {
	q.st.dbMu.RLock()
	defer q.st.dbMu.RUnlock()
	var u queuedUpdate
	err := q.db.QueryRow(`SELECT id, task_id, payload FROM task_updates ORDER BY id LIMIT 1`).Scan(&u.id, &u.taskID, &u.payload)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	return &u, err
}

// setAside moves row id of task_updates into task_updates_aside, in one
// transaction, and logs it once.
func (q *queue) setAside(id int64, reason string) error {
	q.st.dbMu.RLock()
	taskID, err := q.moveAside(id, reason)
	q.st.dbMu.RUnlock()
	if err != nil {
		return fmt.Errorf("setting a task update aside: %w", err)
	}
	q.logger.Error("task update set aside: it will not be delivered; it is kept in table task_updates_aside",
		"task_id", taskID, "reason", reason, "row", id, "queue", q.st.path)
	q.mu.Lock()
	q.size--
	q.head = max(q.head, id+1)
	q.notifyLocked()
	q.mu.Unlock()
	return nil
}

func (q *queue) moveAside(id int64, reason string) (taskID string, _ error) {
	tx, err := q.db.Begin()
	if err != nil {
		return "", err
	}
	defer tx.Rollback()
	if err := tx.QueryRow(`SELECT task_id FROM task_updates WHERE id = ?`, id).Scan(&taskID); err != nil {
		return "", fmt.Errorf("row %d: %w", id, err)
	}
	if _, err := tx.Exec(`INSERT OR REPLACE INTO task_updates_aside (id, task_id, payload, reason, set_aside_at)
		SELECT id, task_id, payload, ?, ? FROM task_updates WHERE id = ?`, reason, asideTime(), id); err != nil {
		return taskID, err
	}
	if _, err := tx.Exec(`DELETE FROM task_updates WHERE id = ?`, id); err != nil {
		return taskID, err
	}
	return taskID, tx.Commit()
}

func asideTime() string { return time.Now().UTC().Format(time.RFC3339) }

// fileMoved tells whether the queue file was deleted or replaced since it
// was opened: SQLite keeps writing to the unlinked file, so every later
// update would be lost at the next start.
func (q *queue) fileMoved() (how string, moved bool) {
	info, err := os.Stat(q.st.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "deleted", true
	case err != nil || q.st.file == nil:
		return "", false
	case !os.SameFile(info, q.st.file):
		return "replaced", true
	}
	return "", false
}

// watchFile recreates the queue file when it was deleted or replaced,
// carrying the queued rows over. Called with sendMu held.
func (q *queue) watchFile() {
	how, moved := q.fileMoved()
	if !moved || time.Now().Before(q.st.retryAt) {
		return
	}
	q.logger.Error("the task update queue file was "+how+" while the worker ran: recreating it with the updates still queued", "queue", q.st.path)
	if err := q.rebuild("the queue file was "+how, "replaced"); err != nil {
		q.st.retryAt = time.Now().Add(time.Minute)
		q.logger.Error("cannot recreate the task update queue file; updates stay in the "+how+" file until the worker stops", "queue", q.st.path, "err", err)
	}
}

// moveDBFiles renames a database file (and its WAL) to
// <path>.<what>-<time> and returns the new name.
func moveDBFiles(path, what string) (string, error) {
	to := fmt.Sprintf("%s.%s-%s", path, what, time.Now().UTC().Format("20060102T150405.000Z"))
	if err := os.Rename(path, to); err != nil {
		return "", err
	}
	for _, ext := range []string{"-wal", "-journal"} {
		if err := os.Rename(path+ext, to+ext); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return to, err
		}
	}
	os.Remove(path + "-shm")
	return to, nil
}

// explainOpen turns SQLite's "unable to open database file" into which file
// could not be opened and why.
func explainOpen(path string, err error) error {
	if abs, aerr := filepath.Abs(path); aerr == nil {
		path = abs
	}
	if sqliteCode(err) != sqliteCantOpen {
		return fmt.Errorf("opening the task update queue %s: %w", path, err)
	}
	dir := filepath.Dir(path)
	if _, serr := os.Stat(path); errors.Is(serr, fs.ErrNotExist) {
		if werr := dirWritable(dir); werr != nil {
			return fmt.Errorf("cannot create the task update queue %s: %w", path, werr)
		}
	} else if f, oerr := os.OpenFile(path, os.O_RDWR, 0); oerr != nil {
		return fmt.Errorf("cannot open the task update queue %s for writing (%v)", path, errnoText(oerr))
	} else {
		f.Close()
		if werr := dirWritable(dir); werr != nil {
			return fmt.Errorf("cannot open the task update queue %s: SQLite creates %s-wal next to it, but %w", path, filepath.Base(path), werr)
		}
	}
	return fmt.Errorf("cannot open the task update queue %s: %w", path, err)
}

// dirWritable tries to create a file in dir, as SQLite will.
func dirWritable(dir string) error {
	if _, err := os.Stat(dir); err != nil {
		return fmt.Errorf("directory %s: %v", dir, errnoText(err))
	}
	f, err := os.CreateTemp(dir, ".flamenco-worker-probe-*")
	if err != nil {
		return fmt.Errorf("directory %s is not writable (%v)", dir, errnoText(err))
	}
	f.Close()
	os.Remove(f.Name())
	return nil
}

// errnoText is the system's reason alone ("permission denied"), without
// the path the caller already names.
func errnoText(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

// queuedRows is the range of row ids a walk covers.
func queuedRows(db *sql.DB, head, last int64) (from, to int64) {
	var lo, hi, seq sql.NullInt64
	db.QueryRow(`SELECT min(id) FROM task_updates`).Scan(&lo)
	db.QueryRow(`SELECT max(id) FROM task_updates`).Scan(&hi)
	db.QueryRow(`SELECT seq FROM sqlite_sequence WHERE name = 'task_updates'`).Scan(&seq)
	from = 1
	if lo.Valid {
		from = lo.Int64
	} else if head > 0 {
		from = head
	}
	return from, max(last, hi.Int64, seq.Int64)
}

// walkRows calls fn for every row id from..last of task_updates, in order:
// with the row when it can be read, with the error when it cannot (u then
// holds what could be read of it, or is nil). Past a damaged b-tree page,
// where even the ids cannot be listed, it probes the ids one by one, so
// fn may get an id that never existed.
func walkRows(db *sql.DB, from, last int64, fn func(id int64, u *queuedUpdate, err error) error) error {
	for next := from; next <= last; {
		var id int64
		err := db.QueryRow(`SELECT id FROM task_updates WHERE id >= ? ORDER BY id LIMIT 1`, next).Scan(&id)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			return nil
		case err == nil:
			u, rerr := readRow(db, id)
			if err := fn(id, u, rerr); err != nil {
				return err
			}
			next = id + 1
		case isDamaged(err):
			resume := resumeAfterDamage(db, next, last)
			for ; next < resume; next++ {
				u, rerr := readRow(db, next)
				if errors.Is(rerr, sql.ErrNoRows) {
					continue
				}
				if err := fn(next, u, rerr); err != nil {
					return err
				}
			}
		default:
			return err
		}
	}
	return nil
}

// resumeAfterDamage finds, galloping, an id above from where the ids can be
// listed again (or last+1).
func resumeAfterDamage(db *sql.DB, from, last int64) int64 {
	for step := int64(1); ; step *= 2 {
		p := from + step
		if p > last {
			return last + 1
		}
		var id int64
		if err := db.QueryRow(`SELECT id FROM task_updates WHERE id >= ? ORDER BY id LIMIT 1`, p).Scan(&id); !isDamaged(err) {
			return p
		}
	}
}

// readRow reads one row; when its payload is unreadable it still tries to
// read the task id.
func readRow(db *sql.DB, id int64) (*queuedUpdate, error) {
	u := &queuedUpdate{id: id}
	err := db.QueryRow(`SELECT task_id, payload FROM task_updates WHERE id = ?`, id).Scan(&u.taskID, &u.payload)
	if err == nil {
		return u, nil
	}
	if db.QueryRow(`SELECT task_id FROM task_updates WHERE id = ?`, id).Scan(&u.taskID) != nil {
		return nil, err
	}
	return u, err
}

// unreadable is a run of consecutive row ids that could not be read.
type unreadable struct {
	from, to int64
	taskID   string
	err      error
	stored   bool // its payload is in task_updates_aside already
}

func (r unreadable) String() string {
	if r.from == r.to {
		return fmt.Sprintf("row %d", r.from)
	}
	return fmt.Sprintf("rows %d to %d", r.from, r.to)
}

// rebuild replaces the queue file by a fresh one holding every row that can
// still be read from the current database; a row that cannot is recorded
// in the new file's task_updates_aside and logged once. A file still at the
// path is kept next to it as <name>.<what>-<time>. Called with sendMu held,
// or before the queue is in use.
func (q *queue) rebuild(why, what string) error {
	path := q.st.path
	tmp := path + ".rebuild"
	for _, ext := range []string{"", "-journal", "-wal", "-shm"} {
		os.Remove(tmp + ext)
	}
	q.st.dbMu.Lock()
	defer q.st.dbMu.Unlock()
	lost, err := q.copyInto(tmp)
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("rebuilding queue %s: %w", path, err)
	}
	q.db.Close()
	kept, err := swapInto(tmp, path, what)
	if err == nil {
		err = q.openDB()
	}
	if err != nil {
		if rerr := q.reopen(); rerr != nil { // whatever is at the path, so the queue stays usable
			err = fmt.Errorf("%w; reopening: %v", err, rerr)
		}
		return fmt.Errorf("rebuilding queue %s: %w", path, err)
	}
	if err := q.load(); err != nil {
		return fmt.Errorf("rebuilding queue %s: %w", path, err)
	}
	for _, r := range lost {
		q.logger.Error("task update unreadable (damaged page of the queue file): set aside, it will not be delivered",
			"rows", r.String(), "task_id", r.taskID, "err", r.err, "queue", path, "damaged_file", kept)
	}
	q.logger.Warn("task update queue rebuilt", "reason", why, "queue", path, "queued", q.len(), "unreadable", len(lost), "old_file", kept)
	return nil
}

// reopen opens the queue again after a failed rebuild: the file at the
// path, else the rebuilt copy if the old file was moved already.
func (q *queue) reopen() error {
	adoptRebuilt(q.st.path, q.logger)
	if err := q.openDB(); err != nil {
		return err
	}
	return q.load()
}

// adoptRebuilt puts a rebuilt copy left by an interrupted rebuild at the
// path, when nothing else is there: it holds the rows carried over.
func adoptRebuilt(path string, logger *slog.Logger) {
	tmp := path + ".rebuild"
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		return
	}
	if _, err := os.Stat(tmp); err != nil {
		return
	}
	os.Rename(tmp+"-journal", path+"-journal") // an unfinished copy is rolled back at open
	if err := os.Rename(tmp, path); err == nil {
		logger.Warn("task update queue: using the copy an interrupted rebuild left", "queue", path, "copy", tmp)
	}
}

// swapInto puts the file tmp at path, moving a file already there aside.
func swapInto(tmp, path, what string) (kept string, err error) {
	if _, err := os.Stat(path); err == nil {
		if kept, err = moveDBFiles(path, what); err != nil {
			return "", fmt.Errorf("moving the old file aside: %w", err)
		}
	} else {
		os.Remove(path + "-wal") // left by whoever deleted the file; our copy is in tmp
		os.Remove(path + "-shm")
	}
	return kept, os.Rename(tmp, path)
}

// copyInto writes a fresh queue database at tmp from the rows of q.db.
func (q *queue) copyInto(tmp string) ([]unreadable, error) {
	dst, err := sql.Open("sqlite", queueDSN(tmp, "DELETE"))
	if err != nil {
		return nil, err
	}
	defer dst.Close()
	dst.SetMaxOpenConns(1)
	for _, schema := range []string{queueSchema, asideSchema} {
		if _, err := dst.Exec(schema); err != nil {
			return nil, err
		}
	}
	tx, err := dst.Begin()
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	q.mu.Lock()
	head, last := q.head, q.last
	q.mu.Unlock()
	from, last := queuedRows(q.db, head, last)
	lost, err := copyRows(q.db, tx, from, last)
	if err != nil {
		return nil, err
	}
	copyAside(q.db, tx)
	if _, err := tx.Exec(`INSERT OR REPLACE INTO sqlite_sequence (rowid, name, seq)
		VALUES ((SELECT rowid FROM sqlite_sequence WHERE name = 'task_updates'), 'task_updates', ?)`, last); err != nil {
		return nil, err
	}
	if err := tx.Commit(); err != nil {
		return nil, err
	}
	return lost, dst.Close()
}

// copyRows copies the readable rows into tx and records the others in its
// set-aside table.
func copyRows(src *sql.DB, tx *sql.Tx, from, last int64) ([]unreadable, error) {
	var lost []unreadable
	aside := func(id int64, taskID string, payload []byte, reason string) error {
		_, err := tx.Exec(`INSERT OR REPLACE INTO task_updates_aside (id, task_id, payload, reason, set_aside_at) VALUES (?, ?, ?, ?, ?)`,
			id, taskID, payload, reason, asideTime())
		return err
	}
	err := walkRows(src, from, last, func(id int64, u *queuedUpdate, rerr error) error {
		switch {
		case rerr == nil && json.Valid(u.payload):
			_, err := tx.Exec(`INSERT INTO task_updates (id, task_id, payload) VALUES (?, ?, ?)`, id, u.taskID, u.payload)
			return err
		case rerr == nil:
			lost = append(lost, unreadable{id, id, u.taskID, errors.New("payload is not valid JSON"), true})
			return aside(id, u.taskID, u.payload, "unreadable: payload is not valid JSON (a damaged page?)")
		}
		taskID := ""
		if u != nil {
			taskID = u.taskID
		}
		if n := len(lost); n > 0 && lost[n-1].to == id-1 && lost[n-1].taskID == taskID && taskID == "" {
			lost[n-1].to = id // one entry per run of ids lost on a damaged page
		} else {
			lost = append(lost, unreadable{id, id, taskID, rerr, false})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, r := range lost {
		if r.stored {
			continue
		}
		reason := fmt.Sprintf("unreadable (%v): %s", r.err, r)
		if r.from != r.to {
			reason += "; ids on a damaged page, some may have been delivered before"
		}
		if err := aside(r.from, r.taskID, nil, reason); err != nil {
			return nil, err
		}
	}
	return lost, nil
}

// copyAside carries the set-aside rows over, as far as they can be read.
func copyAside(src *sql.DB, tx *sql.Tx) {
	rows, err := src.Query(`SELECT id, task_id, payload, reason, set_aside_at FROM task_updates_aside ORDER BY id`)
	if err != nil {
		return
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		var taskID, reason, at string
		var payload []byte
		if rows.Scan(&id, &taskID, &payload, &reason, &at) != nil {
			return
		}
		tx.Exec(`INSERT OR IGNORE INTO task_updates_aside (id, task_id, payload, reason, set_aside_at) VALUES (?, ?, ?, ?, ?)`, id, taskID, payload, reason, at)
	}
}

// checkQueue is --check's look at the queue file: it reads every row and
// changes nothing (a running worker may be using the file).
func checkQueue(path string, report func(passed bool, name, detail string)) {
	abs, err := filepath.Abs(path)
	if err != nil {
		abs = path
	}
	if _, err := os.Stat(abs); errors.Is(err, fs.ErrNotExist) {
		if werr := dirWritable(filepath.Dir(abs)); werr != nil {
			report(false, "queue", fmt.Sprintf("cannot create the task update queue %s: %v", abs, werr))
		} else {
			report(true, "queue", abs+": not created yet (the worker creates it at start)")
		}
		return
	}
	db, err := sql.Open("sqlite", (&url.URL{Scheme: "file", Opaque: abs, RawQuery: "mode=ro&_pragma=busy_timeout(10000)"}).String())
	if err == nil {
		defer db.Close()
		var s queueSurvey
		if s, err = surveyQueue(db); err == nil {
			report(s.unreadable == 0 && s.integrity == "ok", "queue", abs+": "+s.String())
			return
		}
	}
	if isDamaged(err) {
		report(false, "queue", fmt.Sprintf("%s is damaged (%v): the worker moves it aside and starts an empty queue", abs, err))
		return
	}
	report(false, "queue", explainOpen(abs, err).Error())
}

// queueSurvey is what checkQueue found.
type queueSurvey struct {
	waiting, unreadable, aside, python int
	firstDamage                        string // the first unreadable row and why
	integrity                          string // PRAGMA quick_check's first line
}

func (s queueSurvey) String() string {
	msg := fmt.Sprintf("%d updates waiting", s.waiting)
	if s.unreadable > 0 {
		msg += fmt.Sprintf(", DAMAGED: %d rows cannot be read (%s); the worker sets them aside at start and delivers the rest", s.unreadable, s.firstDamage)
	}
	if s.integrity != "ok" {
		msg += ", DAMAGED: quick_check says " + s.integrity
	}
	if s.aside > 0 {
		msg += fmt.Sprintf(", %d set aside (never delivered: see table task_updates_aside)", s.aside)
	}
	if s.python > 0 {
		msg += fmt.Sprintf(", %d unsent updates of the Python worker (table fworker_queue, not replayed)", s.python)
	}
	return msg
}

func surveyQueue(db *sql.DB) (queueSurvey, error) {
	s := queueSurvey{integrity: "ok"}
	var tables int
	if err := db.QueryRow(`SELECT count(*) FROM sqlite_master WHERE name = 'task_updates'`).Scan(&tables); err != nil || tables == 0 {
		return s, err // a file the worker has not set up yet holds nothing to deliver
	}
	from, last := queuedRows(db, 0, 0)
	err := walkRows(db, from, last, func(id int64, u *queuedUpdate, rerr error) error {
		if rerr == nil && !json.Valid(u.payload) {
			rerr = errors.New("payload is not valid JSON")
		}
		if rerr == nil {
			s.waiting++
			return nil
		}
		if s.unreadable == 0 {
			s.firstDamage = fmt.Sprintf("row %d: %v", id, rerr)
		}
		s.unreadable++
		return nil
	})
	if err != nil {
		return s, err
	}
	db.QueryRow(`SELECT count(*) FROM task_updates_aside`).Scan(&s.aside)
	db.QueryRow(`SELECT count(*) FROM fworker_queue`).Scan(&s.python)
	if err := db.QueryRow(`PRAGMA quick_check(1)`).Scan(&s.integrity); err != nil {
		s.integrity = err.Error()
	}
	s.integrity = strings.Join(strings.Fields(strings.ReplaceAll(s.integrity, "*** in database main ***", "")), " ")
	return s, nil
}
