package wsauth

import (
	"hash/maphash"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/golang-jwt/jwt/v5"

	"github.com/caddyserver/caddy/v2"
)

// TestBlockedAndRateLimited completes the table of TestRejections with the
// two reasons that need state: blocked (1008 / 403) and rate_limited
// (1013 / 429 with Retry-After), in both modes, through a real Caddy.
func TestBlockedAndRateLimited(t *testing.T) {
	list := filepath.Join(t.TempDir(), "blocklist.txt")
	past := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	future := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	if err := os.WriteFile(list, []byte(`# blocked for the test
sub:mallory
jti:jti-revoked   `+future+`
sub:paroled       `+past+` # expired: no longer blocked
`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{"close", "status"} {
		t.Run(mode, func(t *testing.T) {
			up := newUpstream(t)
			addr := startCaddy(t, site("blocklist_file "+list+"\n\t\trate_limit handshakes 2/1h per user\n\t\treject "+mode), up.addr())
			try := func(user string, mods ...func(jwt.MapClaims)) (string, string) {
				c, resp, err := dial(addr, "/ws", dialOpts{query: "token=" + hs256(t, claims(user, mods...))})
				got := outcome(t, c, resp, err)
				return got, resp.Header.Get("Retry-After")
			}
			want := func(code, status string) string {
				if mode == "close" {
					return code
				}
				return status
			}
			if got, _ := try("mallory"); got != want("close 1008 blocked", "status 403") {
				t.Errorf("blocked user: %s", got)
			}
			if got, _ := try("alice", func(c jwt.MapClaims) { c["jti"] = "jti-revoked" }); got != want("close 1008 blocked", "status 403") {
				t.Errorf("blocked jti: %s", got)
			}
			if got, _ := try("paroled"); got != "accepted" {
				t.Errorf("user whose entry expired: %s", got)
			}
			for i := 1; i <= 2; i++ {
				if got, _ := try("alice"); got != "accepted" {
					t.Fatalf("alice's handshake %d of 2: %s", i, got)
				}
			}
			got, retry := try("alice")
			if got != want("close 1013 rate_limited", "status 429") {
				t.Errorf("alice's third handshake: %s", got)
			}
			if mode == "status" {
				// 2 per hour: the next one is due 30 minutes after the first.
				if s, err := strconv.Atoi(retry); err != nil || s < 1790 || s > 1800 {
					t.Errorf("Retry-After = %q, want about 1800 seconds", retry)
				}
			}
			if got, _ := try("bob"); got != "accepted" {
				t.Errorf("another user is not limited by alice's rate: %s", got)
			}
			// 1 paroled, 2 alice, 1 bob: nothing refused reached the upstream.
			if n := len(up.requests()); n != 4 {
				t.Errorf("upstream saw %d upgrades, want 4", n)
			}
		})
	}
}

// TestRateLimitPerIP counts every attempt of a client IP, before the token.
func TestRateLimitPerIP(t *testing.T) {
	up := newUpstream(t)
	addr := startCaddy(t, site("rate_limit handshakes 3/1h"), up.addr())
	for i := 1; i <= 3; i++ {
		c, resp, err := dial(addr, "/ws", dialOpts{})
		if got := outcome(t, c, resp, err); got != "close 1008 missing" {
			t.Fatalf("attempt %d: %s", i, got)
		}
	}
	c, resp, err := dial(addr, "/ws", dialOpts{query: "token=" + hs256(t, claims("alice"))})
	if got := outcome(t, c, resp, err); got != "close 1013 rate_limited" {
		t.Errorf("fourth attempt from the same IP, valid token: %s", got)
	}
}

// TestBlocklistReload: a changed file is put in force; one that does not
// parse keeps the previous list.
func TestBlocklistReload(t *testing.T) {
	list := filepath.Join(t.TempDir(), "blocklist.txt")
	if err := os.WriteFile(list, []byte("sub:nobody\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	defer func(d time.Duration) { blocklistPoll = d }(blocklistPoll)
	blocklistPoll = 50 * time.Millisecond
	up := newUpstream(t)
	addr := startCaddy(t, site("blocklist_file "+list), up.addr())
	try := func() string {
		c, resp, err := dial(addr, "/ws", dialOpts{query: "token=" + hs256(t, claims("alice"))})
		return outcome(t, c, resp, err)
	}
	if got := try(); got != "accepted" {
		t.Fatalf("before: %s", got)
	}
	if err := os.WriteFile(list, []byte("sub:nobody\nsub:alice\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "alice blocked after the file changed", func() bool { return try() == "close 1008 blocked" })

	// A broken version: the previous list (alice blocked) stays in force.
	if err := os.WriteFile(list, []byte("sub:nobody\nbogus line here\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2*blocklistPoll + 500*time.Millisecond)
	if got := try(); got != "close 1008 blocked" {
		t.Errorf("after a broken version: %s, want the previous list in force", got)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for: %s", what)
}

func TestParseBlocklist(t *testing.T) {
	b, err := parseBlocklist(strings.NewReader("\uFEFFip:10.0.0.0/8\nip:2001:db8::/32 2099-01-01T00:00:00Z\nip:192.0.2.7\nip:::ffff:198.51.100.1\n" +
		"ip:::ffff:172.16.0.0/108 # mapped CIDR\nip:fe80::/10\njti:abc#def\n"))
	if err != nil {
		t.Fatal(err)
	}
	n := time.Now()
	for ip, want := range map[string]bool{
		"10.1.2.3": true, "11.0.0.1": false, "2001:db8::1": true, "2001:db9::1": false,
		"192.0.2.7": true, "192.0.2.8": false, "198.51.100.1": true, "::ffff:10.0.0.1": true, "junk": false,
		"172.16.9.9": true, "::ffff:172.16.9.9": true, "172.32.0.1": false, "fe80::1%eth0": true,
	} {
		if got := b.blockedIP(ip, n); got != want {
			t.Errorf("blockedIP(%q) = %v, want %v", ip, got, want)
		}
	}
	if !b.blockedToken("abc#def", "x", n) || b.blockedToken("abc", "x", n) {
		t.Error(`"jti:abc#def" must block the jti abc#def, and only it`)
	}
	for in, line := range map[string]string{
		"ip:::ffff:10.0.0.0/90\n":               "line 1",
		"ip:fe80::1%eth0\n":                     "line 1",
		"sub:a\n" + strings.Repeat("x", 70<<10): "line 2",
		"sub:a\nfoo:b\n":                        "line 2",
		"jti:\n":                                "line 1",
		"\n\nip:300.1.1.1\n":                    "line 3",
		"ip:10.0.0.0/33\n":                      "line 1",
		"sub:a tomorrow\n":                      "line 1",
		"sub:a 2099-01-01T00:00:00Z x":          "line 1",
	} {
		if _, err := parseBlocklist(strings.NewReader(in)); err == nil || !strings.Contains(err.Error(), line) {
			t.Errorf("parseBlocklist(%q) = %v, want an error naming %s", in, err, line)
		}
	}
}

// TestParseBlocklistQuoted: a double-quoted value holds any user, jti or
// address, with Go escapes; unquoted values read as before.
func TestParseBlocklistQuoted(t *testing.T) {
	exp := time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name, line string
		kind       string // jti, sub or ip
		value      string
		expires    time.Time
	}{
		{"space", `sub:"John Doe"`, "sub", "John Doe", time.Time{}},
		{"quotes and hash", `sub:"has \"quotes\" and # hash"`, "sub", `has "quotes" and # hash`, time.Time{}},
		{"backslash", `sub:"a\\b"`, "sub", `a\b`, time.Time{}},
		{"jti with space", `jti:"a b"`, "jti", "a b", time.Time{}},
		{"unicode escape", `sub:"Ren\u00e9e"`, "sub", "Renée", time.Time{}},
		{"unicode literal", `sub:"Renée 日本"`, "sub", "Renée 日本", time.Time{}},
		{"tab inside", "sub:\"a\tb\"", "sub", "a\tb", time.Time{}},
		{"escaped tab", `sub:"a\tb"`, "sub", "a\tb", time.Time{}},
		{"leading and trailing spaces", `sub:"  x  "`, "sub", "  x  ", time.Time{}},
		{"only a hash", `jti:"#"`, "jti", "#", time.Time{}},
		{"expiry", `sub:"John Doe" 2099-01-01T00:00:00Z`, "sub", "John Doe", exp},
		{"expiry after a tab", "sub:\"John Doe\"\t2099-01-01T00:00:00Z", "sub", "John Doe", exp},
		{"comment", `sub:"John Doe" # a comment "with quotes`, "sub", "John Doe", time.Time{}},
		{"expiry and comment", `  sub:"John Doe"   2099-01-01T00:00:00Z   # until then`, "sub", "John Doe", exp},
		{"quoted ip", `ip:"192.0.2.7"`, "ip", "192.0.2.7", time.Time{}},
		{"quoted cidr", `ip:"10.0.0.0/8" 2099-01-01T00:00:00Z`, "ip", "10.1.2.3", exp},
		// Unquoted values read exactly as before.
		{"unquoted", `sub:mallory`, "sub", "mallory", time.Time{}},
		{"unquoted hash inside", `jti:abc#def`, "jti", "abc#def", time.Time{}},
		{"unquoted quote inside", `sub:o"neil`, "sub", `o"neil`, time.Time{}},
		{"unquoted comment", `jti:abc #def`, "jti", "abc", time.Time{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := parseBlocklist(strings.NewReader("# first line\n" + tc.line + "\n"))
			if err != nil {
				t.Fatalf("parseBlocklist(%q): %v", tc.line, err)
			}
			var got time.Time
			var ok bool
			switch tc.kind {
			case "jti":
				got, ok = b.jti[tc.value]
				ok = ok && len(b.jti) == 1 && len(b.sub) == 0
			case "sub":
				got, ok = b.sub[tc.value]
				ok = ok && len(b.sub) == 1 && len(b.jti) == 0
			case "ip":
				ok = len(b.nets) == 1 && b.blockedIP(tc.value, time.Now())
				for _, e := range b.nets {
					got = e
				}
			}
			if !ok {
				t.Fatalf("parseBlocklist(%q) = jti %q sub %q nets %v, want only %s %q", tc.line, b.jti, b.sub, b.nets, tc.kind, tc.value)
			}
			if !got.Equal(tc.expires) {
				t.Errorf("parseBlocklist(%q): expiry %v, want %v", tc.line, got, tc.expires)
			}
		})
	}

	for in, want := range map[string]string{
		"sub:a\nsub:\"John Doe\n":                        "line 2: ",
		"sub:a\nsub:\"John Doe\\\"\n":                    "line 2: ",
		"sub:\"a\\qb\"\n":                                "line 1: ",
		"sub:\"\\ud800\"\n":                              "line 1: ",
		"jti:\"a\\'b\"\n":                                "line 1: ",
		"\n\nsub:\"\"\n":                                 "line 3: ",
		"sub:\"\" 2099-01-01T00:00:00Z\n":                "line 1: ",
		"sub:\"a\"b\n":                                   "line 1: ",
		"sub:\"a\"#b\n":                                  "line 1: ",
		"sub:\"a\" tomorrow\n":                           "line 1: ",
		"sub:\"a\" 2099-01-01T00:00:00Z x\n":             "line 1: ",
		"sub:\"John\" Doe\n":                             "line 1: ",
		"ip:\"300.1.1.1\"\n":                             "line 1: ",
		"ip:\" 10.0.0.1\"\n":                             "line 1: ",
		"sub:John Doe\n":                                 "line 1: ",
		"sub:\"\\xff\"\n":                                "line 1: ",
		"# \"unterminated in a comment is fine\nsub:\"a": "line 2: ",
		":foo\n":           "line 1: ",
		"sub:\"\n":         "line 1: ",
		"sub:\"a\\\n":      "line 1: ",
		"sub:\"a\xffb\"\n": "line 1: ",
	} {
		_, err := parseBlocklist(strings.NewReader(in))
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("parseBlocklist(%q) = %v, want an error starting %q", in, err, want)
		}
	}
}

// FuzzParseBlocklistQuoted: any user ID can be written in the file, as
// strconv.Quote writes it, and read back as is; no line panics.
func FuzzParseBlocklistQuoted(f *testing.F) {
	for _, s := range []string{"John Doe", `a "b" # c`, "Renée\t日本", `\`, "#", " ", "\x00", "\u2028"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		_, _ = parseBlocklist(strings.NewReader(v)) // no panic on any line
		if v == "" || !utf8.ValidString(v) {
			return
		}
		line := "sub:" + strconv.Quote(v) + " 2099-01-01T00:00:00Z # c"
		b, err := parseBlocklist(strings.NewReader(line))
		if err != nil {
			t.Fatalf("parseBlocklist(%q): %v", line, err)
		}
		if _, ok := b.sub[v]; !ok || len(b.sub) != 1 {
			t.Fatalf("parseBlocklist(%q) = %q, want only %q", line, b.sub, v)
		}
	})
}

// TestBlocklistQuotedUser: with user_claim name, `sub:"John Doe"` blocks the
// user John Doe, and the other entries of the file apply too, through a
// real Caddy.
func TestBlocklistQuotedUser(t *testing.T) {
	list := filepath.Join(t.TempDir(), "blocklist.txt")
	if err := os.WriteFile(list, []byte(`sub:"John Doe"            # a name with a space
sub:"Zo\u00eb \"Z\" Smith" 2099-01-01T00:00:00Z
sub:mallory
`), 0o600); err != nil {
		t.Fatal(err)
	}
	up := newUpstream(t)
	addr := startCaddy(t, site("user_claim name\n\t\tblocklist_file "+list), up.addr())
	try := func(name string) string {
		tok := hs256(t, claims("id-"+strings.ReplaceAll(name, " ", "-"), func(c jwt.MapClaims) { c["name"] = name }))
		c, resp, err := dial(addr, "/ws", dialOpts{query: "token=" + tok})
		return outcome(t, c, resp, err)
	}
	for name, want := range map[string]string{
		"John Doe":        "close 1008 blocked",
		`Zoë "Z" Smith`:   "close 1008 blocked",
		"mallory":         "close 1008 blocked",
		"John":            "accepted",
		"John Doe Junior": "accepted",
		"Jane Doe":        "accepted",
		`"John Doe"`:      "accepted",
	} {
		if got := try(name); got != want {
			t.Errorf("name %q: %s, want %s", name, got, want)
		}
	}
	reqs := up.requests()
	if len(reqs) != 4 {
		t.Fatalf("upstream saw %d upgrades, want 4", len(reqs))
	}
	for _, r := range reqs {
		if u := r.Header.Get("X-User"); u == "John Doe" || u == "mallory" {
			t.Errorf("a blocked user reached the upstream: %q", u)
		}
	}
}

func TestRateLimiter(t *testing.T) {
	l := newRateLimiter(3, time.Minute, false)
	t0 := time.Unix(1_700_000_000, 0)
	for i := 0; i < 3; i++ {
		if ok, _ := l.Allow("k", t0); !ok {
			t.Fatalf("event %d of the burst refused", i+1)
		}
	}
	ok, wait := l.Allow("k", t0)
	if ok || wait != 20*time.Second {
		t.Errorf("fourth event: ok=%v wait=%v, want refused for 20s", ok, wait)
	}
	if ok, _ := l.Allow("k", t0.Add(20*time.Second)); !ok {
		t.Errorf("event after the wait refused")
	}
	// A flood of distinct keys stays bounded.
	for i := 0; i < maxRateKeys+1000; i++ {
		l.Allow(strconv.Itoa(i), t0)
	}
	if n := len(l.tat); n > maxRateKeys {
		t.Errorf("limiter holds %d keys, bound is %d", n, maxRateKeys)
	}
	// Keys idle since are forgotten first.
	for i := 0; i < maxRateKeys; i++ {
		l.Allow("late"+strconv.Itoa(i), t0.Add(time.Hour))
	}
	for _, k := range []string{"late0", "late" + strconv.Itoa(maxRateKeys/2), "late" + strconv.Itoa(maxRateKeys-1)} {
		if _, ok := l.tat[maphash.String(l.seed, k)]; !ok {
			t.Errorf("key %s, active, was evicted while idle keys were there", k)
		}
	}
	if n := len(l.tat); n > maxRateKeys {
		t.Errorf("limiter holds %d keys, bound is %d", n, maxRateKeys)
	}
}

func caddyDuration(d time.Duration) caddy.Duration { return caddy.Duration(d) }

// TestLimitsSurviveReload: the handshake counters and the blocklist are the
// process's, not the config's: a reload neither resets a user's rate nor
// reads the blocklist anew.
func TestLimitsSurviveReload(t *testing.T) {
	list := filepath.Join(t.TempDir(), "blocklist.txt")
	if err := os.WriteFile(list, []byte("sub:mallory\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	up := newUpstream(t)
	cfg := site("rate_limit handshakes 2/1h per user\n\t\tblocklist_file " + list)
	addr := startCaddy(t, cfg, up.addr())
	try := func(user string) string {
		c, resp, err := dialSettled(addr, "/ws", dialOpts{query: "token=" + hs256(t, claims(user))})
		return outcome(t, c, resp, err)
	}
	for i := 0; i < 2; i++ {
		if got := try("alice"); got != "accepted" {
			t.Fatalf("before the reload: %s", got)
		}
	}
	if err := loadCaddyfile(testConfig(addr, cfg, up.addr())); err != nil { // a forced reload
		t.Fatal(err)
	}
	if got := try("alice"); got != "close 1013 rate_limited" {
		t.Errorf("after a reload, alice's third handshake: %s, want still rate_limited", got)
	}
	if got := try("mallory"); got != "close 1008 blocked" {
		t.Errorf("after a reload, mallory: %s", got)
	}
}

func TestRateLimitKeys(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.1":            "192.0.2.1",
		"2001:db8:1:2:3:4:5:6": "2001:db8:1:2::/64",
		"2001:db8:1:2:ffff::1": "2001:db8:1:2::/64",
		"fe80::1%eth0":         "fe80::/64",
		"::ffff:192.0.2.1":     "::ffff:192.0.2.1",
		"not-an-ip":            "not-an-ip",
	} {
		if got := ipKey(in); got != want {
			t.Errorf("ipKey(%q) = %q, want %q", in, got, want)
		}
	}
	if userKey("https://a", "alice") == userKey("https://b", "alice") {
		t.Error("the same user name at two issuers shares a rate")
	}
	for _, bad := range []HandshakeRate{{Events: 1, Window: caddyDuration(400 * 24 * time.Hour)}, {Events: 1000, Window: caddyDuration(time.Millisecond)}} {
		if err := bad.check(); err == nil {
			t.Errorf("rate_limit handshakes %+v: no error", bad)
		}
	}
}

// TestBlocklistReplacedSameSizeAndTime: a file replaced by another of the
// same size and modification time (cp -p, rsync -t) is still seen as new.
func TestBlocklistReplacedSameSizeAndTime(t *testing.T) {
	dir := t.TempDir()
	list := filepath.Join(dir, "blocklist.txt")
	if err := os.WriteFile(list, []byte("sub:alice\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bf, key, err := acquireBlocklist(list)
	if err != nil {
		t.Fatal(err)
	}
	defer releaseBlocklist(key)
	bf.cancel() // the test plays the watcher
	old, _ := os.Stat(list)

	next := filepath.Join(dir, "next.txt")
	if err := os.WriteFile(next, []byte("sub:bobby\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(next, old.ModTime(), old.ModTime()); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(next, list); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(list)
	if fi.Size() != old.Size() || !fi.ModTime().Equal(old.ModTime()) {
		t.Fatal("test setup: the replacement differs in size or time")
	}
	if !bf.changed(fi) {
		t.Fatal("a replaced file of the same size and time is not seen as changed")
	}
	if err := bf.reload(); err != nil {
		t.Fatal(err)
	}
	if n := time.Now(); !bf.list().blockedToken("", "bobby", n) || bf.list().blockedToken("", "alice", n) {
		t.Error("the replacement is not in force")
	}
}

// TestBlocklistFileNotRegular: a blocklist_file that is not a regular file
// fails the config load, naming the option and the file, instead of
// hanging it (a FIFO blocks the open until a writer comes) or reading a
// device.
func TestBlocklistFileNotRegular(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "blocklist.fifo")
	mkfifo(t, fifo)
	for _, file := range []string{fifo, dir, "/dev/zero"} {
		t.Run(file, func(t *testing.T) {
			if _, err := os.Lstat(file); err != nil {
				t.Skipf("%s: %v", file, err)
			}
			stage, err := validateSite("\tws_auth {\n\t\tsecret " + validateSecret + "\n\t\tblocklist_file " + file + "\n\t}")
			if err == nil {
				t.Fatal("config loaded, want an error")
			}
			if stage != "provision" {
				t.Errorf("error at %s, want at provision: %v", stage, err)
			}
			for _, w := range []string{"blocklist_file " + file + ": ", "not a regular file"} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error\n\t%v\nwant it to contain %q", err, w)
				}
			}
		})
	}
}
