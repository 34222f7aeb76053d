package demo

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(Echo{})
}

// Limits of an echo connection.
const (
	maxEchoMessage     = 64 << 10 // bytes; a larger client message closes with 1009
	echoWriteWait      = 10 * time.Second
	lingerTimeout      = time.Second
	maxLingerRead      = 1 << 20 // bytes read and dropped while lingering
	defaultIdleTimeout = time.Minute

	// subprotocolMarker is the subprotocol a browser offers before its token
	// (see ws_auth's token_source subprotocol).
	subprotocolMarker = "access_token"
)

// Echo is a WebSocket echo server (module http.handlers.ws_demo_echo) that
// stands in for the application behind ws_auth in the demo.
//
// On connect it sends one text message showing what ws_auth passed upstream:
//
//	{"type":"welcome","user":"<X-User>","scopes":"<X-Scopes>","expires":"<X-Expires>"}
//
// taken from those request headers (set with reverse_proxy's header_up from
// {http.auth.user.id}, {ws_auth.scopes} and {ws_auth.expires}); then it sends
// back every text or binary message it receives. Messages are limited to 64
// KiB (larger closes with 1009). It pings the client every half idle
// timeout and closes a connection that stays silent longer than the idle
// timeout. It selects the subprotocol "access_token" if, and only if, the
// request still offers it. A request that is not a WebSocket upgrade gets
// 426 Upgrade Required. When the config is unloaded, live connections are
// closed with 1001.
//
// It checks no Origin and no credentials: that is the job of ws_auth in
// front of it.
type Echo struct {
	// How long a connection may go without any frame from the client,
	// pongs included, before it is closed. Pings are sent every half of it.
	// Default: 1m.
	IdleTimeout caddy.Duration `json:"idle_timeout,omitempty"`

	upgrader websocket.Upgrader
	logger   *zap.Logger
	conns    *connSet
}

// connSet is the set of an Echo's live connections, safe for concurrent use.
type connSet struct {
	mu sync.Mutex // guards m
	m  map[*websocket.Conn]struct{}
}

// CaddyModule returns the Caddy module information.
func (Echo) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.ws_demo_echo",
		New: func() caddy.Module { return new(Echo) },
	}
}

// Provision sets defaults and the upgrader.
func (e *Echo) Provision(ctx caddy.Context) error {
	e.logger = ctx.Logger()
	if e.IdleTimeout == 0 {
		e.IdleTimeout = caddy.Duration(defaultIdleTimeout)
	}
	e.upgrader = websocket.Upgrader{
		HandshakeTimeout: echoWriteWait,
		// gorilla selects one of these only if the client offered it
		Subprotocols: []string{subprotocolMarker},
		// ws_auth, in front of this handler, checks the Origin
		CheckOrigin: func(*http.Request) bool { return true },
	}
	e.conns = &connSet{m: make(map[*websocket.Conn]struct{})}
	return nil
}

// Validate checks the idle timeout.
func (e *Echo) Validate() error {
	if e.IdleTimeout < caddy.Duration(time.Second) {
		return fmt.Errorf("idle_timeout must be at least 1s, got %v", time.Duration(e.IdleTimeout))
	}
	return nil
}

// Cleanup closes the live connections with 1001 (going away).
func (e *Echo) Cleanup() error {
	if e.conns == nil {
		return nil
	}
	e.conns.mu.Lock()
	conns := make([]*websocket.Conn, 0, len(e.conns.m))
	for c := range e.conns.m {
		conns = append(conns, c)
	}
	e.conns.mu.Unlock()
	msg := websocket.FormatCloseMessage(websocket.CloseGoingAway, "server reloading")
	for _, c := range conns {
		_ = c.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
		_ = c.Close()
	}
	return nil
}

// welcomeMessage is the first message of every connection.
type welcomeMessage struct {
	Type    string `json:"type"`
	User    string `json:"user"`
	Scopes  string `json:"scopes"`
	Expires string `json:"expires"`
}

