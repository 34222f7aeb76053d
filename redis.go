package wsauth

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
)

// A fleet of Caddy instances shares ws_auth's state through Redis: the
// run-time blocklist (admin API entries and bans), the handshake limits,
// block_after's failure counts and the connection cap. A decision never
// waits on Redis for the blocklist: every instance keeps the list in
// memory (runtimeBlocklist), updated from a pub/sub channel and a full
// sync. Counters are counted in Redis, one script call each; while Redis
// cannot be reached, they are counted locally and writes to the list wait
// in memory until it is back.

func init() {
	caddy.RegisterModule(RedisStore{})
}

// RedisStore shares the run-time blocklist, the handshake rate limits,
// block_after's failure counts and max_connections_per_user among the
// Caddy instances that use the same Redis and key prefix. The Caddyfile's
// `redis <url> [<key_prefix>]` writes it.
type RedisStore struct {
	// The Redis to use, as a URL: redis:// or rediss:// (TLS), with the
	// user, password and database in it, and go-redis's options as query
	// parameters (redis://user:pass@host:6379/0?dial_timeout=2s).
	// With master_name=<name>, the host and each addr=<host:port>
	// parameter are Redis Sentinels; otherwise, with addr=<host:port>
	// parameters (more seed nodes) or cluster=true, it is a Redis Cluster.
	// Placeholders such as {env.REDIS_URL} are replaced at load.
	URL string `json:"url"`

	// Put before every key and channel name, so that several fleets can
	// share one Redis. Default: "ws_auth:".
	KeyPrefix string `json:"key_prefix,omitempty"`

	// How long the connections counted by an instance stay counted once it
	// stops renewing them (it died or lost Redis); it renews them every
	// third of this. Default: 15s; between 3s and 10m.
	Lease caddy.Duration `json:"lease,omitempty"`

	shared  *redisShared
	poolKey string
}

// CaddyModule returns the Caddy module information.
func (RedisStore) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "ws_auth.stores.redis",
		New: func() caddy.Module { return new(RedisStore) },
	}
}

const (
	defaultRedisPrefix = "ws_auth:"
	defaultRedisLease  = 15 * time.Second
	minRedisLease      = 3 * time.Second
	maxRedisLease      = 10 * time.Minute
	maxRedisPrefix     = 200
	// redisCallTimeout bounds one call made for a handshake: past it the
	// handshake is decided with local counts, and the store turns
	// unreachable until a ping answers.
	redisCallTimeout = 500 * time.Millisecond
	// redisSyncEvery is how often the local copy of the list is compared
	// with Redis as a whole, for changes whose message was lost.
	redisSyncEvery = 10 * time.Second
	// redisPingEvery is how often Redis is pinged, to notice an outage
	// and its end.
	redisPingEvery = time.Second
	// redisFirstSync bounds the sync made before the first config that
	// uses the store is served.
	redisFirstSync = 2 * time.Second
)

// check applies the rules of the store's fields, before anything is
// dialed.
func (s *RedisStore) check() error {
	if s.URL == "" {
		return errors.New("redis: a URL is required")
	}
	if !strings.Contains(s.URL, "{") {
		if _, err := redisOptions(s.URL); err != nil {
			return err
		}
	}
	if len(s.KeyPrefix) > maxRedisPrefix {
		return fmt.Errorf("redis: the key prefix must be at most %d bytes", maxRedisPrefix)
	}
	if l := time.Duration(s.Lease); l != 0 && (l < minRedisLease || l > maxRedisLease) {
		return fmt.Errorf("redis lease: must be between %s and %s", minRedisLease, maxRedisLease)
	}
	return nil
}

// Validate implements caddy.Validator.
func (s *RedisStore) Validate() error { return s.check() }

