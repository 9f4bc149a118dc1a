package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// steadyTask logs a line every 10 ms for a minute.
const steadyTask = `sh -c 'i=0; while [ $i -lt 6000 ]; do echo "steady $i"; i=$((i+1)); sleep 0.01; done'`

// envRounds is the number of rounds of a stress test: def, or the value of
// the environment variable name (for longer runs by hand).
func envRounds(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

// duplicateLogUpdates counts accepted updates whose body, log lines
// included, the Manager already took: an update sent twice. Bodies without
// log text are left out, as two activity updates may be alike.
func duplicateLogUpdates(fm *fakeManager) (dups, total int) {
	fm.mu.Lock()
	defer fm.mu.Unlock()
	seen := map[string]bool{}
	for _, u := range fm.order {
		if _, ok := u.Doc["log"]; !ok {
			continue
		}
		total++
		if seen[u.Raw] {
			dups++
		}
		seen[u.Raw] = true
	}
	return dups, total
}

// TestNoDuplicateUpdateAtShutdown stops a worker mid-task many times, with a
// Manager that answers its updates a little late, and counts the updates
// it got twice: stopping the forwarder must never cut a send in flight and
// then send the same update again.
func TestNoDuplicateUpdateAtShutdown(t *testing.T) {
	t.Parallel()
	rounds := 40 // SIGTERM rounds; half as many SIGTSTP rounds; .ci/run runs 100 without -race
	if raceEnabled {
		rounds = 12 // each round is a worker process, ~8 times slower under the race detector
	}
	rounds = envRounds("FW_TEST_DUP_ROUNDS", rounds)
	rng := rand.New(rand.NewPCG(testSeed(t), 4))
	for _, asleep := range []bool{false, true} {
		name, rounds := "SIGTERM mid-task", rounds
		if asleep {
			name, rounds = "SIGTSTP mid-task, then SIGTERM", max(rounds/2, 1)
		}
		t.Run(name, func(t *testing.T) {
			var results = make(chan [2]int, rounds)
			t.Run("rounds", func(t *testing.T) {
				for i := range rounds {
					pause := time.Duration(rng.IntN(60)) * time.Millisecond // between SIGTSTP and SIGTERM
					t.Run(fmt.Sprint(i), func(t *testing.T) {
						t.Parallel()
						results <- shutdownRound(t, asleep, pause)
					})
				}
			})
			close(results)
			dups, total, n := 0, 0, 0
			for r := range results {
				dups, total, n = dups+r[0], total+r[1], n+1
			}
			t.Logf("%d rounds, %d updates with log lines, %d sent twice", n, total, dups)
			if dups != 0 {
				t.Errorf("%d updates arrived twice in %d rounds", dups, n)
			}
		})
	}
}

// shutdownRound runs one worker on a steady task and stops it mid-task; it
// returns the duplicates and the updates with log lines the Manager got.
func shutdownRound(t *testing.T, asleep bool, pause time.Duration) [2]int {
	f := newFarm(t, "").registered()
	id := taskID(1)
	f.fm.queueTask(id, execCmd(steadyTask))
	f.fm.set(func(fm *fakeManager) { fm.updateDelay = 15 * time.Millisecond })
	p := f.start()
	waitFor(t, 20*time.Second, "the task to log", func() bool { return strings.Contains(f.fm.logText(id), "> steady 3") })
	if asleep {
		// The task is canceled and its last updates go out while the
		// worker is stopped soon after, as by a sleep schedule and then a
		// reboot.
		p.signal(syscall.SIGTSTP)
		time.Sleep(pause)
	}
	p.stop()
	d, n := duplicateLogUpdates(f.fm)
	if d > 0 {
		t.Logf("%d of %d updates arrived twice", d, n)
	}
	return [2]int{d, n}
}

// TestNoStaleActiveAfterMayIRunFalse: updates queued before may-i-run said
// no still go out with their log lines, but none claims "active" for the
// task the worker was told to stop.
func TestNoStaleActiveAfterMayIRunFalse(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "").registered()
	id := taskID(1)
	f.fm.queueTask(id, execCmd(steadyTask))
	// Answers slower than the task logs: updates pile up in the queue.
	f.fm.set(func(fm *fakeManager) { fm.updateDelay = 150 * time.Millisecond })
	p := f.start()
	db := filepath.Join(f.dir, "flamenco-worker.db")
	waitFor(t, 20*time.Second, "updates to queue up", func() bool { return len(queuedPayloads(t, db)) >= 5 })
	stopAt := -1
	f.fm.set(func(fm *fakeManager) {
		fm.mayIRunHook = func(string) (bool, string) {
			if stopAt < 0 {
				stopAt = len(fm.order) // under fm.mu
			}
			return false, ""
		}
	})
	waitFor(t, 20*time.Second, "the task to be returned", func() bool { return f.fm.count("POST /tasks/"+id+"/return") == 1 })
	p.stop()

	f.fm.mu.Lock()
	after := append([]update(nil), f.fm.order[stopAt:]...)
	f.fm.mu.Unlock()
	// The first may have been on its way when the Manager said no.
	var statuses []string
	withLog := 0
	for i, u := range after {
		if _, ok := u.Doc["log"]; ok {
			withLog++
		}
		if s, ok := u.Doc["task_status"]; ok && i > 0 {
			statuses = append(statuses, fmt.Sprint(s))
		}
	}
	t.Logf("%d updates after may-i-run said no, %d with log lines", len(after), withLog)
	if withLog < 3 {
		t.Fatalf("only %d updates with log lines after may-i-run said no; the test needs queued ones", withLog)
	}
	if len(statuses) > 0 {
		t.Errorf("statuses sent after may-i-run said no: %v", statuses)
	}
	if !strings.Contains(f.fm.logText(id), "stopped running this task, no longer allowed to run by Manager") {
		t.Errorf("the task's last log lines did not arrive")
	}
}

