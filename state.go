package wsauth

import (
	"net/netip"
	"sync"
	"time"
)

// The state a decision consults, behind small interfaces: the blocklist
// file is one source of entries, the in-memory list that the admin API
// writes is another, and a store shared by a fleet (Redis) can implement
// both interfaces. Callers never branch on whether a list or a limit is
// configured: an absent one is a value that blocks nothing and allows
// everything.

// A Blocklist says whether a token (jti), a user or a client IP is
// blocked at a given time, and tells its subscribers when its entries
// change, so that live connections can be checked again.
type Blocklist interface {
	BlockedIP(ip string, now time.Time) bool
	BlockedToken(jti, user string, now time.Time) bool
	// Subscribe calls fn after each change of the entries, on a goroutine
	// of the list's own, until cancel is called.
	Subscribe(fn func()) (cancel func())
}

// A Limiter counts events by key: Allow reports whether one more event of
// key may happen at now, and if not, how long until one may.
type Limiter interface {
	Allow(key string, now time.Time) (ok bool, retry time.Duration)
}

// ConnectionSlots counts the live connections of each user (issuer and
// user claim), for max_connections_per_user: Take takes one of the user's
// max slots and reports whether there was one; Give gives one back.
type ConnectionSlots interface {
	Take(iss, user string, max int) bool
	Give(iss, user string)
}

// A FailureCounter counts failures by key, for block_after: Add counts one
// at now and reports whether it makes the limit within the window (the
// count then starts again).
type FailureCounter interface {
	Add(key string, now time.Time) bool
}

// noBlocklist blocks nothing.
type noBlocklist struct{}

func (noBlocklist) BlockedIP(string, time.Time) bool            { return false }
func (noBlocklist) BlockedToken(string, string, time.Time) bool { return false }
func (noBlocklist) Subscribe(func()) func()                     { return func() {} }

// noLimit allows everything.
type noLimit struct{}

func (noLimit) Allow(string, time.Time) (bool, time.Duration) { return true, 0 }

// unionBlocklist is the union of several lists: an entry of any of them blocks.
type unionBlocklist []Blocklist

func (bs unionBlocklist) BlockedIP(ip string, now time.Time) bool {
	for _, b := range bs {
		if b.BlockedIP(ip, now) {
			return true
		}
	}
	return false
}

func (bs unionBlocklist) BlockedToken(jti, user string, now time.Time) bool {
	for _, b := range bs {
		if b.BlockedToken(jti, user, now) {
			return true
		}
	}
	return false
}

func (bs unionBlocklist) Subscribe(fn func()) func() {
	cancels := make([]func(), len(bs))
	for i, b := range bs {
		cancels[i] = b.Subscribe(fn)
	}
	return func() {
		for _, c := range cancels {
			c()
		}
	}
}

// subscribers is a set of change callbacks, for a Blocklist to embed.
type subscribers struct {
	mu   sync.Mutex
	next int
	fns  map[int]func()
}

func (s *subscribers) Subscribe(fn func()) func() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fns == nil {
		s.fns = make(map[int]func())
	}
	id := s.next
	s.next++
	s.fns[id] = fn
	return func() {
		s.mu.Lock()
		delete(s.fns, id)
		s.mu.Unlock()
	}
}

// notify calls every subscriber, each on a goroutine of its own, so that a
// slow one delays neither the list nor the others.
func (s *subscribers) notify() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, fn := range s.fns {
		go fn()
	}
}

// An Entry is one blocklist entry.
type Entry struct {
	Kind    string    // jti, sub or ip
	Value   string    // the token ID, the user, or an address or CIDR
	Expires time.Time // zero: never
	Reason  string
}

// memoryBlocklist is a blocklist kept in memory, written at run time (by
// the admin API): entries are added and removed one by one, and expire.
type memoryBlocklist struct {
	subscribers
	mu      sync.RWMutex
	set     *blockSet
	reasons map[entryKey]string // of the entries that have one
}

