package wsauth

import (
	"fmt"
	"hash/maphash"
	"math"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// RateLimits holds the rate limits of a handler, one per kind of event,
// as the Caddyfile's `rate_limit <kind> ...` options do.
type RateLimits struct {
	// Limits how often handshakes may be made, per client IP or per
	// user. Default: no limit.
	Handshakes *HandshakeRate `json:"handshakes,omitempty"`

	// Limits how many data messages clients may send on live
	// connections, per connection or per user. Default: no limit.
	Messages *MessageRate `json:"messages,omitempty"`
}

// MessageRate limits the data messages (text and binary; a fragmented
// message counts once, control frames never) that clients send on live
// connections.
type MessageRate struct {
	// How many messages a key may send within Window; also the burst.
	Events int `json:"events"`

	// The window the messages are counted over.
	Window caddy.Duration `json:"window"`

	// What is limited: "connection" (each connection on its own) or "user"
	// (all the connections of a user together). Default: user.
	Per string `json:"per,omitempty"`

	// What happens to a message over the limit: "drop" (it is not
	// forwarded), "close" (the connection is closed with 1008
	// "rate_limited"), or "notify" (dropped, and the client gets one text
	// message {"type":"error","reason":"rate_limited","retry_after":<s>}
	// per window). Default: drop.
	Action string `json:"action,omitempty"`
}

// messages returns the message rate, or nil.
func (rl *RateLimits) messages() *MessageRate {
	if rl == nil {
		return nil
	}
	return rl.Messages
}

// check applies the rules of each limit that is set.
func (rl *RateLimits) check() error {
	if rl.Handshakes != nil {
		if err := rl.Handshakes.check(); err != nil {
			return err
		}
	}
	if rl.Messages != nil {
		if err := rl.Messages.check(); err != nil {
			return err
		}
	}
	return nil
}

// check applies the rules of a message rate, for the Caddyfile and JSON
// alike: checkRate with at least 1µs per event (a message costs far less
// than a handshake, so the floor is lower), checkMessagePer and
// checkMessageAction.
func (mr *MessageRate) check() error {
	if err := checkRate(mr.Events, time.Duration(mr.Window), minMessageInterval); err != nil {
		return fmt.Errorf("rate_limit messages: %v", err)
	}
	if err := checkMessagePer(mr.Per); err != nil {
		return fmt.Errorf("rate_limit messages: %v", err)
	}
	if err := checkMessageAction(mr.Action); err != nil {
		return fmt.Errorf("rate_limit messages: %v", err)
	}
	return nil
}

// checkMessagePer is the rule for what a message rate is counted per; ""
// is the default, user.
func checkMessagePer(per string) error {
	if per != "" && per != "connection" && per != "user" {
		return fmt.Errorf("per must be connection or user, not %q", per)
	}
	return nil
}

// checkMessageAction is the rule for what happens to a message over the
// rate; "" is the default, drop.
func checkMessageAction(action string) error {
	if action != "" && action != "drop" && action != "close" && action != "notify" {
		return fmt.Errorf("action must be drop, close or notify, not %q", action)
	}
	return nil
}

// HandshakeRate limits how often handshakes may be made, per client IP or
// per user. A handshake over the limit is refused as rate_limited (close
// 1013, or 429 with Retry-After).
type HandshakeRate struct {
	// How many handshakes a key may make within Window; also the burst.
	Events int `json:"events"`

	// The window the events are counted over.
	Window caddy.Duration `json:"window"`

	// What is limited: "ip" (every attempt of a client IP, counted before
	// the token is checked) or "user" (accepted handshakes of a user).
	// Default: ip.
	Per string `json:"per,omitempty"`
}

// rateLimiters holds the handshake limiters of the process by their
// settings, so that the counters survive a config reload and are shared by
// every handler with the same limit.
var rateLimiters = caddy.NewUsagePool()

// acquireRateLimiter returns the pooled limiter of what (handshakes or
// messages) for events per window, per user or not; release it with
// rateLimiters.Delete(key).
func acquireRateLimiter(what string, events int, window time.Duration, perUser bool) (*rateLimiter, string) {
	key := fmt.Sprintf("%s/%d/%d/%t", what, events, window, perUser)
	val, _ := rateLimiters.LoadOrStore(key, newRateLimiter(events, window, perUser))
	return val.(*rateLimiter), key
}

// maxRateKeys bounds a limiter's map: under a flood of distinct keys it
// forgets idle keys first, then arbitrary ones.
const maxRateKeys = 1 << 16

// rateLimiter is a generic cell rate algorithm (GCRA) limiter keyed by IP or
// user: one theoretical arrival time per key, so that Events may arrive at
// once and then one every Window/Events.
type rateLimiter struct {
	interval int64 // ns between events at the sustained rate
	window   int64 // ns; also the burst tolerance
	perUser  bool
	seed     maphash.Seed

	mu  sync.Mutex       // guards tat
	tat map[uint64]int64 // hash of the key -> theoretical arrival time, unix ns
}

func newRateLimiter(events int, window time.Duration, perUser bool) *rateLimiter {
	return &rateLimiter{
		interval: int64(window) / int64(events),
		window:   int64(window),
		perUser:  perUser,
		seed:     maphash.MakeSeed(),
		tat:      make(map[uint64]int64),
	}
}

// check applies the rules of a handshake rate: checkRate and
// checkRatePer.
func (hr *HandshakeRate) check() error {
	if err := checkRate(hr.Events, time.Duration(hr.Window), minHandshakeInterval); err != nil {
		return fmt.Errorf("rate_limit handshakes: %v", err)
	}
	if err := checkRatePer(hr.Per); err != nil {
		return fmt.Errorf("rate_limit handshakes: %v", err)
	}
	return nil
}

// checkRatePer is the rule for what a handshake rate is counted per; ""
// is the default, ip.
func checkRatePer(per string) error {
	if per != "" && per != "ip" && per != "user" {
		return fmt.Errorf("per must be ip or user, not %q", per)
	}
	return nil
}

const (
	// maxRateWindow keeps the limiter's arithmetic far from overflow.
	maxRateWindow = 366 * 24 * time.Hour
	// minHandshakeInterval is the shortest interval between handshakes
	// that a rate may ask for.
	minHandshakeInterval = time.Millisecond
	// minMessageInterval is the shortest interval between messages that a
	// rate may ask for: 1000000/1s, a million messages a second.
	minMessageInterval = time.Microsecond
)

// checkRate is the rule for events per window, for the Caddyfile and JSON
// alike; the caller names the option. At least minInterval per event
// keeps the interval between events meaningful.
func checkRate(events int, window, minInterval time.Duration) error {
	if events <= 0 || window <= 0 {
		return fmt.Errorf("need a positive count and window")
	}
	if window > maxRateWindow || window/time.Duration(events) < minInterval {
		return fmt.Errorf("the window must be at most %s, and at least %s per event", maxRateWindow, minInterval)
	}
	return nil
}

// Allow records an event for key at now, unless it is over the limit; then
// it says how long until the next event would be allowed. Keys are kept as
// 64-bit hashes, so that a long key (a user claim) costs no more memory
// than a short one.
func (l *rateLimiter) Allow(key string, now time.Time) (bool, time.Duration) {
	n := now.UnixNano()
	hk := maphash.String(l.seed, key)
	l.mu.Lock()
	defer l.mu.Unlock()
	t, ok := l.tat[hk]
	if t < n {
		t = n
	}
	next := t + l.interval
	if next-n > l.window {
		return false, time.Duration(next - l.window - n)
	}
	if !ok && len(l.tat) >= maxRateKeys {
		l.evict(n)
	}
	l.tat[hk] = next
	return true, 0
}

// evict makes room: keys whose arrival time has passed are as good as new,
// so they go first; if that is not enough, a tenth of the map goes.
// It must be called with l.mu held.
func (l *rateLimiter) evict(now int64) {
	for k, t := range l.tat {
		if t <= now {
			delete(l.tat, k)
		}
	}
	for k := range l.tat {
		if len(l.tat) < maxRateKeys*9/10 {
			break
		}
		delete(l.tat, k)
	}
}

// ipKey is the rate-limit key of a client IP: the address, or for IPv6 its
// /64, which one client usually holds whole.
func ipKey(ip string) string {
	a, err := netip.ParseAddr(ip)
	if err != nil || a.Unmap().Is4() {
		return ip
	}
	p, _ := a.WithZone("").Prefix(64)
	return p.String()
}

// userKey is the rate-limit key of a user: the same name at two issuers is
// two users.
func userKey(iss, user string) string { return iss + "\x00" + user }

// clientIP is the client's address as Caddy sees it (trusted proxies
// applied), or the connection's peer.
func clientIP(r *http.Request) string {
	if ip, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok && ip != "" {
		return ip
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// retryAfter is the Retry-After header value for d: whole seconds, rounded
// up, at least 1.
func retryAfter(d time.Duration) string {
	return strconv.Itoa(max(1, int(math.Ceil(d.Seconds()))))
}

// parseRate parses "<n>/<duration>".
func parseRate(s string) (int, time.Duration, error) {
	ns, ds, ok := strings.Cut(s, "/")
	n, err := strconv.Atoi(ns)
	if !ok || err != nil || n <= 0 {
		return 0, 0, fmt.Errorf("want <n>/<duration>, such as 10/1m, not %q", s)
	}
	d, err := caddy.ParseDuration(ds)
	if err != nil || d <= 0 {
		return 0, 0, fmt.Errorf("want <n>/<duration>, such as 10/1m, not %q", s)
	}
	return n, d, nil
}
