package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// escapeHeavy is a task that prints n lines "line <i> " followed by 60,000
// control bytes (each \u0001 in JSON, 6 bytes: one line alone is 360 KB
// on the wire), with short lines in between.
func escapeHeavy(n int) string {
	return execCmd(fmt.Sprintf(`sh -c 'i=0; while [ $i -lt %d ]; do printf "line $i "; head -c 60000 /dev/zero | tr "\0" "\001"; echo; echo "line $i short"; i=$((i+1)); done'`, n))
}

// lineSeq checks that "line <i> ..." log lines arrived each once and in
// order, as pairs (<i> long, <i> short), and counts the cut ones.
func lineSeq(t *testing.T, log string, n int) (cut int) {
	t.Helper()
	re := regexp.MustCompile(` > line (\d+) (short)?`)
	want := 0
	for _, l := range strings.Split(log, "\n") {
		m := re.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		got, _ := strconv.Atoi(m[1])
		wantShort := want%2 == 1
		if got != want/2 || (m[2] != "") != wantShort {
			t.Fatalf("got %q, want line %d (short %v): lost, duplicated or reordered", truncate(l, 80), want/2, wantShort)
		}
		if strings.Contains(l, "[truncated by the worker: ") {
			cut++
		}
		want++
	}
	if want != 2*n {
		t.Fatalf("got %d lines, want %d", want, 2*n)
	}
	return cut
}

// TestTooLargeUpdateIsSplit: behind a proxy that refuses bodies over
// 256 KiB, every line still arrives once and in order (a line too long
// alone is cut, with a marker), the final status arrives, and the task
// runs once.
func TestTooLargeUpdateIsSplit(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "push_log_max_entries = 100\npush_log_max_interval_seconds = 5").registered()
	id := taskID(1)
	long := 6
	if raceEnabled {
		long = 2 // each split re-encodes megabytes of JSON, ~8 times slower under -race
	}
	f.fm.queueTask(id, escapeHeavy(long))
	f.fm.set(func(fm *fakeManager) { fm.maxBody = 256 << 10 })
	p := f.start()
	waitFor(t, 60*time.Second, "the task to complete", func() bool { return f.fm.taskStatus(id) == "completed" })
	p.stop()
	if cut := lineSeq(t, f.fm.logText(id), long); cut != long {
		t.Errorf("%d lines cut, want the %d long ones", cut, long)
	}
	if n := strings.Count(p.out.String(), "received task"); n != 1 {
		t.Errorf("task received %d times, want once", n)
	}
	if got := transitions(f.fm.statuses(id)); got != "active completed" {
		t.Errorf("statuses = %q, want active completed", got)
	}
	for _, u := range f.fm.taskUpdates(id) {
		if len(u.Raw) > 256<<10 {
			t.Errorf("an update of %d bytes got through", len(u.Raw))
		}
	}
}

