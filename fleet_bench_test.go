package wsauth

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Benchmarks of the fleet: the handshake decision with the Redis store
// against the local one, in the same run, with the Redis round trips each
// handshake makes; and the time from a revocation through one instance's
// admin API to the close of the user's connection on the other. Run with:
//
//	go test -run '^$' -bench 'Store|FleetRevocation' -benchmem

// roundTrips counts what a go-redis client sends: a command or a pipeline
// is one round trip; the slot given back at a connection's close
// (giveScript) is counted apart.
type roundTrips struct{ n, closes atomic.Int64 }

func (rt *roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }
func (rt *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if args := cmd.Args(); len(args) > 1 && args[1] == giveScript.Hash() {
			rt.closes.Add(1)
		} else {
			rt.n.Add(1)
		}
		return next(ctx, cmd)
	}
}
func (rt *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		rt.n.Add(1)
		return next(ctx, cmds)
	}
}

// benchRedis is a redis-server as production runs it: the harness's
// server fsyncs every write, for its restart tests; this one, as Redis
// does by default with an append-only file, once a second.
func benchRedis(b *testing.B) *redisServer {
	requireRedis(b)
	return launchRedis(b, freePort(b), b.TempDir(), "--appendfsync", "everysec")
}

// BenchmarkHandshakeStore decides handshakes of 1,024 distinct users, each
// on a fresh goroutine (benchFresh), with the limits a fleet shares, counted
// locally and in a real redis-server on loopback. The next handler returns
// at once, so a connection slot is taken and given back per handshake:
// round-trips/op are the handshake's, at-close/op the close's.
func BenchmarkHandshakeStore(b *testing.B) {
	r := benchRedis(b)
	alg := benchAlgs(b)[0] // HS256
	targets := make([]string, 1024)
	for i := range targets {
		c := benchClaims()
		c["sub"] = "user-" + strconv.Itoa(i)
		targets[i] = "/ws?token=" + sign(b, alg.method, alg.signer, c, "")
	}
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
	year := caddy.Duration(366 * 24 * time.Hour)
	configs := []struct {
		name string
		set  func(h *Handler)
	}{
		{"rate_per_ip", func(h *Handler) {
			h.RateLimits = &RateLimits{Handshakes: &HandshakeRate{Events: 1_000_000_000, Window: year}}
		}},
		{"rate_per_user", func(h *Handler) {
			h.RateLimits = &RateLimits{Handshakes: &HandshakeRate{Events: 1_000_000_000, Window: year, Per: "user"}}
		}},
		{"cap", func(h *Handler) { h.MaxConnectionsPerUser = 1_000_000 }},
		{"rate_per_ip+cap", func(h *Handler) {
			h.RateLimits = &RateLimits{Handshakes: &HandshakeRate{Events: 1_000_000_000, Window: year}}
			h.MaxConnectionsPerUser = 1_000_000
		}},
		{"rate_per_user+cap", func(h *Handler) {
			h.RateLimits = &RateLimits{Handshakes: &HandshakeRate{Events: 1_000_000_000, Window: year, Per: "user"}}
			h.MaxConnectionsPerUser = 1_000_000
		}},
	}
	for _, cfg := range configs {
		for _, store := range []string{"local", "redis"} {
			b.Run(cfg.name+"/"+store, func(b *testing.B) {
				h := &Handler{
					TokenSources:   []TokenSource{{Source: "query"}},
					Issuers:        []string{"bench-issuer"},
					Audiences:      []string{"bench-aud"},
					AllowedOrigins: []string{"http://bench.localhost"},
					Secrets:        []string{alg.config},
				}
				cfg.set(h)
				if store == "redis" {
					h.StoreRaw, _ = json.Marshal(map[string]string{"module": "redis", "url": "redis://" + r.Addr, "key_prefix": "bench:" + cfg.name + ":"})
				}
				h = provisioned(b, h)
				b.Cleanup(func() { _ = h.Cleanup() })
				var rt roundTrips
				if store == "redis" {
					h.store.(*RedisStore).shared.client.AddHook(&rt)
				}
				benchFresh(b, targets, func(w http.ResponseWriter, r *http.Request) error {
					return h.ServeHTTP(w, r, next)
				})
				b.ReportMetric(float64(rt.n.Load())/float64(b.N), "round-trips/op")
				b.ReportMetric(float64(rt.closes.Load())/float64(b.N), "at-close/op")
			})
		}
	}
}

// BenchmarkFleetRevocation is the time from an admin API POST on one
// instance (a child process) to the Close frame on a connection of the
// banned user held by the other instance (this process), through a real
// redis-server.
func BenchmarkFleetRevocation(b *testing.B) {
	r := benchRedis(b)
	up := newLiveUpstream(b).addr()
	url := "redis://" + r.Addr
	st := site("redis " + url + " bench:revocation:")
	a := startCaddy(b, st, up)
	b.Cleanup(func() {
		for _, e := range runtimeBlocklist.entries(time.Now()) {
			_, _ = runtimeBlocklist.Remove(e.Kind, e.Value)
		}
	})
	bAddr := fmt.Sprintf("127.0.0.1:%d", freePort(b))
	admin := fmt.Sprintf("127.0.0.1:%d", freePort(b))
	child := startCaddyProcess(b, strings.Replace(testConfig(bAddr, st, up), "admin off", "admin "+admin, 1))
	client := &http.Client{Timeout: 5 * time.Second}
	post := func(method, body string, want int) {
		req, _ := http.NewRequest(method, "http://"+admin+"/ws_auth/blocklist", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			b.Fatalf("%s: status %d, want %d", method, resp.StatusCode, want)
		}
	}
	tok := hs256(b, claims("alice"))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		var conn *websocket.Conn
		for deadline := time.Now().Add(5 * time.Second); ; {
			c, _, err := websocket.DefaultDialer.Dial(liveURL(a, "/ws", tok), nil)
			if err == nil {
				conn = c
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("dialing a: %v", err)
			}
			time.Sleep(time.Millisecond) // the removal is on its way
		}
		b.StartTimer()
		post(http.MethodPost, `{"kind":"sub","value":"alice"}`, http.StatusCreated)
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _, err := conn.ReadMessage()
		b.StopTimer()
		if !websocket.IsCloseError(err, 1008) {
			b.Fatalf("alice on a: %v, want close 1008; b's log:\n%s", err, child.Logs())
		}
		conn.Close()
		post(http.MethodDelete, `{"kind":"sub","value":"alice"}`, http.StatusOK)
		b.StartTimer()
	}
}
