package wsauth

import (
	"fmt"
	"hash/maphash"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
)

// Connection caps and auto-bans: what an operator sets so that one user
// cannot hold the server, and a client that keeps failing is kept out for
// a while. Both belong to the process, like the live connections they
// count, and survive config reloads.

// BlockAfter bans for For a client IP that fails authentication Failures
// times within Within (invalid, expired, forbidden or origin), and a user
// who breaks the message rules (rate_limit messages, max_message_size) as
// often.
type BlockAfter struct {
	// How many failures within Within make a ban.
	Failures int `json:"failures"`

	// The window the failures are counted over.
	Within caddy.Duration `json:"within"`

	// How long a ban lasts.
	For caddy.Duration `json:"for"`
}

const (
	maxConnectionsPerUser = 1 << 20
	maxBlockAfterWindow   = 24 * time.Hour
	maxBanDuration        = 366 * 24 * time.Hour
)

// checkMaxConnections is the rule for max_connections_per_user; 0 is the
// default, no cap.
func checkMaxConnections(n int) error {
	if n < 0 || n > maxConnectionsPerUser {
		return fmt.Errorf("max_connections_per_user: must be between 1 and %d", maxConnectionsPerUser)
	}
	return nil
}

// check applies the rules of block_after.
func (ba *BlockAfter) check() error {
	if ba.Failures < 1 || ba.Failures > 1_000_000 {
		return fmt.Errorf("block_after: the number of failures must be between 1 and 1000000")
	}
	if w := time.Duration(ba.Within); w <= 0 || w > maxBlockAfterWindow {
		return fmt.Errorf("block_after: the window (within) must be positive and at most %s", maxBlockAfterWindow)
	}
	if d := time.Duration(ba.For); d < time.Second || d > maxBanDuration {
		return fmt.Errorf("block_after: the ban (for) must be between 1s and 366 days")
	}
	return nil
}

// connSlots counts the live connections of each user in the process, for
// max_connections_per_user. A slot is taken when a handshake is accepted,
// before the upstream is dialed, and given back when the connection ends,
// whichever side ends it. The map holds only users with a slot taken.
type connSlots struct {
	seed  maphash.Seed
	mu    sync.Mutex
	users map[uint64]int // by slotKey
}

var userSlots = &connSlots{seed: maphash.MakeSeed(), users: make(map[uint64]int)}

// Take implements ConnectionSlots.
func (s *connSlots) Take(iss, user string, max int) bool { return s.take(s.slotKey(iss, user), max) }

// Give implements ConnectionSlots.
func (s *connSlots) Give(iss, user string) { s.give(s.slotKey(iss, user)) }

// slotKey is the key of a user: a hash of the issuer and the user claim,
// built without an allocation.
func (s *connSlots) slotKey(iss, user string) uint64 {
	var h maphash.Hash
	h.SetSeed(s.seed)
	h.WriteString(iss)
	h.WriteByte(0)
	h.WriteString(user)
	return h.Sum64()
}

// take takes one of key's max slots, and reports whether there was one.
func (s *connSlots) take(key uint64, max int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.users[key] >= max {
		return false
	}
	s.users[key]++
	return true
}

// give gives one of key's slots back.
func (s *connSlots) give(key uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.users[key]--; s.users[key] <= 0 {
		delete(s.users, key)
	}
}

// count is how many slots key holds.
func (s *connSlots) count(key uint64) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.users[key]
}

// slotRetry is the Retry-After of a handshake over the connection cap: a
// slot frees when one of the user's connections ends, which no one can
// tell in advance.
const slotRetry = time.Second

var errTooManyConnections = errString("live connections of the user at max_connections_per_user")

// takeSlot takes a connection slot of hs's user, if the handler caps
// them, and reports whether it took one: the liveConn gives it back at its
// end (giveSlot).
func (h *Handler) takeSlot(hs *handshake) (bool, *refusal) {
	if h.MaxConnectionsPerUser == 0 {
		return false, nil
	}
	if h.joint != nil {
		if ref := h.joint.admit(h, hs); ref != nil {
			return false, ref
		}
		return true, nil
	}
	if !h.slots.Take(hs.id.claims.Issuer.s, hs.id.user, h.MaxConnectionsPerUser) {
		return false, &refusal{reason: reasonRateLimited, detail: errTooManyConnections, retry: slotRetry}
	}
	return true, nil
}

