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
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
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

// algEd25519 is RFC 9864's fully-specified name of EdDSA with an Ed25519
// key. It is the only EdDSA that golang-jwt verifies, so here the two
// names are one algorithm: in a token's header, in a key set's alg and in
// the algorithms option, where either allows both.
const algEd25519 = "Ed25519"

// canonicalAlg is the name that keys and golang-jwt know alg by: EdDSA
// for Ed25519, any other as it is.
func canonicalAlg(alg string) string {
	if alg == algEd25519 {
		return "EdDSA"
	}
	return alg
}

// signingMethod is golang-jwt's method for alg, or nil. Ed25519 is
// mapped here rather than registered with golang-jwt, whose registry
// other modules of the process share.
func signingMethod(alg string) jwt.SigningMethod {
	return jwt.GetSigningMethod(canonicalAlg(alg))
}

// withAlgNames is algs in canonical names, each once, with Ed25519 next
// to EdDSA: the names a token's header may use.
func withAlgNames(algs []string) []string {
	out := make([]string, 0, len(algs)+1)
	for _, alg := range algs {
		if alg = canonicalAlg(alg); !slices.Contains(out, alg) {
			out = append(out, alg)
		}
	}
	if slices.Contains(out, "EdDSA") {
		out = append(out, algEd25519)
	}
	return out
}

// algNotAccepted is errAlg naming the alg a token's header gave, quoted
// and cut to 32 bytes: the detail of a refusal for an algorithm that is
// not accepted.
func algNotAccepted(alg []byte) error {
	return fmt.Errorf("%w: %s", errAlg, strconv.Quote(truncate(string(alg), 32)))
}

// errNoKeyConfigured is the error for a handler without any key source.
var errNoKeyConfigured = errors.New("no key configured: need secret, public_key, jwks, oidc or jwks_file (or introspect or session_check for opaque credentials)")

// isAsymmetric reports whether alg is verified with a public key.
func isAsymmetric(alg string) bool {
	alg = canonicalAlg(alg)
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
	if h.Introspect != nil || h.SessionCheck != nil {
		return h.checkOpaque()
	}
	return checkKeyTypes(len(h.Secrets), len(h.PublicKeys), len(h.JWKS)+len(h.OIDC)+len(h.JWKSFiles), h.Algorithms)
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
	oidcKeys []string // of oidcSets, released by close
	ctx      context.Context
}

// jwkSource is a JWK Set, local or remote. Whether it is remote is a field,
// not found by comparing keyfunc values: those hold slices, and comparing
// them panics.
type jwkSource struct {
	kf     keyfunc.Keyfunc
	remote bool   // fetched over HTTP
	name   string // the option and its file or URL, for errors
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
		kf, err := loadKeySetFile(file, logger)
		if err != nil {
			return nil, err
		}
		k.sets = append(k.sets, jwkSource{kf: kf, name: "jwks_file " + file})
	}

	for _, src := range h.JWKS {
		// Placeholders such as {env.JWKS_URL} are replaced at load.
		resolved := *src
		resolved.URL = repl.ReplaceKnown(src.URL, "")
		trust, err := loadTrust(ctx, src)
		if err != nil {
			return nil, err
		}
		kf, poolKey, err := loadRemoteSet(&resolved, trust, logger)
		if err != nil {
			return nil, err
		}
		k.poolKeys = append(k.poolKeys, poolKey)
		k.sets = append(k.sets, jwkSource{kf: kf, remote: true, name: jwksName(resolved.URL)})
	}
	for _, src := range h.OIDC {
		resolved := *src
		resolved.URL = repl.ReplaceKnown(src.URL, "")
		trust, err := loadTrust(ctx, src)
		if err != nil {
			return nil, err
		}
		o, poolKey, err := loadOIDC(&resolved, trust, logger)
		if err != nil {
			return nil, err
		}
		k.oidcKeys = append(k.oidcKeys, poolKey)
		name := "oidc " + resolved.URL
		if u, err := url.Parse(resolved.URL); err == nil && u.Host != "" {
			name = "oidc " + redactURL(u)
		}
		k.sets = append(k.sets, jwkSource{kf: o, remote: true, name: name})
	}
	if len(h.JWKS) > 0 && len(h.Issuers) == 0 && len(h.Audiences) == 0 {
		logger.Warn("jwks without issuer or audience: any token of this key set is accepted, including those minted for other applications")
	}

	if len(k.static) == 0 && len(k.sets) == 0 {
		return nil, errNoKeyConfigured
	}
	if len(k.sets) > 0 {
		k.setAlgs = append(slices.Clone(jwksDefault), k.symmetricAlgs()...)
	}
	return k, nil
}

