package wsauth

import (
	"bufio"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// The README's examples are tested: every ```caddyfile and ```json block
// of README.md, and example.Caddyfile, is adapted and validated as
// `caddy adapt` and `caddy validate` would, offline.
//
// Wrapping rules, so that a fragment becomes a config (docBlock.config):
//
//   - caddyfile, a whole Caddyfile (its first block is a site address, or
//     global options followed by sites): as written.
//   - caddyfile, only a global options block `{ ... }`: a minimal site is
//     appended (minimalSite), so that the options apply to something.
//   - caddyfile, a site body (its first word is a directive such as
//     `ws_auth` or `log`: a lowercase word without ".", ":" or "/", and not
//     "localhost"): wrapped in a plain-HTTP site, http://localhost:9080.
//   - json, an object with "handler": the handler of the only route of a
//     minimal http app (handlerConfig).
//   - json, an object with "apps": a whole config, as written.
//
// Skipping is explicit and visible in the README source: a block right
// after the line `<!-- not validated: <reason> -->` (the reason is
// required, e.g. "syntax summary" for a block of <placeholders>) is
// skipped, and the test logs it. Any other block is validated.
//
// Stand-ins (docStandIns), so that a block checks what it says without
// the machine it was written for: the files it names (/etc/caddy/...,
// /var/log/...) are temporary files of the right kind (a generated public
// key PEM, an empty blocklist, a JWK Set, a log file); a remote jwks URL is
// a loopback HTTP server serving a real JWK Set (plain http is allowed to
// loopback), and the test checks that validation fetched it; every
// {env.NAME} and {$NAME} without a default is set with t.Setenv (REDIS_URL
// to a redis-server the test starts). A block that names a file
// or a jwks URL without a stand-in fails, rather than reach for the real
// one.
//
// Domain sites such as app.example.com are validated as written, with
// caddy.Validate: it provisions every app and module (so the TLS
// automation policy for the domain is built and checked too) but starts
// no listener and asks no ACME server. That checks more than rewriting the
// address to a loopback one, and stays offline.

// docSkip marks a block that is not validated, with its reason.
var docSkip = regexp.MustCompile(`^<!-- not validated: (\S.*?) -->$`)

// docFence opens a fenced block; its language is the group.
var docFence = regexp.MustCompile("^```([A-Za-z0-9_-]*)\\s*$")

// minimalSite is appended to a Caddyfile that is only global options.
const minimalSite = "\nhttp://localhost:9080 {\n\trespond ok\n}\n"

// docBlock is a fenced block of a document.
type docBlock struct {
	file string // the document
	line int    // of the opening fence
	lang string
	body string
	skip string // the reason the block is not validated, if it is not
}

func (b docBlock) name() string { return fmt.Sprintf("%s:%d", b.file, b.line) }

// docBlocks returns the ```caddyfile and ```json blocks of a Markdown
// document.
func docBlocks(t *testing.T, file string) []docBlock {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var blocks []docBlock
	var cur *docBlock
	var body strings.Builder
	var skip string // from the marker on the previous non-blank line
	skipLine := 0
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if cur != nil {
			if strings.TrimSpace(line) == "```" {
				cur.body = body.String()
				if cur.lang == "caddyfile" || cur.lang == "json" || cur.lang == "blocklist" {
					blocks = append(blocks, *cur)
				}
				cur = nil
				body.Reset()
				continue
			}
			body.WriteString(line + "\n")
			continue
		}
		if m := docFence.FindStringSubmatch(line); m != nil {
			cur = &docBlock{file: file, line: n, lang: m[1], skip: skip}
			skip = ""
			continue
		}
		if strings.HasPrefix(strings.TrimSpace(line), "<!--") && strings.Contains(line, "not validated") {
			m := docSkip.FindStringSubmatch(strings.TrimSpace(line))
			if m == nil {
				t.Errorf("%s:%d: a skip marker is written <!-- not validated: <reason> -->, not %q", file, n, line)
				continue
			}
			skip, skipLine = m[1], n
			continue
		}
		if skip != "" && strings.TrimSpace(line) != "" {
			t.Errorf("%s:%d: the skip marker is not right before a fenced block", file, skipLine)
			skip = ""
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if cur != nil {
		t.Fatalf("%s:%d: fenced block not closed", file, cur.line)
	}
	return blocks
}

// docStandIns replaces what the examples name with things of this machine.
type docStandIns struct {
	t     *testing.T
	files map[string]string // the example's path -> a temporary file
	jwks  *jwksServer
	url   *regexp.Regexp // a remote jwks URL
}

func newDocStandIns(t *testing.T) *docStandIns {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pub := writePublicPEM(t, &testKeys().rsa.PublicKey)
	set := write("jwks.json", jwkSetJSON(t, standardSet(t)...))
	return &docStandIns{
		t: t,
		files: map[string]string{
			"/etc/caddy/service.pem":      pub,
			"/etc/caddy/jwt.pem":          pub,
			"/etc/caddy/ws_blocklist.txt": write("ws_blocklist.txt", nil),
			"/etc/caddy/jwks.json":        set,
			"/var/log/caddy/ws_auth.log":  filepath.Join(dir, "ws_auth.log"),
			"/etc/caddy/idp-ca.pem":       write("idp-ca.pem", selfSignedPEM(t)),
		},
		jwks: newJWKSServer(t, standardSet(t)...),
		// The URL of a jwks option, in a Caddyfile or in JSON, whatever
		// its host: the path is kept.
		url: regexp.MustCompile(`(\b(?:jwks|oidc)\s+|"url":\s*")https?://[^\s"/]+(/[^\s"]*)?`),
	}
}

// paths are the absolute file paths that need a stand-in.
var docPath = regexp.MustCompile(`(?:^|[\s"])(/(?:etc|var|srv|opt|home|usr)/[^\s"]+)`)

// docEnv is an environment variable an example reads without a default
// ({$NAME:default} works as written, and DEMO_PORT is no secret).
var docEnv = regexp.MustCompile(`\{(?:env\.|\$)([A-Za-z_][A-Za-z0-9_]*)\}`)

// docOIDC is an oidc issuer, in a Caddyfile or in JSON, once rewritten.
var docOIDC = regexp.MustCompile(`(?:\boidc\s+|"oidc":\s*\[\{"url":\s*")(http://[^\s"]+)`)

// apply returns text with the stand-ins in place, and whether it names a
// remote key set.
func (s *docStandIns) apply(text string) (string, bool) {
	s.t.Helper()
	for _, m := range docEnv.FindAllStringSubmatch(text, -1) {
		if m[1] == "REDIS_URL" {
			// A store's URL: a real redis-server, which validation dials.
			s.t.Setenv(m[1], "redis://"+startRedis(s.t).Addr)
			continue
		}
		s.t.Setenv(m[1], "docs-test-secret-long-enough-for-hs256-0123456789")
	}
	for from, to := range s.files {
		text = strings.ReplaceAll(text, from, to)
	}
	for _, m := range docPath.FindAllStringSubmatch(text, -1) {
		if !strings.HasPrefix(m[1], os.TempDir()) {
			s.t.Errorf("the example names the file %s: give it a stand-in in docStandIns", m[1])
		}
	}
	remote := s.url.MatchString(text)
	text = s.url.ReplaceAllString(text, "${1}"+s.jwks.URL+"${2}")
	s.jwks.mu.Lock()
	for _, m := range docOIDC.FindAllStringSubmatch(text, -1) {
		s.jwks.issuers = append(s.jwks.issuers, m[1])
	}
	s.jwks.mu.Unlock()
	return text, remote
}

// config turns a block into a config to validate, by the wrapping rules
// at the top of this file.
func (b docBlock) config(t *testing.T) (js []byte, err error) {
	t.Helper()
	switch b.lang {
	case "json":
		var top map[string]json.RawMessage
		if err := json.Unmarshal([]byte(b.body), &top); err != nil {
			return nil, fmt.Errorf("not a JSON object: %v", err)
		}
		switch {
		case top["handler"] != nil:
			return handlerConfig(b.body), nil
		case top["apps"] != nil:
			return []byte(b.body), nil
		}
		return nil, fmt.Errorf("a JSON block must be a handler (with \"handler\") or a config (with \"apps\")")

	case "caddyfile":
		cfg := b.body
		blocks, err := caddyfile.Parse(b.name(), []byte(cfg))
		if err != nil {
			return nil, err
		}
		switch first := blocks[0].Keys; {
		case len(first) == 0 && len(blocks) == 1:
			cfg += minimalSite
		case len(first) > 0 && isDirective(first[0].Text):
			cfg = "http://localhost:9080 {\n" + indent(cfg) + "}\n"
		}
		out, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cfg), map[string]any{"filename": b.name()})
		for _, w := range warnings {
			t.Errorf("adapting: warning: %s", w)
		}
		if err != nil {
			return nil, fmt.Errorf("adapting: %v\n%s", err, cfg)
		}
		return out, nil
	}
	return nil, fmt.Errorf("no rule for a %s block", b.lang)
}