// Provision checks the store's fields, then takes the process's
// connection to that Redis and prefix, making it if this is the first
// config to use it.
func (s *RedisStore) Provision(ctx caddy.Context) error {
	if err := s.check(); err != nil {
		return err
	}
	rawURL := caddy.NewReplacer().ReplaceKnown(s.URL, "")
	opts, err := redisOptions(rawURL)
	if err != nil {
		return err
	}
	prefix := s.KeyPrefix
	if prefix == "" {
		prefix = defaultRedisPrefix
	}
	lease := time.Duration(s.Lease)
	if lease == 0 {
		lease = defaultRedisLease
	}
	s.poolKey = rawURL + "\x00" + prefix + "\x00" + lease.String()
	logger := ctx.Logger()
	val, _, err := redisStores.LoadOrNew(s.poolKey, func() (caddy.Destructor, error) {
		return newRedisShared(rawURL, opts, prefix, lease, logger)
	})
	if err != nil {
		return err
	}
	s.shared = val.(*redisShared)
	return nil
}

// Cleanup releases the process's connection to Redis; the last config to
// use it closes it.
func (s *RedisStore) Cleanup() error {
	if s.poolKey != "" {
		_, _ = redisStores.Delete(s.poolKey)
		s.poolKey = ""
	}
	return nil
}

// Limiter implements Store.
func (s *RedisStore) Limiter(name string, events int, window time.Duration, local Limiter) Limiter {
	return &redisLimiter{s: s.shared, name: name, interval: window / time.Duration(events), window: window, local: local}
}

// FailureCounter implements Store.
func (s *RedisStore) FailureCounter(name string, limit int, window time.Duration, local FailureCounter) FailureCounter {
	return &redisFailures{s: s.shared, name: name, limit: limit, window: window, local: local}
}

// Slots implements Store.
func (s *RedisStore) Slots() ConnectionSlots { return s.shared.slots }

// redisStores holds the process's connections to Redis, by URL, prefix
// and lease, so that they outlive a config reload.
var redisStores = caddy.NewUsagePool()

// redisOptions reads a store URL into go-redis's options: a Sentinel
// failover client with master_name, a cluster client with addr parameters
// or cluster=true, else one server. Timeouts that the URL does not set are
// short, so that an outage costs a handshake at most redisCallTimeout.
func redisOptions(raw string) (*redis.UniversalOptions, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") || u.Host == "" {
		return nil, fmt.Errorf("redis: want a redis:// or rediss:// URL with a host, not %q", redactStoreURL(raw))
	}
	q := u.Query()
	cluster := q.Has("addr")
	if c := q.Get("cluster"); c != "" {
		cluster, err = strconv.ParseBool(c)
		if err != nil {
			return nil, fmt.Errorf("redis: cluster must be true or false, not %q", c)
		}
		q.Del("cluster")
		u.RawQuery = q.Encode()
	}
	var o *redis.UniversalOptions
	switch {
	case q.Has("master_name"):
		fo, err := redis.ParseFailoverURL(u.String())
		if err != nil {
			return nil, goRedisErr(err)
		}
		o = &redis.UniversalOptions{
			Addrs: fo.SentinelAddrs, MasterName: fo.MasterName, DB: fo.DB,
			Username: fo.Username, Password: fo.Password,
			SentinelUsername: fo.SentinelUsername, SentinelPassword: fo.SentinelPassword,
			TLSConfig: fo.TLSConfig, Protocol: fo.Protocol,
			DialTimeout: fo.DialTimeout, ReadTimeout: fo.ReadTimeout, WriteTimeout: fo.WriteTimeout,
			PoolSize: fo.PoolSize, MaxRetries: fo.MaxRetries,
		}
	case cluster:
		co, err := redis.ParseClusterURL(u.String())
		if err != nil {
			return nil, goRedisErr(err)
		}
		o = &redis.UniversalOptions{
			Addrs: co.Addrs, IsClusterMode: true,
			Username: co.Username, Password: co.Password, TLSConfig: co.TLSConfig, Protocol: co.Protocol,
			DialTimeout: co.DialTimeout, ReadTimeout: co.ReadTimeout, WriteTimeout: co.WriteTimeout,
			PoolSize: co.PoolSize, MaxRetries: co.MaxRetries,
		}
	default:
		so, err := redis.ParseURL(u.String())
		if err != nil {
			return nil, goRedisErr(err)
		}
		o = &redis.UniversalOptions{
			Addrs: []string{so.Addr}, DB: so.DB,
			Username: so.Username, Password: so.Password, TLSConfig: so.TLSConfig, Protocol: so.Protocol,
			DialTimeout: so.DialTimeout, ReadTimeout: so.ReadTimeout, WriteTimeout: so.WriteTimeout,
			PoolSize: so.PoolSize, MaxRetries: so.MaxRetries,
		}
	}
	if o.DialTimeout == 0 {
		o.DialTimeout = time.Second
	}
	if o.ReadTimeout == 0 {
		o.ReadTimeout = redisCallTimeout
	}
	if o.WriteTimeout == 0 {
		o.WriteTimeout = redisCallTimeout
	}
	if o.MaxRetries == 0 {
		o.MaxRetries = -1 // a handshake does not wait for retries; the ping notices the outage
	}
	o.DialerRetries = 1
	o.ContextTimeoutEnabled = true
	o.DisableIdentity = true // no CLIENT SETINFO, which older servers refuse
	return o, nil
}

