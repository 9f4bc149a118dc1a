package main

import (
	"time"
)

// tuning holds the worker's delays and limits (spec/python-worker.md
// §6.10, constants in the Python worker): each is a [flamenco-worker] key
// (configKeys), with defaultTuning's value as its default. loadConfig
// builds one tuning value, and each constructor takes what it needs from it.
type tuning struct {
	intervals
	registerRetry time.Duration // between registration/sign-on attempts
	killGrace     time.Duration // SIGTERM → SIGKILL
	fileWait      time.Duration // grace for a blend file on a slow share
	outputWindow  time.Duration // /output-produced at most once per window
	updateBackoff backoff       // retry delays of the update forwarder
	http          httpTimeouts
	ssdpTargets   []string  // where discovery searches for the Manager (not a key)
	testHooks     testHooks // nil functions in production (not a key)
}

// backoff is an exponential retry delay: it starts at min and doubles up to max.
type backoff struct{ min, max time.Duration }

// httpTimeouts bound every request to the Manager. There is no overall
// deadline: a large body takes as long as it keeps moving.
type httpTimeouts struct {
	connect time.Duration // TCP connect and TLS handshake
	header  time.Duration // from the request sent to the response headers
	idle    time.Duration // longest pause while a body is sent or read
}

// defaultTuning is the default of every tuning key, the Python worker's
// value where it has one.
func defaultTuning() tuning {
	return tuning{
		intervals:     intervals{fetchEmpty: 5 * time.Second, fetchFailed: 10 * time.Second, asleepPoll: 30 * time.Second, queueLimit: 10},
		registerRetry: 30 * time.Second,
		killGrace:     5 * time.Second,
		fileWait:      5 * time.Second,
		outputWindow:  30 * time.Second,
		updateBackoff: backoff{min: 500 * time.Millisecond, max: time.Minute},
		// Python: 3 s for connect and read. The response may take a little
		// longer here, since a POST that times out is sent again.
		http: httpTimeouts{connect: 3 * time.Second, header: 5 * time.Second, idle: 5 * time.Second},
		// IPv4 multicast, and IPv6 site-local, as the Python worker.
		ssdpTargets: []string{"239.255.255.250:1900", "[ff05::c]:1900"},
	}
}

// intervals are the fetch loop's delays and limit (part of tuning).
type intervals struct {
	fetchEmpty  time.Duration // after a 204 on /task
	fetchFailed time.Duration // after an error on /task, or a full queue
	asleepPoll  time.Duration // /status-change while asleep
	queueLimit  int           // no fetch while more updates than this are queued
}

// testHooks let the end-to-end tests reach into a real worker process.
type testHooks struct {
	signalsCaught func()            // right after catchSignals
	beat          func(loop string) // at every heartbeat of a loop (see liveness)
}