// A failureCounter counts events by key in fixed windows, for
// block_after. Keys are kept as 64-bit hashes, and at most maxRateKeys of
// them: under a flood of distinct keys, keys whose window has passed go
// first, then a tenth of the rest. So it holds at most 65,536 entries of
// 24 bytes, about 2.5 MB with the map's overhead, whatever the flood.
type failureCounter struct {
	limit  int
	window int64 // ns
	seed   maphash.Seed

	mu   sync.Mutex
	wins map[uint64]failureWindow
}

type failureWindow struct {
	start int64 // unix ns
	n     int
}

func newFailureCounter(limit int, window time.Duration) *failureCounter {
	return &failureCounter{limit: limit, window: int64(window), seed: maphash.MakeSeed(), wins: make(map[uint64]failureWindow)}
}

// Add implements FailureCounter.
func (fc *failureCounter) Add(key string, now time.Time) bool {
	t := now.UnixNano()
	hk := maphash.String(fc.seed, key)
	fc.mu.Lock()
	defer fc.mu.Unlock()
	w, ok := fc.wins[hk]
	if !ok || t-w.start >= fc.window {
		if !ok && len(fc.wins) >= maxRateKeys {
			fc.evict(t)
		}
		w = failureWindow{start: t}
	}
	w.n++
	if w.n >= fc.limit {
		delete(fc.wins, hk)
		return true
	}
	fc.wins[hk] = w
	return false
}

// evict makes room; fc.mu must be held.
func (fc *failureCounter) evict(now int64) {
	for k, w := range fc.wins {
		if now-w.start >= fc.window {
			delete(fc.wins, k)
		}
	}
	for k := range fc.wins {
		if len(fc.wins) < maxRateKeys*9/10 {
			break
		}
		delete(fc.wins, k)
	}
}

// failureCounters are shared by the handlers of the process with the same
// block_after, so that counts survive a config reload.
var failureCounters = caddy.NewUsagePool()

// banned holds the bans in force, for their bound: at most maxBans at a
// time; past it, bans that have expired are taken out of the blocklist,
// then the one that ends first.
type banSet struct {
	mu   sync.Mutex
	bans map[banKey]time.Time // -> expiry
}

type banKey struct{ kind, value string }

var maxBans = 1 << 16 // a variable for tests

var bans = &banSet{bans: make(map[banKey]time.Time)}

// ban puts kind:value on the run-time blocklist until now+d, with reason;
// the live connections it matches are closed at once (the registry
// subscribes to the run-time list).
func (bs *banSet) ban(kind, value string, now time.Time, d time.Duration, reason string) error {
	bs.mu.Lock()
	k := banKey{kind, value}
	var expired []banKey
	var evicted *banKey // the ban ending first, if none has expired
	if _, ok := bs.bans[k]; !ok && len(bs.bans) >= maxBans {
		for key, exp := range bs.bans {
			if !now.Before(exp) {
				expired = append(expired, key)
			}
		}
		if len(expired) == 0 {
			var first banKey
			var firstExp time.Time
			for key, exp := range bs.bans {
				if firstExp.IsZero() || exp.Before(firstExp) {
					first, firstExp = key, exp
				}
			}
			evicted = &first
			delete(bs.bans, first)
		}
		for _, key := range expired {
			delete(bs.bans, key)
		}
	}
	bs.bans[k] = now.Add(d)
	bs.mu.Unlock()
	// An expired ban is ignored by every instance's list already, and the
	// fleet's sync prunes it from Redis: it goes from this list alone,
	// with no round trip each. A ban that is still in force goes from the
	// fleet's.
	for _, key := range expired {
		_, _ = runtimeBlocklist.Remove(key.kind, key.value)
	}
	if evicted != nil {
		_, _, _, _ = unblockEntry(evicted.kind, evicted.value, now)
	}
	_, err := blockEntry(Entry{Kind: kind, Value: value, Expires: now.Add(d), Reason: reason}, now)
	return err
}

// size is how many bans are in force (or expired, not yet taken out).
func (bs *banSet) size() int {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	return len(bs.bans)
}

// countFailure counts a refused handshake against its client IP, for
// block_after: authentication failures only (invalid, expired, forbidden,
// origin), not a missing token, a limit or an outage.
func (h *Handler) countFailure(hs *handshake, ref *refusal) {
	if h.ipFailures == nil {
		return
	}
	switch ref.reason {
	case reasonInvalid, reasonExpired, reasonForbidden, reasonOrigin:
	default:
		return
	}
	key := ipKey(clientIP(hs.r))
	t := now()
	if h.ipFailures.Add("ip\x00"+key, t) {
		h.banFor("ip", key, t, "block_after: "+strconv.Itoa(h.BlockAfter.Failures)+" authentication failures")
	}
}

