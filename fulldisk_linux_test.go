package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestFullDisk runs a task whose queue lives on a real, small tmpfs that
// fills up mid-task. While the disk is full the worker keeps running: no
// update reaches the Manager twice (a row whose removal failed is not sent
// again), the Manager is not hammered, SIGUSR1 still dumps at once. Once
// space is back, every line arrives, in order, and the task completes.
func TestFullDisk(t *testing.T) {
	t.Parallel()
	disk := t.TempDir()
	if err := syscall.Mount("tmpfs", disk, "tmpfs", 0, "size=4m"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("cannot mount a small tmpfs (CI runs as root): %v", err)
		}
		t.Skipf("cannot mount a small tmpfs (needs root): %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(disk, syscall.MNT_DETACH) })
	f := newFarm(t, "task_update_queue_db = "+filepath.Join(disk, "queue.db")+"\npush_log_max_entries = 5").registered()
	id := taskID(1)
	lines := 400 // 4 s of output: the disk fills and frees up mid-task
	if raceEnabled {
		lines = 250 // still running when space is back (about 1.5 s in)
	}
	f.fm.queueTask(id, execCmd(fmt.Sprintf(`sh -c 'i=0; while [ $i -lt %d ]; do echo "line $i"; i=$((i+1)); sleep 0.01; done'`, lines)))
	p := f.start()
	waitFor(t, 15*time.Second, "the first lines at the Manager", func() bool { return strings.Contains(f.fm.logText(id), "> line 5") })

	// Fill the disk: the rest of the tmpfs goes to one file.
	filler, err := os.Create(filepath.Join(disk, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 64<<10)
	for {
		if _, err := filler.Write(chunk); err != nil {
			break // ENOSPC
		}
	}
	filler.Close()
	waitFor(t, 15*time.Second, "the worker to notice the full disk", func() bool {
		return strings.Contains(p.out.String(), "cannot store a task update, retrying")
	})
	sentWhileFull := f.fm.count("POST /tasks/" + id + "/update")
	p.signal(syscall.SIGUSR1)
	waitFor(t, 10*time.Second, "the SIGUSR1 dump while the disk is full", func() bool {
		return strings.Contains(p.out.String(), "=== end of dump ===")
	})
	time.Sleep(time.Second) // the disk stays full a while: the worker must not spin
	if n := f.fm.count("POST /tasks/" + id + "/update"); n > sentWhileFull+20 {
		t.Errorf("%d updates sent in the second the disk was full", n-sentWhileFull)
	}

	os.Remove(filepath.Join(disk, "filler"))
	waitFor(t, 30*time.Second, "the task to complete", func() bool { return f.fm.taskStatus(id) == "completed" })
	p.stop()

	seen := map[string]bool{}
	for _, u := range f.fm.taskUpdates(id) {
		if seen[u.Raw] {
			t.Errorf("an update arrived twice: %.120s", u.Raw)
		}
		seen[u.Raw] = true
	}
	// The committer retries a line it cannot store, it does not drop it
	// (the child waits on its full pipe meanwhile): every line arrives,
	// once and in order.
	next := 0
	for _, m := range regexp.MustCompile(`> line (\d+)`).FindAllStringSubmatch(f.fm.logText(id), -1) {
		if n, _ := strconv.Atoi(m[1]); n != next {
			t.Fatalf("line %d arrived where line %d was due", n, next)
		}
		next++
	}
	if next != lines {
		t.Errorf("%d of %d lines arrived", next, lines)
	}
}
