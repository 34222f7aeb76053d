package wsauth

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// identity is everything the module knows of an authenticated client: the
// one place that holds a connection's claims. The token itself is not kept,
// only its payload segment, decoded again if a placeholder asks for a claim
// that tokenClaims does not hold.
type identity struct {
	claims tokenClaims
	user   string
	source sourceKind

	verified bool      // the signature checked out
	granted  scopeList // the scopes the token grants, from the configured claim

	lazy lazyClaims // every claim, decoded on first use

	// from is the source that yielded the credential, as an opaque
	// credential is sent on to be judged; nil: a refresh message's.
	from *tokenSource
}

// lazyClaims is a token's payload segment, decoded into every claim on
// first use.
type lazyClaims struct {
	payload string
	all     map[string]any
	err     error
}

// tokenClaims is what every handshake decodes: the registered claims and
// the scope claims, into fixed fields without pointers, which costs a
// fraction of decoding the whole payload into a map.
type tokenClaims struct {
	Issuer    optString   `json:"iss"`
	Subject   optString   `json:"sub"`
	Audience  audience    `json:"aud"`
	ExpiresAt numericDate `json:"exp"`
	NotBefore numericDate `json:"nbf"`
	IssuedAt  numericDate `json:"iat"`
	ID        optString   `json:"jti"`
	Scope     scopeList   `json:"scope"`
	Scp       scopeList   `json:"scp"`
}

// member decodes one claim into c, ignoring those it does not hold. An iss
// or aud equal to one of issuers or audiences (the configured ones) is that
// string rather than a copy: no allocation, and the connection keeps none.
func (c *tokenClaims) member(name, v []byte, issuers, audiences []string) error {
	switch string(name) {
	case "iss":
		if c.Issuer.setKnown(v, issuers) {
			return nil
		}
		return c.Issuer.UnmarshalJSON(v)
	case "sub":
		return c.Subject.UnmarshalJSON(v)
	case "aud":
		if c.Audience.one.setKnown(v, audiences) {
			return nil
		}
		return c.Audience.UnmarshalJSON(v)
	case "exp":
		return c.ExpiresAt.UnmarshalJSON(v)
	case "nbf":
		return c.NotBefore.UnmarshalJSON(v)
	case "iat":
		return c.IssuedAt.UnmarshalJSON(v)
	case "jti":
		return c.ID.UnmarshalJSON(v)
	case "scope":
		return c.Scope.UnmarshalJSON(v)
	case "scp":
		return c.Scp.UnmarshalJSON(v)
	}
	return nil
}

// setKnown sets o to the string of list that the JSON string v holds, if v
// holds one without escapes, and reports whether it did.
func (o *optString) setKnown(v []byte, list []string) bool {
	if len(v) < 2 || v[0] != '"' {
		return false
	}
	raw := v[1 : len(v)-1]
	for _, s := range list {
		if string(raw) == s && bytes.IndexByte(raw, '\\') < 0 {
			*o = optString{s: s, ok: true}
			return true
		}
	}
	return false
}

// numericDate is a JSON NumericDate (RFC 7519, section 2): seconds since
// the epoch, possibly fractional.
type numericDate struct {
	sec float64
	set bool
}

func (d *numericDate) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*d = numericDate{}
		return nil
	}
	// Integers, the usual case, without strconv's string conversion; 12
	// digits reach beyond the year 9999.
	var n int64
	digits := len(b) > 0 && len(b) <= 12
	for _, c := range b {
		if c < '0' || c > '9' {
			digits = false
			break
		}
		n = n*10 + int64(c-'0')
	}
	if digits && n <= maxDate {
		*d = numericDate{sec: float64(n), set: true}
		return nil
	}
	f, err := strconv.ParseFloat(string(b), 64)
	if err != nil {
		return errors.New("date claim is not a number")
	}
	// time.Time cannot hold what is far beyond: 1e19 would wrap around.
	if f < minDate || f > maxDate {
		return errors.New("date claim out of range")
	}
	*d = numericDate{sec: f, set: true}
	return nil
}

// The dates a token may carry: years 1 to 9999.
const (
	minDate = -62135596800
	maxDate = 253402300799
)

func (d numericDate) time() time.Time {
	sec, frac := math.Modf(d.sec)
	return time.Unix(int64(sec), int64(frac*1e9))
}

// audience is the aud claim: one string or an array of strings.
type audience struct {
	one  optString
	many []string
}

