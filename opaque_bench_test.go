package wsauth

import (
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// BenchmarkOpaque: the decision for an opaque credential whose answer is
// cached, next to BenchmarkHandshake's JWT decisions (run both:
// go test -run '^$' -bench 'Opaque|Handshake/HS256' -benchmem); and with a
// cold cache, what a call to the endpoint (a local test server) adds,
// with calls/op counting the calls made.
func BenchmarkOpaque(b *testing.B) {
	b.Setenv("WSAUTH_TEST_INTROSPECT_SECRET", introspectSecret)
	idp := newIntrospectionServer(b)
	exp := time.Now().Add(time.Hour).Unix()
	claims := map[string]any{"sub": "user-42", "scope": "chat:read chat:write", "exp": exp,
		"iss": "bench-issuer", "aud": "bench-aud", "client_id": "web", "jti": "5f0c2a6e"}
	idp.set("opaque-token-42", claims)
	newHandler := func() *Handler {
		return provisioned(b, &Handler{
			TokenSources:   []TokenSource{{Source: "query"}},
			Issuers:        []string{"bench-issuer"},
			Audiences:      []string{"bench-aud"},
			AllowedOrigins: []string{"http://bench.localhost"},
			Introspect: &Introspection{URL: idp.URL + "/introspect", ClientID: introspectClient,
				ClientSecret: "{env.WSAUTH_TEST_INTROSPECT_SECRET}"},
		})
	}
	b.Run("cached", func(b *testing.B) {
		h := newHandler()
		benchServe(b, h, "/ws?token=opaque-token-42")
	})
	// As production sees it (BenchmarkHandshakeCached's way): 1,024
	// distinct credentials, each answered once before the timer, a fresh
	// goroutine per handshake below Caddy's stack.
	b.Run("cached-fresh", func(b *testing.B) {
		h := newHandler()
		next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
			return deepCall(proxyDepth, func() error { return nil })
		})
		targets := make([]string, 1024)
		for i := range targets {
			tok := fmt.Sprintf("opaque-fresh-%d", i)
			c := maps.Clone(claims)
			c["sub"], c["jti"] = fmt.Sprintf("user-%d", i), fmt.Sprintf("%08x", i)
			idp.set(tok, c)
			targets[i] = "/ws?token=" + tok
			if err := h.ServeHTTP(httptest.NewRecorder(), upgradeRequest(targets[i]), next); err != nil {
				b.Fatal(err)
			}
		}
		before := idp.total.Load()
		benchFresh(b, targets, func(w http.ResponseWriter, r *http.Request) error {
			return h.ServeHTTP(w, r, next)
		})
		b.ReportMetric(float64(idp.total.Load()-before)/float64(b.N), "calls/op")
	})
	b.Run("cold", func(b *testing.B) {
		h := newHandler()
		next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
		toks := make([]string, b.N)
		for i := range toks {
			toks[i] = fmt.Sprintf("opaque-cold-%d", i)
			idp.set(toks[i], claims)
		}
		before := idp.total.Load()
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			r := upgradeRequest("/ws?token=" + toks[i])
			if err := h.ServeHTTP(httptest.NewRecorder(), r, next); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(idp.total.Load()-before)/float64(b.N), "calls/op")
	})
	// 100 handshakes at once with one new credential: one call.
	b.Run("cold-100-concurrent", func(b *testing.B) {
		h := newHandler()
		next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
		before := idp.total.Load()
		for i := range b.N {
			tok := fmt.Sprintf("opaque-crowd-%d", i)
			idp.set(tok, claims)
			var wg sync.WaitGroup
			for range 100 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_ = h.ServeHTTP(httptest.NewRecorder(), upgradeRequest("/ws?token="+tok), next)
				}()
			}
			wg.Wait()
		}
		b.ReportMetric(float64(idp.total.Load()-before)/float64(b.N), "calls/op")
	})
}
