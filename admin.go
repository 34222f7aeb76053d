package wsauth

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterModule(AdminAPI{})
}

// AdminAPI serves ws_auth's endpoints on Caddy's admin API. Like every
// admin.api module, it needs no config: Caddy mounts it on its admin
// endpoint (default localhost:2019) whenever the plugin is linked in.
//
//	GET    /ws_auth/connections  the live connections of the process
//	GET    /ws_auth/blocklist    the blocklist entries in force
//	POST   /ws_auth/blocklist    {"kind":"sub","value":"alice","ttl":"1h","reason":"..."}
//	DELETE /ws_auth/blocklist    {"kind":"sub","value":"alice"}
//
// POST and DELETE write the process's run-time list (runtimeBlocklist),
// which every ws_auth handler consults along with its blocklist_file: an
// entry of either blocks. The list lives in memory, kept across config
// reloads and lost when the process ends. A POST closes the matching live
// connections at once, with 1008 "revoked"; it answers 201 with the entry,
// or 200 if the entry replaced one in force. A DELETE answers 200 with the
// entry removed, or 404. Blocklist files are listed (source "file") but
// never changed here: they are changed by editing the file.
//
// Errors are answered as Caddy's admin API answers them: a 4xx status and
// {"error":"..."}; 405 for a method an endpoint does not serve.
type AdminAPI struct {
	logger *zap.Logger
}

const (
	// maxAdminBody bounds a request body of the admin API.
	maxAdminBody = 64 << 10
	// maxEntryReason bounds the reason of an entry, in bytes.
	maxEntryReason = 200
)

// CaddyModule returns the Caddy module information.
func (AdminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.ws_auth",
		New: func() caddy.Module { return new(AdminAPI) },
	}
}

// Provision sets up the module's logger.
func (a *AdminAPI) Provision(ctx caddy.Context) error {
	// An admin router is provisioned outside any module, so it names itself,
	// as caddypki's admin.api.pki does (caddyserver/caddy#5032).
	a.logger = ctx.Logger(a)
	return nil
}

// Routes returns the routes of /ws_auth/.
func (a *AdminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/ws_auth/connections", Handler: caddy.AdminHandlerFunc(a.handleConnections)},
		{Pattern: "/ws_auth/blocklist", Handler: caddy.AdminHandlerFunc(a.handleBlocklist)},
	}
}

// connInfo is a live connection as GET /ws_auth/connections shows it.
type connInfo struct {
	ID          uint64 `json:"id"`
	User        string `json:"user"`
	JTI         string `json:"jti"`
	RemoteIP    string `json:"remote_ip"`
	Origin      string `json:"origin"`
	Path        string `json:"path"`
	TokenSource string `json:"token_source"`
	Since       string `json:"since"`
	Expires     string `json:"expires"`
}

// entryInfo is a blocklist entry as the admin API shows it.
type entryInfo struct {
	Kind    string `json:"kind"`
	Value   string `json:"value"`
	Expires string `json:"expires,omitempty"`
	Reason  string `json:"reason,omitempty"`
	Source  string `json:"source"`         // api or file
	File    string `json:"file,omitempty"` // the blocklist file, for source file
}

func newEntryInfo(e Entry, source, file string) entryInfo {
	return entryInfo{Kind: e.Kind, Value: e.Value, Expires: rfc3339(e.Expires), Reason: e.Reason, Source: source, File: file}
}

// rfc3339 writes t in UTC to the second; "" for the zero time.
func rfc3339(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

func (a *AdminAPI) handleConnections(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return methodNotAllowed(w, r, http.MethodGet)
	}
	return writeJSON(w, http.StatusOK, liveConns.list())
}

func (a *AdminAPI) handleBlocklist(w http.ResponseWriter, r *http.Request) error {
	switch r.Method {
	case http.MethodGet:
		return writeJSON(w, http.StatusOK, blocklistEntries(now()))
	case http.MethodPost:
		return a.addEntry(w, r)
	case http.MethodDelete:
		return a.removeEntry(w, r)
	}
	return methodNotAllowed(w, r, http.MethodGet, http.MethodPost, http.MethodDelete)
}

