package wsauth

import (
	"bytes"
	"container/heap"
	"context"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Live connections: after the upstream switched protocols, the module
// keeps enforcing the rules on the connection (expiry, revocation, message
// rate and size, in-band refresh), from inside reverse_proxy's copy loops
// (watch.go), with timers rather than goroutines.

const (
	// Close codes of the rules on live connections.
	closeTooBig      = 1009 // max_message_size (RFC 6455, section 7.4.1)
	closeRateLimited = 1008 // rate_limit messages ... close
	// closeProtocolError fails a connection whose client broke the
	// framing (RFC 6455, section 7.4.1).
	closeProtocolError = 1002
)

// Connection states.
const (
	stateOpen int32 = iota
	stateClosing
	stateEnded
)

// A liveConn is one accepted WebSocket: who it is, the rules it runs
// under (those of the handler that accepted it, also after a reload), and
// the watch of its frames. It is most of what ws_auth keeps per idle
// connection, so its fields are laid out to fit the heap's 512-byte size
// class (TestLiveConnSize): the next class is 576 bytes.
type liveConn struct {
	h      *Handler
	id     uint64
	since  int64 // when the upstream switched protocols (unix ns)
	ip     string
	origin string
	path   string
	iss    string
	user   string
	slots  ConnectionSlots // where the user's connection slot was taken; nil: none
	state  atomic.Int32
	source sourceKind
	// refreshed: a refresh message (or a recheck) replaced jti or
	// expires; guarded by mu.
	refreshed bool

	// The two ends, set before start and read-only after it. Over HTTP/1.1
	// (and first_message over any version) reverse_proxy copies through
	// the hijacked conn; over HTTP/2 and HTTP/3 (stream) it reads the
	// request body and writes the ResponseWriter.
	stream  bool
	started bool
	conn    net.Conn
	body    io.ReadCloser
	src     io.Reader // where client bytes are read
	dst     io.Writer // where client bytes are written

	mu      sync.Mutex // guards jti, expires, closer, refreshed and claims
	jti     string
	expires time.Time
	closer  *time.Timer // the close sequence's next step
	claims  *lazyClaims // the handshake token's, once a placeholder needs them

	// Where the connection is in the registry's expiries, and when it
	// expires there (unix ns); guarded by the registry's lock.
	expireAt int64
	heapIdx  int32

	// interrupted: the module ended a pending read of the client's
	// (interruptRead). Beside heapIdx, it takes what would be padding.
	interrupted atomic.Bool

	in inbound // the reading goroutine's

	wmu         sync.Mutex // guards out, pending, closeQueued, sentClose, done, and writes to dst
	done        bool       // ended: the client's writer may be gone with the handler
	closeQueued bool
	sentClose   bool
	// fromIdx is the handler's token source that yielded the credential
	// (noSource: first_message), for an opaque refresh token to be sent
	// the same way; read-only. Here it takes what would be padding.
	fromIdx  uint8
	shutting atomic.Bool // shut has begun (once)
	out      outbound
	pending  []byte // frames for the client, waiting for a frame boundary

	// The message rate per connection (GCRA), when the next notify may
	// go, and when the next refresh message may come (unix ns); the
	// reading goroutine's.
	msgTAT      int64
	notifyNext  int64
	refreshNext int64
	msgKey      string // the user's key in a message limit per user

	// cred is the opaque credential that authenticated the connection,
	// which revalidate asks its endpoint about again; nil for a JWT.
	// Guarded by mu once the connection started (a refresh replaces it).
	cred *heldCredential

	writer liveWriter
}

// newLive prepares the watch of an accepted WebSocket; it starts when the
// upstream switches protocols, and ends with end. It returns the
// ResponseWriter to hand on.
// r is the request as it goes on.
func (h *Handler) newLive(hs *handshake, w http.ResponseWriter, r *http.Request) (*liveConn, http.ResponseWriter) {
	c := &liveConn{
		h:       h,
		ip:      clientIP(r),
		origin:  r.Header.Get("Origin"),
		path:    r.URL.Path,
		source:  hs.id.source,
		fromIdx: noSource,
		iss:     hs.id.claims.Issuer.s,
		user:    hs.id.user,
		jti:     hs.id.claims.ID.s,
	}
	c.expires = hs.id.expires()
	for i := range h.sources {
		if &h.sources[i] == hs.id.from && i < noSource {
			c.fromIdx = uint8(i)
		}
	}
	if h.opaque != nil && h.Revalidate > 0 {
		c.cred = h.hold(hs.token, hs.id.from)
	}
	c.writer = liveWriter{ResponseWriter: w, lc: c, switched: int16(switchedStatus(r))}
	if isExtendedConnect(r) {
		c.stream = true
		c.src, c.body = r.Body, r.Body
		r.Body = (*watchedBody)(c)
	}
	return c, &c.writer
}

// start begins the watch, once the upstream switched protocols.
func (c *liveConn) start() {
	c.started = true
	c.since = time.Now().UnixNano()
	liveConns.add(c)
	// The blocklist may have changed since the handshake was decided
	// (while the upstream answered, or while the 101 went out, which the
	// hijack sends before the registry knows the connection): a change
	// from then on finds the connection in the registry, and one made
	// before is seen here.
	if c.blocked(now()) {
		c.shut(c.h.codes[reasonBlocked], "revoked")
	}
}

// end is called when reverse_proxy is done with the connection (or never
// took it): the timers stop, and the registry forgets it.
func (c *liveConn) end() {
	c.state.Store(stateEnded)
	// An injection under way finishes first; none starts after.
	c.wmu.Lock()
	c.done = true
	c.wmu.Unlock()
	c.mu.Lock()
	if c.closer != nil {
		c.closer.Stop()
	}
	c.mu.Unlock()
	if c.started {
		liveConns.remove(c)
	}
	if c.slots != nil {
		c.slots.Give(c.iss, c.user)
		c.slots = nil
	}
}

func (c *liveConn) closing() bool { return c.state.Load() != stateOpen }

// deadline is when the connection expires: exp plus the leeway. c.mu must
// be held, or the connection not started.
// The zero time: none (an opaque credential without exp).
func (c *liveConn) deadline() time.Time {
	if c.expires.IsZero() {
		return time.Time{}
	}
	return c.expires.Add(time.Duration(c.h.Leeway))
}

func (c *liveConn) expire() { c.shut(c.h.codes[reasonExpired], "expired") }

// shut closes the connection for a rule: a Close frame with code and text
// goes to the client at a frame boundary, and a Close 1001 to the
// upstream at a boundary of the client's frames (when the client answers,
// or after closeWait at the latest); after one more closeWait both are
// closed whatever happened. Only the first call counts.
func (c *liveConn) shut(code uint16, text string) {
	if c.state.Load() != stateOpen || !c.shutting.CompareAndSwap(false, true) {
		return
	}
	wsMetrics.closedWith(text)
	c.h.logLiveClose(c, text)
	c.mu.Lock()
	c.closer = time.AfterFunc(closeWait, c.stopReading)
	c.mu.Unlock()
	if c.conn != nil {
		// A client that reads nothing must not hold the close up.
		_ = c.conn.SetWriteDeadline(time.Now().Add(2 * closeWait))
	}
	var buf [4 + maxCloseReason]byte
	c.inject(appendCloseFrame(buf[:0], code, text), true) // and marks it closing
	c.state.CompareAndSwap(stateOpen, stateClosing)       // in case inject had nothing to do
}

// stopReading is the close sequence's second step: the client did not
// answer the Close within closeWait, so its pending read is ended.
func (c *liveConn) stopReading() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state.Load() == stateEnded {
		return
	}
	c.interruptRead()
	c.closer = time.AfterFunc(closeWait, c.hardClose)
}

