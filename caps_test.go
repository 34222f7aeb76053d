package wsauth

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// TestConnectionCap: with max_connections_per_user 2, a user's third live
// connection is refused as rate_limited (1013, or 429 with Retry-After),
// another user is not, and a slot frees when a connection closes.
func TestConnectionCap(t *testing.T) {
	up := newLiveUpstream(t)
	addr := startCaddy(t, site("max_connections_per_user 2"), up.addr())
	alice := hs256(t, claims("alice"))
	a1 := dialLive(t, liveURL(addr, "/ws", alice))
	a2 := dialLive(t, liveURL(addr, "/ws", alice))
	a1.echo("one")
	a2.echo("two")
	if got := dialOutcome(t, addr, "/ws", alice); got != "close 1013 rate_limited" {
		t.Errorf("alice's third connection: %s, want close 1013 rate_limited", got)
	}
	if got := dialOutcome(t, addr, "/ws", hs256(t, claims("bob"))); got != "accepted" {
		t.Errorf("bob, while alice is at her cap: %s, want accepted", got)
	}
	// One of alice's connections closes: its slot frees.
	a1.close()
	waitLiveCount(t, 1)
	if got := dialOutcome(t, addr, "/ws", alice); got != "accepted" {
		t.Errorf("alice, after one of her connections closed: %s, want accepted", got)
	}
	a2.close()
	waitLiveCount(t, 0)
	if n := userSlots.count(userSlots.slotKey("", "alice")); n != 0 {
		t.Errorf("alice holds %d slots with no connection", n)
	}
}

// TestConnectionCapStatus: in status mode the refusal is a 429 with
// Retry-After.
func TestConnectionCapStatus(t *testing.T) {
	up := newLiveUpstream(t)
	addr := startCaddy(t, site("max_connections_per_user 1\n reject status"), up.addr())
	tok := hs256(t, claims("carol"))
	c := dialLive(t, liveURL(addr, "/ws", tok))
	c.echo("one")
	_, resp, err := dial(addr, "/ws", dialOpts{query: "token=" + tok})
	if err == nil || resp == nil || resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" {
		t.Errorf("carol's second connection: %v, want 429 with Retry-After", resp)
	}
	c.close()
	waitLiveCount(t, 0)
}

// TestBlockAfterIP: an IP that fails authentication n times within the
// window is banned (blocked, even with a valid token) for the ban's time,
// then let in again; the ban shows as a blocklist entry with a reason.
func TestBlockAfterIP(t *testing.T) {
	up := newLiveUpstream(t)
	addr := startCaddy(t, site("block_after 3 failures within 1m for 2s"), up.addr())
	t.Cleanup(func() { unban(t, "ip", "127.0.0.1") })
	forged := sign(t, jwt.SigningMethodHS256, []byte("not the secret, not the secret!!"), claims("mallory"), "")
	valid := hs256(t, claims("alice"))
	for i := range 2 {
		if got := dialOutcome(t, addr, "/ws", forged); got != "close 1008 invalid" {
			t.Fatalf("forged token %d: %s", i+1, got)
		}
	}
	if got := dialOutcome(t, addr, "/ws", valid); got != "accepted" {
		t.Fatalf("a valid token after 2 failures: %s, want accepted", got)
	}
	if got := dialOutcome(t, addr, "/ws", forged); got != "close 1008 invalid" {
		t.Fatalf("third forged token: %s", got)
	}
	if got := dialOutcome(t, addr, "/ws", valid); got != "close 1008 blocked" {
		t.Errorf("a valid token after 3 failures: %s, want close 1008 blocked", got)
	}
	var ban *Entry
	for _, e := range runtimeBlocklist.entries(time.Now()) {
		if e.Kind == "ip" && e.Value == "127.0.0.1" {
			ban = &e
		}
	}
	if ban == nil || ban.Expires.IsZero() || time.Until(ban.Expires) > 2*time.Second || !strings.Contains(ban.Reason, "3 authentication failures") {
		t.Errorf("the ban's blocklist entry: %+v, want one ending within 2s, with its reason", ban)
	}
	// A reload keeps the ban.
	if err := loadCaddyfile(testConfig(addr, site("block_after 3 failures within 1m for 2s\n leeway 1s"), up.addr())); err != nil {
		t.Fatal(err)
	}
	if got := dialOutcome(t, addr, "/ws", valid); got != "close 1008 blocked" {
		t.Errorf("a valid token after a reload, while banned: %s, want close 1008 blocked", got)
	}
	// After the ban (2s), the IP is let in.
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := dialOutcome(t, addr, "/ws", valid)
		if got == "accepted" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the ban: %s, want accepted", got)
		}
		time.Sleep(200 * time.Millisecond)
	}
	waitLiveCount(t, 0)
}

