package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestQueueFileStaysSmall: updates discarded by the Manager (404) or
// delivered must give their space back, so that months of discarded
// updates do not fill the disk.
func TestQueueFileStaysSmall(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "Task is unknown.", http.StatusNotFound)
	}))
	defer srv.Close()
	m := testManager(t, srv.URL)
	path := filepath.Join(t.TempDir(), "q.db")
	q := mustOpenQueue(t, path, quietLogger)
	payload := []byte(`{"log": "` + strings.Repeat("x", 100_000) + `"}`)
	rounds := 20 // of 50 updates of 100 kB: 100 MB in all
	if raceEnabled {
		rounds = 3 // 15 MB: still nearly twice the limit below
	}
	for range rounds {
		for range 50 {
			if _, err := q.enqueue(taskID(1), payload); err != nil {
				t.Fatal(err)
			}
		}
		if err := q.flush(context.Background(), deliverer{send: m.postUpdate}); err != nil {
			t.Fatal(err)
		}
	}
	var total int64
	for _, suffix := range []string{"", "-wal", "-shm"} {
		if info, err := os.Stat(path + suffix); err == nil {
			total += info.Size()
		}
	}
	if q.len() != 0 || total > 8<<20 {
		t.Errorf("after %d MB of discarded updates: %d queued, files take %d MiB", rounds*5, q.len(), total>>20)
	}
}
