package wsauth

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/MicahParks/keyfunc/v3"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/caddyserver/caddy/v2"
)

// Remote JWK Sets live in a process-wide pool, keyed by URL and options, so
// that a config reload keeps the cached keys (and the refresh goroutine)
// instead of fetching again, and serving "unavailable" if the endpoint
// happens to fail at that moment. The set is released with the last
// handler that uses it.
var jwksSets = caddy.NewUsagePool()

const (
	// maxJWKSTimeout bounds one fetch: a fetch can hold up a config load,
	// or a handshake whose kid is unknown.
	maxJWKSTimeout = time.Minute
	// defaultMinJWKSRefresh is the floor of refresh. Keys change seldom,
	// and a token with a new kid makes the set be fetched at once anyway;
	// a shorter refresh only loads the key server (1ns was fetching it
	// thousands of times a second).
	defaultMinJWKSRefresh = 10 * time.Second
)

// minJWKSRefresh is the shortest refresh allowed: defaultMinJWKSRefresh,
// lowered by the tests, which watch a set being fetched again and cannot
// wait that long each time.
var minJWKSRefresh = defaultMinJWKSRefresh

// checkJWKSRefresh is the rule for a key set's refresh (checkJWKSSource);
// the caller names the option.
func checkJWKSRefresh(d time.Duration) error {
	if d < minJWKSRefresh {
		return fmt.Errorf("must be at least %s (keys change seldom; a new kid is fetched at once)", minJWKSRefresh)
	}
	return nil
}

// checkJWKSTimeout is the rule for a key set's fetch timeout
// (checkJWKSSource); the caller names the option.
func checkJWKSTimeout(d time.Duration) error {
	if d <= 0 || d > maxJWKSTimeout {
		return fmt.Errorf("must be more than 0 and at most %s: a fetch can hold up a config load or a handshake", maxJWKSTimeout)
	}
	return nil
}

// remoteSet is a pooled remote JWK Set.
type remoteSet struct {
	kf     keyfunc.Keyfunc
	cancel context.CancelFunc
}

// Destruct stops the set's refresh goroutines.
func (rs *remoteSet) Destruct() error {
	rs.cancel()
	return nil
}

func jwksPoolKey(u string, refresh, timeout time.Duration) string {
	return fmt.Sprintf("%s|%s|%s", u, refresh, timeout)
}

// checkJWKSURL parses a configured key set URL and applies checkFetchURL.
func checkJWKSURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("%s: not a URL like https://idp.example.com/jwks.json", shownJWKS(raw))
	}
	if err := checkFetchURL(u); err != nil {
		return nil, fmt.Errorf("jwks %s: %v", redactURL(u), err)
	}
	return u, nil
}

// checkFetchURL refuses a URL that keys may not be fetched from, because
// anyone on the path could then forge tokens: plain http is allowed only
// to this machine (localhost or a loopback address), and any scheme but
// https and http is refused. It applies to the configured URL and to
// every URL a fetch is redirected to.
func checkFetchURL(u *url.URL) error {
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		host := u.Hostname()
		if ip := net.ParseIP(host); host == "localhost" || ip != nil && ip.IsLoopback() {
			return nil
		}
		return fmt.Errorf("use https; plain http is allowed only for loopback addresses")
	default:
		return fmt.Errorf("scheme must be https")
	}
}

// checkJWKSRedirect is the CheckRedirect of the key set client: at most 3
// redirects, never from https to http, and every target must pass
// checkFetchURL, so that it is refused before it is dialed.
func checkJWKSRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= 3 {
		return errors.New("too many redirects")
	}
	if req.URL.Scheme != "https" && via[0].URL.Scheme == "https" {
		return errors.New("redirect from https to " + req.URL.Scheme)
	}
	if err := checkFetchURL(req.URL); err != nil {
		return fmt.Errorf("redirect to %s: %v", redactURL(req.URL), err)
	}
	return nil
}

