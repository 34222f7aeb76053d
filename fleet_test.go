package wsauth

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Tests of a fleet (SPEC.md "State", `redis`): two Caddy instances, one in
// this process and one in a child process (fleet_harness_test.go), share
// a real redis-server, or a real three-node Redis Cluster, started by the
// test on free loopback ports.

// A fleetPair is two instances serving the same site with the same store:
// a in this process, b in a child process with its admin endpoint on.
type fleetPair struct {
	a, b  string // the sites' addresses
	admin *adminAPI
	child *caddyProcess
	site  string // the site block both serve
	up    *liveUpstream
}

// startFleet starts the two instances of a fleet sharing the Redis at url,
// with opts in their ws_auth blocks. The run-time blocklist and bans of
// this process are emptied when the test ends.
func startFleet(t *testing.T, url, opts string) *fleetPair {
	t.Helper()
	return startFleetWith(t, url, opts, "")
}

// startFleetWith is startFleet with sub-options of redis (its block).
func startFleetWith(t *testing.T, url, opts, redisBlock string) *fleetPair {
	t.Helper()
	up := newLiveUpstream(t)
	redis := "redis " + url + " test:" + strings.ReplaceAll(t.Name(), "/", "_") + ":"
	if redisBlock != "" {
		redis += " {\n\t\t\t" + redisBlock + "\n\t\t}"
	}
	st := site(opts + "\n\t\t" + redis)
	f := &fleetPair{site: st, up: up}
	f.a = startCaddy(t, st, up.addr())
	t.Cleanup(func() {
		clearRuntimeBlocklist(t)
		bans.mu.Lock()
		clear(bans.bans)
		bans.mu.Unlock()
	})
	f.startChild(t)
	return f
}

// startChild starts (or starts again) the child instance, on new ports.
func (f *fleetPair) startChild(t *testing.T) {
	t.Helper()
	f.b = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg := strings.Replace(testConfig(f.b, f.site, f.up.addr()), "admin off", "admin "+admin, 1)
	f.child = startCaddyProcess(t, cfg)
	child := f.child
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the log of b (%s):\n%s", f.b, child.Logs())
		}
	})
	f.admin = &adminAPI{t: t, addr: f.b, admin: admin, upstream: f.up.addr(), client: &http.Client{Timeout: 5 * time.Second}}
}

// redisURL starts a redis-server for the test and returns its URL.
func redisURL(t *testing.T) (string, *redisServer) {
	t.Helper()
	r := startRedis(t)
	return "redis://" + r.Addr, r
}

// clusterURL starts a three-node Redis Cluster for the test and returns
// its URL: the first node, and the others as addr parameters.
func clusterURL(t *testing.T) string {
	t.Helper()
	nodes := startRedisCluster(t)
	return "redis://" + nodes[0] + "?addr=" + nodes[1] + "&addr=" + nodes[2]
}

