package wsauth

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Tests of a fleet whose store URL names a Redis Sentinel (`redis
// redis://<sentinel>?master_name=<name>`, README "Running a fleet"): the
// two instances of fleet_test.go learn the master's address from a real
// Sentinel, which the test runs with `redis-server --sentinel`, and never
// see the master's address themselves.

// sentinelMaster is the master name that startRedisSentinel's Sentinel
// monitors.
const sentinelMaster = "mymaster"

// A redisSentinel is a master redis-server, maybe a replica of it, and
// one Redis Sentinel that monitors them, each a process of the test on a
// loopback port.
type redisSentinel struct {
	Master   *redisServer
	Replica  *redisServer // nil unless asked for
	Sentinel *redisServer
}

// URL is the store URL that names the Sentinel alone.
func (s *redisSentinel) URL() string {
	return "redis://" + s.Sentinel.Addr + "?master_name=" + sentinelMaster
}

// MasterAddr is the master's address as the Sentinel answers it
// (get-master-addr-by-name), or an error's text.
func (s *redisSentinel) MasterAddr() string {
	reply, err := redisCommand(s.Sentinel.Addr, "SENTINEL", "get-master-addr-by-name", sentinelMaster)
	if err != nil {
		return err.Error()
	}
	return strings.Replace(reply, "\n", ":", 1)
}

// Outputs returns what the servers printed so far, each under its name.
func (s *redisSentinel) Outputs() string {
	var b strings.Builder
	for _, r := range []struct {
		name string
		r    *redisServer
	}{{"sentinel", s.Sentinel}, {"master", s.Master}, {"replica", s.Replica}} {
		if r.r != nil {
			fmt.Fprintf(&b, "--- %s %s ---\n%s", r.name, r.r.Addr, r.r.Output())
		}
	}
	return b.String()
}

// startRedisSentinel starts a redis-server (the master), with replica a
// second one replicating it, and a Redis Sentinel that monitors the master
// as sentinelMaster, all on free loopback ports. It waits until the
// Sentinel answers the master's address and has reached the master (and
// knows the replica), so that the Sentinel would fail over to the replica
// two seconds after the master stops answering. All stop when the test
// ends, the Sentinel first. Without redis-server the test is skipped (see
// requireServer).
func startRedisSentinel(t testing.TB, replica bool) *redisSentinel {
	t.Helper()
	requireRedis(t)
	// A replica's first sync waits for no more replicas (by default the
	// master waits 5 s for them).
	s := &redisSentinel{Master: launchRedis(t, freePort(t), t.TempDir(), "--repl-diskless-sync-delay", "0")}
	if replica {
		host, port, _ := strings.Cut(s.Master.Addr, ":")
		s.Replica = launchRedis(t, freePort(t), t.TempDir(), "--replicaof", host, port)
		// The Sentinel learns of the replica from the master's INFO, which
		// it reads at once and then every 10 s: the replica is linked first.
		waitRedis(t, redisWait, "the replica's link to its master", func() string {
			info, err := redisCommand(s.Replica.Addr, "INFO", "replication")
			if err != nil {
				return err.Error()
			}
			if !strings.Contains(info, "master_link_status:up") {
				return info
			}
			return ""
		}, s.Outputs)
	}

	// The Sentinel rewrites its configuration file (its ID, the epochs,
	// the master it follows), so the file lives in the test's directory.
	dir := t.TempDir()
	port := freePort(t)
	conf := filepath.Join(dir, "sentinel.conf")
	text := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %q\nsentinel monitor %s %s 1\nsentinel down-after-milliseconds %s 2000\n",
		port, dir, sentinelMaster, strings.Replace(s.Master.Addr, ":", " ", 1), sentinelMaster)
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	s.Sentinel = &redisServer{
		Addr: fmt.Sprintf("127.0.0.1:%d", port),
		t:    t,
		args: []string{conf, "--sentinel"},
	}
	t.Cleanup(func() {
		if s.Sentinel.running() {
			s.Sentinel.Stop()
		}
	})
	s.Sentinel.Start()

	// The Sentinel answers the address from its configuration at once;
	// the master's flags lose "disconnected" once it has reached it.
	waitRedis(t, redisWait, "the sentinel answering its master", func() string {
		if got := s.MasterAddr(); got != s.Master.Addr {
			return "get-master-addr-by-name: " + got
		}
		info, err := redisCommand(s.Sentinel.Addr, "SENTINEL", "master", sentinelMaster)
		if err != nil {
			return err.Error()
		}
		if flags := redisFields(info)["flags"]; flags != "master" {
			return "the master's flags: " + flags
		}
		if replica {
			info, err := redisCommand(s.Sentinel.Addr, "SENTINEL", "replicas", sentinelMaster)
			if err != nil {
				return err.Error()
			}
			if f := redisFields(info); f["name"] != s.Replica.Addr || f["flags"] != "slave" {
				return "the replicas: " + strings.ReplaceAll(info, "\n", " ")
			}
		}
		return ""
	}, s.Outputs)
	return s
}

