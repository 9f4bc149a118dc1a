package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestLoadManager serves a minimal Flamenco Manager for the measurement
// scripts in bench/ when FW_BENCH_MANAGER=host:port is set; otherwise it
// skips. It accepts any credentials, hands out the task in FW_BENCH_TASK
// (a JSON file) once, answers 204 to every other fetch, accepts every
// update, and appends one line per request to FW_BENCH_EVENTS:
// "<unix nanoseconds> <method> <path> <bytes>". It stops on SIGTERM.
func TestLoadManager(t *testing.T) {
	addr := os.Getenv("FW_BENCH_MANAGER")
	if addr == "" {
		t.Skip("FW_BENCH_MANAGER not set: this serves the bench/ scripts")
	}
	var task []byte
	if path := os.Getenv("FW_BENCH_TASK"); path != "" {
		var err error
		if task, err = os.ReadFile(path); err != nil {
			t.Fatal(err)
		}
	}
	events := io.Discard
	if path := os.Getenv("FW_BENCH_EVENTS"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		events = f
	}
	lm := &loadManager{task: task, events: events}
	srv := &http.Server{Addr: addr, Handler: lm}
	go srv.ListenAndServe()
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
	srv.Close()
}

type loadManager struct {
	mu      sync.Mutex
	task    []byte
	served  bool
	workers int
	events  io.Writer // unbuffered: the scripts read it while it runs
}

func (lm *loadManager) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n, _ := io.Copy(io.Discard, r.Body)
	now := time.Now().UnixNano()
	lm.mu.Lock()
	fmt.Fprintf(lm.events, "%d %s %s %d\n", now, r.Method, r.URL.Path, n)
	lm.mu.Unlock()
	switch {
	case r.URL.Path == "/register-worker":
		lm.mu.Lock()
		lm.workers++
		id := fmt.Sprintf("5eb000000000000000%06d", lm.workers)
		lm.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"_id": %q}`+"\n", id)
	case r.URL.Path == "/task":
		lm.mu.Lock()
		give := lm.task != nil && !lm.served
		lm.served = lm.served || give
		lm.mu.Unlock()
		if !give {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(lm.task)
	case strings.HasPrefix(r.URL.Path, "/may-i-run/"):
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"may_keep_running": true}`+"\n")
	default:
		w.WriteHeader(http.StatusNoContent)
	}
}
