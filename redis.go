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
	newClient, err := redisOptions(rawURL)
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
	s.poolKey = rawURL + "\x00" + prefix
	logger := ctx.Logger()
	val, _, err := redisStores.LoadOrNew(s.poolKey, func() (caddy.Destructor, error) {
		return newRedisShared(rawURL, newClient(), prefix, lease, logger)
	})
	if err != nil {
		return err
	}
	s.shared = val.(*redisShared)
	s.shared.lease.Store(int64(lease)) // the latest config's
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

// redisStores holds the process's connections to Redis, by URL and
// prefix, so that they outlive a config reload.
var redisStores = caddy.NewUsagePool()

// redisOptions reads a store URL into a constructor of go-redis's client:
// a Sentinel failover client with master_name, a cluster client with addr
// parameters or cluster=true, else one server, with every option the URL
// sets. An outage costs a handshake at most redisCallTimeout per call,
// whatever the URL sets.
func redisOptions(raw string) (func() redis.UniversalClient, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") || u.Host == "" {
		return nil, fmt.Errorf("redis: want a redis:// or rediss:// URL with a host, not %q", redactStoreURL(raw))
	}
	q := u.Query()
	cluster := q.Has("addr") && !q.Has("master_name")
	if c := q.Get("cluster"); c != "" {
		cluster, err = strconv.ParseBool(c)
		if err != nil {
			return nil, fmt.Errorf("redis: cluster must be true or false, not %q", c)
		}
		if cluster && q.Has("master_name") {
			return nil, errors.New("redis: a URL with master_name names Sentinels, not a cluster: drop cluster=true")
		}
		q.Del("cluster")
		u.RawQuery = q.Encode()
	}
	switch {
	case q.Has("master_name"):
		o, err := redis.ParseFailoverURL(u.String())
		if err != nil {
			return nil, goRedisErr(err)
		}
		clientDefaults(&o.DialTimeout, &o.ReadTimeout, &o.WriteTimeout, &o.MaxRetries, &o.DialerRetries, &o.ContextTimeoutEnabled, &o.DisableIdentity)
		return func() redis.UniversalClient { return redis.NewFailoverClient(o) }, nil
	case cluster:
		o, err := redis.ParseClusterURL(u.String())
		if err != nil {
			return nil, goRedisErr(err)
		}
		clientDefaults(&o.DialTimeout, &o.ReadTimeout, &o.WriteTimeout, &o.MaxRetries, &o.DialerRetries, &o.ContextTimeoutEnabled, &o.DisableIdentity)
		return func() redis.UniversalClient { return redis.NewClusterClient(o) }, nil
	default:
		o, err := redis.ParseURL(u.String())
		if err != nil {
			return nil, goRedisErr(err)
		}
		clientDefaults(&o.DialTimeout, &o.ReadTimeout, &o.WriteTimeout, &o.MaxRetries, &o.DialerRetries, &o.ContextTimeoutEnabled, &o.DisableIdentity)
		return func() redis.UniversalClient { return redis.NewClient(o) }, nil
	}
}

