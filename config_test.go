package wsauth

import (
	"strings"
	"testing"
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
