package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestOutputNotifierNewestWins(t *testing.T) {
	var mu sync.Mutex
	var sent []string
	n := newOutputNotifier(func(_ context.Context, p string) error {
		mu.Lock()
		defer mu.Unlock()
		sent = append(sent, p)
		return nil
	}, 200*time.Millisecond, quietLogger)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { n.run(ctx); close(done) }()
	got := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), sent...)
	}
	n.notify("frame-1.png")
	waitFor(t, 5*time.Second, "the first path", func() bool { return len(got()) == 1 })
	n.notify("frame-2.png") // inside the window: replaced by the newer one
	n.notify("frame-3.png")
	waitFor(t, 5*time.Second, "the window to end", func() bool { return len(got()) == 2 })
	cancel()
	<-done
	if s := got(); s[0] != "frame-1.png" || s[1] != "frame-3.png" {
		t.Errorf("sent %v, want frame-1 at once and frame-3 (the newest) after the window", s)
	}
}

func TestOutputProducedReachesManager(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "").registered()
	src, dest := filepath.Join(f.dir, "frame.png"), filepath.Join(f.dir, "out", "frame.png")
	writeFile(t, src, "png")
	f.fm.queueTask(taskID(1), fmt.Sprintf(`{"name": "copy_file", "settings": {"src": %q, "dest": %q}}`, src, dest))
	p := f.start()
	waitFor(t, 10*time.Second, "the output notification", func() bool { return f.fm.count("POST /output-produced") == 1 })
	p.stop()
	f.fm.mu.Lock()
	defer f.fm.mu.Unlock()
	for _, c := range f.fm.calls {
		if c.Path == "/output-produced" && (c.Status != 204 || !strings.Contains(c.Body, dest)) {
			t.Errorf("output-produced: %d %s", c.Status, c.Body)
		}
	}
}
