package wsauth

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestMemoryBlocklist: the list the admin API writes: entries of each
// kind are added, replaced, expire and are removed, and every change is
// told to the subscribers.
func TestMemoryBlocklist(t *testing.T) {
	m := newMemoryBlocklist()
	changes := make(chan struct{}, 16)
	cancel := m.Subscribe(func() { changes <- struct{}{} })
	defer cancel()
	waitChange := func(what string) {
		t.Helper()
		select {
		case <-changes:
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: no change told to the subscriber", what)
		}
	}
	now := time.Now()
	for _, e := range []Entry{
		{Kind: "sub", Value: "John Doe"},
		{Kind: "jti", Value: "t-1", Expires: now.Add(time.Minute)},
		{Kind: "ip", Value: "203.0.113.0/24"},
		{Kind: "ip", Value: "2001:db8::1"},
	} {
		if err := m.Add(e); err != nil {
			t.Fatal(err)
		}
		waitChange("add " + e.Value)
	}
	for _, bad := range []Entry{{Kind: "user", Value: "x"}, {Kind: "ip", Value: "not-an-ip"}} {
		if err := m.Add(bad); err == nil {
			t.Errorf("Add(%v): no error", bad)
		}
	}
	if !m.BlockedToken("", "John Doe", now) || m.BlockedToken("", "John", now) {
		t.Error("sub entry")
	}
	if !m.BlockedToken("t-1", "x", now) || m.BlockedToken("t-1", "x", now.Add(2*time.Minute)) {
		t.Error("jti entry with its expiry")
	}
	if !m.BlockedIP("203.0.113.9", now) || !m.BlockedIP("::ffff:203.0.113.9", now) || m.BlockedIP("203.0.114.9", now) {
		t.Error("ip CIDR entry")
	}
	if !m.BlockedIP("2001:db8::1%eth0", now) {
		t.Error("ip address entry, zoned client address")
	}
	if found, err := m.Remove("ip", "203.0.113.0/24"); !found || err != nil {
		t.Fatalf("Remove: %v %v", found, err)
	}
	waitChange("remove")
	if m.BlockedIP("203.0.113.9", now) || !m.BlockedIP("2001:db8::1", now) {
		t.Error("after removing the CIDR")
	}
	if found, _ := m.Remove("sub", "nobody"); found {
		t.Error("removed an entry that was not there")
	}
}

// TestBlocklistFileTellsSubscribers: a new version of the file put in
// force is told to the subscribers; a version that fails to parse is not.
func TestBlocklistFileTellsSubscribers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "list.txt")
	if err := os.WriteFile(path, []byte("sub:a\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bf, key, err := acquireBlocklist(path)
	if err != nil {
		t.Fatal(err)
	}
	defer releaseBlocklist(key)
	bf.cancel() // the test plays the watcher
	changes := make(chan struct{}, 4)
	defer bf.Subscribe(func() { changes <- struct{}{} })()

	if err := os.WriteFile(path, []byte("sub:a b\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := bf.reload(); err == nil {
		t.Fatal("a bad version loaded")
	}
	if err := os.WriteFile(path, []byte("sub:b\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := bf.reload(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changes:
	case <-time.After(5 * time.Second):
		t.Fatal("the new version was not told")
	}
	if len(changes) != 0 {
		t.Errorf("%d more changes told, want 1", len(changes))
	}
	var list Blocklist = unionBlocklist{bf, newMemoryBlocklist()}
	if !list.BlockedToken("", "b", time.Now()) || list.BlockedToken("", "a", time.Now()) {
		t.Error("the union does not read the new version")
	}
}

// TestRuntimeBlocklistRefuses: an entry added at run time (as the admin
// API will) refuses the next handshake of every handler, with or without
// a blocklist file.
func TestRuntimeBlocklistRefuses(t *testing.T) {
	up := newUpstream(t)
	addr := startCaddy(t, site(""), up.addr())
	if err := runtimeBlocklist.Add(Entry{Kind: "sub", Value: "mallory"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = runtimeBlocklist.Remove("sub", "mallory") })
	for user, want := range map[string]string{"mallory": "close 1008 blocked", "alice": "accepted"} {
		c, resp, err := dial(addr, "/ws", dialOpts{query: "token=" + hs256(t, claims(user))})
		if got := outcome(t, c, resp, err); got != want {
			t.Errorf("%s: %s, want %s", user, got, want)
		}
	}
}
