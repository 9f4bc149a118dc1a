package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeManager is an httptest Flamenco Manager v2 that checks what the real
// one checks (spec/manager-v2.md §1): routes and methods, Basic auth with a
// registered worker's id and secret, 24-hex path ids, JSON bodies decoded
// into the Manager's own field types (a float percentage is a 400). It
// records every request and hands out the tasks it is given.
type fakeManager struct {
	t   testing.TB
	srv *httptest.Server

	mu      sync.Mutex
	workers map[string]string // id → secret
	nextID  int
	calls   []fakeCall
	queued  []string            // task documents not yet handed out
	tasks   map[string]string   // id → status on the Manager
	active  string              // the task assigned to the worker, re-delivered until it ends
	updates map[string][]update // per task, in arrival order
	order   []update            // all accepted updates, in arrival order

	// Knobs, set under mu.
	regSecret       string                             // worker_registration_secret; "" = open
	statusRequested string                             // answered by /task (423), /status-change, may-i-run
	updateHook      func(n int, taskID string) int     // status for the n-th update (0 = accept)
	mayIRunHook     func(taskID string) (bool, string) // may_keep_running and raw override; nil = true
	hijack          func(w http.ResponseWriter, r *http.Request) bool
	updateDelay     time.Duration   // an update's answer waits this long after the update is taken
	maxBody         int             // an update body larger than this is refused 413, as by a proxy; 0 = no limit
	sizeHook        func(n int) int // status for an update body of n bytes (0 = go on), before the Manager sees it
}

// fakeCall is one request as the fake Manager saw it.
type fakeCall struct {
	Method, Path, Auth string
	Body               string
	Status             int
}

// update is one accepted task update.
type update struct {
	TaskID string
	Doc    map[string]any
	Raw    string
}

// wireUpdate is the Manager's TaskUpdate with its Go field types: an int
// field refuses 12.5, exactly like the real Manager.
type wireUpdate struct {
	ID                        string                               `json:"_id"`
	TaskStatus                string                               `json:"task_status"`
	Activity                  string                               `json:"activity"`
	TaskProgressPercentage    int                                  `json:"task_progress_percentage"`
	CurrentCommandIdx         int                                  `json:"current_command_idx"`
	CommandProgressPercentage int                                  `json:"command_progress_percentage"`
	Log                       string                               `json:"log"`
	Metrics                   *struct{ Timing map[string]float64 } `json:"metrics"`
}

var objectIDRe = regexp.MustCompile(`^[0-9a-f]{24}$`)

func newFakeManager(t testing.TB) *fakeManager {
	fm := &fakeManager{t: t, workers: map[string]string{}, tasks: map[string]string{}, updates: map[string][]update{}}
	fm.srv = httptest.NewServer(http.HandlerFunc(fm.serve))
	t.Cleanup(fm.srv.Close)
	return fm
}

// URL is the Manager's base URL.
func (fm *fakeManager) URL() string { return fm.srv.URL }

// addWorker registers credentials as if an earlier run had registered.
func (fm *fakeManager) addWorker(id, secret string) {
	fm.mu.Lock()
	defer fm.mu.Unlock()
	fm.workers[id] = secret
}

// queueTask adds a task document (its _id must be 24 hex).
func (fm *fakeManager) queueTask(id string, commands ...string) {
	fm.mu.Lock()
	defer fm.mu.Unlock()
	doc := fmt.Sprintf(`{"_id": %q, "job": "5e00000000000000000000aa", "manager": "", "project": "", "user": "",
		"name": "test", "status": "active", "priority": 50, "job_priority": 50, "job_type": "test",
		"task_type": "sleep", "commands": [%s]}`, id, strings.Join(commands, ","))
	fm.queued = append(fm.queued, doc)
	fm.tasks[id] = "queued"
}

func (fm *fakeManager) set(fn func(fm *fakeManager)) {
	fm.mu.Lock()
	defer fm.mu.Unlock()
	fn(fm)
}

func (fm *fakeManager) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rec := &statusRecorder{ResponseWriter: w}
	fm.mu.Lock()
	hijack := fm.hijack
	fm.mu.Unlock()
	if hijack == nil || !hijack(rec, r) {
		if !fm.proxyRefuses(rec, r, body) {
			fm.route(rec, r, body)
		}
	}
	fm.mu.Lock()
	delay := fm.updateDelay
	fm.mu.Unlock()
	if delay > 0 && strings.HasSuffix(r.URL.Path, "/update") {
		time.Sleep(delay) // the update is taken; its answer is slow to leave
	}
	fm.mu.Lock()
	fm.calls = append(fm.calls, fakeCall{Method: r.Method, Path: r.URL.Path, Auth: r.Header.Get("Authorization"), Body: string(body), Status: rec.status})
	fm.mu.Unlock()
}

