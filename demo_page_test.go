package wsauth

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// pagePromise is a case the demo page lists with its expected outcome.
type pagePromise struct {
	// a one-click case: the button's data-scenario
	scenario string
	// a token lifetime of the form: the option's value
	ttl string

	label string // what the page shows
	code  int    // the promised close code; 0: the connection opens
}

func (p pagePromise) String() string {
	if p.scenario != "" {
		return fmt.Sprintf("button %q (%s)", p.scenario, p.label)
	}
	return fmt.Sprintf("token lifetime %q (%s)", p.ttl, p.label)
}

var (
	scenarioRE = regexp.MustCompile(`(?s)<button[^>]*\bdata-scenario="([^"]+)"[^>]*>(.*?)</button>\s*<span class="expect">(.*?)</span>`)
	optionRE   = regexp.MustCompile(`(?s)<option value="([^"]*)"[^>]*>(.*?)</option>`)
	inlineRE   = regexp.MustCompile(`(?s)<(script|style)>.*?</(script|style)>`)
	// closeCodeRE matches the close codes of RFC 6455 a page may mention:
	// 1000 to 1015, and the registered and private ranges 3000 to 4999.
	closeCodeRE = regexp.MustCompile(`\b(10(?:0\d|1[0-5])|[34]\d{3})\b`)
)

// demoPagePromises reads the cases the demo page promises an outcome for:
// every one-click button with its "expect" text ("opens ..." or "closes
// with <code> ..."), and every token lifetime whose label names a close
// code. It reports as problems the promises it cannot read: a button
// without an expect text, an expect text of another form, or a close code
// mentioned anywhere outside the script that no case promises. A new
// promise on the page therefore either is run by
// TestBrowserDemoPagePromises or fails the tests.
func demoPagePromises(page string) (promises []pagePromise, problems []string) {
	errorf := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	markup := inlineRE.ReplaceAllString(page, "")
	promised := map[int]bool{}

	buttons := scenarioRE.FindAllStringSubmatch(markup, -1)
	if n := strings.Count(markup, "data-scenario="); n != len(buttons) {
		errorf("the page has %d one-click buttons, %d with a readable <span class=\"expect\"> right after", n, len(buttons))
	}
	for _, m := range buttons {
		p := pagePromise{scenario: m[1], label: strings.TrimSpace(m[2])}
		expect := strings.TrimSpace(m[3])
		switch code := regexp.MustCompile(`^closes with (\d{4})\b`).FindStringSubmatch(expect); {
		case code != nil:
			p.code, _ = strconv.Atoi(code[1])
		case strings.HasPrefix(expect, "opens"):
		default:
			errorf("%s: expect text %q is neither \"opens ...\" nor \"closes with <code> ...\"", p, expect)
			continue
		}
		promises = append(promises, p)
		promised[p.code] = true
	}
	if len(buttons) == 0 {
		errorf("the page has no one-click cases")
	}

	for _, m := range optionRE.FindAllStringSubmatch(markup, -1) {
		codes := closeCodeRE.FindAllString(m[2], -1)
		if len(codes) == 0 {
			continue
		}
		p := pagePromise{ttl: m[1], label: strings.TrimSpace(m[2])}
		if len(codes) != 1 {
			errorf("%s: names several close codes; the test knows one outcome per lifetime", p)
			continue
		}
		if d, err := time.ParseDuration(p.ttl); err != nil || d <= 0 {
			errorf("%s: names a close code, but the test can only run a positive lifetime to its expiry", p)
			continue
		}
		p.code, _ = strconv.Atoi(codes[0])
		promises = append(promises, p)
		promised[p.code] = true
	}

	for _, c := range closeCodeRE.FindAllString(markup, -1) {
		if code, _ := strconv.Atoi(c); !promised[code] {
			errorf("the page mentions close code %d outside the script, but none of its cases promises it: "+
				"give it a case (a button with an expect text) that the browser test runs", code)
		}
	}
	return promises, problems
}

// TestDemoPagePromisesReadable checks, without a browser, that every
// outcome demo/page.html promises is one TestBrowserDemoPagePromises
// understands and runs, and that the cases of the issue are there.
func TestDemoPagePromisesReadable(t *testing.T) {
	page, err := os.ReadFile("demo/page.html")
	if err != nil {
		t.Fatal(err)
	}
	promises, problems := demoPagePromises(string(page))
	for _, p := range problems {
		t.Error(p)
	}
	got := map[string]int{}
	for _, p := range promises {
		got[p.scenario+p.ttl] = p.code
	}
	want := map[string]int{"valid": 0, "expired": 4001, "noscope": 4003, "none": 1008, "forged": 1008, "10s": 4001}
	for k, code := range want {
		if c, ok := got[k]; !ok || c != code {
			t.Errorf("case %q: promised %d (listed: %v), want %d", k, c, ok, code)
		}
	}
	if strings.Contains(string(page), "close the live connection") {
		t.Error("the page promises that ws_auth closes a live connection; this version does not")
	}

	// a promise the test cannot run is noticed
	list := `<ul class="scenarios">`
	for _, bad := range []string{
		`<li><button type="button" data-scenario="banned">Connect as a banned user</button></li>`,
		`<li><button type="button" data-scenario="banned">Connect as a banned user</button>
			<span class="expect">is refused</span></li>`,
		`<li><p>A reload closes live connections with 1001.</p></li>`,
		`<li><select><option value="live">live (closes with 4001 when the token expires)</option></select></li>`,
	} {
		mutated := strings.Replace(string(page), list, list+bad, 1)
		if _, problems := demoPagePromises(mutated); len(problems) == 0 {
			t.Errorf("a page with %s passes the check", bad)
		}
	}
}