// TestBlockAfterUser: a user who keeps breaking the message rate is
// banned: the live connection is closed as revoked, and the next
// handshake refused as blocked.
func TestBlockAfterUser(t *testing.T) {
	up := newLiveUpstream(t)
	addr := startCaddy(t, site("block_after 2 failures within 1m for 1m\n rate_limit messages 1/1m per connection drop"), up.addr())
	t.Cleanup(func() { unban(t, "sub", "dave") })
	tok := hs256(t, claims("dave"))
	c := dialLive(t, liveURL(addr, "/ws", tok))
	c.echo("allowed")
	c.trySend("dropped 1")
	c.trySend("dropped 2")
	if got := c.closeWithin(5 * time.Second); got != "close 1008 revoked" {
		t.Errorf("dave's connection after 2 violations: %s, want close 1008 revoked", got)
	}
	if got := dialOutcome(t, addr, "/ws", tok); got != "close 1008 blocked" {
		t.Errorf("dave's next handshake: %s, want close 1008 blocked", got)
	}
	waitLiveCount(t, 0)
}

// TestFloodBounds: a million distinct IPs at the failure counter and at the
// handshake limiter keep each within its bound of keys, and bans within
// theirs.
func TestFloodBounds(t *testing.T) {
	fc := newFailureCounter(5, time.Minute)
	rl := newRateLimiter(5, time.Minute, false)
	t0 := time.Unix(1_700_000_000, 0)
	for i := range 1_000_000 {
		ip := fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255)
		if i >= 1<<24 {
			t.Fatal("ran out of addresses")
		}
		fc.Add(ip, t0)
		rl.Allow(ip, t0)
	}
	if n := len(fc.wins); n > maxRateKeys {
		t.Errorf("failure counter: %d keys, bound %d", n, maxRateKeys)
	}
	if n := len(rl.tat); n > maxRateKeys {
		t.Errorf("rate limiter: %d keys, bound %d", n, maxRateKeys)
	}

	old := maxBans
	maxBans = 100
	defer func() { maxBans = old }()
	var banned []string
	for i := range 1000 {
		v := fmt.Sprintf("flood-%d", i)
		if err := bans.ban("sub", v, time.Now(), time.Hour, "test"); err != nil {
			t.Fatal(err)
		}
		banned = append(banned, v)
	}
	t.Cleanup(func() {
		for _, v := range banned {
			unban(t, "sub", v)
		}
	})
	if n := bans.size(); n > 100 {
		t.Errorf("%d bans in force, bound 100", n)
	}
	runtimeBlocklist.mu.RLock()
	n := len(runtimeBlocklist.set.sub)
	runtimeBlocklist.mu.RUnlock()
	if n > 100 {
		t.Errorf("the run-time blocklist holds %d bans, bound 100", n)
	}
}

// unban removes a ban made by a test.
func unban(t *testing.T, kind, value string) {
	t.Helper()
	bans.mu.Lock()
	delete(bans.bans, banKey{kind, value})
	bans.mu.Unlock()
	if _, err := runtimeBlocklist.Remove(kind, value); err != nil {
		t.Error(err)
	}
}
