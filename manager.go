package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// maxResponseBytes bounds what the worker reads of any Manager answer; a task document is a few KiB.
const maxResponseBytes = 8 << 20

var (
	errForbidden = errors.New("the Manager refused registration (403): check worker_registration_secret")
	errRefused   = errors.New("sign on: credentials refused even after registering again")
	// errStalled is the cause of a request canceled by its stall timer.
	errStalled = errors.New("no data moved")
)

// manager is the HTTP client for every Manager route the worker uses
// (spec/manager-v2.md §1). It is safe for concurrent use.
type manager struct {
	base       string // manager_url's scheme and host: every route is absolute
	client     *http.Client
	userAgent  string
	logger     *slog.Logger
	cfg        *Config
	nickname   string
	retryDelay time.Duration // between registration/sign-on attempts
	retryMax   time.Duration // cap of the backoff between refused sign-on cycles
	limits     httpTimeouts

	mu         sync.Mutex // guards id, secret and authGen
	id, secret string
	authGen    int // counts credential changes: of several requests refused at once, only the first signs on again
	// authTurn is one re-authentication at a time; unlike a mutex, a waiter's
	// context ends its wait, since a sign-on in backoff may take minutes.
	authTurn     chan struct{}
	authRefusals atomic.Int32 // refused sign-on cycles in a row; an accepted request resets it
	reach        reachability // since when the Manager is unreachable, for STATUS= (systemd.go)
}

