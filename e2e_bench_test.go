//go:build unix

package wsauth

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"

	"github.com/caddyserver/caddy/v2"
)

// BenchmarkE2E is what ws_auth costs a Caddy serving real WebSocket traffic,
// end to end over loopback. Run with:
//
//	go test -run '^$' -bench E2E -count 5
//
// One Caddy is loaded in this process with two sites, "proxy" (reverse_proxy
// alone) and "ws_auth" (ws_auth in front of the same reverse_proxy: HS256
// secret, token from the query, origin, issuer and audience checked, as in
// BenchmarkHandshake). The clients and the two echo upstreams run in a
// second process, this test binary started again (TestE2EClientProcess),
// so that the CPU time of this process (getrusage RUSAGE_SELF, user+system)
// is Caddy's: its HTTP server, ws_auth, reverse_proxy, the Go runtime and
// the kernel work done in Caddy's system calls. It leaves out the clients,
// the upstreams and kernel work charged to them (on loopback, some of
// Caddy's receive path runs in the sender's system calls), so the figure per
// variant is near, not equal to, a Caddy's CPU on a real network; the
// difference between the variants is what ws_auth adds.
//
//   - handshake: b.N handshakes through each site, from 16 concurrent
//     clients. Every handshake is a new TCP connection with a newly signed
//     token (its own sub and jti), an Origin header, one 16-byte echo, and
//     the close handshake, the client waiting for Caddy to close TCP.
//   - message: b.N echoes of 128-byte text messages through each site, over
//     16 connections opened beforehand.
//
// The sites take turns (50 handshakes or 1000 messages at a time, the order
// swapped every turn) so that a machine's drift falls on both. Reported:
// proxy-cpu-µs/op, ws_auth-cpu-µs/op and their difference, added-cpu-µs/op,
// per handshake or message. ns/op is the wall time of one operation through
// each site, clients and upstreams included: on a machine they share with
// Caddy, it is not a figure of Caddy's. Before each measurement the ws_auth
// site is checked to refuse a request without a token and a forged token.
//
// With WSAUTH_E2E_SAME=1 both sites are the proxy site: the difference
// between them is then the noise of the machine, the resolution of
// added-cpu-µs.
//
// Every measurement gets fresh Caddy and upstream ports, because the
// connections it closes wait in TIME_WAIT: at most 20000 handshakes per site
// in one measurement (about -benchtime 25s on a 2-core machine) keep the
// address pairs from repeating within the ephemeral port range.
func BenchmarkE2E(b *testing.B) {
	cl := startE2EClient(b)
	b.Run("handshake", func(b *testing.B) {
		if b.N > e2eMaxHandshakes {
			b.Fatalf("%d handshakes per site in one measurement: at most %d, lower -benchtime", b.N, e2eMaxHandshakes)
		}
		sites := cl.sites(b)
		e2eMeasure(b, sites, "handshake", 50, func(site string, n int) {
			cl.do(b, "handshakes", site, strconv.Itoa(n))
		})
	})
	b.Run("message", func(b *testing.B) {
		sites := cl.sites(b)
		for _, s := range sites {
			cl.do(b, "open", s)
		}
		defer cl.do(b, "closeall")
		e2eMeasure(b, sites, "message", 1000, func(site string, n int) {
			cl.do(b, "echo", site, strconv.Itoa(n))
		})
	})
}

const (
	e2eEnv           = "WSAUTH_E2E_CLIENT"
	e2eSameEnv       = "WSAUTH_E2E_SAME"
	e2eOrigin        = "http://bench.localhost"
	e2eClients       = 16 // concurrent handshaking clients
	e2eConns         = 16 // open connections for messages
	e2eMsgSize       = 128
	e2eMaxHandshakes = 20000
	e2eTimeout       = 5 * time.Second // every network step of the clients
)