// waitRedis is eventually, failing with the servers' outputs too.
func waitRedis(t testing.TB, d time.Duration, what string, try func() string, outputs func() string) {
	t.Helper()
	eventually(t, d, what, try, outputs)
}

// redisFields reads a reply of field-value pairs, as redisDo flattens it
// (one per line, field first), into a map. Of an array of such replies
// (SENTINEL replicas), the first one's fields win.
func redisFields(reply string) map[string]string {
	lines := strings.Split(reply, "\n")
	m := make(map[string]string, len(lines)/2)
	for i := 0; i+1 < len(lines); i += 2 {
		if _, ok := m[lines[i]]; !ok {
			m[lines[i]] = lines[i+1]
		}
	}
	return m
}

// sentinelURL starts a master and its Sentinel for the test and returns
// the store URL that names the Sentinel alone, with the master.
func sentinelURL(t *testing.T) (string, *redisServer) {
	t.Helper()
	s := startRedisSentinel(t, false)
	return s.URL(), s.Master
}

func TestFleetSentinelRevoke(t *testing.T) {
	url, master := sentinelURL(t)
	testFleetRevoke(t, url)
	// Both instances listen for the list's changes on the master.
	channel := "test:" + t.Name() + ":blocklist:changes"
	if got := master.Do(t, "PUBSUB", "NUMSUB", channel); got != channel+"\n2" {
		t.Errorf("PUBSUB NUMSUB on the master: %q, want the two instances subscribed to %s", got, channel)
	}
}

func TestFleetSentinelLimits(t *testing.T) {
	url, master := sentinelURL(t)
	testFleetLimits(t, url)
	// The counts went to the master: the rates stay there for their
	// window, and the ban for its minute. (The cap's counts may be gone,
	// as their connections have closed.)
	for _, sub := range []string{"rate", "block_after"} {
		pattern := "test:" + t.Name() + "_" + sub + ":*"
		if got := master.Do(t, "KEYS", pattern); got == "" {
			t.Errorf("no key %s on the master", pattern)
		}
	}
}

// TestFleetSentinelAddrs: the URL's host is a Sentinel that does not
// answer and the one that does is an addr parameter; go-redis asks them
// all, so the fleet works as with one Sentinel.
func TestFleetSentinelAddrs(t *testing.T) {
	s := startRedisSentinel(t, false)
	dead := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	testFleetRevoke(t, "redis://"+dead+"?master_name="+sentinelMaster+"&addr="+s.Sentinel.Addr)
}

// TestFleetSentinelFailover: when the master dies, the Sentinel promotes
// the replica and the fleet follows it: the ban made before the failover
// holds, a ban made during it reaches Redis and the other instance, and
// one made after it reaches the other instance at once, through the
// subscription on the new master.
func TestFleetSentinelFailover(t *testing.T) {
	s := startRedisSentinel(t, true)
	f := startFleet(t, s.URL(), "")
	alice, carol, dave := hs256(t, claims("alice")), hs256(t, claims("carol")), hs256(t, claims("dave"))
	list := "test:" + t.Name() + ":blocklist"
	f.admin.want("POST", "/ws_auth/blocklist", `{"kind":"sub","value":"alice"}`, http.StatusCreated)
	eventually(t, time.Second, "alice on a", wantOutcome(t, f.a, alice, "close 1008 blocked"))
	eventually(t, time.Second, "alice's entry on the replica", func() string {
		if got := s.Replica.Do(t, "HKEYS", list); got != "sub:alice" {
			return "HKEYS: " + got
		}
		return ""
	})

	start := time.Now()
	s.Master.Stop()
	f.admin.want("POST", "/ws_auth/blocklist", `{"kind":"sub","value":"carol"}`, http.StatusCreated)
	waitRedis(t, 30*time.Second, "the sentinel promoting the replica", func() string {
		if got := s.MasterAddr(); got != s.Replica.Addr {
			return "get-master-addr-by-name: " + got
		}
		return ""
	}, s.Outputs)
	t.Logf("the sentinel answered the replica %v after the master was killed", time.Since(start))

	eventually(t, 15*time.Second, "carol's entry on the new master", func() string {
		if got := s.Replica.Do(t, "HKEYS", list); !strings.Contains(got, "sub:carol") {
			return "HKEYS: " + got
		}
		return ""
	})
	eventually(t, 15*time.Second, "carol on a", wantOutcome(t, f.a, carol, "close 1008 blocked"))
	t.Logf("carol, banned on b during the failover, blocked on a %v after the master was killed", time.Since(start))
	for _, addr := range []string{f.a, f.b} {
		if got := dialOutcome(t, addr, "/ws", alice); got != "close 1008 blocked" {
			t.Errorf("alice on %s after the failover: %s, want close 1008 blocked", addr, got)
		}
	}

	// Once both instances listen on the new master, a change travels
	// through its pub/sub, not the 10 s sync.
	f.child.WaitLog(t, "redis reachable again", 15*time.Second)
	channel := list + ":changes"
	eventually(t, 5*time.Second, "both instances subscribed on the new master", func() string {
		if got := s.Replica.Do(t, "PUBSUB", "NUMSUB", channel); got != channel+"\n2" {
			return "PUBSUB NUMSUB: " + strings.ReplaceAll(got, "\n", " ")
		}
		return ""
	})
	d := dialLive(t, liveURL(f.a, "/ws", dave))
	d.echo("dave on a")
	f.admin.want("POST", "/ws_auth/blocklist", `{"kind":"sub","value":"dave"}`, http.StatusCreated)
	if got := d.closeWithin(time.Second); got != "close 1008 revoked" {
		t.Errorf("dave on a, banned on b after the failover: %s, want close 1008 revoked within a second", got)
	}
}