func (a *audience) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '[' {
		// Into a variable of its own, so that a is not handed to
		// encoding/json: the identity holding it stays off the heap.
		var many []string
		err := json.Unmarshal(b, &many)
		a.many = many
		return err
	}
	if string(b) == "null" {
		return nil
	}
	if err := a.one.UnmarshalJSON(b); err != nil || !a.one.ok {
		return errors.New("aud is neither a string nor an array of strings")
	}
	return nil
}

// containsAny reports whether the audience holds one of want.
func (a *audience) containsAny(want []string) bool {
	if a.one.ok && slices.Contains(want, a.one.s) {
		return true
	}
	return slices.ContainsFunc(a.many, func(s string) bool { return slices.Contains(want, s) })
}

// checkTimes applies exp (required), nbf and iat with the leeway, as
// golang-jwt's validator does: a token expires at exp+leeway exactly.
func (c *tokenClaims) checkTimes(now time.Time, leeway time.Duration) (reason, error) {
	if !c.ExpiresAt.set {
		return reasonInvalid, errNoExp
	}
	return c.checkValidity(now, leeway)
}

// checkValidity is checkTimes for claims that may have no exp (an opaque
// credential's answer).
func (c *tokenClaims) checkValidity(now time.Time, leeway time.Duration) (reason, error) {
	if c.ExpiresAt.set && !now.Before(c.ExpiresAt.time().Add(leeway)) {
		return reasonExpired, errExpired
	}
	if c.NotBefore.set && now.Add(leeway).Before(c.NotBefore.time()) {
		return reasonInvalid, errNotYet
	}
	if c.IssuedAt.set && now.Add(leeway).Before(c.IssuedAt.time()) {
		return reasonInvalid, errIssuedLater
	}
	return 0, nil
}

// optString decodes a JSON string, and any other JSON value as "not a
// string" instead of failing the whole token: whether that matters depends
// on the configuration (a numeric sub is fine when user_claim is email).
type optString struct {
	s  string
	ok bool
}

func (o *optString) UnmarshalJSON(b []byte) error {
	var err error
	o.s, o.ok, err = jsonOptString(b)
	return err
}

// jsonOptString decodes b if it is a JSON string; ok is false for any
// other JSON value.
func jsonOptString(b []byte) (s string, ok bool, err error) {
	if len(b) < 2 || b[0] != '"' {
		return "", false, nil
	}
	if bytes.IndexByte(b, '\\') < 0 {
		return string(b[1 : len(b)-1]), true, nil
	}
	var text string // on the heap, and only here
	err = json.Unmarshal(b, &text)
	return text, true, err
}

// scopeList is a scope claim: a space-separated string ("a b") or an
// array of strings.
type scopeList struct {
	str string
	arr []string
}

func (s *scopeList) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '[' {
		var arr []string // see audience.UnmarshalJSON
		err := json.Unmarshal(b, &arr)
		s.arr = arr
		return err
	}
	str, _, err := jsonOptString(b)
	s.str = str
	return err
}

func (s scopeList) empty() bool { return s.str == "" && len(s.arr) == 0 }

// each calls fn for every granted scope until it returns true.
func (s scopeList) each(fn func(string) bool) bool {
	for _, a := range s.arr {
		if fn(a) {
			return true
		}
	}
	for rest := s.str; rest != ""; {
		var f string
		f, rest, _ = strings.Cut(rest, " ")
		if f != "" && fn(f) {
			return true
		}
	}
	return false
}

func (s scopeList) String() string {
	if len(s.arr) > 0 {
		return strings.Join(s.arr, " ")
	}
	return s.str
}

// grants reports whether the scope list covers want, directly or by a
// "prefix:*" wildcard.
func (s scopeList) grants(want string) bool {
	return s.each(func(g string) bool {
		if g == want {
			return true
		}
		prefix, ok := strings.CutSuffix(g, "*")
		return ok && strings.HasSuffix(prefix, ":") && strings.HasPrefix(want, prefix)
	})
}