// allowMessage counts a client message against rate_limit messages, and
// applies the limit's action to one over it.
func (c *liveConn) allowMessage() bool {
	mr := c.h.msgRate
	if mr == nil {
		return true
	}
	t := now().UnixNano()
	var ok bool
	var wait time.Duration
	if mr.perUser {
		if c.msgKey == "" {
			c.msgKey = userKey(c.iss, c.user) // once, not a string a message
		}
		ok, wait = c.h.msgUserLimit.Allow(c.msgKey, time.Unix(0, t))
	} else {
		ok, wait = c.allowLocal(t, mr)
	}
	if ok {
		return true
	}
	c.h.violation(c, "rate_limited")
	wsMetrics.droppedBy(mr.action)
	switch mr.action {
	case "close":
		c.shut(closeRateLimited, "rate_limited")
	case "notify":
		if t >= c.notifyNext {
			c.notifyNext = t + mr.window
			c.notifyRateLimited(wait)
		}
	}
	return false
}

// allowLocal is the GCRA of a limit per connection.
func (c *liveConn) allowLocal(t int64, mr *messageRate) (bool, time.Duration) {
	tat := max(c.msgTAT, t)
	next := tat + mr.interval
	if next-t > mr.window {
		return false, time.Duration(next - mr.window - t)
	}
	c.msgTAT = next
	return true, 0
}

