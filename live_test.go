package wsauth

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"
	"github.com/quic-go/quic-go/http3"
	"golang.org/x/net/http2"

	"github.com/caddyserver/caddy/v2"
)

// End-to-end tests of the rules on live connections (SPEC.md, "Live
// connections"): expiry, revocation, message rate, message size and
// in-band refresh, through a real Caddy, a real gorilla/websocket client
// and a strict upstream (liveUpstream). Every wait is bounded; no test
// asserts how long something took.

// TestLiveExpiry: the connection works until its token's exp, then the
// client gets Close 4001 "expired" and the upstream Close 1001; the
// registry holds the connection while it is open, and forgets it after.
func TestLiveExpiry(t *testing.T) {
	up := newLiveUpstream(t)
	addr := startCaddy(t, site(""), up.addr())
	tok, exp := shortToken(t, "alice", 3*time.Second)
	c := dialLive(t, liveURL(addr, "/ws", tok))
	c.echo("before expiry")
	waitLiveCount(t, 1)

	if got := c.closeWithin(time.Until(exp) + 5*time.Second); got != "close 4001 expired" {
		t.Errorf("at the token's exp, the client got %s, want close 4001 expired", got)
	}
	if code := up.ended(t); code != websocket.CloseGoingAway {
		t.Errorf("at the token's exp, the upstream got close %d, want 1001", code)
	}
	if got := up.messages(); !slices.Equal(got, []string{"before expiry"}) {
		t.Errorf("upstream received %q, want only the message sent before expiry", got)
	}
	waitLiveCount(t, 0)
}

// TestLiveFirstMessageExpiry: a connection authenticated by its first
// message is watched like any other: closed with 4001 at its token's exp,
// and the upstream gets 1001.
func TestLiveFirstMessageExpiry(t *testing.T) {
	up := newLiveUpstream(t)
	addr := startCaddy(t, site("token_source first_message"), up.addr())
	tok, exp := shortToken(t, "alice", 3*time.Second)
	c := dialLive(t, "ws://"+addr+"/ws")
	c.send(`{"type":"auth","token":"` + tok + `"}`)
	c.echo("before expiry")
	waitLiveCount(t, 1)
	if got := c.closeWithin(time.Until(exp) + 5*time.Second); got != "close 4001 expired" {
		t.Errorf("at the token's exp, the client got %s, want close 4001 expired", got)
	}
	if code := up.ended(t); code != websocket.CloseGoingAway {
		t.Errorf("at the token's exp, the upstream got close %d, want 1001", code)
	}
	waitLiveCount(t, 0)
}

// TestLiveExpiryOff: with expire_connections off, a connection outlives its
// token.
func TestLiveExpiryOff(t *testing.T) {
	up := newLiveUpstream(t)
	addr := startCaddy(t, site("expire_connections off"), up.addr())
	tok, exp := shortToken(t, "alice", 3*time.Second)
	c := dialLive(t, liveURL(addr, "/ws", tok))
	c.echo("before exp")
	waitLiveCount(t, 1)

	c.quietUntil(exp.Add(1500 * time.Millisecond))
	c.echo("after exp")
	if len(up.closes) != 0 {
		t.Errorf("the upstream connection was closed")
	}
	c.close()
	waitLiveCount(t, 0)
}