// goRedisErr is an error of go-redis's URL parser, named once.
func goRedisErr(err error) error {
	return errors.New("redis: " + strings.TrimPrefix(err.Error(), "redis: "))
}

// redactStoreURL is a store URL fit for a log or an error: without its
// credentials and query.
func redactStoreURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	return redactURL(u)
}

// goRedisLog takes go-redis's own log lines (a failed dial, a dropped
// connection: one a second while Redis is down) to Caddy's log at DEBUG, so
// that an outage is told once, by the store. go-redis has one logger for
// the process: this applies to every go-redis client in it.
type goRedisLog struct{ l *zap.Logger }

func (g goRedisLog) Printf(_ context.Context, format string, v ...any) {
	if ce := g.l.Check(zap.DebugLevel, "go-redis"); ce != nil {
		ce.Write(zap.String("line", fmt.Sprintf(format, v...)))
	}
}

var quietGoRedis sync.Once

// processID names this process in the fleet's keys and messages.
var processID = func() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}()

// redisShared is the process's connection to one Redis and key prefix:
// the client, the subscription to the list's changes, the loop that
// pings, syncs and renews, and the connection counts.
type redisShared struct {
	client redis.UniversalClient
	prefix string
	lease  time.Duration
	logger *zap.Logger
	slots  *fleetSlots

	up     atomic.Bool
	downMu sync.Mutex // orders the outage's log lines
	down   bool

	// pending holds the list's writes that Redis has not taken yet, by
	// entry, the latest one of each.
	pendMu  sync.Mutex
	pending map[entryKey]listWrite

	sub    *redis.PubSub
	cancel context.CancelFunc
	done   chan struct{}
}

// A listWrite is an entry put on the list (remove false) or taken off.
type listWrite struct {
	entry  Entry
	remove bool
}