// verify parses and checks token, filling id: signature, times, issuer,
// audience and user. It returns why the token is refused, or nil. It
// charges and consults nothing.
//
// The compact JWS is parsed here rather than by jwt.Parser, which decodes
// the header into a map and the claims before checking the signature, and
// reads both with encoding/json's rules: the header is read for alg, kid and
// crit only, the signature is checked with golang-jwt's signing methods
// (HMAC with a pooled keyed hash), and only then are the claims decoded,
// into fixed fields.
//
// Header and claims are read by strictObject: member names match exactly,
// as RFC 7519 requires (encoding/json would fill "sub" from "SUB"), a
// duplicate member makes the token invalid, and so does invalid UTF-8.
func (h *Handler) verify(token string, id *identity) *refusal {
	if len(token) > h.maxToken {
		return &refusal{reason: reasonInvalid, detail: errTooLarge}
	}
	// The base64 decoder skips line breaks: refuse them, so that one token
	// has one spelling. (Two IndexByte scans cost a fraction of
	// ContainsAny's byte-by-byte loop.)
	if strings.IndexByte(token, '\r') >= 0 || strings.IndexByte(token, '\n') >= 0 {
		return &refusal{reason: reasonInvalid, detail: errMalformed}
	}
	if h.opaque != nil {
		return h.verifyOpaque(token, id)
	}
	if h.tokens != nil && h.cachedIdentity(token, id) {
		// Verified before, by the key its alg and kid still find: the
		// times are checked again, the rest (signature, issuer,
		// audience, user) holds for the same token and handler.
		if rsn, err := id.claims.checkTimes(now(), time.Duration(h.Leeway)); err != nil {
			return &refusal{reason: rsn, detail: err}
		}
		return nil
	}
	i := strings.IndexByte(token, '.')
	j := strings.LastIndexByte(token, '.')
	if i <= 0 || j <= i+1 || j == len(token)-1 || strings.IndexByte(token[i+1:j], '.') >= 0 {
		return &refusal{reason: reasonInvalid, detail: errMalformed}
	}
	// One copy of the token for the decoders and the HMAC, and after it the
	// three decoded segments, each appended after the last, in a pooled
	// buffer: whatever verify keeps of the token is copied out of it.
	sp := getScratch(len(token) + b64.DecodedLen(len(token)))
	defer putScratch(sp)
	tb := append((*sp)[:0], token...)
	buf := tb[len(tb):]
	headerSeg, payloadSeg, sigSeg := tb[:i], tb[i+1:j], tb[j+1:]

	raw, err := b64.AppendDecode(buf, headerSeg)
	if err != nil {
		return &refusal{reason: reasonInvalid, detail: errMalformed}
	}
	buf = raw[len(raw):]
	var alg, kid []byte
	crit := false
	err = strictObject(raw, func(name, v []byte) (err error) {
		switch string(name) {
		case "alg":
			alg, err = jsonStringBytes(v)
		case "kid":
			kid, err = jsonStringBytes(v)
		case "crit":
			crit = true
		}
		return err
	})
	if err != nil {
		return &refusal{reason: reasonInvalid, detail: errMalformed}
	}
	if crit {
		// Extensions the token says must be understood: we know none.
		return &refusal{reason: reasonInvalid, detail: errCrit}
	}
	method := h.methods[string(alg)]
	if method == nil {
		return &refusal{reason: reasonInvalid, detail: algNotAccepted(alg)}
	}
	key, err := h.keys.lookup(method.Alg(), string(kid))
	if err != nil {
		if errors.Is(err, errKeysUnavailable) {
			return &refusal{reason: reasonUnavailable, detail: err}
		}
		return &refusal{reason: reasonInvalid, detail: err}
	}
	sig, err := b64.AppendDecode(buf, sigSeg)
	if err != nil {
		return &refusal{reason: reasonInvalid, detail: errMalformed}
	}
	buf = sig[len(sig):]
	if !verifySignature(method, token[:j], tb[:j], sig, key) {
		return &refusal{reason: reasonInvalid, detail: errSignature}
	}
	// Claims are only worth anything (to a log, say) from here on.
	id.verified = true
	id.lazy.payload = token[i+1 : j]

	raw, err = b64.AppendDecode(buf, payloadSeg)
	if err != nil {
		return &refusal{reason: reasonInvalid, detail: errMalformed}
	}
	if ref := h.checkClaims(raw, id, nil); ref != nil {
		return ref
	}
	if h.tokens != nil {
		h.tokens.put(token, id, method.Alg(), string(kid), key)
	}
	return nil
}