// TestLiveRevocationFile: a user added to the blocklist file has its live
// connection closed with 1008 "revoked"; another user's stays open. Once
// with the change noticed by the file watcher alone, once with revalidate.
func TestLiveRevocationFile(t *testing.T) {
	for _, tc := range []struct {
		name, opts string
		poll       time.Duration // blocklistPoll for the test; 0: the default
	}{
		{name: "on change", poll: 50 * time.Millisecond},
		{name: "revalidate 1s", opts: "revalidate 1s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.poll != 0 {
				// Registered before startCaddy, so restored after Caddy stops.
				old := blocklistPoll
				t.Cleanup(func() { blocklistPoll = old })
				blocklistPoll = tc.poll
			}
			list := filepath.Join(t.TempDir(), "blocklist.txt")
			if err := os.WriteFile(list, []byte("sub:nobody\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			up := newLiveUpstream(t)
			addr := startCaddy(t, site("blocklist_file "+list+"\n\t\t"+tc.opts), up.addr())
			alice := dialLive(t, liveURL(addr, "/ws", hs256(t, claims("alice"))))
			bob := dialLive(t, liveURL(addr, "/ws", hs256(t, claims("bob"))))
			alice.echo("alice before")
			bob.echo("bob before")
			waitLiveCount(t, 2)

			if err := os.WriteFile(list, []byte("sub:nobody\nsub:alice\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			if got := alice.closeWithin(10 * time.Second); got != "close 1008 revoked" {
				t.Errorf("alice, once blocked in the file: %s, want close 1008 revoked", got)
			}
			up.ended(t)
			bob.echo("bob after")
			waitLiveCount(t, 1)
			bob.close()
			waitLiveCount(t, 0)
		})
	}
}

// TestLiveRevocationRuntime: an entry added at run time (as the admin API
// adds it) closes the user's live connection with 1008 "revoked" at once;
// another user's stays open.
func TestLiveRevocationRuntime(t *testing.T) {
	up := newLiveUpstream(t)
	addr := startCaddy(t, site(""), up.addr())
	alice := dialLive(t, liveURL(addr, "/ws", hs256(t, claims("alice"))))
	bob := dialLive(t, liveURL(addr, "/ws", hs256(t, claims("bob"))))
	alice.echo("alice before")
	bob.echo("bob before")
	waitLiveCount(t, 2)

	if err := runtimeBlocklist.Add(Entry{Kind: "sub", Value: "alice"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = runtimeBlocklist.Remove("sub", "alice") })
	if got := alice.closeWithin(5 * time.Second); got != "close 1008 revoked" {
		t.Errorf("alice, once blocked at run time: %s, want close 1008 revoked", got)
	}
	up.ended(t)
	bob.echo("bob after")
	waitLiveCount(t, 1)
	bob.close()
	waitLiveCount(t, 0)
}

// TestLiveRegistry: the registry lists what a connection is (user, jti,
// IP, origin, path, token source, since, expiry), and closes the
// connections of one user with a code and reason of the caller's, as the
// admin API will; the others stay open.
func TestLiveRegistry(t *testing.T) {
	up := newLiveUpstream(t)
	addr := startCaddy(t, site(""), up.addr())
	exp := time.Now().Add(time.Hour).Truncate(time.Second)
	alice := dialLive(t, liveURL(addr, "/ws/a", hs256(t, claims("alice", func(c jwt.MapClaims) { c["exp"] = exp.Unix() }))))
	bob := dialLive(t, liveURL(addr, "/ws/b", hs256(t, claims("bob"))))
	alice.echo("alice before")
	bob.echo("bob before")
	waitLiveCount(t, 2)

	var found *liveConn
	liveConns.mu.RLock()
	for c := range liveConns.conns {
		if c.user == "alice" {
			found = c
		}
	}
	liveConns.mu.RUnlock()
	if found == nil {
		t.Fatal("alice's connection is not in the registry")
	}
	found.mu.Lock()
	got := fmt.Sprintf("%s %s %s %s %s", found.jti, found.ip, found.path, found.source, found.expires.UTC().Format(time.RFC3339))
	found.mu.Unlock()
	if want := "jti-alice 127.0.0.1 /ws/a query " + exp.UTC().Format(time.RFC3339); got != want {
		t.Errorf("registry entry: %q, want %q", got, want)
	}
	if since := time.Unix(0, found.since); found.id == 0 || found.since == 0 || time.Since(since) > time.Minute {
		t.Errorf("registry entry: id %d, since %v", found.id, since)
	}

	n := liveConns.closeWhere(func(c *liveConn) bool { return c.user == "alice" }, 4000, "kicked")
	if n != 1 {
		t.Errorf("closeWhere(alice) closed %d connections, want 1", n)
	}
	if got := alice.closeWithin(5 * time.Second); got != "close 4000 kicked" {
		t.Errorf("alice, closed by the registry: %s, want close 4000 kicked", got)
	}
	if code := up.ended(t); code != websocket.CloseGoingAway {
		t.Errorf("alice's upstream got close %d, want 1001", code)
	}
	bob.echo("bob after")
	waitLiveCount(t, 1)
	bob.close()
	waitLiveCount(t, 0)
}

// TestLiveMessageDrop: over the rate, messages are not forwarded, and the
// connection stays open: pings still go through both ways.
func TestLiveMessageDrop(t *testing.T) {
	up := newLiveUpstream(t)
	addr := startCaddy(t, site("rate_limit messages 3/1m per connection drop"), up.addr())
	c := dialLive(t, liveURL(addr, "/ws", hs256(t, claims("alice"))))
	for _, m := range []string{"m1", "m2", "m3", "m4", "m5"} {
		c.send(m)
	}
	c.ping("after-5")
	first3 := []string{"m1", "m2", "m3"}
	if got := c.untilPinged("after-5"); !slices.Equal(got, first3) {
		t.Errorf("client got the echoes %q, want %q", got, first3)
	}
	c.expectPongs("after-5")
	if got := up.messages(); !slices.Equal(got, first3) {
		t.Errorf("upstream received %q, want %q", got, first3)
	}

	// Still open, still limited.
	c.send("m6")
	c.ping("after-6")
	if got := c.untilPinged("after-6"); len(got) != 0 {
		t.Errorf("client got %q after a sixth message, want nothing", got)
	}
	if got := up.messages(); !slices.Equal(got, first3) {
		t.Errorf("upstream received %q, want %q", got, first3)
	}
	if got := up.pingsSeen(); !slices.Equal(got, []string{"after-5", "after-6"}) {
		t.Errorf("upstream saw the pings %q, want both", got)
	}
	c.close()
	waitLiveCount(t, 0)
}

// TestLiveMessageClose: with close, the first message over the rate closes
// the connection with 1008 "rate_limited" and is not forwarded.
func TestLiveMessageClose(t *testing.T) {
	up := newLiveUpstream(t)
	addr := startCaddy(t, site("rate_limit messages 3/1m per connection close"), up.addr())
	c := dialLive(t, liveURL(addr, "/ws", hs256(t, claims("alice"))))
	first3 := []string{"m1", "m2", "m3"}
	for _, m := range first3 {
		c.echo(m)
	}
	c.trySend("m4")
	if got := c.closeWithin(5 * time.Second); got != "close 1008 rate_limited" {
		t.Errorf("fourth message: %s, want close 1008 rate_limited", got)
	}
	up.ended(t)
	if got := up.messages(); !slices.Equal(got, first3) {
		t.Errorf("upstream received %q, want %q", got, first3)
	}
	waitLiveCount(t, 0)
}

// TestLiveMessageNotify: with notify, messages over the rate are dropped,
// and the client is told once per window, with a retry_after in seconds.
func TestLiveMessageNotify(t *testing.T) {
	up := newLiveUpstream(t)
	addr := startCaddy(t, site("rate_limit messages 3/1m per connection notify"), up.addr())
	c := dialLive(t, liveURL(addr, "/ws", hs256(t, claims("alice"))))
	for _, m := range []string{"m1", "m2", "m3", "m4", "m5"} {
		c.send(m)
	}
	c.ping("after-5")
	got := c.untilPinged("after-5")
	c.send("m6") // same window: dropped, and no second notice
	c.ping("after-6")
	got = append(got, c.untilPinged("after-6")...)

	var echoes, notices []string
	for _, m := range got {
		if strings.HasPrefix(m, "{") {
			notices = append(notices, m)
		} else {
			echoes = append(echoes, m)
		}
	}
	first3 := []string{"m1", "m2", "m3"}
	if !slices.Equal(echoes, first3) {
		t.Errorf("client got the echoes %q, want %q", echoes, first3)
	}
	if len(notices) != 1 {
		t.Fatalf("client got the notices %q, want exactly one for the window", notices)
	}
	checkRateNotice(t, notices[0])
	if got := up.messages(); !slices.Equal(got, first3) {
		t.Errorf("upstream received %q, want %q", got, first3)
	}
	c.close()
	waitLiveCount(t, 0)
}

// TestLiveMessageFragmentsAndPings: a fragmented message counts once, and
// pings, also between the fragments of a message, are neither counted nor
// dropped: three fragmented messages and five pings all pass a limit of
// 3, and the fourth message is the one dropped.
func TestLiveMessageFragmentsAndPings(t *testing.T) {
	up := newLiveUpstream(t)
	addr := startCaddy(t, site("rate_limit messages 3/1m per connection drop"), up.addr())
	// A 256-byte write buffer: gorilla sends a 2 KiB message as 8 frames.
	c := dialLive(t, liveURL(addr, "/ws", hs256(t, claims("alice"))), func(d *websocket.Dialer) { d.WriteBufferSize = 256 })
	a, b, d := strings.Repeat("a", 2048), strings.Repeat("b", 2048), strings.Repeat("d", 2048)
	c.sendFragmented(a, "mid-a")
	c.ping("between-1")
	c.sendFragmented(b, "mid-b")
	c.ping("between-2")
	c.send(d)
	c.ping("end")
	want := []string{a, b, d}
	if got := c.untilPinged("end"); !slices.Equal(got, want) {
		t.Errorf("client got %d echoes of %v bytes, want the 3 messages of 2048 bytes", len(got), lengths(got))
	}
	pings := []string{"mid-a", "between-1", "mid-b", "between-2", "end"}
	c.expectPongs(pings...)
	if got := up.pingsSeen(); !slices.Equal(got, pings) {
		t.Errorf("upstream saw the pings %q, want %q", got, pings)
	}
	if got := up.messages(); !slices.Equal(got, want) {
		t.Errorf("upstream received %d messages of %v bytes, want the 3 messages of 2048 bytes", len(got), lengths(got))
	}

	// The fourth message is over the limit.
	c.send("fourth")
	c.ping("end-2")
	if got := c.untilPinged("end-2"); len(got) != 0 {
		t.Errorf("client got %q after the fourth message, want nothing", got)
	}
	if got := up.messages(); len(got) != 3 {
		t.Errorf("upstream received %d messages, want 3", len(got))
	}
	c.close()
	waitLiveCount(t, 0)
}

// TestLiveMessagePerUser: per user, the connections of a user share one
// count, and another user has their own.
func TestLiveMessagePerUser(t *testing.T) {
	up := newLiveUpstream(t)
	addr := startCaddy(t, site("rate_limit messages 3/1m per user drop"), up.addr())
	a1 := dialLive(t, liveURL(addr, "/ws", hs256(t, claims("alice"))))
	a2 := dialLive(t, liveURL(addr, "/ws", hs256(t, claims("alice"))))
	bob := dialLive(t, liveURL(addr, "/ws", hs256(t, claims("bob"))))
	a1.echo("alice-1")
	a1.echo("alice-2")
	a2.echo("alice-3")
	a2.send("alice-4")
	a2.ping("a2")
	if got := a2.untilPinged("a2"); len(got) != 0 {
		t.Errorf("alice's fourth message, on her second connection: echoed %q, want dropped", got)
	}
	a1.send("alice-5")
	a1.ping("a1")
	if got := a1.untilPinged("a1"); len(got) != 0 {
		t.Errorf("alice's fifth message, on her first connection: echoed %q, want dropped", got)
	}
	bob.echo("bob-1")
	want := []string{"alice-1", "alice-2", "alice-3", "bob-1"}
	if got := up.messages(); !slices.Equal(got, want) {
		t.Errorf("upstream received %q, want %q", got, want)
	}
	a1.close()
	a2.close()
	bob.close()
	waitLiveCount(t, 0)
}

// TestLiveMaxMessageSize: a client message larger than max_message_size
// closes with 1009 "too_big", whole or fragmented, and is not forwarded;
// one of the limit's size passes.
func TestLiveMaxMessageSize(t *testing.T) {
	up := newLiveUpstream(t)
	addr := startCaddy(t, site("max_message_size 1KiB"), up.addr())
	tok := hs256(t, claims("alice"))

	c := dialLive(t, liveURL(addr, "/ws", tok))
	c.echo(strings.Repeat("a", 512))
	c.echo(strings.Repeat("b", 1024))
	c.trySend(strings.Repeat("c", 2048))
	if got := c.closeWithin(5 * time.Second); got != "close 1009 too_big" {
		t.Errorf("a 2 KiB message: %s, want close 1009 too_big", got)
	}
	up.ended(t)

	// A 256-byte write buffer: the messages go as several frames.
	f := dialLive(t, liveURL(addr, "/ws", tok), func(d *websocket.Dialer) { d.WriteBufferSize = 256 })
	f.echo(strings.Repeat("d", 512))
	f.trySend(strings.Repeat("e", 2048))
	if got := f.closeWithin(5 * time.Second); got != "close 1009 too_big" {
		t.Errorf("a 2 KiB message in fragments: %s, want close 1009 too_big", got)
	}
	up.ended(t)
	if got := lengths(up.messages()); !slices.Equal(got, []int{512, 1024, 512}) {
		t.Errorf("upstream received messages of %v bytes, want 512, 1024 and 512", got)
	}
	waitLiveCount(t, 0)
}

// TestLiveRefresh: a refresh message with a new token of the same user is
// answered refresh_token_ok with the new exp, is not forwarded, and keeps
// the connection open past the old token's exp.
func TestLiveRefresh(t *testing.T) {
	up := newLiveUpstream(t)
	addr := startCaddy(t, site("refresh_message"), up.addr())
	tok, oldExp := shortToken(t, "alice", 3*time.Second)
	c := dialLive(t, liveURL(addr, "/ws", tok))
	c.echo("before")
	waitLiveCount(t, 1)

	newClaims := claims("alice")
	c.refresh(hs256(t, newClaims))
	c.expectRefreshOK(newClaims["exp"].(int64))
	c.echo("after refresh")
	c.quietUntil(oldExp.Add(1500 * time.Millisecond))
	c.echo("after the old exp")
	want := []string{"before", "after refresh", "after the old exp"}
	if got := up.messages(); !slices.Equal(got, want) {
		t.Errorf("upstream received %q, want %q (never the refresh message)", got, want)
	}
	c.close()
	waitLiveCount(t, 0)
}

// TestLiveRefreshOtherUser: a refresh with another user's token closes the
// connection with 1008, and the message is not forwarded.
func TestLiveRefreshOtherUser(t *testing.T) {
	up := newLiveUpstream(t)
	addr := startCaddy(t, site("refresh_message"), up.addr())
	c := dialLive(t, liveURL(addr, "/ws", hs256(t, claims("alice"))))
	c.echo("before")
	c.refresh(hs256(t, claims("bob")))
	if got := c.closeWithin(5 * time.Second); !strings.HasPrefix(got, "close 1008 ") {
		t.Errorf("refresh with bob's token on alice's connection: %s, want close 1008", got)
	}
	c.ended()
	up.ended(t)
	if got := up.messages(); !slices.Equal(got, []string{"before"}) {
		t.Errorf("upstream received %q, want only the message before the refresh", got)
	}
	waitLiveCount(t, 0)
}

// TestLiveRefreshInvalid: a refresh with a forged token closes with 1008,
// one with an expired token with 4001; neither is forwarded.
func TestLiveRefreshInvalid(t *testing.T) {
	up := newLiveUpstream(t)
	addr := startCaddy(t, site("refresh_message"), up.addr())
	for _, tc := range []struct {
		name  string
		token string
		code  string
	}{
		{"bad signature", sign(t, jwt.SigningMethodHS256, []byte("another-secret-another-secret-12345"), claims("alice"), ""), "close 1008 "},
		{"expired", hs256(t, claims("alice", func(c jwt.MapClaims) { c["exp"] = time.Now().Add(-time.Minute).Unix() })), "close 4001 "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(up.messages())
			c := dialLive(t, liveURL(addr, "/ws", hs256(t, claims("alice"))))
			c.echo("before " + tc.name)
			c.refresh(tc.token)
			if got := c.closeWithin(5 * time.Second); !strings.HasPrefix(got, tc.code) {
				t.Errorf("refresh with a token with a %s: %s, want %s", tc.name, got, tc.code)
			}
			c.ended()
			up.ended(t)
			if got := up.messages()[before:]; !slices.Equal(got, []string{"before " + tc.name}) {
				t.Errorf("upstream received %q, want only the message before the refresh", got)
			}
			waitLiveCount(t, 0)
		})
	}
}