// e2eSites are the two variants, in the order of sites' addresses.
var e2eSites = [2]struct{ name, site string }{
	{"proxy", "\treverse_proxy %UPSTREAM%"},
	{"ws_auth", `	ws_auth {
		token_source query token
		secret ` + testSecret + `
		issuer bench-issuer
		audience bench-aud
		allowed_origins ` + e2eOrigin + `
	}
	reverse_proxy %UPSTREAM%`},
}

// e2eMeasure runs b.N operations through each site, chunk at a time, the
// sites taking turns, and reports each site's CPU per operation.
func e2eMeasure(b *testing.B, sites [2]string, op string, chunk int, run func(site string, n int)) {
	var cpu [2]time.Duration
	b.ResetTimer()
	for done, turn := 0, 0; done < b.N; turn++ {
		n := min(chunk, b.N-done)
		for k := range 2 {
			i := (k + turn) % 2 // A B, B A, A B ...
			c0 := processCPU()
			run(sites[i], n)
			cpu[i] += processCPU() - c0
		}
		done += n
	}
	b.StopTimer()
	per := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(b.N) }
	b.ReportMetric(per(cpu[0]), e2eSites[0].name+"-cpu-µs/"+op)
	b.ReportMetric(per(cpu[1]), e2eSites[1].name+"-cpu-µs/"+op)
	b.ReportMetric(per(cpu[1])-per(cpu[0]), "added-cpu-µs/"+op)
}

// processCPU is the user and system CPU time of this process so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		panic(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// e2eClient is the client process as the benchmark sees it: one command a
// line on its stdin, one answer a line, starting "e2e ", on its stdout.
type e2eClient struct {
	in  io.WriteCloser
	out *bufio.Reader
}

func startE2EClient(b *testing.B) *e2eClient {
	cmd := exec.Command(os.Args[0], "-test.run=^TestE2EClientProcess$", "-test.count=1", "-test.timeout=30m")
	cmd.Env = append(os.Environ(), e2eEnv+"=1")
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		in.Close() // the client process exits at the end of its input
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	return &e2eClient{in: in, out: bufio.NewReader(out)}
}

// do sends a command and returns the fields of its answer after "ok".
func (c *e2eClient) do(b *testing.B, args ...string) []string {
	b.Helper()
	if _, err := fmt.Fprintln(c.in, strings.Join(args, " ")); err != nil {
		b.Fatalf("client process: %v", err)
	}
	for {
		line, err := c.out.ReadString('\n')
		if err != nil {
			b.Fatalf("client process: %s: %v", args[0], err)
		}
		if f, ok := strings.CutPrefix(strings.TrimSpace(line), "e2e "); ok {
			fs := strings.Fields(f)
			if len(fs) == 0 || fs[0] != "ok" {
				b.Fatalf("client process: %s: %s", args[0], f)
			}
			return fs[1:]
		}
	}
}

// sites starts fresh upstreams and a fresh Caddy serving both sites, checks
// that ws_auth refuses what it must, and returns the sites' addresses.
func (c *e2eClient) sites(b *testing.B) [2]string {
	b.Helper()
	caddyMu.Lock()
	b.Cleanup(caddyMu.Unlock)
	ups := c.do(b, "upstreams")
	var sites [2]string
	cfg := "{\n\tadmin off\n\tauto_https off\n\tpersist_config off\n\tlog {\n\t\tlevel ERROR\n\t}\n}\n"
	same := os.Getenv(e2eSameEnv) == "1"
	for i, s := range e2eSites {
		if same {
			s = e2eSites[0]
		}
		sites[i] = fmt.Sprintf("127.0.0.1:%d", freePort(b))
		for i == 1 && sites[1] == sites[0] { // the port was free again
			sites[1] = fmt.Sprintf("127.0.0.1:%d", freePort(b))
		}
		cfg += fmt.Sprintf("\nhttp://%s {\n%s\n}\n", sites[i], strings.ReplaceAll(s.site, "%UPSTREAM%", ups[i]))
	}
	if err := loadCaddyfile(cfg); err != nil {
		b.Fatalf("loading config: %v\n%s", err, cfg)
	}
	b.Cleanup(func() {
		// Caddy may not yet have forgotten the connections its clients
		// saw closed, and would report closing them again as errors.
		time.Sleep(100 * time.Millisecond)
		_ = caddy.Stop()
	})
	for _, s := range sites {
		waitListening(b, s)
	}
	want := [2]string{"accepted accepted accepted", "accepted refused refused"}
	if same {
		want[1] = want[0]
	}
	for i, s := range sites {
		if got := strings.Join(c.do(b, "probe", s), " "); got != want[i] {
			b.Fatalf("%s site: valid, missing, forged token: %s, want %s", e2eSites[i].name, got, want[i])
		}
	}
	return sites
}

