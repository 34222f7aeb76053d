package wsauth

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
)

// Algorithm families, by the key type that verifies them.
var (
	hmacAlgs    = []string{"HS256", "HS384", "HS512"}
	rsaAlgs     = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
	ecdsaAlgs   = map[string]string{"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
	eddsaAlgs   = []string{"EdDSA"}
	jwksDefault = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)

// errNoKeyConfigured is the error for a handler without any key source.
var errNoKeyConfigured = errors.New("no key configured: need secret, public_key, jwks or jwks_file")

// isAsymmetric reports whether alg is verified with a public key.
func isAsymmetric(alg string) bool {
	for _, a := range ecdsaAlgs {
		if a == alg {
			return true
		}
	}
	return slices.Contains(rsaAlgs, alg) || slices.Contains(eddsaAlgs, alg)
}

// checkKeyTypes is the rule for key sources and algorithms judged by key
// type alone, as a Caddyfile shows them, so that the parser and Provision
// apply the same one: there is at least one key source, and every
// algorithm of the allow-list can be verified by a configured type of key.
// A secret verifies the HMAC algorithms; a public key the asymmetric ones
// (which exactly depends on the file, read at load); a key set (jwks,
// jwks_file) any, since a local set may hold symmetric keys. Unknown
// algorithms and "none" are left to the caller's own checks.
func checkKeyTypes(secrets, publicKeys, keySets int, algorithms []string) error {
	if secrets+publicKeys+keySets == 0 {
		return errNoKeyConfigured
	}
	if keySets > 0 {
		return nil
	}
	for _, alg := range algorithms {
		switch {
		case slices.Contains(hmacAlgs, alg):
			if secrets == 0 {
				return fmt.Errorf("algorithms: no configured key can verify %s: it needs a secret, jwks or jwks_file", alg)
			}
		case isAsymmetric(alg):
			if publicKeys == 0 {
				return fmt.Errorf("algorithms: no configured key can verify %s: it needs a public_key, jwks or jwks_file", alg)
			}
		}
	}
	return nil
}

// checkHandlerKeyTypes is checkKeyTypes for a handler's configuration.
func checkHandlerKeyTypes(h *Handler) error {
	return checkKeyTypes(len(h.Secrets), len(h.PublicKeys), len(h.JWKS)+len(h.JWKSFiles), h.Algorithms)
}

const (
	// maxJWKSBody bounds a JWK Set response; real sets are a few KiB.
	maxJWKSBody = 1 << 20
	// maxKeyFile bounds a public_key or jwks_file file, as maxJWKSBody
	// bounds a fetched set: real ones are a few KiB.
	maxKeyFile = 1 << 20
	// jwksUnknownKIDEvery is how often an unknown kid may trigger a refetch.
	jwksUnknownKIDEvery = 30 * time.Second
	minRSABits          = 2048
)

var (
	// errKeysUnavailable means a key set that the token needs has never been
	// fetched: the failure is ours, not the client's.
	errKeysUnavailable = errors.New("signing keys unavailable")
	errNoKey           = errors.New("no key for this token")
)

// keyring holds every key a handler verifies with. Static keys are sorted
// by algorithm at provision, so a handshake does one map lookup; key sets
// are read from jwkset storage that refreshes itself in the background.
type keyring struct {
	static   map[string]any // alg -> key or jwt.VerificationKeySet
	sets     []jwkSource
	setAlgs  []string // algorithms the key sets may verify
	poolKeys []string // of jwksSets, released by close
	ctx      context.Context
}

// jwkSource is a JWK Set, local or remote. Whether it is remote is a field,
// not found by comparing keyfunc values: those hold slices, and comparing
// them panics.
type jwkSource struct {
	kf     keyfunc.Keyfunc
	remote bool // fetched over HTTP
}

func loadKeys(ctx caddy.Context, h *Handler, logger *zap.Logger) (_ *keyring, err error) {
	k := &keyring{static: make(map[string]any), ctx: ctx}
	defer func() {
		if err != nil {
			k.close() // what was taken from the pool before the error
		}
	}()
	add := func(alg string, key any) {
		switch cur := k.static[alg].(type) {
		case nil:
			k.static[alg] = key
		case jwt.VerificationKeySet:
			cur.Keys = append(cur.Keys, key)
			k.static[alg] = cur
		default:
			k.static[alg] = jwt.VerificationKeySet{Keys: []jwt.VerificationKey{cur, key}}
		}
	}

	repl := caddy.NewReplacer()
	for i, s := range h.Secrets {
		v := repl.ReplaceKnown(s, "")
		if ph := unknownPlaceholder.FindString(v); ph != "" {
			// A typo such as {env_WS_SECRET} would otherwise be the secret
			// itself, which anyone can read here.
			if ph == s {
				return nil, fmt.Errorf("secret %s: not a placeholder known at load (an environment variable is {env.NAME})", s)
			}
			return nil, fmt.Errorf("secret %d: holds a placeholder not known at load; give a literal secret with braces as base64:", i+1)
		}
		secret, err := decodeSecret(v)
		if err != nil {
			return nil, secretError(s, v, i, err)
		}
		if len(secret) < 32 {
			logger.Warn("HMAC secret is shorter than 32 bytes; use a long random secret", zap.Int("secret", i+1))
		}
		for _, alg := range hmacAlgs {
			add(alg, newHMACKey(alg, secret))
		}
	}

	for _, file := range h.PublicKeys {
		keys, err := loadPEMPublicKeys(file)
		if err != nil {
			return nil, fmt.Errorf("public_key %s: %v", file, err)
		}
		for _, key := range keys {
			for _, alg := range algsForKey(key) {
				add(alg, key)
			}
		}
	}

	for _, file := range h.JWKSFiles {
		raw, err := readSmallFile(file, maxKeyFile)
		if err != nil {
			return nil, fmt.Errorf("jwks_file %s: %v", file, err)
		}
		kf, err := keyfunc.NewJWKSetJSON(raw)
		if err != nil {
			return nil, fmt.Errorf("jwks_file %s: %v", file, err)
		}
		all, err := kf.Storage().KeyReadAll(ctx)
		if err != nil || len(all) == 0 {
			return nil, fmt.Errorf("jwks_file %s: no usable keys", file)
		}
		k.sets = append(k.sets, jwkSource{kf: kf})
	}

	for _, src := range h.JWKS {
		// Placeholders such as {env.JWKS_URL} are replaced at load.
		resolved := *src
		resolved.URL = repl.ReplaceKnown(src.URL, "")
		kf, poolKey, err := loadRemoteSet(&resolved, logger)
		if err != nil {
			return nil, err
		}
		k.poolKeys = append(k.poolKeys, poolKey)
		k.sets = append(k.sets, jwkSource{kf: kf, remote: true})
	}
	if len(h.JWKS) > 0 && len(h.Issuers) == 0 && len(h.Audiences) == 0 {
		logger.Warn("jwks without issuer or audience: any token of this key set is accepted, including those minted for other applications")
	}

	if len(k.static) == 0 && len(k.sets) == 0 {
		return nil, errNoKeyConfigured
	}
	if len(k.sets) > 0 {
		k.setAlgs = jwksDefault
	}
	return k, nil
}

// allowedAlgorithms returns the algorithms tokens may use: the configured
// list checked against the keys, or, by default, all the keys can verify.
func (k *keyring) allowedAlgorithms(configured []string) ([]string, error) {
	if len(configured) == 0 {
		var algs []string
		for alg := range k.static {
			algs = append(algs, alg)
		}
		for _, alg := range k.setAlgs {
			if !slices.Contains(algs, alg) {
				algs = append(algs, alg)
			}
		}
		slices.Sort(algs)
		return algs, nil
	}
	// Names and "none" were refused by checkAlgorithm (checkConfig).
	for _, alg := range configured {
		_, static := k.static[alg]
		// A key set may hold symmetric ("oct") keys, so HS* is allowed with
		// one when written explicitly.
		if !static && len(k.sets) == 0 {
			return nil, fmt.Errorf("algorithms: no configured key can verify %s", alg)
		}
	}
	k.setAlgs = configured
	return configured, nil
}

// lookup returns the key, or a jwt.VerificationKeySet of keys, that may
// verify a token of alg with the header kid. It never touches the network
// except through a key set's rate-limited refetch for an unknown kid.
//
// Static keys are found here, on a frame of about 100 bytes; key sets in
// lookupKID and lookupAll, whose frames are large (jwkset hands out JWKs,
// 536 bytes each, by value): kept out of lookup, they are not on the stack
// of a handshake that no key set can verify, a handshake's deepest point
// otherwise (lookup's frame was 2.4 KiB).
func (k *keyring) lookup(alg, kid string) (any, error) {
	static := k.static[alg]
	if len(k.sets) == 0 || !slices.Contains(k.setAlgs, alg) {
		if static == nil {
			return nil, errNoKey
		}
		return static, nil
	}
	if kid != "" {
		return k.lookupKID(alg, kid, static)
	}
	return k.lookupAll(alg, static)
}

// lookupKID finds the key named kid in the key sets, or else the static
// key of alg.
//
//go:noinline
func (k *keyring) lookupKID(alg, kid string, static any) (any, error) {
	for _, set := range k.sets {
		jwk, err := set.kf.Storage().KeyRead(k.ctx, kid)
		if err != nil {
			continue
		}
		if a := jwkAlg(&jwk); a != "" && a != alg {
			return nil, fmt.Errorf("key %q is for %s, token uses %s", truncate(kid, 64), a, alg)
		}
		key, ok := setKey(set, &jwk, alg)
		if !ok {
			return nil, fmt.Errorf("key %q cannot verify %s", truncate(kid, 64), alg)
		}
		return key, nil
	}
	if static != nil {
		return static, nil
	}
	if k.unfetched() {
		return nil, errKeysUnavailable
	}
	return nil, fmt.Errorf("unknown kid %q", truncate(kid, 64))
}

// lookupAll returns every key that fits alg, for a token without kid: the
// static key of alg and those of the key sets.
//
//go:noinline
func (k *keyring) lookupAll(alg string, static any) (any, error) {
	var set jwt.VerificationKeySet
	switch s := static.(type) {
	case nil:
	case jwt.VerificationKeySet:
		set.Keys = append(set.Keys, s.Keys...)
	default:
		set.Keys = append(set.Keys, s)
	}
	for _, ks := range k.sets {
		all, err := ks.kf.Storage().KeyReadAll(k.ctx)
		if err != nil {
			continue
		}
		for i := range all {
			jwk := &all[i]
			if a := jwkAlg(jwk); a != "" && a != alg {
				continue
			}
			if key, ok := setKey(ks, jwk, alg); ok {
				set.Keys = append(set.Keys, key)
			}
		}
	}
	if len(set.Keys) == 0 {
		if k.unfetched() {
			return nil, errKeysUnavailable
		}
		return nil, errNoKey
	}
	return set, nil
}

// setKey returns the public key of a key set's JWK if it may verify alg:
// a signing key ("use" absent or "sig") of the matching type, an RSA key of
// at least 2048 bits, and a symmetric key only from a local file, since a
// secret served over HTTP is no secret.
func setKey(set jwkSource, jwk *jwkset.JWK, alg string) (any, bool) {
	if use := jwkUse(jwk); use != "" && use != jwkset.UseSig {
		return nil, false
	}
	key := publicOf(jwk.Key())
	if _, sym := key.([]byte); sym && set.remote {
		return nil, false
	}
	if rk, ok := key.(*rsa.PublicKey); ok && rk.N.BitLen() < minRSABits {
		return nil, false
	}
	return key, keyFits(alg, key)
}

// jwkAlg and jwkUse read one member of a JWK. Marshal returns all of them
// (376 bytes) by value: out of line, that copy is made on a frame that is
// gone when the lookup goes on, not on the lookup's own.
//
//go:noinline
func jwkAlg(jwk *jwkset.JWK) string { return jwk.Marshal().ALG.String() }

//go:noinline
func jwkUse(jwk *jwkset.JWK) jwkset.USE { return jwk.Marshal().USE }

// unfetched reports whether a remote key set holds no key yet, that is
// was never fetched. A token that no key we have verifies may then be
// signed by one of its keys: the failure is ours, not the client's. Only
// remote sets count: a local set (jwks_file) with keys says nothing of
// the keys a remote one would bring.
func (k *keyring) unfetched() bool {
	for _, set := range k.sets {
		if !set.remote {
			continue
		}
		if all, err := set.kf.Storage().KeyReadAll(k.ctx); err != nil || len(all) == 0 {
			return true
		}
	}
	return false
}

// close releases the pooled remote key sets.
func (k *keyring) close() {
	for _, key := range k.poolKeys {
		_, _ = jwksSets.Delete(key)
	}
	k.poolKeys = nil
}

func publicOf(key any) any {
	if pk, ok := key.(interface{ Public() crypto.PublicKey }); ok {
		switch key.(type) {
		case *rsa.PrivateKey, *ecdsa.PrivateKey, ed25519.PrivateKey:
			return pk.Public()
		}
	}
	return key
}

// keyFits reports whether key is of the type that alg is verified with, so
// that no key can be used for an algorithm it was not meant for (an RSA key
// is never an HMAC secret).
func keyFits(alg string, key any) bool {
	switch k := key.(type) {
	case []byte:
		return slices.Contains(hmacAlgs, alg)
	case *hmacKey:
		return k.alg == alg
	case *rsa.PublicKey:
		return slices.Contains(rsaAlgs, alg)
	case *ecdsa.PublicKey:
		return ecdsaAlgs[k.Curve.Params().Name] == alg
	case ed25519.PublicKey:
		return alg == "EdDSA"
	}
	return false
}

func algsForKey(key any) []string {
	switch k := key.(type) {
	case *rsa.PublicKey:
		return rsaAlgs
	case *ecdsa.PublicKey:
		return []string{ecdsaAlgs[k.Curve.Params().Name]}
	case ed25519.PublicKey:
		return eddsaAlgs
	}
	return nil
}

// hmacKey is an HMAC secret for one algorithm, with a pool of keyed
// hashes: hmac.New costs allocations and two hash blocks that Reset on a
// used hash does not.
type hmacKey struct {
	alg  string
	pool sync.Pool // of *keyedHash
}

// keyedHash is a pooled HMAC with room for its sum, which would otherwise
// go to the heap: it is passed to the hash through an interface.
type keyedHash struct {
	mac hash.Hash
	sum [sha512.Size]byte
}

func newHMACKey(alg string, secret []byte) *hmacKey {
	var hf func() hash.Hash
	switch alg {
	case "HS256":
		hf = sha256.New
	case "HS384":
		hf = sha512.New384
	default:
		hf = sha512.New
	}
	k := &hmacKey{alg: alg}
	k.pool.New = func() any { return &keyedHash{mac: hmac.New(hf, secret)} }
	return k
}

// verify reports, in constant time, whether sig is the MAC of input.
func (k *hmacKey) verify(input, sig []byte) bool {
	kh := k.pool.Get().(*keyedHash)
	kh.mac.Reset()
	kh.mac.Write(input)
	ok := hmac.Equal(kh.mac.Sum(kh.sum[:0]), sig)
	k.pool.Put(kh)
	return ok
}

// decodeSecret turns a configured secret into key bytes.
func decodeSecret(s string) ([]byte, error) {
	b64, ok := strings.CutPrefix(s, "base64:")
	if !ok {
		if s == "" {
			return nil, fmt.Errorf("empty")
		}
		return []byte(s), nil
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(b64); err == nil {
			if len(b) == 0 {
				return nil, fmt.Errorf("empty")
			}
			return b, nil
		}
	}
	return nil, fmt.Errorf("invalid base64")
}

// unknownPlaceholder is what ReplaceKnown leaves of a placeholder it does
// not know.
var unknownPlaceholder = regexp.MustCompile(`\{[A-Za-z_][A-Za-z0-9_.\-]*\}`)

// secretError names the secret that err is about. A value made only of
// placeholders (and the base64: prefix) is shown as configured, since it
// tells where the secret should have come from; any other value is named
// by its position, so that a literal secret never reaches an error or log.
func secretError(configured, replaced string, i int, err error) error {
	if rest, _ := strings.CutPrefix(replaced, "base64:"); rest == "" && replaced != configured {
		hint := "is its placeholder set?"
		if strings.Contains(configured, "{env.") {
			hint = "is the environment variable set?"
		}
		return fmt.Errorf("secret %s: %v (%s)", configured, err, hint)
	}
	return fmt.Errorf("secret %d: %v", i+1, err)
}

// loadPEMPublicKeys reads every public key in a PEM file. A private key is
// refused: the file would be a secret worth stealing, and is not needed.
func loadPEMPublicKeys(file string) ([]any, error) {
	data, err := readSmallFile(file, maxKeyFile)
	if err != nil {
		return nil, err
	}
	var keys []any
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		var key any
		switch block.Type {
		case "PUBLIC KEY":
			key, err = x509.ParsePKIXPublicKey(block.Bytes)
		case "RSA PUBLIC KEY":
			key, err = x509.ParsePKCS1PublicKey(block.Bytes)
		case "CERTIFICATE":
			var cert *x509.Certificate
			cert, err = x509.ParseCertificate(block.Bytes)
			if err == nil {
				key = cert.PublicKey
			}
		default:
			if strings.Contains(block.Type, "PRIVATE KEY") {
				return nil, fmt.Errorf("holds a private key; give the public key only")
			}
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("parsing %s: %v", block.Type, err)
		}
		switch k := key.(type) {
		case *rsa.PublicKey:
			if k.N.BitLen() < minRSABits {
				return nil, fmt.Errorf("RSA key of %d bits is too short (minimum %d)", k.N.BitLen(), minRSABits)
			}
		case *ecdsa.PublicKey:
			if _, ok := ecdsaAlgs[k.Curve.Params().Name]; !ok || k.Curve == elliptic.P224() {
				return nil, fmt.Errorf("unsupported ECDSA curve %s", k.Curve.Params().Name)
			}
		case ed25519.PublicKey:
		default:
			return nil, fmt.Errorf("unsupported key type %T", key)
		}
		keys = append(keys, key)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("no public key found (want PEM: PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE)")
	}
	return keys, nil
}