// TestLiveRefreshCountsAsMessage: a refresh message is a client message
// for rate_limit messages. Over the rate it gets the limit's action, and
// its token is not checked: with notify the client gets the notice, not
// refresh_token_ok, and the connection still expires at the old exp.
// Within the rate it uses up a message: with close, the message after it
// is the one over the rate.
func TestLiveRefreshCountsAsMessage(t *testing.T) {
	t.Run("over the rate", func(t *testing.T) {
		up := newLiveUpstream(t)
		addr := startCaddy(t, site("refresh_message\n\t\trate_limit messages 3/1m per connection notify"), up.addr())
		tok, _ := shortToken(t, "alice", 3*time.Second)
		c := dialLive(t, liveURL(addr, "/ws", tok))
		first3 := []string{"m1", "m2", "m3"}
		for _, m := range first3 {
			c.echo(m)
		}
		c.refresh(hs256(t, claims("alice")))
		ev := c.next(5 * time.Second)
		if ev.err != nil {
			t.Fatalf("a refresh over the rate: %s, want the rate_limited notice", ev)
		}
		checkRateNotice(t, ev.data)
		if got := c.closeWithin(5 * time.Second); got != "close 4001 expired" {
			t.Errorf("after a refresh over the rate: %s, want close 4001 expired at the old exp", got)
		}
		up.ended(t)
		if got := up.messages(); !slices.Equal(got, first3) {
			t.Errorf("upstream received %q, want %q (never the refresh message)", got, first3)
		}
		waitLiveCount(t, 0)
	})
	t.Run("within the rate", func(t *testing.T) {
		up := newLiveUpstream(t)
		addr := startCaddy(t, site("refresh_message\n\t\trate_limit messages 2/1m per connection close"), up.addr())
		c := dialLive(t, liveURL(addr, "/ws", hs256(t, claims("alice"))))
		newClaims := claims("alice")
		c.refresh(hs256(t, newClaims))
		c.expectRefreshOK(newClaims["exp"].(int64))
		c.echo("m1")
		c.trySend("m2")
		if ev := c.next(5 * time.Second); ev.String() != "close 1008 rate_limited" {
			t.Errorf("a refresh and two messages with a rate of 2: %s, want close 1008 rate_limited", ev)
		}
		up.ended(t)
		if got := up.messages(); !slices.Equal(got, []string{"m1"}) {
			t.Errorf("upstream received %q, want only m1", got)
		}
		waitLiveCount(t, 0)
	})
}

