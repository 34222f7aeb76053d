package wsauth

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"
)

// Tests of the admin API (admin.api.ws_auth, SPEC.md "Admin API") through
// a real Caddy whose admin endpoint listens on a free loopback port, with
// a plain HTTP client (no Origin header, Host 127.0.0.1:<port>, which
// Caddy's admin endpoint allows).

// adminAPI is a Caddy with its admin endpoint on, and a client of it.
type adminAPI struct {
	t        *testing.T
	addr     string // the site
	admin    string // the admin endpoint, host:port
	upstream string
	client   *http.Client
}

// startAdminCaddy is startCaddy with Caddy's admin endpoint on a free
// loopback port. The run-time blocklist is emptied when the test ends.
func startAdminCaddy(t *testing.T, site, upstream string) *adminAPI {
	t.Helper()
	a := &adminAPI{
		t:        t,
		admin:    fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		upstream: upstream,
		client:   &http.Client{Timeout: 5 * time.Second},
	}
	// As startCaddyFor, with the admin endpoint on from the start: a
	// reload would leave the old server shutting down under a first dial.
	caddyMu.Lock()
	t.Cleanup(caddyMu.Unlock)
	a.addr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	if err := loadCaddyfile(a.config(site)); err != nil {
		t.Fatalf("loading config: %v\n%s", err, a.config(site))
	}
	t.Cleanup(func() { _ = caddy.Stop() })
	waitListening(t, a.addr)
	waitListening(t, a.admin)
	t.Cleanup(func() { clearRuntimeBlocklist(t) })
	return a
}

// config is the harness's test config with the admin endpoint on.
func (a *adminAPI) config(site string) string {
	cfg := testConfig(a.addr, site, a.upstream)
	return strings.Replace(cfg, "admin off", "admin "+a.admin, 1)
}

// reload loads the config again with site, and waits until the admin
// endpoint answers.
func (a *adminAPI) reload(site string) {
	a.t.Helper()
	if err := loadCaddyfile(a.config(site)); err != nil {
		a.t.Fatalf("loading config: %v\n%s", err, a.config(site))
	}
	waitListening(a.t, a.admin)
}

// do sends a request to the admin endpoint, tried again while the
// endpoint is being replaced by a reload, and returns the response and
// its body.
func (a *adminAPI) do(method, path, body string) (*http.Response, []byte) {
	a.t.Helper()
	for i := 0; ; i++ {
		req, err := http.NewRequest(method, "http://"+a.admin+path, strings.NewReader(body))
		if err != nil {
			a.t.Fatal(err)
		}
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := a.client.Do(req)
		if err != nil {
			var ne net.Error
			if i < 20 && (errors.As(err, &ne) || errors.Is(err, io.EOF)) {
				time.Sleep(25 * time.Millisecond)
				continue
			}
			a.t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			a.t.Fatalf("%s %s: reading the body: %v", method, path, err)
		}
		return resp, b
	}
}

// want sends a request and checks its status and that it answers JSON;
// it returns the body.
func (a *adminAPI) want(method, path, body string, status int) []byte {
	a.t.Helper()
	resp, b := a.do(method, path, body)
	if resp.StatusCode != status {
		a.t.Fatalf("%s %s %s: status %d, want %d; body %s", method, path, body, resp.StatusCode, status, b)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		a.t.Errorf("%s %s: Content-Type %q, want application/json", method, path, ct)
	}
	return b
}

func (a *adminAPI) entries() []entryInfo {
	a.t.Helper()
	var es []entryInfo
	decodeStrict(a.t, a.want("GET", "/ws_auth/blocklist", "", http.StatusOK), &es)
	return es
}

func (a *adminAPI) connections() []connInfo {
	a.t.Helper()
	var cs []connInfo
	decodeStrict(a.t, a.want("GET", "/ws_auth/connections", "", http.StatusOK), &cs)
	return cs
}

// decodeStrict decodes b into v, refusing members v has no field for.
func decodeStrict(t *testing.T, b []byte, v any) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("decoding %s: %v", b, err)
	}
}

// clearRuntimeBlocklist removes every entry added at run time.
func clearRuntimeBlocklist(t *testing.T) {
	for _, e := range runtimeBlocklist.entries(time.Now()) {
		if _, err := runtimeBlocklist.Remove(e.Kind, e.Value); err != nil {
			t.Error(err)
		}
	}
}

