package main

import (
	"bytes"
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

// maxResponseBytes bounds what the worker reads of any Manager response; a
// task document is a few KiB.
const maxResponseBytes = 8 << 20

// errForbidden means the Manager refused registration: the registration
// secret is wrong. Retrying cannot help; the admin must fix the config.
var errForbidden = errors.New("the Manager refused registration (403): check worker_registration_secret")

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
	limits     httpTimeouts
	retryMax   time.Duration // cap of the backoff between refused sign-on cycles

	mu     sync.Mutex // guards id, secret and authGen
	id     string
	secret string
	// authGen counts credential changes, so that of several requests that
	// got a 401 at once only the first signs on again.
	authGen int
	// authTurn is a one-slot semaphore: one re-authentication at a time.
	// Unlike a mutex, waiting for it ends with the waiter's context, since
	// a sign-on in backoff may hold it for minutes.
	authTurn chan struct{}
	// authRefusals counts sign-on cycles in a row whose credentials the
	// Manager refused (see signOn); an accepted authenticated request
	// resets it.
	authRefusals atomic.Int32

	reach reachability // since when the Manager is unreachable, for STATUS= (systemd.go)
}

// errRefused is a sign-on cycle that ended with our credentials refused,
// even fresh ones.
var errRefused = errors.New("sign on: credentials refused even after registering again")