// TestLiveRefreshFloor: whatever rate_limit messages says, a connection
// refreshes at most once a second: of refresh messages sent back to back,
// the first is answered, and one too soon after the one before closes the
// connection with 1008 rate_limited. (Were the sends a second apart
// somewhere, a second answer would come first; the test allows it.)
func TestLiveRefreshFloor(t *testing.T) {
	for name, opts := range map[string]string{
		"alone":                       "refresh_message",
		"with a message rate, notify": "refresh_message\n\t\trate_limit messages 1000/1m per connection notify",
	} {
		t.Run(name, func(t *testing.T) {
			up := newLiveUpstream(t)
			addr := startCaddy(t, site(opts), up.addr())
			c := dialLive(t, liveURL(addr, "/ws", hs256(t, claims("alice"))))
			c.echo("before")
			newClaims := claims("alice")
			tok := hs256(t, newClaims)
			const sent = 5
			for range sent {
				c.trySend(`{"type":"refresh_token","token":"` + tok + `"}`)
			}
			c.expectRefreshOK(newClaims["exp"].(int64))
			answered := 1
			ev := c.next(5 * time.Second)
			for ; ev.err == nil; ev = c.next(5 * time.Second) {
				if !strings.Contains(ev.data, `"refresh_token_ok"`) {
					t.Fatalf("after %d answers to refresh messages, got %s; want refresh_token_ok or a close", answered, ev)
				}
				if answered++; answered == sent {
					t.Fatalf("all %d refresh messages sent back to back were answered; want a close 1008 rate_limited", sent)
				}
			}
			if got := ev.String(); got != "close 1008 rate_limited" {
				t.Errorf("%d refresh messages back to back: %d answered, then %s; want close 1008 rate_limited", sent, answered, got)
			}
			c.ended()
			up.ended(t)
			if got := up.messages(); !slices.Equal(got, []string{"before"}) {
				t.Errorf("upstream received %q, want only the message before the refreshes", got)
			}
			waitLiveCount(t, 0)
		})
	}
}

// TestLiveRefreshNoDeflate: with refresh_message on, permessage-deflate is
// not offered upstream, so the client's messages stay readable; without
// it, the client's offer goes through (the control that the client offers).
func TestLiveRefreshNoDeflate(t *testing.T) {
	plain, refresh := newLiveUpstream(t), newLiveUpstream(t)
	addr := startCaddy(t, `
	route /plain/* {
		ws_auth {
			secret `+testSecret+`
		}
		reverse_proxy `+plain.addr()+`
	}
	route /refresh/* {
		ws_auth {
			secret `+testSecret+`
			refresh_message
		}
		reverse_proxy %UPSTREAM%
	}`, refresh.addr())
	deflate := func(d *websocket.Dialer) { d.EnableCompression = true }
	tok := hs256(t, claims("alice"))

	p := dialLive(t, liveURL(addr, "/plain/ws", tok), deflate)
	p.echo("plain")
	if h := plain.header(t, 0).Get("Sec-WebSocket-Extensions"); !strings.Contains(h, "permessage-deflate") {
		t.Fatalf("without refresh_message, upstream Sec-WebSocket-Extensions = %q: the client offers no permessage-deflate", h)
	}
	p.close()

	c := dialLive(t, liveURL(addr, "/refresh/ws", tok), deflate)
	if h := refresh.header(t, 0).Values("Sec-WebSocket-Extensions"); len(h) != 0 {
		t.Errorf("with refresh_message, upstream got Sec-WebSocket-Extensions %q, want none", h)
	}
	if h := c.resp.Header.Get("Sec-WebSocket-Extensions"); h != "" {
		t.Errorf("with refresh_message, the client was answered Sec-WebSocket-Extensions %q, want none", h)
	}
	c.echo("before")
	newClaims := claims("alice")
	c.refresh(hs256(t, newClaims))
	c.expectRefreshOK(newClaims["exp"].(int64))
	c.echo("after")
	if got := refresh.messages(); !slices.Equal(got, []string{"before", "after"}) {
		t.Errorf("upstream received %q, want the two messages and not the refresh", got)
	}
	c.close()
	waitLiveCount(t, 0)
}

// TestLiveAcrossReload: a connection opened before a config reload (kept
// open by reverse_proxy's stream_close_delay) is still closed with 4001 at
// its token's exp, and stays in the registry once.
func TestLiveAcrossReload(t *testing.T) {
	up := newLiveUpstream(t)
	cfg := func(extra string) string {
		return `
	ws_auth {
		secret ` + testSecret + `
	}
	reverse_proxy %UPSTREAM% {
		stream_close_delay 1m
		` + extra + `
	}`
	}
	addr := startCaddy(t, cfg(""), up.addr())
	tok, exp := shortToken(t, "alice", 4*time.Second)
	c := dialLive(t, liveURL(addr, "/ws", tok))
	c.echo("before the reload")

	if err := loadCaddyfile(testConfig(addr, cfg("header_up X-Reloaded yes"), up.addr())); err != nil {
		t.Fatal(err)
	}
	c.echo("after the reload")
	waitLiveCount(t, 1)
	if got := c.closeWithin(time.Until(exp) + 5*time.Second); got != "close 4001 expired" {
		t.Errorf("at the token's exp, after a reload: %s, want close 4001 expired", got)
	}
	if code := up.ended(t); code != websocket.CloseGoingAway {
		t.Errorf("at the token's exp, after a reload, the upstream got close %d, want 1001", code)
	}
	waitLiveCount(t, 0)
}