// TestE2EClientProcess is BenchmarkE2E's client and upstream process; it
// does nothing unless the benchmark started it.
func TestE2EClientProcess(t *testing.T) {
	if os.Getenv(e2eEnv) != "1" {
		t.Skip("the client process of BenchmarkE2E")
	}
	p := &e2eProcess{
		dialer: &websocket.Dialer{
			NetDial: func(network, addr string) (net.Conn, error) {
				return net.DialTimeout(network, addr, e2eTimeout)
			},
			HandshakeTimeout: e2eTimeout,
			ReadBufferSize:   4096,
			WriteBufferSize:  4096,
		},
		conns:  map[string][]*websocket.Conn{},
		run:    strconv.FormatInt(time.Now().UnixNano(), 36),
		secret: []byte(testSecret),
	}
	defer p.closeUpstreams()
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		ans, err := p.command(strings.Fields(sc.Text()))
		if err != nil {
			fmt.Printf("e2e error %v\n", err)
			continue
		}
		fmt.Printf("e2e ok %s\n", ans)
	}
}

type e2eProcess struct {
	dialer    *websocket.Dialer
	upstreams []*http.Server
	conns     map[string][]*websocket.Conn // open connections by site
	run       string                       // in every jti, unique to this process
	seq       atomic.Int64                 // numbers the tokens
	secret    []byte
}

func (p *e2eProcess) command(args []string) (string, error) {
	if len(args) == 0 {
		return "", errors.New("empty command")
	}
	n := 0
	if len(args) == 3 {
		var err error
		if n, err = strconv.Atoi(args[2]); err != nil {
			return "", err
		}
	}
	switch {
	case args[0] == "upstreams" && len(args) == 1:
		return p.startUpstreams()
	case args[0] == "probe" && len(args) == 2:
		return p.probe(args[1]), nil
	case args[0] == "handshakes" && len(args) == 3:
		return "", parallel(n, e2eClients, func() error { return p.handshake(args[1]) })
	case args[0] == "open" && len(args) == 2:
		for range e2eConns {
			c, err := p.dial(args[1], p.token(p.secret))
			if err != nil {
				return "", err
			}
			p.conns[args[1]] = append(p.conns[args[1]], c)
		}
		return "", nil
	case args[0] == "echo" && len(args) == 3:
		return "", p.echoes(p.conns[args[1]], n)
	case args[0] == "closeall" && len(args) == 1:
		for site, cs := range p.conns {
			for _, c := range cs {
				closeAndWait(c)
			}
			delete(p.conns, site)
		}
		return "", nil
	}
	return "", fmt.Errorf("unknown command %q", args)
}

// startUpstreams replaces the echo upstreams with two on fresh ports.
func (p *e2eProcess) startUpstreams() (string, error) {
	p.closeUpstreams()
	up := websocket.Upgrader{ReadBufferSize: 4096, WriteBufferSize: 4096, CheckOrigin: func(*http.Request) bool { return true }}
	echo := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		c.SetReadLimit(1 << 16)
		for {
			typ, msg, err := c.ReadMessage() // answers a close with a close
			if err != nil {
				return
			}
			if err := c.WriteMessage(typ, msg); err != nil {
				return
			}
		}
	})
	var addrs []string
	for range 2 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		s := &http.Server{Handler: echo}
		go func() { _ = s.Serve(l) }()
		p.upstreams = append(p.upstreams, s)
		addrs = append(addrs, l.Addr().String())
	}
	return strings.Join(addrs, " "), nil
}

