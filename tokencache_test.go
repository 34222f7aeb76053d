package wsauth

import (
	"reflect"
	"strconv"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Tests of the verified-token cache, through a real Caddy: a token seen
// again skips its signature check, and still meets every other rule.

// cacheHits is how many handshakes the process's token caches answered.
func cacheHits() float64 { return testutil.ToFloat64(wsMetrics.cacheHit) }

// TestTokenCacheHonoursExpAndBlocklist: a token seen again is a hit, is
// refused as expired once its exp has passed, and as blocked once its user
// is on the blocklist: the cache skips the signature check, nothing else.
func TestTokenCacheHonoursExpAndBlocklist(t *testing.T) {
	addr := startCaddy(t, site(""), newLiveUpstream(t).addr())
	tok, exp := shortToken(t, "alice", 2*time.Second)
	if got := dialOutcome(t, addr, "/ws", tok); got != "accepted" {
		t.Fatalf("first handshake: %s, want accepted", got)
	}
	before := cacheHits()
	if got := dialOutcome(t, addr, "/ws", tok); got != "accepted" {
		t.Fatalf("second handshake: %s, want accepted", got)
	}
	if d := cacheHits() - before; d != 1 {
		t.Errorf("the second handshake was %v cache hits, want 1", d)
	}

	if err := runtimeBlocklist.Add(Entry{Kind: "sub", Value: "alice"}); err != nil {
		t.Fatal(err)
	}
	if got := dialOutcome(t, addr, "/ws", tok); got != "close 1008 blocked" {
		t.Errorf("a cached token of a blocked user: %s, want close 1008 blocked", got)
	}
	if _, err := runtimeBlocklist.Remove("sub", "alice"); err != nil {
		t.Fatal(err)
	}

	time.Sleep(time.Until(exp) + 100*time.Millisecond)
	if got := dialOutcome(t, addr, "/ws", tok); got != "close 4001 expired" {
		t.Errorf("a cached token past its exp: %s, want close 4001 expired", got)
	}
}

// TestTokenCacheKeyRemoved: a token verified by a key of a remote set is
// refused once the key is gone from the set, cached or not; a token of a
// key that stays is still a hit after the refresh.
func TestTokenCacheKeyRemoved(t *testing.T) {
	keys := testKeys()
	stay := rotationKeys()[0]
	srv := newJWKSServer(t, jwkOf(t, &keys.rsa.PublicKey, "old", jwkset.AlgRS256), jwkOf(t, &stay.PublicKey, "stay", jwkset.AlgRS256))
	addr := startCaddy(t, jwksSite(srv.URL, "100ms", ""), newLiveUpstream(t).addr())
	oldTok := sign(t, jwt.SigningMethodRS256, keys.rsa, claims("alice"), "old")
	stayTok := sign(t, jwt.SigningMethodRS256, stay, claims("bob"), "stay")
	for _, tok := range []string{oldTok, oldTok, stayTok, stayTok} {
		if got := dialOutcome(t, addr, "/ws", tok); got != "accepted" {
			t.Fatalf("before the rotation: %s, want accepted", got)
		}
	}

	srv.publish(t, jwkOf(t, &stay.PublicKey, "stay", jwkset.AlgRS256))
	n := srv.fetches.Load()
	srv.waitFetches(t, n+2) // a refresh has taken the new set
	if got := dialOutcome(t, addr, "/ws", oldTok); got != "close 1008 invalid" {
		t.Errorf("a cached token of a removed key: %s, want close 1008 invalid", got)
	}
	before := cacheHits()
	if got := dialOutcome(t, addr, "/ws", stayTok); got != "accepted" {
		t.Errorf("a cached token of a key that stayed: %s, want accepted", got)
	}
	if d := cacheHits() - before; d != 1 {
		t.Errorf("the token of the key that stayed was %v cache hits after the refresh, want 1", d)
	}
}

// TestTokenCacheOff: with token_cache off, a token seen again is checked
// in full.
func TestTokenCacheOff(t *testing.T) {
	addr := startCaddy(t, site("token_cache off"), newLiveUpstream(t).addr())
	tok := hs256(t, claims("alice"))
	before := cacheHits()
	for range 3 {
		if got := dialOutcome(t, addr, "/ws", tok); got != "accepted" {
			t.Fatalf("%s, want accepted", got)
		}
	}
	if d := cacheHits() - before; d != 0 {
		t.Errorf("%v cache hits with token_cache off", d)
	}
}

// TestTokenCacheBounds: the cache holds at most its entries, whatever the
// number of distinct tokens, and never more than its bytes.
func TestTokenCacheBounds(t *testing.T) {
	n := 100
	h := provisioned(t, &Handler{Secrets: []string{testSecret}, TokenCache: &TokenCache{Entries: &n}})
	for i := range 1000 {
		var id identity
		if ref := h.verify(hs256(t, claims("user-"+strconv.Itoa(i))), &id); ref != nil {
			t.Fatalf("token %d: %v", i, ref.detail)
		}
	}
	h.tokens.mu.RLock()
	got, bytes := len(h.tokens.entries), h.tokens.bytes
	h.tokens.mu.RUnlock()
	if got > n || got == 0 {
		t.Errorf("the cache holds %d tokens, want 1 to %d", got, n)
	}
	if bytes > maxTokenCacheBytes {
		t.Errorf("the cache holds %d bytes, more than %d", bytes, maxTokenCacheBytes)
	}
}

// TestTokenCacheIdentity: a hit makes the identity that the full check of
// the same token made, but for what only verify reads (the audience, and
// the scope claims as the token wrote them; granted holds the scopes) and
// the claims that a placeholder decoded. A field added to identity or to
// tokenClaims shows here until the cache keeps it, or this test says why
// it need not.
func TestTokenCacheIdentity(t *testing.T) {
	exp := time.Now().Add(time.Hour).Unix()
	for _, tc := range []struct {
		name string
		h    Handler
		c    jwt.MapClaims
	}{
		{"defaults", Handler{}, claims("alice")},
		{"issuer, audiences and scopes as arrays", Handler{Issuers: []string{"iss-a"}, Audiences: []string{"aud-a"}},
			claims("bob", func(c jwt.MapClaims) {
				c["iss"], c["aud"], c["scope"] = "iss-a", []string{"aud-a", "aud-b"}, []string{"chat:read", "chat:write"}
			})},
		{"scp, no jti, no iss, a fractional exp", Handler{},
			claims("carol", func(c jwt.MapClaims) {
				delete(c, "jti")
				delete(c, "scope")
				c["scp"], c["exp"] = "a b", float64(exp)+0.5
			})},
		{"a jti that is no string", Handler{}, claims("dave", func(c jwt.MapClaims) { c["jti"] = 42 })},
		{"user and scope claims of their own", Handler{UserClaim: "email", ScopeClaim: "org.perms"},
			claims("erin", func(c jwt.MapClaims) {
				c["email"], c["org"] = "erin@example.com", map[string]any{"perms": []string{"x", "y"}}
			})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.h
			h.Secrets = []string{testSecret}
			hp := provisioned(t, &h)
			tok := hs256(t, tc.c)
			var full, hit identity
			if ref := hp.verify(tok, &full); ref != nil {
				t.Fatalf("full check: %v", ref.detail)
			}
			before := cacheHits()
			if ref := hp.verify(tok, &hit); ref != nil {
				t.Fatalf("cache hit: %v", ref.detail)
			}
			if d := cacheHits() - before; d != 1 {
				t.Fatalf("the second check was %v cache hits, want 1", d)
			}
			full.claims.Audience, full.claims.Scope, full.claims.Scp = audience{}, scopeList{}, scopeList{}
			full.lazy.all, full.lazy.err = nil, nil
			if !reflect.DeepEqual(hit, full) {
				t.Errorf("a hit made\n%+v\nwhere the full check made\n%+v", hit, full)
			}
		})
	}
}
