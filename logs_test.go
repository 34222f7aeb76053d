package wsauth

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"

	"github.com/caddyserver/caddy/v2"
)

// TestLogsKeepSecrets: every decision is in the audit log with its reason,
// and neither the audit log nor the access log (with the filter the README
// and example.Caddyfile show) ever holds a token or the secret.
func TestLogsKeepSecrets(t *testing.T) {
	dir := t.TempDir()
	audit := filepath.Join(dir, "audit.log")
	everything := filepath.Join(dir, "default.log")
	access := filepath.Join(dir, "access.log")
	up := newUpstream(t)

	caddyMu.Lock()
	defer caddyMu.Unlock()
	port := freePort(t)
	cfg := fmt.Sprintf(`{
	admin off
	auto_https off
	persist_config off
	log audit {
		output file %[1]s
		include http.handlers.ws_auth
		level DEBUG
	}
	log default {
		output file %[2]s
		level DEBUG
	}
}

http://127.0.0.1:%[3]d {
	log {
		output file %[4]s
		format filter {
			request>uri query {
				delete token
			}
			request>headers>Sec-Websocket-Protocol delete
			request>headers>X-Token delete
		}
	}
	route /deadheader/* {
		ws_auth {
			secret %[5]s
			token_source header X-Token
		}
		reverse_proxy %[7]s
	}
	route /dead/* {
		ws_auth {
			secret %[5]s
			token_source query
			token_source subprotocol
		}
		reverse_proxy %[7]s
	}
	route /deadkeep/* {
		ws_auth {
			secret %[5]s
			token_source query
			strip_token off
		}
		reverse_proxy %[7]s
	}
	route /status/* {
		ws_auth {
			secret %[5]s
			token_source query
			token_source subprotocol
			reject status
		}
		reverse_proxy %[6]s
	}
	route /ws {
		ws_auth {
			secret %[5]s
			token_source query
			token_source subprotocol
			token_source header
			scopes chat:read
		}
		reverse_proxy %[6]s
	}
}`, audit, everything, port, access, testSecret, up.addr(), deadAddr(t))
	if err := loadCaddyfile(cfg); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	waitListening(t, addr)

	good := hs256(t, claims("alice"))
	expired := hs256(t, claims("bob", func(c jwt.MapClaims) { c["exp"] = time.Now().Add(-time.Hour).Unix() }))
	forged := sign(t, jwt.SigningMethodHS256, []byte("not-the-secret-not-the-secret-123"), claims("mallory"), "")
	tokens := []string{good, expired, forged}
	kept := hs256(t, claims("keeper"))
	for _, tok := range tokens {
		for _, o := range []dialOpts{
			{query: "token=" + tok},
			{protocols: []string{"access_token", tok}},
			{header: map[string][]string{"Authorization": {"Bearer " + tok}}},
		} {
			c, resp, err := dial(addr, "/ws", o)
			_ = outcome(t, c, resp, err)
		}
		// Refused with a status, which Caddy would log with the request
		// (token included) to its error log if it were a handler error.
		for _, o := range []dialOpts{{query: "token=" + tok}, {protocols: []string{"access_token", tok}}} {
			c, resp, err := dial(addr, "/status/ws", o)
			if got := outcome(t, c, resp, err); tok != good && got != "status 401" {
				t.Errorf("reject status: %s, want status 401", got)
			}
		}
	}
	// Caddy writes an access log entry when the handler returns, which for
	// a WebSocket is after the tunnel closed: wait for all nine.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if data, _ := os.ReadFile(access); strings.Count(string(data), `"uri":"/ws`) >= 9 {
			break
		}
	}
	// An accepted request whose upstream cannot be reached: Caddy would log
	// the failed request, token included, to its error log.
	for _, tc := range []struct {
		path string
		o    dialOpts
	}{
		{"/dead/ws", dialOpts{query: "token=" + good}},
		{"/dead/ws", dialOpts{protocols: []string{"access_token", good}}},
		// strip_token off: the token stays in the request on purpose, so
		// reverse_proxy's own debug log shows it; the error log must not.
		{"/deadkeep/ws", dialOpts{query: "token=" + kept}},
		// A header of its own: Caddy redacts only the credential headers.
		{"/deadheader/ws", dialOpts{header: http.Header{"X-Token": {good}}}},
	} {
		c, resp, err := dial(addr, tc.path, tc.o)
		if got := outcome(t, c, resp, err); got != "status 502" {
			t.Errorf("%s, unreachable upstream: %s, want status 502", tc.path, got)
		}
	}
	if err := caddyStop(); err != nil { // flushes and closes the log files
		t.Fatal(err)
	}

	secrets := []string{testSecret}
	for _, tok := range tokens {
		secrets = append(secrets, tok, strings.Split(tok, ".")[2])
	}
	reasons := map[string]int{}
	for _, file := range []string{audit, access, everything} {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range secrets {
			if i := strings.Index(string(data), s); i >= 0 {
				t.Errorf("%s holds a secret or token part: %.20s… in %s", filepath.Base(file), s, string(data)[max(0, i-300):i])
			}
		}
		if file == everything {
			sc := bufio.NewScanner(strings.NewReader(string(data)))
			sc.Buffer(nil, 1<<20)
			for sc.Scan() {
				if strings.Contains(sc.Text(), `"logger":"http.log.error`) && strings.Contains(sc.Text(), kept) {
					t.Errorf("the error log holds the token of a strip_token off request: %.300s", sc.Text())
				}
			}
			continue
		}
		if file != audit {
			// The access log must have logged every request, or the check
			// above proves nothing.
			if n := strings.Count(string(data), `"uri":"/ws`); n != 9 {
				t.Errorf("access log has %d requests for /ws, want 9", n)
			}
			continue
		}
		sc := bufio.NewScanner(strings.NewReader(string(data)))
		for sc.Scan() {
			var line map[string]any
			if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
				t.Fatalf("audit line is not JSON: %s", sc.Text())
			}
			switch line["msg"] {
			case "websocket refused":
				reasons[fmt.Sprint(line["reason"])]++
				if line["reason"] == "expired" && line["user"] != "bob" {
					t.Errorf("refusal of a verified token lacks its user: %v", line)
				}
				if line["reason"] == "invalid" && line["user"] != nil {
					t.Errorf("refusal of a forged token names its claimed user: %v", line)
				}
			case "websocket authenticated":
				reasons["accepted"]++
				if line["user"] != "alice" && line["user"] != "keeper" || line["jti"] != "jti-"+fmt.Sprint(line["user"]) || line["remote_ip"] != "127.0.0.1" {
					t.Errorf("acceptance lacks user, jti or remote_ip: %v", line)
				}
			}
		}
	}
	if reasons["accepted"] != 9 || reasons["expired"] != 5 || reasons["invalid"] != 5 {
		t.Errorf("audit log decisions = %v, want 9 accepted, 5 expired, 5 invalid", reasons)
	}
}