// newManager builds the client for baseURL, the configured or discovered manager_url.
func newManager(cfg *Config, baseURL, version string, logger *slog.Logger) (*manager, error) {
	limits := cfg.Tuning.http
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = 4
	transport.DialContext = (&net.Dialer{Timeout: limits.connect, KeepAlive: 30 * time.Second}).DialContext
	transport.TLSHandshakeTimeout = limits.connect
	transport.ResponseHeaderTimeout = limits.header
	if file := cfg.ManagerCAFile; file != "" {
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		pem, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("manager_ca_file: %w", err)
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("manager_ca_file %s: no PEM certificate found", file)
		}
		transport.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	base, err := managerBase(baseURL, logger)
	if err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	return &manager{
		base: base,
		client: &http.Client{
			Transport: transport, // no overall Timeout: see httpTimeouts
			// The Manager never redirects a worker; following one would turn
			// a POST into a GET or loop. Report it instead.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		userAgent: "Flamenco-Worker/" + version, logger: logger, cfg: cfg, nickname: host,
		retryDelay: cfg.Tuning.registerRetry, retryMax: 10 * time.Minute, limits: limits,
		authTurn: make(chan struct{}, 1), id: cfg.WorkerID, secret: cfg.WorkerSecret,
	}, nil
}

// managerBase is manager_url without its path, query and fragment: the Python
// worker's absolute routes drop the path too, and a Manager v2 cannot be served
// under a prefix anyway (its dashboard uses absolute links).
func managerBase(managerURL string, logger *slog.Logger) (string, error) {
	u, err := url.Parse(managerURL)
	if err != nil {
		return "", fmt.Errorf("manager_url: %w", err)
	}
	if u.Path != "" && u.Path != "/" {
		logger.Warn("manager_url has a path; it is ignored, as by the Python worker: the Manager's routes are absolute", "path", u.Path)
	}
	u.Path, u.RawPath, u.RawQuery, u.Fragment, u.RawFragment, u.ForceQuery = "", "", "", "", "", false
	return u.String(), nil
}

// response is a Manager answer: its status and (bounded) body.
type response struct {
	status int
	body   []byte
}

func (r *response) ok() bool { return r.status >= 200 && r.status < 300 }

// String gives the status and the start of the body, for log lines.
func (r *response) String() string {
	s := fmt.Sprintf("%d %s", r.status, http.StatusText(r.status))
	body := strings.TrimSpace(string(r.body))
	if len(body) > 200 {
		body = body[:200] + "…"
	}
	if body != "" {
		s += ": " + body
	}
	return s
}

// call does an authenticated request. A 401 means the Manager forgot us (its
// database was reset, the worker auto-removed): sign on again, which registers
// again if need be, and repeat the request once; not at sign-off, though.
func (m *manager) call(ctx context.Context, method, path string, body any) (*response, error) {
	gen := m.authGeneration()
	resp, err := m.do(ctx, method, path, body, true)
	if err == nil && resp.status == http.StatusUnauthorized && path != "/sign-off" {
		m.logger.Warn("Manager does not accept our credentials, signing on again", "path", path)
		if err := m.reauthenticate(ctx, gen); err != nil {
			return resp, err
		}
		if resp, err = m.do(ctx, method, path, body, true); err == nil && resp.status == http.StatusUnauthorized {
			m.authRefusals.Add(1) // signed on, yet refused: the next sign-on waits its turn
		}
	}
	if resp != nil && resp.status != http.StatusUnauthorized {
		m.authRefusals.Store(0) // accepted: the sign-on backoff ends
	}
	return resp, err
}

// post is a route whose answer matters only as 2xx or not.
func (m *manager) post(ctx context.Context, what, path string, body any) error {
	resp, err := m.call(ctx, http.MethodPost, path, body)
	if err == nil && !resp.ok() {
		err = fmt.Errorf("%s: the Manager answered %s", what, resp)
	}
	return err
}

// do sends one request; body is JSON-encoded unless it is nil or []byte. The
// transport bounds the connect and the wait for the response headers, a stall
// timer each pause while a body moves: a large body takes as long as it moves.
func (m *manager) do(ctx context.Context, method, path string, body any, auth bool) (*response, error) {
	data, raw := body.([]byte)
	if !raw && body != nil {
		var err error
		if data, err = json.Marshal(body); err != nil {
			return nil, fmt.Errorf("encoding %s body: %w", path, err)
		}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stall := time.AfterFunc(time.Hour, func() { cancel(errStalled) })
	stall.Stop()
	defer stall.Stop()
	req, err := http.NewRequestWithContext(ctx, method, m.base+path, nil)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %s", method, path, redactIn(err.Error(), m.base))
	}
	req.Header.Set("User-Agent", m.userAgent)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if len(data) > 0 {
		req.ContentLength = int64(len(data))
		req.GetBody = func() (io.ReadCloser, error) {
			return io.NopCloser(&stallReader{bytes.NewReader(data), stall, m.limits.idle, m.limits.idle + m.limits.header}), nil
		}
		req.Body, _ = req.GetBody()
	}
	if auth {
		req.SetBasicAuth(m.credentials())
	} else if path == "/register-worker" && strings.TrimSpace(m.cfg.WorkerRegistrationSecret) != "" {
		req.Header.Set("Authorization", "Bearer "+registrationToken(m.cfg.WorkerRegistrationSecret, time.Now()))
	}
	resp, err := m.client.Do(req)
	stall.Stop()
	m.reach.note(ctx, err, resp)
	if err != nil {
		return nil, m.stalled(ctx, err)
	}
	defer resp.Body.Close()
	data, err = io.ReadAll(io.LimitReader(&stallReader{resp.Body, stall, m.limits.idle, 0}, maxResponseBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%s %s: reading response: %w", method, path, m.stalled(ctx, err))
	}
	if len(data) > maxResponseBytes {
		return nil, fmt.Errorf("%s %s: response larger than %d bytes", method, path, maxResponseBytes)
	}
	return &response{status: resp.StatusCode, body: data}, nil
}

// stalled names the idle timeout in err when the stall timer ended the request.
func (m *manager) stalled(ctx context.Context, err error) error {
	if errors.Is(context.Cause(ctx), errStalled) {
		return fmt.Errorf("%w for %s (http_idle_timeout_seconds): %v", errStalled, m.limits.idle, err)
	}
	return err
}

// stallReader re-arms the stall timer at every read. Reading a response (last
// == 0), each read must return within idle. Sending, the transport reads the
// next piece once the previous one is written, so a pause over idle means the
// Manager stopped taking the body; the final write and the response headers
// (whose own timeout normally ends the wait first) get last.
type stallReader struct {
	r          io.Reader
	stall      *time.Timer
	idle, last time.Duration
}

func (s *stallReader) Read(p []byte) (int, error) {
	if s.last == 0 {
		s.stall.Reset(s.idle)
		defer s.stall.Stop()
		return s.r.Read(p)
	}
	n, err := s.r.Read(p)
	if err != nil {
		s.stall.Reset(s.last)
	} else {
		s.stall.Reset(s.idle)
	}
	return n, err
}

func (m *manager) credentials() (id, secret string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.id, m.secret
}

func (m *manager) authGeneration() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.authGen
}

func (m *manager) hasCredentials() bool {
	id, secret := m.credentials()
	return id != "" && secret != ""
}

// reauthenticate signs on again unless another request did so since
// generation gen was current.
func (m *manager) reauthenticate(ctx context.Context, gen int) error {
	select {
	case m.authTurn <- struct{}{}:
		defer func() { <-m.authTurn }()
	case <-ctx.Done():
		return ctx.Err()
	}
	if m.authGeneration() != gen {
		return nil
	}
	return m.signOn(ctx)
}

// startup registers (no credentials yet) or signs on, retrying every
// retryDelay while the Manager is unreachable or failing.
func (m *manager) startup(ctx context.Context) error {
	if m.hasCredentials() {
		return m.signOn(ctx)
	}
	return m.register(ctx)
}

// register creates a new worker on the Manager with a fresh secret and stores
// the credentials in the home config file, which it first proves writable: a
// worker that cannot keep its identity must not create one per restart.
func (m *manager) register(ctx context.Context) error {
	home, section := m.cfg.HomeConfig, cmp.Or(m.cfg.CredSection, workerSection)
	if err := credentialsWritable(home, section); err != nil {
		return fmt.Errorf("not registering at the Manager: the new credentials could not be stored in %s: %w", home, err)
	}
	secret := randomSecret(64)
	doc := map[string]any{"secret": secret, "platform": runtime.GOOS, "supported_task_types": m.cfg.TaskTypes, "nickname": m.nickname}
	resp, err := m.retry(ctx, "register", func() (*response, error) {
		return m.do(ctx, http.MethodPost, "/register-worker", doc, false)
	})
	if err != nil {
		return err
	}
	var worker struct {
		ID string `json:"_id"`
	}
	if err := json.Unmarshal(resp.body, &worker); err != nil || worker.ID == "" {
		return fmt.Errorf("register: the Manager answered without a worker _id: %s", resp)
	}
	m.mu.Lock()
	m.id, m.secret = worker.ID, secret
	m.authGen++
	m.mu.Unlock()
	m.logger.Info("registered at the Manager", "worker_id", worker.ID)
	if err := writeSectionCredentials(home, section, worker.ID, secret); err != nil {
		return fmt.Errorf("register: %w", err)
	}
	m.logger.Info("updated configuration file", "path", home, "section", section)
	return nil
}

// signOn tells the Manager we are here. A 401 means our credentials are unknown:
// register again, once, and sign on with the new ones. Should those be refused
// too (a proxy that drops the Authorization header), the cycle is repeated after
// a backoff, so that the Manager sees at most one registration per step.
func (m *manager) signOn(ctx context.Context) error {
	for wait := m.refusalBackoff(); ; {
		if !sleepCtx(ctx, wait) {
			return ctx.Err()
		}
		err := m.signOnCycle(ctx)
		if err == nil || ctx.Err() != nil {
			return err
		}
		// Any failed cycle (a refused registration too) makes the next one
		// wait, so a caller that retries cannot make it a tight loop.
		n := m.authRefusals.Add(1)
		if !errors.Is(err, errRefused) {
			return err
		}
		wait = m.refusalBackoff()
		m.logger.Warn("the Manager refuses our credentials even after registering again; is a proxy dropping the Authorization header?",
			"refused_cycles", n, "retry_in", wait.Round(time.Millisecond))
	}
}

// signOnCycle is one sign-on, and on a 401 one registration and one more sign-on.
func (m *manager) signOnCycle(ctx context.Context) error {
	doc := map[string]any{"supported_task_types": m.cfg.TaskTypes, "nickname": m.nickname}
	for attempt := 0; ; attempt++ {
		resp, err := m.retry(ctx, "sign on", func() (*response, error) {
			return m.do(ctx, http.MethodPost, "/sign-on", doc, true)
		})
		if err == nil {
			m.mu.Lock()
			m.authGen++
			m.mu.Unlock()
			m.logger.Info("signed on at the Manager", "manager", redactURL(m.base))
			return nil
		}
		if resp == nil || resp.status != http.StatusUnauthorized {
			return err
		}
		if attempt > 0 {
			return errRefused
		}
		m.logger.Warn("Manager did not accept our credentials, going to register again")
		if err := m.register(ctx); err != nil {
			return err
		}
	}
}

// refusalBackoff is the wait before the next sign-on cycle: none at first, then
// retryDelay doubling up to retryMax, ±25 % so that workers do not come back in step.
func (m *manager) refusalBackoff() time.Duration {
	n := m.authRefusals.Load()
	if n <= 0 {
		return 0
	}
	d := m.retryDelay
	for i := int32(1); i < n && d < m.retryMax; i++ {
		d *= 2
	}
	d = min(d, m.retryMax)
	return d*3/4 + time.Duration(mrand.Int64N(int64(d)/2+1))
}

// retry repeats fn every retryDelay while it fails with a network error or
// a 5xx. A 401 or 403 or another 4xx is returned with the response.
func (m *manager) retry(ctx context.Context, what string, fn func() (*response, error)) (*response, error) {
	for {
		resp, err := fn()
		switch {
		case err == nil && resp.ok():
			return resp, nil
		case err == nil && resp.status == http.StatusForbidden && what == "register":
			return resp, errForbidden
		case err == nil && resp.status < 500:
			return resp, fmt.Errorf("%s: the Manager answered %s", what, resp)
		case ctx.Err() != nil:
			return nil, ctx.Err()
		}
		reason := fmt.Sprint(err)
		if err == nil {
			reason = resp.String()
		}
		m.logger.Warn("cannot reach the Manager, retrying", "what", what, "err", reason, "retry_in", m.retryDelay)
		waitingOnPurpose(ctx, m.retryDelay) // for the watchdog (systemd.go)
		if !sleepCtx(ctx, m.retryDelay) {
			return nil, ctx.Err()
		}
	}
}

// sleepCtx waits d or until ctx ends; it reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// randomSecret is n characters from [A-Za-z0-9]; bytes from 248 (4·62) up
// are skipped to keep the distribution uniform.
func randomSecret(n int) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	out := make([]byte, 0, n)
	for b := make([]byte, 1); len(out) < n; {
		rand.Read(b) // never fails: it crashes the program instead
		if b[0] < 248 {
			out = append(out, alphabet[int(b[0])%len(alphabet)])
		}
	}
	return string(out)
}

