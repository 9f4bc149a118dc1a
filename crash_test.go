package main

import (
	"encoding/json"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestCrashSafety kills the worker with SIGKILL at random moments while a
// task floods updates and the Manager flaps. After every kill the queue
// must be readable, and once the Manager is steady every update that was
// committed before a kill must arrive, in the order it was queued.
func TestCrashSafety(t *testing.T) {
	t.Parallel()
	kills := 8
	if testing.Short() {
		kills = 3
	}
	f := newFarm(t, "push_log_max_entries = 3").registered()
	id := taskID(1)
	f.fm.queueTask(id, execCmd(`sh -c 'i=0; while true; do echo "flood $i"; i=$((i+1)); sleep 0.002; done'`))
	seed := testSeed(t)
	rng, answers := rand.New(rand.NewPCG(seed, 1)), rand.New(rand.NewPCG(seed, 2)) // kill moments, 502s
	f.fm.set(func(fm *fakeManager) {
		fm.updateHook = func(int, string) int {
			if answers.IntN(3) == 0 { // under fm.mu
				return http.StatusBadGateway
			}
			return 0
		}
	})
	db := filepath.Join(f.dir, "flamenco-worker.db")
	var committed [][]string // what the queue held right after each kill
	for i := range kills {
		p := f.start()
		delay := time.Duration(50+rng.IntN(600)) * time.Millisecond
		time.Sleep(delay) // the random moment of the crash
		p.signal(syscall.SIGKILL)
		p.wait(5 * time.Second)
		rows := queuedPayloads(t, db)
		t.Logf("kill %d after %v: %d updates queued", i, delay, len(rows))
		committed = append(committed, rows)
	}
	f.fm.set(func(fm *fakeManager) {
		fm.updateHook = nil
		fm.mayIRunHook = func(string) (bool, string) { return false, "" }
	})
	p := f.start()
	waitFor(t, 60*time.Second, "the queue to drain", func() bool { return len(queuedPayloads(t, db)) == 0 && f.fm.count("POST /tasks/"+id+"/return") > 0 })
	p.stop()

	// Each kill's queue must appear, in order, within what the Manager got
	// (a greedy subsequence match: identical payloads, such as the first
	// "active" update of each run, may arrive several times).
	// Once may-i-run has said no, queued updates go without their stale
	// "active" status (the rest is kept): compare without it.
	withoutActive := func(payload string) string {
		var doc map[string]any
		if json.Unmarshal([]byte(payload), &doc) != nil {
			return payload
		}
		if doc["task_status"] == "active" {
			delete(doc, "task_status")
		}
		out, _ := json.Marshal(doc)
		return string(out)
	}
	var received []string
	for _, u := range f.fm.taskUpdates(id) {
		received = append(received, withoutActive(u.Raw))
	}
	for k, rows := range committed {
		pos := 0
		for _, payload := range rows {
			payload = withoutActive(payload)
			for pos < len(received) && received[pos] != payload {
				pos++
			}
			if pos == len(received) {
				t.Fatalf("kill %d: a committed update never arrived, or arrived out of order: %.120s", k, payload)
			}
			pos++
		}
	}
}

func TestSIGKILLedWorkerLeavesNoRender(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "").registered()
	id := taskID(1)
	f.fm.queueTask(id, execCmd(`sh -c 'echo group $$; exec sleep 300'`))
	p := f.start()
	pgid := groupOf(t, f.fm, id)
	p.signal(syscall.SIGKILL)
	p.wait(5 * time.Second)
	if live := liveGroupMembers(pgid); len(live) > 0 {
		t.Errorf("processes %v of the task outlived the SIGKILLed worker", live)
	}
}