// readSmallFile reads a regular file of at most max bytes. The read is
// bounded whatever the file's size says: a file can grow after the Stat,
// and some (in /proc) report a size of 0.
func readSmallFile(path string, max int64) ([]byte, error) {
	f, fi, err := openRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi.Size() > max {
		return nil, fmt.Errorf("larger than %d bytes", max)
	}
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("larger than %d bytes", max)
	}
	return data, nil
}

// openRegular opens a file for reading if it is a regular file. Anything
// else is refused before it is opened: a device such as /dev/zero never
// ends, and opening a FIFO blocks until a writer comes.
func openRegular(path string) (*os.File, os.FileInfo, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, nil, err
	}
	if err := checkRegular(fi); err != nil {
		return nil, nil, err
	}
	// O_NONBLOCK: a FIFO put in the file's place since the check must not
	// block the open either.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, err
	}
	// What was opened may not be what was looked at.
	if fi, err = f.Stat(); err == nil {
		err = checkRegular(fi)
	}
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, fi, nil
}

func checkRegular(fi os.FileInfo) error {
	if fi.Mode().IsRegular() {
		return nil
	}
	what := "a special file"
	switch m := fi.Mode(); {
	case m.IsDir():
		what = "a directory"
	case m&os.ModeNamedPipe != 0:
		what = "a named pipe"
	case m&os.ModeSocket != 0:
		what = "a socket"
	case m&os.ModeDevice != 0:
		what = "a device"
	}
	return fmt.Errorf("not a regular file (%s)", what)
}

// limitedTransport bounds the size of every response it returns. It reads
// the whole body before handing the response on: a JSON decoder stops at
// the end of the first value, so a limit enforced while decoding would let
// a response of any size through as long as its first bytes held a set
// (say, a set followed by gigabytes of whitespace). A response larger than
// max is an error, and the last good set stays in use.
type limitedTransport struct {
	rt  http.RoundTripper
	max int64
}

func (t limitedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.rt.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.ContentLength > t.max {
		return nil, fmt.Errorf("JWK Set response larger than %d bytes", t.max)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, t.max+1))
	if err != nil {
		return nil, fmt.Errorf("reading JWK Set response: %v", err)
	}
	if int64(len(body)) > t.max {
		return nil, fmt.Errorf("JWK Set response larger than %d bytes", t.max)
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	resp.ContentLength = int64(len(body))
	return resp, nil
}