// clientDefaults sets the options of a go-redis client that the URL left
// to their defaults. Each call has a context of its own
// (redisCallTimeout for a decision, redisBulkTimeout for a sync, a batch
// or a renewal); go-redis keeps the earlier of its deadline and the read
// and write timeouts. A decision does not wait for retries: the ping
// notices an outage, and the decision counts locally meanwhile.
func clientDefaults(dial, read, write *time.Duration, retries, dialerRetries *int, ctxTimeout, noIdentity *bool) {
	if *dial == 0 {
		*dial = time.Second
	}
	if *read == 0 {
		*read = redisBulkTimeout
	}
	if *write == 0 {
		*write = redisBulkTimeout
	}
	if *retries == 0 {
		*retries = -1
	}
	if *dialerRetries == 0 {
		*dialerRetries = 1
	}
	*ctxTimeout = true
	*noIdentity = true // no CLIENT SETINFO, which older servers refuse
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
type goRedisLog struct{}

func (goRedisLog) Printf(_ context.Context, format string, v ...any) {
	if ce := caddy.Log().Named("ws_auth.redis").Check(zap.DebugLevel, "go-redis"); ce != nil {
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

const (
	// maxPendingWrites bounds the list's writes kept during an outage; past it,
	// the oldest are dropped (and said so once).
	maxPendingWrites = 1 << 17
	// writeBatch is how many of the list's writes go in one pipeline.
	writeBatch = 1000
	// redisBulkTimeout bounds a sync, a batch of writes and a renewal.
	redisBulkTimeout = 10 * time.Second
	// replyErrorEvery is how often a command refused by Redis (an ACL
	// without EVALSHA, a key of the wrong type) is logged, at most.
	replyErrorEvery = time.Minute
)

// redisShared is the process's connection to one Redis and key prefix:
// the client, the subscription to the list's changes, the loop that
// pings, syncs and renews, and the connection counts.
type redisShared struct {
	client redis.UniversalClient
	prefix string
	lease  atomic.Int64 // ns; the latest config's
	logger *zap.Logger
	slots  *fleetSlots

	up      atomic.Bool
	closed  atomic.Bool // destructed: no more calls
	downMu  sync.Mutex  // orders the outage's log lines
	down    bool
	lastErr atomic.Int64 // unix ns of the last reply error logged

	// pending holds the list's writes that Redis has not confirmed yet,
	// by entry, the latest one of each: a sync never undoes them.
	pendMu  sync.Mutex
	pending map[entryKey]pendingWrite
	pendSeq uint64
	dropped bool // pending overflowed during this outage

	// epoch is the value of <prefix>epoch when the list was last synced:
	// if Redis loses its data, the key goes with it, and the instance
	// writes its list back rather than take the loss for removals.
	epoch string

	sub    *redis.PubSub
	cancel context.CancelFunc
	done   chan struct{}
}

// A listWrite is an entry put on the list (remove false) or taken off.
type listWrite struct {
	entry  Entry
	remove bool
}

type pendingWrite struct {
	listWrite
	seq uint64
}

func newRedisShared(rawURL string, client redis.UniversalClient, prefix string, lease time.Duration, logger *zap.Logger) (*redisShared, error) {
	s := &redisShared{
		client:  client,
		prefix:  prefix,
		logger:  logger.With(zap.String("redis", redactStoreURL(rawURL)), zap.String("key_prefix", prefix)),
		pending: make(map[entryKey]pendingWrite),
		done:    make(chan struct{}),
	}
	s.lease.Store(int64(lease))
	s.slots = &fleetSlots{s: s, users: make(map[uint64]*fleetUser)}
	quietGoRedis.Do(func() { redis.SetLogger(goRedisLog{}) })
	s.up.Store(true)

	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.sub = s.client.Subscribe(ctx, s.channel())

	// Entries already on the run-time list (a reload that adds the store)
	// are shared: they wait as writes until the first sync. From here on,
	// the list's changes are shared through s.
	fleetMu.Lock()
	for _, e := range runtimeBlocklist.entries(now()) {
		s.keep(listWrite{entry: e})
	}
	fleet.add(s)
	fleetMu.Unlock()

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
	go s.listen()
	go s.run(ctx)
	return s, nil
}

// Destruct stops the store's loops and closes its client, when the last
// config using it is unloaded. Connections that outlive it give their
// slots back locally; their counts in Redis end with the lease.
func (s *redisShared) Destruct() error {
	s.closed.Store(true)
	fleetMu.Lock()
	fleet.remove(s)
	fleetMu.Unlock()
	s.cancel()
	<-s.done
	_ = s.sub.Close() // ends listen
	return s.client.Close()
}

func (s *redisShared) channel() string  { return s.prefix + "blocklist:changes" }
func (s *redisShared) listKey() string  { return s.prefix + "blocklist" }
func (s *redisShared) epochKey() string { return s.prefix + "epoch" }

// leaseTime is the lease of connection counts.
func (s *redisShared) leaseTime() time.Duration { return time.Duration(s.lease.Load()) }

// usable reports whether a decision may call Redis now.
func (s *redisShared) usable() bool { return s.up.Load() && !s.closed.Load() }

// hashKey is a short key of the parts, the same in every instance.
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

// failed reports whether err means that the call has no answer to use, so
// that the caller counts locally instead. Redis that cannot be reached
// turns the store unreachable until a ping answers; a command that Redis
// refused (an ACL without EVALSHA, a key of another type) is logged at
// most once a minute and leaves the store as it is.
func (s *redisShared) failed(err error) bool {
	if err == nil || errors.Is(err, redis.Nil) {
		return false
	}
	if s.closed.Load() {
		return true
	}
	var reply redis.Error
	if errors.As(err, &reply) && !errors.Is(err, context.DeadlineExceeded) {
		t := time.Now().UnixNano()
		last := s.lastErr.Load()
		if t-last >= int64(replyErrorEvery) && s.lastErr.CompareAndSwap(last, t) {
			s.logger.Error("redis refused a command: counting in this instance for it", zap.Error(err))
		}
		return true
	}
	s.markDown(err)
	return true
}

// markDown turns the store unreachable: decisions count locally, and the
// list's writes wait. It is logged once per outage.
func (s *redisShared) markDown(err error) {
	if s.closed.Load() {
		return
	}
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

// markUp turns the store reachable again.
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

// listen applies the list's changes that other instances publish, when s
// is the store the list is shared through.
func (s *redisShared) listen() {
	for msg := range s.sub.Channel() {
		var m listMessage
		if err := json.Unmarshal([]byte(msg.Payload), &m); err != nil || m.From == processID {
			continue
		}
		e := Entry{Kind: m.Kind, Value: m.Value, Reason: truncate(m.Reason, maxReason)}
		if m.Expires != 0 {
			e.Expires = time.UnixMilli(m.Expires)
		}
		fleetMu.Lock()
		if fleet.active() == s {
			t := now()
			if m.Remove {
				_, _, _, _ = runtimeBlocklist.take(e.Kind, e.Value, t)
			} else if _, err := runtimeBlocklist.put(e, t); err != nil {
				s.logger.Debug("skipping a published blocklist entry", zap.Error(err))
			}
			fleet.touch(entryKey{e.Kind, e.Value})
		}
		fleetMu.Unlock()
	}
}

// run pings Redis every second, writes what waits, syncs the list every
// redisSyncEvery and renews the connection counts every third of the
// lease, until the store is destroyed.
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
			if ctx.Err() == nil {
				s.markDown(err)
			}
			continue
		}
		wasDown := !s.up.Load()
		if wasDown || time.Since(lastRenew) >= s.leaseTime()/3 {
			c, cancel := context.WithTimeout(ctx, redisBulkTimeout)
			err = s.slots.renew(c, wasDown)
			cancel()
			if ctx.Err() != nil || s.failed(err) {
				continue
			}
			lastRenew = time.Now()
		}
		if wasDown || time.Since(lastSync) >= redisSyncEvery {
			c, cancel := context.WithTimeout(ctx, redisBulkTimeout)
			err = s.sync(c)
			cancel()
			if ctx.Err() != nil || s.failed(err) {
				continue
			}
			lastSync = time.Now()
		} else if s.pendingCount() > 0 {
			// Written while the last sync ran, or refused once.
			c, cancel := context.WithTimeout(ctx, redisBulkTimeout)
			err = s.flush(c)
			cancel()
			if ctx.Err() != nil || s.failed(err) {
				continue
			}
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

// maxReason bounds a reason read from Redis.
const maxReason = 1000

// keep records w as a write Redis has not confirmed. fleetMu is held.
func (s *redisShared) keep(w listWrite) {
	s.pendMu.Lock()
	defer s.pendMu.Unlock()
	k := entryKey{w.entry.Kind, w.entry.Value}
	if _, ok := s.pending[k]; !ok && len(s.pending) >= maxPendingWrites {
		// The oldest write goes: under a flood of bans during an outage,
		// the newest matter most.
		var oldest entryKey
		first := true
		var min uint64
		for key, p := range s.pending {
			if first || p.seq < min {
				oldest, min, first = key, p.seq, false
			}
		}
		delete(s.pending, oldest)
		if !s.dropped {
			s.dropped = true
			s.logger.Warn("too many blocklist changes waiting for redis: dropping the oldest", zap.Int("kept", maxPendingWrites))
		}
	}
	s.pendSeq++
	s.pending[k] = pendingWrite{listWrite: w, seq: s.pendSeq}
}

// confirm forgets the pending writes that Redis has taken, unless they
// were replaced meanwhile.
func (s *redisShared) confirm(ws []pendingWrite) {
	s.pendMu.Lock()
	defer s.pendMu.Unlock()
	for _, w := range ws {
		k := entryKey{w.entry.Kind, w.entry.Value}
		if p, ok := s.pending[k]; ok && p.seq == w.seq {
			delete(s.pending, k)
		}
	}
	if len(s.pending) == 0 {
		s.dropped = false
	}
}

func (s *redisShared) pendingCount() int {
	s.pendMu.Lock()
	defer s.pendMu.Unlock()
	return len(s.pending)
}

func (s *redisShared) isPending(k entryKey) bool {
	s.pendMu.Lock()
	defer s.pendMu.Unlock()
	_, ok := s.pending[k]
	return ok
}

// share writes w to Redis now if it can, else leaves it pending for the
// run loop. It is called without fleetMu, after keep.
func (s *redisShared) share(w pendingWrite) {
	if !s.usable() {
		return
	}
	ctx, cancel := callCtx()
	err := s.write(ctx, []pendingWrite{w})
	cancel()
	if !s.failed(err) {
		s.confirm([]pendingWrite{w})
	}
}

// flush writes every pending change, in batches, expired entries aside.
func (s *redisShared) flush(ctx context.Context) error {
	s.pendMu.Lock()
	ws := make([]pendingWrite, 0, len(s.pending))
	t := now()
	for k, w := range s.pending {
		if !w.remove && !live(w.entry.Expires, t) {
			delete(s.pending, k) // it would be pruned at once
			continue
		}
		ws = append(ws, w)
	}
	s.pendMu.Unlock()
	for len(ws) > 0 {
		n := min(len(ws), writeBatch)
		if err := s.write(ctx, ws[:n]); err != nil {
			return err
		}
		s.confirm(ws[:n])
		ws = ws[n:]
	}
	return nil
}

// write sends changes of the list to Redis, each with its message, in one
// round trip.
func (s *redisShared) write(ctx context.Context, ws []pendingWrite) error {
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

// sync writes what waits, then makes the local list hold what Redis
// holds: entries another instance added while a message was lost are put,
// entries it removed are taken off, and entries that have expired are
// removed from Redis. Redis is read without holding fleetMu; a change
// made meanwhile (touched since) or not yet confirmed (pending) is left
// as it is. If Redis lost its data (the epoch key is gone or new), the
// local list is written back instead of taken for removals.
func (s *redisShared) sync(ctx context.Context) error {
	fleetMu.Lock()
	start := fleet.seq
	fleetMu.Unlock()
	if err := s.flush(ctx); err != nil {
		return err
	}
	if err := s.client.SetNX(ctx, s.epochKey(), processID+"-"+strconv.FormatInt(time.Now().UnixNano(), 36), 0).Err(); err != nil {
		return err
	}
	var epoch *redis.StringCmd
	var all *redis.MapStringStringCmd
	if _, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		epoch = p.Get(ctx, s.epochKey())
		all = p.HGetAll(ctx, s.listKey())
		return nil
	}); err != nil {
		return err
	}
	t := now()
	remote := make(map[entryKey]Entry, len(all.Val()))
	var expired []string
	foreign := 0
	for field, raw := range all.Val() {
		kind, value, ok := strings.Cut(field, ":")
		var rec listRecord
		if !ok || json.Unmarshal([]byte(raw), &rec) != nil {
			foreign++
			continue
		}
		e := Entry{Kind: kind, Value: value, Reason: truncate(rec.Reason, maxReason)}
		if rec.Expires != 0 {
			e.Expires = time.UnixMilli(rec.Expires)
			if !live(e.Expires, t) {
				expired = append(expired, field)
				continue
			}
		}
		remote[entryKey{kind, value}] = e
	}
	if foreign > 0 {
		s.logger.Warn("skipping blocklist fields in redis that ws_auth did not write", zap.Int("fields", foreign))
	}
	for len(expired) > 0 {
		n := min(len(expired), writeBatch)
		if err := s.client.HDel(ctx, s.listKey(), expired[:n]...).Err(); err != nil {
			return err
		}
		expired = expired[n:]
	}

	fleetMu.Lock()
	defer fleetMu.Unlock()
	if fleet.active() != s {
		return nil // another store shares the list
	}
	lost := s.epoch != "" && epoch.Val() != s.epoch
	s.epoch = epoch.Val()
	if lost {
		s.logger.Warn("redis lost the blocklist (its epoch key changed): writing this instance's entries back")
	}
	changed := func(k entryKey) bool { return fleet.touched[k] > start || s.isPending(k) }
	for _, e := range runtimeBlocklist.entries(t) {
		k := entryKey{e.Kind, e.Value}
		r, ok := remote[k]
		switch {
		case changed(k):
			delete(remote, k)
		case !ok && lost:
			s.keep(listWrite{entry: e})
		case !ok:
			_, _, _, _ = runtimeBlocklist.take(e.Kind, e.Value, t)
		case r.Expires.Equal(e.Expires) && r.Reason == e.Reason:
			delete(remote, k)
		}
	}
	for k, e := range remote {
		if changed(k) {
			continue
		}
		if _, err := runtimeBlocklist.put(e, t); err != nil {
			s.logger.Debug("skipping a blocklist entry in redis", zap.String("kind", e.Kind), zap.Error(err))
		}
	}
	fleet.forget(start)
	if lost {
		s.slots.setDirty()
	}
	return nil
}

// fleetMu orders the run-time list's changes that are shared (a local
// change, a change another instance published) with a sync's reconcile,
// so that a sync never undoes a change made while it read.
var fleetMu sync.Mutex

// fleet is the stores of the process, the list's changes since the last
// syncs, and which store the list is shared through: the newest, so that
// a reload that changes the Redis URL or prefix moves the list to it.
// Every field is guarded by fleetMu.
var fleet = fleetSet{touched: make(map[entryKey]uint64)}

type fleetSet struct {
	stores  []*redisShared
	seq     uint64
	touched map[entryKey]uint64 // entry -> seq of its last change
}

func (f *fleetSet) add(s *redisShared) { f.stores = append(f.stores, s) }

func (f *fleetSet) remove(s *redisShared) {
	for i, x := range f.stores {
		if x == s {
			f.stores = append(f.stores[:i], f.stores[i+1:]...)
			return
		}
	}
}

// active is the store the list is shared through, nil if none.
func (f *fleetSet) active() *redisShared {
	if len(f.stores) == 0 {
		return nil
	}
	return f.stores[len(f.stores)-1]
}

// touch records a change of k.
func (f *fleetSet) touch(k entryKey) {
	f.seq++
	f.touched[k] = f.seq
}

// forget drops the changes a sync that started at seq has seen.
func (f *fleetSet) forget(seq uint64) {
	for k, s := range f.touched {
		if s <= seq {
			delete(f.touched, k)
		}
	}
}

// blockEntry puts e on the run-time list, and on the fleet's, and reports
// whether it replaced an entry in force at t. The live connections it
// matches, here and on the other instances, are closed.
func blockEntry(e Entry, t time.Time) (replaced bool, err error) {
	fleetMu.Lock()
	replaced, err = runtimeBlocklist.put(e, t)
	if err != nil {
		fleetMu.Unlock()
		return false, err
	}
	e.Value, _ = entryValue(e.Kind, e.Value)
	s, w := fleet.changed(listWrite{entry: e})
	fleetMu.Unlock()
	if s != nil {
		s.share(w)
	}
	return replaced, nil
}

// unblockEntry takes the entry of kind and value off the run-time list,
// and the fleet's; it returns the entry, whether there was one, and
// whether it was in force at t.
func unblockEntry(kind, value string, t time.Time) (e Entry, found, inForce bool, err error) {
	fleetMu.Lock()
	e, found, inForce, err = runtimeBlocklist.take(kind, value, t)
	if err != nil {
		fleetMu.Unlock()
		return e, found, inForce, err
	}
	s, w := fleet.changed(listWrite{entry: Entry{Kind: e.Kind, Value: e.Value}, remove: true})
	fleetMu.Unlock()
	if s != nil {
		s.share(w)
	}
	return e, found, inForce, nil
}

// changed records a local change of the list, pending on the active store
// until Redis confirms it; it returns the store and the write to share.
// fleetMu is held.
func (f *fleetSet) changed(w listWrite) (*redisShared, pendingWrite) {
	s := f.active()
	if s == nil {
		return nil, pendingWrite{}
	}
	f.touch(entryKey{w.entry.Kind, w.entry.Value})
	s.keep(w)
	s.pendMu.Lock()
	p := s.pending[entryKey{w.entry.Kind, w.entry.Value}]
	s.pendMu.Unlock()
	return s, p
}

// The scripts: each is one round trip (EVALSHA) on one key, atomic in
// Redis, on Redis's clock (TIME), so that instances whose clocks differ
// still count alike.
var (
	// gcraScript is the GCRA of rateLimiter over Redis: KEYS[1] holds the
	// key's theoretical arrival time in µs; ARGV: interval and window, in
	// µs. It returns 0 if the event is allowed, else the µs to wait.
	gcraScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
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
	// the instance's lease deadline (ms). Counts whose lease has passed are
	// dropped. ARGV: instance, max, lease (ms). It returns 1 if a slot was
	// taken.
	takeScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[3])
local h = redis.call('HGETALL', KEYS[1])
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
redis.call('HSET', KEYS[1], ARGV[1] .. '@', string.format('%d', now + lease))
redis.call('PEXPIRE', KEYS[1], 2 * lease)
return 1
`)

	// giveScript gives one of the instance's slots back (ARGV[1]).
	giveScript = redis.NewScript(`
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if n <= 0 then redis.call('HDEL', KEYS[1], ARGV[1], ARGV[1] .. '@') end
return n
`)

	// renewScript moves the lease of the instance's count (ARGV[1]) to
	// now + ARGV[2] ms; with ARGV[3] >= 0 it also sets the count, and with
	// 0 removes it.
	renewScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
if n == 0 then
  redis.call('HDEL', KEYS[1], ARGV[1], ARGV[1] .. '@')
  return 0
end
if n > 0 then redis.call('HSET', KEYS[1], ARGV[1], n) end
redis.call('HSET', KEYS[1], ARGV[1] .. '@', string.format('%d', now + lease))
redis.call('PEXPIRE', KEYS[1], 2 * lease)
return 1
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
	return l.allow(key, t, true)
}

// allow is Allow; without local, an event Redis cannot count is not
// counted here either (the caller's own limiter has counted it).
func (l *redisLimiter) allow(key string, t time.Time, local bool) (bool, time.Duration) {
	if l.s.usable() {
		ctx, cancel := callCtx()
		wait, err := gcraScript.Run(ctx, l.s.client, []string{l.s.prefix + "rate:" + l.name + ":" + hashKey(key)},
			l.interval.Microseconds(), l.window.Microseconds()).Int64()
		cancel()
		if !l.s.failed(err) {
			return wait == 0, time.Duration(wait) * time.Microsecond
		}
	}
	if !local {
		return true, 0
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
	if f.s.usable() {
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
	if fs.s.usable() {
		ctx, cancel := callCtx()
		ok, err := takeScript.Run(ctx, fs.s.client, []string{key}, processID, max, fs.s.leaseTime().Milliseconds()).Int64()
		cancel()
		if !fs.s.failed(err) {
			if ok == 1 {
				fs.mu.Lock()
				fs.addLocked(id, key, false)
				fs.mu.Unlock()
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
	if fs.s.usable() {
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

// setDirty marks every count as one Redis may have lost.
func (fs *fleetSlots) setDirty() {
	fs.mu.Lock()
	for _, u := range fs.users {
		u.dirty = true
	}
	fs.mu.Unlock()
}

// renew moves the lease of this instance's counts, in pipelines of
// writeBatch; the counts themselves are written where Redis may have
// missed a change (dirty), or all of them with all (after an outage). The
// take and give scripts keep the others exact.
func (fs *fleetSlots) renew(ctx context.Context, all bool) error {
	type write struct {
		id  uint64
		key string
		n   int // -1: the lease only
	}
	fs.mu.Lock()
	ws := make([]write, 0, len(fs.users))
	for id, u := range fs.users {
		w := write{id: id, key: u.key, n: -1}
		if all || u.dirty {
			w.n = max(u.n, 0)
		}
		ws = append(ws, w)
	}
	fs.mu.Unlock()
	lease := fs.s.leaseTime().Milliseconds()
	for batch := ws; len(batch) > 0; {
		n := min(len(batch), writeBatch)
		_, err := fs.s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, w := range batch[:n] {
				renewScript.Eval(ctx, p, []string{w.key}, processID, lease, w.n) // EVALSHA cannot fall back to EVAL in a pipeline
			}
			return nil
		})
		if err != nil {
			return err
		}
		batch = batch[n:]
	}
	fs.mu.Lock()
	for _, w := range ws {
		if u := fs.users[w.id]; u != nil && w.n >= 0 && u.n == w.n {
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

// admitJoint charges a handshake's shared rate (rate, for key) and takes a
// connection slot of the user, in one round trip: the two script calls go
// in one pipeline. It reports whether the handshake may go on; if not,
// wait is the rate's Retry-After, or 0 when the cap refused it (the rate
// is charged then, as the local limits would). While Redis cannot be
// reached, both are counted locally.
// With counted, the rate's local limiter has counted the handshake already.
func (s *RedisStore) admitJoint(rate *redisLimiter, key, iss, user string, max int, counted bool) (ok bool, wait time.Duration) {
	sh := s.shared
	fs := sh.slots
	id, connsKey := fs.user(iss, user)
	if sh.usable() {
		rateKeys := []string{sh.prefix + "rate:" + rate.name + ":" + hashKey(key)}
		rateArgs := []any{rate.interval.Microseconds(), rate.window.Microseconds()}
		connsKeys := []string{connsKey}
		connsArgs := []any{processID, max, sh.leaseTime().Milliseconds()}
		ctx, cancel := callCtx()
		defer cancel()
		var rc, tc *redis.Cmd
		_, err := sh.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			rc = gcraScript.EvalSha(ctx, p, rateKeys, rateArgs...)
			tc = takeScript.EvalSha(ctx, p, connsKeys, connsArgs...)
			return nil
		})
		// After a restart of Redis, or on a cluster node that has not
		// seen them, the scripts are loaded by the call that needs them.
		if isNoScript(rc.Err()) {
			rc = gcraScript.Run(ctx, sh.client, rateKeys, rateArgs...)
		}
		if isNoScript(tc.Err()) {
			tc = takeScript.Run(ctx, sh.client, connsKeys, connsArgs...)
		}
		if err == nil || isNoScript(err) {
			err = errors.Join(rc.Err(), tc.Err())
		}
		w, _ := rc.Int64()
		taken, _ := tc.Int64()
		if err != nil && tc.Err() == nil && taken == 1 {
			// The rate has no answer: the slot goes back, and both are
			// counted locally below.
			fs.mu.Lock()
			fs.addLocked(id, connsKey, false)
			fs.mu.Unlock()
			fs.Give(iss, user)
		}
		if !sh.failed(err) {
			if taken == 1 {
				fs.mu.Lock()
				fs.addLocked(id, connsKey, false)
				fs.mu.Unlock()
				if w > 0 {
					fs.Give(iss, user) // the rate refused it
				}
			}
			switch {
			case w > 0:
				return false, time.Duration(w) * time.Microsecond
			case taken != 1:
				return false, 0
			}
			return true, 0
		}
	}
	if !counted {
		if ok, wait := rate.local.Allow(key, now()); !ok {
			return false, wait
		}
	}
	return fs.Take(iss, user, max), 0
}

// isNoScript reports whether err is Redis's answer to an EVALSHA of a
// script it does not hold.
func isNoScript(err error) bool { return err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") }