// list returns the live connections, by id; those being closed are left
// out.
func (reg *registry) list() []connInfo {
	reg.mu.RLock()
	conns := make([]*liveConn, 0, len(reg.conns))
	for c := range reg.conns {
		conns = append(conns, c)
	}
	reg.mu.RUnlock()
	infos := make([]connInfo, 0, len(conns))
	for _, c := range conns {
		if c.closing() {
			continue
		}
		c.mu.Lock()
		jti, expires := c.jti, c.expires
		c.mu.Unlock()
		infos = append(infos, connInfo{
			ID: c.id, User: c.user, JTI: jti, RemoteIP: c.ip, Origin: c.origin, Path: c.path,
			TokenSource: c.source.String(), Since: rfc3339(time.Unix(0, c.since)), Expires: rfc3339(expires),
		})
	}
	slices.SortFunc(infos, func(x, y connInfo) int { return cmp.Compare(x.ID, y.ID) })
	return infos
}

// blocklistEntries returns the entries in force at t: those added through
// the admin API, then those of each blocklist file in use, by path; within
// each, by kind and value.
func blocklistEntries(t time.Time) []entryInfo {
	out := make([]entryInfo, 0)
	for _, e := range sortedEntries(runtimeBlocklist.entries(t)) {
		out = append(out, newEntryInfo(e, "api", ""))
	}
	files := make(map[string]*blocklistFile)
	blocklists.Range(func(key, val any) bool {
		files[key.(string)] = val.(*blocklistFile)
		return true
	})
	for _, path := range sortedKeys(files) {
		var es []Entry
		files[path].list().each(t, func(kind, value string, expires time.Time) {
			es = append(es, Entry{Kind: kind, Value: value, Expires: expires})
		})
		for _, e := range sortedEntries(es) {
			out = append(out, newEntryInfo(e, "file", path))
		}
	}
	return out
}

func sortedEntries(es []Entry) []Entry {
	slices.SortFunc(es, func(x, y Entry) int {
		if c := strings.Compare(x.Kind, y.Kind); c != 0 {
			return c
		}
		return strings.Compare(x.Value, y.Value)
	})
	return es
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// filesHolding returns the blocklist files that hold an entry of kind and
// value (as entryValue writes it) in force at t.
func filesHolding(kind, value string, t time.Time) []string {
	var paths []string
	blocklists.Range(func(key, val any) bool {
		if exp, found, _ := val.(*blocklistFile).list().get(kind, value); found && live(exp, t) {
			paths = append(paths, key.(string))
		}
		return true
	})
	slices.Sort(paths)
	return paths
}

// entryRequest is the body of a POST or a DELETE.
type entryRequest struct {
	kind, value, reason string
	ttl                 time.Duration // 0: no expiry
}

// addEntry serves POST /ws_auth/blocklist.
func (a *AdminAPI) addEntry(w http.ResponseWriter, r *http.Request) error {
	req, err := readEntryRequest(w, r, true)
	if err != nil {
		return err
	}
	t := now()
	e := Entry{Kind: req.kind, Value: req.value, Reason: req.reason}
	if req.ttl > 0 {
		e.Expires = ceilSecond(t.Add(req.ttl))
	}
	replaced, err := blockEntry(e, t)
	if err != nil {
		return badRequest(err)
	}
	e.Value, _ = entryValue(e.Kind, e.Value)
	if ce := a.logger.Check(zap.InfoLevel, "blocklist entry added"); ce != nil {
		ce.Write(zap.String("kind", e.Kind), zap.String("value", truncate(e.Value, 200)),
			zap.String("expires", rfc3339(e.Expires)), zap.String("reason", e.Reason), zap.Bool("replaced", replaced))
	}
	status := http.StatusCreated
	if replaced {
		status = http.StatusOK
	}
	return writeJSON(w, status, newEntryInfo(e, "api", ""))
}

// ceilSecond rounds t up to a whole second, so that an entry lasts at
// least its ttl and its expiry is shown as it is.
func ceilSecond(t time.Time) time.Time {
	if s := t.Truncate(time.Second); !s.Equal(t) {
		return s.Add(time.Second)
	}
	return t
}

// removeEntry serves DELETE /ws_auth/blocklist.
func (a *AdminAPI) removeEntry(w http.ResponseWriter, r *http.Request) error {
	req, err := readEntryRequest(w, r, false)
	if err != nil {
		return err
	}
	t := now()
	e, _, inForce, err := unblockEntry(req.kind, req.value, t)
	if err != nil {
		return badRequest(err)
	}
	if !inForce {
		msg := fmt.Sprintf("no entry %s:%q added through the admin API", e.Kind, truncate(e.Value, 200))
		if files := filesHolding(e.Kind, e.Value, t); len(files) > 0 {
			msg += fmt.Sprintf("; it is in the blocklist file %s, which the admin API does not change", strings.Join(files, ", "))
		}
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: errors.New(msg)}
	}
	if ce := a.logger.Check(zap.InfoLevel, "blocklist entry removed"); ce != nil {
		ce.Write(zap.String("kind", e.Kind), zap.String("value", truncate(e.Value, 200)))
	}
	return writeJSON(w, http.StatusOK, newEntryInfo(e, "api", ""))
}

