package main

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSummaryWhileOutputIsStalled: with a committer that never drains (the
// queue cannot store, as on a full disk), a reporter blocks pushing; the
// SIGUSR1 summary and an abort must still return.
func TestSummaryWhileOutputIsStalled(t *testing.T) {
	q := mustOpenQueue(t, filepath.Join(t.TempDir(), "q.db"), quietLogger)
	cfg := defaultConfig()
	cfg.PushLogMaxEntries = 1  // every line is an update
	out := make(chan outgoing) // nobody reads it
	rep := newReporter(taskID(1), &cfg, out)
	w := newWorker(&cfg, nil, q, nil, out, quietLogger)
	w.setCurrent(&runningTask{id: taskID(1), rep: rep, abort: func(error) {}})
	blocked := make(chan struct{})
	go func() { // ends when the test drains out
		defer close(blocked)
		rep.log("this line cannot be stored")
	}()
	time.Sleep(100 * time.Millisecond) // let it block on out

	done := make(chan string, 1)
	go func() { // ends once summary and the abort return
		s := w.summary()
		w.abortTask(taskID(1), errTaskGone)
		done <- s
	}()
	select {
	case s := <-done:
		if !strings.Contains(s, "task "+taskID(1)) {
			t.Errorf("summary = %q", s)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("summary blocked behind a reporter pushing into a full channel")
	}
	<-out // unblock the reporter
	<-blocked
}
