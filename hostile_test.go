package main

import (
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"
)

// hostile answers the worker's /task the way broken Managers and proxies do.
var hostile = []struct {
	name  string
	serve func(w http.ResponseWriter, r *http.Request)
}{
	{"never answers", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(30 * time.Second):
		}
	}},
	{"a gigabyte body", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		chunk := []byte(strings.Repeat("x", 1<<16))
		for i := 0; i < (1<<30)/len(chunk); i++ {
			if _, err := w.Write(chunk); err != nil {
				return // the worker hung up: good
			}
		}
	}},
	{"a redirect loop", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, r.URL.Path, http.StatusFound)
	}},
	{"HTML instead of JSON", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		w.Write([]byte("<html><body>502 Bad Gateway</body></html>"))
	}},
	{"JSON of the wrong shape", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		w.Write([]byte(`{"_id": "5e1234567890abcdef0123ff", "commands": {"name": "echo"}}`))
	}},
}

func TestHostileManager(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "").registered()
	next := 0
	f.fm.set(func(fm *fakeManager) {
		fm.hijack = func(w http.ResponseWriter, r *http.Request) bool {
			if r.URL.Path != "/task" || next >= len(hostile) {
				return false
			}
			next++
			hostile[next-1].serve(w, r)
			return true
		}
	})
	f.fm.queueTask(taskID(1), echoCmd("the Manager is back"))
	p := f.start()
	waitFor(t, 30*time.Second, "a task after the hostile answers", func() bool { return f.fm.taskStatus(taskID(1)) == "completed" })
	p.stop()
	out := p.out.String()
	for _, want := range []string{"timeout awaiting response headers", "response larger than", "302 Found", "Manager sent a task we cannot read"} {
		if !strings.Contains(out, want) {
			t.Errorf("worker log lacks %q", want)
		}
	}
}

func TestManagerClientBoundsResponses(t *testing.T) {
	for _, h := range hostile[:3] {
		t.Run(h.name, func(t *testing.T) {
			fm := newFakeManager(t)
			fm.addWorker("5e0000000000000000000abc", "s")
			fm.set(func(fm *fakeManager) {
				fm.hijack = func(w http.ResponseWriter, r *http.Request) bool { h.serve(w, r); return true }
			})
			m := testManager(t, fm.URL())
			m.client.Timeout = 500 * time.Millisecond
			var before runtime.MemStats
			runtime.ReadMemStats(&before)
			var resp *response
			var err error
			returned := make(chan struct{})
			go func() { // ends when fetchTask returns
				defer close(returned)
				resp, err = m.fetchTask(t.Context())
			}()
			// A deadline, not a figure: without the client's bounds this call never returns.
			select {
			case <-returned:
			case <-time.After(30 * time.Second):
				t.Fatal("fetchTask did not return within 30 s")
			}
			if err == nil && resp.ok() {
				t.Errorf("fetchTask = %v, want an error or a non-2xx status", resp)
			}
			var after runtime.MemStats
			runtime.ReadMemStats(&after)
			if grown := int64(after.TotalAlloc) - int64(before.TotalAlloc); grown > 64<<20 {
				t.Errorf("allocated %d MiB for one response", grown>>20)
			}
		})
	}
}

func TestGarbageTaskDoesNotCrash(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "").registered()
	served := 0
	f.fm.set(func(fm *fakeManager) {
		fm.hijack = func(w http.ResponseWriter, r *http.Request) bool {
			if r.URL.Path != "/task" || served >= 3 {
				return false
			}
			served++
			w.WriteHeader(http.StatusOK)
			w.Write([]byte([]string{"<html>proxy error</html>", `{"_id": 12}`, `{"commands": "nope"`}[served-1]))
			return true
		}
	})
	f.fm.queueTask(taskID(1), echoCmd("real task"))
	p := f.start()
	waitFor(t, 15*time.Second, "the real task to complete", func() bool { return f.fm.taskStatus(taskID(1)) == "completed" })
	p.stop()
	if !strings.Contains(p.out.String(), "Manager sent a task we cannot read") {
		t.Errorf("garbage task not logged")
	}
}
