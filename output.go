package main

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// outputNotifier sends /output-produced for the Manager's "latest image",
// at most once per window. Unlike the Python worker, which dropped the
// calls inside its window, the newest path waiting at the end of a window
// is sent then, so the last image of a task is always shown.
type outputNotifier struct {
	send   func(ctx context.Context, path string) error
	window time.Duration
	logger *slog.Logger

	mu      sync.Mutex
	pending string
	wake    chan struct{}
}

func newOutputNotifier(send func(ctx context.Context, path string) error, window time.Duration, logger *slog.Logger) *outputNotifier {
	return &outputNotifier{send: send, window: window, logger: logger, wake: make(chan struct{}, 1)}
}

// notify records path as the newest output; it never blocks.
func (n *outputNotifier) notify(path string) {
	n.mu.Lock()
	n.pending = path
	n.mu.Unlock()
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

func (n *outputNotifier) take() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	p := n.pending
	n.pending = ""
	return p
}

// run sends the newest pending path, then waits out the window. It ends
// when ctx is done.
func (n *outputNotifier) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.wake:
		}
		path := n.take()
		if path == "" {
			continue
		}
		if err := n.send(ctx, path); err != nil {
			if ctx.Err() == nil {
				n.logger.Warn("Manager rejected our output notification", "path", path, "err", err)
			}
		} else {
			n.logger.Info("Manager accepted our output notification", "path", path)
		}
		if !sleepCtx(ctx, n.window) {
			return
		}
	}
}
