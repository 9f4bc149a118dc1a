package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
)

// runTaskFile runs one task from a JSON file (a Manager /task document)
// locally, with the same runner as under a Manager, and prints its updates
// to stdout. SIGINT/SIGTERM abort it. It exits 0 if the task completed.
func runTaskFile(ctx context.Context, cfg *Config, path string, stdout, stderr io.Writer, env *runEnv) int {
	body, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintf(stderr, "flamenco-worker: %v\n", err)
		return exitUsage
	}
	t, err := decodeTask(body)
	if err != nil {
		fmt.Fprintf(stderr, "flamenco-worker: %s: %v\n", path, err)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	local := *cfg // print every change as it happens
	local.PushActMaxInterval, local.PushLogMaxInterval, local.PushLogMaxEntries = 0, 0, 0
	p := &updatePrinter{w: stdout}
	out := make(chan outgoing, 4)
	printed := make(chan struct{})
	go func() { // ends when out is closed
		defer close(printed)
		for o := range out {
			p.print(o.payload)
		}
	}()
	env.output = func(path string) { p.line("output produced: " + path) }

	rep := newReporter(t.ID, &local, out)
	rep.setStatus("active", "")
	ok, err := runCommands(ctx, t, rep, env)
	rep.log("Aggregated task timing info: " + rep.timingJSON())
	if ctx.Err() != nil {
		rep.setStatus("canceled", "Task was canceled")
	} else {
		reportOutcome(rep, ok, err)
	}
	rep.close()
	close(out)
	<-printed
	if !ok {
		return exitFailure
	}
	return exitOK
}

// updatePrinter prints task updates for a person: what changed since the
// previous update, then the log lines.
type updatePrinter struct {
	mu   sync.Mutex
	w    io.Writer
	last taskUpdate
}

func (p *updatePrinter) line(s string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintln(p.w, s)
}

func (p *updatePrinter) print(payload []byte) {
	var u taskUpdate
	if err := json.Unmarshal(payload, &u); err != nil {
		p.line("unreadable update: " + string(payload))
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if u.TaskStatus != "" && u.TaskStatus != p.last.TaskStatus {
		fmt.Fprintf(p.w, "status: %s\n", u.TaskStatus)
	}
	if u.Activity != p.last.Activity && u.Activity != "" {
		fmt.Fprintf(p.w, "activity: %s\n", u.Activity)
	}
	if u.TaskProgressPercentage != p.last.TaskProgressPercentage || u.CommandProgressPercentage != p.last.CommandProgressPercentage || u.CurrentCommandIdx != p.last.CurrentCommandIdx {
		fmt.Fprintf(p.w, "progress: task %d%%, command %d at %d%%\n", u.TaskProgressPercentage, u.CurrentCommandIdx, u.CommandProgressPercentage)
	}
	if u.Log != "" {
		for _, l := range strings.Split(u.Log, "\n") {
			fmt.Fprintf(p.w, "log: %s\n", l)
		}
	}
	p.last = u
}