// proxyRefuses answers an update the way a proxy in front of the Manager
// would: 413 above maxBody, or whatever sizeHook says.
func (fm *fakeManager) proxyRefuses(w http.ResponseWriter, r *http.Request, body []byte) bool {
	if !strings.HasSuffix(r.URL.Path, "/update") {
		return false
	}
	fm.mu.Lock()
	limit, hook := fm.maxBody, fm.sizeHook
	fm.mu.Unlock()
	code := 0
	if limit > 0 && len(body) > limit {
		code = http.StatusRequestEntityTooLarge
	} else if hook != nil {
		code = hook(len(body))
	}
	if code == 0 {
		return false
	}
	w.Header().Set("Content-Type", "text/html")
	w.WriteHeader(code)
	fmt.Fprintf(w, "<html><head><title>%d %s</title></head><body><center><h1>%d %s</h1></center><hr><center>nginx</center></body></html>\n",
		code, http.StatusText(code), code, http.StatusText(code))
	return true
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// route dispatches like the Manager's gorilla/mux table (§1.1).
func (fm *fakeManager) route(w http.ResponseWriter, r *http.Request, body []byte) {
	if ua := r.Header.Get("User-Agent"); !strings.HasPrefix(ua, "Flamenco-Worker/") {
		fm.t.Errorf("%s %s: User-Agent %q, want Flamenco-Worker/<version>", r.Method, r.URL.Path, ua)
	}
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	method := func(m string) bool {
		if r.Method != m {
			w.WriteHeader(http.StatusMethodNotAllowed)
			return false
		}
		return true
	}
	switch {
	case r.URL.Path == "/register-worker":
		if method("POST") {
			fm.register(w, r, body)
		}
		return
	case len(parts) == 1 && parts[0] == "task", len(parts) == 1 && parts[0] == "sign-on",
		len(parts) == 1 && parts[0] == "sign-off", len(parts) == 1 && parts[0] == "output-produced",
		len(parts) == 2 && parts[0] == "ack-status-change",
		len(parts) == 3 && parts[0] == "tasks" && (parts[2] == "update" || parts[2] == "return"):
		if !method("POST") {
			return
		}
	case len(parts) == 2 && parts[0] == "may-i-run", len(parts) == 1 && parts[0] == "status-change":
		if !method("GET") {
			return
		}
	default:
		http.NotFound(w, r)
		return
	}
	if !fm.authenticate(w, r) {
		return
	}
	if (parts[0] == "tasks" || parts[0] == "may-i-run") && !objectIDRe.MatchString(parts[1]) {
		http.Error(w, "Invalid ObjectID used for task-id: "+parts[1], http.StatusNotFound)
		return
	}
	fm.mu.Lock()
	defer fm.mu.Unlock()
	switch parts[0] {
	case "task":
		fm.serveTask(w)
	case "sign-on":
		if !decodeInto(w, body, &struct {
			Types    []string `json:"supported_task_types"`
			Nickname string   `json:"nickname"`
		}{}) {
			return
		}
		w.WriteHeader(http.StatusNoContent)
	case "sign-off", "ack-status-change":
		if parts[0] == "ack-status-change" && parts[1] != "shutdown" {
			fm.statusRequested = ""
		}
		w.WriteHeader(http.StatusNoContent)
	case "output-produced":
		var doc struct{ Paths []string }
		if !decodeInto(w, body, &doc) {
			return
		}
		if len(doc.Paths) == 0 {
			http.Error(w, "List of paths may not be empty.", http.StatusUnprocessableEntity)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	case "status-change":
		if fm.statusRequested == "" {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status_requested": fm.statusRequested})
	case "may-i-run":
		fm.serveMayIRun(w, parts[1])
	case "tasks":
		if parts[2] == "return" {
			fm.serveReturn(w, parts[1])
			return
		}
		fm.serveUpdate(w, parts[1], body)
	}
}

func (fm *fakeManager) register(w http.ResponseWriter, r *http.Request, body []byte) {
	var doc struct {
		Secret   string   `json:"secret"`
		Platform string   `json:"platform"`
		Types    []string `json:"supported_task_types"`
		Nickname string   `json:"nickname"`
	}
	if !decodeInto(w, body, &doc) {
		return
	}
	fm.mu.Lock()
	defer fm.mu.Unlock()
	if fm.regSecret != "" {
		auth := r.Header.Get("Authorization")
		if !strings.HasPrefix(strings.ToLower(auth), "bearer ") {
			http.Error(w, "Missing Bearer token for registration", http.StatusForbidden)
			return
		}
		if !validJWT(auth[7:], fm.regSecret) {
			http.Error(w, "Invalid Bearer token for registration", http.StatusForbidden)
			return
		}
	}
	fm.nextID++
	id := fmt.Sprintf("5e00000000000000000%05d", fm.nextID)
	fm.workers[id] = doc.Secret
	writeJSON(w, http.StatusOK, map[string]any{"_id": id, "nickname": doc.Nickname, "address": r.RemoteAddr,
		"status": "", "platform": doc.Platform, "time_cost": 0, "supported_task_types": doc.Types,
		"software": "", "status_requested": "", "lazy_status_request": false,
		"sleep_schedule": map[string]bool{"schedule_active": false}})
}

// validJWT checks an HS256 token's signature and its exp/iat claims.
func validJWT(token, secret string) bool {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return false
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(parts[0] + "." + parts[1]))
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || !hmac.Equal(sig, mac.Sum(nil)) {
		return false
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	var claims struct{ Exp, Iat float64 }
	if err != nil || json.Unmarshal(raw, &claims) != nil {
		return false
	}
	now := float64(time.Now().Unix())
	return claims.Exp > now && claims.Iat <= now
}

// authenticate checks Basic auth like go-http-auth: case-sensitive scheme.
func (fm *fakeManager) authenticate(w http.ResponseWriter, r *http.Request) bool {
	auth := r.Header.Get("Authorization")
	scheme, cred, _ := strings.Cut(auth, " ")
	raw, err := base64.StdEncoding.DecodeString(cred)
	id, secret, _ := strings.Cut(string(raw), ":")
	fm.mu.Lock()
	want, known := fm.workers[id]
	fm.mu.Unlock()
	if scheme != "Basic" || err != nil || !known || want != secret {
		w.Header().Set("WWW-Authenticate", `Basic realm="Flamenco Manager"`)
		http.Error(w, "401 Unauthorized", http.StatusUnauthorized)
		return false
	}
	return true
}

func (fm *fakeManager) serveTask(w http.ResponseWriter) {
	if fm.statusRequested != "" {
		writeJSON(w, http.StatusLocked, map[string]string{"status_requested": fm.statusRequested})
		return
	}
	if fm.active == "" && len(fm.queued) > 0 {
		doc := fm.queued[0]
		fm.queued = fm.queued[1:]
		var t struct {
			ID string `json:"_id"`
		}
		json.Unmarshal([]byte(doc), &t)
		fm.active = t.ID
		fm.tasks[t.ID] = "active"
		fm.queued = append([]string{doc}, fm.queued...) // kept for re-delivery
	}
	if fm.active == "" {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	io.WriteString(w, fm.queued[0]+"\n")
}

func (fm *fakeManager) serveMayIRun(w http.ResponseWriter, taskID string) {
	answer := map[string]any{"may_keep_running": true}
	if fm.mayIRunHook != nil {
		ok, raw := fm.mayIRunHook(taskID)
		if raw != "" {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, raw)
			return
		}
		answer["may_keep_running"] = ok
		if !ok {
			answer["reason"] = "task " + taskID + " in non-runnable status canceled"
		}
	}
	if fm.statusRequested != "" {
		answer["status_requested"] = fm.statusRequested
		answer["may_keep_running"] = false
		answer["reason"] = "worker status change to " + fm.statusRequested + " requested"
	}
	writeJSON(w, http.StatusOK, answer)
}

func (fm *fakeManager) serveReturn(w http.ResponseWriter, taskID string) {
	if _, ok := fm.tasks[taskID]; !ok {
		w.WriteHeader(http.StatusNotFound)
		return
	}
	if fm.tasks[taskID] == "active" {
		fm.tasks[taskID] = "claimed-by-manager"
		fm.endActive(taskID)
	}
	w.WriteHeader(http.StatusNoContent)
}

func (fm *fakeManager) serveUpdate(w http.ResponseWriter, taskID string, body []byte) {
	var wu wireUpdate
	if !decodeInto(w, body, &wu) {
		return
	}
	if _, ok := fm.tasks[taskID]; !ok {
		http.Error(w, "Task "+taskID+" is unknown.", http.StatusNotFound)
		return
	}
	if fm.updateHook != nil {
		if code := fm.updateHook(len(fm.order), taskID); code != 0 {
			http.Error(w, http.StatusText(code), code)
			return
		}
	}
	var doc map[string]any
	json.Unmarshal(body, &doc)
	u := update{TaskID: taskID, Doc: doc, Raw: string(body)}
	fm.updates[taskID] = append(fm.updates[taskID], u)
	fm.order = append(fm.order, u)
	if fm.tasks[taskID] == "active" && wu.TaskStatus != "" && wu.TaskStatus != "active" {
		fm.tasks[taskID] = wu.TaskStatus
		fm.endActive(taskID)
	}
	w.WriteHeader(http.StatusNoContent)
}

// endActive stops re-delivering taskID.
func (fm *fakeManager) endActive(taskID string) {
	if fm.active != taskID {
		return
	}
	fm.active = ""
	fm.queued = fm.queued[1:]
}

// decodeInto decodes like the Manager: an empty body or a type mismatch is 400.
func decodeInto(w http.ResponseWriter, body []byte, v any) bool {
	if err := json.Unmarshal(body, v); err != nil {
		http.Error(w, "Unable to decode JSON: "+err.Error(), http.StatusBadRequest)
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// --- observations ---------------------------------------------------------

// callPaths lists "METHOD /path" of every request so far.
func (fm *fakeManager) callPaths() []string {
	fm.mu.Lock()
	defer fm.mu.Unlock()
	var out []string
	for _, c := range fm.calls {
		out = append(out, c.Method+" "+c.Path)
	}
	return out
}

// count counts requests to "METHOD /path".
func (fm *fakeManager) count(call string) int {
	n := 0
	for _, c := range fm.callPaths() {
		if c == call {
			n++
		}
	}
	return n
}

// taskUpdates returns the accepted updates of a task.
func (fm *fakeManager) taskUpdates(taskID string) []update {
	fm.mu.Lock()
	defer fm.mu.Unlock()
	return append([]update(nil), fm.updates[taskID]...)
}

// statuses lists the task_status values a task's updates carried.
func (fm *fakeManager) statuses(taskID string) []string {
	var out []string
	for _, u := range fm.taskUpdates(taskID) {
		if s, ok := u.Doc["task_status"].(string); ok {
			out = append(out, s)
		}
	}
	return out
}

// logText is all log text sent for a task.
func (fm *fakeManager) logText(taskID string) string {
	var b strings.Builder
	for _, u := range fm.taskUpdates(taskID) {
		if l, ok := u.Doc["log"].(string); ok {
			b.WriteString(l)
			b.WriteByte('\n')
		}
	}
	return b.String()
}

func (fm *fakeManager) taskStatus(taskID string) string {
	fm.mu.Lock()
	defer fm.mu.Unlock()
	return fm.tasks[taskID]
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// taskID makes a 24-hex task id from a small number.
func taskID(n int) string {
	return hex.EncodeToString([]byte{0x5e, 0x12, 0x34, 0x56, 0x78, 0x90, 0xab, 0xcd, 0xef, 0x01, 0x23, byte(n)})
}

// prefixedURL serves the same fake Manager under a path prefix, as behind
// a reverse proxy at http://host/flamenco/.
func (fm *fakeManager) prefixedURL(prefix string) string {
	srv := httptest.NewServer(http.StripPrefix(prefix, http.HandlerFunc(fm.serve)))
	fm.t.Cleanup(srv.Close)
	return srv.URL + prefix + "/"
}

// tlsURL serves the same fake Manager over HTTPS with a self-signed
// certificate, which it also writes as a PEM file (a studio's own CA).
func (fm *fakeManager) tlsURL() (url, caFile string) {
	srv := httptest.NewTLSServer(http.HandlerFunc(fm.serve))
	fm.t.Cleanup(srv.Close)
	caFile = filepath.Join(fm.t.TempDir(), "studio-ca.pem")
	block := &pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}
	if err := os.WriteFile(caFile, pem.EncodeToMemory(block), 0o644); err != nil {
		fm.t.Fatal(err)
	}
	return srv.URL + "/", caFile
}

// testManager is a Manager client for url with the credentials the tests
// give the fake Manager; limits, when given, replace the HTTP timeouts.
func testManager(t *testing.T, url string, limits ...httpTimeouts) *manager {
	t.Helper()
	cfg := defaultConfig()
	cfg.WorkerID, cfg.WorkerSecret = "5e0000000000000000000abc", "s"
	for _, l := range limits {
		cfg.Tuning.http = l
	}
	m, err := newManager(&cfg, url, "test", quietLogger)
	if err != nil {
		t.Fatal(err)
	}
	return m
}