// redactURL is a URL for logs: no credentials, no query.
func redactURL(u *url.URL) string {
	return u.Scheme + "://" + u.Host + u.EscapedPath()
}

// timing is the set's refresh and fetch timeout, defaults filled in.
func (src *JWKSSource) timing() (refresh, timeout time.Duration) {
	refresh, timeout = time.Duration(src.Refresh), time.Duration(src.Timeout)
	if refresh == 0 {
		refresh = defaultJWKSRefresh
	}
	if timeout == 0 {
		timeout = defaultJWKSTimeout
	}
	return refresh, timeout
}

// loadRemoteSet returns the pooled set for src, fetching it the first time.
// src has passed checkJWKSSource; its URL, with placeholders replaced, is
// checked here, where it has its value.
func loadRemoteSet(src *JWKSSource, trust *trustPool, logger *zap.Logger) (keyfunc.Keyfunc, string, error) {
	u, err := checkJWKSURL(src.URL)
	if err != nil {
		return nil, "", err
	}
	refresh, timeout := src.timing()
	key := jwksPoolKey(src.URL, refresh, timeout) + trust.key()
	val, _, err := jwksSets.LoadOrNew(key, func() (caddy.Destructor, error) {
		return newRemoteSet(u, refresh, timeout, trust)
	})
	if err != nil {
		return nil, "", fmt.Errorf("jwks %s: %v", redactURL(u), err)
	}
	kf := val.(*remoteSet).kf
	if all, _ := kf.Storage().KeyReadAll(context.Background()); len(all) == 0 {
		logger.Warn("JWK Set not available yet; handshakes that need it get 'unavailable' until a fetch succeeds",
			zap.String("url", redactURL(u)))
	}
	return kf, key, nil
}

func newRemoteSet(u *url.URL, refresh, timeout time.Duration, trust *trustPool) (*remoteSet, error) {
	// The set outlives the config that first loaded it, so it logs to
	// Caddy's current default logger and runs on its own context.
	ctx, cancel := context.WithCancel(context.Background())
	where := redactURL(u)
	noErr := true
	var created atomic.Value // the set, once created: the first fetch has none
	kf, err := keyfunc.NewDefaultOverrideCtx(ctx, []string{u.String()}, keyfunc.Override{
		Client:                    fetchClient(timeout, trust),
		HTTPTimeout:               timeout,
		NoErrorReturnFirstHTTPReq: &noErr,
		RefreshInterval:           refresh,
		RefreshUnknownKID:         rate.NewLimiter(rate.Every(jwksUnknownKIDEvery), 1),
		// A refetch for an unknown kid waits no longer than one fetch:
		// the limiter answers at once when its next slot is further away.
		RateLimitWaitMax: timeout,
		RefreshErrorHandlerFunc: func(string) func(context.Context, error) {
			return func(_ context.Context, err error) {
				kf, _ := created.Load().(keyfunc.Keyfunc)
				warnFetchFailed(where, kf, err)
			}
		},
	})
	if err != nil {
		cancel()
		return nil, err
	}
	created.Store(kf)
	go retryUntilFetched(ctx, kf, timeout)
	return &remoteSet{kf: kf, cancel: cancel}, nil
}

// retryUntilFetched asks again for a set whose first fetch failed, at the
// pace of the unknown-kid refetch, so that tokens without a kid do not wait
// for the next periodic refresh.
func retryUntilFetched(ctx context.Context, kf keyfunc.Keyfunc, timeout time.Duration) {
	t := time.NewTicker(jwksUnknownKIDEvery)
	defer t.Stop()
	for {
		if all, _ := kf.Storage().KeyReadAll(ctx); len(all) > 0 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// Reading a kid that no set holds triggers the rate-limited refetch.
		rctx, cancel := context.WithTimeout(ctx, timeout)
		_, _ = kf.Storage().KeyRead(rctx, "\x00ws_auth-refetch")
		cancel()
	}
}
