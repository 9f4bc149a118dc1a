package main

import (
	"context"
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
	"sync/atomic"
	"time"

	"modernc.org/sqlite" // the pure-Go SQLite driver, so the binary stays static
)

// The queue's table, and the set-aside table: updates that will never be
// delivered (unreadable, or refused again and again), kept for an admin to
// inspect so that the updates behind them flow. The Python worker's
// fworker_queue (pickles) in the same file is left alone.
const (
	queueSchema = `CREATE TABLE IF NOT EXISTS task_updates (
	id      INTEGER PRIMARY KEY AUTOINCREMENT,
	task_id TEXT NOT NULL,
	payload TEXT NOT NULL
)`
	asideSchema = `CREATE TABLE IF NOT EXISTS task_updates_aside (
	id           INTEGER PRIMARY KEY,
	task_id      TEXT NOT NULL,
	payload      BLOB,
	reason       TEXT NOT NULL,
	set_aside_at TEXT NOT NULL
)`
	queuePageSize = 4096    // measured: 64 KiB pages cut durable enqueues from ~3,400/s to ~1,300/s (every fsync'd commit writes whole pages)
	shrinkAbove   = 1 << 20 // free pages or WAL bytes worth giving back once the queue is empty

	// SQLite primary result codes (the low byte of an extended code).
	sqliteCorrupt, sqliteCantOpen, sqliteNotADB = 11, 14, 26
)

// store is the queue's SQLite file. Only rebuild replaces db, with mu held
// exclusively; every other use shares mu.
type store struct {
	path    string
	logger  *slog.Logger
	mu      sync.RWMutex
	db      *sql.DB
	file    os.FileInfo // the file db has open, to notice it being deleted or replaced
	retryAt time.Time   // after a failed rebuild, when moved may report the file again
	// rows counts task_updates. It changes only inside the lock of the
	// write it counts, and rebuild recounts with the lock held exclusively:
	// no insert can land between a recount and its use.
	rows atomic.Int64
}

// queuedUpdate is one row of the queue.
type queuedUpdate struct {
	id      int64
	taskID  string
	payload []byte
}

// openStore opens (creating if needed) the queue file. A file that is not a
// database, or whose schema cannot be read, is moved aside and an empty
// queue started; a file with damaged rows is rebuilt from the readable ones.
func openStore(path string, logger *slog.Logger) (*store, error) {
	if abs, err := filepath.Abs(path); err == nil {
		path = abs // log lines name the file fully
	}
	s := &store{path: path, logger: logger}
	adoptRebuilt(path, logger)
	err := s.openDB()
	if isDamaged(err) {
		kept, merr := moveDBFiles(path, "corrupt")
		if merr != nil {
			return nil, fmt.Errorf("opening queue %s: %w (and cannot move it aside: %v)", path, err, merr)
		}
		logger.Error("the task update queue file is damaged beyond reading: moved it aside and started an empty queue; the updates in it are not delivered",
			"queue", path, "moved_to", kept, "err", err)
		err = s.openDB()
	}
	if err != nil {
		return nil, explainOpen(path, err)
	}
	if _, _, err := s.count(); isDamaged(err) {
		if _, _, err := s.rebuild("rows of the queue cannot be read: "+err.Error(), "corrupt", 0, 0); err != nil {
			return nil, err
		}
	} else if err != nil {
		s.db.Close()
		return nil, fmt.Errorf("opening queue %s: %w", path, err)
	}
	var python int // the Python worker's rows are pickles this worker cannot read
	if s.db.QueryRow(`SELECT count(*) FROM fworker_queue`).Scan(&python) == nil && python > 0 {
		logger.Warn("the queue file holds task updates the Python worker never sent (table fworker_queue); they are not replayed", "queue", path, "count", python)
	}
	return s, nil
}