// TestAdminConnections: GET /ws_auth/connections lists a live connection
// with what it is, and forgets it once it is closed.
func TestAdminConnections(t *testing.T) {
	up := newLiveUpstream(t)
	api := startAdminCaddy(t, site("allowed_origins https://app.test"), up.addr())
	if body := api.want("GET", "/ws_auth/connections", "", http.StatusOK); string(body) != "[]\n" {
		t.Errorf("no connection: %q, want []", body)
	}

	exp := time.Now().Add(time.Hour).Truncate(time.Second)
	tok := hs256(t, claims("alice", func(c jwt.MapClaims) { c["exp"] = exp.Unix() }))
	before := time.Now().Add(-time.Second)
	c, resp, err := dial(api.addr, "/ws/a", dialOpts{query: "token=" + tok, origin: "https://app.test"})
	if err != nil {
		t.Fatalf("dial: %v (%v)", err, resp)
	}
	defer c.Close()
	if err := c.WriteMessage(websocket.TextMessage, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := c.ReadMessage(); err != nil || string(msg) != "hi" {
		t.Fatalf("echo: %q %v", msg, err)
	}
	waitLiveCount(t, 1)

	cs := api.connections()
	if len(cs) != 1 {
		t.Fatalf("connections: %+v, want one", cs)
	}
	got := cs[0]
	since, err := time.Parse(time.RFC3339, got.Since)
	if err != nil || since.Before(before.Truncate(time.Second)) || since.After(time.Now()) {
		t.Errorf("since %q: want the time the connection opened, RFC 3339 (%v)", got.Since, err)
	}
	if got.ID == 0 {
		t.Errorf("id 0")
	}
	got.ID, got.Since = 0, ""
	want := connInfo{User: "alice", JTI: "jti-alice", RemoteIP: "127.0.0.1", Origin: "https://app.test",
		Path: "/ws/a", TokenSource: "query", Expires: exp.UTC().Format(time.RFC3339)}
	if got != want {
		t.Errorf("connection:\n got %+v\nwant %+v", got, want)
	}

	c.Close()
	waitLiveCount(t, 0)
	if cs := api.connections(); len(cs) != 0 {
		t.Errorf("after the close: %+v, want none", cs)
	}
}

// TestAdminBlocklist: POST blocks a user: their live connection is closed
// with 1008 "revoked" within a second, another user's stays open, and a
// new handshake is refused with 1008 "blocked". GET lists the entry with
// those of the blocklist file; POST again replaces it (200); DELETE lets
// the user in again, and a second DELETE is a 404, as is a DELETE of an
// entry of the file, which stays in force.
func TestAdminBlocklist(t *testing.T) {
	list := filepath.Join(t.TempDir(), "blocklist.txt")
	if err := os.WriteFile(list, []byte("sub:mallory 2099-01-01T00:00:00Z\nip:10.1.2.3/8\nsub:gone 2001-01-01T00:00:00Z\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	up := newLiveUpstream(t)
	api := startAdminCaddy(t, site("blocklist_file "+list), up.addr())
	aliceTok := hs256(t, claims("alice"))
	alice := dialLive(t, liveURL(api.addr, "/ws", aliceTok))
	bob := dialLive(t, liveURL(api.addr, "/ws", hs256(t, claims("bob"))))
	alice.echo("alice before")
	bob.echo("bob before")
	waitLiveCount(t, 2)

	posted := time.Now()
	var added entryInfo
	decodeStrict(t, api.want("POST", "/ws_auth/blocklist", `{"kind":"sub","value":"alice","ttl":"1h","reason":"abuse"}`, http.StatusCreated), &added)
	if got := alice.closeWithin(time.Second); got != "close 1008 revoked" {
		t.Errorf("alice, once blocked through the admin API: %s, want close 1008 revoked", got)
	}
	up.ended(t)
	bob.echo("bob after")
	waitLiveCount(t, 1)
	if got := dialOutcome(t, api.addr, "/ws", aliceTok); got != "close 1008 blocked" {
		t.Errorf("alice's handshake, blocked: %s, want close 1008 blocked", got)
	}

	exp, err := time.Parse(time.RFC3339, added.Expires)
	if err != nil || exp.Before(posted.Add(time.Hour-time.Second)) || exp.After(time.Now().Add(time.Hour+time.Second)) {
		t.Errorf("expires %q, want about an hour from now, RFC 3339 (%v)", added.Expires, err)
	}
	apiEntry := entryInfo{Kind: "sub", Value: "alice", Expires: added.Expires, Reason: "abuse", Source: "api"}
	if added != apiEntry {
		t.Errorf("POST answered %+v, want %+v", added, apiEntry)
	}
	want := []entryInfo{
		apiEntry,
		{Kind: "ip", Value: "10.0.0.0/8", Source: "file", File: list},
		{Kind: "sub", Value: "mallory", Expires: "2099-01-01T00:00:00Z", Source: "file", File: list},
	}
	if got := api.entries(); !slices.Equal(got, want) {
		t.Errorf("GET /ws_auth/blocklist:\n got %+v\nwant %+v", got, want)
	}

	// The same entry again replaces it: 200, and no expiry now.
	var replaced entryInfo
	decodeStrict(t, api.want("POST", "/ws_auth/blocklist", `{"kind":"sub","value":"alice"}`, http.StatusOK), &replaced)
	if want := (entryInfo{Kind: "sub", Value: "alice", Source: "api"}); replaced != want {
		t.Errorf("POST again answered %+v, want %+v", replaced, want)
	}

	var removed entryInfo
	decodeStrict(t, api.want("DELETE", "/ws_auth/blocklist", `{"kind":"sub","value":"alice"}`, http.StatusOK), &removed)
	if want := (entryInfo{Kind: "sub", Value: "alice", Source: "api"}); removed != want {
		t.Errorf("DELETE answered %+v, want %+v", removed, want)
	}
	if got := dialOutcome(t, api.addr, "/ws", aliceTok); got != "accepted" {
		t.Errorf("alice's handshake, unblocked: %s, want accepted", got)
	}
	checkAPIError(t, api.want("DELETE", "/ws_auth/blocklist", `{"kind":"sub","value":"alice"}`, http.StatusNotFound), "no entry")

	// An entry of the file: the API does not remove it, and says where it is.
	checkAPIError(t, api.want("DELETE", "/ws_auth/blocklist", `{"kind":"sub","value":"mallory"}`, http.StatusNotFound), list)
	mallory := hs256(t, claims("mallory"))
	if got := dialOutcome(t, api.addr, "/ws", mallory); got != "close 1008 blocked" {
		t.Errorf("mallory's handshake, in the file: %s, want close 1008 blocked", got)
	}

	// An ip entry is shown as the set holds it, and removed by any spelling.
	decodeStrict(t, api.want("POST", "/ws_auth/blocklist", `{"kind":"ip","value":"::ffff:192.0.2.7"}`, http.StatusCreated), &added)
	if added.Value != "192.0.2.7" {
		t.Errorf("ip entry shown as %q, want 192.0.2.7", added.Value)
	}
	api.want("DELETE", "/ws_auth/blocklist", `{"kind":"ip","value":"192.0.2.7/32"}`, http.StatusOK)
	if got := api.entries(); len(got) != 2 || got[0].Source != "file" {
		t.Errorf("after the deletes: %+v, want only the file's entries", got)
	}
	bob.close()
	waitLiveCount(t, 0)
}

// dialOutcome dials path on addr with token in the query, and says what
// the client saw (the harness's outcome).
func dialOutcome(t *testing.T, addr, path, token string) string {
	t.Helper()
	c, resp, err := dialSettled(addr, path, dialOpts{query: "token=" + token})
	return outcome(t, c, resp, err)
}

// checkAPIError checks an error body of Caddy's admin API,
// {"error":"..."}, and that the message holds want.
func checkAPIError(t *testing.T, body []byte, want string) {
	t.Helper()
	var e struct {
		Error string `json:"error"`
	}
	decodeStrict(t, body, &e)
	if e.Error == "" || !strings.Contains(e.Error, want) {
		t.Errorf("error %q, want one that mentions %q", e.Error, want)
	}
}

// TestAdminBadRequests: every request the API cannot serve gets its 4xx
// and a JSON error, and changes nothing.
func TestAdminBadRequests(t *testing.T) {
	up := newLiveUpstream(t)
	api := startAdminCaddy(t, site(""), up.addr())
	long := strings.Repeat("r", maxEntryReason+1)
	tooLarge := `{"kind":"sub","value":"` + strings.Repeat("a", maxAdminBody) + `"}`
	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		msg                      string
	}{
		{"PUT blocklist", "PUT", "/ws_auth/blocklist", `{"kind":"sub","value":"x"}`, 405, "method not allowed"},
		{"PATCH blocklist", "PATCH", "/ws_auth/blocklist", `{"kind":"sub","value":"x"}`, 405, "method not allowed"},
		{"POST connections", "POST", "/ws_auth/connections", `{}`, 405, "method not allowed"},
		{"DELETE connections", "DELETE", "/ws_auth/connections", ``, 405, "method not allowed"},
		{"empty body", "POST", "/ws_auth/blocklist", ``, 400, "empty"},
		{"bad JSON", "POST", "/ws_auth/blocklist", `{"kind":"sub",`, 400, "invalid JSON"},
		{"trailing data", "POST", "/ws_auth/blocklist", `{"kind":"sub","value":"x"} {}`, 400, "invalid JSON"},
		{"not an object", "POST", "/ws_auth/blocklist", `["sub","x"]`, 400, "not an object"},
		{"unknown field", "POST", "/ws_auth/blocklist", `{"kind":"sub","value":"x","until":"2099-01-01T00:00:00Z"}`, 400, `unknown field "until"`},
		{"field name case", "POST", "/ws_auth/blocklist", `{"Kind":"sub","value":"x"}`, 400, `unknown field "Kind"`},
		{"duplicate field", "POST", "/ws_auth/blocklist", `{"kind":"sub","value":"x","value":"y"}`, 400, "duplicate"},
		{"ttl on DELETE", "DELETE", "/ws_auth/blocklist", `{"kind":"sub","value":"x","ttl":"1h"}`, 400, `unknown field "ttl"`},
		{"missing kind", "POST", "/ws_auth/blocklist", `{"value":"x"}`, 400, "kind: required"},
		{"unknown kind", "POST", "/ws_auth/blocklist", `{"kind":"user","value":"x"}`, 400, `unknown kind "user"`},
		{"kind not a string", "POST", "/ws_auth/blocklist", `{"kind":1,"value":"x"}`, 400, "kind: want a JSON string"},
		{"missing value", "POST", "/ws_auth/blocklist", `{"kind":"sub"}`, 400, "value: required"},
		{"empty value", "POST", "/ws_auth/blocklist", `{"kind":"jti","value":""}`, 400, "value: required"},
		{"null value", "DELETE", "/ws_auth/blocklist", `{"kind":"sub","value":null}`, 400, "value: want a JSON string"},
		{"bad ip", "POST", "/ws_auth/blocklist", `{"kind":"ip","value":"example.com"}`, 400, "not an IP address or CIDR"},
		{"bad CIDR", "DELETE", "/ws_auth/blocklist", `{"kind":"ip","value":"10.0.0.0/33"}`, 400, "not an IP address or CIDR"},
		{"bad ttl", "POST", "/ws_auth/blocklist", `{"kind":"sub","value":"x","ttl":"soon"}`, 400, "ttl:"},
		{"negative ttl", "POST", "/ws_auth/blocklist", `{"kind":"sub","value":"x","ttl":"-1h"}`, 400, "not positive"},
		{"empty ttl", "POST", "/ws_auth/blocklist", `{"kind":"sub","value":"x","ttl":""}`, 400, "ttl: empty"},
		{"ttl a number", "POST", "/ws_auth/blocklist", `{"kind":"sub","value":"x","ttl":3600}`, 400, "ttl: want a JSON string"},
		{"reason too long", "POST", "/ws_auth/blocklist", `{"kind":"sub","value":"x","reason":"` + long + `"}`, 400, "reason: longer than 200 bytes"},
		{"lone surrogate", "POST", "/ws_auth/blocklist", `{"kind":"sub","value":"\ud800"}`, 400, "surrogate"},
		{"body too large", "POST", "/ws_auth/blocklist", tooLarge, 413, "larger than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			api.t = t
			checkAPIError(t, api.want(tc.method, tc.path, tc.body, tc.status), tc.msg)
		})
	}
	api.t = t
	if resp, _ := api.do("PUT", "/ws_auth/blocklist", ""); resp.Header.Get("Allow") != "GET, POST, DELETE" {
		t.Errorf("405 Allow: %q, want GET, POST, DELETE", resp.Header.Get("Allow"))
	}
	if es := api.entries(); len(es) != 0 {
		t.Errorf("after bad requests, the list holds %+v", es)
	}
}

// TestAdminAcrossReload: entries added through the admin API stay in
// force across a config reload, and the reloaded admin endpoint lists
// them.
func TestAdminAcrossReload(t *testing.T) {
	up := newLiveUpstream(t)
	api := startAdminCaddy(t, site(""), up.addr())
	api.want("POST", "/ws_auth/blocklist", `{"kind":"sub","value":"alice","reason":"before the reload"}`, http.StatusCreated)

	api.reload(site("max_token_size 4KiB"))
	want := []entryInfo{{Kind: "sub", Value: "alice", Reason: "before the reload", Source: "api"}}
	if got := api.entries(); !slices.Equal(got, want) {
		t.Errorf("after a reload: %+v, want %+v", got, want)
	}
	tok := hs256(t, claims("alice"))
	if got := dialOutcome(t, api.addr, "/ws", tok); got != "close 1008 blocked" {
		t.Errorf("alice's handshake after a reload: %s, want close 1008 blocked", got)
	}
}

// TestMemoryBlocklistEntries: the run-time list keeps each entry's reason,
// says whether an entry replaced one in force, lists the entries in force
// with their values as the set holds them, and hands back what it removes.
func TestMemoryBlocklistEntries(t *testing.T) {
	m := newMemoryBlocklist()
	t0 := time.Now()
	for _, tc := range []struct {
		e        Entry
		replaced bool
	}{
		{Entry{Kind: "sub", Value: "alice", Reason: "abuse"}, false},
		{Entry{Kind: "sub", Value: "alice", Reason: "still abuse"}, true},
		{Entry{Kind: "jti", Value: "t-1", Expires: t0.Add(time.Minute)}, false},
		{Entry{Kind: "ip", Value: "203.0.113.9/24", Reason: "scanner"}, false},
		{Entry{Kind: "ip", Value: "203.0.113.0/24"}, true},
		{Entry{Kind: "sub", Value: "old", Expires: t0.Add(-time.Minute), Reason: "expired"}, false},
		{Entry{Kind: "sub", Value: "old", Reason: "again"}, false}, // the one it replaced had expired
	} {
		replaced, err := m.put(tc.e, t0)
		if err != nil || replaced != tc.replaced {
			t.Errorf("put(%+v) = %v, %v; want %v", tc.e, replaced, err, tc.replaced)
		}
	}
	got := m.entries(t0)
	slices.SortFunc(got, func(x, y Entry) int { return strings.Compare(x.Kind+":"+x.Value, y.Kind+":"+y.Value) })
	want := []Entry{
		{Kind: "ip", Value: "203.0.113.0/24"},
		{Kind: "jti", Value: "t-1", Expires: t0.Add(time.Minute)},
		{Kind: "sub", Value: "alice", Reason: "still abuse"},
		{Kind: "sub", Value: "old", Reason: "again"},
	}
	if !slices.EqualFunc(got, want, func(x, y Entry) bool {
		return x.Kind == y.Kind && x.Value == y.Value && x.Expires.Equal(y.Expires) && x.Reason == y.Reason
	}) {
		t.Errorf("entries:\n got %+v\nwant %+v", got, want)
	}
	if es := m.entries(t0.Add(2 * time.Minute)); len(es) != 3 {
		t.Errorf("entries after the jti's expiry: %+v, want 3", es)
	}
	e, found, inForce, err := m.take("sub", "alice", t0)
	if err != nil || !found || !inForce || e.Reason != "still abuse" {
		t.Errorf("take(sub alice) = %+v %v %v %v", e, found, inForce, err)
	}
	if _, found, _, _ := m.take("sub", "alice", t0); found {
		t.Error("take(sub alice) again found it")
	}
	if _, found, inForce, _ := m.take("jti", "t-1", t0.Add(2*time.Minute)); !found || inForce {
		t.Errorf("take of an expired entry: found %v, in force %v; want true, false", found, inForce)
	}
	// A removed entry's reason does not come back with the entry.
	if _, err := m.put(Entry{Kind: "sub", Value: "alice"}, t0); err != nil {
		t.Fatal(err)
	}
	for _, e := range m.entries(t0) {
		if e.Value == "alice" && e.Reason != "" {
			t.Errorf("re-added entry has the old reason %q", e.Reason)
		}
	}
}