// symmetricAlgs is what the symmetric ("oct") signing keys of the local
// sets may verify: the HMAC algorithm of a key's alg, or all three for a
// key without one. Those of a remote set are never used (setKey).
func (k *keyring) symmetricAlgs() []string {
	var algs []string
	for _, set := range k.sets {
		if set.remote {
			continue
		}
		all, err := set.kf.Storage().KeyReadAll(k.ctx)
		if err != nil {
			continue
		}
		for _, jwk := range all {
			m := jwk.Marshal()
			if _, sym := jwk.Key().([]byte); !sym || (m.USE != "" && m.USE != jwkset.UseSig) {
				continue
			}
			for _, alg := range hmacAlgs {
				if (m.ALG == "" || m.ALG.String() == alg) && !slices.Contains(algs, alg) {
					algs = append(algs, alg)
				}
			}
		}
	}
	return algs
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
		return withAlgNames(algs), nil
	}
	// Names and "none" were refused by checkAlgorithm (checkConfig).
	for _, alg := range configured {
		_, static := k.static[canonicalAlg(alg)]
		// A key set may hold symmetric ("oct") keys, so HS* is allowed with
		// one when written explicitly.
		if !static && len(k.sets) == 0 {
			return nil, fmt.Errorf("algorithms: no configured key can verify %s", alg)
		}
	}
	names := withAlgNames(configured)
	k.setAlgs = names
	return names, nil
}

// lookup returns the key, or a jwt.VerificationKeySet of keys, that may
// verify a token of alg (a canonical name: golang-jwt's) with the header
// kid. It never touches the network except through a key set's
// rate-limited refetch for an unknown kid.
//
// Static keys are found here, on a small frame; key sets in lookupKID and
// lookupAll, whose frames are large (jwkset hands out JWKs by value): kept
// out of lookup, they are not on the stack of a handshake that no key set
// can verify, which would otherwise grow a fresh goroutine's stack.
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
	for i, set := range k.sets {
		jwk, err := set.kf.Storage().KeyRead(k.ctx, kid)
		if err != nil {
			continue
		}
		key, err := setKeyFor(set, jwk, alg)
		if err == nil {
			return key, nil
		}
		// A kid may be listed twice (the same key for enc and for
		// sig, or for two algs): another key of that kid may fit.
		if key, ok := k.otherWithKID(k.sets[i:], kid, alg); ok {
			return key, nil
		}
		return nil, err
	}
	if static != nil {
		return static, nil
	}
	if err := k.unfetched(); err != nil {
		return nil, err
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
		for _, jwk := range all {
			if a := jwk.Marshal().ALG.String(); a != "" && canonicalAlg(a) != alg {
				continue
			}
			if key, ok := setKey(ks, jwk, alg); ok {
				set.Keys = append(set.Keys, key)
			}
		}
	}
	if len(set.Keys) == 0 {
		if err := k.unfetched(); err != nil {
			return nil, err
		}
		return nil, errNoKey
	}
	return set, nil
}

// A JWK Set is read key by key, the same from a jwks_file and from a
// remote jwks. jwkset parses a set whole: one key it refuses (a curve it
// does not know, a malformed member, a certificate that does not match
// the key) fails a file's load, or every fetch of a remote set, which then
// keeps its last good keys, or has none. Here each key is parsed on its
// own, as jwkset parses a fetched one (the same unmarshalling and
// validation), and a key that fails is skipped with a warning naming it.