// notifyRateLimited tells the client that a message was dropped.
func (c *liveConn) notifyRateLimited(wait time.Duration) {
	var msg [96]byte
	b := append(msg[:0], `{"type":"error","reason":"rate_limited","retry_after":`...)
	b = append(b, retryAfter(wait)...)
	b = append(b, '}')
	var frame [128]byte
	c.inject(appendTextFrame(frame[:0], b), false)
}

var errOtherUser = errors.New("refresh token for another user")

// minRefreshInterval is the floor between two refresh messages of a
// connection, whatever rate_limit messages says. Each refresh costs a
// signature check (about 40 µs with RS256, 70 µs with ES256) or, with
// introspect or session_check, maybe a request to the identity provider,
// while a client that means well refreshes once per token lifetime
// (minutes): so once a second is far above any honest cadence, and keeps
// what a connection's refreshes cost to about what one or two ordinary
// messages a second cost Caddy to relay. A refresh message sooner than
// that after the one before closes the connection as rate_limit messages
// close does (1008 "rate_limited"), rather than being dropped: the client
// waits for refresh_token_ok or a Close, and would wait in vain for a
// dropped one (its connection expiring at the old exp instead); a client
// that refreshes in a loop is broken or hostile, and the close shows it
// (log, closed_total, block_after) and sends it back to a handshake, which
// rate_limit handshakes governs, where a drop would let it go on.
const minRefreshInterval = time.Second

// takeRefresh handles a client text frame that may be a refresh message:
// if it is one, the module takes it (it is not forwarded) and answers;
// otherwise payload is left as it was.
func (c *liveConn) takeRefresh(fh *frameHeader, payload []byte) bool {
	unmask(payload, fh.mask, 0)
	typ, token, err := tokenMessage(payload, c.refreshQuoted())
	if err != nil || string(typ) != c.h.refresh {
		unmask(payload, fh.mask, 0)
		return false
	}
	if c.allowRefresh() {
		c.refreshWith(string(token))
	}
	return true
}

// allowRefresh applies the rates to a refresh message before its token is
// checked: the floor between refreshes (minRefreshInterval), then
// rate_limit messages, which counts it as a client message, with its
// action over the rate (drop and notify drop the refresh unanswered but
// for notify's notice, close closes). A refresh message over either is
// not checked.
func (c *liveConn) allowRefresh() bool {
	t := now().UnixNano()
	if t < c.refreshNext {
		c.h.violation(c, "rate_limited")
		c.shut(closeRateLimited, "rate_limited")
		return false
	}
	c.refreshNext = t + int64(minRefreshInterval)
	return c.allowMessage()
}