// openFile opens the database at path with the queue's pragmas and tables.
// The driver runs the _pragma entries before _journal_mode, and the page
// size must be set before WAL (or the first table) fixes it. The WAL is
// checkpointed every 1000 pages (4 MiB).
func openFile(path, journal string) (*sql.DB, error) {
	db, err := sql.Open("sqlite", (&url.URL{Scheme: "file", Opaque: path, RawQuery: "_pragma=busy_timeout(10000)&_pragma=page_size(4096)&_pragma=journal_size_limit(16777216)&_pragma=wal_autocheckpoint(1000)&_pragma=synchronous(FULL)&_journal_mode=" + journal}).String())
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1) // one writer; also keeps the pragmas on one connection
	for _, schema := range []string{queueSchema, asideSchema} {
		if _, err := db.Exec(schema); err != nil {
			db.Close()
			return nil, err
		}
	}
	return db, nil
}

func (s *store) openDB() error {
	db, err := openFile(s.path, "WAL")
	if err != nil {
		return err // s.db stays the old, closed handle: its uses fail, they do not panic
	}
	s.db = db
	s.file, _ = os.Stat(s.path)
	return nil
}

func (s *store) close() error { return s.db.Close() }

// count counts the rows (and sets rows) and finds the newest id. (Unlocked:
// for opening and rebuild.)
func (s *store) count() (size int, last int64, err error) {
	var l sql.NullInt64
	if err = s.db.QueryRow(`SELECT count(*), max(id) FROM task_updates`).Scan(&size, &l); err == nil {
		s.rows.Store(int64(size))
	}
	return size, l.Int64, err
}

func (s *store) insert(taskID string, payload []byte) (int64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	res, err := s.db.Exec(`INSERT INTO task_updates (task_id, payload) VALUES (?, ?)`, taskID, payload)
	if err != nil {
		return 0, err
	}
	s.rows.Add(1)
	return res.LastInsertId()
}

// head reads the oldest row, nil when there is none.
func (s *store) head() (*queuedUpdate, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var u queuedUpdate
	err := s.db.QueryRow(`SELECT id, task_id, payload FROM task_updates ORDER BY id LIMIT 1`).Scan(&u.id, &u.taskID, &u.payload)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	return &u, err
}

// remove deletes a delivered row without waiting for the disk, unlike
// inserts (synchronous=FULL): a delete a power cut loses only re-sends the
// update, which at-least-once delivery allows. This halves the fsyncs of a
// chatty task.
func (s *store) remove(id int64) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	ctx := context.Background()
	conn, err := s.db.Conn(ctx) // the only connection: no insert can slip in between
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = conn.ExecContext(ctx, `PRAGMA synchronous=NORMAL`)
	if err == nil {
		var res sql.Result
		if res, err = conn.ExecContext(ctx, `DELETE FROM task_updates WHERE id = ?`, id); err == nil {
			n, _ := res.RowsAffected() // 0 when a retry finds the row gone
			s.rows.Add(-n)
		}
	}
	if _, perr := conn.ExecContext(ctx, `PRAGMA synchronous=FULL`); err == nil {
		err = perr
	}
	return err
}

func (s *store) exec(query string, args ...any) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, err := s.db.Exec(query, args...)
	return err
}

// rewrite replaces a row's payload (by the rest of an update sent in parts).
func (s *store) rewrite(id int64, payload []byte) error {
	return s.exec(`UPDATE task_updates SET payload = ? WHERE id = ?`, payload, id)
}

// reclaim gives the WAL's space back to the file system: after a write
// failed on a full disk, the frames of the failed transactions would
// otherwise keep the space that was freed since.
func (s *store) reclaim() { s.exec(`PRAGMA wal_checkpoint(TRUNCATE)`) }

// shrink gives the space of delivered rows back and applies queuePageSize
// to a file made with other pages. The queue calls it when it is empty.
func (s *store) shrink() {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var pageSize, free int64
	err := s.db.QueryRow(`SELECT * FROM pragma_page_size, pragma_freelist_count`).Scan(&pageSize, &free)
	var steps []string
	switch {
	case err != nil:
	case pageSize != queuePageSize: // a WAL file's page size is fixed: leave WAL for the VACUUM
		steps = []string{`PRAGMA journal_mode=DELETE`, fmt.Sprintf(`PRAGMA page_size=%d`, queuePageSize), `VACUUM`, `PRAGMA journal_mode=WAL`}
	case free*pageSize >= shrinkAbove:
		steps = []string{`VACUUM`, `PRAGMA wal_checkpoint(TRUNCATE)`}
	case fileSize(s.path+"-wal") >= shrinkAbove:
		steps = []string{`PRAGMA wal_checkpoint(TRUNCATE)`}
	}
	for _, step := range steps {
		if _, err = s.db.Exec(step); err != nil {
			err = fmt.Errorf("%s: %w", step, err)
			break
		}
	}
	if err != nil {
		s.logger.Warn("cannot shrink the empty task update queue file", "queue", s.path, "err", err)
	}
}

