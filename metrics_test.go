package wsauth

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddyserver/caddy/v2"
)

// TestMetrics: through a real Caddy with its admin endpoint on, /metrics
// shows each event once: an accepted handshake, a refused one, a live
// connection in the gauge, a close at expiry, and the messages dropped by
// rate_limit messages. The counters are the process's, so the test checks
// how far each moved. After a reload, the new config's /metrics shows
// them with their values, and they go on counting.
func TestMetrics(t *testing.T) {
	up := newLiveUpstream(t)
	cfg := func(extra string) string {
		return site("rate_limit messages 1/1m per connection drop\n\t\t" + extra)
	}
	addr, admin := startCaddyAdmin(t, cfg(""), up.addr())
	waitLiveCount(t, 0)
	before := scrapeMetrics(t, admin)
	if _, ok := before[`caddy_ws_auth_connections_active`]; !ok {
		t.Fatalf("/metrics has no caddy_ws_auth_connections_active:\n%s", before)
	}

	// Accepted, live, and two messages of three dropped.
	c := dialLive(t, liveURL(addr, "/ws", hs256(t, claims("alice"))))
	waitLiveCount(t, 1)
	if got := scrapeMetrics(t, admin)[`caddy_ws_auth_connections_active`]; got != 1 {
		t.Errorf("connections_active with one connection open: %v, want 1", got)
	}
	c.send("m1")
	c.send("m2")
	c.send("m3")
	c.ping("after-3")
	if got := c.untilPinged("after-3"); !slices.Equal(got, []string{"m1"}) {
		t.Errorf("client got the echoes %q, want only m1", got)
	}
	c.close()
	waitLiveCount(t, 0)
	if got := scrapeMetrics(t, admin)[`caddy_ws_auth_connections_active`]; got != 0 {
		t.Errorf("connections_active once the connection ended: %v, want 0", got)
	}

	// Refused: no token.
	nc, resp, err := dial(addr, "/ws", dialOpts{})
	if got := outcome(t, nc, resp, err); got != "close 1008 missing" {
		t.Fatalf("without a token: %s, want close 1008 missing", got)
	}

	// Accepted, then closed at expiry.
	tok, exp := shortToken(t, "bob", 2*time.Second)
	e := dialLive(t, liveURL(addr, "/ws", tok))
	if got := e.closeWithin(time.Until(exp) + 5*time.Second); got != "close 4001 expired" {
		t.Fatalf("at the token's exp: %s, want close 4001 expired", got)
	}
	waitLiveCount(t, 0)

	after := scrapeMetrics(t, admin)
	want := map[string]float64{
		`caddy_ws_auth_handshakes_total{result="accepted"}`: 2,
		`caddy_ws_auth_handshakes_total{result="missing"}`:  1,
		`caddy_ws_auth_closed_total{reason="expired"}`:      1,
		`caddy_ws_auth_messages_dropped_total`:              2,
		// Two tokens, each verified once (the handshake without one
		// asks no cache).
		`caddy_ws_auth_token_cache_total{result="miss"}`: 2,
	}
	checkDeltas(t, before, after, want)

	// A reload: the new config's registry has the collectors, and
	// /metrics (served with it) shows the values kept.
	if err := loadCaddyfile(adminConfig(addr, admin, cfg("max_message_size 1MiB"), up.addr())); err != nil {
		t.Fatal(err)
	}
	ctx := caddy.ActiveContext()
	families, err := ctx.GetMetricsRegistry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range families {
		// credential_checks_total has series only once an opaque
		// credential was judged in the process (another test's).
		if strings.HasPrefix(f.GetName(), "caddy_ws_auth_") && f.GetName() != "caddy_ws_auth_credential_checks_total" {
			names = append(names, f.GetName())
		}
	}
	wantNames := []string{"caddy_ws_auth_closed_total", "caddy_ws_auth_connections_active",
		"caddy_ws_auth_handshakes_total", "caddy_ws_auth_messages_dropped_total", "caddy_ws_auth_token_cache_total"}
	if !slices.Equal(names, wantNames) {
		t.Errorf("the reloaded config's registry holds %q, want %q", names, wantNames)
	}
	reloaded := scrapeMetrics(t, admin)
	checkDeltas(t, after, reloaded, nil)

	c = dialLive(t, liveURL(addr, "/ws", hs256(t, claims("alice"))))
	c.echo("after the reload")
	c.close()
	waitLiveCount(t, 0)
	want[`caddy_ws_auth_handshakes_total{result="accepted"}`]++
	want[`caddy_ws_auth_token_cache_total{result="miss"}`]++ // a new config's handler has a new cache
	checkDeltas(t, before, scrapeMetrics(t, admin), want)
}