func (c *liveConn) refreshQuoted() []byte { return c.h.refreshQuoted }

// refreshWith checks a refresh token as a handshake's (verify, authorize;
// no handshake limit is charged: allowRefresh has counted it as a
// message) and requires the same user: then the connection expires with
// the new token, and the client gets the new exp.
func (c *liveConn) refreshWith(token string) {
	var id identity
	id.from = c.credentialSource()
	ref := c.h.verify(token, &id)
	if ref == nil {
		ref = c.h.authorize(&id)
	}
	if ref == nil && (id.user != c.user || id.claims.Issuer.s != c.iss) {
		ref = &refusal{reason: reasonInvalid, detail: errOtherUser}
	}
	if ref != nil {
		c.h.logLiveRefused(c, "refresh token refused", ref)
		c.shut(c.h.codes[ref.reason], ref.reason.String())
		return
	}
	exp := id.expires()
	c.mu.Lock()
	c.expires, c.jti, c.refreshed = exp, id.claims.ID.s, true
	if c.cred != nil {
		c.cred = c.h.hold(token, id.from)
	}
	deadline := c.deadline()
	c.mu.Unlock()
	liveConns.reschedule(c, deadline)
	var msg [128]byte
	b := append(msg[:0], `{"type":"`...)
	b = append(b, c.h.refresh...)
	b = append(b, `_ok","exp":`...)
	if exp.IsZero() {
		b = append(b, "null"...) // an opaque credential without exp
	} else {
		b = strconv.AppendInt(b, exp.Unix(), 10)
	}
	b = append(b, '}')
	var frame [160]byte
	c.inject(appendTextFrame(frame[:0], b), false)
}

// credentialSource is the source of the connection's credential, as an
// opaque one is sent on to be judged (a session cookie's refresh as that
// cookie); nil for first_message, sent as a bearer token, and for JWTs,
// which are judged here.
func (c *liveConn) credentialSource() *tokenSource {
	if c.h.opaque == nil || c.fromIdx == noSource {
		return nil
	}
	return &c.h.sources[c.fromIdx]
}

// noSource is liveConn.fromIdx of a credential that no source of the
// handler's list yielded (first_message's).
const noSource = 255

// blocked reports whether the connection's token, user or IP is on its
// handler's blocklist now.
func (c *liveConn) blocked(t time.Time) bool {
	c.mu.Lock()
	jti := c.jti
	c.mu.Unlock()
	bl := c.h.blocklist
	return bl.BlockedToken(jti, c.user, t) || bl.BlockedIP(c.ip, t)
}

// A registry holds the live connections of the process, across config
// reloads: revocation, and soon the admin API, the connection caps and the
// metrics, find them here. It also expires them: one timer for the
// process, set to the earliest deadline of a heap, rather than one timer
// per connection.
type registry struct {
	mu       sync.RWMutex
	conns    map[*liveConn]struct{}
	rechecks map[*liveConn]struct{} // those whose credential revalidate asks about
	sweeping bool                   // the rechecks' goroutine runs
	next     atomic.Uint64
	expiries expiryHeap  // the connections with expire_connections on
	timer    *time.Timer // fires at timerAt, the earliest expiry
	timerAt  int64
}

var liveConns = &registry{conns: make(map[*liveConn]struct{}), rechecks: make(map[*liveConn]struct{})}

func (reg *registry) add(c *liveConn) {
	c.id = reg.next.Add(1)
	c.heapIdx = -1
	reg.mu.Lock()
	defer reg.mu.Unlock()
	reg.conns[c] = struct{}{}
	if c.h.expire && !c.expires.IsZero() {
		c.expireAt = expiryNanos(c.deadline())
		heap.Push(&reg.expiries, c)
		reg.arm()
	}
	if c.cred != nil {
		reg.addRecheck(c)
	}
}

