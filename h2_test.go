package wsauth

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/caddyserver/caddy/v2"
)

// TestHTTP2FirstMessage: over HTTP/2 (RFC 8441 extended CONNECT) the
// module answers the CONNECT itself for first_message, reads the auth
// message from the stream, and hands the stream to reverse_proxy; a forged
// token is closed with 1008 on the stream.
//
// Go's HTTP/2 server offers extended CONNECT only with
// GODEBUG=http2xconnect=1, read when the process starts (so Caddy's users
// set it too, see the README): without it, the test runs itself again in a
// child process that has it.
func TestHTTP2FirstMessage(t *testing.T) {
	if !strings.Contains(os.Getenv("GODEBUG"), "http2xconnect=1") {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHTTP2FirstMessage$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), "GODEBUG="+strings.TrimPrefix(os.Getenv("GODEBUG")+",http2xconnect=1", ","))
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestHTTP2FirstMessage") {
			t.Fatalf("with GODEBUG=http2xconnect=1: %v\n%s", err, out)
		}
		return
	}
	up := newUpstream(t)
	// An upstream that answers every request with a plain 200: no WebSocket.
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "plain ok")
	}))
	defer plain.Close()
	caddyMu.Lock()
	defer caddyMu.Unlock()
	port := freePort(t)
	cfg := fmt.Sprintf(`{
	admin off
	persist_config off
	storage file_system %s
	local_certs
	skip_install_trust
	auto_https disable_redirects
	https_port %d
	servers {
		protocols h1 h2
	}
}

https://127.0.0.1:%d {
	tls internal
	ws_auth {
		secret %s
		token_source first_message
	}
	handle /plain/* {
		reverse_proxy %s
	}
	reverse_proxy %s {
		header_up X-User {http.auth.user.id}
	}
}`, t.TempDir(), port, port, testSecret, strings.TrimPrefix(plain.URL, "http://"), up.addr())
	if err := loadCaddyfile(cfg); err != nil {
		t.Fatal(err)
	}
	defer caddy.Stop()
	waitListening(t, fmt.Sprintf("127.0.0.1:%d", port))

	tr := &http2.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}}}
	defer tr.CloseIdleConnections()
	// Wait until the site's certificate is there and HTTP/2 answers.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		u, _ := url.Parse(fmt.Sprintf("https://127.0.0.1:%d/", port))
		resp, err := tr.RoundTrip(&http.Request{Method: http.MethodGet, URL: u, Host: u.Host, Header: http.Header{}})
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("HTTP/2 listener: %v", err)
		}
	}
	connect := func(path string) (*http.Response, *io.PipeWriter) {
		t.Helper()
		pr, pw := io.Pipe()
		u, _ := url.Parse(fmt.Sprintf("https://127.0.0.1:%d%s", port, path))
		req := &http.Request{Method: http.MethodConnect, URL: u, Host: u.Host, Body: pr,
			Header: http.Header{":protocol": {"websocket"}, "Sec-Websocket-Version": {"13"}}}
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatalf("HTTP/2 extended CONNECT: %v", err)
		}
		return resp, pw
	}
	readFrame := func(r io.Reader) (byte, []byte) {
		t.Helper()
		var h [2]byte
		if _, err := io.ReadFull(r, h[:]); err != nil {
			t.Fatalf("reading a frame: %v", err)
		}
		p := make([]byte, h[1]&0x7f)
		if _, err := io.ReadFull(r, p); err != nil {
			t.Fatalf("reading a frame: %v", err)
		}
		return h[0] & 0x0f, p
	}

	resp, pw := connect("/ws")
	defer pw.Close()
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("first_message over HTTP/2: status %d", resp.StatusCode)
	}
	auth := maskedText(`{"type":"auth","token":"` + hs256(t, claims("carol")) + `"}`)
	if _, err := pw.Write(append(auth, maskedText("hello")...)); err != nil {
		t.Fatal(err)
	}
	if op, p := readFrame(resp.Body); op != opText || string(p) != "hello" {
		t.Errorf("first_message echo over HTTP/2: op %d %q", op, p)
	}
	if r := up.requests(); len(r) != 1 || r[0].Header.Get("X-User") != "carol" {
		t.Errorf("upstream requests %v, want one with X-User carol", r)
	}
	closeAndDrain(t, pw, resp.Body)

	resp, pw = connect("/ws")
	defer pw.Close()
	defer resp.Body.Close()
	if _, err := pw.Write(maskedText(`{"type":"auth","token":"` + hs256(t, claims("carol")) + `x"}`)); err != nil {
		t.Fatal(err)
	}
	if op, p := readFrame(resp.Body); op != opClose || string(p[2:]) != "invalid" || p[0] != 1008>>8 || p[1] != 1008&0xff {
		t.Errorf("forged first-message token over HTTP/2: op %d %q, want close 1008 invalid", op, p)
	}
	if n := len(up.requests()); n != 1 {
		t.Errorf("a forged first-message token reached the upstream (%d requests)", n)
	}

	// An upstream that does not switch protocols: its 200 is no tunnel, the
	// client gets 1011 and none of the upstream's bytes.
	resp, pw = connect("/plain/ws")
	defer pw.Close()
	defer resp.Body.Close()
	if _, err := pw.Write(maskedText(`{"type":"auth","token":"` + hs256(t, claims("carol")) + `"}`)); err != nil {
		t.Fatal(err)
	}
	if op, p := readFrame(resp.Body); op != opClose || string(p[2:]) != "unavailable" || p[0] != 1011>>8 || p[1] != 1011&0xff {
		t.Errorf("first message to an upstream that answers 200: op %d %q, want close 1011 unavailable", op, p)
	}
}