// registrationToken is the HS256 JWT the Manager wants on /register-worker when
// it has a worker_registration_secret. iat is a minute back, so that a clock a
// little ahead is not refused as "used before issued"; exp is 15 minutes ahead.
func registrationToken(secret string, now time.Time) string {
	enc := base64.RawURLEncoding
	header := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))
	claims := enc.EncodeToString(fmt.Appendf(nil, `{"exp":%d,"iat":%d}`,
		now.Add(15*time.Minute).Unix(), now.Add(-time.Minute).Unix()))
	mac := hmac.New(sha256.New, []byte(strings.TrimSpace(secret)))
	mac.Write([]byte(header + "." + claims))
	return header + "." + claims + "." + enc.EncodeToString(mac.Sum(nil))
}

// The plain routes (spec/manager-v2.md §1.1); at sign-off the Manager re-queues our active task.
func (m *manager) fetchTask(ctx context.Context) (*response, error) {
	return m.call(ctx, http.MethodPost, "/task", nil)
}
func (m *manager) postUpdate(ctx context.Context, taskID string, payload []byte) (*response, error) {
	return m.call(ctx, http.MethodPost, "/tasks/"+url.PathEscape(taskID)+"/update", payload)
}
func (m *manager) returnTask(ctx context.Context, taskID string) error {
	return m.post(ctx, "return task", "/tasks/"+url.PathEscape(taskID)+"/return", nil)
}
func (m *manager) ackStatusChange(ctx context.Context, status string) error {
	return m.post(ctx, "ack-status-change", "/ack-status-change/"+status, nil)
}
func (m *manager) outputProduced(ctx context.Context, paths ...string) error {
	return m.post(ctx, "output-produced", "/output-produced", map[string][]string{"paths": paths})
}
func (m *manager) signOff(ctx context.Context) error {
	return m.post(ctx, "sign off", "/sign-off", nil)
}

