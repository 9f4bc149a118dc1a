package main

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// maxLogBytes bounds the log text of one task update.
const maxLogBytes = 1 << 20

// taskUpdate is the body of POST /tasks/{id}/update (spec/manager-v2.md §2.2).
// The percentages and the index are JSON integers; the Manager rejects floats.
type taskUpdate struct {
	TaskStatus                string       `json:"task_status,omitempty"`
	Activity                  string       `json:"activity"`
	CurrentCommandIdx         int          `json:"current_command_idx"`
	TaskProgressPercentage    int          `json:"task_progress_percentage"`
	CommandProgressPercentage int          `json:"command_progress_percentage"`
	Log                       string       `json:"log,omitempty"` // spliced in by pushLocked
	Metrics                   *taskMetrics `json:"metrics,omitempty"`
}

type taskMetrics struct {
	Timing map[string]float64 `json:"timing"`
}

// reporter batches one task's activity, progress and log lines into task
// updates the way the Python worker does (spec/python-worker.md §3.4–3.5):
// a status change goes out at once, activity at most every
// push_act_max_interval, log lines when push_log_max_entries are waiting
// (the Python worker waited for one more) or push_log_max_interval has
// passed. Updates leave through out, in order; out is bounded, so a stalled
// queue slows the task down instead of growing memory.
type reporter struct {
	taskID      string
	nCommands   int
	logMax      int
	logInterval time.Duration
	actInterval time.Duration
	out         chan<- outgoing

	// mu guards the state below and is never held while blocking on out:
	// a stalled queue (a full disk) must not block silence or the SIGUSR1
	// summary. outMu makes the hand-off to out one goroutine at a time, so
	// that updates keep their order.
	mu       sync.Mutex
	outMu    sync.Mutex
	pending  [][]byte // built updates not yet handed to out
	closed   bool
	silent   bool // aborted by the Manager: only log lines go out
	status   string
	act      taskUpdate // activity, index and percentages
	timing   map[string]float64
	logBuf   []byte // "<timestamp>: <text>\n" lines, valid UTF-8
	stamp    []byte // the timestamp up to the seconds, of stampSec
	stampSec int64
	logLines int
	lastAct  time.Time
	lastLog  time.Time
	actTimer *time.Timer
	logTimer *time.Timer

	pid atomic.Int64 // the running subprocess, for the SIGUSR1 summary and a forced exit
}

func newReporter(taskID string, cfg *Config, out chan<- outgoing) *reporter {
	now := time.Now()
	return &reporter{
		taskID:      taskID,
		nCommands:   1,
		logMax:      cfg.PushLogMaxEntries,
		logInterval: cfg.PushLogMaxInterval,
		actInterval: cfg.PushActMaxInterval,
		out:         out,
		timing:      map[string]float64{},
		lastAct:     now,
		lastLog:     now,
	}
}

// log queues one log line, prefixed with the current UTC time.
func (r *reporter) log(text string) { r.logAt(time.Now(), text) }

func (r *reporter) logf(format string, args ...any) { r.log(fmt.Sprintf(format, args...)) }

func (r *reporter) logAt(t time.Time, text string) {
	if len(text) > maxLogBytes/2 {
		text = fmt.Sprintf("%s… (%d bytes cut)", text[:maxLogBytes/2], len(text)-maxLogBytes/2)
	}
	r.logOutput(t, strings.ToValidUTF8(text, "\uFFFD"), nil)
}

// logOutput queues one line of subprocess output, prefix (e.g. "pid=12 > ")
// then line, which must be valid UTF-8. This is the hot path of a chatty
// subprocess: it appends straight into the batch, without allocating.
func (r *reporter) logOutput(t time.Time, prefix string, line []byte) {
	r.mu.Lock()
	defer r.unlock() // hands built updates on, unlocked
	if r.closed {
		return
	}
	r.startLineLocked(t, len(prefix)+len(line))
	r.logBuf = append(r.logBuf, prefix...)
	r.logBuf = append(r.logBuf, line...)
	r.endLineLocked(t)
}