// deliveryRig is a queue wired to a fake Manager that knows task 1, with
// short backoffs, for tests of the forwarder on its own.
func deliveryRig(t *testing.T) (*queue, *fakeManager, deliverer) {
	t.Helper()
	fm := newFakeManager(t)
	fm.addWorker("5e0000000000000000000abc", "s")
	fm.queueTask(taskID(1))
	fm.set(func(fm *fakeManager) { fm.tasks[taskID(1)] = "active" })
	m := testManager(t, fm.URL())
	q := mustOpenQueue(t, filepath.Join(t.TempDir(), "q.db"), quietLogger)
	q.retry = backoff{min: 20 * time.Millisecond, max: 100 * time.Millisecond}
	return q, fm, deliverer{send: m.postUpdate}
}

// runForwarder runs q.forward until the test ends.
func runForwarder(t *testing.T, q *queue, d deliverer) {
	stop, done := make(chan struct{}), make(chan struct{})
	go func() { // ends when stop is closed
		defer close(done)
		q.forward(stop, context.Background(), d)
	}()
	t.Cleanup(func() { close(stop); <-done })
}

// TestDeleteFailureDoesNotResend: on a full disk the delete after a
// successful send fails; the delivered row must not be sent again while
// the delete is retried (with a backoff), and the queue moves on once the
// delete works.
func TestDeleteFailureDoesNotResend(t *testing.T) {
	t.Parallel()
	q, fm, d := deliveryRig(t)
	// What a full disk does to a DELETE, without filling one.
	if _, err := q.st.db.Exec(`CREATE TRIGGER full_disk BEFORE DELETE ON task_updates BEGIN SELECT RAISE(FAIL, 'database or disk is full'); END`); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := q.enqueue(taskID(1), fmt.Appendf(nil, `{"log": "update %d"}`, i)); err != nil {
			t.Fatal(err)
		}
	}
	runForwarder(t, q, d)
	waitFor(t, 10*time.Second, "the first update", func() bool { return len(fm.taskUpdates(taskID(1))) == 1 })
	time.Sleep(time.Second) // many backoffs: a resend would show
	sends := fm.count("POST /tasks/" + taskID(1) + "/update")
	if sends != 1 {
		t.Errorf("the delivered update was sent %d times while its delete failed, want once", sends)
	}
	if _, err := q.st.db.Exec(`DROP TRIGGER full_disk`); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the queue to drain", func() bool { return q.len() == 0 })
	if n := fm.count("POST /tasks/" + taskID(1) + "/update"); n != 3 {
		t.Errorf("%d sends for 3 updates once the delete works", n)
	}
}