func newRedisShared(rawURL string, opts *redis.UniversalOptions, prefix string, lease time.Duration, logger *zap.Logger) (*redisShared, error) {
	s := &redisShared{
		client:  redis.NewUniversalClient(opts),
		prefix:  prefix,
		lease:   lease,
		logger:  logger.With(zap.String("redis", redactStoreURL(rawURL)), zap.String("key_prefix", prefix)),
		pending: make(map[entryKey]listWrite),
		done:    make(chan struct{}),
	}
	s.slots = &fleetSlots{s: s, users: make(map[uint64]*fleetUser)}
	quietGoRedis.Do(func() { redis.SetLogger(goRedisLog{caddy.Log().Named("ws_auth.redis")}) })
	s.up.Store(true)

	// Entries already on the run-time list (a reload that adds the store)
	// are shared: they wait as writes until the first sync.
	for _, e := range runtimeBlocklist.entries(now()) {
		s.pending[entryKey{e.Kind, e.Value}] = listWrite{entry: e}
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.sub = s.client.Subscribe(ctx, s.channel())

	// The first sync is made before the config is served, so that an
	// instance that starts knows the fleet's bans; an outage leaves it
	// with the entries it has.
	first, firstCancel := context.WithTimeout(ctx, redisFirstSync)
	err := s.client.Ping(first).Err()
	if err == nil {
		err = s.sync(first)
	}
	firstCancel()
	if err != nil {
		s.markDown(err)
	}
	fleet.add(s)
	go s.listen()
	go s.run(ctx)
	return s, nil
}

// Destruct stops the store's loops and closes its client, when the last
// config using it is unloaded.
func (s *redisShared) Destruct() error {
	fleet.remove(s)
	s.cancel()
	<-s.done
	_ = s.sub.Close() // ends listen
	return s.client.Close()
}

func (s *redisShared) channel() string { return s.prefix + "blocklist:changes" }
func (s *redisShared) listKey() string { return s.prefix + "blocklist" }
func hashKey(parts ...string) string {
	var d xxhash.Digest
	d.Reset()
	for i, p := range parts {
		if i > 0 {
			_, _ = d.Write([]byte{0})
		}
		_, _ = d.WriteString(p)
	}
	return strconv.FormatUint(d.Sum64(), 16)
}

// callCtx is the context of one call made for a decision.
func callCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), redisCallTimeout)
}

// failed reports whether err means that Redis could not answer (and marks
// the store unreachable if so); redis.Nil and script answers are answers.
func (s *redisShared) failed(err error) bool {
	if err == nil || errors.Is(err, redis.Nil) {
		return false
	}
	s.markDown(err)
	return true
}

// markDown turns the store unreachable: decisions count locally, and the
// list's writes wait. It is logged once per outage.
func (s *redisShared) markDown(err error) {
	s.downMu.Lock()
	defer s.downMu.Unlock()
	s.up.Store(false)
	if s.down {
		return
	}
	s.down = true
	s.logger.Warn("redis unreachable: counting limits in this instance, serving the local copy of the blocklist, and keeping its changes until redis is back",
		zap.Error(err))
}

// markUp turns the store reachable again, once what waited has reached
// Redis and the list has been synced.
func (s *redisShared) markUp() {
	s.downMu.Lock()
	defer s.downMu.Unlock()
	s.up.Store(true)
	if !s.down {
		return
	}
	s.down = false
	s.logger.Info("redis reachable again: sharing blocklist, limits and connection counts")
}

// listen applies the list's changes that other instances publish.
func (s *redisShared) listen() {
	for msg := range s.sub.Channel() {
		var m listMessage
		if err := json.Unmarshal([]byte(msg.Payload), &m); err != nil || m.From == processID {
			continue
		}
		e := Entry{Kind: m.Kind, Value: m.Value, Reason: m.Reason}
		if m.Expires != 0 {
			e.Expires = time.UnixMilli(m.Expires)
		}
		fleetMu.Lock()
		if m.Remove {
			_, _, _, _ = runtimeBlocklist.take(e.Kind, e.Value, now())
		} else {
			_, _ = runtimeBlocklist.put(e, now())
		}
		fleetMu.Unlock()
	}
}

// run pings Redis every second, syncs the list every redisSyncEvery and
// renews the connection counts every third of the lease, until the store
// is destroyed.
func (s *redisShared) run(ctx context.Context) {
	defer close(s.done)
	tick := time.NewTicker(redisPingEvery)
	defer tick.Stop()
	lastSync, lastRenew := time.Now(), time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		c, cancel := context.WithTimeout(ctx, redisCallTimeout)
		err := s.client.Ping(c).Err()
		cancel()
		if err != nil {
			s.markDown(err)
			continue
		}
		wasDown := !s.up.Load()
		if wasDown || time.Since(lastRenew) >= s.lease/3 {
			c, cancel := context.WithTimeout(ctx, 5*time.Second)
			err = s.slots.renew(c)
			cancel()
			if s.failed(err) {
				continue
			}
			lastRenew = time.Now()
		}
		if wasDown || time.Since(lastSync) >= redisSyncEvery {
			c, cancel := context.WithTimeout(ctx, 5*time.Second)
			err = s.sync(c)
			cancel()
			if s.failed(err) {
				continue
			}
			lastSync = time.Now()
		}
		if wasDown {
			s.markUp()
		}
	}
}

