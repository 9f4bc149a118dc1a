package main

import (
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestUnwritableHomeRefusesRegistration: HOME is a read-only file system,
// so the credentials could not be kept; the worker must not register (each
// restart would add a worker to the Manager) but exit 1 naming the file.
func TestUnwritableHomeRefusesRegistration(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "")
	if err := syscall.Mount("tmpfs", f.home, "tmpfs", syscall.MS_RDONLY, "size=64k"); err != nil {
		t.Skipf("cannot mount a read-only tmpfs as HOME (needs root): %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(f.home, syscall.MNT_DETACH) })
	p := f.start()
	if code := p.wait(15 * time.Second); code != 1 {
		t.Fatalf("exit code = %d, want 1", code)
	}
	out := p.out.String()
	for _, want := range []string{"not registering at the Manager", filepath.Join(f.home, ".flamenco-worker.cfg"), "read-only file system"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if n := f.fm.count("POST /register-worker"); n != 0 {
		t.Errorf("%d registrations sent, want none: %v", n, f.fm.callPaths())
	}
}

// maxCycles is the most sign-on cycles (each with at most one registration)
// that can start within window when the pauses between them start at
// base and double, each at least 3/4 of its nominal length (the jitter).
func maxCycles(window, base time.Duration) int {
	n, spent := 1, time.Duration(0)
	for d := base * 3 / 4; spent+d <= window; d *= 2 {
		spent += d
		n++
	}
	return n
}

// TestRefusedCredentialsBackOff: behind a proxy that drops the
// Authorization header every authenticated call is a 401. The worker may
// register again, but at most once per backoff step, and it recovers when
// the proxy is fixed.
func TestRefusedCredentialsBackOff(t *testing.T) {
	t.Parallel()
	const window = 2 * time.Second
	base := testTuning().registerRetry
	dropAuth := func(fm *fakeManager) {
		fm.hijack = func(w http.ResponseWriter, r *http.Request) bool {
			if r.URL.Path == "/register-worker" {
				return false
			}
			http.Error(w, "401 Unauthorized", http.StatusUnauthorized)
			return true
		}
	}
	for _, midRun := range []bool{false, true} {
		name := map[bool]string{false: "at start-up", true: "mid-run"}[midRun]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f := newFarm(t, "").registered()
			if !midRun {
				f.fm.set(dropAuth)
			}
			p := f.start()
			if midRun {
				waitFor(t, 10*time.Second, "a fetch", func() bool { return f.fm.count("POST /task") > 0 })
				f.fm.set(dropAuth)
			}
			start := time.Now()
			time.Sleep(window) // the observation window itself, not a synchronisation
			regs, bound := f.fm.count("POST /register-worker"), maxCycles(time.Since(start), base)
			t.Logf("%d registrations in %v (bound %d with a %v base delay)", regs, time.Since(start).Round(time.Millisecond), bound, base)
			if regs > bound {
				t.Errorf("%d registrations in %v, want at most %d", regs, window, bound)
			}
			select {
			case <-p.done:
				t.Fatalf("the worker exited (code %d) instead of backing off", p.code)
			default:
			}
			if !strings.Contains(p.out.String(), "is a proxy dropping the Authorization header?") {
				t.Errorf("no warning about the refused credentials:\n%s", p.out.String())
			}

			f.fm.set(func(fm *fakeManager) { fm.hijack = nil })
			waitFor(t, 20*time.Second, "an accepted fetch once the proxy is fixed", func() bool {
				f.fm.mu.Lock()
				defer f.fm.mu.Unlock()
				last := f.fm.calls[len(f.fm.calls)-1]
				return last.Path == "/task" && last.Status == http.StatusNoContent
			})
			p.stop()
		})
	}
}

func TestRegistrationSecret(t *testing.T) {
	t.Parallel()
	t.Run("right secret: Bearer JWT accepted", func(t *testing.T) {
		f := newFarm(t, "worker_registration_secret = let-me-in")
		f.fm.set(func(fm *fakeManager) { fm.regSecret = "let-me-in" })
		p := f.start()
		waitFor(t, 10*time.Second, "a task fetch", func() bool { return f.fm.count("POST /task") > 0 })
		p.stop()
	})
	t.Run("wrong secret: clear error, exit 1", func(t *testing.T) {
		f := newFarm(t, "worker_registration_secret = wrong")
		f.fm.set(func(fm *fakeManager) { fm.regSecret = "let-me-in" })
		p := f.start()
		if code := p.wait(10 * time.Second); code != 1 {
			t.Errorf("exit code = %d, want 1", code)
		}
		if out := p.out.String(); !strings.Contains(out, "worker_registration_secret") {
			t.Errorf("output does not name worker_registration_secret:\n%s", out)
		}
		if f.fm.count("POST /register-worker") != 1 {
			t.Errorf("registration retried after a 403: %v", f.fm.callPaths())
		}
	})
}

func TestManagerForgetsWorkerMidRun(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "").registered()
	p := f.start()
	waitFor(t, 10*time.Second, "a task fetch", func() bool { return f.fm.count("POST /task") > 0 })
	// The Manager's database is reset: our credentials are unknown now.
	f.fm.set(func(fm *fakeManager) { fm.workers = map[string]string{} })
	f.fm.queueTask(taskID(1), echoCmd("after the reset"))
	waitFor(t, 10*time.Second, "the task to complete", func() bool { return f.fm.taskStatus(taskID(1)) == "completed" })
	p.stop()
	if f.fm.count("POST /register-worker") != 1 {
		t.Errorf("calls = %v, want one re-registration", f.fm.callPaths())
	}
}
