package main

import (
	"archive/tar"
	"compress/gzip"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"
)

// TestDistArchive runs dist.sh for this machine's platform and checks the
// archive: the files it must hold, a static binary, the version stamp.
func TestDistArchive(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds a release binary")
	}
	out := t.TempDir()
	cmd := exec.Command("bash", "dist.sh")
	cmd.Env = append(os.Environ(), "DIST_TARGETS="+runtime.GOOS+"/"+runtime.GOARCH, "DIST_DIR="+out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("dist.sh: %v\n%s", err, b)
	}
	archives, _ := filepath.Glob(filepath.Join(out, "flamenco-worker-*-"+runtime.GOOS+"-"+runtime.GOARCH+".tar.gz"))
	if len(archives) != 1 {
		t.Fatalf("archives: %v", archives)
	}
	f, err := os.Open(archives[0])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	tr := tar.NewReader(gz)
	bin := filepath.Join(t.TempDir(), "flamenco-worker")
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		base := filepath.Base(h.Name)
		if h.Typeflag == tar.TypeDir {
			continue
		}
		names = append(names, base)
		if base == "flamenco-worker" && h.Typeflag == tar.TypeReg {
			w, _ := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
			w.ReadFrom(tr)
			w.Close()
		}
	}
	sort.Strings(names)
	want := "LICENSE README.md flamenco-worker flamenco-worker.cfg flamenco-worker.service"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("archive holds %v, want %s", names, want)
	}
	if e, err := elf.Open(bin); err == nil {
		for _, p := range e.Progs {
			if p.Type == elf.PT_INTERP {
				t.Errorf("the binary is dynamically linked")
			}
		}
		e.Close()
	}
	version, err := exec.Command(bin, "--version").Output()
	if err != nil || !strings.Contains(archives[0], "flamenco-worker-"+strings.TrimSpace(string(version))+"-") {
		t.Errorf("--version = %q (%v); archive %s", version, err, archives[0])
	}
}
