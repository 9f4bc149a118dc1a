package main

import (
	"context"
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
