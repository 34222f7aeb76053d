package wsauth

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/golang-jwt/jwt/v5"
)

// The browser test proves what the other tests can only assume: that a real
// browser, given the handshake and Close frame ws_auth writes, reports the
// close code of the table in CloseEvent.code, and that it accepts the
// subprotocol selected for a token offered as a subprotocol.

// browserNames are the programs tried, in order, to find a Chromium.
var browserNames = []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"}

// findBrowser returns the path of a Chromium. Without one the test is
// skipped, or fails when WSAUTH_REQUIRE_BROWSER=1 (as in CI), so that CI
// never passes by skipping.
func findBrowser(t *testing.T) string {
	t.Helper()
	for _, name := range browserNames {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	msg := fmt.Sprintf("no browser found on PATH (tried %s); install one, e.g. apt-get install -y chromium",
		strings.Join(browserNames, ", "))
	if os.Getenv("WSAUTH_REQUIRE_BROWSER") == "1" {
		t.Fatal(msg + " (WSAUTH_REQUIRE_BROWSER=1)")
	}
	t.Skip(msg)
	return ""
}

// browserFlags are the Chromium flags of the test. The closed network of
// test machines refuses the background connections Chromium otherwise
// makes (QUIC, component updates, sync).
func browserFlags(userDataDir string) []chromedp.ExecAllocatorOption {
	return []chromedp.ExecAllocatorOption{
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true), // small /dev/shm in containers
		chromedp.UserDataDir(userDataDir),
	}
}

// browserPage is the page the WebSocket is opened from, served by the same
// Caddy so that the connection is same-origin.
const browserPage = `<!doctype html><html><head><title>ws_auth</title></head><body>ws_auth browser test</body></html>`

// wsResult is what the page saw of one WebSocket.
type wsResult struct {
	Opened   bool     `json:"opened"`
	Protocol string   `json:"protocol"` // ws.protocol at open
	Messages []string `json:"messages"`
	Errored  bool     `json:"errored"` // an error event fired
	Code     int      `json:"code"`    // CloseEvent.code
	Reason   string   `json:"reason"`  // CloseEvent.reason
	WasClean bool     `json:"wasClean"`
}

// openScript opens a WebSocket to url, offering protocols when not nil,
// sends send once open (when not empty), closes with 1000 after the first
// message, and resolves with what it saw when the close event fires.
func openScript(url string, protocols []string, send string) string {
	return fmt.Sprintf(`(async () => {
	const url = %s, protocols = %s, send = %s;
	return await new Promise((resolve) => {
		const r = {opened: false, protocol: "", messages: [], errored: false, code: 0, reason: "", wasClean: false};
		const ws = protocols === null ? new WebSocket(url) : new WebSocket(url, protocols);
		ws.onopen = () => {
			r.opened = true;
			r.protocol = ws.protocol;
			if (send !== "") ws.send(send);
		};
		ws.onmessage = (e) => {
			r.messages.push(String(e.data));
			ws.close(1000, "done");
		};
		ws.onerror = () => { r.errored = true; };
		ws.onclose = (e) => {
			r.code = e.code;
			r.reason = e.reason;
			r.wasClean = e.wasClean;
			resolve(r);
		};
	});
})()`, mustJSON(url), mustJSON(protocols), mustJSON(send))
}

// wsEvents records what Chromium's network stack reports of the WebSocket
// connections, to explain a failure: the handshake response and the frames
// as the browser read them.
type wsEvents struct {
	mu    sync.Mutex
	lines []string
}