// listMessage is a change of the list, as published.
type listMessage struct {
	From    string `json:"from"`
	Remove  bool   `json:"remove,omitempty"`
	Kind    string `json:"kind"`
	Value   string `json:"value"`
	Expires int64  `json:"expires,omitempty"` // unix ms; 0: never
	Reason  string `json:"reason,omitempty"`
}

// listRecord is an entry as the list's hash holds it, under the field
// "<kind>:<value>".
type listRecord struct {
	Expires int64  `json:"expires,omitempty"` // unix ms; 0: never
	Reason  string `json:"reason,omitempty"`
}

// share writes a change of the run-time list to Redis and publishes it,
// or keeps it for when Redis is back. fleetMu is held.
func (s *redisShared) share(w listWrite) {
	if s.up.Load() {
		ctx, cancel := callCtx()
		err := s.write(ctx, []listWrite{w})
		cancel()
		if !s.failed(err) {
			return
		}
	}
	s.pendMu.Lock()
	s.pending[entryKey{w.entry.Kind, w.entry.Value}] = w
	s.pendMu.Unlock()
}

// write sends changes of the list to Redis, each with its message, in one
// round trip.
func (s *redisShared) write(ctx context.Context, ws []listWrite) error {
	_, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, w := range ws {
			e := w.entry
			field := e.Kind + ":" + e.Value
			m := listMessage{From: processID, Remove: w.remove, Kind: e.Kind, Value: e.Value, Reason: e.Reason}
			if w.remove {
				p.HDel(ctx, s.listKey(), field)
			} else {
				if !e.Expires.IsZero() {
					m.Expires = e.Expires.UnixMilli()
				}
				rec, _ := json.Marshal(listRecord{Expires: m.Expires, Reason: e.Reason})
				p.HSet(ctx, s.listKey(), field, rec)
			}
			msg, _ := json.Marshal(m)
			p.Publish(ctx, s.channel(), msg)
		}
		return nil
	})
	return err
}

// sync sends the writes that waited, then makes the local list hold what
// Redis holds: entries that another instance added while a message was
// lost are put, entries it removed are taken off, and entries that have
// expired are removed from Redis too.
func (s *redisShared) sync(ctx context.Context) error {
	fleetMu.Lock()
	defer fleetMu.Unlock()
	s.pendMu.Lock()
	ws := make([]listWrite, 0, len(s.pending))
	for _, w := range s.pending {
		ws = append(ws, w)
	}
	s.pendMu.Unlock()
	if len(ws) > 0 {
		if err := s.write(ctx, ws); err != nil {
			return err
		}
		s.pendMu.Lock()
		for _, w := range ws {
			k := entryKey{w.entry.Kind, w.entry.Value}
			if s.pending[k] == w {
				delete(s.pending, k)
			}
		}
		s.pendMu.Unlock()
	}
	all, err := s.client.HGetAll(ctx, s.listKey()).Result()
	if err != nil {
		return err
	}
	t := now()
	remote := make(map[entryKey]Entry, len(all))
	var expired []string
	for field, raw := range all {
		kind, value, ok := strings.Cut(field, ":")
		var rec listRecord
		if !ok || json.Unmarshal([]byte(raw), &rec) != nil {
			s.logger.Warn("skipping a blocklist entry in redis that ws_auth did not write", zap.String("field", truncate(field, 200)))
			continue
		}
		e := Entry{Kind: kind, Value: value, Reason: rec.Reason}
		if rec.Expires != 0 {
			e.Expires = time.UnixMilli(rec.Expires)
			if !live(e.Expires, t) {
				expired = append(expired, field)
				continue
			}
		}
		remote[entryKey{kind, value}] = e
	}
	if len(expired) > 0 {
		if err := s.client.HDel(ctx, s.listKey(), expired...).Err(); err != nil {
			return err
		}
	}
	for _, e := range runtimeBlocklist.entries(t) {
		k := entryKey{e.Kind, e.Value}
		r, ok := remote[k]
		if !ok {
			_, _, _, _ = runtimeBlocklist.take(e.Kind, e.Value, t)
			continue
		}
		if r.Expires.Equal(e.Expires) && r.Reason == e.Reason {
			delete(remote, k)
		}
	}
	for _, e := range remote {
		if _, err := runtimeBlocklist.put(e, t); err != nil {
			s.logger.Warn("skipping a blocklist entry in redis", zap.String("kind", e.Kind),
				zap.String("value", truncate(e.Value, 200)), zap.Error(err))
		}
	}
	return nil
}