// TestLiveHTTP2Expiry: over HTTP/2 (RFC 8441 extended CONNECT), the stream
// gets Close 4001 "expired" at the token's exp, the upstream Close 1001,
// and the stream ends.
func TestLiveHTTP2Expiry(t *testing.T) {
	if !withExtendedConnect(t) {
		return
	}
	up := newLiveUpstream(t)
	port := startHTTPSCaddy(t, "h1 h2", "", up.addr())
	tr := &http2.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}}}
	defer tr.CloseIdleConnections()
	waitAnswers(t, tr, port)
	checkStreamExpiry(t, tr, port, false, up)
}

// TestLiveHTTP3Expiry: the same over HTTP/3 (RFC 9220).
func TestLiveHTTP3Expiry(t *testing.T) {
	up := newLiveUpstream(t)
	port := startHTTPSCaddy(t, "", "", up.addr())
	tr := &http3.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h3"}}}
	defer tr.Close()
	waitAnswers(t, tr, port)
	checkStreamExpiry(t, tr, port, true, up)
}

// TestLiveHTTP2TooBig: over HTTP/2, a message over max_message_size closes
// the stream with 1009 "too_big"; one under it is echoed.
func TestLiveHTTP2TooBig(t *testing.T) {
	if !withExtendedConnect(t) {
		return
	}
	up := newLiveUpstream(t)
	port := startHTTPSCaddy(t, "h1 h2", "max_message_size 1KiB", up.addr())
	tr := &http2.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}}}
	defer tr.CloseIdleConnections()
	waitAnswers(t, tr, port)

	resp, pw := extendedConnect(t, tr, port, "/ws?token="+hs256(t, claims("alice")), false)
	defer pw.Close()
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("valid token over HTTP/2: status %d", resp.StatusCode)
	}
	frames := readFrames(resp.Body)
	small := strings.Repeat("a", 512)
	if _, err := pw.Write(maskedText(small)); err != nil {
		t.Fatal(err)
	}
	if f := nextFrame(t, frames, 5*time.Second); f.op != opText || string(f.payload) != small {
		t.Errorf("a 512-byte message over HTTP/2: op %d, %d bytes; want its echo", f.op, len(f.payload))
	}
	if _, err := pw.Write(maskedText(strings.Repeat("b", 2048))); err != nil {
		t.Fatal(err)
	}
	if got := closeFrame(frameOf(nextFrame(t, frames, 5*time.Second))); got != "close 1009 too_big" {
		t.Errorf("a 2 KiB message over HTTP/2: %s, want close 1009 too_big", got)
	}
	up.ended(t)
	endStream(t, pw, frames)
	if got := lengths(up.messages()); !slices.Equal(got, []int{512}) {
		t.Errorf("upstream received messages of %v bytes, want only the 512-byte one", got)
	}
	waitLiveCount(t, 0)
}

// Helpers of the live-connection tests.

// liveUpstream is a strict WebSocket upstream: gorilla/websocket, which
// fails the connection on an unmasked client frame or on a compressed one
// it did not negotiate. It echoes every data message; it answers a ping
// with its pong and then a text message "pinged:<payload>", a marker the
// client can wait for: the upstream has read everything sent before the
// ping. It records what it received.
type liveUpstream struct {
	*httptest.Server
	closes chan int // the close code each connection ended with; 1006 without a Close frame

	mu      sync.Mutex
	headers []http.Header // request headers of each upgrade
	msgs    []string      // data messages, from all connections, in order
	pings   []string      // ping payloads, in order
}

func newLiveUpstream(t testing.TB) *liveUpstream {
	u := &liveUpstream{closes: make(chan int, 64)}
	up := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.headers = append(u.headers, r.Header.Clone())
		u.mu.Unlock()
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		c.SetReadLimit(1 << 20)
		c.SetPingHandler(func(p string) error {
			u.mu.Lock()
			u.pings = append(u.pings, p)
			u.mu.Unlock()
			if err := c.WriteControl(websocket.PongMessage, []byte(p), time.Now().Add(time.Second)); err != nil {
				return err
			}
			return c.WriteMessage(websocket.TextMessage, []byte("pinged:"+p))
		})
		for {
			typ, msg, err := c.ReadMessage()
			if err != nil {
				code := websocket.CloseAbnormalClosure
				var ce *websocket.CloseError
				if errors.As(err, &ce) {
					code = ce.Code
				}
				select {
				case u.closes <- code:
				default:
				}
				return
			}
			u.mu.Lock()
			u.msgs = append(u.msgs, string(msg))
			u.mu.Unlock()
			if err := c.WriteMessage(typ, msg); err != nil {
				return
			}
		}
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *liveUpstream) addr() string { return strings.TrimPrefix(u.URL, "http://") }

func (u *liveUpstream) messages() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.msgs)
}

func (u *liveUpstream) pingsSeen() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.pings)
}

// header returns the request headers of the i-th upgrade.
func (u *liveUpstream) header(t *testing.T, i int) http.Header {
	t.Helper()
	u.mu.Lock()
	defer u.mu.Unlock()
	if i >= len(u.headers) {
		t.Fatalf("upstream saw %d upgrades, want at least %d", len(u.headers), i+1)
	}
	return u.headers[i]
}

// ended waits for the next upstream connection to end and returns the
// close code it got.
func (u *liveUpstream) ended(t *testing.T) int {
	t.Helper()
	select {
	case code := <-u.closes:
		return code
	case <-time.After(5 * time.Second):
		t.Fatal("the upstream connection was not closed")
		return 0
	}
}

// liveClient is a gorilla/websocket client whose messages are read by a
// goroutine of its own, so that a test can wait for something, or for
// nothing, with a bound and without a read deadline (which would break the
// connection).
type liveClient struct {
	t      *testing.T
	conn   *websocket.Conn
	resp   *http.Response
	events chan liveEvent // data messages, then the error that ended the reads; closed after it
	pongs  chan string
}

type liveEvent struct {
	typ  int
	data string
	err  error
}

func (e liveEvent) String() string {
	if e.err == nil {
		return fmt.Sprintf("message %.80q", e.data)
	}
	var ce *websocket.CloseError
	if errors.As(e.err, &ce) {
		return fmt.Sprintf("close %d %s", ce.Code, ce.Text)
	}
	return "error " + e.err.Error()
}

// liveURL is the WebSocket URL of path on addr, with token in the query.
func liveURL(addr, path, token string) string {
	return "ws://" + addr + path + "?token=" + token
}

// dialLive connects to url; the connection must be accepted.
func dialLive(t *testing.T, url string, opts ...func(*websocket.Dialer)) *liveClient {
	t.Helper()
	d := &websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	for _, o := range opts {
		o(d)
	}
	conn, resp, err := d.Dial(url, nil)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial: %v (status %d)", err, status)
	}
	c := &liveClient{t: t, conn: conn, resp: resp, events: make(chan liveEvent, 1024), pongs: make(chan string, 64)}
	conn.SetPongHandler(func(p string) error {
		select {
		case c.pongs <- p:
		default:
		}
		return nil
	})
	go func() {
		defer close(c.events)
		for {
			typ, p, err := conn.ReadMessage()
			c.events <- liveEvent{typ: typ, data: string(p), err: err}
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { conn.Close() })
	return c
}

