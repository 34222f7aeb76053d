package wsauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/rsa"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// The handshake decision (ServeHTTP up to the next handler) next to bare
// golang-jwt parse+verify of the same token into MapClaims, the floor the
// issue measures us against. Run with:
//
//	go test -run '^$' -bench 'Handshake|Placeholders' -benchmem
//
// Requests are built outside the timer in batches, because Caddy builds a
// request (and its replacer) whether or not ws_auth runs.

type benchAlg struct {
	name   string
	method jwt.SigningMethod
	signer any
	verify any    // the key golang-jwt verifies with
	config string // the key option of ws_auth
}

func benchAlgs(b *testing.B) []benchAlg {
	k := testKeys()
	rsaPEM := writePublicPEM(b, &k.rsa.PublicKey)
	ecPEM := writePublicPEM(b, &k.ec.PublicKey)
	return []benchAlg{
		{"HS256", jwt.SigningMethodHS256, []byte(testSecret), []byte(testSecret), testSecret},
		{"RS256", jwt.SigningMethodRS256, k.rsa, &k.rsa.PublicKey, rsaPEM},
		{"ES256", jwt.SigningMethodES256, k.ec, &k.ec.PublicKey, ecPEM},
	}
}

// benchClaims are the typical claims of the bench harness's tokens.
func benchClaims() jwt.MapClaims {
	n := time.Now()
	return jwt.MapClaims{
		"sub": "user-42", "jti": "5f0c2a6e-3b1d-4c59-9a77-0d1f4e8b2c31",
		"iss": "bench-issuer", "aud": "bench-aud", "scope": "chat:read chat:write",
		"name": "User 42", "iat": n.Unix(), "nbf": n.Unix(), "exp": n.Add(3 * time.Hour).Unix(),
	}
}

func provisioned(b testing.TB, h *Handler) *Handler {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	b.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	h.logger = zap.NewNop()
	return h
}

// benchHandler is the handler the handshake benchmarks decide with: the
// token from the query, issuer, audience and origin checked, alg's key.
func benchHandler(b *testing.B, alg benchAlg) *Handler {
	off := 0
	h := &Handler{
		TokenSources:   []TokenSource{{Source: "query"}},
		Issuers:        []string{"bench-issuer"},
		Audiences:      []string{"bench-aud"},
		AllowedOrigins: []string{"http://bench.localhost"},
		// The full check each time: BenchmarkHandshakeCached measures
		// the cache.
		TokenCache: &TokenCache{Entries: &off},
	}
	switch alg.verify.(type) {
	case []byte:
		h.Secrets = []string{alg.config}
	case *rsa.PublicKey, *ecdsa.PublicKey:
		h.PublicKeys = []string{alg.config}
	}
	return provisioned(b, h)
}

func BenchmarkHandshake(b *testing.B) {
	for _, alg := range benchAlgs(b) {
		tok := sign(b, alg.method, alg.signer, benchClaims(), "")
		h := benchHandler(b, alg)

		b.Run(alg.name+"/ws_auth", func(b *testing.B) {
			benchServe(b, h, "/ws?token="+tok)
		})
		// The same token seen again, with the verified-token cache on.
		cached := benchHandler(b, alg)
		cached.tokens = newTokenCache(nil)
		b.Run(alg.name+"/ws_auth-cached", func(b *testing.B) {
			benchServe(b, cached, "/ws?token="+tok)
		})
		b.Run(alg.name+"/golang-jwt-mapclaims", func(b *testing.B) {
			p := jwt.NewParser(jwt.WithValidMethods([]string{alg.method.Alg()}), jwt.WithExpirationRequired())
			key := func(*jwt.Token) (any, error) { return alg.verify, nil }
			b.ReportAllocs()
			for b.Loop() {
				if _, err := p.ParseWithClaims(tok, jwt.MapClaims{}, key); err != nil {
					b.Fatal(err)
				}
			}
		})
		// The parser the issue proposed: golang-jwt into a typed struct, with
		// encoding/json (no exact names, duplicates, UTF-8 or crit checks).
		b.Run(alg.name+"/golang-jwt-struct", func(b *testing.B) {
			p := jwt.NewParser(jwt.WithValidMethods([]string{alg.method.Alg()}), jwt.WithExpirationRequired(),
				jwt.WithIssuer("bench-issuer"), jwt.WithAudience("bench-aud"), jwt.WithStrictDecoding())
			key := func(*jwt.Token) (any, error) { return alg.verify, nil }
			b.ReportAllocs()
			for b.Loop() {
				var c struct {
					jwt.RegisteredClaims
					Scope string `json:"scope"`
				}
				if _, err := p.ParseWithClaims(tok, &c, key); err != nil || c.Subject == "" {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkHandshakeRejectMissing is the cost of refusing a client without
// a token in status mode (the close mode's cost is the TCP writes).
func BenchmarkHandshakeRejectMissing(b *testing.B) {
	h := provisioned(b, &Handler{Secrets: []string{testSecret}, Reject: "status"})
	benchServeWant(b, h, "/ws", false)
}

func benchServe(b *testing.B, h *Handler, target string) { benchServeWant(b, h, target, true) }

func benchServeWant(b *testing.B, h *Handler, target string, wantNext bool) {
	const batch = 1024
	reqs := make([]*http.Request, 0, batch)
	called := false
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
		called = true
		return nil
	})
	w := httptest.NewRecorder()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if len(reqs) == 0 {
			b.StopTimer()
			for range batch {
				reqs = append(reqs, upgradeRequest(target))
			}
			b.StartTimer()
		}
		r := reqs[len(reqs)-1]
		reqs = reqs[:len(reqs)-1]
		called = false
		err := h.ServeHTTP(w, r, next)
		if wantNext && (err != nil || !called) {
			b.Fatalf("not accepted: %v", err)
		}
		if !wantNext && (err != nil || called || w.Code != http.StatusUnauthorized) {
			b.Fatal("not refused")
		}
	}
}

// upgradeRequest is a WebSocket upgrade as Caddy hands it to a handler:
// with a replacer and the vars map in its context.
func upgradeRequest(target string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, target, nil)
	r.Header.Set("Upgrade", "websocket")
	r.Header.Set("Connection", "Upgrade")
	r.Header.Set("Sec-WebSocket-Version", "13")
	r.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	r.Header.Set("Origin", "http://bench.localhost")
	ctx := context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer())
	ctx = context.WithValue(ctx, caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: "127.0.0.1"})
	return r.WithContext(ctx)
}