// startLineLocked makes room for a line of n bytes (pushing first if the
// batch would pass maxLogBytes) and appends its "<timestamp>: ", RFC 3339
// UTC with microseconds: 2006-01-02T15:04:05.000000+00:00. The seconds are
// formatted once a second and the microseconds by hand: AppendFormat for
// every line costs 409 ns instead of 16, 0.4 CPU-s per million lines
// against the budget's 1.5 (bench/output.sh).
func (r *reporter) startLineLocked(t time.Time, n int) {
	if len(r.logBuf)+n+40 > maxLogBytes {
		r.pushLocked()
	}
	t = t.UTC()
	if sec := t.Unix(); sec != r.stampSec || r.stamp == nil {
		r.stamp = t.AppendFormat(r.stamp[:0], "2006-01-02T15:04:05")
		r.stampSec = sec
	}
	r.logBuf = append(r.logBuf, r.stamp...)
	micro := t.Nanosecond() / 1000
	r.logBuf = append(r.logBuf, '.',
		byte('0'+micro/100000), byte('0'+micro/10000%10), byte('0'+micro/1000%10),
		byte('0'+micro/100%10), byte('0'+micro/10%10), byte('0'+micro%10))
	r.logBuf = append(r.logBuf, "+00:00: "...)
}

// endLineLocked ends a line and pushes per the batching rules.
func (r *reporter) endLineLocked(t time.Time) {
	r.logBuf = append(r.logBuf, '\n')
	r.logLines++
	switch {
	case r.logLines >= r.logMax || t.Sub(r.lastLog) > r.logInterval: // never more than push_log_max_entries lines in one update
		r.pushLocked()
	case r.logTimer == nil:
		r.logTimer = time.AfterFunc(r.logInterval, r.flush)
	}
}

// setStatus sets the task status; a change is pushed at once.
func (r *reporter) setStatus(status, activity string) {
	r.change(func(u *taskUpdate) {
		if activity != "" {
			u.Activity = activity
		}
	}, status)
}

// setActivity replaces the activity text.
func (r *reporter) setActivity(activity string) {
	r.change(func(u *taskUpdate) { u.Activity = activity }, "")
}

// commandStarted and commandFinished record that command idx of n begins
// or completed successfully.
func (r *reporter) commandStarted(idx int, name string)  { r.command(idx, "starting "+name, 0) }
func (r *reporter) commandFinished(idx int, name string) { r.command(idx, "finished "+name, 1) }

func (r *reporter) command(idx int, activity string, frac float64) {
	r.change(func(u *taskUpdate) {
		u.Activity, u.CurrentCommandIdx = activity, idx
		u.CommandProgressPercentage, u.TaskProgressPercentage = int(frac*100), r.taskPercent(idx, frac)
	}, "")
}

// progress sets the current command's progress, a fraction from 0 to 1.
func (r *reporter) progress(frac float64) {
	frac = min(max(frac, 0), 1)
	r.change(func(u *taskUpdate) {
		pct := int(frac * 100)
		if pct == u.CommandProgressPercentage {
			return
		}
		u.CommandProgressPercentage = pct
		u.TaskProgressPercentage = r.taskPercent(u.CurrentCommandIdx, frac)
	}, "")
}

// taskPercent is (commands done + current fraction) / commands, in percent.
func (r *reporter) taskPercent(idx int, frac float64) int {
	return int((float64(idx) + frac) / float64(r.nCommands) * 100)
}

// addTiming adds a command's timing to the task's aggregate (summing names).
func (r *reporter) addTiming(t map[string]float64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, v := range t {
		r.timing[k] += v
	}
}

// timingJSON renders the aggregate timing for the "Aggregated task timing info" line.
func (r *reporter) timingJSON() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return timingString(r.timing)
}

func timingString(t map[string]float64) string {
	parts := make([]string, 0, len(t))
	for _, k := range slices.Sorted(maps.Keys(t)) {
		kj, _ := json.Marshal(k)
		parts = append(parts, fmt.Sprintf("%s: %s", kj, pythonNumber(json.Number(fmt.Sprintf("%.6f", t[k])))))
	}
	return "{" + strings.Join(parts, ", ") + "}"
}

// change applies fn to the activity and pushes per the batching rules.
func (r *reporter) change(fn func(*taskUpdate), status string) {
	r.mu.Lock()
	defer r.unlock() // hands built updates on, unlocked
	if r.closed {
		return
	}
	fn(&r.act)
	switch {
	case status != "" && status != r.status:
		r.status = status
		r.pushLocked()
	case time.Since(r.lastAct) > r.actInterval:
		r.pushLocked()
	case r.actTimer == nil:
		r.actTimer = time.AfterFunc(r.actInterval, r.flush)
	}
}