func (p *e2eProcess) closeUpstreams() {
	for _, s := range p.upstreams {
		_ = s.Close()
	}
	p.upstreams = nil
}

// token signs a new token with key: its own sub and jti, the claims of
// benchClaims otherwise.
func (p *e2eProcess) token(key []byte) string {
	i := p.seq.Add(1)
	c := benchClaims()
	c["sub"] = "user-" + strconv.FormatInt(i, 10)
	c["jti"] = p.run + "-" + strconv.FormatInt(i, 10)
	c["name"] = "User " + strconv.FormatInt(i, 10)
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(key)
	if err != nil {
		panic(err)
	}
	return s
}

func (p *e2eProcess) dial(site, token string) (*websocket.Conn, error) {
	u := "ws://" + site + "/ws"
	if token != "" {
		u += "?token=" + url.QueryEscape(token)
	}
	c, _, err := p.dialer.Dial(u, http.Header{"Origin": {e2eOrigin}})
	return c, err
}

// handshake is one client's visit: connect with a new token, one echo,
// close.
func (p *e2eProcess) handshake(site string) error {
	c, err := p.dial(site, p.token(p.secret))
	if err != nil {
		return err
	}
	defer closeAndWait(c)
	return echoOnce(c, make([]byte, 16))
}

// probe tells how site treats a valid, a missing and a forged token:
// "accepted" when the echo comes back, else "refused".
func (p *e2eProcess) probe(site string) string {
	var res []string
	for _, tok := range []string{p.token(p.secret), "", p.token([]byte("not-the-secret-of-this-benchmark-at-all"))} {
		c, err := p.dial(site, tok)
		if err == nil {
			err = echoOnce(c, []byte("probe-0123456789"))
			c.Close()
		}
		if err == nil {
			res = append(res, "accepted")
		} else {
			res = append(res, "refused")
		}
	}
	return strings.Join(res, " ")
}

// echoes makes n round trips of e2eMsgSize-byte text messages, spread over
// conns, one client goroutine each.
func (p *e2eProcess) echoes(conns []*websocket.Conn, n int) error {
	if len(conns) == 0 {
		return errors.New("no open connections")
	}
	var next atomic.Int64
	errs := make(chan error, len(conns))
	for _, c := range conns {
		go func() {
			msg := bytes.Repeat([]byte("m"), e2eMsgSize)
			for next.Add(1) <= int64(n) {
				if err := echoOnce(c, msg); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	var err error
	for range conns {
		err = errors.Join(err, <-errs)
	}
	return err
}

// parallel runs f n times from at most k goroutines.
func parallel(n, k int, f func() error) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	for range min(n, k) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				if err := f(); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	return first
}

// echoOnce writes msg as a text message and reads back the same.
func echoOnce(c *websocket.Conn, msg []byte) error {
	dl := time.Now().Add(e2eTimeout)
	_ = c.SetWriteDeadline(dl)
	_ = c.SetReadDeadline(dl)
	if err := c.WriteMessage(websocket.TextMessage, msg); err != nil {
		return err
	}
	_, got, err := c.ReadMessage()
	if err != nil {
		return err
	}
	if !bytes.Equal(got, msg) {
		return errors.New("echo mismatch")
	}
	return nil
}

// closeAndWait runs the close handshake and waits for the server to close
// TCP first (RFC 6455 §7.1.1), so that TIME_WAIT stays on Caddy's side, as
// with real clients.
func closeAndWait(c *websocket.Conn) {
	dl := time.Now().Add(e2eTimeout)
	_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), dl)
	_ = c.SetReadDeadline(dl)
	for range 16 { // bounded: skips stray messages until the close
		if _, _, err := c.NextReader(); err != nil {
			break
		}
	}
	var buf [64]byte
	for range 4 { // until EOF
		if _, err := c.UnderlyingConn().Read(buf[:]); err != nil {
			break
		}
	}
	c.Close()
}
