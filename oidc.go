package wsauth

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
)

// Identity providers: key sets served with a certificate from a private
// CA (tls_trust_pool, for one URL only), and OpenID Connect discovery
// (oidc), which finds an issuer's key set from its configuration document.

// A trustPool is the CAs a key server's certificate must chain to, from a
// key set's tls_trust_pool; nil is the system's trust store.
type trustPool struct {
	pool *x509.CertPool
	id   string // a digest of the module's config, for pool keys
}

// key tells key sets of different trust apart in a pool key.
func (t *trustPool) key() string {
	if t == nil {
		return ""
	}
	return "|trust:" + t.id
}

// loadTrust loads src's tls_trust_pool, if it has one.
func loadTrust(ctx caddy.Context, src *JWKSSource) (*trustPool, error) {
	if src.CARaw == nil {
		return nil, nil
	}
	return loadTrustPool(ctx, src, src.CARaw, jwksName(src.URL))
}

// loadTrustPool loads the tls_trust_pool raw of the struct that holds it
// in its field CARaw; name says whose it is, for errors.
func loadTrustPool(ctx caddy.Context, holder any, raw json.RawMessage, name string) (*trustPool, error) {
	sum := sha256.Sum256(raw)
	mod, err := ctx.LoadModule(holder, "CARaw")
	if err != nil {
		return nil, fmt.Errorf("%s tls_trust_pool: %v", name, err)
	}
	ca, ok := mod.(caddytls.CA)
	if !ok {
		return nil, fmt.Errorf("%s tls_trust_pool: module %T is no CA pool", name, mod)
	}
	return &trustPool{pool: ca.CertPool(), id: hex.EncodeToString(sum[:8])}, nil
}

// fetchClient is the HTTP client of a key set or a discovery document:
// the fetch's timeout, a bounded body, redirects checked (checkJWKSRedirect)
// and, with trust, only those CAs.
func fetchClient(timeout time.Duration, trust *trustPool) *http.Client {
	var rt http.RoundTripper = http.DefaultTransport
	if trust != nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.TLSClientConfig = &tls.Config{RootCAs: trust.pool, MinVersion: tls.VersionTLS12}
		rt = t
	}
	return &http.Client{
		Timeout:       timeout,
		Transport:     limitedTransport{rt: rt, max: maxJWKSBody},
		CheckRedirect: checkJWKSRedirect,
	}
}

// checkOIDCSource is checkJWKSSource for an oidc issuer.
func checkOIDCSource(src *JWKSSource) error {
	if src == nil || src.URL == "" {
		return errors.New("oidc: missing issuer URL")
	}
	if !strings.Contains(src.URL, "{") {
		if _, err := checkIssuerURL(src.URL); err != nil {
			return err
		}
	}
	c := *src
	c.URL = "https://oidc.invalid/" // the rules of refresh and timeout, named below
	if err := checkJWKSSource(&c); err != nil {
		return errors.New("oidc " + src.URL + strings.TrimPrefix(err.Error(), "jwks https://oidc.invalid/"))
	}
	return nil
}

// checkIssuerURL parses an oidc issuer URL: https (or http to this
// machine), no query or fragment, as OpenID Connect Discovery requires.
func checkIssuerURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return nil, errors.New("oidc: not an issuer URL like https://idp.example.com/realms/app")
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("oidc %s: an issuer URL has no query, fragment or credentials", redactURL(u))
	}
	if err := checkFetchURL(u); err != nil {
		return nil, fmt.Errorf("oidc %s: %v", redactURL(u), err)
	}
	return u, nil
}

// oidcSets holds the discovered key sets of the process, by issuer and
// options, across config reloads, as jwksSets does.
var oidcSets = caddy.NewUsagePool()

// An oidcSet is the key set of an OpenID Connect issuer: the remote set
// named by the jwks_uri of its discovery document, found at load, looked
// for again every refresh (a provider may move its keys), and until found
// an empty set, so that handshakes that need it are "unavailable".
type oidcSet struct {
	issuer  string
	refresh time.Duration
	timeout time.Duration
	trust   *trustPool
	client  *http.Client
	empty   jwkset.Storage

	cur    atomic.Pointer[oidcKeys]
	mu     sync.Mutex // serialises discoveries
	cancel context.CancelFunc
	done   chan struct{}
}

// oidcKeys is a discovered key set and the URL it came from.
type oidcKeys struct {
	uri string
	set *remoteSet
}

