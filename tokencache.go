package wsauth

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// The verified-token cache: after a deploy or a network blip every client
// reconnects at once with the token it already had, and with RS256 or
// ES256 each reconnect would pay a full signature check for a token the
// handler verified minutes ago. A token verified once is accepted again
// without the signature check and the claims' decoding until the earliest
// of its exp (checked at each use, with the leeway, as nbf is), the cache's
// maximum age, and a change of the key that verified it.
//
// It is on by default, because a hit accepts nothing that a full check
// would refuse: the key is the whole token (no hash that could collide);
// at each hit the token's alg and kid are looked up again and must find
// the very key that verified it (a key removed from its set, or replaced
// by a refresh, sends the token through the full check); the times are
// checked again; and the blocklist, origin, scopes and limits are checked
// on every handshake as before, hit or not. Memory is bounded in entries
// and in bytes.

// TokenCache sets the verified-token cache.
type TokenCache struct {
	// How many tokens are kept. Default: 10000; 0 turns the cache off.
	Entries *int `json:"entries,omitempty"`

	// How long a token is reused at most after its full check. Default:
	// 5m; at most 1h.
	MaxAge caddy.Duration `json:"max_age,omitempty"`
}

const (
	defaultTokenCacheEntries = 10000
	maxTokenCacheEntries     = 1 << 20
	defaultTokenCacheAge     = 5 * time.Minute
	maxTokenCacheAge         = time.Hour
	// maxTokenCacheBytes bounds the tokens a cache holds, with their
	// identities: at the default size, 10,000 tokens of 1.6 KiB.
	maxTokenCacheBytes = 16 << 20
	// cachedIdentitySize is about what an entry costs besides its token.
	cachedIdentitySize = 512
)

// check applies the rules of token_cache.
func (tc *TokenCache) check() error {
	if tc.Entries != nil && (*tc.Entries < 0 || *tc.Entries > maxTokenCacheEntries) {
		return fmt.Errorf("token_cache: entries must be between 0 (off) and %d", maxTokenCacheEntries)
	}
	if a := time.Duration(tc.MaxAge); a < 0 || a > maxTokenCacheAge {
		return fmt.Errorf("token_cache: max_age must be positive and at most %s", maxTokenCacheAge)
	}
	return nil
}

// tokenCache is a handler's cache of verified tokens.
type tokenCache struct {
	maxEntries int
	maxAge     time.Duration

	mu      sync.RWMutex
	entries map[string]*cachedToken
	bytes   int
}

// A cachedToken is a verified token: what the decision reads of its
// identity after verify, and what found its key. A hit makes the identity
// that verify made, but for the audience and the scope claims as the token
// wrote them, which only verify reads (TestTokenCacheIdentity): an entry
// outlives its handshake by up to max_age, and the whole identity (352
// bytes, which also kept the audience's strings) put an entry in the
// 448-byte size class, where it now takes 224.
type cachedToken struct {
	user, jti, iss string
	granted        scopeList
	exp, nbf, iat  numericDate
	jtiOK, issOK   bool
	alg, kid       string
	key            any // compared with what alg and kid find now
	added          time.Time
}

// identity is the identity verify made of token, which e caches.
func (e *cachedToken) identity(token string) identity {
	return identity{
		claims: tokenClaims{
			Issuer:    optString{s: e.iss, ok: e.issOK},
			Subject:   optString{s: e.user, ok: true}, // verify accepts none without
			ExpiresAt: e.exp,
			NotBefore: e.nbf,
			IssuedAt:  e.iat,
			ID:        optString{s: e.jti, ok: e.jtiOK},
		},
		user:     e.user,
		verified: true,
		granted:  e.granted,
		lazy:     lazyClaims{payload: token[strings.IndexByte(token, '.')+1 : strings.LastIndexByte(token, '.')]},
	}
}

