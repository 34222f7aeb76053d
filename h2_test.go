package wsauth

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"testing"

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
		token_source first_message auth 1s
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
	waitAnswers(t, tr, port)
	checkFirstMessageOverStream(t, tr, port, "/ws", false, up)

	// An upstream that does not switch protocols: its 200 is no tunnel, the
	// client gets 1011 and none of the upstream's bytes.
	resp, pw := extendedConnect(t, tr, port, "/plain/ws", false)
	defer pw.Close()
	defer resp.Body.Close()
	if _, err := pw.Write(maskedText(`{"type":"auth","token":"` + hs256(t, claims("carol")) + `"}`)); err != nil {
		t.Fatal(err)
	}
	if got := closeFrame(readServerFrame(t, resp.Body)); got != "close 1011 unavailable" {
		t.Errorf("first message to an upstream that answers 200: %s, want close 1011 unavailable", got)
	}
}
