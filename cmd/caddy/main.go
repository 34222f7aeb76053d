// Command caddy is Caddy with the ws_auth plugin and its demo modules, for
// `go run ./cmd/caddy run --config example.Caddyfile` and for
// `go build ./cmd/caddy`. Users usually build with xcaddy instead:
// `xcaddy build --with github.com/wsauth/caddy-wsauth`.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	// Caddy's standard modules, as in the official build.
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	// The plugin, and the demo modules used by example.Caddyfile.
	_ "github.com/wsauth/caddy-wsauth"
	_ "github.com/wsauth/caddy-wsauth/demo"
)

func main() {
	caddycmd.Main()
}