// newTokenCache returns the cache tc asks for, or nil when it is off.
func newTokenCache(tc *TokenCache) *tokenCache {
	n, age := defaultTokenCacheEntries, defaultTokenCacheAge
	if tc != nil {
		if tc.Entries != nil {
			n = *tc.Entries
		}
		if tc.MaxAge != 0 {
			age = time.Duration(tc.MaxAge)
		}
	}
	if n == 0 {
		return nil
	}
	return &tokenCache{maxEntries: n, maxAge: age, entries: make(map[string]*cachedToken)}
}

// cachedIdentity fills id from the cache, if token is there, young enough, and its
// alg and kid still find the key that verified it; the caller checks the
// times again.
func (h *Handler) cachedIdentity(token string, id *identity) bool {
	c := h.tokens
	c.mu.RLock()
	e := c.entries[token]
	c.mu.RUnlock()
	if e == nil {
		wsMetrics.cacheMiss.Inc()
		return false
	}
	if time.Since(e.added) >= c.maxAge || !sameKey(h.keys, e) {
		c.remove(token, e)
		wsMetrics.cacheMiss.Inc()
		return false
	}
	*id = e.identity(token)
	wsMetrics.cacheHit.Inc()
	return true
}

// sameKey reports whether e's alg and kid find the key that verified it.
func sameKey(k *keyring, e *cachedToken) bool {
	key, err := k.lookup(e.alg, e.kid)
	return err == nil && keysEqual(e.key, key)
}

// keysEqual reports whether a and b are one key: the same secret, or
// public keys of the same value (a key set's refresh makes new values of
// the keys it keeps). A jwt.VerificationKeySet is no single key: a token
// verified by one of several keys without a kid is not kept.
func keysEqual(a, b any) bool {
	switch a := a.(type) {
	case *hmacKey:
		bk, ok := b.(*hmacKey)
		return ok && a == bk
	case *rsa.PublicKey:
		bk, ok := b.(*rsa.PublicKey)
		return ok && a.Equal(bk)
	case *ecdsa.PublicKey:
		bk, ok := b.(*ecdsa.PublicKey)
		return ok && a.Equal(bk)
	case ed25519.PublicKey:
		bk, ok := b.(ed25519.PublicKey)
		return ok && a.Equal(bk)
	case []byte: // an oct key of a jwks_file
		bk, ok := b.([]byte)
		return ok && bytes.Equal(a, bk)
	}
	return false
}

// put keeps a verified token; id is its identity as verify leaves it.
func (c *tokenCache) put(token string, id *identity, alg, kid string, key any) {
	if !keysEqual(key, key) {
		return // verified by one of several keys without a kid: not kept
	}
	cl := &id.claims
	e := &cachedToken{
		user: id.user, jti: cl.ID.s, iss: cl.Issuer.s, granted: id.granted,
		exp: cl.ExpiresAt, nbf: cl.NotBefore, iat: cl.IssuedAt, jtiOK: cl.ID.ok, issOK: cl.Issuer.ok,
		alg: alg, kid: kid, key: key, added: time.Now(),
	}
	size := len(token) + cachedIdentitySize
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.entries[token]; old != nil {
		return
	}
	for len(c.entries) >= c.maxEntries || c.bytes+size > maxTokenCacheBytes {
		if !c.evictLocked() {
			return
		}
	}
	c.entries[token] = e
	c.bytes += size
}

// evictLocked makes room: expired tokens first, then an arbitrary tenth.
// It reports whether it freed anything.
func (c *tokenCache) evictLocked() bool {
	n := len(c.entries)
	t := now()
	for tok, e := range c.entries {
		if !t.Before(e.exp.time()) || time.Since(e.added) >= c.maxAge {
			c.deleteLocked(tok)
		}
	}
	for tok := range c.entries {
		if len(c.entries) <= n*9/10 {
			break
		}
		c.deleteLocked(tok)
	}
	return len(c.entries) < n
}

func (c *tokenCache) deleteLocked(token string) {
	delete(c.entries, token)
	c.bytes -= len(token) + cachedIdentitySize
}

// remove takes token out, if e is still its entry.
func (c *tokenCache) remove(token string, e *cachedToken) {
	c.mu.Lock()
	if c.entries[token] == e {
		c.deleteLocked(token)
	}
	c.mu.Unlock()
}
