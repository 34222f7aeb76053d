package wsauth

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// The session-cookie browser test: session_check as a cookie-session app's
// users meet it. The browser logs in to the app through Caddy and gets an
// HttpOnly session cookie on Caddy's origin; its page's WebSocket to /ws
// carries that cookie, and ws_auth asks the app's session endpoint about
// it.

// browserSession is the session /login starts, for alice.
const browserSession = "s-alice-browser"

// sessionApp is a cookie-session app: its page at /, /login, which starts
// alice's session and sets its cookie (HttpOnly, on the origin the browser
// reached the app at), and its session endpoint at /api/session, which is
// newSessionServer's: the same answers, the same call counts, and
// sessions.forget ends a session as a logout does.
type sessionApp struct {
	*httptest.Server
	sessions *authServer
}

func newSessionApp(t testing.TB) *sessionApp {
	sessions := newSessionServer(t)
	mux := http.NewServeMux()
	mux.Handle("/api/session", sessions.Config.Handler)
	mux.HandleFunc("GET /login", func(w http.ResponseWriter, r *http.Request) {
		sessions.set(browserSession, map[string]any{"sub": "alice"})
		http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: browserSession, Path: "/", HttpOnly: true})
		http.Redirect(w, r, "/", http.StatusSeeOther)
	})
	mux.HandleFunc("GET /{$}", servePage)
	app := &sessionApp{Server: httptest.NewServer(mux), sessions: sessions}
	t.Cleanup(app.Close)
	return app
}

func servePage(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = w.Write([]byte(browserPage))
}

// liveOpen opens the page's long-lived WebSocket to url, kept as
// window.live: the socket, what the page saw of it so far (a wsResult),
// and a promise of that once the close event has fired.
func liveOpen(url string) string {
	return fmt.Sprintf(`(() => {
	const r = {opened: false, protocol: "", messages: [], errored: false, code: 0, reason: "", wasClean: false};
	const ws = new WebSocket(%s);
	const closed = new Promise((resolve) => ws.addEventListener("close", (e) => {
		r.code = e.code;
		r.reason = e.reason;
		r.wasClean = e.wasClean;
		resolve(r);
	}));
	ws.addEventListener("open", () => { r.opened = true; r.protocol = ws.protocol; });
	ws.addEventListener("message", (e) => { r.messages.push(String(e.data)); });
	ws.addEventListener("error", () => { r.errored = true; });
	window.live = {ws, r, closed};
	return true;
})()`, mustJSON(url))
}

// liveSend waits for window.live's socket to open, sends msg, and
// resolves with what the page saw once the next message arrives, the
// socket closes, or within ms milliseconds.
func liveSend(msg string, ms int) string {
	return fmt.Sprintf(`(async () => {
	const {ws, r, closed} = window.live;
	const within = (p) => Promise.race([p, closed, new Promise((res) => setTimeout(res, %d))]);
	if (ws.readyState === WebSocket.CONNECTING) {
		await within(new Promise((res) => ws.addEventListener("open", res, {once: true})));
	}
	if (ws.readyState === WebSocket.OPEN) {
		const next = new Promise((res) => ws.addEventListener("message", res, {once: true}));
		ws.send(%s);
		await within(next);
	}
	return r;
})()`, ms, mustJSON(msg))
}

// liveClosed resolves with what the page saw of window.live's socket once
// its close event has fired, or after ms milliseconds without one (code
// 0).
func liveClosed(ms int) string {
	return fmt.Sprintf(`(async () => {
	const {r, closed} = window.live;
	await Promise.race([closed, new Promise((res) => setTimeout(res, %d))]);
	return r;
})()`, ms)
}

