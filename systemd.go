package main

import (
	"context"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"
)

// sdNotify sends a state line ("READY=1", "STOPPING=1", "WATCHDOG=1",
// "STATUS=...") to systemd when it runs us as Type=notify; without
// $NOTIFY_SOCKET it does nothing. Errors are ignored: readiness is a courtesy.
func sdNotify(state string) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return
	}
	if path[0] == '@' { // abstract socket namespace
		path = "\x00" + path[1:]
	}
	if conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"}); err == nil {
		conn.Write([]byte(state))
		conn.Close()
	}
}

// watchdogTimeout is $WATCHDOG_USEC (the unit's WatchdogSec=), or 0 when
// the watchdog is off or meant for another process.
func watchdogTimeout() time.Duration {
	usec, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64)
	if pid := os.Getenv("WATCHDOG_PID"); err != nil || usec <= 0 || pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return 0
	}
	return time.Duration(usec) * time.Microsecond
}

// liveness holds the heartbeats of the worker's long-lived loops (the
// fetch loop, the update forwarder), so that the watchdog is fed only while
// every one of them makes progress or waits on purpose. A nil *liveness
// records nothing.
type liveness struct {
	hook func(loop string) // test hook, at every beat

	mu    sync.Mutex
	loops map[string]time.Time // until when each loop counts as alive: its last beat, or the end of a deliberate wait
}

// forever is the end of a wait with no deadline of its own (an empty
// queue, a running task: those have their own timeouts).
const forever = 100 * 365 * 24 * time.Hour

func newLiveness(hook func(string)) *liveness {
	return &liveness{hook: hook, loops: map[string]time.Time{}}
}

// beat records that loop made progress now.
func (l *liveness) beat(loop string) {
	l.waiting(loop, 0)
	if l != nil && l.hook != nil {
		l.hook(loop) // after the beat: a wedge here is a loop stuck in its work
	}
}

// waiting records that loop is about to wait on purpose for up to d
// (forever: as long as it takes).
func (l *liveness) waiting(loop string, d time.Duration) {
	if l != nil {
		l.mu.Lock()
		l.loops[loop] = time.Now().Add(d)
		l.mu.Unlock()
	}
}

// loopKey is the context key of a loop's waitingOnPurpose.
type loopKey struct{}

// in returns ctx naming loop, so that code deep down (a retry loop in the
// Manager client) can say it waits on purpose: waitingOnPurpose. That only
// extends a longer wait already recorded (a running task's), never shortens it.
func (l *liveness) in(ctx context.Context, loop string) context.Context {
	if l == nil {
		return ctx
	}
	return context.WithValue(ctx, loopKey{}, func(d time.Duration) {
		l.mu.Lock()
		defer l.mu.Unlock()
		if until := time.Now().Add(d); until.After(l.loops[loop]) {
			l.loops[loop] = until
		}
	})
}

// waitingOnPurpose records that the loop named by ctx (if any) waits on purpose for up to d.
func waitingOnPurpose(ctx context.Context, d time.Duration) {
	if extend, ok := ctx.Value(loopKey{}).(func(time.Duration)); ok {
		extend(d)
	}
}

// stale lists the loops that showed no sign of life for longer than limit.
func (l *liveness) stale(limit time.Duration) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for name, until := range l.loops {
		if time.Since(until) > limit {
			out = append(out, name)
		}
	}
	return out
}

// reachability tracks since when the Manager cannot be reached (a network
// error, or a proxy's 502/503/504), for the STATUS= line.
type reachability struct {
	mu    sync.Mutex
	since time.Time // zero: the last request got through
}

// note records the outcome of one request; one that ends because the
// worker stops says nothing about the Manager.
func (r *reachability) note(ctx context.Context, err error, resp *http.Response) {
	if ctx.Err() != nil {
		return
	}
	down := err != nil || resp.StatusCode == http.StatusBadGateway ||
		resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusGatewayTimeout
	r.mu.Lock()
	defer r.mu.Unlock()
	if !down {
		r.since = time.Time{}
	} else if r.since.IsZero() {
		r.since = time.Now()
	}
}

func (r *reachability) downSince() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.since
}
