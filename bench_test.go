package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// cpuTime is the CPU time (user + system) this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchManager is a Manager that accepts every update at once.
func benchManager(b *testing.B) *manager {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusNoContent)
	}))
	b.Cleanup(srv.Close)
	cfg := defaultConfig()
	cfg.WorkerID, cfg.WorkerSecret = "5e0000000000000000000abc", "secret"
	m, err := newManager(&cfg, srv.URL, "bench", quietLogger)
	if err != nil {
		b.Fatal(err)
	}
	return m
}

// BenchmarkQueue enqueues 10 000 updates (each committed and fsynced) and
// forwards them to a local Manager; it reports both rates.
func BenchmarkQueue(b *testing.B) {
	const n = 10_000
	m := benchManager(b)
	payload := []byte(`{"task_status":"active","activity":"Rendering frame 2 of 3","current_command_idx":0,"task_progress_percentage":66,"command_progress_percentage":66,"log":"2026-11-29T03:00:00.000000+00:00: pid=1234 > Fra:2 Mem:12.34M (Peak 56.78M) | Time:00:01.23 | Sample 3/4"}`)
	var enqueue, forward time.Duration
	for i := 0; b.Loop(); i++ {
		q, err := openQueue(filepath.Join(b.TempDir(), fmt.Sprintf("q%d.db", i)), quietLogger, defaultTuning().updateBackoff)
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		for range n {
			if _, err := q.enqueue(taskID(1), payload); err != nil {
				b.Fatal(err)
			}
		}
		mid := time.Now()
		if err := q.flush(context.Background(), deliverer{send: m.postUpdate}); err != nil || q.len() != 0 {
			b.Fatalf("flush: %v, %d left", err, q.len())
		}
		enqueue += mid.Sub(start)
		forward += time.Since(mid)
		q.close()
	}
	b.ReportMetric(float64(n*b.N)/enqueue.Seconds(), "enqueues/s")
	b.ReportMetric(float64(n*b.N)/forward.Seconds(), "forwards/s")
}

// BenchmarkOutputPath runs a subprocess printing 200 000 lines of 80 bytes
// through the real path: line reader → batching reporter → committer →
// SQLite queue. It reports the worker's CPU time per line.
func BenchmarkOutputPath(b *testing.B) {
	const lines = 200_000
	cfg := defaultConfig()
	env := testEnv()
	var cpu time.Duration
	for i := 0; b.Loop(); i++ {
		q, err := openQueue(filepath.Join(b.TempDir(), fmt.Sprintf("q%d.db", i)), quietLogger, defaultTuning().updateBackoff)
		if err != nil {
			b.Fatal(err)
		}
		out := make(chan outgoing, 4)
		done := make(chan struct{})
		go func() { q.commit(context.Background(), out); close(done) }()
		rep := newReporter(taskID(1), &cfg, out)
		c := &cmdCtx{name: "exec", taskID: rep.taskID, rep: rep, env: env, timing: newTiming()}
		cmd := fmt.Sprintf(`yes %s | head -n %d`, strings.Repeat("x", 79), lines)
		before := cpuTime()
		if err := c.subprocess(context.Background(), []string{"sh", "-c", cmd}, nil); err != nil {
			b.Fatal(err)
		}
		rep.close()
		close(out)
		<-done
		cpu += cpuTime() - before
		if q.len() < lines/cfg.PushLogMaxEntries {
			b.Fatalf("only %d updates queued", q.len())
		}
		q.close()
	}
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(lines*b.N)/1000, "cpu-µs/line")
	b.ReportMetric(float64(lines*b.N)/b.Elapsed().Seconds(), "lines/s")
}

// BenchmarkAbortLatency measures from the abort (may-i-run said no, or an
// update got a 409: the task's context is cancelled) to the last process
// of the task's group being gone, for a child that honours SIGTERM and for
// one that ignores it (then SIGKILL follows after the 5 s grace period).
func BenchmarkAbortLatency(b *testing.B) {
	for _, c := range []struct{ name, script string }{
		{"honours-TERM", `echo started; exec sleep 60`},
		{"ignores-TERM", `trap "" TERM; echo started; sleep 60 & wait`},
	} {
		b.Run(c.name, func(b *testing.B) {
			env := testEnv()
			env.killGrace = 5 * time.Second
			var total time.Duration
			for i := 0; b.Loop(); i++ {
				out := make(chan outgoing, 1<<10)
				cfg := defaultConfig()
				rep := newReporter(taskID(1), &cfg, out)
				c2 := &cmdCtx{name: "exec", taskID: rep.taskID, rep: rep, env: env, timing: newTiming()}
				ctx, cancel := context.WithCancel(context.Background())
				started := make(chan int, 1)
				done := make(chan time.Time, 1)
				go func() {
					c2.subprocess(ctx, []string{"sh", "-c", c.script}, func(string) { started <- int(rep.pid.Load()) })
					done <- time.Now()
				}()
				pgid := <-started
				t0 := time.Now()
				cancel()
				<-done
				for len(liveGroupMembers(pgid)) > 0 {
				}
				total += time.Since(t0)
				rep.close()
			}
			b.ReportMetric(float64(total.Microseconds())/float64(b.N)/1000, "ms/abort")
		})
	}
}
