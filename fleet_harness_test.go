package wsauth

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// The fleet harness runs what a fleet of ws_auth instances shares: real
// redis-server processes (one, or a three-node Redis Cluster) and further
// Caddy instances in processes of their own, since one test process holds
// only one Caddy.

// requireServerEnv names the variable that turns a missing server program
// from a skip into a failure, so that CI never passes by skipping.
const requireServerEnv = "WSAUTH_REQUIRE_SERVERS"

// redisWait bounds every wait for a Redis server: to answer, to stop, or
// for its cluster to be ready.
const redisWait = 10 * time.Second

// requireServer skips the test when the program name is not on PATH, with
// msg (how to install it) as the reason. When WSAUTH_REQUIRE_SERVERS=1 is
// set, as in CI, it fails the test instead.
func requireServer(t testing.TB, name, msg string) {
	t.Helper()
	if _, err := exec.LookPath(name); err == nil {
		return
	}
	text := fmt.Sprintf("%s not found on PATH; %s", name, msg)
	if os.Getenv(requireServerEnv) == "1" {
		t.Fatal(text + " (" + requireServerEnv + "=1)")
	}
	t.Skip(text)
}

// requireRedis is requireServer for redis-server and redis-cli.
func requireRedis(t testing.TB) {
	t.Helper()
	requireServer(t, "redis-server", "install it, e.g. apt-get install -y redis-server")
	requireServer(t, "redis-cli", "install it, e.g. apt-get install -y redis-tools")
}