// eventually calls try until it returns "", for at most d, and fails the
// test with try's last answer, and what each of more says (servers'
// outputs, say).
func eventually(t testing.TB, d time.Duration, what string, try func() string, more ...func() string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		msg := try()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			for _, m := range more {
				msg += "\n" + m()
			}
			t.Fatalf("%s: after %v: %s", what, d, msg)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// wantOutcome is a function for eventually: "" once a handshake of token
// on addr has outcome want.
func wantOutcome(t *testing.T, addr, token, want string) func() string {
	return func() string {
		if got := dialOutcome(t, addr, "/ws", token); got != want {
			return "got " + got + ", want " + want
		}
		return ""
	}
}

func TestFleetRevoke(t *testing.T) {
	url, _ := redisURL(t)
	testFleetRevoke(t, url)
}

func TestFleetClusterRevoke(t *testing.T) {
	testFleetRevoke(t, clusterURL(t))
}

// testFleetRevoke: an entry added through the admin API of one instance
// closes the user's live connection on the other within a second, and
// refuses the user there; removing it on the other lets the user in again
// on the first.
func testFleetRevoke(t *testing.T, url string) {
	f := startFleet(t, url, "")
	aliceTok, bobTok := hs256(t, claims("alice")), hs256(t, claims("bob"))
	alice := dialLive(t, liveURL(f.a, "/ws", aliceTok))
	bob := dialLive(t, liveURL(f.a, "/ws", bobTok))
	aliceB := dialLive(t, liveURL(f.b, "/ws", aliceTok))
	alice.echo("alice on a")
	bob.echo("bob on a")
	aliceB.echo("alice on b")

	start := time.Now()
	f.admin.want("POST", "/ws_auth/blocklist", `{"kind":"sub","value":"alice","reason":"fleet test"}`, http.StatusCreated)
	if got := alice.closeWithin(time.Second); got != "close 1008 revoked" {
		t.Fatalf("alice on the other instance, once revoked: %s, want close 1008 revoked within a second", got)
	}
	t.Logf("revoked on b, closed on a after %v", time.Since(start))
	if got := aliceB.closeWithin(time.Second); got != "close 1008 revoked" {
		t.Errorf("alice on the instance that revoked: %s, want close 1008 revoked", got)
	}
	bob.echo("bob still on a")
	if got := dialOutcome(t, f.a, "/ws", aliceTok); got != "close 1008 blocked" {
		t.Errorf("alice dialing a: %s, want close 1008 blocked", got)
	}

	// Taken off on a (as its admin API does): b lets alice in again.
	if _, found, _, err := unblockEntry("sub", "alice", time.Now()); err != nil || !found {
		t.Fatalf("unblocking alice on a: found %v, %v", found, err)
	}
	eventually(t, time.Second, "alice dialing b once unblocked on a", wantOutcome(t, f.b, aliceTok, "accepted"))
}

func TestFleetLimits(t *testing.T) {
	url, _ := redisURL(t)
	testFleetLimits(t, url)
}

func TestFleetClusterLimits(t *testing.T) {
	testFleetLimits(t, clusterURL(t))
}

// testFleetLimits: a per-user handshake rate, a connection cap and
// block_after each hold across the two instances.
func testFleetLimits(t *testing.T, url string) {
	t.Run("rate", func(t *testing.T) {
		f := startFleet(t, url, "rate_limit handshakes 2/1m per user")
		alice := hs256(t, claims("alice"))
		for i, addr := range []string{f.a, f.b} {
			if got := dialOutcome(t, addr, "/ws", alice); got != "accepted" {
				t.Fatalf("alice's handshake %d: %s, want accepted", i+1, got)
			}
		}
		for _, addr := range []string{f.a, f.b} {
			if got := dialOutcome(t, addr, "/ws", alice); got != "close 1013 rate_limited" {
				t.Errorf("alice's third handshake, on %s: %s, want close 1013 rate_limited", addr, got)
			}
		}
		if got := dialOutcome(t, f.b, "/ws", hs256(t, claims("bob"))); got != "accepted" {
			t.Errorf("bob: %s, want accepted", got)
		}
	})
	t.Run("cap", func(t *testing.T) {
		f := startFleet(t, url, "max_connections_per_user 1")
		alice := hs256(t, claims("alice"))
		c := dialLive(t, liveURL(f.a, "/ws", alice))
		c.echo("alice on a")
		if got := dialOutcome(t, f.b, "/ws", alice); got != "close 1013 rate_limited" {
			t.Errorf("alice on b while connected on a: %s, want close 1013 rate_limited", got)
		}
		if got := dialOutcome(t, f.b, "/ws", hs256(t, claims("bob"))); got != "accepted" {
			t.Errorf("bob on b: %s, want accepted", got)
		}
		c.close()
		eventually(t, 2*time.Second, "alice on b once her connection on a closed", wantOutcome(t, f.b, alice, "accepted"))
	})
	t.Run("block_after", func(t *testing.T) {
		f := startFleet(t, url, "block_after 2 failures within 1m for 1m")
		bad := hs256(t, claims("alice"))[:20] + "x.y.z"
		for _, addr := range []string{f.a, f.b} {
			if got := dialOutcome(t, addr, "/ws", bad); got != "close 1008 invalid" {
				t.Fatalf("a bad token on %s: %s, want close 1008 invalid", addr, got)
			}
		}
		// The second failure, on b, banned the IP for the fleet.
		good := hs256(t, claims("alice"))
		eventually(t, time.Second, "a valid token on a from the banned IP", wantOutcome(t, f.a, good, "close 1008 blocked"))
		if got := dialOutcome(t, f.b, "/ws", good); got != "close 1008 blocked" {
			t.Errorf("a valid token on b from the banned IP: %s, want close 1008 blocked", got)
		}
	})
}

// TestFleetJoint: a handshake rate and a connection cap together, which
// an instance charges in one round trip, both hold across the instances;
// per IP, a handshake refused before the token is checked counts too.
func TestFleetJoint(t *testing.T) {
	url, r := redisURL(t)
	t.Run("per_user", func(t *testing.T) {
		f := startFleet(t, url, "rate_limit handshakes 2/1m per user\n\t\tmax_connections_per_user 1")
		alice := hs256(t, claims("alice"))
		a := dialLive(t, liveURL(f.a, "/ws", alice))
		a.echo("alice on a")
		if got := dialOutcome(t, f.b, "/ws", alice); got != "close 1013 rate_limited" {
			t.Errorf("alice on b while connected on a: %s, want close 1013 rate_limited (the cap)", got)
		}
		a.close()
		// Her two handshakes are spent (the one the cap refused counts).
		eventually(t, 2*time.Second, "alice's slot given back", func() string {
			if got := r.Do(t, "KEYS", "test:TestFleetJoint_per_user:conns:*"); got != "" {
				return "still counted: " + got
			}
			return ""
		})
		if got := dialOutcome(t, f.b, "/ws", alice); got != "close 1013 rate_limited" {
			t.Errorf("alice's third handshake: %s, want close 1013 rate_limited (the rate)", got)
		}
		if got := dialOutcome(t, f.b, "/ws", hs256(t, claims("bob"))); got != "accepted" {
			t.Errorf("bob on b: %s, want accepted", got)
		}
	})
	t.Run("per_ip", func(t *testing.T) {
		f := startFleet(t, url, "rate_limit handshakes 3/1m\n\t\tmax_connections_per_user 5")
		bad := hs256(t, claims("alice"))[:20] + "x.y.z"
		if got := dialOutcome(t, f.a, "/ws", bad); got != "close 1008 invalid" {
			t.Fatalf("a bad token on a: %s, want close 1008 invalid", got)
		}
		eventually(t, 2*time.Second, "the refused handshake charged to the fleet", func() string {
			if got := r.Do(t, "KEYS", "test:TestFleetJoint_per_ip:rate:*"); got == "" {
				return "no rate key in redis"
			}
			return ""
		})
		alice := hs256(t, claims("alice"))
		for _, addr := range []string{f.b, f.a} {
			if got := dialOutcome(t, addr, "/ws", alice); got != "accepted" {
				t.Fatalf("alice on %s: %s, want accepted", addr, got)
			}
		}
		if got := dialOutcome(t, f.b, "/ws", alice); got != "close 1013 rate_limited" {
			t.Errorf("the IP's fourth handshake, on b: %s, want close 1013 rate_limited", got)
		}
	})
}

// TestFleetLease: the connection counted by an instance that is killed is
// freed once its lease has passed, not before.
func TestFleetLease(t *testing.T) {
	url, _ := redisURL(t)
	f := startFleetWith(t, url, "max_connections_per_user 1", "lease 3s")
	alice := hs256(t, claims("alice"))
	c := dialLive(t, liveURL(f.b, "/ws", alice))
	c.echo("alice on b")
	f.child.Kill()
	// The lease has two seconds or more to run: alice is still counted.
	if got := dialOutcome(t, f.a, "/ws", alice); got != "close 1013 rate_limited" {
		t.Errorf("alice on a right after b was killed: %s, want close 1013 rate_limited", got)
	}
	eventually(t, 6*time.Second, "alice on a once the killed instance's lease has passed", wantOutcome(t, f.a, alice, "accepted"))
}

// TestFleetBanSurvivesRestart: a ban made through one instance holds on an
// instance started after it.
func TestFleetBanSurvivesRestart(t *testing.T) {
	url, _ := redisURL(t)
	f := startFleet(t, url, "")
	alice := hs256(t, claims("alice"))
	f.admin.want("POST", "/ws_auth/blocklist", `{"kind":"sub","value":"alice","ttl":"1h"}`, http.StatusCreated)
	f.child.Stop()
	f.startChild(t)
	if got := dialOutcome(t, f.b, "/ws", alice); got != "close 1008 blocked" {
		t.Errorf("alice on a restarted instance: %s, want close 1008 blocked", got)
	}
	var es []entryInfo
	decodeStrict(t, f.admin.want("GET", "/ws_auth/blocklist", "", http.StatusOK), &es)
	if len(es) != 1 || es[0].Value != "alice" || es[0].Expires == "" {
		t.Errorf("the restarted instance's blocklist: %+v, want alice's entry with its expiry", es)
	}
}

// TestFleetOutage: with Redis stopped, a banned user stays banned and
// valid users still connect on both instances, and the outage is logged
// once; a ban added during the outage is in Redis once it is back, and
// reaches the other instance.
func TestFleetOutage(t *testing.T) {
	url, r := redisURL(t)
	f := startFleet(t, url, "rate_limit handshakes 100/1m per user\n\t\tmax_connections_per_user 5")
	alice, bob, carol := hs256(t, claims("alice")), hs256(t, claims("bob")), hs256(t, claims("carol"))
	f.admin.want("POST", "/ws_auth/blocklist", `{"kind":"sub","value":"alice"}`, http.StatusCreated)
	eventually(t, time.Second, "alice on a", wantOutcome(t, f.a, alice, "close 1008 blocked"))

	r.Stop()
	for _, addr := range []string{f.a, f.b, f.a, f.b} {
		if got := dialOutcome(t, addr, "/ws", alice); got != "close 1008 blocked" {
			t.Errorf("alice on %s during the outage: %s, want close 1008 blocked", addr, got)
		}
		if got := dialOutcome(t, addr, "/ws", bob); got != "accepted" {
			t.Errorf("bob on %s during the outage: %s, want accepted", addr, got)
		}
	}
	f.child.WaitLog(t, "redis unreachable", 3*time.Second)
	f.admin.want("POST", "/ws_auth/blocklist", `{"kind":"sub","value":"carol"}`, http.StatusCreated)
	if got := dialOutcome(t, f.b, "/ws", carol); got != "close 1008 blocked" {
		t.Errorf("carol on b, banned there during the outage: %s, want close 1008 blocked", got)
	}
	// A removal during the outage is not undone by the sync after it.
	f.admin.want("DELETE", "/ws_auth/blocklist", `{"kind":"sub","value":"alice"}`, http.StatusOK)
	time.Sleep(1500 * time.Millisecond) // more failed pings: still one line

	r.Start()
	eventually(t, 5*time.Second, "carol's entry in redis, alice's gone", func() string {
		if got := r.Do(t, "HKEYS", "test:TestFleetOutage:blocklist"); got != "sub:carol" {
			return "HKEYS: " + got
		}
		return ""
	})
	eventually(t, 15*time.Second, "carol on a once redis is back", wantOutcome(t, f.a, carol, "close 1008 blocked"))
	eventually(t, 15*time.Second, "alice on a once redis is back", wantOutcome(t, f.a, alice, "accepted"))

	// Both instances have subscribed again: a revocation through b closes
	// a connection on a within a second, as before the outage.
	eventually(t, 10*time.Second, "both instances subscribed again", func() string {
		if got := r.Do(t, "PUBSUB", "NUMSUB", "test:TestFleetOutage:blocklist:changes"); !strings.HasSuffix(got, "\n2") {
			return "PUBSUB NUMSUB: " + got
		}
		return ""
	})
	dave := dialLive(t, liveURL(f.a, "/ws", hs256(t, claims("dave"))))
	dave.echo("dave on a")
	f.admin.want("POST", "/ws_auth/blocklist", `{"kind":"sub","value":"dave"}`, http.StatusCreated)
	if got := dave.closeWithin(time.Second); got != "close 1008 revoked" {
		t.Errorf("dave on a, revoked through b after the outage: %s, want close 1008 revoked within a second", got)
	}
	f.child.WaitLog(t, "redis reachable again", 3*time.Second)
	logs := f.child.Logs()
	if n := strings.Count(logs, "redis unreachable"); n != 1 {
		t.Errorf("the outage was logged %d times, want once:\n%s", n, logs)
	}
	if n := strings.Count(logs, "redis reachable again"); n != 1 {
		t.Errorf("the end of the outage was logged %d times, want once", n)
	}
	if got := dialOutcome(t, f.a, "/ws", bob); got != "accepted" {
		t.Errorf("bob on a after the outage: %s, want accepted", got)
	}
}

// TestFleetRedisLosesData: when Redis comes back without its data (a
// restart without persistence, a failover to an empty replica), the
// instances write their lists back rather than lift every ban.
func TestFleetRedisLosesData(t *testing.T) {
	url, r := redisURL(t)
	f := startFleet(t, url, "")
	alice := hs256(t, claims("alice"))
	f.admin.want("POST", "/ws_auth/blocklist", `{"kind":"sub","value":"alice","ttl":"1h"}`, http.StatusCreated)
	eventually(t, time.Second, "alice on a", wantOutcome(t, f.a, alice, "close 1008 blocked"))
	r.Do(t, "FLUSHALL")
	// Past a sync of each instance (every 10 s), alice is still banned on
	// both, and her entry is in Redis again.
	eventually(t, 15*time.Second, "alice's entry written back to redis", func() string {
		if got := r.Do(t, "HKEYS", "test:TestFleetRedisLosesData:blocklist"); got != "sub:alice" {
			return "HKEYS: " + got
		}
		return ""
	})
	time.Sleep(11 * time.Second) // every instance has synced since
	for _, addr := range []string{f.a, f.b} {
		if got := dialOutcome(t, addr, "/ws", alice); got != "close 1008 blocked" {
			t.Errorf("alice on %s after redis lost its data: %s, want close 1008 blocked", addr, got)
		}
	}
}

// TestFleetRedisRefuses: a Redis that refuses the store's scripts (an ACL
// without EVALSHA) is not an outage: limits are counted locally, and the
// refusal is logged once, not per handshake.
func TestFleetRedisRefuses(t *testing.T) {
	_, r := redisURL(t)
	if got := r.Do(t, "ACL", "SETUSER", "noscripts", "on", ">pw", "~*", "&*", "+@all", "-evalsha", "-eval"); got != "OK" {
		t.Fatalf("ACL SETUSER: %s", got)
	}
	f := startFleet(t, "redis://noscripts:pw@"+r.Addr, "rate_limit handshakes 2/1m per user")
	alice := hs256(t, claims("alice"))
	for i := range 2 {
		if got := dialOutcome(t, f.b, "/ws", alice); got != "accepted" {
			t.Fatalf("alice's handshake %d on b: %s, want accepted", i+1, got)
		}
	}
	if got := dialOutcome(t, f.b, "/ws", alice); got != "close 1013 rate_limited" {
		t.Errorf("alice's third handshake on b: %s, want close 1013 rate_limited (counted locally)", got)
	}
	logs := f.child.Logs()
	if n := strings.Count(logs, "redis refused a command"); n != 1 {
		t.Errorf("the refusal was logged %d times, want once:\n%s", n, logs)
	}
	if strings.Contains(logs, "redis unreachable") {
		t.Errorf("a refused command was taken for an outage:\n%s", logs)
	}
	if strings.Contains(logs, ":pw@") {
		t.Errorf("the log holds the password")
	}
}
