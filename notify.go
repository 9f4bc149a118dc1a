package main

import (
	"context"
	"net"
	"os"
	"strconv"
	"time"
)

// sdNotify sends a state line ("READY=1", "STOPPING=1", "WATCHDOG=1") to
// systemd when it runs us as Type=notify; without $NOTIFY_SOCKET it does
// nothing. Errors are ignored: systemd readiness is a courtesy.
func sdNotify(state string) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return
	}
	if path[0] == '@' { // abstract socket namespace
		path = "\x00" + path[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return
	}
	defer conn.Close()
	conn.Write([]byte(state))
}

// watchdogInterval is half of $WATCHDOG_USEC (systemd's advice), or 0 when
// the watchdog is off or meant for another process.
func watchdogInterval() time.Duration {
	usec, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || usec <= 0 {
		return 0
	}
	if pid := os.Getenv("WATCHDOG_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return 0
	}
	return time.Duration(usec) * time.Microsecond / 2
}

// keepWatchdogFed pings systemd's watchdog until ctx ends.
func keepWatchdogFed(ctx context.Context, every time.Duration) {
	if every <= 0 {
		return
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			sdNotify("WATCHDOG=1")
		}
	}
}