// demoLogLine is one line of the demo page's log, as the page shows it.
type demoLogLine struct {
	Kind string `json:"kind"` // info, open, recv, sent, close or error
	Text string `json:"text"` // without the time
}

// demoLogJS returns the page's log lines.
const demoLogJS = `[...document.querySelectorAll("#log li")].map((li) => ({kind: li.className, text: li.lastChild ? li.lastChild.textContent : ""}))`

// waitLogJS resolves with the page's log lines once until(lines) is true,
// checking on every change of the log.
func waitLogJS(until string) string {
	return `new Promise((resolve) => {
	const until = ` + until + `;
	const log = document.getElementById("log");
	const check = () => {
		const lines = ` + demoLogJS + `;
		if (until(lines)) {
			obs.disconnect();
			resolve(lines);
		}
	};
	const obs = new MutationObserver(check);
	obs.observe(log, {childList: true});
	check();
})`
}

// A connection's log lines start with "#<n> ".
var connLineRE = regexp.MustCompile(`^#(\d+) `)

// connLines returns the lines of connection n.
func connLines(lines []demoLogLine, n string) []demoLogLine {
	var out []demoLogLine
	for _, l := range lines {
		if m := connLineRE.FindStringSubmatch(l.Text); m != nil && m[1] == n {
			out = append(out, l)
		}
	}
	return out
}

// lastConn returns the number of the last connection the log shows.
func lastConn(lines []demoLogLine) string {
	n := ""
	for _, l := range lines {
		if m := connLineRE.FindStringSubmatch(l.Text); m != nil {
			n = m[1]
		}
	}
	return n
}

// checkOutcome checks what the log shows of connection n against a
// promised close code (0: the connection opens and the upstream's welcome
// arrives). A refusal must show "open" first, then the close with the
// code, as the page explains.
func checkOutcome(lines []demoLogLine, n string, code int) error {
	var opened, welcomed bool
	closed := ""
	for _, l := range connLines(lines, n) {
		switch {
		case l.Kind == "open":
			opened = true
		case l.Kind == "recv" && strings.Contains(l.Text, "welcome from the upstream") && strings.Contains(l.Text, `user="alice"`):
			welcomed = true
		case l.Kind == "close":
			if !opened {
				return fmt.Errorf("closed before \"open\": %s", l.Text)
			}
			closed = l.Text
		}
	}
	if code == 0 {
		if !opened || !welcomed || closed != "" {
			return fmt.Errorf("want open and alice's welcome, and no close")
		}
		return nil
	}
	if welcomed {
		return fmt.Errorf("the upstream welcomed a connection promised to close with %d", code)
	}
	if !strings.Contains(closed, fmt.Sprintf(" closed: code %d ", code)) {
		return fmt.Errorf("want \"open\", then \"closed: code %d\"", code)
	}
	return nil
}