func (c *liveClient) send(msg string) {
	c.t.Helper()
	if err := c.conn.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
		c.t.Fatalf("sending %.40q: %v", msg, err)
	}
}

// trySend sends msg to a server that may close the connection for it.
func (c *liveClient) trySend(msg string) {
	_ = c.conn.WriteMessage(websocket.TextMessage, []byte(msg))
}

func (c *liveClient) ping(p string) {
	c.t.Helper()
	if err := c.conn.WriteControl(websocket.PingMessage, []byte(p), time.Now().Add(5*time.Second)); err != nil {
		c.t.Fatalf("sending ping %q: %v", p, err)
	}
}

// sendFragmented sends msg as one message in the frames the write buffer
// allows, with a ping pingMid between two of them.
func (c *liveClient) sendFragmented(msg, pingMid string) {
	c.t.Helper()
	w, err := c.conn.NextWriter(websocket.TextMessage)
	if err != nil {
		c.t.Fatal(err)
	}
	half := len(msg) / 2
	if _, err := w.Write([]byte(msg[:half])); err != nil {
		c.t.Fatal(err)
	}
	c.ping(pingMid)
	if _, err := w.Write([]byte(msg[half:])); err != nil {
		c.t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		c.t.Fatal(err)
	}
}

// refresh sends a refresh message with token, of the default type.
func (c *liveClient) refresh(token string) {
	c.t.Helper()
	c.send(`{"type":"refresh_token","token":"` + token + `"}`)
}

// next returns what the client reads next, waiting at most d.
func (c *liveClient) next(d time.Duration) liveEvent {
	c.t.Helper()
	select {
	case ev, ok := <-c.events:
		if !ok {
			c.t.Fatal("the connection has already ended")
		}
		return ev
	case <-time.After(d):
		c.t.Fatalf("nothing received within %v", d)
		return liveEvent{}
	}
}

// echo sends msg and expects its echo as the next message.
func (c *liveClient) echo(msg string) {
	c.t.Helper()
	c.send(msg)
	if ev := c.next(5 * time.Second); ev.err != nil || ev.data != msg {
		c.t.Fatalf("sent %.40q, got %s; want its echo", msg, ev)
	}
}

// untilPinged reads until the upstream's marker for the ping p, and returns
// the other data messages read on the way (other markers left out).
func (c *liveClient) untilPinged(p string) []string {
	c.t.Helper()
	var got []string
	for {
		ev := c.next(5 * time.Second)
		switch {
		case ev.err != nil:
			c.t.Fatalf("waiting for the upstream to see the ping %q: %s", p, ev)
		case ev.data == "pinged:"+p:
			return got
		case !strings.HasPrefix(ev.data, "pinged:"):
			got = append(got, ev.data)
		}
	}
}

// expectPongs waits until the client has got a pong for each of ps.
func (c *liveClient) expectPongs(ps ...string) {
	c.t.Helper()
	want := slices.Clone(ps)
	timeout := time.After(5 * time.Second)
	for len(want) > 0 {
		select {
		case p := <-c.pongs:
			if i := slices.Index(want, p); i >= 0 {
				want = slices.Delete(want, i, i+1)
			}
		case <-timeout:
			c.t.Fatalf("no pong for the pings %q", want)
		}
	}
}

// closeWithin reads, skipping data messages, until the connection ends
// within d, and says how: "close <code> <reason>" or "error ...".
func (c *liveClient) closeWithin(d time.Duration) string {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		ev := c.next(time.Until(deadline))
		if ev.err != nil {
			return ev.String()
		}
	}
}

// ended checks that nothing comes after the close: the reads are over.
func (c *liveClient) ended() {
	c.t.Helper()
	select {
	case ev, ok := <-c.events:
		if ok {
			c.t.Errorf("after the close, the client read %s", ev)
		}
	case <-time.After(5 * time.Second):
		c.t.Error("the connection's reads did not end after the close")
	}
}

// quietUntil waits until t, and fails if anything arrives before.
func (c *liveClient) quietUntil(t time.Time) {
	c.t.Helper()
	select {
	case ev, ok := <-c.events:
		if !ok {
			c.t.Fatalf("the connection ended before %s", t.Format(time.TimeOnly))
		}
		c.t.Fatalf("before %s, the client got %s; want nothing", t.Format(time.TimeOnly), ev)
	case <-time.After(time.Until(t)):
	}
}

// expectRefreshOK expects the next message to be the answer to a refresh,
// {"type":"refresh_token_ok","exp":exp}.
func (c *liveClient) expectRefreshOK(exp int64) {
	c.t.Helper()
	ev := c.next(5 * time.Second)
	if ev.err != nil || ev.typ != websocket.TextMessage {
		c.t.Fatalf("after a refresh, got %s; want a text message refresh_token_ok", ev)
	}
	var ok struct {
		Type string `json:"type"`
		Exp  *int64 `json:"exp"`
	}
	if err := json.Unmarshal([]byte(ev.data), &ok); err != nil || ok.Type != "refresh_token_ok" || ok.Exp == nil || *ok.Exp != exp {
		c.t.Fatalf("after a refresh, got %q; want {\"type\":\"refresh_token_ok\",\"exp\":%d}", ev.data, exp)
	}
}

// close sends a Close 1000 and closes the connection.
func (c *liveClient) close() {
	_ = c.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	select {
	case <-c.events: // the server's answer, or the end
	case <-time.After(2 * time.Second):
	}
	c.conn.Close()
}

// checkRateNotice checks the message notify sends:
// {"type":"error","reason":"rate_limited","retry_after":<seconds>}, with
// an integer of seconds within the window (1m in the tests).
func checkRateNotice(t *testing.T, msg string) {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(msg))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("notice %q: %v", msg, err)
	}
	n, _ := m["retry_after"].(json.Number)
	secs, err := n.Int64()
	if len(m) != 3 || m["type"] != "error" || m["reason"] != "rate_limited" || err != nil || secs < 1 || secs > 60 {
		t.Errorf("notice %q, want {\"type\":\"error\",\"reason\":\"rate_limited\",\"retry_after\":<1 to 60>}", msg)
	}
}

// shortToken is a token of user that expires in about d (exp is in whole
// seconds, so between d-1s and d), and its exp.
func shortToken(t *testing.T, user string, d time.Duration) (string, time.Time) {
	exp := time.Unix(time.Now().Add(d).Unix(), 0)
	return hs256(t, claims(user, func(c jwt.MapClaims) { c["exp"] = exp.Unix() })), exp
}

// waitLiveCount waits, a few seconds at most, until the registry of live
// connections holds want of them.
func waitLiveCount(t *testing.T, want int) {
	t.Helper()
	n := liveCount()
	for deadline := time.Now().Add(5 * time.Second); n != want && time.Now().Before(deadline); n = liveCount() {
		time.Sleep(20 * time.Millisecond)
	}
	if n != want {
		t.Errorf("the registry holds %d live connections, want %d", n, want)
	}
}

func lengths(msgs []string) []int {
	n := make([]int, len(msgs))
	for i, m := range msgs {
		n[i] = len(m)
	}
	return n
}

