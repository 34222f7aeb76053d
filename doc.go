// Package wsauth is the ws_auth handler for Caddy: it authenticates
// WebSocket handshakes with a JWT (from the request or a first message),
// or an opaque credential judged by an endpoint, before the next
// handler, usually reverse_proxy, dials the upstream; refuses clients with
// close codes a browser can read; and hands the claims on as placeholders.
//
// One request is decided in ServeHTTP and decide (wsauth.go), in this order:
//
//	checkHandshake          a WebSocket no server may accept: 400/426 (stream.go)
//	checkClient             origin, client IP on the Blocklist, rate per IP (wsauth.go)
//	extract                 the token from the first source that has one (token.go)
//	serveFirstMessage       or: answer the handshake, read the token from the stream (firstmsg.go)
//	checkToken              verify (signature, claims, user; or, for an opaque
//	                        credential, the answer of introspect or session_check,
//	                        opaque.go), authorize (blocklist, scopes), admit (rate
//	                        per user) (verify.go)
//	accepted / strip        placeholders set, token removed, next handler runs
//
// Every check returns a *refusal; h.refuse (reject.go) is the one way a
// request is refused: it logs (log.go), marks Caddy's access log, and
// answers with a status, or with a Close frame on a clientStream
// (stream.go): the module's own side of a WebSocket, over HTTP/1.1, HTTP/2
// and HTTP/3 alike.
//
// Configuration: the Handler fields (module.go) are checked once by
// checkConfig (config.go) before anything is fetched or started, from JSON
// and from the Caddyfile (caddyfile.go, which adds the line). Keys are in
// keys.go and jwks.go, origins in origin.go, frames in frame.go. The state a
// decision consults is behind small interfaces (state.go): Blocklist (the
// blocklist file, blocklist.go, and the in-memory list of entries added at
// run time), Limiter (the GCRA limiter, ratelimit.go), ConnectionSlots and
// FailureCounter (limits.go), for a store shared by a fleet to implement. The lists, the limiters and remote key
// sets belong to the process, kept across config reloads.
//
// After the upstream switched protocols, the connection is watched from
// inside reverse_proxy's copy loops (watch.go): expiry, revocation, message
// rate and size, in-band refresh. Over HTTP/1.1 the watched connection runs
// the loops itself (relay.go), so that an idle one holds no relay buffer
// (readable_linux.go waits for the client's bytes without one); the
// process's registry of live
// connections (live.go) expires them on one timer, closes them on a
// blocklist change, and caps them per user (limits.go, with block_after's
// bans). Operators reach that state through the admin API module
// admin.api.ws_auth (admin.go), the caddy_ws_auth_* metrics (metrics.go)
// and the `caddy ws-auth` command (command.go). Live connections of an
// opaque credential are asked about again with revalidate (recheck.go).
package wsauth