// newManager builds the client. baseURL is the configured or discovered
// manager_url.
func newManager(cfg *Config, baseURL, version string, logger *slog.Logger) (*manager, error) {
	limits := cfg.Tuning.http
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = 4
	transport.DialContext = (&net.Dialer{Timeout: limits.connect, KeepAlive: 30 * time.Second}).DialContext
	transport.TLSHandshakeTimeout = limits.connect
	transport.ResponseHeaderTimeout = limits.header
	if cfg.ManagerCAFile != "" {
		pool, err := certPool(cfg.ManagerCAFile)
		if err != nil {
			return nil, err
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
			// The Manager never redirects a worker; following a redirect
			// would turn a POST into a GET or loop. Report it instead.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		userAgent:  "Flamenco-Worker/" + version,
		logger:     logger,
		cfg:        cfg,
		nickname:   host,
		retryDelay: cfg.Tuning.registerRetry,
		retryMax:   10 * time.Minute,
		authTurn:   make(chan struct{}, 1),
		limits:     limits,
		id:         cfg.WorkerID,
		secret:     cfg.WorkerSecret,
	}, nil
}

// managerBase is manager_url without its path, query and fragment. The
// Python worker joins absolute routes to the URL, which drops its path, and
// a Manager v2 cannot be served under a path prefix anyway (its dashboard
// uses absolute links), so a configured path is ignored, with a warning.
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

// certPool is the system roots plus the PEM certificates in file.
func certPool(file string) (*x509.CertPool, error) {
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
	return pool, nil
}

// response is a Manager answer: its status and (bounded) body.
type response struct {
	status int
	body   []byte
}

func (r *response) ok() bool { return r.status >= 200 && r.status < 300 }

// String gives the status and the start of the body, for log lines.
func (r *response) String() string {
	body := strings.TrimSpace(string(r.body))
	if len(body) > 200 {
		body = body[:200] + "…"
	}
	if body == "" {
		return fmt.Sprintf("%d %s", r.status, http.StatusText(r.status))
	}
	return fmt.Sprintf("%d %s: %s", r.status, http.StatusText(r.status), body)
}

// call does an authenticated request. A 401 means the Manager forgot us
// (its database was reset or the worker was auto-removed): sign on again,
// which re-registers if needed, and repeat the request once.
func (m *manager) call(ctx context.Context, method, path string, body any) (*response, error) {
	gen := m.authGeneration()
	resp, err := m.do(ctx, method, path, body, true)
	if err != nil || resp.status != http.StatusUnauthorized || path == "/sign-on" {
		m.noteAuthAnswer(resp)
		return resp, err
	}
	m.logger.Warn("Manager does not accept our credentials, signing on again", "path", path)
	if err := m.reauthenticate(ctx, gen); err != nil {
		return resp, err
	}
	resp, err = m.do(ctx, method, path, body, true)
	if err == nil && resp.status == http.StatusUnauthorized {
		// Signed on, yet refused: the next sign-on waits its turn.
		m.authRefusals.Add(1)
	}
	m.noteAuthAnswer(resp)
	return resp, err
}

// noteAuthAnswer ends the sign-on backoff once the Manager accepts our
// credentials on a request other than /sign-on.
func (m *manager) noteAuthAnswer(resp *response) {
	if resp != nil && resp.status != http.StatusUnauthorized {
		m.authRefusals.Store(0)
	}
}

// do sends one request. body is JSON-encoded unless it is nil or []byte.
// The transport bounds the connect and the wait for the response headers;
// a stall timer bounds each pause while the request or response body
// moves, so a large body takes as long as it keeps moving.
func (m *manager) do(ctx context.Context, method, path string, body any, auth bool) (*response, error) {
	var data []byte
	switch b := body.(type) {
	case nil:
	case []byte:
		data = b
	default:
		var err error
		if data, err = json.Marshal(b); err != nil {
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
			return io.NopCloser(&sending{r: bytes.NewReader(data), stall: stall, idle: m.limits.idle, then: m.limits.idle + m.limits.header}), nil
		}
		req.Body, _ = req.GetBody()
	}
	if auth {
		id, secret := m.credentials()
		req.SetBasicAuth(id, secret)
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
	data, err = io.ReadAll(io.LimitReader(&receiving{r: resp.Body, stall: stall, idle: m.limits.idle}, maxResponseBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%s %s: reading response: %w", method, path, m.stalled(ctx, err))
	}
	if len(data) > maxResponseBytes {
		return nil, fmt.Errorf("%s %s: response larger than %d bytes", method, path, maxResponseBytes)
	}
	return &response{status: resp.StatusCode, body: data}, nil
}

// errStalled is the cause of a request canceled by its stall timer.
var errStalled = errors.New("no data moved")

// stalled names the idle timeout in err when the stall timer ended the request.
func (m *manager) stalled(ctx context.Context, err error) error {
	if errors.Is(context.Cause(ctx), errStalled) {
		return fmt.Errorf("%w for %s (http_idle_timeout_seconds): %v", errStalled, m.limits.idle, err)
	}
	return err
}

// sending is a request body that re-arms the stall timer at every read:
// the transport reads the next piece once the previous one is written, so
// a pause longer than idle means the Manager stopped taking the body. After
// the last piece it allows for the final write and the response headers
// (whose own timeout normally ends the wait first).
type sending struct {
	r     io.Reader
	stall *time.Timer
	idle  time.Duration
	then  time.Duration
}

func (s *sending) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil {
		s.stall.Reset(s.then)
	} else {
		s.stall.Reset(s.idle)
	}
	return n, err
}

// receiving is a response body whose every read must return within idle.
type receiving struct {
	r     io.Reader
	stall *time.Timer
	idle  time.Duration
}

func (r *receiving) Read(p []byte) (int, error) {
	r.stall.Reset(r.idle)
	defer r.stall.Stop()
	return r.r.Read(p)
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

// reauthenticate signs on again unless another request already did so
// since generation gen was current.
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
	if !m.hasCredentials() {
		return m.register(ctx)
	}
	return m.signOn(ctx)
}

// register creates a new worker on the Manager with a fresh secret and
// stores the credentials in the home config file. It first proves that
// file writable: a worker that cannot keep its identity must not create
// one on the Manager, let alone one per restart.
func (m *manager) register(ctx context.Context) error {
	if err := credentialsWritable(m.cfg.HomeConfig, m.credSection()); err != nil {
		return fmt.Errorf("not registering at the Manager: the new credentials could not be stored in %s: %w", m.cfg.HomeConfig, err)
	}
	secret, err := randomSecret(64)
	if err != nil {
		return err
	}
	doc := map[string]any{
		"secret":               secret,
		"platform":             runtime.GOOS,
		"supported_task_types": m.cfg.TaskTypes,
		"nickname":             m.nickname,
	}
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
	if err := writeSectionCredentials(m.cfg.HomeConfig, m.credSection(), worker.ID, secret); err != nil {
		return fmt.Errorf("register: %w", err)
	}
	m.logger.Info("updated configuration file", "path", m.cfg.HomeConfig, "section", m.credSection())
	return nil
}

// credSection is the home-file section of our credentials.
func (m *manager) credSection() string {
	if m.cfg.CredSection == "" {
		return workerSection
	}
	return m.cfg.CredSection
}

// signOn tells the Manager we are here. A 401 means our credentials are
// unknown: register again, once, and sign on with the new ones. Should
// those be refused too (a proxy that drops the Authorization header), the
// cycle is repeated after a backoff that doubles up to retryMax, so that
// the Manager sees at most one registration per step.
func (m *manager) signOn(ctx context.Context) error {
	wait := m.refusalBackoff()
	for {
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

// signOnCycle is one sign-on, and on a 401 one registration and one more
// sign-on.
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

// refusalBackoff is the wait before the next sign-on cycle: none at first,
// then retryDelay doubling per refused cycle up to retryMax, each ±25 %
// so that a farm's workers do not come back in step.
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

// randomSecret returns n characters from [A-Za-z0-9], from crypto/rand.
func randomSecret(n int) (string, error) {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	out := make([]byte, 0, n)
	buf := make([]byte, 1)
	for len(out) < n {
		if _, err := rand.Read(buf); err != nil {
			return "", fmt.Errorf("generating secret: %w", err)
		}
		if buf[0] < 248 { // 248 = 4*62: keep the distribution uniform
			out = append(out, alphabet[int(buf[0])%len(alphabet)])
		}
	}
	return string(out), nil
}

// registrationToken is the HS256 JWT the Manager wants on /register-worker
// when it has a worker_registration_secret. iat is a minute in the past, so
// a worker whose clock runs a little ahead is not refused as "used before
// issued"; exp is 15 minutes ahead, as in the Python worker.
func registrationToken(secret string, now time.Time) string {
	enc := base64.RawURLEncoding
	header := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))
	claims := enc.EncodeToString(fmt.Appendf(nil, `{"exp":%d,"iat":%d}`,
		now.Add(15*time.Minute).Unix(), now.Add(-time.Minute).Unix()))
	mac := hmac.New(sha256.New, []byte(strings.TrimSpace(secret)))
	mac.Write([]byte(header + "." + claims))
	return header + "." + claims + "." + enc.EncodeToString(mac.Sum(nil))
}

// fetchTask asks for work: POST /task.
func (m *manager) fetchTask(ctx context.Context) (*response, error) {
	return m.call(ctx, http.MethodPost, "/task", nil)
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
	a, err := decodeMayIRun(resp.body)
	if err != nil {
		return nil, fmt.Errorf("may-i-run: unexpected answer %s", resp)
	}
	return a, nil
}

// decodeMayIRun reads a MayKeepRunningResponse; may_keep_running must be
// a boolean.
func decodeMayIRun(body []byte) (*mayIRunAnswer, error) {
	var a mayIRunAnswer
	if err := json.Unmarshal(body, &a); err != nil {
		return nil, err
	}
	if a.MayKeepRunning == nil {
		return nil, errors.New("no may_keep_running")
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

// ackStatusChange acknowledges that the worker is now in status.
func (m *manager) ackStatusChange(ctx context.Context, status string) error {
	resp, err := m.call(ctx, http.MethodPost, "/ack-status-change/"+status, nil)
	if err == nil && !resp.ok() {
		err = fmt.Errorf("ack-status-change: the Manager answered %s", resp)
	}
	return err
}

// returnTask gives a task back to the Manager's queue.
func (m *manager) returnTask(ctx context.Context, taskID string) error {
	resp, err := m.call(ctx, http.MethodPost, "/tasks/"+url.PathEscape(taskID)+"/return", nil)
	if err == nil && !resp.ok() {
		err = fmt.Errorf("return task: the Manager answered %s", resp)
	}
	return err
}

// signOff tells the Manager we are going; it re-queues our active task.
func (m *manager) signOff(ctx context.Context) error {
	resp, err := m.do(ctx, http.MethodPost, "/sign-off", nil, true)
	if err == nil && !resp.ok() {
		err = fmt.Errorf("sign off: the Manager answered %s", resp)
	}
	return err
}

// outputProduced tells the Manager about a new output file.
func (m *manager) outputProduced(ctx context.Context, paths ...string) error {
	resp, err := m.call(ctx, http.MethodPost, "/output-produced", map[string][]string{"paths": paths})
	if err == nil && !resp.ok() {
		err = fmt.Errorf("output-produced: the Manager answered %s", resp)
	}
	return err
}

// postUpdate sends one queued task update.
func (m *manager) postUpdate(ctx context.Context, taskID string, payload []byte) (*response, error) {
	return m.call(ctx, http.MethodPost, "/tasks/"+url.PathEscape(taskID)+"/update", payload)
}