func (e *wsEvents) listen(ev any) {
	var line string
	switch ev := ev.(type) {
	case *network.EventWebSocketCreated:
		line = fmt.Sprintf("%s created %s", ev.RequestID, ev.URL)
	case *network.EventWebSocketHandshakeResponseReceived:
		if ev.Response != nil {
			line = fmt.Sprintf("%s handshake response %d %s, headers %v", ev.RequestID, ev.Response.Status, ev.Response.StatusText, ev.Response.Headers)
		}
	case *network.EventWebSocketFrameReceived:
		if ev.Response != nil {
			line = fmt.Sprintf("%s frame received opcode %v payload %q", ev.RequestID, ev.Response.Opcode, ev.Response.PayloadData)
		}
	case *network.EventWebSocketFrameSent:
		if ev.Response != nil {
			line = fmt.Sprintf("%s frame sent opcode %v payload %q", ev.RequestID, ev.Response.Opcode, ev.Response.PayloadData)
		}
	case *network.EventWebSocketFrameError:
		line = fmt.Sprintf("%s frame error: %s", ev.RequestID, ev.ErrorMessage)
	case *network.EventWebSocketClosed:
		line = fmt.Sprintf("%s closed", ev.RequestID)
	}
	if line == "" {
		return
	}
	e.mu.Lock()
	e.lines = append(e.lines, line)
	e.mu.Unlock()
}

// since returns the lines recorded after the first n, and how many there
// are in all.
func (e *wsEvents) since(n int) ([]string, int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.lines[n:]...), len(e.lines)
}