// loadOIDC returns the pooled key set of src's issuer, discovering it the
// first time. A discovery document that names another issuer, or a
// jwks_uri that keys may not be fetched from, fails the load; a discovery
// that cannot be fetched is tried again in the background.
func loadOIDC(src *JWKSSource, trust *trustPool, logger *zap.Logger) (*oidcSet, string, error) {
	u, err := checkIssuerURL(src.URL)
	if err != nil {
		return nil, "", err
	}
	refresh, timeout := src.timing()
	key := "oidc|" + jwksPoolKey(src.URL, refresh, timeout) + trust.key()
	val, _, err := oidcSets.LoadOrNew(key, func() (caddy.Destructor, error) {
		o := &oidcSet{
			issuer: src.URL, refresh: refresh, timeout: timeout, trust: trust,
			client: fetchClient(timeout, trust), empty: jwkset.NewMemoryStorage(),
			done: make(chan struct{}),
		}
		err := o.discover(context.Background())
		var bad *discoveryError
		if errors.As(err, &bad) {
			return nil, err
		}
		if err != nil {
			logger.Warn("OpenID discovery failed; handshakes that need its keys get 'unavailable' until it succeeds",
				zap.String("issuer", redactURL(u)), zap.Error(err))
		}
		ctx, cancel := context.WithCancel(context.Background())
		o.cancel = cancel
		go o.run(ctx)
		return o, nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("oidc %s: %v", redactURL(u), err)
	}
	return val.(*oidcSet), key, nil
}

// A discoveryError is a discovery document that cannot be used as it is:
// a configuration error, not an outage.
type discoveryError struct{ msg string }

func (e *discoveryError) Error() string { return e.msg }

// discover fetches the issuer's discovery document and, if its jwks_uri
// is new, the key set it names.
func (o *oidcSet) discover(ctx context.Context) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	doc := strings.TrimSuffix(o.issuer, "/") + "/.well-known/openid-configuration"
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, doc, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := o.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("discovery document: HTTP %d", resp.StatusCode)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("discovery document: %v", err)
	}
	var meta struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := json.Unmarshal(body, &meta); err != nil {
		return &discoveryError{fmt.Sprintf("discovery document is not JSON: %v", err)}
	}
	if meta.Issuer != o.issuer {
		return &discoveryError{fmt.Sprintf("the discovery document names the issuer %q, not %q: write the issuer exactly as the provider names it", truncate(meta.Issuer, 200), o.issuer)}
	}
	ju, err := url.Parse(meta.JWKSURI)
	if err != nil || ju.Host == "" {
		return &discoveryError{fmt.Sprintf("the discovery document's jwks_uri %q is not a URL", truncate(meta.JWKSURI, 200))}
	}
	if err := checkFetchURL(ju); err != nil {
		return &discoveryError{fmt.Sprintf("the discovery document's jwks_uri %s: %v", redactURL(ju), err)}
	}
	if cur := o.cur.Load(); cur != nil && cur.uri == ju.String() {
		return nil
	}
	set, err := newRemoteSet(ju, o.refresh, o.timeout, o.trust)
	if err != nil {
		return err
	}
	if old := o.cur.Swap(&oidcKeys{uri: ju.String(), set: set}); old != nil {
		_ = old.set.Destruct()
	}
	return nil
}

// run discovers again every refresh, or every jwksUnknownKIDEvery until a
// discovery succeeded; a failure keeps the keys found before.
func (o *oidcSet) run(ctx context.Context) {
	defer close(o.done)
	for {
		every := o.refresh
		if o.cur.Load() == nil {
			every = jwksUnknownKIDEvery
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
		if err := o.discover(ctx); err != nil && ctx.Err() == nil {
			caddy.Log().Named("http.handlers.ws_auth").Warn("OpenID discovery failed; serving the keys found before, if any",
				zap.String("issuer", o.issuer), zap.Error(err))
		}
	}
}

// Destruct stops the discoveries and the key set's refresh.
func (o *oidcSet) Destruct() error {
	if o.cancel != nil {
		o.cancel()
		<-o.done
	}
	if cur := o.cur.Load(); cur != nil {
		_ = cur.set.Destruct()
	}
	return nil
}

// Storage implements keyfunc.Keyfunc: the discovered set's keys, or none.
func (o *oidcSet) Storage() jwkset.Storage {
	if cur := o.cur.Load(); cur != nil {
		return cur.set.kf.Storage()
	}
	return o.empty
}

var errNotDiscovered = errors.New("OpenID discovery has not succeeded yet")

// Keyfunc implements keyfunc.Keyfunc.
func (o *oidcSet) Keyfunc(t *jwt.Token) (any, error) {
	if cur := o.cur.Load(); cur != nil {
		return cur.set.kf.Keyfunc(t)
	}
	return nil, errNotDiscovered
}

// KeyfuncCtx implements keyfunc.Keyfunc.
func (o *oidcSet) KeyfuncCtx(ctx context.Context) jwt.Keyfunc {
	return func(t *jwt.Token) (any, error) {
		if cur := o.cur.Load(); cur != nil {
			return cur.set.kf.KeyfuncCtx(ctx)(t)
		}
		return nil, errNotDiscovered
	}
}

// VerificationKeySet implements keyfunc.Keyfunc.
func (o *oidcSet) VerificationKeySet(ctx context.Context) (jwt.VerificationKeySet, error) {
	if cur := o.cur.Load(); cur != nil {
		return cur.set.kf.VerificationKeySet(ctx)
	}
	return jwt.VerificationKeySet{}, errNotDiscovered
}