// countViolation counts a broken message rule against the user, for
// block_after.
func (h *Handler) countViolation(c *liveConn) {
	if h.ipFailures == nil {
		return
	}
	t := now()
	if h.ipFailures.Add("sub\x00"+userKey(c.iss, c.user), t) {
		h.banFor("sub", c.user, t, "block_after: "+strconv.Itoa(h.BlockAfter.Failures)+" message rule violations")
	}
}

func (h *Handler) banFor(kind, value string, t time.Time, reason string) {
	d := time.Duration(h.BlockAfter.For)
	if err := bans.ban(kind, value, t, d, reason); err != nil {
		h.logger.Error("could not ban", zap.String("kind", kind), zap.String("value", truncate(value, 200)), zap.Error(err))
		return
	}
	h.logger.Warn("banned", zap.String("kind", kind), zap.String("value", truncate(value, 200)),
		zap.Duration("for", d), zap.String("reason", reason))
}

// A jointAdmission charges a handshake's shared rate and takes its
// connection slot in one call of the store, when a handler has both a
// handshake rate and max_connections_per_user on a store that can
// (RedisStore): one round trip per handshake rather than two. The rate per
// IP is still checked before the token, on this instance's own count, so
// that a flood of forged tokens is refused before any signature check; the
// fleet's count is charged with the slot, or, for a handshake refused
// before that, in the background (chargeRefused).
type jointAdmission struct {
	store  *RedisStore
	rate   *redisLimiter
	perIP  bool
	charge chan struct{} // bounds the background charges in flight
}

// maxBackgroundCharges bounds the fleet's rate charges of refused
// handshakes in flight; past it they are counted by this instance alone.
const maxBackgroundCharges = 64

// provisionJoint sets up the joint admission, if the store and the limits
// allow it: the handler then checks its own count of the rate where it
// checked the fleet's (per IP), or none (per user).
func (h *Handler) provisionJoint() {
	rs, ok := h.store.(*RedisStore)
	if !ok || h.MaxConnectionsPerUser == 0 {
		return
	}
	var rate Limiter
	perIP := false
	switch {
	case h.needIP:
		rate, perIP = h.ipLimit, true
	default:
		if _, none := h.userLimit.(noLimit); none {
			return
		}
		rate = h.userLimit
	}
	rl, ok := rate.(*redisLimiter)
	if !ok {
		return
	}
	h.joint = &jointAdmission{store: rs, rate: rl, perIP: perIP, charge: make(chan struct{}, maxBackgroundCharges)}
	if perIP {
		h.ipLimit = rl.local
	} else {
		h.userLimit = noLimit{}
	}
}

// rateKey is the key of hs in the joint rate: its client IP's, or its
// user's.
func (j *jointAdmission) rateKey(hs *handshake) string {
	if j.perIP {
		return ipKey(clientIP(hs.r))
	}
	return userKey(hs.id.claims.Issuer.s, hs.id.user)
}

// admit charges the rate and takes a slot for an accepted upgrade.
func (j *jointAdmission) admit(h *Handler, hs *handshake) *refusal {
	hs.charged = true
	ok, wait := j.store.admitJoint(j.rate, j.rateKey(hs), hs.id.claims.Issuer.s, hs.id.user, h.MaxConnectionsPerUser, j.perIP)
	switch {
	case ok:
		return nil
	case wait == 0:
		return &refusal{reason: reasonRateLimited, detail: errTooManyConnections, retry: slotRetry}
	case j.perIP:
		return &refusal{reason: reasonRateLimited, detail: errRateIP, retry: wait}
	default:
		return &refusal{reason: reasonRateLimited, detail: errRateUser, retry: wait}
	}
}

// admitRate charges the rate alone, for a request that takes no slot (not
// an upgrade).
func (j *jointAdmission) admitRate(hs *handshake) *refusal {
	hs.charged = true
	if ok, wait := j.rate.allow(j.rateKey(hs), now(), !j.perIP); !ok {
		detail := errRateUser
		if j.perIP {
			detail = errRateIP
		}
		return &refusal{reason: reasonRateLimited, detail: detail, retry: wait}
	}
	return nil
}

// chargeRefused charges the fleet's rate per IP for a handshake refused
// before its joint admission, in the background, as every attempt of an
// IP counts; at most maxBackgroundCharges at a time.
func (j *jointAdmission) chargeRefused(hs *handshake) {
	if !j.perIP || hs.charged {
		return
	}
	select {
	case j.charge <- struct{}{}:
	default:
		return // counted by this instance's own limiter
	}
	key := j.rateKey(hs)
	go func() {
		defer func() { <-j.charge }()
		j.rate.allow(key, now(), false)
	}()
}
