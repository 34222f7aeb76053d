package wsauth

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// TestBadConfigRefusedBeforeSideEffects: a JSON config with a bad value is
// refused by checkConfig, at the start of Provision, before its key set
// is fetched; a valid one is fetched, so the counter would have seen it.
func TestBadConfigRefusedBeforeSideEffects(t *testing.T) {
	srv := newJWKSServer(t, standardSet(t)...)
	jwks := `"jwks":[{"url":"` + srv.URL + `"}]`

	t.Run("valid", func(t *testing.T) {
		before := srv.fetches.Load()
		if err := validateJSON(handlerConfig(`{"handler":"ws_auth",` + jwks + `}`)); err != nil {
			t.Fatal(err)
		}
		if srv.fetches.Load() == before {
			t.Fatal("a valid config did not fetch its key set; the cases below would prove nothing")
		}
	})

	tests := []struct {
		name   string
		fields string // JSON fields besides "handler"
		want   string
	}{
		{"reject", `"reject":"maybe"`, `reject: must be close or status, not "maybe"`},
		{"max_token_size", `"max_token_size":2097152`, "max_token_size: must be between 1 byte and 1MiB"},
		{"leeway", `"leeway":"2h"`, "leeway: must be at most 1h0m0s"},
		{"scopes", `"scopes":["chat read"]`, `scopes: invalid scope "chat read"`},
		{"cookie without allowed_origins", `"token_sources":[{"source":"cookie","name":"session"}]`, "token_source cookie: requires allowed_origins"},
		{"allowed_origins", `"allowed_origins":["app.example.com"]`, `allowed_origins: "app.example.com" is not an origin`},
		{"algorithms none", `"algorithms":["none"]`, "algorithms: 'none' is never accepted"},
		{"algorithms unknown", `"algorithms":["HS257"]`, `algorithms: unknown algorithm "HS257"`},
		{"close_code", `"close_codes":{"expired":1005}`, "close_code expired: 1005"},
		{"token_source header name", `"token_sources":[{"source":"header","name":"X Token"}]`, `token_source header: "X Token" is not a valid header field name`},
		{"first_message twice", `"token_sources":[{"source":"first_message"},{"source":"first_message"}]`, "token_source first_message: already specified"},
		{"first_message timeout", `"token_sources":[{"source":"first_message","timeout":"2m"}]`, "token_source first_message: timeout must be between 0 and 1m0s"},
		{"rate_limits", `"rate_limits":{"handshakes":{"events":10000,"window":"1s"}}`, "rate_limit handshakes: the window must be"},
		{"rate_limits messages", `"rate_limits":{"messages":{"events":10,"window":"1s","action":"kick"}}`, `rate_limit messages: action must be drop, close or notify, not "kick"`},
		{"revalidate", `"revalidate":"25h"`, "revalidate: must be 0 (only when the blocklist changes) or between 1s and 24h0m0s"},
		{"max_message_size", `"max_message_size":2147483648`, "max_message_size: must be between 1 byte and 1GiB"},
		{"refresh_message", `"refresh_message":"re\\fresh"`, `refresh_message: type must be 1 to 64 printable ASCII characters`},
		// The first key set is fine; the second one's timeout used to be
		// checked after the first was fetched.
		{"second jwks timeout", `"jwks":[{"url":"` + srv.URL + `"},{"url":"https://idp.example.com/jwks.json","timeout":"2m"}]`, "jwks https://idp.example.com/jwks.json timeout: must be more than 0 and at most 1m0s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			handler := `{"handler":"ws_auth",` + tt.fields + `}`
			if !strings.Contains(tt.fields, `"jwks"`) {
				handler = `{"handler":"ws_auth",` + jwks + `,` + tt.fields + `}`
			}
			before := srv.fetches.Load()
			err := validateJSON(handlerConfig(handler))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want one containing %q", err, tt.want)
			}
			if n := srv.fetches.Load() - before; n != 0 {
				t.Errorf("the key set was fetched %d times before the config was refused", n)
			}
		})
	}
}