// mayIRunAnswer is the Manager's MayKeepRunningResponse.
type mayIRunAnswer struct {
	MayKeepRunning  *bool  `json:"may_keep_running"`
	Reason          string `json:"reason"`
	StatusRequested string `json:"status_requested"`
}

// mayIRun asks whether the task may keep running. Anything but a 200 with
// a boolean may_keep_running is an error: the caller asks again later.
func (m *manager) mayIRun(ctx context.Context, taskID string) (*mayIRunAnswer, error) {
	resp, err := m.call(ctx, http.MethodGet, "/may-i-run/"+url.PathEscape(taskID), nil)
	if err != nil {
		return nil, err
	}
	if resp.status != http.StatusOK {
		return nil, fmt.Errorf("may-i-run: the Manager answered %s", resp)
	}
	if a, err := decodeMayIRun(resp.body); err == nil {
		return a, nil
	}
	return nil, fmt.Errorf("may-i-run: unexpected answer %s", resp)
}

// decodeMayIRun reads a MayKeepRunningResponse, whose may_keep_running must be a boolean.
func decodeMayIRun(body []byte) (*mayIRunAnswer, error) {
	var a mayIRunAnswer
	if err := json.Unmarshal(body, &a); err != nil || a.MayKeepRunning == nil {
		return nil, fmt.Errorf("no boolean may_keep_running in %q", body)
	}
	return &a, nil
}