// TestBrowserSessionCookie: a page of a cookie-session app behind Caddy
// (session_check, revalidate 1s), logged in with an HttpOnly session_id
// cookie that its scripts cannot read, opens its WebSocket with that cookie
// and gets the echo of what it sends, as alice, before and after a re-check
// that the app approves; a page of another origin (another port), whose
// WebSockets to Caddy carry the live cookie too, reads CloseEvent.code 1008
// and reason "origin"; once the app has ended the session (a logout), the
// open socket reads 1008 "revoked" within the interval (at most revalidate
// + 3 s), and a new socket with the dead cookie 1008 "invalid". Refused
// sockets never reach the upstream, and the cookie never does.
func TestBrowserSessionCookie(t *testing.T) {
	browser := findBrowser(t)

	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()

	const revalidate = time.Second
	app := newSessionApp(t)
	// Another origin: the same host, another port.
	other := httptest.NewServer(http.HandlerFunc(servePage))
	defer other.Close()
	up := newUpstream(t)
	// The app behind Caddy, as the browser sees it: its pages and login on
	// the site's origin, /ws guarded by ws_auth, with the answers' cache at
	// its default (1m), which a re-check must see past. /open is a
	// WebSocket route without ws_auth.
	addr := startCaddyFor(t, func(addr string) string {
		return `
	handle /ws {
		ws_auth {
			token_source cookie ` + sessionCookie + `
			allowed_origins http://` + addr + `
			session_check ` + app.URL + `/api/session
			revalidate ` + revalidate.String() + `
		}
		reverse_proxy %UPSTREAM% {
			header_up X-User {http.auth.user.id}
		}
	}
	handle /open {
		reverse_proxy %UPSTREAM%
	}
	handle {
		reverse_proxy ` + strings.TrimPrefix(app.URL, "http://") + `
	}`
	}, up.addr())
	origin, wsURL := "http://"+addr, "ws://"+addr+"/ws"

	bctx, events, output, stop := launchBrowser(t, ctx, browser)
	defer stop()
	var last wsResult // what the page saw last, for a failure's log
	defer func() {
		if t.Failed() {
			lines, _ := events.since(0)
			t.Logf("page saw %+v; browser network events:\n\t%s", last, strings.Join(lines, "\n\t"))
		}
	}()
	// eval runs script in tab, awaiting its promise, for at most d.
	eval := func(tab context.Context, what, script string, d time.Duration) wsResult {
		t.Helper()
		cctx, ccancel := context.WithTimeout(tab, d)
		defer ccancel()
		r, err := chromedp.Run(cctx, chromedp.Evaluate[wsResult](script, chromedp.EvalAwaitPromise))
		if err != nil {
			t.Fatalf("%s: evaluating the script: %v", what, err)
		}
		last = r
		return r
	}

	// Log in: the app's /login sets the cookie and sends the browser to
	// its page.
	loginURL := origin + "/login"
	if err := chromedp.Do(bctx, chromedp.Navigate(loginURL)); err != nil {
		t.Fatalf("navigating to %s: %v\nbrowser output:\n%s", loginURL, err, output.String())
	}
	page, err := chromedp.Run(bctx, chromedp.Evaluate[[]string](`[location.href, document.cookie]`))
	if err != nil || len(page) != 2 || page[0] != origin+"/" || page[1] != "" {
		t.Fatalf("after login the page is [location.href, document.cookie] %q (%v), want [%q, \"\"]: logged in, the cookie HttpOnly",
			page, err, origin+"/")
	}

	// The page's WebSocket connects as alice, with the cookie.
	if _, err := chromedp.Run(bctx, chromedp.Evaluate[bool](liveOpen(wsURL))); err != nil {
		t.Fatalf("opening the WebSocket: %v", err)
	}
	r := eval(bctx, "first message", liveSend("hello", 5000), 10*time.Second)
	if !r.Opened || !slices.Equal(r.Messages, []string{"hello"}) || r.Code != 0 {
		t.Fatalf("logged in: opened %v, received %q, closed with %d %q; want open and the echo of \"hello\"",
			r.Opened, r.Messages, r.Code, r.Reason)
	}
	reqs := up.requests()
	if len(reqs) != 1 || reqs[0].Header.Get("X-User") != "alice" || reqs[0].Header.Get("Origin") != origin {
		t.Fatalf("upstream saw %+v, want one request, from %s, with X-User alice", reqs, origin)
	}
	for name, vals := range reqs[0].Header {
		for _, v := range vals {
			if strings.Contains(v, browserSession) {
				t.Errorf("upstream request header %s holds the session cookie", name)
			}
		}
	}

	// A re-check: the app is asked again about the live session, says it
	// holds, and the socket stays open.
	eventually(t, 3*revalidate+2*time.Second, "the app asked again about the live session (revalidate "+revalidate.String()+")",
		func() string {
			if n := app.sessions.callsFor(browserSession); n < 2 {
				return fmt.Sprintf("%d calls about it", n)
			}
			return ""
		})
	r = eval(bctx, "message after a re-check", liveSend("still here", 5000), 10*time.Second)
	if !slices.Equal(r.Messages, []string{"hello", "still here"}) || r.Code != 0 {
		t.Fatalf("after a re-check the app approved: received %q, closed with %d %q; want the echo of \"still here\"",
			r.Messages, r.Code, r.Reason)
	}

	// A page of another origin, on the same host (another port), while the
	// session is live. Chromium sends the session cookie with its
	// WebSockets to Caddy: one to /open, a route without ws_auth, reaches
	// the upstream with it. To /ws, ws_auth refuses it for its Origin.
	tab, tabCancel := chromedp.NewContext(bctx, chromedp.WithListener(events.listen))
	defer tabCancel()
	if err := chromedp.Do(tab, chromedp.Navigate(other.URL)); err != nil {
		t.Fatalf("navigating to %s: %v", other.URL, err)
	}
	before := len(up.requests())
	r = eval(tab, "other origin, route without ws_auth", openScript("ws://"+addr+"/open", nil, "hello"), 15*time.Second)
	if reqs := up.requests(); !slices.Equal(r.Messages, []string{"hello"}) || len(reqs) != before+1 {
		t.Errorf("page of %s, route without ws_auth: received %q, upstream saw %d requests; want the echo, 1",
			other.URL, r.Messages, len(reqs)-before)
	} else if h := reqs[before].Header; h.Get("Origin") != other.URL || !strings.Contains(h.Get("Cookie"), sessionCookie+"="+browserSession) {
		t.Errorf("page of %s, route without ws_auth: the upstream saw Origin %q and Cookie %q, want %s and the session cookie",
			other.URL, h.Get("Origin"), h.Get("Cookie"), other.URL)
	}
	before = len(up.requests())
	r = eval(tab, "other origin", openScript(wsURL, nil, "hello"), 15*time.Second)
	if r.Code != 1008 || r.Reason != "origin" || !r.WasClean {
		t.Errorf("page of %s: CloseEvent code %d reason %q clean %v, want a clean 1008 \"origin\"", other.URL, r.Code, r.Reason, r.WasClean)
	}
	if n := len(up.requests()) - before; n != 0 {
		t.Errorf("the other origin's socket reached the upstream (%d requests)", n)
	}
	_ = chromedp.Cancel(tab) // closes the tab
	tabCancel()

	// The app ends the session, as its logout does (the browser keeps the
	// cookie): within the revalidate interval the open socket reads 1008
	// "revoked".
	app.sessions.forget(browserSession)
	loggedOut := time.Now()
	bound := revalidate + 3*time.Second
	r = eval(bctx, "after logout", liveClosed(int(bound/time.Millisecond)), bound+5*time.Second)
	took := time.Since(loggedOut)
	if r.Code != 1008 || r.Reason != "revoked" || !r.WasClean {
		t.Fatalf("after logout: CloseEvent code %d reason %q clean %v (after %v), want a clean 1008 \"revoked\" within %v",
			r.Code, r.Reason, r.WasClean, took.Round(time.Millisecond), bound)
	}
	t.Logf("socket closed %v after the logout (revalidate %v)", took.Round(time.Millisecond), revalidate)

	// A new WebSocket with the dead cookie: 1008 "invalid".
	before = len(up.requests())
	r = eval(bctx, "dead cookie", openScript(wsURL, nil, "hello"), 15*time.Second)
	if r.Code != 1008 || r.Reason != "invalid" || !r.WasClean {
		t.Errorf("with the dead cookie: CloseEvent code %d reason %q clean %v, want a clean 1008 \"invalid\"", r.Code, r.Reason, r.WasClean)
	}
	if n := len(up.requests()) - before; n != 0 {
		t.Errorf("the dead cookie's socket reached the upstream (%d requests)", n)
	}
}
