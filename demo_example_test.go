package wsauth

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/caddyserver/caddy/v2"
)

// The tests of this file run the demo as a newcomer does, from
// example.Caddyfile itself, with DEMO_PORT set to a free port.

// exampleDemo is a running example.Caddyfile.
type exampleDemo struct {
	port    int
	url     string // the address the demo logged at start ("demo: open <url>")
	logFile string // the page module's log
}

// startExampleDemo loads example.Caddyfile in this process with DEMO_PORT
// set to a free port. Two things of the process, not of the demo, are
// changed in the adapted JSON: the admin endpoint is off (so that the test
// does not meet a demo or another Caddy using localhost:2019), and the page
// module's log goes to a file the test reads.
func startExampleDemo(t *testing.T) *exampleDemo {
	t.Helper()
	caddyMu.Lock()
	t.Cleanup(caddyMu.Unlock)

	d := &exampleDemo{port: freePort(t), logFile: filepath.Join(t.TempDir(), "page.log")}
	t.Setenv("DEMO_PORT", strconv.Itoa(d.port))
	js := adaptExample(t)
	var cfg map[string]any
	if err := json.Unmarshal(js, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["admin"] = map[string]any{"disabled": true, "config": map[string]any{"persist": false}}
	cfg["logging"] = map[string]any{"logs": map[string]any{"demo": map[string]any{
		"writer":  map[string]any{"output": "file", "filename": d.logFile, "roll": false},
		"include": []string{"http.handlers.ws_demo_page"},
	}}}
	js, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := caddy.Load(js, true); err != nil {
		t.Fatalf("loading example.Caddyfile with DEMO_PORT=%d: %v", d.port, err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
	waitListening(t, fmt.Sprintf("127.0.0.1:%d", d.port))

	// the one line that says where to open the demo
	logged, err := os.ReadFile(d.logFile)
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(logged)) {
		var entry struct {
			Level, Msg, URL string
		}
		if json.Unmarshal([]byte(line), &entry) == nil && strings.HasPrefix(entry.Msg, "demo: open ") {
			if entry.Level != "info" || entry.Msg != "demo: open "+entry.URL {
				t.Errorf("start line %s: want level info and the message \"demo: open <url>\"", line)
			}
			d.url = entry.URL
		}
	}
	if want := fmt.Sprintf("http://localhost:%d/", d.port); d.url != want {
		t.Fatalf("the demo logged \"demo: open %s\", want %s; the page module's log:\n%s", d.url, want, logged)
	}
	return d
}

// TestExampleCaddyfileOnDemoPort runs example.Caddyfile on another port,
// given by DEMO_PORT alone: the page is served at the URL it logs, and a
// real client logs in through the demo endpoint and talks to the echo
// application through ws_auth at /ws, from a page of either address of
// the site; an origin on the default port is refused.
func TestExampleCaddyfileOnDemoPort(t *testing.T) {
	d := startExampleDemo(t)
	addr := fmt.Sprintf("127.0.0.1:%d", d.port)

	resp, err := http.Get(d.url)
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(page), "ws_auth demo") {
		t.Fatalf("GET %s: status %d, want 200 and the demo page", d.url, resp.StatusCode)
	}

	resp, err = http.Post("http://"+addr+"/login", "application/json",
		strings.NewReader(`{"user":"alice","scope":"chat:read chat:write","ttl":"60s"}`))
	if err != nil {
		t.Fatal(err)
	}
	var login struct{ Token string }
	err = json.NewDecoder(resp.Body).Decode(&login)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || err != nil || login.Token == "" {
		t.Fatalf("login: status %d, %v, want 200 and a token", resp.StatusCode, err)
	}

	for _, origin := range []string{"http://localhost:" + strconv.Itoa(d.port), "http://" + addr} {
		t.Run("origin "+origin, func(t *testing.T) {
			c, _, err := dial(addr, "/ws", dialOpts{query: "token=" + login.Token, origin: origin})
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			defer c.Close()
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			var welcome struct{ Type, User, Scopes string }
			if err := c.ReadJSON(&welcome); err != nil {
				t.Fatalf("reading the welcome: %v", err)
			}
			if welcome.Type != "welcome" || welcome.User != "alice" || welcome.Scopes != "chat:read chat:write" {
				t.Errorf("welcome %+v, want alice's from the echo application", welcome)
			}
			if err := c.WriteMessage(websocket.TextMessage, []byte("hello")); err != nil {
				t.Fatal(err)
			}
			if _, msg, err := c.ReadMessage(); err != nil || string(msg) != "hello" {
				t.Errorf("echo: %q, %v; want hello", msg, err)
			}
		})
	}

	// the allowed origins follow DEMO_PORT: the default port's are not
	// allowed any more
	other := "http://localhost:8080"
	if d.port == 8080 {
		other = "http://localhost:8081"
	}
	c, resp, err := dial(addr, "/ws", dialOpts{query: "token=" + login.Token, origin: other})
	if got := outcome(t, c, resp, err); got != "close 1008 origin" {
		t.Errorf("origin %s: %s, want close 1008 origin", other, got)
	}
}