// fleetMu orders the run-time list's changes that are shared: a local
// change and its write to Redis, a change another instance published, and
// a sync, so that a sync never undoes a change made while it read.
var fleetMu sync.Mutex

// fleet is the set of stores the run-time list's changes are shared with.
var fleet fleetSet

type fleetSet struct {
	mu     sync.Mutex
	stores []*redisShared
}

func (f *fleetSet) add(s *redisShared) {
	f.mu.Lock()
	f.stores = append(f.stores, s)
	f.mu.Unlock()
}

func (f *fleetSet) remove(s *redisShared) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, x := range f.stores {
		if x == s {
			f.stores = append(f.stores[:i], f.stores[i+1:]...)
			return
		}
	}
}

func (f *fleetSet) share(w listWrite) {
	f.mu.Lock()
	stores := append([]*redisShared(nil), f.stores...)
	f.mu.Unlock()
	for _, s := range stores {
		s.share(w)
	}
}

// blockEntry puts e on the run-time list, and on the fleet's, and reports
// whether it replaced an entry in force at t. The live connections it
// matches, here and on the other instances, are closed.
func blockEntry(e Entry, t time.Time) (replaced bool, err error) {
	fleetMu.Lock()
	defer fleetMu.Unlock()
	replaced, err = runtimeBlocklist.put(e, t)
	if err != nil {
		return false, err
	}
	e.Value, _ = entryValue(e.Kind, e.Value)
	fleet.share(listWrite{entry: e})
	return replaced, nil
}

// unblockEntry takes the entry of kind and value off the run-time list,
// and the fleet's; it returns the entry, whether there was one, and
// whether it was in force at t.
func unblockEntry(kind, value string, t time.Time) (e Entry, found, inForce bool, err error) {
	fleetMu.Lock()
	defer fleetMu.Unlock()
	e, found, inForce, err = runtimeBlocklist.take(kind, value, t)
	if err == nil {
		fleet.share(listWrite{entry: Entry{Kind: e.Kind, Value: e.Value}, remove: true})
	}
	return e, found, inForce, err
}

