package main

import (
	"fmt"
	"time"
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

// queueStore is what the queue knows about its SQLite file.
type queueStore struct {
	path string
}

// setAside moves row id of task_updates into task_updates_aside, in one
// transaction, and logs it once.
func (q *queue) setAside(id int64, reason string) error {
	taskID, err := q.moveAside(id, reason)
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
	now := time.Now().UTC().Format(time.RFC3339)
	if _, err := tx.Exec(`INSERT OR REPLACE INTO task_updates_aside (id, task_id, payload, reason, set_aside_at)
		SELECT id, task_id, payload, ?, ? FROM task_updates WHERE id = ?`, reason, now, id); err != nil {
		return taskID, err
	}
	if _, err := tx.Exec(`DELETE FROM task_updates WHERE id = ?`, id); err != nil {
		return taskID, err
	}
	return taskID, tx.Commit()
}