// BenchmarkPlaceholders is the cost of what the upstream is usually handed:
// the user and one claim.
func BenchmarkPlaceholders(b *testing.B) {
	tok := hs256(b, benchClaims())
	h := provisioned(b, &Handler{Secrets: []string{testSecret}})
	b.ReportAllocs()
	for b.Loop() {
		id := new(identity)
		if ref := h.verify(tok, id); ref != nil {
			b.Fatal(ref.detail)
		}
		pv := id.view()
		if v, _ := pv.placeholder("http.auth.user.id"); v != "user-42" {
			b.Fatal(v)
		}
		if v, _ := pv.placeholder("ws_auth.claims.name"); v != "User 42" {
			b.Fatal(v)
		}
	}
}

// BenchmarkHandshakeFresh is BenchmarkHandshake as Caddy runs it: every
// handshake on a goroutine of its own (net/http serves each connection on a
// new one, whose stack starts small and grows by copying), below a caller
// chain about as deep as Caddy's, each with a token of its own (distinct sub
// and jti, freshCount of them in turn, so that neither the tokens nor the
// decoder's state stay warm in the caches). The next handler goes as deep
// as reverse_proxy does after it, so that the stack grows in every
// iteration, as in Caddy, whoever first needs the room. The "floor" is the
// same goroutine, request and next handler without ws_auth: subtract it to
// get what ws_auth adds.
func BenchmarkHandshakeFresh(b *testing.B) {
	const freshCount = 1024
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
		return deepCall(proxyDepth, func() error { return nil })
	})
	b.Run("floor", func(b *testing.B) {
		benchFresh(b, []string{"/ws"}, func(w http.ResponseWriter, r *http.Request) error {
			return next.ServeHTTP(w, r)
		})
	})
	for _, alg := range benchAlgs(b) {
		h := benchHandler(b, alg)
		targets := make([]string, freshCount)
		for i := range targets {
			c := benchClaims()
			c["sub"] = "user-" + strconv.Itoa(i)
			c["jti"] = fmt.Sprintf("%08x-3b1d-4c59-9a77-0d1f4e8b2c31", i)
			targets[i] = "/ws?token=" + sign(b, alg.method, alg.signer, c, "")
		}
		b.Run(alg.name+"/ws_auth", func(b *testing.B) {
			benchFresh(b, targets, func(w http.ResponseWriter, r *http.Request) error {
				return h.ServeHTTP(w, r, next)
			})
		})
	}
}

// freshDepth is about the stack Caddy's connection goroutine has used when
// a handler runs (net/http's conn.serve, Caddy's server, routes and
// middleware wrappers).
const freshDepth = 6 << 10

// proxyDepth is about the stack reverse_proxy adds below it for an upgrade
// (its round trip and handleUpgradeResponse, where Caddy's stack grows with
// or without ws_auth in front).
const proxyDepth = 8 << 10

// benchFresh serves one request per iteration on a new goroutine, below
// freshDepth bytes of stack, the targets in turn.
func benchFresh(b *testing.B, targets []string, serve func(http.ResponseWriter, *http.Request) error) {
	const batch = 1024
	reqs := make([]*http.Request, 0, batch)
	done := make(chan error)
	w := httptest.NewRecorder()
	t := 0
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if len(reqs) == 0 {
			b.StopTimer()
			for range batch {
				reqs = append(reqs, upgradeRequest(targets[t%len(targets)]))
				t++
			}
			b.StartTimer()
		}
		r := reqs[len(reqs)-1]
		reqs = reqs[:len(reqs)-1]
		go func() { done <- deepCall(freshDepth, func() error { return serve(w, r) }) }()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
}