// TestBrowserCloseCodes opens WebSockets from a page in headless Chromium,
// through a real Caddy, and checks what the page reads: CloseEvent.code and
// reason for each refusal, and for accepted tokens the selected subprotocol
// and an echo from the upstream.
func TestBrowserCloseCodes(t *testing.T) {
	browser := findBrowser(t)

	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()

	up := newUpstream(t)
	addr := startCaddyFor(t, func(addr string) string {
		return `
	handle /page {
		header Content-Type "text/html; charset=utf-8"
		respond "` + browserPage + `" 200
	}
	handle /ws {
		ws_auth {
			secret ` + testSecret + `
			token_source query
			token_source subprotocol
			scopes chat:read
			allowed_origins http://` + addr + `
		}
		reverse_proxy %UPSTREAM%
	}`
	}, up.addr())

	bctx, events, output, stop := launchBrowser(t, ctx, browser)
	defer stop()

	pageURL := "http://" + addr + "/page"
	if err := chromedp.Do(bctx, chromedp.Navigate(pageURL)); err != nil {
		t.Fatalf("navigating to %s: %v\nbrowser output:\n%s", pageURL, err, output.String())
	}
	origin, err := chromedp.Run(bctx, chromedp.Evaluate[string](`location.origin`))
	if err != nil || origin != "http://"+addr {
		t.Fatalf("page origin %q (%v), want %q", origin, err, "http://"+addr)
	}

	past := func(c jwt.MapClaims) {
		n := time.Now()
		c["iat"], c["nbf"], c["exp"] = n.Add(-2*time.Hour).Unix(), n.Add(-2*time.Hour).Unix(), n.Add(-time.Hour).Unix()
	}
	noScope := func(c jwt.MapClaims) { c["scope"] = "chat:write profile" }
	expired := hs256(t, claims("alice", past))
	forbidden := hs256(t, claims("bob", noScope))
	good := hs256(t, claims("carol"))

	wsURL := "ws://" + addr + "/ws"
	cases := []struct {
		name      string
		query     string   // token in the query
		protocols []string // nil: none offered
		send      string

		// a refusal
		code   int
		reason string

		// an acceptance
		protocol string
	}{
		{name: "expired token in query", query: expired, code: 4001, reason: "expired"},
		{name: "token without the scope in query", query: forbidden, code: 4003, reason: "forbidden"},
		{name: "no token", code: 1008, reason: "missing"},
		{name: "expired token as subprotocol", protocols: []string{"access_token", expired}, code: 4001, reason: "expired"},
		{name: "token without the scope as subprotocol, with an app protocol", protocols: []string{"access_token", forbidden, "chat"}, code: 4003, reason: "forbidden"},
		{name: "valid token as subprotocol", protocols: []string{"access_token", good}, send: "hello", protocol: "access_token"},
		{name: "valid token as subprotocol, with an app protocol", protocols: []string{"access_token", good, "chat"}, send: "hello", protocol: "chat"},
		{name: "valid token in query", query: good, send: "hello", protocol: ""},
	}
	redact := strings.NewReplacer(expired, "<expired token>", forbidden, "<token without scope>", good, "<valid token>")
	seenEvents := 0
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			u := wsURL
			if tc.query != "" {
				u += "?token=" + tc.query
			}
			before := len(up.requests())

			cctx, ccancel := context.WithTimeout(bctx, 15*time.Second)
			r, err := chromedp.Run(cctx, chromedp.Evaluate[wsResult](openScript(u, tc.protocols, tc.send), chromedp.EvalAwaitPromise))
			ccancel()

			var lines []string
			lines, seenEvents = events.since(seenEvents)
			defer func() {
				if t.Failed() {
					t.Logf("page saw %+v; browser network events:\n\t%s", r, redact.Replace(strings.Join(lines, "\n\t")))
				}
			}()
			if err != nil {
				t.Fatalf("evaluating the script: %v", err)
			}
			reached := len(up.requests()) - before

			if tc.code != 0 {
				if r.Code != tc.code || r.Reason != tc.reason {
					t.Errorf("CloseEvent code %d reason %q, want %d %q", r.Code, r.Reason, tc.code, tc.reason)
				}
				if !r.WasClean {
					t.Errorf("CloseEvent.wasClean is false, want a clean closing handshake")
				}
				if tc.protocols != nil && (!slices.Contains(tc.protocols, r.Protocol) || r.Protocol == tc.protocols[1]) {
					t.Errorf("ws.protocol %q, want one of the protocols offered other than the token", redact.Replace(r.Protocol))
				}
				if reached != 0 {
					t.Errorf("a refused client reached the upstream (%d requests)", reached)
				}
				return
			}
			if !r.Opened {
				t.Errorf("onopen never fired; closed with %d %q", r.Code, r.Reason)
			}
			if r.Protocol != tc.protocol {
				t.Errorf("ws.protocol %q, want %q", redact.Replace(r.Protocol), tc.protocol)
			}
			if !slices.Equal(r.Messages, []string{tc.send}) {
				t.Errorf("received %q, want the echo %q", r.Messages, tc.send)
			}
			if r.Code != 1000 || !r.WasClean {
				t.Errorf("after the client's close: code %d reason %q clean %v, want a clean 1000", r.Code, r.Reason, r.WasClean)
			}
			if reached != 1 {
				t.Errorf("upstream saw %d requests, want 1", reached)
			}
		})
	}

	// strip_token is on by default: the upstream never saw a token.
	for _, s := range up.requests() {
		for _, tok := range []string{expired, forbidden, good} {
			if strings.Contains(s.URI, tok) {
				t.Errorf("upstream request URI %q holds a token", s.URI)
			}
			for name, vals := range s.Header {
				for _, v := range vals {
					if strings.Contains(v, tok) {
						t.Errorf("upstream request header %s holds a token", name)
					}
				}
			}
		}
	}
}