func caddyStop() error { return caddy.Stop() }

// deadAddr is a loopback address where nothing listens.
func deadAddr(t testing.TB) string {
	return fmt.Sprintf("127.0.0.1:%d", freePort(t))
}

// TestAccessLogShowsRefusals: a WebSocket refused with a Close frame is in
// Caddy's access log with status 0; the entry says why (ws_auth_refused)
// and, when the signature checked out, who (user_id).
func TestAccessLogShowsRefusals(t *testing.T) {
	access := filepath.Join(t.TempDir(), "access.log")
	up := newUpstream(t)
	caddyMu.Lock()
	defer caddyMu.Unlock()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg := testConfig(addr, "log {\n\t\toutput file "+access+"\n\t}\n"+site("token_source query\n\t\ttoken_source first_message"), up.addr())
	if err := loadCaddyfile(cfg); err != nil {
		t.Fatal(err)
	}
	waitListening(t, addr)

	expired := hs256(t, claims("bob", func(c jwt.MapClaims) { c["exp"] = time.Now().Add(-time.Hour).Unix() }))
	forged := sign(t, jwt.SigningMethodHS256, []byte("not-the-secret-not-the-secret-123"), claims("mallory"), "")
	for _, tc := range []struct{ path, query, want string }{
		{"/ws/accepted", "token=" + hs256(t, claims("alice")), "accepted"},
		{"/ws/expired", "token=" + expired, "close 4001 expired"},
		{"/ws/forged", "token=" + forged, "close 1008 invalid"},
	} {
		c, resp, err := dial(addr, tc.path, dialOpts{query: tc.query})
		if got := outcome(t, c, resp, err); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.path, got, tc.want)
		}
	}
	c, _, err := dial(addr, "/ws/first", dialOpts{})
	if err != nil {
		t.Fatal(err)
	}
	_ = c.WriteMessage(websocket.TextMessage, []byte(`{"type":"auth","token":"`+expired+`"}`))
	if got := outcome(t, c, nil, nil); got != "close 4001 expired" {
		t.Errorf("first message: %s", got)
	}
	// Caddy writes an entry when the handler returns, which for a refused
	// WebSocket is after the client's Close came back: wait for all four.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if data, _ := os.ReadFile(access); strings.Count(string(data), `"uri":"/ws/`) >= 4 {
			break
		}
	}
	if err := caddyStop(); err != nil { // flushes the log file
		t.Fatal(err)
	}

	data, err := os.ReadFile(access)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][2]string{ // path -> ws_auth_refused, user_id
		"/ws/accepted": {"", "alice"},
		"/ws/expired":  {"expired", "bob"},
		"/ws/forged":   {"invalid", ""},
		"/ws/first":    {"expired", "bob"},
	}
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var entry struct {
			Request struct {
				URI string `json:"uri"`
			} `json:"request"`
			Refused string `json:"ws_auth_refused"`
			UserID  string `json:"user_id"`
		}
		if err := json.Unmarshal(sc.Bytes(), &entry); err != nil {
			t.Fatalf("access log line is not JSON: %s", sc.Text())
		}
		path, _, _ := strings.Cut(entry.Request.URI, "?")
		w, ok := want[path]
		if !ok {
			continue
		}
		delete(want, path)
		if entry.Refused != w[0] || entry.UserID != w[1] {
			t.Errorf("%s: access log ws_auth_refused %q, user_id %q; want %q, %q", path, entry.Refused, entry.UserID, w[0], w[1])
		}
	}
	for path := range want {
		t.Errorf("%s: not in the access log", path)
	}
}