// readEntryRequest reads a POST's body (post) or a DELETE's: one JSON
// object, read as strictly as token claims (exact member names, none
// twice), with no member but kind, value and, for a POST, ttl and reason.
func readEntryRequest(w http.ResponseWriter, r *http.Request, post bool) (entryRequest, error) {
	var req entryRequest
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxAdminBody))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return req, caddy.APIError{HTTPStatus: http.StatusRequestEntityTooLarge,
				Err: fmt.Errorf("request body larger than %d bytes", maxAdminBody)}
		}
		return req, badRequest(fmt.Errorf("reading request body: %v", err))
	}
	if len(body) == 0 {
		return req, badRequest(errors.New(`empty request body: want a JSON object such as {"kind":"sub","value":"alice"}`))
	}
	var ttl string
	err = strictObject(body, func(name, v []byte) (err error) {
		switch n := string(name); {
		case n == "kind":
			req.kind, err = jsonStringMember(n, v)
		case n == "value":
			req.value, err = jsonStringMember(n, v)
		case n == "ttl" && post:
			ttl, err = jsonStringMember(n, v)
			if err == nil && ttl == "" {
				err = errors.New(`ttl: empty (leave it out for an entry that does not expire)`)
			}
		case n == "reason" && post:
			req.reason, err = jsonStringMember(n, v)
		default:
			want := "kind and value"
			if post {
				want = "kind, value, ttl and reason"
			}
			err = fmt.Errorf("unknown field %q (want %s)", truncate(n, 64), want)
		}
		return err
	})
	if err != nil {
		return req, badRequest(fmt.Errorf("request body: %v", err))
	}
	switch req.kind {
	case "jti", "sub", "ip":
	case "":
		return req, badRequest(errors.New("kind: required (jti, sub or ip)"))
	default:
		return req, badRequest(fmt.Errorf("kind: unknown kind %q (want jti, sub or ip)", truncate(req.kind, 64)))
	}
	if req.value == "" {
		return req, badRequest(errors.New("value: required"))
	}
	if req.kind == "ip" {
		if _, err := parseIPEntry(req.value); err != nil {
			return req, badRequest(fmt.Errorf("value: not an IP address or CIDR: %q", truncate(req.value, 64)))
		}
	}
	if len(req.reason) > maxEntryReason {
		return req, badRequest(fmt.Errorf("reason: longer than %d bytes", maxEntryReason))
	}
	if ttl != "" {
		d, err := caddy.ParseDuration(ttl)
		if err != nil {
			return req, badRequest(fmt.Errorf("ttl: %v", err))
		}
		if d <= 0 {
			return req, badRequest(fmt.Errorf("ttl: %s is not positive", ttl))
		}
		req.ttl = d
	}
	return req, nil
}

// jsonStringMember returns the value of the member name, which must be a
// JSON string.
func jsonStringMember(name string, v []byte) (string, error) {
	if len(v) == 0 || v[0] != '"' {
		return "", fmt.Errorf("%s: want a JSON string", name)
	}
	s, err := jsonStringBytes(v)
	if err != nil {
		return "", fmt.Errorf("%s: %v", name, err)
	}
	return string(s), nil
}

func badRequest(err error) error {
	return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: err}
}

// methodNotAllowed answers 405 with the methods the endpoint serves.
func methodNotAllowed(w http.ResponseWriter, r *http.Request, allowed ...string) error {
	w.Header().Set("Allow", strings.Join(allowed, ", "))
	return caddy.APIError{
		HTTPStatus: http.StatusMethodNotAllowed,
		Err:        fmt.Errorf("method not allowed: %s (want %s)", truncate(r.Method, 20), orList(allowed)),
	}
}

// orList writes "a", "a or b", "a, b or c".
func orList(words []string) string {
	if len(words) < 2 {
		return strings.Join(words, "")
	}
	return strings.Join(words[:len(words)-1], ", ") + " or " + words[len(words)-1]
}

// writeJSON answers status with v as JSON.
func writeJSON(w http.ResponseWriter, status int, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: err}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner = (*AdminAPI)(nil)
	_ caddy.AdminRouter = (*AdminAPI)(nil)
)
