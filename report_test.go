package main

import (
	"encoding/json"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// testReporter returns a reporter with the given batching settings and the
// channel its updates leave through.
func testReporter(logMax int, logInterval, actInterval time.Duration) (*reporter, chan outgoing) {
	cfg := defaultConfig()
	cfg.PushLogMaxEntries, cfg.PushLogMaxInterval, cfg.PushActMaxInterval = logMax, logInterval, actInterval
	out := make(chan outgoing, 100)
	return newReporter(taskID(1), &cfg, out), out
}

func drain(out chan outgoing) []map[string]any {
	var ups []map[string]any
	for {
		select {
		case o := <-out:
			var m map[string]any
			json.Unmarshal(o.payload, &m)
			ups = append(ups, m)
		default:
			return ups
		}
	}
}

func TestReporterBatching(t *testing.T) {
	t.Run("status change goes out at once, activity waits", func(t *testing.T) {
		rep, out := testReporter(1000, time.Hour, time.Hour)
		rep.setActivity("one")
		if ups := drain(out); len(ups) != 0 {
			t.Fatalf("activity pushed before its interval: %v", ups)
		}
		rep.setStatus("active", "")
		ups := drain(out)
		if len(ups) != 1 || ups[0]["activity"] != "one" || ups[0]["task_status"] != "active" {
			t.Fatalf("updates = %v, want one carrying both the activity and the status", ups)
		}
	})
	t.Run("delayed activity push carries the newest state", func(t *testing.T) {
		rep, out := testReporter(1000, time.Hour, 50*time.Millisecond)
		rep.setActivity("one")
		rep.setActivity("two")
		o := <-out
		var m map[string]any
		json.Unmarshal(o.payload, &m)
		if m["activity"] != "two" {
			t.Errorf("delayed push activity = %v, want two", m["activity"])
		}
		if ups := drain(out); len(ups) != 0 {
			t.Errorf("more than one delayed push: %v", ups)
		}
	})
	t.Run("push_log_max_entries lines push at once, never more", func(t *testing.T) {
		rep, out := testReporter(3, time.Hour, time.Hour)
		rep.log("a")
		rep.log("b")
		if ups := drain(out); len(ups) != 0 {
			t.Fatalf("pushed at 2 lines: %v", ups)
		}
		rep.log("ünits")
		rep.log("d")
		ups := drain(out)
		if len(ups) != 1 {
			t.Fatalf("want one push at the third line, got %v", ups)
		}
		lines := strings.Split(ups[0]["log"].(string), "\n")
		if len(lines) != 3 || !strings.HasSuffix(lines[2], ": ünits") || !logLineRe.MatchString(lines[0]) {
			t.Errorf("log = %q", ups[0]["log"])
		}
	})
	t.Run("log lines wait at most push_log_max_interval", func(t *testing.T) {
		rep, out := testReporter(1000, 50*time.Millisecond, time.Hour)
		rep.log("one line")
		o := <-out
		if !strings.Contains(string(o.payload), "one line") {
			t.Errorf("delayed log push = %s", o.payload)
		}
	})
	t.Run("one update never carries more than 1 MiB of log", func(t *testing.T) {
		rep, out := testReporter(1_000_000, time.Hour, time.Hour)
		line := strings.Repeat("x", 60_000)
		for range 40 {
			rep.log(line)
		}
		rep.close()
		total := 0
		for _, u := range drain(out) {
			n := len(u["log"].(string))
			if n > maxLogBytes {
				t.Errorf("update with %d bytes of log", n)
			}
			total += n
		}
		if total < 40*60_000 {
			t.Errorf("lost log text: %d bytes sent", total)
		}
	})
	t.Run("silenced task sends only logs", func(t *testing.T) {
		rep, out := testReporter(1000, time.Hour, time.Hour)
		rep.setStatus("active", "")
		drain(out)
		rep.silence()
		rep.setStatus("failed", "should not be sent")
		rep.log("stopped")
		rep.close()
		ups := drain(out)
		if len(ups) != 1 || len(ups[0]) != 1 || !strings.HasSuffix(ups[0]["log"].(string), ": stopped") {
			t.Errorf("updates after silence = %v, want one log-only update", ups)
		}
	})
	t.Run("task progress follows commands and command progress", func(t *testing.T) {
		rep, out := testReporter(1000, time.Hour, 0)
		rep.nCommands = 4
		rep.commandStarted(1, "x")
		rep.progress(0.5)
		rep.commandFinished(1, "x")
		var got []float64
		for _, u := range drain(out) {
			got = append(got, u["task_progress_percentage"].(float64))
		}
		want := []float64{25, 37, 50}
		if len(got) != 3 || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
			t.Errorf("task progress = %v, want %v", got, want)
		}
	})
}

func TestTimingString(t *testing.T) {
	tm := map[string]float64{"total": 1.5, "rendering": 1, "starting blender": 0.25}
	want := `{"rendering": 1.0, "starting blender": 0.25, "total": 1.5}`
	if got := timingString(tm); got != want {
		t.Errorf("timingString = %s, want %s", got, want)
	}
}

func TestAppendJSONString(t *testing.T) {
	cases := []string{"", "plain ascii text that is longer than eight bytes", `quote " and back\slash`,
		"tab\there\nnewline\r\x00\x01\x1f end", "ünïcødé ✓ €€€€€€€€€ and \u2028", strings.Repeat("a\"", 20), "1234567\"", "12345678\\"}
	alphabet := []byte("ab\"\\\n\x00\x1f\x7f é€")
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		b := make([]byte, rng.IntN(40))
		for i := range b {
			b[i] = alphabet[rng.IntN(len(alphabet))]
		}
		cases = append(cases, strings.ToValidUTF8(string(b), "?"))
	}
	for _, c := range cases {
		got := appendJSONString(nil, []byte(c))
		var back string
		if err := json.Unmarshal(got, &back); err != nil || back != c {
			t.Errorf("appendJSONString(%q) = %s, decodes to %q, %v", c, got, back, err)
		}
	}
}
