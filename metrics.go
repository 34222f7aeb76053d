package wsauth

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Metrics: the module's counters live in the process, not in a config:
// they are built once, here, and registered with the registry of each
// config Caddy loads (ctx.GetMetricsRegistry(), served by the admin
// endpoint's /metrics), so a reload keeps their values. Every label value
// is resolved once, below, so that counting an event is one atomic add:
// no label lookup and no allocation on the handshake path. Labels are
// bounded: reason names, never a user, token or IP.

// metricsOther is the close reason of a text that is none of the module's
// own (closeWhere with a caller's text), to keep the labels bounded.
const metricsOther = "other"

// moduleMetrics are the module's collectors, with their labels resolved.
type moduleMetrics struct {
	handshakes *prometheus.CounterVec // result: accepted or a reason
	closedVec  *prometheus.CounterVec // reason: the text of the close
	active     prometheus.GaugeFunc
	dropped    prometheus.Counter
	cacheVec   *prometheus.CounterVec // result: hit or miss
	checksVec  *prometheus.CounterVec // check, result: introspect and session_check

	cacheHit, cacheMiss prometheus.Counter

	accepted prometheus.Counter
	refused  [numReasons]prometheus.Counter
	closed   map[string]prometheus.Counter // read-only after init
}

// wsMetrics are the process's.
var wsMetrics = newModuleMetrics(liveConns.count)

// closeTexts are the texts the module closes live connections with: each
// refusal reason (a refresh token refused), and the rules' own.
var closeTexts = [...]string{"revoked", "too_big", "protocol_error", metricsOther}

func newModuleMetrics(live func() int) *moduleMetrics {
	const ns, sub = "caddy", "ws_auth"
	m := &moduleMetrics{
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "handshakes_total",
			Help: "WebSocket handshakes decided by ws_auth, by result: accepted, or the reason of the refusal.",
		}, []string{"result"}),
		closedVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "closed_total",
			Help: "Live WebSocket connections closed by ws_auth, by reason.",
		}, []string{"reason"}),
		active: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "connections_active",
			Help: "Live WebSocket connections accepted by ws_auth, in the process.",
		}, func() float64 { return float64(live()) }),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "messages_dropped_total",
			Help: "Client messages not forwarded because of rate_limit messages (drop or notify).",
		}),
		cacheVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "token_cache_total",
			Help: "Token checks by the verified-token cache: hit (no signature check) or miss.",
		}, []string{"result"}),
		checksVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "credential_checks_total",
			Help: "Opaque credentials judged by introspect or session_check, by check and result: cached (no call), active, refused, invalid (not sendable) or unavailable.",
		}, []string{"check", "result"}),
		closed: make(map[string]prometheus.Counter, int(numReasons)+len(closeTexts)),
	}
	m.cacheHit, m.cacheMiss = m.cacheVec.WithLabelValues("hit"), m.cacheVec.WithLabelValues("miss")
	m.accepted = m.handshakes.WithLabelValues("accepted")
	for r := range m.refused {
		name := reason(r).String()
		m.refused[r] = m.handshakes.WithLabelValues(name)
		m.closed[name] = m.closedVec.WithLabelValues(name)
	}
	for _, text := range closeTexts {
		m.closed[text] = m.closedVec.WithLabelValues(text)
	}
	return m
}

// closedWith counts a live connection closed with text.
func (m *moduleMetrics) closedWith(text string) {
	c, ok := m.closed[text]
	if !ok {
		c = m.closed[metricsOther]
	}
	c.Inc()
}

// credentialCheck counts an opaque credential judged by check
// (introspect or session_check) with result. Off the JWT path: the label
// lookup is next to an HTTP call or a cache lookup.
func (m *moduleMetrics) credentialCheck(check, result string) {
	m.checksVec.WithLabelValues(check, result).Inc()
}

// droppedBy counts a client message over rate_limit messages that is not
// forwarded while the connection stays open (drop, notify); with close,
// closed_total counts the close instead.
func (m *moduleMetrics) droppedBy(action string) {
	if action != "close" {
		m.dropped.Inc()
	}
}

// register registers the collectors with reg, the registry of the config
// being loaded. Another ws_auth handler of the same config has registered
// them already, which is no error. A collector of the same name from
// elsewhere is: the metrics are then missing from /metrics, and the
// handler works on.
func (m *moduleMetrics) register(reg *prometheus.Registry, logger *zap.Logger) {
	if reg == nil {
		return
	}
	for _, c := range []prometheus.Collector{m.handshakes, m.closedVec, m.active, m.dropped, m.cacheVec, m.checksVec} {
		err := reg.Register(c)
		var are prometheus.AlreadyRegisteredError
		if err == nil || errors.As(err, &are) && are.ExistingCollector == c {
			continue
		}
		logger.Warn("failed to register ws_auth metrics", zap.Error(err))
	}
}
