package wsauth

import (
	"fmt"
	"strings"
)

// originMatcher checks the Origin header against the allowed origins.
type originMatcher struct {
	exact    map[string]struct{}
	wildcard []wildcardOrigin
}

// wildcardOrigin is "scheme://*.suffix[:port]", kept as the prefix
// "scheme://" and the suffix ".suffix[:port]"; the part between must be a
// non-empty host name without a scheme separator or port.
type wildcardOrigin struct{ prefix, suffix string }

func (m originMatcher) empty() bool { return m.exact == nil && m.wildcard == nil }

func compileOrigins(origins []string) (originMatcher, error) {
	var m originMatcher
	for _, o := range origins {
		o = strings.ToLower(strings.TrimSuffix(o, "/"))
		scheme, host, ok := strings.Cut(o, "://")
		if !ok || scheme == "" || host == "" || strings.ContainsAny(host, "/?#@ ") {
			return m, fmt.Errorf("allowed_origins: %q is not an origin like https://app.example.com", o)
		}
		if rest, ok := strings.CutPrefix(host, "*."); ok {
			if rest == "" || strings.Contains(rest, "*") {
				return m, fmt.Errorf("allowed_origins: %q: only one leading wildcard label is allowed", o)
			}
			m.wildcard = append(m.wildcard, wildcardOrigin{prefix: scheme + "://", suffix: "." + rest})
			continue
		}
		if strings.Contains(host, "*") {
			return m, fmt.Errorf("allowed_origins: %q: only one leading wildcard label is allowed", o)
		}
		if m.exact == nil {
			m.exact = make(map[string]struct{})
		}
		m.exact[o] = struct{}{}
	}
	return m, nil
}

func (m originMatcher) allowed(origin string) bool {
	if _, ok := m.exact[origin]; ok {
		return true
	}
	for _, w := range m.wildcard {
		if len(origin) > len(w.prefix)+len(w.suffix) && strings.HasPrefix(origin, w.prefix) && strings.HasSuffix(origin, w.suffix) {
			label := origin[len(w.prefix) : len(origin)-len(w.suffix)]
			if !strings.ContainsAny(label, ":/@") {
				return true
			}
		}
	}
	if m.exact != nil || m.wildcard != nil {
		// Browsers send lower-case origins; others might not.
		if lower := strings.ToLower(origin); lower != origin {
			return m.allowed(lower)
		}
	}
	return false
}