// entryKey is an entry's kind and value, as entryValue writes it.
type entryKey struct{ kind, value string }

func newMemoryBlocklist() *memoryBlocklist {
	return &memoryBlocklist{set: newBlockSet(), reasons: make(map[entryKey]string)}
}

// Add puts e in force, replacing an entry of the same kind and value.
func (m *memoryBlocklist) Add(e Entry) error {
	_, err := m.put(e, now())
	return err
}

// put is Add, and reports whether e replaced an entry in force at t.
func (m *memoryBlocklist) put(e Entry, t time.Time) (replaced bool, err error) {
	value, err := entryValue(e.Kind, e.Value)
	if err != nil {
		return false, err
	}
	key := entryKey{e.Kind, value}
	m.mu.Lock()
	exp, found, _ := m.set.get(e.Kind, value)
	if err = m.set.add(e.Kind, value, e.Expires); err == nil {
		if e.Reason != "" {
			m.reasons[key] = e.Reason
		} else {
			delete(m.reasons, key)
		}
	}
	m.mu.Unlock()
	if err != nil {
		return false, err
	}
	m.notify()
	return found && live(exp, t), nil
}

// Remove takes the entry of kind and value out, and reports whether there
// was one.
func (m *memoryBlocklist) Remove(kind, value string) (bool, error) {
	_, found, _, err := m.take(kind, value, now())
	return found, err
}

// take is Remove; it also returns the entry taken out, and whether it was
// in force at t.
func (m *memoryBlocklist) take(kind, value string, t time.Time) (e Entry, found, inForce bool, err error) {
	v, err := entryValue(kind, value)
	if err != nil {
		return Entry{}, false, false, err
	}
	key := entryKey{kind, v}
	m.mu.Lock()
	exp, _, _ := m.set.get(kind, v)
	found, err = m.set.remove(kind, v)
	e = Entry{Kind: kind, Value: v, Expires: exp, Reason: m.reasons[key]}
	delete(m.reasons, key)
	m.mu.Unlock()
	if found {
		m.notify()
	}
	return e, found, found && live(exp, t), err
}

// entries returns the entries in force at t, in no particular order.
func (m *memoryBlocklist) entries(t time.Time) []Entry {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var es []Entry
	m.set.each(t, func(kind, value string, expires time.Time) {
		es = append(es, Entry{Kind: kind, Value: value, Expires: expires, Reason: m.reasons[entryKey{kind, value}]})
	})
	return es
}

func (m *memoryBlocklist) BlockedIP(ip string, now time.Time) bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.set.blockedIP(ip, now)
}

func (m *memoryBlocklist) BlockedToken(jti, user string, now time.Time) bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.set.blockedToken(jti, user, now)
}

// runtimeBlocklist holds the entries added at run time, shared by every
// handler of the process and kept across config reloads.
var runtimeBlocklist = newMemoryBlocklist()

// parseIP parses a client address for a lookup: zone dropped, IPv4-mapped
// IPv6 as IPv4.
func parseIP(ip string) (netip.Addr, bool) {
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return netip.Addr{}, false
	}
	return addr.WithZone("").Unmap(), true
}

// A Store holds state shared beyond the process, by a fleet of Caddy
// instances: modules of the ws_auth.stores namespace (ws_auth.stores.redis)
// implement it. Each counter it returns falls back to local, the
// process's own, while the store cannot be reached. The run-time
// blocklist is shared by the store itself: it keeps runtimeBlocklist
// (blockEntry, unblockEntry) in step with the fleet's.
type Store interface {
	// Limiter returns the fleet's limiter named name: events per window.
	Limiter(name string, events int, window time.Duration, local Limiter) Limiter
	// FailureCounter returns the fleet's counter named name: limit
	// failures within window.
	FailureCounter(name string, limit int, window time.Duration, local FailureCounter) FailureCounter
	// Slots returns the fleet's connection counts.
	Slots() ConnectionSlots
}