// skippedKey is a key of a set that cannot be used, and why.
type skippedKey struct {
	index int // in the set's "keys", from 0
	kid   string
	err   error
}

func (s skippedKey) String() string {
	return fmt.Sprintf("key %d, kid %q: %s", s.index+1, s.kid, s.reason())
}

// reason is why the key is skipped, on one line, without jwkset's
// prefixes.
func (s skippedKey) reason() string {
	r := strings.ReplaceAll(s.err.Error(), "\n", "; ")
	for _, prefix := range []string{"failed to unmarshal JSON Web Key: ", "failed to validate JSON Web Key: "} {
		r = strings.TrimPrefix(r, prefix)
	}
	return truncate(r, 160)
}

// parseKeySet parses a JWK Set key by key. It returns the keys that can be
// used, the others with their reasons, and whether a usable key was
// amended to pass jwkset's validation (see parseKey). An error means that
// raw is not a JWK Set at all.
func parseKeySet(raw []byte) (keys []jwkset.JWK, skipped []skippedKey, amended bool, err error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(raw, &set); err != nil {
		return nil, nil, false, fmt.Errorf("not a JWK Set: %v", err)
	}
	for i, member := range set.Keys {
		jwk, fixed, err := parseKey(member)
		if err != nil {
			skipped = append(skipped, skippedKey{index: i, kid: kidOf(member), err: err})
			continue
		}
		keys = append(keys, jwk)
		amended = amended || fixed
	}
	return keys, skipped, amended, nil
}

// parseKey parses one member of a JWK Set as jwkset parses the keys of a
// fetched set. One thing is amended first: jwkset requires the alg EdDSA
// of an Ed25519 key that carries its certificate (x5c), while alg is
// optional (RFC 7517) and RFC 9864 names the algorithm Ed25519; an Ed25519
// key verifies that one algorithm whatever its alg says, so such a key is
// given EdDSA.
func parseKey(member json.RawMessage) (_ jwkset.JWK, amended bool, _ error) {
	var m jwkset.JWKMarshal
	if err := json.Unmarshal(member, &m); err != nil {
		return jwkset.JWK{}, false, err
	}
	if m.KTY == jwkset.KtyOKP && m.CRV == jwkset.CrvEd25519 && len(m.X5C) > 0 && (m.ALG == "" || m.ALG == algEd25519) {
		m.ALG, amended = jwkset.AlgEdDSA, true
	}
	jwk, err := jwkset.NewJWKFromMarshal(m, jwkset.JWKMarshalOptions{Private: true}, jwkset.JWKValidateOptions{})
	return jwk, amended, err
}

// kidOf is the kid of a JWK Set member that may not parse, for a log.
func kidOf(member json.RawMessage) string {
	var m struct {
		KID any `json:"kid"`
	}
	_ = json.Unmarshal(member, &m)
	kid, _ := m.KID.(string)
	return truncate(kid, 64)
}

// skippedList is the skipped keys for an error: "key 2, kid "a": reason; ...".
func skippedList(skipped []skippedKey) string {
	parts := make([]string, len(skipped))
	for i, s := range skipped {
		parts[i] = s.String()
	}
	return truncate(strings.Join(parts, "; "), 1000)
}

// warnSkipped logs each skipped key of the set named set.
func warnSkipped(logger *zap.Logger, set string, skipped []skippedKey) {
	for _, s := range skipped {
		logger.Warn("skipping a key of the JWK Set that cannot be used",
			zap.String("set", set), zap.String("kid", s.kid), zap.Int("key", s.index+1), zap.String("reason", s.reason()))
	}
}