// checkClaims decodes the claims of a verified credential (a JWT's
// payload, an introspection answer, a session endpoint's JSON) from raw,
// a JSON object, into id and checks them: times, issuer, audience, user.
// headers, if not nil, is what an answer says outside its claims (a
// session endpoint's user and scopes), set before the checks. (A method
// rather than a func value: a func called with a pointer into id would
// move every handshake's identity to the heap.) A JWT
// must have an exp; an opaque credential's answer may not (RFC 7662 makes
// it optional), and then the credential has no expiry of its own.
func (h *Handler) checkClaims(raw []byte, id *identity, headers *answerHeaders) *refusal {
	id.claims = tokenClaims{}
	err := strictObject(raw, func(name, v []byte) error {
		return id.claims.member(name, v, h.issuers, h.audiences)
	})
	if err != nil {
		return &refusal{reason: reasonInvalid, detail: errMalformed}
	}
	c := &id.claims
	// The configured user and scope claims, when they are not among the
	// fixed fields, take the place of sub and scope.
	if h.needMap {
		if h.userClaim != "sub" {
			c.Subject = optString{}
			// Only a string names a user (the contract), not a
			// number or an object.
			if v, ok := id.claim(h.userClaim); ok {
				c.Subject.s, c.Subject.ok = v.(string)
			}
		}
		if h.scopeClaim != "" && h.scopeClaim != "scope" && h.scopeClaim != "scp" {
			c.Scope, c.Scp = scopeFromAny(id.lookup(h.scopeClaim)), scopeList{}
		}
	}
	if headers != nil {
		headers.apply(c)
	}
	if !c.ExpiresAt.set && h.opaque == nil {
		return &refusal{reason: reasonInvalid, detail: errNoExp}
	}
	if rsn, err := c.checkValidity(now(), time.Duration(h.Leeway)); err != nil {
		return &refusal{reason: rsn, detail: err}
	}
	if len(h.issuers) > 0 && (!c.Issuer.ok || !slices.Contains(h.issuers, c.Issuer.s)) {
		return &refusal{reason: reasonInvalid, detail: errIssuer}
	}
	if len(h.audiences) > 0 && !c.Audience.containsAny(h.audiences) {
		return &refusal{reason: reasonInvalid, detail: errAudience}
	}
	if !c.Subject.ok || c.Subject.s == "" {
		return &refusal{reason: reasonInvalid, detail: errNoUser}
	}
	id.user = c.Subject.s
	id.granted = id.scopes(h.scopeClaim)
	return nil
}

// checkToken runs the checks of a token, in order: verify (signature and
// claims), authorize (blocklist, scopes), admit (limits). A token checked
// again on a live connection (refresh_message, revalidate) goes through
// verify and authorize alone: it is no new handshake.
func (h *Handler) checkToken(token string, id *identity) *refusal {
	if ref := h.verify(token, id); ref != nil {
		return ref
	}
	if ref := h.authorize(id); ref != nil {
		return ref
	}
	return h.admit(id)
}

// authorize checks that a verified identity may connect: neither its token
// (jti) nor its user is blocked, and it grants every required scope.
func (h *Handler) authorize(id *identity) *refusal {
	if h.blocklist.BlockedToken(id.claims.ID.s, id.user, now()) {
		return refuseBlockedToken
	}
	for _, want := range h.Scopes {
		if !id.granted.grants(want) {
			return &refusal{reason: reasonForbidden, detail: errors.New("scope not granted: " + want)}
		}
	}
	return nil
}

// admit charges what an authorized handshake costs: the handshake rate of
// its user.
func (h *Handler) admit(id *identity) *refusal {
	if _, none := h.userLimit.(noLimit); none {
		return nil // no key to build
	}
	if ok, wait := h.userLimit.Allow(userKey(id.claims.Issuer.s, id.user), now()); !ok {
		return &refusal{reason: reasonRateLimited, detail: errRateUser, retry: wait}
	}
	return nil
}

// b64 is base64url without padding, refusing non-zero trailing bits so that
// a segment has one spelling.
var b64 = base64.RawURLEncoding.Strict()

// verifySignature checks sig over input with key, or with any key of a
// jwt.VerificationKeySet. input comes twice, the same bytes: as a string
// for golang-jwt's methods, which take one, and as bytes for the HMAC,
// so that neither is converted into the other.
func verifySignature(m jwt.SigningMethod, input string, inputBytes, sig []byte, key any) bool {
	if set, ok := key.(jwt.VerificationKeySet); ok {
		for _, k := range set.Keys {
			if verifySignature(m, input, inputBytes, sig, k) {
				return true
			}
		}
		return false
	}
	if hk, ok := key.(*hmacKey); ok {
		return hk.alg == m.Alg() && hk.verify(inputBytes, sig)
	}
	if !keyFits(m.Alg(), key) {
		return false
	}
	return m.Verify(input, sig, key) == nil
}

// scratchPool holds the buffers verify decodes tokens in; see getScratch.
var scratchPool = sync.Pool{New: func() any {
	b := make([]byte, 0, minScratch)
	return &b
}}