// isDirective reports whether the first word of a Caddyfile is a
// directive rather than a site address.
func isDirective(word string) bool {
	return word != "localhost" && docDirective.MatchString(word)
}

// docDirective is what a directive name looks like; a site address has a
// ".", ":" or "/" (or is localhost).
var docDirective = regexp.MustCompile(`^[a-z_]+$`)

// indent indents every non-empty line of s by a tab, as `caddy fmt` would
// inside a site block.
func indent(s string) string {
	lines := strings.SplitAfter(s, "\n")
	for i, l := range lines {
		if strings.TrimSpace(l) != "" {
			lines[i] = "\t" + l
		}
	}
	return strings.Join(lines, "")
}

// TestREADMEBlocks adapts and validates every Caddyfile and JSON example
// of the README, and example.Caddyfile, by the rules at the top of this
// file, and parses every blocklist example as blocklist_file reads it.
func TestREADMEBlocks(t *testing.T) {
	blocks := docBlocks(t, "README.md")
	example, err := os.ReadFile("example.Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	blocks = append(blocks, docBlock{file: "example.Caddyfile", line: 1, lang: "caddyfile", body: string(example)})

	validated := map[string]int{}
	for _, b := range blocks {
		t.Run(b.name(), func(t *testing.T) {
			if b.skip != "" {
				t.Skipf("not validated: %s", b.skip)
			}
			if b.lang == "blocklist" {
				// A blocklist file, parsed as blocklist_file reads it.
				set, err := parseBlocklist(strings.NewReader(b.body))
				if err != nil {
					t.Fatalf("blocklist block: %v", err)
				}
				if len(set.jti)+len(set.sub)+len(set.nets) == 0 {
					t.Errorf("blocklist block holds no entry")
				}
				return
			}
			s := newDocStandIns(t)
			body, remote := s.apply(b.body)
			b.body = body
			js, err := b.config(t)
			if err != nil {
				t.Fatalf("%s block: %v", b.lang, err)
			}
			before := s.jwks.fetches.Load()
			if err := validateJSON(js); err != nil {
				t.Fatalf("%s block does not validate: %v\n%s", b.lang, err, js)
			}
			if remote && s.jwks.fetches.Load() == before {
				t.Errorf("the block names a jwks URL, but validating it did not fetch the stand-in key set")
			}
		})
		if b.skip == "" {
			validated[b.lang]++
		}
	}
	// The extraction itself must not silently find nothing.
	if validated["caddyfile"] < 2 || validated["json"] < 1 || validated["blocklist"] < 1 {
		t.Errorf("validated %v blocks: the README's examples were not found", validated)
	}
}

// selfSignedPEM is a CA certificate, PEM, for the examples' tls_trust_pool.
func selfSignedPEM(t *testing.T) []byte {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "docs test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	k := testKeys().ec
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