// statusChange polls for a requested status change; "" means none.
func (m *manager) statusChange(ctx context.Context) (string, error) {
	resp, err := m.call(ctx, http.MethodGet, "/status-change", nil)
	if err != nil {
		return "", err
	}
	switch resp.status {
	case http.StatusNoContent:
		return "", nil
	case http.StatusOK:
		return decodeStatusRequested(resp.body)
	}
	return "", fmt.Errorf("status-change: the Manager answered %s", resp)
}

// decodeStatusRequested reads a WorkerStatus document.
func decodeStatusRequested(body []byte) (string, error) {
	var doc struct {
		StatusRequested string `json:"status_requested"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return "", fmt.Errorf("decoding status request: %w", err)
	}
	if doc.StatusRequested == "" {
		return "", fmt.Errorf("decoding status request: no status_requested in %q", body)
	}
	return doc.StatusRequested, nil
}

// outputNotifier sends /output-produced for the Manager's "latest image", at
// most once per window. Unlike the Python worker, which dropped the calls inside
// its window, it sends the newest one at the window's end: a task's last image shows.
type outputNotifier struct {
	send   func(ctx context.Context, path string) error
	window time.Duration
	logger *slog.Logger
	latest chan string // the newest path not yet sent
}

func newOutputNotifier(send func(ctx context.Context, path string) error, window time.Duration, logger *slog.Logger) *outputNotifier {
	return &outputNotifier{send: send, window: window, logger: logger, latest: make(chan string, 1)}
}

// notify records path as the newest output; it never blocks.
func (n *outputNotifier) notify(path string) {
	if path == "" {
		return
	}
	select {
	case <-n.latest: // replaced by the newer one
	default:
	}
	select {
	case n.latest <- path:
	default: // a concurrent notify's path is as new
	}
}

// run sends the newest path, then waits out the window. It ends with ctx.
func (n *outputNotifier) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case path := <-n.latest:
			if err := n.send(ctx, path); err == nil {
				n.logger.Info("Manager accepted our output notification", "path", path)
			} else if ctx.Err() == nil {
				n.logger.Warn("Manager rejected our output notification", "path", path, "err", err)
			}
		}
		if !sleepCtx(ctx, n.window) {
			return
		}
	}
}