// loadKeySetFile reads a jwks_file key by key (parseKeySet).
func loadKeySetFile(file string, logger *zap.Logger) (keyfunc.Keyfunc, error) {
	name := "jwks_file " + file
	raw, err := readSmallFile(file, maxKeyFile)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", name, err)
	}
	keys, skipped, _, err := parseKeySet(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", name, err)
	}
	if len(keys) == 0 {
		if len(skipped) > 0 {
			return nil, fmt.Errorf("%s: no usable key (%s)", name, skippedList(skipped))
		}
		return nil, fmt.Errorf("%s: no usable key: the set is empty", name)
	}
	warnSkipped(logger, name, skipped)
	store := jwkset.NewMemoryStorage()
	if err := store.KeyReplaceAll(context.Background(), keys); err != nil {
		return nil, fmt.Errorf("%s: %v", name, err)
	}
	return keyfunc.New(keyfunc.Options{Storage: store})
}

// usableKeySet is a fetched JWK Set as jwkset is to parse it: without the
// keys that cannot be used, each named in a warning (skipWarnings), and
// with the amendments of parseKey. A set that holds keys but none usable
// is an error, a failed fetch: the last good set keeps serving. A body
// that is no JWK Set is returned as it is, for jwkset to refuse; so is a
// set that needs no change.
func usableKeySet(body []byte, set string) ([]byte, error) {
	keys, skipped, amended, err := parseKeySet(body)
	if err != nil {
		return body, nil
	}
	if len(skipped) > 0 && skipWarnings.due(set, skipped) {
		warnSkipped(caddy.Log().Named("http.handlers.ws_auth"), set, skipped)
	}
	if len(keys) == 0 && len(skipped) > 0 {
		return nil, fmt.Errorf("no usable key in the JWK Set (%s)", skippedList(skipped))
	}
	if len(skipped) == 0 && !amended {
		return body, nil
	}
	out := jwkset.JWKSMarshal{Keys: make([]jwkset.JWKMarshal, len(keys))}
	for i, jwk := range keys {
		out.Keys[i] = jwk.Marshal()
	}
	return json.Marshal(out)
}

// warnFetchFailed logs a failed fetch of the remote set at url, saying
// whether its last good keys keep serving or no keys were fetched yet (and
// handshakes that need them are refused as unavailable). kf is the set,
// nil while its first fetch runs.
func warnFetchFailed(url string, kf keyfunc.Keyfunc, err error) {
	logger := caddy.Log().Named("http.handlers.ws_auth")
	if kf != nil {
		if all, _ := kf.Storage().KeyReadAll(context.Background()); len(all) > 0 {
			logger.Warn("fetching JWK Set failed; serving the last good set", zap.String("url", url), zap.Error(err))
			return
		}
	}
	logger.Warn("fetching JWK Set failed; no keys fetched yet: handshakes that need them are refused as unavailable",
		zap.String("url", url), zap.Error(err))
}

// skipWarnings keeps a remote set, fetched every refresh and on unknown
// kids, from warning of the same skipped keys each time: a warning is
// repeated when the skipped keys change, or after skipWarnEvery.
var skipWarnings = &skipWarned{last: make(map[string]skipWarning)}

const (
	skipWarnEvery = time.Hour
	// maxSkipWarned bounds the sets remembered; past it, all are
	// forgotten (and may warn once more).
	maxSkipWarned = 1024
)

type skipWarned struct {
	mu   sync.Mutex
	last map[string]skipWarning // by set
}

type skipWarning struct {
	keys string // skippedList
	at   time.Time
}

// due reports whether the skipped keys of set are to be warned of now,
// and if so notes that they are.
func (w *skipWarned) due(set string, skipped []skippedKey) bool {
	keys := skippedList(skipped)
	t := now()
	w.mu.Lock()
	defer w.mu.Unlock()
	if prev, ok := w.last[set]; ok && prev.keys == keys && t.Sub(prev.at) < skipWarnEvery {
		return false
	}
	if len(w.last) >= maxSkipWarned {
		clear(w.last)
	}
	w.last[set] = skipWarning{keys: keys, at: t}
	return true
}

