package main

import (
	"database/sql"
	"errors"
	"path/filepath"
	"testing"
)

// TestQueueSetAside: a row set aside leaves the queue, keeps its payload in
// task_updates_aside, and the next row becomes the head.
func TestQueueSetAside(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.db")
	q, err := openQueue(path, quietLogger)
	if err != nil {
		t.Fatal(err)
	}
	defer q.close()
	first, _ := q.enqueue("t1", []byte(`{"n": 1}`))
	q.enqueue("t2", []byte(`{"n": 2}`))
	if err := q.setAside(first, "refused 5 times: 403"); err != nil {
		t.Fatal(err)
	}
	u, err := q.peek()
	if err != nil || u == nil || u.taskID != "t2" || q.len() != 1 {
		t.Fatalf("after setAside: peek = %+v, %v; len %d; want t2, 1", u, err, q.len())
	}
	if err := q.waitDelivered(t.Context(), first); err != nil {
		t.Fatal(err)
	}
	var taskID, payload, reason string
	if err := q.db.QueryRow(`SELECT task_id, payload, reason FROM task_updates_aside WHERE id = ?`, first).Scan(&taskID, &payload, &reason); err != nil {
		t.Fatal(err)
	}
	if taskID != "t1" || payload != `{"n": 1}` || reason != "refused 5 times: 403" {
		t.Errorf("aside row = %q %q %q", taskID, payload, reason)
	}
	if err := q.setAside(first, "again"); err == nil || !errors.Is(err, sql.ErrNoRows) {
		t.Errorf("setAside of a missing row = %v, want ErrNoRows", err)
	}
}