// TestSplitStress sends many updates, some far too large, through a Manager
// that answers 413 above 256 KiB and 500 above random sizes, and drops
// connections: every line must arrive exactly once, in order, and the
// final status last.
func TestSplitStress(t *testing.T) {
	t.Parallel()
	seed := testSeed(t)
	n := 1000 // .ci/run runs these 1,000 without -race
	if raceEnabled || testing.Short() {
		n = 100 // the race detector makes JSON and SQLite ~8 times slower
	}
	n = envRounds("FW_TEST_SPLIT_UPDATES", n)
	fm := newFakeManager(t)
	fm.addWorker("5e0000000000000000000abc", "s")
	id := taskID(1)
	fm.queueTask(id)
	fm.set(func(fm *fakeManager) { fm.tasks[id] = "active" })
	var hookMu sync.Mutex
	rng := rand.New(rand.NewPCG(seed, 2))
	var refused500, dropped int
	fm.set(func(fm *fakeManager) {
		fm.maxBody = 256 << 10
		fm.sizeHook = func(size int) int {
			hookMu.Lock()
			defer hookMu.Unlock()
			// A third of the requests meet a limit of a random size, most often small.
			if rng.IntN(3) == 0 && size > rng.IntN(1<<rng.IntN(19)) {
				refused500++
				return http.StatusInternalServerError
			}
			return 0
		}
		fm.hijack = func(w http.ResponseWriter, r *http.Request) bool {
			hookMu.Lock()
			drop := rng.IntN(10) == 0
			hookMu.Unlock()
			if !drop || !strings.HasSuffix(r.URL.Path, "/update") {
				return false
			}
			dropped++
			panic(http.ErrAbortHandler) // the connection drops without an answer
		}
	})
	m := testManager(t, fm.URL())
	q := mustOpenQueue(t, t.TempDir()+"/q.db", quietLogger)
	q.retry = backoff{min: time.Millisecond, max: 5 * time.Millisecond}

	// The updates: mostly a few short lines, some batches of long
	// escape-heavy lines, some single lines longer than the limit.
	gen := rand.New(rand.NewPCG(seed, 3))
	line, total := 0, 0
	tx, err := q.st.db.Begin() // one commit for all: the test is about delivery
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		var lines []string
		count, size := 1+gen.IntN(20), 10+gen.IntN(200)
		switch gen.IntN(50) {
		case 0:
			count, size = 100+gen.IntN(100), 1000+gen.IntN(2000) // up to 600 KB, escaped twice over
		case 1:
			count, size = 1, 150_000+gen.IntN(150_000) // one line over the limit alone
		}
		for range count {
			lines = append(lines, fmt.Sprintf("2020-01-02T03:04:05.000000+00:00: L%d %s", line, strings.Repeat(`"\`, size/2)))
			line++
		}
		u := taskUpdate{TaskStatus: "active", Activity: fmt.Sprintf("update %d", i), Log: strings.Join(lines, "\n")}
		if i == n-1 {
			u.TaskStatus = "completed"
		}
		payload, _ := json.Marshal(u)
		total += len(payload)
		if _, err := tx.Exec(`INSERT INTO task_updates (task_id, payload) VALUES (?, ?)`, id, payload); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := q.load(); err != nil { // counts the rows
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // ends when stop is closed
		defer close(done)
		q.forward(stop, context.Background(), deliverer{send: m.postUpdate})
	}()
	start := time.Now()
	waitFor(t, 120*time.Second, "the queue to drain", func() bool { return q.len() == 0 })
	close(stop)
	<-done

	ups := fm.taskUpdates(id)
	next, cut := 0, 0
	re := regexp.MustCompile(`^2020-01-02T03:04:05\.000000\+00:00: L(\d+) `)
	for _, u := range ups {
		text, _ := u.Doc["log"].(string)
		if text == "" {
			continue
		}
		for _, l := range strings.Split(text, "\n") {
			m := re.FindStringSubmatch(l)
			if m == nil || m[1] != strconv.Itoa(next) {
				t.Fatalf("line %q, want L%d: lost, duplicated or reordered", truncate(l, 60), next)
			}
			if strings.Contains(l, "[truncated by the worker: ") {
				cut++
			}
			next++
		}
	}
	if next != line {
		t.Fatalf("%d lines arrived, want %d", next, line)
	}
	last := ups[len(ups)-1].Doc
	if last["task_status"] != "completed" || fm.taskStatus(id) != "completed" {
		t.Errorf("last update %v, task %s: want the completed status last", last["task_status"], fm.taskStatus(id))
	}
	refused413 := 0
	fm.mu.Lock()
	for _, c := range fm.calls {
		if c.Status == http.StatusRequestEntityTooLarge {
			refused413++
		}
	}
	fm.mu.Unlock()
	t.Logf("%d updates (%d MB, %d lines) in %d accepted requests in %v: %d lines cut; %d answered 413, %d answered 500, %d connections dropped",
		n, total>>20, line, len(ups), time.Since(start).Round(time.Millisecond), cut, refused413, refused500, dropped)
}

// TestSplitRowBecomesTheRest: once a part of a too-large update is
// delivered, the row in the queue holds only the rest, so a crash then
// re-sends no delivered line.
func TestSplitRowBecomesTheRest(t *testing.T) {
	q, fm, d := deliveryRig(t)
	var lines []string
	for i := range 8 {
		lines = append(lines, fmt.Sprintf("2020-01-02T03:04:05.000000+00:00: L%d %s", i, strings.Repeat("x", 100)))
	}
	payload, _ := json.Marshal(taskUpdate{TaskStatus: "completed", Activity: "done", Log: strings.Join(lines, "\n")})
	fm.set(func(fm *fakeManager) {
		fm.maxBody = 600
		fm.updateHook = func(n int, _ string) int {
			if n >= 1 {
				return http.StatusServiceUnavailable // down after the first part
			}
			return 0
		}
	})
	if _, err := q.enqueue(taskID(1), payload); err != nil {
		t.Fatal(err)
	}
	runForwarder(t, q, d)
	waitFor(t, 10*time.Second, "the first part", func() bool { return len(fm.taskUpdates(taskID(1))) == 1 })
	first := fm.taskUpdates(taskID(1))[0].Doc
	sent := strings.Count(fmt.Sprint(first["log"]), "\n") + 1
	if _, ok := first["task_status"]; ok || sent >= 8 {
		t.Fatalf("first part %v: want some log lines and no status", first)
	}
	var rest []byte
	waitFor(t, 10*time.Second, "the row to become the rest", func() bool {
		q.st.db.QueryRow(`SELECT payload FROM task_updates`).Scan(&rest)
		return !bytes.Equal(rest, payload)
	})
	var doc taskUpdate
	json.Unmarshal(rest, &doc)
	if !strings.HasPrefix(doc.Log, fmt.Sprintf("2020-01-02T03:04:05.000000+00:00: L%d ", sent)) || doc.TaskStatus != "completed" || doc.Activity != "done" {
		t.Errorf("row after one part of %d lines = %.200s", sent, rest)
	}
}
