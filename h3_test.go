package wsauth

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/quic-go/quic-go/http3"

	"github.com/caddyserver/caddy/v2"
)

// TestHTTP3WebSocket: a WebSocket over HTTP/3 (RFC 9220, an extended
// CONNECT without Upgrade headers, which reverse_proxy turns into an
// upgrade) is authenticated like any other, also with upgrades_only, and
// refused with a Close frame on its stream.
func TestHTTP3WebSocket(t *testing.T) {
	up := newUpstream(t)
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
}

https://127.0.0.1:%d {
	tls internal
	route /only/* {
		ws_auth {
			secret %s
			upgrades_only
		}
		reverse_proxy %s {
			header_up X-User {http.auth.user.id}
		}
	}
	route /status/* {
		ws_auth {
			secret %s
			reject status
		}
		reverse_proxy %s
	}
	route /first/* {
		ws_auth {
			secret %s
			token_source first_message auth 1s
		}
		reverse_proxy %s {
			header_up X-User {http.auth.user.id}
		}
	}
}`, t.TempDir(), port, port, testSecret, up.addr(), testSecret, up.addr(), testSecret, up.addr())
	if err := loadCaddyfile(cfg); err != nil {
		t.Fatal(err)
	}
	defer caddy.Stop()

	tr := &http3.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h3"}}}
	defer tr.Close()
	waitAnswers(t, tr, port)
	connect := func(path string) (*http.Response, *io.PipeWriter) {
		t.Helper()
		return extendedConnect(t, tr, port, path, true)
	}
	closeOf := func(path string) string {
		resp, pw := connect(path)
		defer pw.Close()
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Sprintf("status %d", resp.StatusCode)
		}
		return closeFrame(readServerFrame(t, resp.Body))
	}

	if got := closeOf("/only/ws"); got != "close 1008 missing" {
		t.Errorf("upgrades_only, HTTP/3 WebSocket without a token: %s", got)
	}
	expired := hs256(t, claims("alice", func(c jwt.MapClaims) { c["exp"] = time.Now().Add(-time.Minute).Unix() }))
	if got := closeOf("/only/ws?token=" + expired); got != "close 4001 expired" {
		t.Errorf("expired token over HTTP/3: %s", got)
	}
	if got := closeOf("/status/ws"); got != "status 401" {
		t.Errorf("reject status over HTTP/3: %s", got)
	}
	if n := len(up.requests()); n != 0 {
		t.Fatalf("refused HTTP/3 WebSockets reached the upstream %d times", n)
	}

	// Accepted: the upstream gets an upgrade with the user, and echoes.
	resp, pw := connect("/only/ws?token=" + hs256(t, claims("alice")))
	defer pw.Close()
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("valid token over HTTP/3: status %d", resp.StatusCode)
	}
	if _, err := pw.Write([]byte{0x81, 0x82, 1, 2, 3, 4, 'h' ^ 1, 'i' ^ 2}); err != nil {
		t.Fatal(err)
	}
	if op, p := readServerFrame(t, resp.Body); op != opText || string(p) != "hi" {
		t.Errorf("echo over HTTP/3: op %d %q", op, p)
	}
	if r := up.requests(); len(r) != 1 || r[0].Header.Get("X-User") != "alice" {
		t.Errorf("upstream requests %v, want one with X-User alice", r)
	}

	closeAndDrain(t, pw, resp.Body)

	// first_message over HTTP/3: the module answers the CONNECT, reads the
	// auth message from the stream, and hands the stream to reverse_proxy.
	checkFirstMessageOverStream(t, tr, port, "/first/ws", true, up)
}