// TestBrowserDemoPagePromises runs every case the demo page promises an
// outcome for, by clicking the page in headless Chromium, served by
// example.Caddyfile on DEMO_PORT: each one-click button with each token
// transport, and each token lifetime whose label names a close code (the
// 10 s one: connect, wait for the token to expire, check that the open
// connection still echoes, connect again and get the promised 4001). The
// cases and their codes are read from the page itself, so a case added to
// the page is run here with the code the page states.
func TestBrowserDemoPagePromises(t *testing.T) {
	browser := findBrowser(t)
	d := startExampleDemo(t)

	resp, err := http.Get(d.url)
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	promises, problems := demoPagePromises(string(page))
	for _, p := range problems {
		t.Error(p)
	}
	if len(promises) == 0 {
		t.Fatal("the served page promises nothing")
	}

	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	bctx, _, output, stop := launchBrowser(t, ctx, browser)
	defer stop()

	// The page is opened at the address the demo logged at start.
	if err := chromedp.Do(bctx, chromedp.Navigate(d.url)); err != nil {
		t.Fatalf("navigating to %s: %v\nbrowser output:\n%s", d.url, err, output.String())
	}
	if title, err := chromedp.Run(bctx, chromedp.Evaluate[string](`document.title`)); err != nil || title != "ws_auth demo" {
		t.Fatalf("page title %q (%v), want the demo page", title, err)
	}

	// do runs a statement in the page; wait waits for the log to satisfy
	// until (a JavaScript function of the lines).
	do := func(t *testing.T, js string) {
		t.Helper()
		if _, err := chromedp.Run(bctx, chromedp.Evaluate[any](`(() => { `+js+`; return null; })()`)); err != nil {
			t.Fatalf("%s: %v", js, err)
		}
	}
	wait := func(t *testing.T, what, until string) []demoLogLine {
		t.Helper()
		wctx, wcancel := context.WithTimeout(bctx, 30*time.Second)
		defer wcancel()
		lines, err := chromedp.Run(wctx, chromedp.Evaluate[[]demoLogLine](waitLogJS(until), chromedp.EvalAwaitPromise))
		if err != nil {
			all, _ := chromedp.Run(bctx, chromedp.Evaluate[[]demoLogLine](demoLogJS))
			t.Fatalf("waiting for %s: %v; the page's log:\n%s", what, err, formatLog(all))
		}
		return lines
	}
	// settled: the last connection closed, or was welcomed, or the page
	// logged an error other than the browser's error event.
	const settled = `(lines) => lines.some((l) => l.kind === "close" ||
		(l.kind === "recv" && l.text.includes("welcome")) ||
		(l.kind === "error" && !l.text.includes("error event")))`
	closedConn := func(n string) string {
		return fmt.Sprintf(`(lines) => lines.some((l) => l.kind === "close" && l.text.startsWith("#%s ")) ||
			lines.some((l) => l.kind === "error" && !l.text.includes("error event"))`, n)
	}

	for _, p := range promises {
		if p.scenario == "" {
			continue
		}
		for _, how := range []string{"query", "subprotocol"} {
			t.Run(p.scenario+" by "+how, func(t *testing.T) {
				do(t, `document.getElementById("clear").click()`)
				do(t, `document.querySelector("input[name=how][value=`+how+`]").click()`)
				do(t, `document.querySelector('button[data-scenario="`+p.scenario+`"]').click()`)
				lines := wait(t, p.String(), settled)
				n := lastConn(lines)
				if err := checkOutcome(lines, n, p.code); err != nil {
					t.Fatalf("%s, token by %s: %v; the page's log:\n%s", p, how, err, formatLog(lines))
				}
				if p.code == 0 {
					do(t, `document.getElementById("disconnect").click()`)
					lines = wait(t, "the close", closedConn(n))
					if last := connLines(lines, n); !strings.Contains(last[len(last)-1].Text, " closed: code 1000 ") {
						t.Errorf("after Disconnect: %s, want code 1000", last[len(last)-1].Text)
					}
				}
			})
		}
	}

	for _, p := range promises {
		if p.ttl == "" {
			continue
		}
		t.Run("lifetime "+p.ttl, func(t *testing.T) {
			ttl, _ := time.ParseDuration(p.ttl)
			do(t, `document.getElementById("clear").click()`)
			do(t, `document.querySelector("input[name=how][value=query]").click()`)
			do(t, `document.getElementById("ttl").value = `+mustJSON(p.ttl))
			do(t, `document.getElementById("login").click()`)
			wait(t, "the login", `(lines) => lines.some((l) => l.text.startsWith("logged in") || l.kind === "error")`)
			// The token was issued before now and its exp is whole
			// seconds, rounded down: it has expired at loggedIn+ttl.
			loggedIn := time.Now()

			do(t, `document.getElementById("connect").click()`)
			lines := wait(t, "the first connection", settled)
			first := lastConn(lines)
			if err := checkOutcome(lines, first, 0); err != nil {
				t.Fatalf("%s, while the token is valid: %v; the page's log:\n%s", p, err, formatLog(lines))
			}

			// Wait for the token to expire (a precondition, not a
			// measurement).
			time.Sleep(time.Until(loggedIn.Add(ttl)))

			// The open connection is closed at expiry with the promised
			// code.
			lines = wait(t, "the close at expiry", closedConn(first))
			closed := connLines(lines, first)
			if last := closed[len(closed)-1]; last.Kind != "close" || !strings.Contains(last.Text, fmt.Sprintf(" closed: code %d ", p.code)) {
				t.Fatalf("%s, the connection opened before expiry: want \"closed: code %d\"; the page's log:\n%s", p, p.code, formatLog(lines))
			}

			// A new connection with the expired token is refused with the
			// promised code.
			do(t, `document.getElementById("connect").click()`)
			lines = wait(t, "the second connection", closedConn(strconv.Itoa(mustAtoi(t, first)+1)))
			second := lastConn(lines)
			if second == first {
				t.Fatalf("no new connection; the page's log:\n%s", formatLog(lines))
			}
			if err := checkOutcome(lines, second, p.code); err != nil {
				t.Fatalf("%s, a new connection after expiry: %v; the page's log:\n%s", p, err, formatLog(lines))
			}
		})
	}
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// formatLog shows log lines in a failure message.
func formatLog(lines []demoLogLine) string {
	var b strings.Builder
	for _, l := range lines {
		fmt.Fprintf(&b, "\t%-5s %s\n", l.Kind, l.Text)
	}
	return b.String()
}
