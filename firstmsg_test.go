package wsauth

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"
)

// TestFirstMessage authenticates with the first message after the
// handshake: a valid token opens the tunnel to the upstream, which never
// sees the auth message; bad or missing ones close with the table's codes.
func TestFirstMessage(t *testing.T) {
	up := newUpstream(t)
	addr := startCaddy(t, site("token_source first_message auth 500ms\n\t\tscopes chat:read"), up.addr())

	authMsg := func(tok string) string { return `{"type":"auth","token":"` + tok + `"}` }
	cases := []struct {
		name  string
		first string // "" sends nothing
		want  string
	}{
		{"valid", authMsg(hs256(t, claims("alice"))), "accepted"},
		{"expired", authMsg(hs256(t, claims("alice", func(c jwt.MapClaims) { c["exp"] = time.Now().Add(-time.Minute).Unix() }))), "close 4001 expired"},
		{"forbidden", authMsg(hs256(t, claims("alice", func(c jwt.MapClaims) { c["scope"] = "other" }))), "close 4003 forbidden"},
		{"bad signature", authMsg(hs256(t, claims("alice")) + "x"), "close 1008 invalid"},
		{"wrong type", `{"type":"hello","token":"` + hs256(t, claims("alice")) + `"}`, "close 1008 invalid"},
		{"not json", "hello", "close 1008 invalid"},
		{"no message", "", "close 1008 missing"},
	}
	for _, tc := range cases {
		c, _, err := dial(addr, "/ws", dialOpts{protocols: []string{"chat"}})
		if err != nil {
			t.Fatalf("%s: dial: %v", tc.name, err)
		}
		if c.Subprotocol() != "chat" {
			t.Errorf("%s: subprotocol %q, want chat", tc.name, c.Subprotocol())
		}
		if tc.first != "" {
			// Pipelined: the auth message and the first app message at once.
			if err := c.WriteMessage(websocket.TextMessage, []byte(tc.first)); err != nil {
				t.Fatal(err)
			}
		}
		var got string
		if tc.first == "" {
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, _, err := c.ReadMessage()
			if ce, ok := err.(*websocket.CloseError); ok {
				got = "close " + strconv.Itoa(ce.Code) + " " + ce.Text
			} else {
				got = "error " + err.Error()
			}
			c.Close()
		} else {
			got = outcome(t, c, nil, nil)
		}
		if got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}

	reqs := up.requests()
	if len(reqs) != 1 {
		t.Fatalf("upstream saw %d upgrades, want 1 (the valid one)", len(reqs))
	}
	if u := reqs[0].Header.Get("X-User"); u != "alice" {
		t.Errorf("upstream X-User = %q", u)
	}
	if s := reqs[0].Header.Get("X-Source"); s != "first_message" {
		t.Errorf("upstream X-Source = %q", s)
	}
	if p := reqs[0].Header.Get("Sec-Websocket-Protocol"); p != "chat" {
		t.Errorf("upstream offered %q, want only the protocol selected for the client", p)
	}
	if strings.Contains(mustJSON(reqs[0]), "eyJ") {
		t.Errorf("a token reached the upstream: %v", reqs[0])
	}
}