// silence stops status and activity from being sent for this task: the
// Manager took it away, so only log lines may still go out.
func (r *reporter) silence() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.silent = true
}

// flush pushes whatever is pending; the batching timers call it too.
func (r *reporter) flush() {
	r.mu.Lock()
	defer r.unlock() // hands built updates on, unlocked
	if !r.closed && (r.actTimer != nil || r.logTimer != nil || r.logLines > 0) {
		r.pushLocked()
	}
}

// close flushes and stops the timers; later calls do nothing.
func (r *reporter) close() {
	r.flush()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
}

// pushLocked encodes the current state for the queue; unlock hands it on.
// The log text, the bulk of a chatty task's updates, is escaped straight
// from the batch buffer into the JSON instead of going through a string.
func (r *reporter) pushLocked() {
	now := time.Now()
	var logText []byte
	if r.logLines > 0 {
		logText = r.logBuf[:len(r.logBuf)-1] // no trailing newline
		r.logLines, r.lastLog = 0, now
		stopTimer(&r.logTimer)
	}
	if r.silent && logText == nil {
		return
	}
	payload := []byte("{}") // silent: only the log lines
	if !r.silent {
		u := r.act
		u.TaskStatus = r.status
		if len(r.timing) > 0 {
			u.Metrics = &taskMetrics{Timing: r.timing}
		}
		payload, _ = json.Marshal(u) // plain structs: cannot fail
		r.lastAct = now
		stopTimer(&r.actTimer)
	}
	if logText != nil {
		head := payload[:len(payload)-1]
		payload = append(make([]byte, 0, len(head)+len(logText)+32), head...)
		if len(head) > 1 {
			payload = append(payload, ',')
		}
		payload = append(appendJSONString(append(payload, `"log":`...), logText), '}')
	}
	r.logBuf = r.logBuf[:0]
	r.pending = append(r.pending, payload)
}

// unlock releases mu, then hands the updates built meanwhile to out. A
// full out blocks the caller (the task's output slows down), with mu free.
func (r *reporter) unlock() {
	more := len(r.pending) > 0
	r.mu.Unlock()
	if !more {
		return
	}
	r.outMu.Lock()
	defer r.outMu.Unlock()
	for {
		r.mu.Lock()
		if len(r.pending) == 0 {
			r.pending = r.pending[:0:0]
			r.mu.Unlock()
			return
		}
		p := r.pending[0]
		r.pending[0] = nil
		r.pending = r.pending[1:]
		r.mu.Unlock()
		r.out <- outgoing{taskID: r.taskID, payload: p}
	}
}

// needsEscape8 reports whether any of the eight bytes in x is a control
// character, '"' or '\\' (the classic "has a byte less than n" and "has a
// zero byte" bit tricks; bytes of multi-byte UTF-8 never match).
func needsEscape8(x uint64) bool {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	hasZero := func(v uint64) uint64 { return (v - ones) & ^v & highs }
	control := (x - 0x20*ones) & ^x & highs
	return control|hasZero(x^('"'*ones))|hasZero(x^('\\'*ones)) != 0
}

// appendJSONString appends s, valid UTF-8, as a JSON string: 866 MB/s
// against json.Marshal's 267 (and its copy to a string), on the hot path of
// every log line.
func appendJSONString(dst, s []byte) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		// Skip eight plain bytes at a time: most log text needs no escaping.
		for i+8 <= len(s) && !needsEscape8(binary.LittleEndian.Uint64(s[i:])) {
			i += 8
		}
		if i >= len(s) {
			break
		}
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		dst = append(dst, s[start:i]...)
		if k := strings.IndexByte("\"\\\n\r\t", c); k >= 0 {
			dst = append(dst, '\\', "\"\\nrt"[k])
		} else {
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
		start = i + 1
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

func stopTimer(t **time.Timer) {
	if *t != nil {
		(*t).Stop()
		*t = nil
	}
}

// snapshot is the task's visible state, for the SIGUSR1 summary.
func (r *reporter) snapshot() (u taskUpdate, pid int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.act, int(r.pid.Load())
}