func (reg *registry) remove(c *liveConn) {
	reg.mu.Lock()
	defer reg.mu.Unlock()
	delete(reg.conns, c)
	delete(reg.rechecks, c)
	if c.heapIdx >= 0 {
		heap.Remove(&reg.expiries, int(c.heapIdx))
	}
}

// reschedule moves c's expiry to deadline (a refresh, or an opaque
// credential's new answer); a zero deadline is none.
func (reg *registry) reschedule(c *liveConn, deadline time.Time) {
	reg.mu.Lock()
	defer reg.mu.Unlock()
	if _, live := reg.conns[c]; !live || !c.h.expire {
		return
	}
	switch {
	case deadline.IsZero():
		if c.heapIdx >= 0 {
			heap.Remove(&reg.expiries, int(c.heapIdx))
		}
		return
	case c.heapIdx >= 0:
		c.expireAt = expiryNanos(deadline)
		heap.Fix(&reg.expiries, int(c.heapIdx))
	default:
		c.expireAt = expiryNanos(deadline)
		heap.Push(&reg.expiries, c)
	}
	reg.arm()
}

// arm sets the timer to the earliest expiry; reg.mu must be held.
func (reg *registry) arm() {
	if len(reg.expiries) == 0 {
		return
	}
	at := reg.expiries[0].expireAt
	if reg.timerAt != 0 && reg.timerAt <= at {
		return // it fires earlier, and arms again then
	}
	reg.timerAt = at
	d := time.Until(time.Unix(0, at))
	if reg.timer == nil {
		reg.timer = time.AfterFunc(d, reg.fire)
	} else {
		reg.timer.Reset(d)
	}
}

// fire closes the connections whose deadline has passed.
func (reg *registry) fire() {
	var due []*liveConn
	reg.mu.Lock()
	t := time.Now().UnixNano()
	for len(reg.expiries) > 0 && reg.expiries[0].expireAt <= t {
		due = append(due, heap.Pop(&reg.expiries).(*liveConn))
	}
	reg.timerAt = 0
	reg.arm()
	reg.mu.Unlock()
	for _, c := range due {
		c.expire()
	}
}

// expiryNanos is t in unix nanoseconds for the expiry heap, which holds a
// date past 2262 (a token may expire as late as 9999) as the latest it
// can: UnixNano would wrap it into the past.
func expiryNanos(t time.Time) int64 {
	if t.After(maxExpiry) {
		return math.MaxInt64
	}
	return t.UnixNano()
}

// maxExpiry is the latest time UnixNano holds.
var maxExpiry = time.Unix(0, math.MaxInt64)

// expiryHeap orders connections by expireAt (container/heap).
type expiryHeap []*liveConn

func (e expiryHeap) Len() int           { return len(e) }
func (e expiryHeap) Less(i, j int) bool { return e[i].expireAt < e[j].expireAt }
func (e expiryHeap) Swap(i, j int) {
	e[i], e[j] = e[j], e[i]
	e[i].heapIdx, e[j].heapIdx = int32(i), int32(j)
}

func (e *expiryHeap) Push(x any) {
	c := x.(*liveConn)
	c.heapIdx = int32(len(*e))
	*e = append(*e, c)
}

func (e *expiryHeap) Pop() any {
	old := *e
	c := old[len(old)-1]
	old[len(old)-1] = nil
	*e = old[:len(old)-1]
	c.heapIdx = -1
	return c
}

func (reg *registry) count() int {
	reg.mu.RLock()
	defer reg.mu.RUnlock()
	return len(reg.conns)
}

// closeWhere closes every live connection that match accepts, with code
// and text, and returns how many it closed.
func (reg *registry) closeWhere(match func(*liveConn) bool, code uint16, text string) int {
	reg.mu.RLock()
	var hit []*liveConn
	for c := range reg.conns {
		if match(c) {
			hit = append(hit, c)
		}
	}
	reg.mu.RUnlock()
	for _, c := range hit {
		c.shut(code, text)
	}
	return len(hit)
}