// withExtendedConnect reports whether this process serves HTTP/2 extended
// CONNECT (GODEBUG=http2xconnect=1, read at start-up). If not, it runs the
// test again in a child process that does, fails the test if the child did
// not pass, and returns false.
func withExtendedConnect(t *testing.T) bool {
	t.Helper()
	if strings.Contains(os.Getenv("GODEBUG"), "http2xconnect=1") {
		return true
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^"+t.Name()+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "GODEBUG="+strings.TrimPrefix(os.Getenv("GODEBUG")+",http2xconnect=1", ","))
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("with GODEBUG=http2xconnect=1: %v\n%s", err, out)
	}
	return false
}

// startHTTPSCaddy loads a Caddy serving one HTTPS site on a free port (with
// the given protocols, or Caddy's default ones when empty): ws_auth with
// opts in front of reverse_proxy to upstream. It returns the port.
func startHTTPSCaddy(t *testing.T, protocols, opts, upstream string) int {
	t.Helper()
	caddyMu.Lock()
	t.Cleanup(caddyMu.Unlock)
	port := freePort(t)
	servers := ""
	if protocols != "" {
		servers = "\n\tservers {\n\t\tprotocols " + protocols + "\n\t}"
	}
	cfg := fmt.Sprintf(`{
	admin off
	persist_config off
	storage file_system %s
	local_certs
	skip_install_trust
	auto_https disable_redirects
	https_port %d%s
}

https://127.0.0.1:%d {
	tls internal
	ws_auth {
		secret %s
		%s
	}
	reverse_proxy %s
}`, t.TempDir(), port, servers, port, testSecret, opts, upstream)
	if err := loadCaddyfile(cfg); err != nil {
		t.Fatalf("loading config: %v\n%s", err, cfg)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
	waitListening(t, fmt.Sprintf("127.0.0.1:%d", port))
	return port
}

// checkStreamExpiry opens a WebSocket over an extended CONNECT (HTTP/3 when
// h3, else HTTP/2) with a token that expires in a few seconds: it echoes,
// then gets Close 4001 "expired" at exp, the upstream Close 1001, and the
// stream ends once the client answers the Close.
func checkStreamExpiry(t *testing.T, rt http.RoundTripper, port int, h3 bool, up *liveUpstream) {
	t.Helper()
	tok, exp := shortToken(t, "alice", 3*time.Second)
	resp, pw := extendedConnect(t, rt, port, "/ws?token="+tok, h3)
	defer pw.Close()
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("valid token: status %d", resp.StatusCode)
	}
	frames := readFrames(resp.Body)
	if _, err := pw.Write(maskedText("hi")); err != nil {
		t.Fatal(err)
	}
	if f := nextFrame(t, frames, 5*time.Second); f.op != opText || string(f.payload) != "hi" {
		t.Fatalf("before exp: op %d %q, want the echo", f.op, f.payload)
	}
	waitLiveCount(t, 1)
	if got := closeFrame(frameOf(nextFrame(t, frames, time.Until(exp)+5*time.Second))); got != "close 4001 expired" {
		t.Errorf("at the token's exp: %s, want close 4001 expired", got)
	}
	if code := up.ended(t); code != websocket.CloseGoingAway {
		t.Errorf("at the token's exp, the upstream got close %d, want 1001", code)
	}
	endStream(t, pw, frames)
	waitLiveCount(t, 0)
}

// wsFrame is one server frame read from a stream.
type wsFrame struct {
	op      byte
	payload []byte
}

func frameOf(f wsFrame) (byte, []byte) { return f.op, f.payload }

// readFrames reads the server's frames from r on a goroutine of its own;
// the channel is closed when the stream ends.
func readFrames(r io.Reader) <-chan wsFrame {
	ch := make(chan wsFrame, 64)
	go func() {
		defer close(ch)
		for {
			f, err := readFrame(r)
			if err != nil {
				return
			}
			ch <- f
		}
	}()
	return ch
}

// readFrame reads one frame of any length (up to 1 MiB), unmasking it if
// it is masked.
func readFrame(r io.Reader) (wsFrame, error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return wsFrame{}, err
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return wsFrame{}, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return wsFrame{}, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	if n > 1<<20 {
		return wsFrame{}, fmt.Errorf("frame of %d bytes", n)
	}
	var mask [4]byte
	masked := h[1]&0x80 != 0
	if masked {
		if _, err := io.ReadFull(r, mask[:]); err != nil {
			return wsFrame{}, err
		}
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return wsFrame{}, err
	}
	if masked {
		for i := range p {
			p[i] ^= mask[i&3]
		}
	}
	return wsFrame{op: h[0] & 0x0f, payload: p}, nil
}

// nextFrame returns the next server frame, waiting at most d.
func nextFrame(t *testing.T, frames <-chan wsFrame, d time.Duration) wsFrame {
	t.Helper()
	select {
	case f, ok := <-frames:
		if !ok {
			t.Fatal("the stream ended")
		}
		return f
	case <-time.After(d):
		t.Fatalf("no frame within %v", d)
		return wsFrame{}
	}
}

// endStream answers the server's Close and waits, a few seconds at most,
// for the stream to end. The answer is written on a goroutine: the
// transport may have stopped reading the request body, and the deferred
// close of pw then ends the write.
func endStream(t *testing.T, pw *io.PipeWriter, frames <-chan wsFrame) {
	t.Helper()
	go func() { _, _ = pw.Write([]byte{0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xe8 ^ 2}) }()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case f, ok := <-frames:
			if !ok {
				return
			}
			t.Errorf("after the Close, the server sent %s", closeFrame(f.op, f.payload))
		case <-timeout:
			t.Fatal("the stream did not end after the Close")
		}
	}
}

// TestLiveReadAhead: frames a client sends in the same write as its
// handshake are read by the server before reverse_proxy hijacks the
// connection; they pass the watch too: of five messages sent that way
// with a rate of three, the upstream gets three.
func TestLiveReadAhead(t *testing.T) {
	up := newLiveUpstream(t)
	addr := startCaddy(t, site("rate_limit messages 3/1m per connection drop"), up.addr())
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	req := "GET /ws?token=" + hs256(t, claims("alice")) + " HTTP/1.1\r\nHost: " + addr +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
	b := []byte(req)
	for i := 1; i <= 5; i++ {
		b = append(b, maskedText(fmt.Sprintf("m%d", i))...)
	}
	if _, err := conn.Write(b); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v, %v", resp, err)
	}
	var echoed []string
	for len(echoed) < 3 {
		f, err := readFrame(br)
		if err != nil {
			t.Fatalf("after %q: %v", echoed, err)
		}
		echoed = append(echoed, string(f.payload))
	}
	want := []string{"m1", "m2", "m3"}
	if !slices.Equal(echoed, want) {
		t.Errorf("echoed %q, want %q", echoed, want)
	}
	// A ping after them: once its pong is back, the upstream has read
	// everything before it.
	if _, err := conn.Write(maskedFrame(opPing, "p")); err != nil {
		t.Fatal(err)
	}
	for {
		f, err := readFrame(br)
		if err != nil {
			t.Fatal(err)
		}
		if f.op == opPong {
			break
		}
		if f.op == opText && !strings.HasPrefix(string(f.payload), "pinged:") {
			t.Errorf("echo of a dropped message: %q", f.payload)
		}
	}
	if got := up.messages(); !slices.Equal(got, want) {
		t.Errorf("upstream received %q, want %q", got, want)
	}
}

