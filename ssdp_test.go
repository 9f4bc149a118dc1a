package main

import (
	"bytes"
	"net"
	"strings"
	"testing"
	"time"
)

// ssdpResponder answers M-SEARCHes for the Flamenco Manager on a local UDP
// socket, as the Manager's SSDP server does, with the given Location.
func ssdpResponder(t *testing.T, location string) string {
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	go func() { // ends when the socket is closed
		buf := make([]byte, 2048)
		for {
			n, from, err := conn.ReadFromUDP(buf)
			if err != nil {
				return
			}
			if !bytes.Contains(buf[:n], []byte("ST: urn:flamenco:manager:0\r\n")) || !bytes.HasPrefix(buf[:n], []byte("M-SEARCH * HTTP/1.1\r\n")) {
				continue
			}
			answer := "HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=3600\r\nST: urn:flamenco:manager:0\r\n" +
				"USN: uuid:1234::urn:flamenco:manager:0\r\nLocation: " + location + "\r\n\r\n"
			conn.WriteToUDP([]byte(answer), from)
		}
	}()
	return conn.LocalAddr().String()
}

func TestSSDPDiscovery(t *testing.T) {
	addr := ssdpResponder(t, "http://192.0.2.7:8083/")
	got, err := discoverManager(t.Context(), []string{addr}, 3, time.Second, quietLogger)
	if err != nil || got != "http://192.0.2.7:8083/" {
		t.Fatalf("discoverManager = %q, %v; want the responder's Location", got, err)
	}

	silent, _ := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	defer silent.Close()
	_, err = discoverManager(t.Context(), []string{silent.LocalAddr().String()}, 2, 100*time.Millisecond, quietLogger)
	if err == nil || !strings.Contains(err.Error(), "after 2 attempts") || !strings.Contains(err.Error(), "manager_url") {
		t.Errorf("no answer: err = %v, want a clear error after the retries", err)
	}
}

func TestSSDPLocation(t *testing.T) {
	cases := map[string]string{
		"HTTP/1.1 200 OK\r\nLocation: https://manager:8083/\r\n\r\n": "https://manager:8083/",
		"HTTP/1.1 200 OK\r\nLOCATION: http://m/\r\n\r\n":             "http://m/",
		"HTTP/1.1 200 OK\r\nLocation: HTTP://M:8083/\r\n\r\n":        "http://M:8083/",
		"HTTP/1.1 200 OK\r\nLocation: ftp://m/\r\n\r\n":              "",
		"HTTP/1.1 200 OK\r\n\r\n":                                    "",
		"garbage":                                                    "",
	}
	for in, want := range cases {
		got, err := ssdpLocation([]byte(in))
		if got != want || (want == "") != (err != nil) {
			t.Errorf("ssdpLocation(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

func TestWorkerDiscoversManager(t *testing.T) {
	t.Parallel()
	f := newFarm(t, "").registered()
	writeFile(t, f.dir+"/flamenco-worker.cfg", "[flamenco-worker]\nmanager_url =\n")
	f.env = []string{"FW_TEST_SSDP=" + ssdpResponder(t, f.fm.URL()+"/")}
	f.fm.queueTask(taskID(1), echoCmd("found you"))
	p := f.start()
	waitFor(t, 10*time.Second, "the task to complete", func() bool { return f.fm.taskStatus(taskID(1)) == "completed" })
	p.stop()
}