const (
	// minScratch holds a token of about 1.1 KiB with its decoded segments.
	minScratch = 2 << 10
	// maxScratch is what a token of the default max_token_size needs;
	// larger buffers are not kept.
	maxScratch = defaultMaxTokenSize + defaultMaxTokenSize*3/4
)

// getScratch returns an empty buffer of at least n bytes' capacity, to be
// given back with putScratch once nothing points into it.
func getScratch(n int) *[]byte {
	sp := scratchPool.Get().(*[]byte)
	if cap(*sp) < n {
		*sp = make([]byte, 0, n)
	}
	return sp
}

func putScratch(sp *[]byte) {
	if cap(*sp) <= maxScratch {
		scratchPool.Put(sp)
	}
}

var (
	errMalformed = errors.New("malformed token")
	errCrit      = errors.New("token has critical header extensions")
	errAlg       = errors.New("signing algorithm not accepted")
	errSignature = errors.New("signature invalid")
	errTooLarge  = errors.New("token larger than max_token_size")
	errIssuer    = errors.New("issuer not accepted")
	errAudience  = errors.New("audience not accepted")
	errNoUser    = errors.New("user claim missing or not a non-empty string")

	errNoExp       = errors.New("token has no exp")
	errExpired     = errors.New("token expired")
	errNotYet      = errors.New("token not valid yet (nbf)")
	errIssuedLater = errors.New("token issued in the future (iat)")
)

// scopes returns the granted scopes: the configured claim, or "scope" and
// then "scp".
func (id *identity) scopes(claim string) scopeList {
	switch claim {
	case "scope":
		return id.claims.Scope
	case "scp":
		return id.claims.Scp
	}
	if !id.claims.Scope.empty() {
		return id.claims.Scope
	}
	return id.claims.Scp
}

func scopeFromAny(v any, ok bool) scopeList {
	if !ok {
		return scopeList{}
	}
	switch v := v.(type) {
	case string:
		return scopeList{str: v}
	case []any:
		var s scopeList
		for _, e := range v {
			if str, ok := e.(string); ok {
				s.arr = append(s.arr, str)
			}
		}
		return s
	}
	return scopeList{}
}

// claim returns a top-level claim from the whole payload.
func (id *identity) claim(name string) (any, bool) {
	m := id.allClaims()
	v, ok := m[name]
	return v, ok
}

// lookup finds a claim by a dotted path into nested objects; a claim whose
// own name holds dots is found too.
func (id *identity) lookup(path string) (any, bool) {
	return lookupPath(id.allClaims(), path)
}

func lookupPath(m map[string]any, path string) (any, bool) {
	if v, ok := m[path]; ok {
		return v, true
	}
	for i := 0; i < len(path); i++ {
		if path[i] != '.' {
			continue
		}
		if sub, ok := m[path[:i]].(map[string]any); ok {
			if v, ok := lookupPath(sub, path[i+1:]); ok {
				return v, true
			}
		}
	}
	return nil, false
}

// allClaims decodes the payload into a map once, keeping numbers as written.
func (id *identity) allClaims() map[string]any { return id.lazy.get() }

// get decodes the claims once, and returns them (nil if they cannot be).
func (l *lazyClaims) get() map[string]any {
	if l.all != nil || l.err != nil {
		return l.all
	}
	raw, err := base64.RawURLEncoding.DecodeString(l.payload)
	if err != nil {
		l.err = err
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	// Into a variable of its own: &l.all handed to Decode would put every
	// identity on the heap, whether or not a claim is ever decoded.
	var all map[string]any
	if err := dec.Decode(&all); err != nil {
		l.err = err
		return nil
	}
	l.all = all
	return all
}

// formatClaim renders a claim for a placeholder: strings as they are,
// numbers as written, arrays joined with commas, objects as JSON.
func formatClaim(v any) string {
	switch v := v.(type) {
	case nil:
		return ""
	case string:
		return v
	case json.Number:
		return v.String()
	case bool:
		return strconv.FormatBool(v)
	case []any:
		parts := make([]string, len(v))
		for i, e := range v {
			parts[i] = formatClaim(e)
		}
		return strings.Join(parts, ",")
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// expires is the credential's expiry: a JWT's exp, which is required; the
// zero time for an opaque credential whose answer had none.
func (id *identity) expires() time.Time {
	if !id.claims.ExpiresAt.set {
		return time.Time{}
	}
	return id.claims.ExpiresAt.time()
}
