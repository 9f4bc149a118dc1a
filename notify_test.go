package main

import (
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestSystemdNotify(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var mu sync.Mutex
	var got []string
	go func() { // ends when conn is closed
		buf := make([]byte, 256)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			mu.Lock()
			got = append(got, string(buf[:n]))
			mu.Unlock()
		}
	}()
	messages := func() string {
		mu.Lock()
		defer mu.Unlock()
		return strings.Join(got, ",")
	}

	f := newFarm(t, "").registered()
	f.env = []string{"NOTIFY_SOCKET=" + sock, "WATCHDOG_USEC=100000"}
	p := f.start()
	waitFor(t, 10*time.Second, "READY=1 and watchdog pings", func() bool {
		return strings.HasPrefix(messages(), "READY=1,WATCHDOG=1,WATCHDOG=1")
	})
	if f.fm.count("POST /sign-on") != 1 {
		t.Errorf("READY=1 before signing on")
	}
	p.stop()
	if !strings.Contains(messages(), "STOPPING=1") {
		t.Errorf("notifications = %s, want STOPPING=1 at shutdown", messages())
	}
}
