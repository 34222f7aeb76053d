// Package demo holds the Caddy modules that make up the caddy-wsauth demo: a
// browser page (ws_demo_page), a token-minting login endpoint (ws_demo_login)
// and a WebSocket echo server (ws_demo_echo) that stands in for the
// application behind ws_auth. Together with the ws_auth plugin and Caddy's
// standard modules they let
//
//	go run ./cmd/caddy run --config example.Caddyfile
//
// start a complete, protected demo on http://localhost:8080 (or on the port
// in the DEMO_PORT environment variable) with no other process.
//
// DEMO ONLY: ws_demo_login signs a token for anyone who asks, for any user
// and any scope. It exists to try ws_auth out; real tokens come from an
// identity provider. Never expose it in production.
//
// Link the package into a Caddy binary with a blank import next to the
// plugin:
//
//	import _ "github.com/wsauth/caddy-wsauth/demo"
//
// The plugin package itself never imports this package.
package demo