func fileSize(path string) int64 {
	if info, err := os.Stat(path); err == nil {
		return info.Size()
	}
	return 0
}

// setAside moves row id into task_updates_aside, in one transaction.
func (s *store) setAside(id int64, reason string) (taskID string, _ error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	tx, err := s.db.Begin()
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
	if err := tx.Commit(); err != nil {
		return taskID, err
	}
	s.rows.Add(-1)
	return taskID, nil
}

func asideTime() string { return time.Now().UTC().Format(time.RFC3339) }

// moved says how the file was "deleted" or "replaced" since it was opened
// ("" if not): SQLite keeps writing to an unlinked file, so every later
// update would be lost at the next start.
func (s *store) moved() string {
	info, err := os.Stat(s.path)
	switch {
	case time.Now().Before(s.retryAt):
	case errors.Is(err, fs.ErrNotExist):
		return "deleted"
	case err == nil && s.file != nil && !os.SameFile(info, s.file):
		return "replaced"
	}
	return ""
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

// queuedRows is the range of row ids a walk covers, each bound read on its
// own (a damaged b-tree may hide one but not the others); head and last are
// the queue's, for when the file cannot tell.
func queuedRows(db *sql.DB, head, last int64) (from, to int64) {
	var lo, hi, seq sql.NullInt64
	loErr := db.QueryRow(`SELECT min(id) FROM task_updates`).Scan(&lo)
	db.QueryRow(`SELECT max(id) FROM task_updates`).Scan(&hi)
	db.QueryRow(`SELECT seq FROM sqlite_sequence WHERE name = 'task_updates'`).Scan(&seq)
	switch to = max(last, hi.Int64, seq.Int64); {
	case lo.Valid:
		return lo.Int64, to
	case loErr == nil:
		return 1, 0 // empty
	}
	return max(head, 1), to
}

// walkRows calls fn for every row id from..last of task_updates, in order:
// with the row when it can be read, with the error when it cannot (u then
// holds what could be read of it, or is nil). It looks each id up, so past
// a damaged b-tree page, where even the ids cannot be listed, fn may get an
// id that never existed. (The rows are contiguous: only the head ever
// leaves the table.)
func walkRows(db *sql.DB, from, last int64, fn func(id int64, u *queuedUpdate, err error) error) error {
	for id := from; id <= last; id++ {
		if u, err := readRow(db, id); !errors.Is(err, sql.ErrNoRows) {
			if err := fn(id, u, err); err != nil {
				return err
			}
		}
	}
	return nil
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

// unreadable is a run of consecutive row ids that could not be read, or
// one row whose payload is not JSON (kept, for inspection).
type unreadable struct {
	from, to int64
	taskID   string
	payload  []byte
	err      error
	notJSON  bool
}

func (r unreadable) String() string {
	if r.from == r.to {
		return fmt.Sprintf("row %d", r.from)
	}
	return fmt.Sprintf("rows %d to %d", r.from, r.to)
}

func (r unreadable) reason() string {
	switch {
	case r.notJSON:
		return "unreadable: payload is not valid JSON (a damaged page?)"
	case r.from != r.to:
		return fmt.Sprintf("unreadable (%v): %s; ids on a damaged page, some may have been delivered before", r.err, r)
	}
	return fmt.Sprintf("unreadable (%v): %s", r.err, r)
}

// rebuild replaces the file by a fresh one holding every row that can still
// be read (head and last, the queue's, bound the ids where the file cannot
// tell); a row that cannot is recorded in the new file's task_updates_aside
// and logged once. A file still at the path is kept as <name>.<what>-<time>.
// It returns the new file's row count and newest id; size is -1 when a
// failed rebuild could not reopen the queue either.
func (s *store) rebuild(why, what string, head, last int64) (size int, newLast int64, err error) {
	tmp := s.path + ".rebuild"
	for _, ext := range []string{"", "-journal", "-wal", "-shm"} {
		os.Remove(tmp + ext)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	lost, err := s.copyInto(tmp, head, last)
	if err != nil {
		os.Remove(tmp)
		return -1, 0, fmt.Errorf("rebuilding queue %s: %w", s.path, err)
	}
	s.db.Close()
	kept, err := swapInto(tmp, s.path, what)
	if err == nil {
		err = s.openDB()
	}
	if err != nil {
		s.retryAt = time.Now().Add(time.Minute)
		adoptRebuilt(s.path, s.logger) // whatever is at the path, so the queue stays usable
		if rerr := s.openDB(); rerr != nil {
			return -1, 0, fmt.Errorf("rebuilding queue %s: %w; reopening: %v", s.path, err, rerr)
		}
		size, newLast, _ = s.count()
		return size, newLast, fmt.Errorf("rebuilding queue %s: %w", s.path, err)
	}
	if size, newLast, err = s.count(); err != nil {
		return -1, 0, fmt.Errorf("rebuilding queue %s: %w", s.path, err)
	}
	for _, r := range lost {
		s.logger.Error("task update unreadable (damaged page of the queue file): set aside, it will not be delivered",
			"rows", r.String(), "task_id", r.taskID, "err", r.err, "queue", s.path, "damaged_file", kept)
	}
	s.logger.Warn("task update queue rebuilt", "reason", why, "queue", s.path, "queued", size, "unreadable", len(lost), "old_file", kept)
	return size, newLast, nil
}

// adoptRebuilt puts a rebuilt copy left by an interrupted rebuild at the
// path, when nothing else is there: it holds the rows carried over.
func adoptRebuilt(path string, logger *slog.Logger) {
	tmp := path + ".rebuild"
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) || fileSize(tmp) == 0 {
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

// copyInto writes a fresh queue database at tmp from the rows of s.db.
func (s *store) copyInto(tmp string, head, last int64) ([]unreadable, error) {
	dst, err := openFile(tmp, "DELETE")
	if err != nil {
		return nil, err
	}
	defer dst.Close()
	tx, err := dst.Begin()
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	from, last := queuedRows(s.db, head, last)
	lost, err := copyRows(s.db, tx, from, last)
	if err != nil {
		return nil, err
	}
	copyAside(s.db, tx)
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
	err := walkRows(src, from, last, func(id int64, u *queuedUpdate, rerr error) error {
		if rerr == nil && json.Valid(u.payload) {
			_, err := tx.Exec(`INSERT INTO task_updates (id, task_id, payload) VALUES (?, ?, ?)`, id, u.taskID, u.payload)
			return err
		}
		r := unreadable{from: id, to: id, err: rerr, notJSON: rerr == nil}
		if u != nil {
			r.taskID, r.payload = u.taskID, u.payload
		}
		if r.notJSON {
			r.err = errors.New("payload is not valid JSON")
		}
		if n := len(lost); n > 0 && !r.notJSON && r.taskID == "" && !lost[n-1].notJSON && lost[n-1].taskID == "" && lost[n-1].to == id-1 {
			lost[n-1].to = id // one entry per run of ids lost on a damaged page
		} else {
			lost = append(lost, r)
		}
		return nil
	})
	for _, r := range lost {
		if err == nil {
			_, err = tx.Exec(`INSERT OR REPLACE INTO task_updates_aside (id, task_id, payload, reason, set_aside_at) VALUES (?, ?, ?, ?, ?)`,
				r.from, r.taskID, r.payload, r.reason(), asideTime())
		}
	}
	return lost, err
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
		} else if s.unreadable++; s.unreadable == 1 {
			s.firstDamage = fmt.Sprintf("row %d: %v", id, rerr)
		}
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
