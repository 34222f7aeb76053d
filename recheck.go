package wsauth

import (
	"math/rand/v2"
	"time"

	"go.uber.org/zap"
)

// Live connections authenticated by an opaque credential are asked about
// again with revalidate: a session that ended (a logout) or a token that
// was revoked at its authorization server closes the connection with 1008
// "revoked". One goroutine of the process does it, for every handler's
// connections (also those opened before a reload), and only while there
// are such connections: each is asked about once per its handler's
// revalidate interval (a random three quarters to all of it, so that a
// crowd that connected at once is spread out), connections that share a
// credential with one call, one call at a time and at most
// maxRechecksPerSecond.

// maxRechecksPerSecond bounds the calls revalidate makes, in the process;
// handshakes with a cold cache come on top.
const maxRechecksPerSecond = 100

// recheckTick is how often the goroutine looks for connections due; a
// credential is scheduled a tick early, so that it is asked about within
// its interval.
const recheckTick = 250 * time.Millisecond

// A heldCredential is what a live connection keeps of its opaque
// credential, to ask about it again.
type heldCredential struct {
	value string
	from  *tokenSource // nil: sent as a bearer token
	key   credKey
	every time.Duration
	next  int64 // unix ns; guarded by the registry's lock
}

// hold keeps cred, as read from from, for a live connection of h, to be
// asked about again a revalidate interval from now.
func (h *Handler) hold(cred string, from *tokenSource) *heldCredential {
	hc := &heldCredential{value: cred, from: from, key: h.opaque.key(cred, from), every: time.Duration(h.Revalidate)}
	hc.schedule(time.Now().UnixNano())
	return hc
}

// schedule sets when the credential is asked about next, t being now: at
// a random point of the last quarter of its interval, a tick early.
func (hc *heldCredential) schedule(t int64) {
	hc.next = t + int64(hc.every)*3/4 + rand.Int64N(int64(hc.every)/4+1) - int64(recheckTick)
}

// addRecheck lists c for the rechecks, and starts their goroutine if it
// is not running; reg.mu must be held.
func (reg *registry) addRecheck(c *liveConn) {
	reg.rechecks[c] = struct{}{}
	if !reg.sweeping {
		reg.sweeping = true
		go reg.recheckLoop()
	}
}

// recheckLoop asks, every recheckTick, about the credentials due, until
// no connection is left to ask about.
func (reg *registry) recheckLoop() {
	t := time.NewTicker(recheckTick)
	defer t.Stop()
	down := make(map[*checker]bool) // endpoints found unavailable
	for range t.C {
		groups := reg.dueRechecks()
		if groups == nil {
			return
		}
		reg.recheck(groups, down)
	}
}

// A recheckGroup is the connections of one credential at one endpoint.
type recheckGroup struct {
	h     *Handler
	cred  *heldCredential   // the first connection's, asked about
	creds []*heldCredential // each connection's, scheduled again
	conns []*liveConn
}

// dueRechecks collects the connections due, by credential; nil when there are none left to watch (and the goroutine
// must end).
func (reg *registry) dueRechecks() []*recheckGroup {
	reg.mu.Lock()
	if len(reg.rechecks) == 0 {
		reg.sweeping = false
		reg.mu.Unlock()
		return nil
	}
	reg.mu.Unlock()
	// The scan under the read lock: handshakes and closes go on.
	reg.mu.RLock()
	defer reg.mu.RUnlock()
	type groupKey struct {
		c *checker
		k credKey
	}
	byKey := make(map[groupKey]*recheckGroup)
	groups := []*recheckGroup{}
	t := time.Now().UnixNano()
	// The credentials due, then every connection that holds one of them,
	// due or not: one call answers for all, and they are scheduled
	// together from then on.
	for due := true; ; due = false {
		for c := range reg.rechecks {
			c.mu.Lock()
			cred := c.cred
			c.mu.Unlock()
			if c.closing() || due && cred.next > t {
				continue
			}
			gk := groupKey{c.h.opaque, cred.key}
			g := byKey[gk]
			switch {
			case g == nil && due:
				g = &recheckGroup{h: c.h, cred: cred}
				byKey[gk] = g
				groups = append(groups, g)
			case g == nil || !due && cred.next <= t:
				continue // none of its credential due, or taken in the first pass
			}
			g.conns, g.creds = append(g.conns, c), append(g.creds, cred)
		}
		if !due {
			return groups
		}
	}
}

// recheck asks about each group's credential, spread over the tick and no
// faster than maxRechecksPerSecond, and applies the answers. An endpoint
// that cannot answer keeps its connections as they are (they are asked
// about at the next tick) and is not asked again in this one.
func (reg *registry) recheck(groups []*recheckGroup, down map[*checker]bool) {
	gap := max(recheckTick/time.Duration(max(len(groups), 1)), time.Second/maxRechecksPerSecond)
	skip := make(map[*checker]bool)
	for i, g := range groups {
		ch := g.h.opaque
		if skip[ch] {
			continue
		}
		if i > 0 {
			time.Sleep(gap)
		}
		a := g.h.ask(g.cred.value, g.cred.from, g.cred.key, true)
		if a.ref != nil && a.ref.reason == reasonUnavailable {
			skip[ch] = true
			if !down[ch] {
				down[ch] = true
				g.h.logger.Warn("revalidate: cannot ask about live connections; they stay open until the endpoint answers",
					zap.String("check", ch.name), zap.Error(a.ref.detail))
			}
			continue
		}
		if down[ch] {
			delete(down, ch)
			g.h.logger.Info("revalidate: endpoint answers again", zap.String("check", ch.name))
		}
		reg.mu.Lock()
		t := time.Now().UnixNano()
		for _, cred := range g.creds {
			cred.schedule(t)
		}
		reg.mu.Unlock()
		for i, c := range g.conns {
			c.applyAnswer(a, g.creds[i])
		}
	}
}

// applyAnswer applies what the endpoint now says of the connection's
// credential: no longer active, or active for someone else, closes it as
// revoked; expired, as expired; an active answer with an exp moves the
// connection's expiry to it.
func (c *liveConn) applyAnswer(a *answer, asked *heldCredential) {
	if !c.holds(asked) {
		return // refreshed meanwhile: the answer is the old credential's
	}
	var id identity
	ref := a.apply(&id, time.Duration(c.h.Leeway))
	if ref == nil {
		ref = c.h.authorize(&id)
	}
	switch {
	case ref != nil && ref.reason == reasonExpired:
		if c.h.expire {
			c.expire()
		}
		return // with expire_connections off, an expiry closes nothing
	case ref == nil && (id.user != c.user || id.claims.Issuer.s != c.iss):
		ref = &refusal{reason: reasonInvalid, detail: errOtherUser}
	}
	if ref != nil {
		c.h.logLiveRefused(c, "credential no longer valid", ref)
		c.shut(c.h.codes[reasonBlocked], "revoked")
		return
	}
	exp := id.expires()
	c.mu.Lock()
	if c.cred != asked {
		c.mu.Unlock()
		return
	}
	changed := !exp.Equal(c.expires)
	if changed {
		// The placeholders keep showing the handshake's expiry.
		c.expires, c.refreshed = exp, true
	}
	deadline := c.deadline()
	c.mu.Unlock()
	if changed {
		liveConns.reschedule(c, deadline)
	}
}

// holds reports whether cred is still the connection's credential.
func (c *liveConn) holds(cred *heldCredential) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cred == cred
}
