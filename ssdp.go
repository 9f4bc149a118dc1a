package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// ssdpSearch is the M-SEARCH the Python worker sends (spec/python-worker.md §1.8).
const ssdpSearch = "M-SEARCH * HTTP/1.1\r\n" +
	"ST: urn:flamenco:manager:0\r\n" +
	"MX: 3\r\n" +
	"MAN: \"ssdp:discover\"\r\n" +
	"HOST: 239.255.255.250:1900\r\n\r\n"

// discoverManager finds the Manager by UPnP/SSDP when manager_url is
// empty: it sends the search to every target (twice, UDP being UDP), waits
// up to wait for the first answer, and tries attempts times. The answer's
// Location header is the Manager's URL.
func discoverManager(ctx context.Context, targets []string, attempts int, wait time.Duration, logger *slog.Logger) (string, error) {
	var lastErr error
	for attempt := 1; attempt <= attempts; attempt++ {
		loc, err := ssdpAttempt(ctx, targets, wait)
		if err == nil {
			logger.Info("found the Manager by UPnP/SSDP", "manager_url", loc)
			return loc, nil
		}
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		lastErr = err
		logger.Debug("no Manager answered the SSDP search", "attempt", attempt, "err", err)
	}
	return "", fmt.Errorf("unable to find the Flamenco Manager via UPnP/SSDP after %d attempts (%v); set manager_url in flamenco-worker.cfg", attempts, lastErr)
}

// ssdpAttempt sends one round of searches and returns the first Location.
func ssdpAttempt(ctx context.Context, targets []string, wait time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	found := make(chan string, len(targets))
	errs := make(chan error, len(targets))
	for _, target := range targets {
		go func() { // ends when its socket's deadline passes or an answer comes
			loc, err := ssdpSearchOne(ctx, target)
			if err != nil {
				errs <- fmt.Errorf("%s: %w", target, err)
				return
			}
			found <- loc
		}()
	}
	var all []string
	for range targets {
		select {
		case loc := <-found:
			return loc, nil
		case err := <-errs:
			all = append(all, err.Error())
		}
	}
	return "", errors.New(strings.Join(all, "; "))
}

// ssdpSearchOne searches one group from a socket of its own.
func ssdpSearchOne(ctx context.Context, target string) (string, error) {
	addr, err := net.ResolveUDPAddr("udp", target)
	if err != nil {
		return "", err
	}
	conn, err := net.ListenUDP("udp", nil)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	for range 2 {
		if _, err := conn.WriteToUDP([]byte(ssdpSearch), addr); err != nil {
			return "", err
		}
	}
	buf := make([]byte, 2048)
	for {
		n, _, err := conn.ReadFromUDP(buf)
		if err != nil {
			return "", err
		}
		if loc, err := ssdpLocation(buf[:n]); err == nil {
			return loc, nil
		}
	}
}

// ssdpLocation parses an SSDP answer and returns its Location, which must
// be an http(s) URL.
func ssdpLocation(datagram []byte) (string, error) {
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(datagram)), nil)
	if err != nil {
		return "", fmt.Errorf("not an SSDP answer: %w", err)
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	u, err := url.Parse(loc)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("SSDP answer without a usable Location: %q", loc)
	}
	return u.String(), nil // normalised: "HTTP://M/" works and becomes "http://M/"
}