// TestFleetSentinelSwitchover: after a failover asked of the Sentinel
// (SENTINEL FAILOVER, as for maintenance), the old master lives on, still
// a master, until the Sentinel turns it into a replica some 10 s later.
// go-redis then sends commands to the new master at once (it drops its
// pooled connections to any other address on +switch-master), but not its
// subscriptions, which stay on the old master: a change published on the
// new master meanwhile is lost, and reaches the other instance through the
// list's sync (redisSyncEvery) instead. Once the Sentinel has reconfigured
// the old master, which closes its clients, both instances subscribe on
// the new one and a change travels at once again.
func TestFleetSentinelSwitchover(t *testing.T) {
	s := startRedisSentinel(t, true)
	f := startFleet(t, s.URL(), "")
	carol, dave := hs256(t, claims("carol")), hs256(t, claims("dave"))
	list := "test:" + t.Name() + ":blocklist"
	channel := list + ":changes"

	start := time.Now()
	if got := s.Sentinel.Do(t, "SENTINEL", "FAILOVER", sentinelMaster); got != "OK" {
		t.Fatalf("SENTINEL FAILOVER: %s\n%s", got, s.Outputs())
	}
	waitRedis(t, 15*time.Second, "the sentinel promoting the replica", func() string {
		if got := s.MasterAddr(); got != s.Replica.Addr {
			return "get-master-addr-by-name: " + got
		}
		return ""
	}, s.Outputs)
	t.Logf("the sentinel answered the replica %v after SENTINEL FAILOVER", time.Since(start))
	// A write sent before an instance heard of the switch would go to the
	// old master, and be lost with its data when the Sentinel reconfigures
	// it, as Redis's replication is asynchronous: the ban waits until
	// neither instance has a command connection to the old master.
	waitRedis(t, 5*time.Second, "the instances' command connections to the old master closed", func() string {
		return commandClients(t, s.Master)
	}, s.Outputs)
	t.Logf("the old master's subscribers: %s", s.Master.Do(t, "PUBSUB", "NUMSUB", channel))

	posted := time.Now()
	f.admin.want("POST", "/ws_auth/blocklist", `{"kind":"sub","value":"carol"}`, http.StatusCreated)
	eventually(t, 2*time.Second, "carol's entry on the new master", func() string {
		if got := s.Replica.Do(t, "HKEYS", list); got != "sub:carol" {
			return "HKEYS: " + got
		}
		return ""
	})
	eventually(t, redisSyncEvery+3*time.Second, "carol on a", wantOutcome(t, f.a, carol, "close 1008 blocked"))
	t.Logf("carol, banned on b after the switch, blocked on a %v later", time.Since(posted))

	eventually(t, 30*time.Second, "both instances subscribed on the new master", func() string {
		if got := s.Replica.Do(t, "PUBSUB", "NUMSUB", channel); got != channel+"\n2" {
			return "PUBSUB NUMSUB: " + strings.ReplaceAll(got, "\n", " ")
		}
		return ""
	})
	t.Logf("both instances subscribed on the new master %v after SENTINEL FAILOVER", time.Since(start))
	d := dialLive(t, liveURL(f.a, "/ws", dave))
	d.echo("dave on a")
	f.admin.want("POST", "/ws_auth/blocklist", `{"kind":"sub","value":"dave"}`, http.StatusCreated)
	if got := d.closeWithin(time.Second); got != "close 1008 revoked" {
		t.Errorf("dave on a, banned on b once subscribed on the new master: %s, want close 1008 revoked within a second", got)
	}
}

// commandClients returns the lines of r's CLIENT LIST that are command
// connections (not subscriptions, not replicas) other than the Sentinel's
// and this call's own, or "" if there are none.
func commandClients(t *testing.T, r *redisServer) string {
	t.Helper()
	var lines []string
	for _, l := range strings.Split(r.Do(t, "CLIENT", "LIST", "TYPE", "normal"), "\n") {
		if l == "" || strings.Contains(l, " name=sentinel-") || strings.Contains(l, " cmd=client|list") {
			continue
		}
		lines = append(lines, l)
	}
	return strings.Join(lines, "\n")
}