// The scripts: each is one round trip (EVALSHA), atomic in Redis.
var (
	// gcraScript is the GCRA of rateLimiter over Redis: KEYS[1] holds the
	// key's theoretical arrival time; ARGV: now, interval and window, in
	// µs. It returns 0 if the event is allowed, else the µs to wait.
	gcraScript = redis.NewScript(`
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local nxt = tat + interval
if nxt - now > window then return nxt - window - now end
redis.call('SET', KEYS[1], string.format('%d', nxt), 'PX', math.ceil((nxt - now) / 1000) + 1)
return 0
`)

	// failScript is failureCounter over Redis: a window opens at a key's
	// first failure; ARGV: limit, window in ms. It returns 1 when the
	// failure makes the limit (the count starts again), else 0.
	failScript = redis.NewScript(`
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if n >= tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
`)

	// takeScript takes a connection slot of a user: KEYS[1] is the user's
	// hash, one field per instance with its count, and "<instance>@" with
	// the instance's lease deadline. Counts whose lease has passed are
	// dropped. ARGV: instance, max, now and deadline (ms), key ttl (ms).
	// It returns 1 if a slot was taken.
	takeScript = redis.NewScript(`
local h = redis.call('HGETALL', KEYS[1])
local now = tonumber(ARGV[3])
local deadline = {}
for i = 1, #h, 2 do
  if string.sub(h[i], -1) == '@' then deadline[string.sub(h[i], 1, -2)] = tonumber(h[i + 1]) end
end
local total = 0
for i = 1, #h, 2 do
  local f = h[i]
  if string.sub(f, -1) ~= '@' then
    local d = deadline[f]
    if d == nil or d < now then
      redis.call('HDEL', KEYS[1], f, f .. '@')
    else
      total = total + tonumber(h[i + 1])
    end
  end
end
if total >= tonumber(ARGV[2]) then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('HSET', KEYS[1], ARGV[1] .. '@', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
`)

	// giveScript gives one of the instance's slots back (ARGV[1]).
	giveScript = redis.NewScript(`
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if n <= 0 then redis.call('HDEL', KEYS[1], ARGV[1], ARGV[1] .. '@') end
return n
`)
)

// redisLimiter is a handshake Limiter counted in Redis, and in local while
// Redis cannot be reached.
type redisLimiter struct {
	s        *redisShared
	name     string
	interval time.Duration
	window   time.Duration
	local    Limiter
}

// Allow implements Limiter.
func (l *redisLimiter) Allow(key string, t time.Time) (bool, time.Duration) {
	if l.s.up.Load() {
		ctx, cancel := callCtx()
		wait, err := gcraScript.Run(ctx, l.s.client, []string{l.s.prefix + "rate:" + l.name + ":" + hashKey(key)},
			t.UnixMicro(), l.interval.Microseconds(), l.window.Microseconds()).Int64()
		cancel()
		if !l.s.failed(err) {
			return wait == 0, time.Duration(wait) * time.Microsecond
		}
	}
	return l.local.Allow(key, t)
}

// redisFailures is block_after's FailureCounter counted in Redis, and in
// local while Redis cannot be reached.
type redisFailures struct {
	s      *redisShared
	name   string
	limit  int
	window time.Duration
	local  FailureCounter
}

// Add implements FailureCounter.
func (f *redisFailures) Add(key string, t time.Time) bool {
	if f.s.up.Load() {
		ctx, cancel := callCtx()
		hit, err := failScript.Run(ctx, f.s.client, []string{f.s.prefix + "fail:" + f.name + ":" + hashKey(key)},
			f.limit, f.window.Milliseconds()).Int64()
		cancel()
		if !f.s.failed(err) {
			return hit == 1
		}
	}
	return f.local.Add(key, t)
}

// fleetSlots is max_connections_per_user across the fleet: each user's
// connections are counted in Redis per instance, under a lease the
// instance renews; this instance's own counts are kept here, to renew
// them, and to cap users locally while Redis cannot be reached.
type fleetSlots struct {
	s  *redisShared
	mu sync.Mutex
	// users holds this instance's users with a connection, or whose count
	// Redis may not know (dirty).
	users map[uint64]*fleetUser
}

type fleetUser struct {
	key   string // the Redis key
	n     int
	dirty bool // Redis missed a change of n
}

func (fs *fleetSlots) user(iss, user string) (uint64, string) {
	h := xxhash.New()
	_, _ = h.WriteString(iss)
	_, _ = h.Write([]byte{0})
	_, _ = h.WriteString(user)
	sum := h.Sum64()
	// The braces make the key's hash slot in a Redis Cluster.
	return sum, fs.s.prefix + "conns:{" + strconv.FormatUint(sum, 16) + "}"
}