// TestMetricsRegister: a second handler of the same config registers the
// same collectors without an error or a warning, a new config's registry
// gets them with their values, and a close with a text of nobody's list is
// counted as "other".
func TestMetricsRegister(t *testing.T) {
	m := newModuleMetrics(func() int { return 3 })
	core, logs := observer.New(zap.WarnLevel)
	logger := zap.New(core)
	first := prometheus.NewPedanticRegistry()
	m.register(first, logger)
	m.register(first, logger)
	m.accepted.Inc()
	m.refused[reasonExpired].Inc()
	m.closedWith("revoked")
	m.closedWith("kicked")
	m.droppedBy("drop")
	m.droppedBy("notify")
	m.droppedBy("close")
	m.cacheHit.Inc()

	second := prometheus.NewPedanticRegistry()
	m.register(second, logger)
	m.register(nil, logger)
	if n := logs.Len(); n != 0 {
		t.Errorf("registering twice logged %d warnings, want none", n)
	}
	got := gathered(t, second)
	want := map[string]float64{
		`caddy_ws_auth_handshakes_total{result="accepted"}`: 1,
		`caddy_ws_auth_handshakes_total{result="expired"}`:  1,
		`caddy_ws_auth_handshakes_total{result="missing"}`:  0,
		`caddy_ws_auth_closed_total{reason="revoked"}`:      1,
		`caddy_ws_auth_closed_total{reason="other"}`:        1,
		`caddy_ws_auth_closed_total{reason="too_big"}`:      0,
		`caddy_ws_auth_messages_dropped_total`:              2,
		`caddy_ws_auth_connections_active`:                  3,
		`caddy_ws_auth_token_cache_total{result="hit"}`:     1,
		`caddy_ws_auth_token_cache_total{result="miss"}`:    0,
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
		}
	}
	if n := len(got); n != 1+int(numReasons)+int(numReasons)+len(closeTexts)+1+1+2 {
		t.Errorf("%d series, want one per result, one per close reason, the two without labels and the cache's two", n)
	}

	// A collector of the same name from elsewhere: a warning, no panic.
	third := prometheus.NewPedanticRegistry()
	third.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "caddy_ws_auth_messages_dropped_total", Help: "x"}))
	m.register(third, logger)
	if n := logs.Len(); n != 1 {
		t.Errorf("a clash logged %d warnings, want 1", n)
	}
}

// TestMetricsAllocs: counting an event allocates nothing.
func TestMetricsAllocs(t *testing.T) {
	m := newModuleMetrics(func() int { return 0 })
	if n := testing.AllocsPerRun(100, func() {
		m.accepted.Inc()
		m.refused[reasonMissing].Inc()
		m.closedWith("expired")
		m.closedWith("kicked")
		m.droppedBy("drop")
	}); n != 0 {
		t.Errorf("counting allocates %v times, want 0", n)
	}
}

// startCaddyAdmin is startCaddy with the admin endpoint on a free loopback
// port, whose address it returns too. The test may reload with
// adminConfig and the same addresses. Once the test ends, Caddy stops and
// so does the admin endpoint.
func startCaddyAdmin(t *testing.T, site, upstream string) (addr, admin string) {
	t.Helper()
	caddyMu.Lock()
	t.Cleanup(caddyMu.Unlock)

	addr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	admin = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg := adminConfig(addr, admin, site, upstream)
	if err := loadCaddyfile(cfg); err != nil {
		t.Fatalf("loading config: %v\n%s", err, cfg)
	}
	t.Cleanup(func() {
		_ = caddy.Stop()
		// Caddy.Stop leaves the admin endpoint up; a config without one
		// stops it.
		_ = caddy.Load([]byte(`{"admin":{"disabled":true}}`), true)
		_ = caddy.Stop()
	})
	waitListening(t, addr)
	waitListening(t, admin)
	return addr, admin
}

// adminConfig is testConfig with the admin endpoint on admin.
func adminConfig(addr, admin, site, upstream string) string {
	return strings.Replace(testConfig(addr, site, upstream), "admin off", "admin "+admin, 1)
}

// metricSamples are the samples of the ws_auth metrics, keyed by the
// series as the text exposition writes it (`name{label="value"}`).
type metricSamples map[string]float64

func (s metricSamples) String() string {
	keys := make([]string, 0, len(s))
	for k := range s {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s %v\n", k, s[k])
	}
	return b.String()
}

// scrapeMetrics reads the admin endpoint's /metrics, on a connection of
// its own (a reload replaces the admin server), and returns the samples
// of the ws_auth metrics.
func scrapeMetrics(t *testing.T, admin string) metricSamples {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	var resp *http.Response
	var err error
	for i := 0; i < 20; i++ {
		if resp, err = client.Get("http://" + admin + "/metrics"); err == nil {
			break
		}
		time.Sleep(25 * time.Millisecond) // the old admin server going away
	}
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET /metrics: %s\n%s", resp.Status, b)
	}
	return parseMetrics(t, resp.Body)
}

// parseMetrics reads the samples of caddy_ws_auth_* from a Prometheus text
// exposition.
func parseMetrics(t *testing.T, r io.Reader) metricSamples {
	t.Helper()
	s := metricSamples{}
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "caddy_ws_auth_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if i < 0 || err != nil {
			t.Fatalf("/metrics line %q: %v", line, err)
		}
		s[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return s
}

// gathered is parseMetrics of what reg gathers.
func gathered(t *testing.T, reg *prometheus.Registry) metricSamples {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	s := metricSamples{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			key := f.GetName()
			if lp := m.GetLabel(); len(lp) > 0 {
				key += fmt.Sprintf(`{%s=%q}`, lp[0].GetName(), lp[0].GetValue())
			}
			switch {
			case m.Counter != nil:
				s[key] = m.GetCounter().GetValue()
			case m.Gauge != nil:
				s[key] = m.GetGauge().GetValue()
			}
		}
	}
	return s
}

// checkDeltas checks that every counter series moved from before to after
// by want's amount, and those want does not name not at all.
func checkDeltas(t *testing.T, before, after metricSamples, want map[string]float64) {
	t.Helper()
	for k, b := range before {
		if strings.HasPrefix(k, "caddy_ws_auth_connections_active") {
			continue // a gauge
		}
		a, ok := after[k]
		if !ok {
			t.Errorf("%s is gone from /metrics", k)
			continue
		}
		if d := a - b; d != want[k] {
			t.Errorf("%s moved by %v, want %v", k, d, want[k])
		}
	}
	for k := range want {
		if _, ok := before[k]; !ok {
			t.Errorf("%s is not on /metrics", k)
		}
	}
}