// TestLiveHijackPair: the bufio pair a watched hijack hands out is the
// server's own, pointed at the watch: its reader holds nothing and reads
// nothing (a frame sent with the handshake, which the server read ahead,
// or after it, is read from the connection, through the watch), and its
// writer writes through the watch: what it writes reaches the client, and
// once the watch ended it writes nothing.
func TestLiveHijackPair(t *testing.T) {
	for _, ahead := range []bool{true, false} {
		t.Run(fmt.Sprintf("read ahead %v", ahead), func(t *testing.T) { testHijackPair(t, ahead) })
	}
}

func testHijackPair(t *testing.T, ahead bool) {
	h := watcherHandler(t)
	sent := maskedText("early")
	failed := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		failed <- func() (msg string) {
			defer func() {
				if v := recover(); v != nil {
					msg = fmt.Sprint("panic: ", v)
				}
			}()
			hs := handshake{w: w, r: r}
			lc, lw := h.newLive(&hs, w, r)
			defer lc.end()
			lw.WriteHeader(http.StatusSwitchingProtocols)
			conn, brw, err := http.NewResponseController(lw).Hijack()
			if err != nil {
				return "hijack: " + err.Error()
			}
			defer conn.Close()
			if _, ok := conn.(*watchedConn); !ok {
				return fmt.Sprintf("hijack gave a %T, not the watched connection", conn)
			}
			if n := brw.Reader.Buffered(); n != 0 {
				return fmt.Sprintf("the reader holds %d bytes", n)
			}
			if _, err := brw.Reader.ReadByte(); err != io.EOF {
				return fmt.Sprintf("reading the reader: %v, want EOF", err)
			}
			got := make([]byte, len(sent))
			if _, err := io.ReadFull(conn, got); err != nil || !bytes.Equal(got, sent) {
				return fmt.Sprintf("read %x, %v from the connection, want %x", got, err, sent)
			}
			if _, err := brw.WriteString("\x81\x02hi"); err != nil {
				return "write: " + err.Error()
			}
			if err := brw.Flush(); err != nil {
				return "flush: " + err.Error()
			}
			lc.end()
			_, _ = brw.WriteString("\x81\x05after")
			if err := brw.Flush(); !errors.Is(err, net.ErrClosed) {
				return fmt.Sprintf("flush after the watch ended: %v, want net.ErrClosed", err)
			}
			return ""
		}()
	}))
	defer srv.Close()
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	req := []byte("GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
	if ahead {
		req = append(req, sent...)
	}
	if _, err := conn.Write(req); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v, %v", resp, err)
	}
	if !ahead {
		if _, err := conn.Write(sent); err != nil {
			t.Fatal(err)
		}
	}
	if msg := <-failed; msg != "" {
		t.Fatal(msg)
	}
	f, err := readFrame(br)
	if err != nil || f.op != opText || string(f.payload) != "hi" {
		t.Fatalf("the client read %+v, %v; want the text frame \"hi\"", f, err)
	}
	if f, err := readFrame(br); err == nil {
		t.Errorf("after the watch ended the client read %+v", f)
	}
}

// TestLiveConnSize: a liveConn, most of what ws_auth keeps for an idle
// connection, fits the heap's 512-byte size class; past it, each
// connection costs 576 bytes.
func TestLiveConnSize(t *testing.T) {
	var c liveConn
	if n := unsafe.Sizeof(c); n > 512 {
		t.Errorf("a liveConn is %d bytes, more than the 512-byte size class", n)
	}
}

// TestRegistryExpiries: the registry's one timer expires connections in
// the order of their deadlines, a refresh moves a connection's place, and
// a connection that ended is never expired.
func TestRegistryExpiries(t *testing.T) {
	h := watcherHandler(t, func(h *Handler) { h.expire = true })
	base := time.Now()
	var order []string
	var mu sync.Mutex
	done := make(chan struct{}, 4)
	conns := map[string]*liveConn{}
	for _, tc := range []struct {
		name string
		in   time.Duration
	}{{"c", 300 * time.Millisecond}, {"a", 100 * time.Millisecond}, {"b", 200 * time.Millisecond}, {"gone", 50 * time.Millisecond}} {
		var client bytes.Buffer
		c := &liveConn{h: h, user: tc.name, expires: base.Add(tc.in), dst: &watchWriter{w: &client, onWrite: func() {
			mu.Lock()
			order = append(order, tc.name)
			mu.Unlock()
			done <- struct{}{}
		}}}
		c.start()
		t.Cleanup(c.end)
		conns[tc.name] = c
	}
	conns["gone"].end()
	// a's token is refreshed past c's.
	liveConns.reschedule(conns["a"], base.Add(400*time.Millisecond))
	for range 3 {
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("expired so far: %q", order)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"b", "c", "a"}; !slices.Equal(order, want) {
		t.Errorf("expired in the order %q, want %q", order, want)
	}
}

// watchWriter is a client that reports each write (the module's Close).
type watchWriter struct {
	w       io.Writer
	onWrite func()
}

func (ww *watchWriter) Write(p []byte) (int, error) {
	ww.onWrite()
	return ww.w.Write(p)
}

// TestLiveRevokedWhileDialing: an entry added after the handshake was
// decided but before the connection is in the registry (here, while the
// upstream answers the upgrade) still closes the connection: the 101 goes
// out during the hijack, before the registry knows the connection, and a
// revocation in between was once missed.
func TestLiveRevokedWhileDialing(t *testing.T) {
	upgrader := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := runtimeBlocklist.Add(Entry{Kind: "sub", Value: "mallory"}); err != nil {
			t.Error(err)
		}
		c, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				return
			}
		}
	}))
	t.Cleanup(up.Close)
	t.Cleanup(func() { _, _ = runtimeBlocklist.Remove("sub", "mallory") })
	addr := startCaddy(t, site(""), strings.TrimPrefix(up.URL, "http://"))
	c := dialLive(t, liveURL(addr, "/ws", hs256(t, claims("mallory"))))
	if got := c.closeWithin(2 * time.Second); got != "close 1008 revoked" {
		t.Errorf("mallory, blocked while her upstream answered: %s, want close 1008 revoked", got)
	}
}

// TestLiveFarExpiry: a token whose exp is past what a time in nanoseconds
// holds (after 2262, up to 9999 as RFC 7519 dates go) keeps its
// connection open; the expiry heap once wrapped it into the past and
// closed it at once as expired.
func TestLiveFarExpiry(t *testing.T) {
	up := newLiveUpstream(t)
	addr := startCaddy(t, site(""), up.addr())
	far := time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC).Unix()
	c := dialLive(t, liveURL(addr, "/ws", hs256(t, claims("alice", func(m jwt.MapClaims) { m["exp"] = far }))))
	c.echo("now")
	c.quietUntil(time.Now().Add(1500 * time.Millisecond))
	c.echo("still open")
}