// Take implements ConnectionSlots.
func (fs *fleetSlots) Take(iss, user string, max int) bool {
	id, key := fs.user(iss, user)
	if fs.s.up.Load() {
		ctx, cancel := callCtx()
		t := now()
		ok, err := takeScript.Run(ctx, fs.s.client, []string{key}, processID, max,
			t.UnixMilli(), t.Add(fs.s.lease).UnixMilli(), (2 * fs.s.lease).Milliseconds()).Int64()
		cancel()
		if !fs.s.failed(err) {
			if ok == 1 {
				fs.add(id, key, false)
			}
			return ok == 1
		}
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if u := fs.users[id]; u != nil && u.n >= max {
		return false
	}
	fs.addLocked(id, key, true)
	return true
}

func (fs *fleetSlots) add(id uint64, key string, dirty bool) {
	fs.mu.Lock()
	fs.addLocked(id, key, dirty)
	fs.mu.Unlock()
}

func (fs *fleetSlots) addLocked(id uint64, key string, dirty bool) {
	u := fs.users[id]
	if u == nil {
		u = &fleetUser{key: key}
		fs.users[id] = u
	}
	u.n++
	u.dirty = u.dirty || dirty
}

// Give implements ConnectionSlots.
func (fs *fleetSlots) Give(iss, user string) {
	id, key := fs.user(iss, user)
	fs.mu.Lock()
	u := fs.users[id]
	if u == nil {
		fs.mu.Unlock()
		return
	}
	u.n--
	if u.n <= 0 && !u.dirty {
		delete(fs.users, id)
	}
	fs.mu.Unlock()
	if fs.s.up.Load() {
		ctx, cancel := callCtx()
		err := giveScript.Run(ctx, fs.s.client, []string{key}, processID).Err()
		cancel()
		if !fs.s.failed(err) {
			return
		}
	}
	fs.mu.Lock()
	if u := fs.users[id]; u != nil {
		u.dirty = true
	} else {
		fs.users[id] = &fleetUser{key: key, dirty: true}
	}
	fs.mu.Unlock()
}

// count is how many connections of the user this instance holds.
func (fs *fleetSlots) count(iss, user string) int {
	id, _ := fs.user(iss, user)
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if u := fs.users[id]; u != nil {
		return u.n
	}
	return 0
}

// renew writes this instance's counts with a new lease deadline, in one
// pipeline: so a count Redis missed (an outage, a restart that lost its
// data) is right again within a third of the lease.
func (fs *fleetSlots) renew(ctx context.Context) error {
	type write struct {
		id  uint64
		key string
		n   int
	}
	fs.mu.Lock()
	ws := make([]write, 0, len(fs.users))
	for id, u := range fs.users {
		ws = append(ws, write{id: id, key: u.key, n: u.n})
	}
	fs.mu.Unlock()
	if len(ws) == 0 {
		return nil
	}
	t := now()
	deadline := t.Add(fs.s.lease).UnixMilli()
	ttl := 2 * fs.s.lease
	_, err := fs.s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, w := range ws {
			if w.n <= 0 {
				p.HDel(ctx, w.key, processID, processID+"@")
				continue
			}
			p.HSet(ctx, w.key, processID, w.n, processID+"@", deadline)
			p.PExpire(ctx, w.key, ttl)
		}
		return nil
	})
	if err != nil {
		return err
	}
	fs.mu.Lock()
	for _, w := range ws {
		if u := fs.users[w.id]; u != nil && u.n == w.n {
			u.dirty = false
			if u.n <= 0 {
				delete(fs.users, w.id)
			}
		}
	}
	fs.mu.Unlock()
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner  = (*RedisStore)(nil)
	_ caddy.Validator    = (*RedisStore)(nil)
	_ caddy.CleanerUpper = (*RedisStore)(nil)
	_ Store              = (*RedisStore)(nil)
	_ caddy.Destructor   = (*redisShared)(nil)
)