// TestOddTaskIDs: ids that are not Manager ids are failed without running,
// and every route that carries one escapes it, so that later tasks flow.
func TestOddTaskIDs(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "").registered()
	odd := []string{"abc%zz", "x?y=1", "a#b", "a/b", "bad\nid"}
	served := 0
	f.fm.set(func(fm *fakeManager) {
		fm.hijack = func(w http.ResponseWriter, r *http.Request) bool {
			if r.URL.Path != "/task" || served >= len(odd) {
				return false
			}
			served++
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"_id": %q, "commands": [%s]}`, odd[served-1], echoCmd("must not run"))
			return true
		}
	})
	f.fm.queueTask(taskID(1), echoCmd("real task"))
	p := f.start()
	waitFor(t, 20*time.Second, "the real task to complete", func() bool { return f.fm.taskStatus(taskID(1)) == "completed" })
	p.stop()
	out := p.out.String()
	if n := strings.Count(out, "is not a Manager task id"); n != len(odd) {
		t.Errorf("%d odd ids refused, want %d", n, len(odd))
	}
	if strings.Contains(out, "must not run") || strings.Contains(f.fm.logText(taskID(1)), "must not run") {
		t.Errorf("a task with an odd id ran")
	}
	for _, id := range odd {
		if n := f.fm.count("POST /tasks/" + id + "/update"); n != 1 {
			t.Errorf("task %q: %d failed updates reached its own path, want 1 (escaped): %v", id, n, f.fm.callPaths())
		}
	}
}

// TestRefusedUpdateIsSetAside: an update refused again and again with an
// answer that will not change (here a WAF's 403 for that one task) is set
// aside after maxRefusals attempts, with one error log, and the updates
// after it go out.
func TestRefusedUpdateIsSetAside(t *testing.T) {
	t.Parallel()
	q, fm, d := deliveryRig(t)
	var logs lockedBuffer
	q.logger = slog.New(slog.NewTextHandler(&logs, nil))
	blocked := taskID(2)
	fm.queueTask(blocked)
	fm.set(func(fm *fakeManager) {
		fm.updateHook = func(_ int, id string) int {
			if id == blocked {
				return http.StatusForbidden
			}
			return 0
		}
	})
	q.enqueue(blocked, []byte(`{"log": "the WAF does not like this one"}`))
	q.enqueue(taskID(1), []byte(`{"log": "next"}`))
	q.enqueue(taskID(1), []byte(`{"task_status": "completed"}`))
	runForwarder(t, q, d)
	waitFor(t, 10*time.Second, "the queue to drain", func() bool { return q.len() == 0 })
	if n := fm.count("POST /tasks/" + blocked + "/update"); n != maxRefusals {
		t.Errorf("refused update sent %d times, want %d", n, maxRefusals)
	}
	if got := transitions(fm.statuses(taskID(1))); got != "completed" {
		t.Errorf("later task's statuses = %q, want completed", got)
	}
	var reason string
	if err := q.st.db.QueryRow(`SELECT reason FROM task_updates_aside WHERE task_id = ?`, blocked).Scan(&reason); err != nil || !strings.Contains(reason, "403") {
		t.Errorf("set-aside row: reason %q, err %v", reason, err)
	}
	if n := strings.Count(logs.String(), "level=ERROR"); n != 1 {
		t.Errorf("%d error log lines, want 1:\n%s", n, logs.String())
	}
}

// TestUndecodableTaskIsFailed: a task document the worker cannot read but
// that has an _id is failed with a clear message, so that the Manager stops
// handing it out (as a real one would while it stays active).
func TestUndecodableTaskIsFailed(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "").registered()
	bad := map[string]string{
		taskID(7): `{"_id": "` + taskID(7) + `", "commands": "nope"}`,
		taskID(8): `{"_id": "` + taskID(8) + `", "name": "no commands list"}`,
	}
	order := []string{taskID(7), taskID(8)}
	f.fm.set(func(fm *fakeManager) {
		for id := range bad {
			fm.tasks[id] = "active"
		}
		fm.hijack = func(w http.ResponseWriter, r *http.Request) bool {
			if r.URL.Path != "/task" {
				return false
			}
			fm.mu.Lock()
			defer fm.mu.Unlock()
			for _, id := range order {
				if fm.tasks[id] == "active" { // re-delivered until it ends
					w.Header().Set("Content-Type", "application/json")
					io.WriteString(w, bad[id])
					return true
				}
			}
			return false
		}
	})
	f.fm.queueTask(taskID(1), echoCmd("real task"))
	p := f.start()
	waitFor(t, 20*time.Second, "the real task to complete", func() bool { return f.fm.taskStatus(taskID(1)) == "completed" })
	p.stop()
	for _, id := range order {
		ups := f.fm.taskUpdates(id)
		if f.fm.taskStatus(id) != "failed" || len(ups) == 0 || !strings.Contains(fmt.Sprint(ups[len(ups)-1].Doc["activity"]), "Worker cannot read this task: decoding task") {
			t.Errorf("task %s: status %s, updates %v; want failed with the reason", id, f.fm.taskStatus(id), ups)
		}
	}
}

// TestNoStaleActiveAfterConflict: after one update is refused 409 (the task
// went to another worker), the updates of that task queued before it go
// without a status.
func TestNoStaleActiveAfterConflict(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "").registered()
	id := taskID(1)
	f.fm.queueTask(id, execCmd(steadyTask))
	f.fm.set(func(fm *fakeManager) { fm.updateDelay = 150 * time.Millisecond })
	p := f.start()
	db := filepath.Join(f.dir, "flamenco-worker.db")
	waitFor(t, 20*time.Second, "updates to queue up", func() bool { return len(queuedPayloads(t, db)) >= 5 })
	refusedAt := -1
	f.fm.set(func(fm *fakeManager) {
		fm.updateHook = func(n int, _ string) int {
			if refusedAt < 0 { // under fm.mu
				refusedAt = n
				fm.tasks[id] = "claimed-by-manager" // given to another worker: not handed to us again
				fm.endActive(id)
				return http.StatusConflict
			}
			return 0
		}
	})
	waitFor(t, 10*time.Second, "the abort", func() bool { return strings.Contains(p.out.String(), "aborting the running task") })
	waitFor(t, 10*time.Second, "the queue to drain", func() bool { return len(queuedPayloads(t, db)) == 0 })
	p.stop()
	f.fm.mu.Lock()
	after := append([]update(nil), f.fm.order[refusedAt:]...)
	f.fm.mu.Unlock()
	t.Logf("refused at %d; %d accepted after", refusedAt, len(after))
	if len(after) < 3 {
		t.Fatalf("only %d updates after the 409; the test needs queued ones", len(after))
	}
	for _, u := range after {
		if s, ok := u.Doc["task_status"]; ok {
			t.Errorf("status %v sent after the Manager answered 409: %.150s", s, u.Raw)
		}
	}
}

func TestNoFetchWhileQueueIsFull(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "push_log_max_entries = 1").registered()
	id := taskID(1)
	f.fm.queueTask(id, logALot(30), `{"name": "sleep", "settings": {"time_in_seconds": 60}}`)
	f.fm.set(func(fm *fakeManager) {
		fm.updateHook = func(int, string) int { return http.StatusServiceUnavailable }
	})
	p := f.start()
	db := filepath.Join(f.dir, "flamenco-worker.db")
	waitFor(t, 10*time.Second, "updates to pile up", func() bool { return len(queuedPayloads(t, db)) > 20 })
	p.signal(syscall.SIGKILL)
	p.wait(5 * time.Second)

	// Restarted with more than 10 updates queued and the Manager still refusing them.
	fetches := f.fm.count("POST /task")
	p2 := f.start()
	waitFor(t, 10*time.Second, "the back-pressure message", func() bool {
		return strings.Contains(p2.out.String(), "task update queue too large")
	})
	time.Sleep(300 * time.Millisecond) // several fetch intervals: no fetch may happen
	if n := f.fm.count("POST /task"); n != fetches {
		t.Errorf("fetched %d times while more than 10 updates were queued", n-fetches)
	}
	f.fm.set(func(fm *fakeManager) { fm.updateHook = nil })
	waitFor(t, 10*time.Second, "fetching to resume", func() bool { return f.fm.count("POST /task") > fetches })
	p2.stop()
}