// ServeHTTP upgrades the request and echoes messages until the connection
// ends. It never calls the next handler.
func (e *Echo) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if !websocket.IsWebSocketUpgrade(r) {
		h := w.Header()
		h.Set("Upgrade", "websocket")
		h.Set("Connection", "Upgrade")
		h.Set("Content-Type", "text/plain; charset=utf-8")
		h.Set("X-Content-Type-Options", "nosniff")
		w.WriteHeader(http.StatusUpgradeRequired)
		_, err := io.WriteString(w, "426 Upgrade Required: this endpoint only speaks WebSocket\n")
		return err
	}
	welcome, err := json.Marshal(welcomeMessage{
		Type:    "welcome",
		User:    r.Header.Get("X-User"),
		Scopes:  r.Header.Get("X-Scopes"),
		Expires: r.Header.Get("X-Expires"),
	})
	if err != nil {
		return caddyhttp.Error(http.StatusInternalServerError, err)
	}

	conn, err := e.upgrader.Upgrade(hijacker{w}, r, nil)
	if err != nil {
		// the upgrader has already answered with an HTTP error
		if c := e.logger.Check(zapcore.DebugLevel, "websocket upgrade failed"); c != nil {
			c.Write(zap.Error(err))
		}
		return nil
	}
	e.conns.add(conn)
	defer e.conns.remove(conn)
	defer conn.Close()

	start := time.Now()
	user := r.Header.Get("X-User")
	if c := e.logger.Check(zapcore.DebugLevel, "echo connection opened"); c != nil {
		c.Write(zap.String("user", user), zap.String("subprotocol", conn.Subprotocol()))
	}
	err = e.echo(conn, welcome)
	linger(conn)
	if c := e.logger.Check(zapcore.DebugLevel, "echo connection closed"); c != nil {
		c.Write(zap.String("user", user), zap.Duration("duration", time.Since(start)), zap.Error(err))
	}
	return nil
}

// echo sends the welcome message, then echoes messages until reading or
// writing fails; it returns that error.
func (e *Echo) echo(conn *websocket.Conn, welcome []byte) error {
	idle := time.Duration(e.IdleTimeout)
	conn.SetReadLimit(maxEchoMessage)
	if err := conn.SetReadDeadline(time.Now().Add(idle)); err != nil {
		return err
	}
	conn.SetPongHandler(func(string) error {
		return conn.SetReadDeadline(time.Now().Add(idle))
	})

	done := make(chan struct{})
	defer close(done)
	go pingLoop(conn, idle/2, done)

	if err := writeMessage(conn, websocket.TextMessage, welcome); err != nil {
		return err
	}
	for {
		typ, msg, err := conn.ReadMessage()
		if err != nil {
			return err
		}
		if err := conn.SetReadDeadline(time.Now().Add(idle)); err != nil {
			return err
		}
		if err := writeMessage(conn, typ, msg); err != nil {
			return err
		}
	}
}

// hijacker lets gorilla's Upgrader, which asserts http.Hijacker, hijack
// through Caddy's response writer wrappers, which offer the connection through
// Unwrap (http.ResponseController) instead.
type hijacker struct{ http.ResponseWriter }

// Hijack hijacks the connection of the innermost response writer.
func (h hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return http.NewResponseController(h.ResponseWriter).Hijack()
}

// linger closes the connection gracefully once the echo loop has ended,
// whichever side sent the close frame: it half-closes the TCP connection (the
// server closes first, as RFC 6455 wants) and reads until the client closes
// its side, dropping what it reads. Without it, client input still unread
// when the socket closes, such as the rest of a message over the read limit,
// would make the kernel send a TCP reset that can discard the close frame, so
// the client would see 1006 rather than 1009.
func linger(conn *websocket.Conn) {
	nc := conn.NetConn()
	cw, ok := nc.(interface{ CloseWrite() error })
	if !ok {
		return
	}
	if err := cw.CloseWrite(); err != nil {
		return
	}
	if err := nc.SetReadDeadline(time.Now().Add(lingerTimeout)); err != nil {
		return
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(nc, maxLingerRead))
}

// writeMessage writes one data message within echoWriteWait.
func writeMessage(conn *websocket.Conn, typ int, msg []byte) error {
	if err := conn.SetWriteDeadline(time.Now().Add(echoWriteWait)); err != nil {
		return err
	}
	return conn.WriteMessage(typ, msg)
}

// pingLoop pings conn every interval until done is closed or a ping fails.
// WriteControl may run concurrently with the echo loop's writes.
func pingLoop(conn *websocket.Conn, interval time.Duration, done <-chan struct{}) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			if err := conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(echoWriteWait)); err != nil {
				return
			}
		}
	}
}

func (s *connSet) add(c *websocket.Conn) {
	s.mu.Lock()
	s.m[c] = struct{}{}
	s.mu.Unlock()
}

func (s *connSet) remove(c *websocket.Conn) {
	s.mu.Lock()
	delete(s.m, c)
	s.mu.Unlock()
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Echo)(nil)
	_ caddy.Validator             = (*Echo)(nil)
	_ caddy.CleanerUpper          = (*Echo)(nil)
	_ caddyhttp.MiddlewareHandler = (*Echo)(nil)
	_ caddyfile.Unmarshaler       = (*Echo)(nil)
)