// deepCall calls fn below about depth bytes of stack frames.
//
//go:noinline
func deepCall(depth int, fn func() error) error {
	var pad [256]byte
	if depth <= len(pad) {
		return fn()
	}
	err := deepCall(depth-len(pad)-64, fn)
	pad[depth%len(pad)] = byte(depth) // keep pad on the stack
	if pad[0] == 1 && err == nil {
		return nil
	}
	return err
}

// BenchmarkHandshakeLimits is the decision with every limit on (handshake
// rate per IP, message rate per user, a connection cap, block_after, and a
// blocklist file of 100,000 entries), against the same handler without
// them, in the same run.
func BenchmarkHandshakeLimits(b *testing.B) {
	alg := benchAlgs(b)[0] // HS256
	tok := sign(b, alg.method, alg.signer, benchClaims(), "")
	list := filepath.Join(b.TempDir(), "blocklist.txt")
	var sb strings.Builder
	for i := range 100_000 {
		switch i % 3 {
		case 0:
			fmt.Fprintf(&sb, "jti:token-%d\n", i)
		case 1:
			fmt.Fprintf(&sb, "sub:user-%d\n", i)
		default:
			fmt.Fprintf(&sb, "ip:10.%d.%d.%d\n", i>>16&255, i>>8&255, i&255)
		}
	}
	if err := os.WriteFile(list, []byte(sb.String()), 0o600); err != nil {
		b.Fatal(err)
	}
	plain := benchHandler(b, alg)
	all := &Handler{
		TokenSources:          []TokenSource{{Source: "query"}},
		Issuers:               []string{"bench-issuer"},
		Audiences:             []string{"bench-aud"},
		AllowedOrigins:        []string{"http://bench.localhost"},
		Secrets:               []string{alg.config},
		RateLimits:            &RateLimits{Handshakes: &HandshakeRate{Events: 1_000_000_000, Window: caddy.Duration(366 * 24 * time.Hour)}, Messages: &MessageRate{Events: 1000, Window: caddy.Duration(time.Second)}},
		MaxConnectionsPerUser: 1_000_000,
		BlockAfter:            &BlockAfter{Failures: 5, Within: caddy.Duration(time.Minute), For: caddy.Duration(time.Hour)},
		BlocklistFile:         list,
	}
	all = provisioned(b, all)
	b.Cleanup(func() { _ = all.Cleanup() })
	b.Run("none", func(b *testing.B) { benchServe(b, plain, "/ws?token="+tok) })
	b.Run("all", func(b *testing.B) { benchServe(b, all, "/ws?token="+tok) })
}

// BenchmarkLimitsParallel: the limiter, the failure counter and the
// blocklist lookups of a 100,000-entry list under parallel load, each
// goroutine with keys of its own.
func BenchmarkLimitsParallel(b *testing.B) {
	bl := newMemoryBlocklist()
	for i := range 100_000 {
		_ = bl.Add(Entry{Kind: "sub", Value: fmt.Sprintf("user-%d", i)})
		_ = bl.Add(Entry{Kind: "ip", Value: fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255)})
	}
	keys := make([]string, 4096)
	for i := range keys {
		keys[i] = fmt.Sprintf("192.0.%d.%d", i>>8&255, i&255)
	}
	t0 := time.Now()
	b.Run("rate-limiter", func(b *testing.B) {
		l := newRateLimiter(1_000_000, time.Hour, false)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				l.Allow(keys[i&4095], t0)
				i++
			}
		})
	})
	b.Run("failure-counter", func(b *testing.B) {
		fc := newFailureCounter(1_000_000, time.Hour)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				fc.Add(keys[i&4095], t0)
				i++
			}
		})
	})
	b.Run("blocklist-100k", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				if bl.BlockedIP(keys[i&4095], t0) || bl.BlockedToken("jti-x", "someone", t0) {
					b.Fatal("blocked")
				}
				i++
			}
		})
	})
}

// BenchmarkHandshakeCached is BenchmarkHandshakeFresh with the token cache
// on, its 1,024 tokens each verified once before the timer starts: a
// reconnect storm of clients whose tokens the handler has seen.
func BenchmarkHandshakeCached(b *testing.B) {
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
		return deepCall(proxyDepth, func() error { return nil })
	})
	for _, alg := range benchAlgs(b) {
		h := benchHandler(b, alg)
		h.tokens = newTokenCache(nil)
		targets := make([]string, 1024)
		for i := range targets {
			c := benchClaims()
			c["sub"] = "user-" + strconv.Itoa(i)
			c["jti"] = fmt.Sprintf("%08x-3b1d-4c59-9a77-0d1f4e8b2c31", i)
			targets[i] = "/ws?token=" + sign(b, alg.method, alg.signer, c, "")
			if err := h.ServeHTTP(httptest.NewRecorder(), upgradeRequest(targets[i]), next); err != nil {
				b.Fatal(err)
			}
		}
		b.Run(alg.name, func(b *testing.B) {
			benchFresh(b, targets, func(w http.ResponseWriter, r *http.Request) error {
				return h.ServeHTTP(w, r, next)
			})
		})
	}
}