// revalidate closes the connections whose token, user or IP is blocked
// now, with 1008 "revoked" (the close code of the blocked reason).
func (reg *registry) revalidate() {
	t := now()
	reg.mu.RLock()
	var hit []*liveConn
	for c := range reg.conns {
		if !c.closing() && c.blocked(t) {
			hit = append(hit, c)
		}
	}
	reg.mu.RUnlock()
	for _, c := range hit {
		c.shut(c.h.codes[reasonBlocked], "revoked")
	}
}

// Entries added at run time are pushed to live connections at once.
var _ = runtimeBlocklist.Subscribe(liveConns.revalidate)

// watchBlocklist makes the handler's blocklist file close matching live
// connections when it changes, and with revalidate also on that interval,
// until the config is unloaded.
func (h *Handler) watchBlocklist(ctx context.Context, file Blocklist) {
	if file != nil {
		h.unsubscribe = file.Subscribe(liveConns.revalidate)
	}
	if h.Revalidate > 0 {
		go func() {
			t := time.NewTicker(time.Duration(h.Revalidate))
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					liveConns.revalidate()
				}
			}
		}()
	}
}

// messageRate is a compiled rate_limit messages.
type messageRate struct {
	interval int64 // ns between messages at the sustained rate
	window   int64 // ns; also the burst tolerance
	perUser  bool
	action   string
}

// tokenMessage reads a message {"type":"<type>","token":"<jwt>"} as
// strictly as token claims: exact member names, no duplicates. typ is
// what a message must hold (its type, quoted) for the parse to be worth
// it; nil always parses.
func tokenMessage(payload, quotedType []byte) (typ, token []byte, err error) {
	if quotedType != nil && !bytes.Contains(payload, quotedType) {
		return nil, nil, errFirstMessage
	}
	err = strictObject(payload, func(name, v []byte) (err error) {
		switch string(name) {
		case "type":
			typ, err = jsonStringBytes(v)
		case "token":
			token, err = jsonStringBytes(v)
		}
		return err
	})
	return typ, token, err
}

// violation is the one place where a live connection breaking a message
// rule (rate_limited, too_big) is reported: logged at DEBUG, and counted
// for block_after's auto-bans.
func (h *Handler) violation(c *liveConn, what string) {
	h.countViolation(c)
	if ce := h.logger.Check(zap.DebugLevel, "websocket message rule broken"); ce != nil {
		ce.Write(zap.String("rule", what), zap.String("user", truncate(c.user, 200)), zap.String("remote_ip", c.ip))
	}
}

// logLiveClose logs a live connection closed by a rule.
func (h *Handler) logLiveClose(c *liveConn, reason string) {
	if ce := h.logger.Check(zap.InfoLevel, "websocket closed"); ce != nil {
		c.mu.Lock()
		jti := c.jti
		c.mu.Unlock()
		ce.Write(zap.String("reason", reason), zap.String("user", truncate(c.user, 200)),
			zap.String("jti", truncate(jti, 200)), zap.String("remote_ip", c.ip),
			zap.String("path", truncate(c.path, 200)), zap.Duration("duration", time.Duration(time.Now().UnixNano()-c.since)))
	}
}

// logLiveRefused logs why a live connection's credential was refused
// (msg): a refresh token, or an opaque credential asked about again.
func (h *Handler) logLiveRefused(c *liveConn, msg string, ref *refusal) {
	if ce := h.logger.Check(zap.InfoLevel, msg); ce != nil {
		fields := []zap.Field{zap.String("reason", ref.reason.String()),
			zap.String("user", truncate(c.user, 200)), zap.String("remote_ip", c.ip)}
		if ref.detail != nil {
			fields = append(fields, zap.String("detail", truncate(ref.detail.Error(), 200)))
		}
		ce.Write(fields...)
	}
}