// TestLiveConnectionRules checks the rules of the live-connection options
// at their bounds; the Caddyfile parser and checkConfig both apply them.
func TestLiveConnectionRules(t *testing.T) {
	revalidate := []struct {
		d  time.Duration
		ok bool
	}{
		{0, true}, {time.Second, true}, {24 * time.Hour, true},
		{time.Second - 1, false}, {24*time.Hour + 1, false}, {-time.Second, false},
	}
	for _, tt := range revalidate {
		if err := checkRevalidate(tt.d); (err == nil) != tt.ok {
			t.Errorf("checkRevalidate(%s) = %v, want ok %t", tt.d, err, tt.ok)
		}
	}

	maxSize := []struct {
		n  int64
		ok bool
	}{
		{0, true}, {1, true}, {1 << 30, true},
		{1<<30 + 1, false}, {-1, false}, {math.MinInt64, false},
	}
	for _, tt := range maxSize {
		if err := checkMaxMessageSize(tt.n); (err == nil) != tt.ok {
			t.Errorf("checkMaxMessageSize(%d) = %v, want ok %t", tt.n, err, tt.ok)
		}
	}

	refresh := []struct {
		typ string
		ok  bool
	}{
		{"refresh_token", true}, {"x", true}, {strings.Repeat("x", 64), true},
		{"a b", true}, {"~!#$%&'()*+,-./:;<=>?@[]^_`{|}", true},
		{"", false}, {strings.Repeat("x", 65), false}, {`a"b`, false}, {`a\b`, false},
		{"a\tb", false}, {"a\x7fb", false}, {"é", false},
	}
	for _, tt := range refresh {
		if err := checkRefreshType(tt.typ); (err == nil) != tt.ok {
			t.Errorf("checkRefreshType(%q) = %v, want ok %t", tt.typ, err, tt.ok)
		}
	}

	rates := []struct {
		mr MessageRate
		ok bool
	}{
		{MessageRate{Events: 1000000, Window: caddy.Duration(time.Second)}, true},
		{MessageRate{Events: 1, Window: caddy.Duration(366 * 24 * time.Hour), Per: "connection", Action: "notify"}, true},
		{MessageRate{Events: 10, Window: caddy.Duration(time.Second), Per: "user", Action: "close"}, true},
		{MessageRate{Events: 10, Window: caddy.Duration(time.Second), Action: "drop"}, true},
		{MessageRate{Events: 1000001, Window: caddy.Duration(time.Second)}, false},
		{MessageRate{Events: 1, Window: caddy.Duration(366*24*time.Hour + 1)}, false},
		{MessageRate{Events: 0, Window: caddy.Duration(time.Second)}, false},
		{MessageRate{Events: -1, Window: caddy.Duration(time.Second)}, false},
		{MessageRate{Events: 1, Window: 0}, false},
		{MessageRate{Events: 1, Window: caddy.Duration(time.Second), Per: "ip"}, false},
		{MessageRate{Events: 1, Window: caddy.Duration(time.Second), Action: "Drop"}, false},
	}
	for _, tt := range rates {
		if err := tt.mr.check(); (err == nil) != tt.ok {
			t.Errorf("(%+v).check() = %v, want ok %t", tt.mr, err, tt.ok)
		}
		// RateLimits.check applies it.
		rl := RateLimits{Messages: &tt.mr}
		if err := rl.check(); (err == nil) != tt.ok {
			t.Errorf("RateLimits{Messages: %+v}.check() = %v, want ok %t", tt.mr, err, tt.ok)
		}
	}
	// The handshake floor is unchanged: 1ms per event.
	if err := (&HandshakeRate{Events: 1001, Window: caddy.Duration(time.Second)}).check(); err == nil {
		t.Errorf("rate_limit handshakes 1001/1s was accepted; handshakes keep the 1ms floor")
	}
}