// removeProfile removes the browser's profile directory. Chromium's helper
// processes may still write to it for a moment after the browser exits, so
// removal is retried briefly.
// launchBrowser starts Chromium (the executable browser) under ctx, in a
// fresh profile directory, and returns its context, the WebSocket events it
// reports and its output; stop, to be deferred, closes it gracefully
// (bounded), kills it if that failed, waits for it, and removes the
// profile.
func launchBrowser(t *testing.T, ctx context.Context, browser string) (bctx context.Context, events *wsEvents, output *browserOutput, stop func()) {
	userDataDir, err := os.MkdirTemp("", "wsauth-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	output = new(browserOutput)
	allocCtx, allocCancel := chromedp.NewExecAllocator(ctx, append(browserFlags(userDataDir),
		chromedp.ExecPath(browser), chromedp.CombinedOutput(output))...)
	events = new(wsEvents)
	bctx, bcancel := chromedp.NewContext(allocCtx, chromedp.WithListener(events.listen))
	return bctx, events, output, func() {
		cctx, ccancel := context.WithTimeout(bctx, 10*time.Second)
		if err := chromedp.Cancel(cctx); err != nil {
			t.Logf("closing the browser: %v", err)
		}
		ccancel()
		bcancel()
		allocCancel() // kills the browser if the graceful close failed, and waits for it
		removeProfile(t, userDataDir)
	}
}

func removeProfile(t *testing.T, dir string) {
	var err error
	for i := 0; i < 50; i++ {
		if err = os.RemoveAll(dir); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("removing the browser profile %s: %v", dir, err)
}

// browserOutput is a bytes.Buffer, safe for the browser's output goroutine and
// the test.
type browserOutput struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *browserOutput) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *browserOutput) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestBrowserSeesExpiry: a page whose WebSocket's token expires while it is
// open reads CloseEvent.code 4001 and reason "expired", after the echo of
// what it sent.
func TestBrowserSeesExpiry(t *testing.T) {
	browser := findBrowser(t)

	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()

	up := newUpstream(t)
	addr := startCaddyFor(t, func(addr string) string {
		return `
	handle /page {
		header Content-Type "text/html; charset=utf-8"
		respond "` + browserPage + `" 200
	}
	handle /ws {
		ws_auth {
			secret ` + testSecret + `
			token_source query
			allowed_origins http://` + addr + `
		}
		reverse_proxy %UPSTREAM%
	}`
	}, up.addr())

	bctx, events, output, stop := launchBrowser(t, ctx, browser)
	defer stop()

	pageURL := "http://" + addr + "/page"
	if err := chromedp.Do(bctx, chromedp.Navigate(pageURL)); err != nil {
		t.Fatalf("navigating to %s: %v\nbrowser output:\n%s", pageURL, err, output.String())
	}

	// Made once the browser is up, so that it is still valid at the
	// handshake: exp is 2 to 3 seconds ahead.
	tok := hs256(t, claims("alice", func(c jwt.MapClaims) { c["exp"] = time.Now().Add(3 * time.Second).Unix() }))
	// Sends "hello" once open, keeps the connection open, and resolves with
	// what it saw when the close event fires, or after 12 seconds without.
	script := fmt.Sprintf(`(async () => {
	const url = %s;
	return await new Promise((resolve) => {
		const r = {opened: false, protocol: "", messages: [], errored: false, code: 0, reason: "", wasClean: false};
		setTimeout(() => resolve(r), 12000); // no close event: say what was seen
		const ws = new WebSocket(url);
		ws.onopen = () => { r.opened = true; ws.send("hello"); };
		ws.onmessage = (e) => { r.messages.push(String(e.data)); };
		ws.onerror = () => { r.errored = true; };
		ws.onclose = (e) => {
			r.code = e.code;
			r.reason = e.reason;
			r.wasClean = e.wasClean;
			resolve(r);
		};
	});
})()`, mustJSON("ws://"+addr+"/ws?token="+tok))
	cctx, ccancel := context.WithTimeout(bctx, 20*time.Second)
	r, err := chromedp.Run(cctx, chromedp.Evaluate[wsResult](script, chromedp.EvalAwaitPromise))
	ccancel()
	defer func() {
		if t.Failed() {
			lines, _ := events.since(0)
			t.Logf("page saw %+v; browser network events:\n\t%s", r, strings.ReplaceAll(strings.Join(lines, "\n\t"), tok, "<token>"))
		}
	}()
	if err != nil {
		t.Fatalf("evaluating the script: %v", err)
	}
	if !r.Opened || !slices.Equal(r.Messages, []string{"hello"}) {
		t.Errorf("opened %v, received %q; want open and the echo before expiry", r.Opened, r.Messages)
	}
	if r.Code != 4001 || r.Reason != "expired" || !r.WasClean {
		t.Errorf("CloseEvent code %d reason %q clean %v, want a clean 4001 \"expired\"", r.Code, r.Reason, r.WasClean)
	}
}