// lockedBuffer is a bytes.Buffer that several goroutines may write and
// read at once: a process writes its output into it while a test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p to the buffer.
func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// redisServer is a redis-server process of one test, on a loopback port
// and a data directory that both stay the same across Stop and Start. It
// writes every command to its append-only file before answering, so that
// a restart after a kill finds the data again.
type redisServer struct {
	Addr string // "127.0.0.1:<port>"

	t    testing.TB
	args []string     // the redis-server arguments
	out  lockedBuffer // its stdout and stderr, across restarts

	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// startRedis starts a redis-server on a free loopback port with a fresh
// data directory, waits until it answers PING and stops it when the test
// ends. Without redis-server the test is skipped (see requireServer).
func startRedis(t testing.TB) *redisServer {
	t.Helper()
	requireRedis(t)
	return launchRedis(t, freePort(t), t.TempDir())
}

// launchRedis starts a redis-server on port with its data in dir, plus
// the extra arguments, and waits until it answers PING.
func launchRedis(t testing.TB, port int, dir string, extra ...string) *redisServer {
	t.Helper()
	r := &redisServer{
		Addr: fmt.Sprintf("127.0.0.1:%d", port),
		t:    t,
		args: append([]string{
			"--port", strconv.Itoa(port),
			"--bind", "127.0.0.1",
			"--save", "",
			"--appendonly", "yes",
			"--appendfsync", "always",
			"--dir", dir,
			"--daemonize", "no",
		}, extra...),
	}
	t.Cleanup(func() {
		if r.running() {
			r.Stop()
		}
	})
	r.Start()
	return r
}

// running reports whether the server process was started and has not
// exited.
func (r *redisServer) running() bool {
	if r.cmd == nil {
		return false
	}
	select {
	case <-r.done:
		return false
	default:
		return true
	}
}

// Start starts the server again, on the same port and data directory, and
// waits until it answers PING. It fails the test if the server is running.
func (r *redisServer) Start() {
	r.t.Helper()
	if r.running() {
		r.t.Fatalf("redis-server on %s: Start while it is running", r.Addr)
	}
	if r.cmd != nil {
		fmt.Fprintf(&r.out, "--- harness: restart ---\n")
	}
	cmd := exec.Command("redis-server", r.args...)
	cmd.Stdout = &r.out
	cmd.Stderr = &r.out
	setDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		r.t.Fatalf("starting redis-server on %s: %v", r.Addr, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	r.cmd, r.done = cmd, done

	deadline := time.Now().Add(redisWait)
	for {
		err := redisPing(r.Addr)
		if err == nil {
			return
		}
		select {
		case <-done:
			r.t.Fatalf("redis-server on %s exited before answering PING (%v):\n%s", r.Addr, cmd.ProcessState, r.out.String())
		default:
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("redis-server on %s did not answer PING within %v (last error: %v):\n%s", r.Addr, redisWait, err, r.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop kills the server with SIGKILL, as in an outage, and waits until it
// has exited. Start brings it back on the same port.
func (r *redisServer) Stop() {
	r.t.Helper()
	if !r.running() {
		r.t.Fatalf("redis-server on %s: Stop while it is not running", r.Addr)
	}
	_ = r.cmd.Process.Kill()
	select {
	case <-r.done:
	case <-time.After(redisWait):
		r.t.Fatalf("redis-server on %s did not exit within %v of SIGKILL:\n%s", r.Addr, redisWait, r.out.String())
	}
}

// Output returns what the server printed so far, across restarts.
func (r *redisServer) Output() string { return r.out.String() }

// Do runs one command on the server and returns its reply as text (see
// redisDo). It fails the test on a network error.
func (r *redisServer) Do(t testing.TB, args ...string) string {
	t.Helper()
	return redisDo(t, r.Addr, args...)
}

// redisDo runs one command on the Redis server at addr, over a connection
// of its own, and returns the reply as text: a simple string, an error
// (its text, such as "ERR unknown command ..." or "MOVED 866
// 127.0.0.1:7001") or an integer as it is; a bulk string as its content,
// and a missing one as "(nil)"; an array as its elements joined by "\n",
// nested arrays flattened. It fails the test on a network error, so it
// must be called from the test's goroutine.
func redisDo(t testing.TB, addr string, args ...string) string {
	t.Helper()
	reply, err := redisCommand(addr, args...)
	if err != nil {
		t.Fatalf("redis %s %s: %v", addr, strings.Join(args, " "), err)
	}
	return reply
}

// redisPing sends PING to the server at addr and returns an error unless
// it answers PONG.
func redisPing(addr string) error {
	reply, err := redisCommand(addr, "PING")
	if err != nil {
		return err
	}
	if reply != "PONG" {
		return fmt.Errorf("PING answered %q", reply)
	}
	return nil
}

// redisCommand is redisDo returning the error: it sends args as a RESP
// array of bulk strings and reads one reply, within 5 seconds.
func redisCommand(addr string, args ...string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	var req bytes.Buffer
	fmt.Fprintf(&req, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&req, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := c.Write(req.Bytes()); err != nil {
		return "", err
	}
	return readRESP(bufio.NewReader(c))
}

// readRESP reads one RESP2 reply from r and flattens it as redisDo
// describes.
func readRESP(r *bufio.Reader) (string, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return "", errors.New("empty reply line")
	}
	switch line[0] {
	case '+', '-', ':':
		return line[1:], nil
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return "", fmt.Errorf("bad bulk string length %q", line)
		}
		if n < 0 {
			return "(nil)", nil
		}
		buf := make([]byte, n+2) // the content and its "\r\n"
		if _, err := io.ReadFull(r, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return "", fmt.Errorf("bad array length %q", line)
		}
		if n < 0 {
			return "(nil)", nil
		}
		parts := make([]string, n)
		for i := range parts {
			if parts[i], err = readRESP(r); err != nil {
				return "", err
			}
		}
		return strings.Join(parts, "\n"), nil
	}
	return "", fmt.Errorf("unexpected reply %q", line)
}

// startRedisCluster starts a three-node Redis Cluster on loopback (three
// masters, no replicas), waits until every node reports cluster_state:ok
// and returns the nodes' addresses. The nodes stop when the test ends.
// Without redis-server or redis-cli the test is skipped (see
// requireServer).
func startRedisCluster(t testing.TB) []string {
	t.Helper()
	var addrs []string
	for _, r := range startRedisClusterServers(t) {
		addrs = append(addrs, r.Addr)
	}
	return addrs
}

// startRedisClusterServers is startRedisCluster returning the nodes
// themselves, so that a test may Stop and Start one of them.
func startRedisClusterServers(t testing.TB) []*redisServer {
	t.Helper()
	requireRedis(t)
	used := map[int]bool{}
	var nodes []*redisServer
	var addrs []string
	for range 3 {
		port := clusterPort(t, used)
		dir := t.TempDir()
		r := launchRedis(t, port, dir,
			"--cluster-enabled", "yes",
			"--cluster-config-file", filepath.Join(dir, "nodes.conf"),
			"--cluster-node-timeout", "2000")
		nodes = append(nodes, r)
		addrs = append(addrs, r.Addr)
	}
	outputs := func() string {
		var b strings.Builder
		for _, r := range nodes {
			fmt.Fprintf(&b, "--- redis-server %s ---\n%s", r.Addr, r.Output())
		}
		return b.String()
	}

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	args := append(append([]string{"--cluster", "create"}, addrs...), "--cluster-replicas", "0", "--cluster-yes")
	out, err := exec.CommandContext(ctx, "redis-cli", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli %s: %v\n%s\n%s", strings.Join(args, " "), err, out, outputs())
	}

	deadline := time.Now().Add(redisWait)
	for _, addr := range addrs {
		for {
			info, err := redisCommand(addr, "CLUSTER", "INFO")
			if err == nil && strings.Contains(info, "cluster_state:ok") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node %s not at cluster_state:ok within %v (error %v):\n%s\n%s\n%s", addr, redisWait, err, info, out, outputs())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nodes
}

// clusterPort returns a loopback port for a cluster node that was free a
// moment ago along with its cluster bus port (port+10000), and that is
// neither one of the used ports nor their bus ports. It adds both to used.
func clusterPort(t testing.TB, used map[int]bool) int {
	t.Helper()
	for range 200 {
		p := freePort(t)
		if p > 55535 || used[p] || used[p+10000] {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p+10000))
		if err != nil {
			continue
		}
		l.Close()
		used[p], used[p+10000] = true, true
		return p
	}
	t.Fatal("found no free loopback port whose cluster bus port (port+10000) is free too")
	return 0
}

// caddyProcessEnv names the variable that makes TestCaddyProcess run the
// Caddyfile at its path.
const caddyProcessEnv = "WSAUTH_CADDY_PROCESS"

// caddyReady is the line TestCaddyProcess prints once its Caddy is loaded.
const caddyReady = "caddy ready"

// TestCaddyProcess is not a test but the body of a second Caddy instance,
// run by startCaddyProcess in a child process of the test binary. Without
// WSAUTH_CADDY_PROCESS it returns at once. With it, it loads the Caddyfile
// at that path, prints "caddy ready" to stdout and serves until its stdin
// is closed or it gets SIGTERM or SIGINT, then stops Caddy. Caddy's logs go
// to stderr.
func TestCaddyProcess(t *testing.T) {
	path := os.Getenv(caddyProcessEnv)
	if path == "" {
		return
	}
	cfg, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	defer signal.Stop(sig)

	caddyMu.Lock()
	defer caddyMu.Unlock()
	if err := loadCaddyfile(string(cfg)); err != nil {
		t.Fatalf("loading %s: %v\n%s", path, err, cfg)
	}
	fmt.Println(caddyReady)

	stdinClosed := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(stdinClosed)
	}()
	select {
	case <-stdinClosed:
	case <-sig:
	}
	if err := caddy.Stop(); err != nil {
		t.Fatalf("stopping caddy: %v", err)
	}
}

// caddyProcess is a Caddy instance in a child process of the test binary
// (TestCaddyProcess), as another member of a fleet.
type caddyProcess struct {
	t      testing.TB
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout lockedBuffer  // "caddy ready" and the child test's verdict
	stderr lockedBuffer  // Caddy's logs, JSON lines
	done   chan struct{} // closed when cmd has exited
	err    error         // cmd.Wait's result, set before done is closed
}

// startCaddyProcess starts a child process serving caddyfile, waits (at
// most 30 s) until it has loaded it, and kills it when the test ends if it
// is still running. The Caddyfile is usually testConfig's, on an address
// from freePort.
func startCaddyProcess(t testing.TB, caddyfile string) *caddyProcess {
	t.Helper()
	path := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(path, []byte(caddyfile), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &caddyProcess{t: t, done: make(chan struct{})}
	p.cmd = exec.Command(os.Args[0],
		"-test.run=^TestCaddyProcess$",
		"-test.bench=^$",
		"-test.count=1",
		"-test.timeout=1h")
	p.cmd.Env = append(os.Environ(), caddyProcessEnv+"="+path)
	p.cmd.Stdout = &p.stdout
	p.cmd.Stderr = &p.stderr
	setDeathSignal(p.cmd)
	stdin, err := p.cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.stdin = stdin
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting a caddy process: %v", err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		if p.running() {
			p.Kill()
		}
	})

	deadline := time.After(30 * time.Second)
	for !strings.Contains(p.stdout.String(), caddyReady+"\n") {
		select {
		case <-p.done:
			t.Fatalf("the caddy process exited before it was ready (%v):\n%s\n%s", p.err, p.stdout.String(), p.Logs())
		case <-deadline:
			t.Fatalf("the caddy process was not ready within 30s:\n%s\n%s", p.stdout.String(), p.Logs())
		case <-time.After(10 * time.Millisecond):
		}
	}
	return p
}

// running reports whether the child process has not exited.
func (p *caddyProcess) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Logs returns everything the child's Caddy logged so far (its stderr).
func (p *caddyProcess) Logs() string { return p.stderr.String() }

// WaitLog waits until the logs contain substr, and fails the test with the
// logs if they do not within the given time.
func (p *caddyProcess) WaitLog(t testing.TB, substr string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !strings.Contains(p.Logs(), substr) {
		if time.Now().After(deadline) {
			t.Fatalf("the caddy process did not log %q within %v; its logs:\n%s", substr, within, p.Logs())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Kill kills the child with SIGKILL, as in a crash, and waits until it has
// exited.
func (p *caddyProcess) Kill() {
	p.t.Helper()
	_ = p.cmd.Process.Kill()
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.t.Fatalf("the caddy process did not exit within 10s of SIGKILL")
	}
}

// Stop closes the child's stdin, which makes it stop Caddy and exit, and
// waits for that (at most 10 s). It fails the test if the child does not
// exit in time or does not exit cleanly.
func (p *caddyProcess) Stop() {
	p.t.Helper()
	_ = p.stdin.Close()
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.Kill()
		p.t.Fatalf("the caddy process did not exit within 10s of its stdin closing:\n%s\n%s", p.stdout.String(), p.Logs())
	}
	if p.err != nil {
		p.t.Fatalf("the caddy process did not exit cleanly: %v\n%s\n%s", p.err, p.stdout.String(), p.Logs())
	}
}

// TestRedisHarness checks startRedis: a key set before an outage (Stop) is
// there again after Start, thanks to the append-only file.
func TestRedisHarness(t *testing.T) {
	r := startRedis(t)
	if got := r.Do(t, "SET", "k", "v1"); got != "OK" {
		t.Fatalf("SET: %q", got)
	}
	if got := r.Do(t, "HSET", "h", "a", "1", "b", "2"); got != "2" {
		t.Fatalf("HSET: %q", got)
	}
	if got := r.Do(t, "GET", "missing"); got != "(nil)" {
		t.Errorf("GET of a missing key: %q", got)
	}
	if got := r.Do(t, "NOSUCHCOMMAND"); !strings.HasPrefix(got, "ERR ") {
		t.Errorf("an unknown command: %q, want an ERR", got)
	}
	r.Stop()
	if err := redisPing(r.Addr); err == nil {
		t.Fatal("PING answered after Stop")
	}
	r.Start()
	if got := r.Do(t, "GET", "k"); got != "v1" {
		t.Errorf("GET after a restart: %q, want v1\n%s", got, r.Output())
	}
	if got := r.Do(t, "HGETALL", "h"); got != "a\n1\nb\n2" {
		t.Errorf("HGETALL after a restart: %q", got)
	}
	if got := r.Do(t, "FLUSHALL"); got != "OK" {
		t.Errorf("FLUSHALL: %q", got)
	}
	if got := r.Do(t, "KEYS", "*"); got != "" {
		t.Errorf("KEYS * after FLUSHALL: %q", got)
	}
}

// TestRedisClusterHarness checks startRedisCluster: every node is at
// cluster_state:ok, and a key can be set on exactly one node, the others
// redirecting to it.
func TestRedisClusterHarness(t *testing.T) {
	addrs := startRedisCluster(t)
	if len(addrs) != 3 {
		t.Fatalf("%d nodes, want 3", len(addrs))
	}
	for _, a := range addrs {
		if info := redisDo(t, a, "CLUSTER", "INFO"); !strings.Contains(info, "cluster_state:ok") || !strings.Contains(info, "cluster_known_nodes:3") {
			t.Errorf("CLUSTER INFO on %s:\n%s", a, info)
		}
	}
	var owner string
	var moved []string
	for _, a := range addrs {
		switch got := redisDo(t, a, "SET", "fleet-key", "v"); {
		case got == "OK":
			owner = a
		case strings.HasPrefix(got, "MOVED "):
			moved = append(moved, got)
		default:
			t.Errorf("SET on %s: %q", a, got)
		}
	}
	if owner == "" || len(moved) != 2 {
		t.Fatalf("SET: owner %q, redirections %q; want one owner and two MOVED", owner, moved)
	}
	for _, m := range moved {
		if !strings.HasSuffix(m, " "+owner) {
			t.Errorf("%q does not redirect to the owner %s", m, owner)
		}
	}
	if got := redisDo(t, owner, "GET", "fleet-key"); got != "v" {
		t.Errorf("GET on the owner: %q", got)
	}
}

// TestCaddyProcessHarness checks startCaddyProcess: the child serves its
// site, logs to the parent, and no longer answers once killed.
func TestCaddyProcessHarness(t *testing.T) {
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	p := startCaddyProcess(t, testConfig(addr, `respond "hi"`, ""))
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + addr + "/")
	if err != nil {
		t.Fatalf("GET: %v\n%s", err, p.Logs())
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "hi" {
		t.Fatalf("GET: %d %q, want 200 \"hi\"", resp.StatusCode, body)
	}
	p.WaitLog(t, `"server running"`, 5*time.Second)
	client.CloseIdleConnections()
	p.Kill()
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatalf("%s still answers after Kill", addr)
	}
}

// TestCaddyProcessHarnessStop checks that Stop ends the child cleanly.
func TestCaddyProcessHarnessStop(t *testing.T) {
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	p := startCaddyProcess(t, testConfig(addr, `respond "hi"`, ""))
	waitListening(t, addr)
	p.Stop()
	if !strings.Contains(p.stdout.String(), "PASS") {
		t.Errorf("the child's output: %q, want its PASS", p.stdout.String())
	}
}
