package main

import (
	"context"
	"path/filepath"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// heapPeak samples the Go heap until stop is closed and returns the peak.
func heapPeak(stop <-chan struct{}) <-chan uint64 {
	peak := make(chan uint64, 1)
	go func() { // ends when stop is closed
		var peakSoFar uint64
		var ms runtime.MemStats
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			runtime.ReadMemStats(&ms)
			peakSoFar = max(peakSoFar, ms.HeapInuse)
			select {
			case <-stop:
				peak <- peakSoFar
				return
			case <-tick.C:
			}
		}
	}()
	return peak
}

// TestOutputMemoryIsBounded runs subprocesses that print what no render
// should (millions of lines, one enormous line, binary garbage) through
// the real path into a queue whose Manager is down, and checks the Go heap
// stays bounded and the batching limits hold.
func TestOutputMemoryIsBounded(t *testing.T) {
	// The race detector makes each line ~10x slower: smaller inputs, with
	// a heap limit well below each input's size so that buffering a whole
	// line (or the whole output) still fails.
	lines, lineMB, garbageMB, lineLimit, garbageLimit := 2_000_000, 200, 50, 96, 40
	if raceEnabled {
		lines, lineMB, garbageMB, lineLimit, garbageLimit = 200_000, 32, 8, 24, 7
	}
	cases := []struct {
		name, cmd string
		limitMiB  int
	}{
		{"many short lines", "yes 'Fra:1 Mem:12.34M (Peak 56.78M) | Time:00:01.23 | Sample 3/4' | head -n " + strconv.Itoa(lines), lineLimit},
		{"one long line without a newline", "head -c " + strconv.Itoa(lineMB<<20) + " /dev/zero | tr '\\0' x", lineLimit},
		{"binary garbage", "head -c " + strconv.Itoa(garbageMB<<20) + " /dev/urandom", garbageLimit},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			runtime.GC()
			q := mustOpenQueue(t, filepath.Join(t.TempDir(), "q.db"), quietLogger)
			cfg := defaultConfig()
			out := make(chan outgoing, 4)
			var maxLog atomic.Int64
			committed := make(chan outgoing, 4)
			go func() { // ends when out is closed: measures each update on its way
				for o := range out {
					if n := int64(len(o.payload)); n > maxLog.Load() {
						maxLog.Store(n)
					}
					committed <- o
				}
				close(committed)
			}()
			done := make(chan struct{})
			go func() { q.commit(context.Background(), committed); close(done) }()
			rep := newReporter(taskID(1), &cfg, out)
			c2 := &cmdCtx{name: "exec", taskID: rep.taskID, rep: rep, env: testEnv(), timing: newTiming()}
			stop := make(chan struct{})
			peak := heapPeak(stop)
			err := c2.subprocess(context.Background(), []string{"sh", "-c", c.cmd}, func(string) {})
			rep.close()
			close(out)
			<-done
			close(stop)
			p := <-peak
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("heap peak %d MiB, %d updates queued, largest %d KiB", p>>20, q.len(), maxLog.Load()>>10)
			if p > uint64(c.limitMiB)<<20 {
				t.Errorf("heap peaked at %d MiB", p>>20)
			}
			if maxLog.Load() > maxLogBytes+64<<10 {
				t.Errorf("an update of %d bytes", maxLog.Load())
			}
		})
	}
}