// setKeyFor is setKey for a key that a token names by its kid, with an
// error that says why the key does not fit: its alg is another, or it is
// not a signing key of the algorithm's type.
func setKeyFor(set jwkSource, jwk jwkset.JWK, alg string) (any, error) {
	if a := jwk.Marshal().ALG.String(); a != "" && canonicalAlg(a) != alg {
		return nil, fmt.Errorf("key %q is for %s, token uses %s", truncate(jwk.Marshal().KID, 64), a, alg)
	}
	key, ok := setKey(set, jwk, alg)
	if !ok {
		return nil, fmt.Errorf("key %q cannot verify %s", truncate(jwk.Marshal().KID, 64), alg)
	}
	return key, nil
}

// otherWithKID looks through every key of sets for one of this kid that
// fits alg, whatever its place: a set's KeyRead gives the first key of a
// kid alone. It is called only when that first key does not fit, and
// fetches nothing.
func (k *keyring) otherWithKID(sets []jwkSource, kid, alg string) (any, bool) {
	for _, set := range sets {
		all, err := set.kf.Storage().KeyReadAll(k.ctx)
		if err != nil {
			continue
		}
		for _, jwk := range all {
			if jwk.Marshal().KID != kid {
				continue
			}
			if key, err := setKeyFor(set, jwk, alg); err == nil {
				return key, true
			}
		}
	}
	return nil, false
}

// setKey returns the public key of a key set's JWK if it may verify alg:
// a signing key ("use" absent or "sig") of the matching type, an RSA key of
// at least 2048 bits, and a symmetric key only from a local file, since a
// secret served over HTTP is no secret.
func setKey(set jwkSource, jwk jwkset.JWK, alg string) (any, bool) {
	if use := jwk.Marshal().USE; use != "" && use != jwkset.UseSig {
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

// unfetched returns errKeysUnavailable, naming the set, if a remote key
// set holds no key yet, that is was never fetched; else nil. A token that
// no key we have verifies may then be signed by one of its keys: the
// failure is ours, not the client's. Only remote sets count: a local set
// (jwks_file) with keys says nothing of the keys a remote one would bring.
func (k *keyring) unfetched() error {
	for _, set := range k.sets {
		if !set.remote {
			continue
		}
		if all, err := set.kf.Storage().KeyReadAll(k.ctx); err != nil || len(all) == 0 {
			name := set.name
			if name == "" {
				name = "a remote key set"
			}
			return fmt.Errorf("%w: no keys fetched yet from %s", errKeysUnavailable, name)
		}
	}
	return nil
}

// close releases the pooled remote key sets.
func (k *keyring) close() {
	for _, key := range k.poolKeys {
		_, _ = jwksSets.Delete(key)
	}
	for _, key := range k.oidcKeys {
		_, _ = oidcSets.Delete(key)
	}
	k.poolKeys, k.oidcKeys = nil, nil
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
	pool sync.Pool // of *pooledMAC
}

// A pooledMAC is a keyed hash with room for its sum: a sum into a buffer
// on verify's stack would be on the heap, since Sum is called through an
// interface.
type pooledMAC struct {
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
	k.pool.New = func() any { return &pooledMAC{mac: hmac.New(hf, secret)} }
	return k
}

// verify reports, in constant time, whether sig is the MAC of input.
func (k *hmacKey) verify(input, sig []byte) bool {
	m := k.pool.Get().(*pooledMAC)
	m.mac.Reset()
	m.mac.Write(input)
	ok := hmac.Equal(m.mac.Sum(m.sum[:0]), sig)
	k.pool.Put(m)
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

// limitedTransport bounds the size of every response it returns, and
// hands on a JWK Set without the keys that cannot be used
// (usableKeySet), so that one such key does not fail the fetch. It reads
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
	if resp.StatusCode == http.StatusOK {
		if body, err = usableKeySet(body, "jwks "+redactURL(r.URL)); err != nil {
			return nil, err
		}
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	resp.ContentLength = int64(len(body))
	return resp, nil
}
