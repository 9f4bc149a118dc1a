package main

// Stand-in for the store helper's setAside (interfaces.md §2), so that the
// fwd branch builds and tests on its own. The lead deletes this file at
// the merge.

import (
	"fmt"
	"time"
)

// setAside moves row id of task_updates into task_updates_aside, with the
// reason, in one transaction, and logs one error line.
func (q *queue) setAside(id int64, reason string) error {
	tx, err := q.db.Begin()
	if err != nil {
		return fmt.Errorf("setting task update %d aside: %w", id, err)
	}
	defer tx.Rollback()
	if _, err := tx.Exec(`CREATE TABLE IF NOT EXISTS task_updates_aside (id INTEGER PRIMARY KEY, task_id TEXT NOT NULL,
		payload BLOB, reason TEXT NOT NULL, set_aside_at TEXT NOT NULL)`); err != nil {
		return fmt.Errorf("setting task update %d aside: %w", id, err)
	}
	var taskID string
	if err := tx.QueryRow(`SELECT task_id FROM task_updates WHERE id = ?`, id).Scan(&taskID); err != nil {
		return fmt.Errorf("setting task update %d aside: %w", id, err)
	}
	if _, err := tx.Exec(`INSERT INTO task_updates_aside (id, task_id, payload, reason, set_aside_at)
		SELECT id, task_id, payload, ?, ? FROM task_updates WHERE id = ?`, reason, time.Now().UTC().Format(time.RFC3339), id); err != nil {
		return fmt.Errorf("setting task update %d aside: %w", id, err)
	}
	if _, err := tx.Exec(`DELETE FROM task_updates WHERE id = ?`, id); err != nil {
		return fmt.Errorf("setting task update %d aside: %w", id, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("setting task update %d aside: %w", id, err)
	}
	q.mu.Lock()
	q.size--
	q.head = id + 1
	q.notifyLocked()
	q.mu.Unlock()
	q.logger.Error("task update set aside in table task_updates_aside; the rest of the queue goes on", "task_id", taskID, "row", id, "reason", reason)
	return nil
}
