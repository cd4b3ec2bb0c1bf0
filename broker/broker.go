// Package broker is tokenbroker's domain: providers and the tokens obtained
// from them, kept in etcd and in a memory cache that an etcd watch keeps
// coherent. A fresh token is served from memory; a miss takes a per-key etcd
// lock and re-reads the record before calling the provider, so that callers
// on one replica or many cause one provider call.
package broker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/tokenbroker/tokenbroker/broker/oauth"
	"github.com/tokenbroker/tokenbroker/broker/seal"
)

// ErrClosed is returned by calls on a closed Broker.
var ErrClosed = errors.New("broker: closed")

// DefaultMinForcedRefreshInterval is Config.MinForcedRefreshInterval when
// zero.
const DefaultMinForcedRefreshInterval = 5 * time.Second

// Config configures a Broker.
type Config struct {
	// Client is the etcd client; the Broker does not close it.
	Client *clientv3.Client
	// Prefix of every etcd key; DefaultPrefix when empty.
	Prefix string
	// OAuth calls the providers' token endpoints; a default client when nil.
	OAuth *oauth.Client
	// RequireHTTPS refuses providers with plain http endpoints. Without it,
	// plain http is allowed to loopback addresses only (development).
	RequireHTTPS bool
	// DefaultMinTTL applies when a caller names no min_ttl; 60s when zero.
	DefaultMinTTL time.Duration
	// StoreTimeout bounds each etcd call; 5s when zero.
	StoreTimeout time.Duration
	// FetchTimeout bounds a whole miss: lock, re-read, provider call and
	// write; 30s when zero.
	FetchTimeout time.Duration
	// SessionTTL is the lease TTL of the locks, in seconds: a replica that
	// dies holding a lock releases it after this long; 10 when zero.
	SessionTTL int
	// Keyring seals secrets and tokens before they reach etcd; required.
	Keyring *seal.Keyring
	// Logger is scoped with Named("broker"); nop when nil.
	Logger *zap.Logger
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// Replica names this broker instance in grants it refreshes and in
	// elections; the host name and process id when empty.
	Replica string
	// ProviderAttempts bounds the attempts of one token request (temporary
	// failures are retried with backoff and jitter); 3 when zero.
	ProviderAttempts int
	// ProviderBackoff is the first retry's backoff, doubled per attempt;
	// 200ms when zero.
	ProviderBackoff time.Duration
	// Observer receives metrics events; none when nil.
	Observer Observer
	// Refresh tunes the leader-elected background refresher.
	Refresh RefreshConfig
	// CallbackURL is where providers send a person back after consent: the
	// gateway's /v1/oauth/callback as the provider sees it. A provider's
	// own RedirectURL takes precedence.
	CallbackURL string
	// MinForcedRefreshInterval coalesces forced refreshes (Refresh without
	// a stale token) fleet-wide: a token obtained less than this long ago
	// is what such a refresh returns, without a provider call. 5s when
	// zero; negative turns coalescing off.
	MinForcedRefreshInterval time.Duration
	// EventRetention and EventMaxAge bound the events kept (see
	// ListEvents): the leader of refresh shard 0 drops the oldest beyond
	// the count and those older than the age. DefaultEventRetention and
	// DefaultEventMaxAge when zero.
	EventRetention int
	EventMaxAge    time.Duration
	// EventWatchBuffer is how many new events a watcher may fall behind,
	// and EventWatchGrace for how long at most, before its watch ends with
	// ErrSlowConsumer; DefaultEventWatchBuffer and DefaultEventWatchGrace
	// when zero.
	EventWatchBuffer int
	EventWatchGrace  time.Duration
	// Webhooks tunes webhook delivery.
	Webhooks WebhookConfig
	// CooldownBase is a grant's pause after a failed token request, doubled
	// per consecutive failure up to 64 times; 1s when zero.
	CooldownBase time.Duration
	// DeviceScanInterval is how often a replica looks for pending device
	// authorizations that no replica polls for (a new one, or one whose
	// poller died); 1s when zero.
	DeviceScanInterval time.Duration
}

// Broker obtains, caches and serves tokens. It is safe for concurrent use.
// Close stops its watches and waits for in-flight fetches.
type Broker struct {
	cli           *clientv3.Client
	prefix        string
	oauth         *oauth.Client
	log           *zap.Logger
	now           func() time.Time
	defaultMinTTL time.Duration
	storeTimeout  time.Duration
	fetchTimeout  time.Duration
	sessionTTL    int

	keys      *seal.Keyring
	replica   string
	retries   int
	minForced time.Duration
	// eventRetention and eventMaxAge bound the events kept.
	eventRetention int
	eventMaxAge    time.Duration
	eventBuffer    int
	eventGrace     time.Duration
	backoff        time.Duration
	cooldownBase   time.Duration
	callbackURL    atomic.Pointer[string]
	refresh        RefreshConfig
	webhooks       WebhookConfig
	webhookWake    chan struct{} // see wakeWebhooks
	deviceScan     time.Duration
	deviceWake     chan struct{} // see pollDevices
	requireHTTPS   bool
	obs            Observer
	leading        []bool // per shard; guarded by mu
	// discoveryClient reads OIDC discovery documents.
	discoveryClient *http.Client
	tokens          *tokenCache
	touched         sync.Map // token id → *cacheEntry, of the entries callers asked for lately (see touch)
	providers       sync.Map // name → *Provider
	local           sync.Map // grant id → chan struct{}: this process's side of the grant lock
	cooldowns       sync.Map // grant id → *Cooldown: what this replica last read of it
	introspection   tokenIndex
	interned        sync.Map // string → string, see intern
	tokensRev       revision // how far the token watch has applied etcd's history
	providersRev    revision // how far the provider watch has
	flights         singleflight.Group

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	closed bool
	sess   *concurrency.Session
	// sessTurn admits one caller of session at a time to make a new one.
	sessTurn chan struct{}
}

// New loads the providers and tokens stored under the prefix into memory and
// starts the watches that keep memory coherent with etcd. It returns an error
// wrapping ErrStoreUnavailable when etcd cannot be read.
func New(ctx context.Context, cfg Config) (*Broker, error) {
	if cfg.Client == nil {
		return nil, errors.New("broker: config has no etcd client")
	}
	b := &Broker{
		tokens:         newTokenCache(),
		cli:            cfg.Client,
		prefix:         cmp(cfg.Prefix, DefaultPrefix),
		oauth:          cfg.OAuth,
		log:            cfg.Logger,
		now:            cfg.Now,
		defaultMinTTL:  cmp(cfg.DefaultMinTTL, time.Minute),
		storeTimeout:   cmp(cfg.StoreTimeout, 5*time.Second),
		fetchTimeout:   cmp(cfg.FetchTimeout, 30*time.Second),
		sessionTTL:     cmp(cfg.SessionTTL, 10),
		keys:           cfg.Keyring,
		replica:        cfg.Replica,
		retries:        cmp(cfg.ProviderAttempts, 3),
		minForced:      cmp(cfg.MinForcedRefreshInterval, DefaultMinForcedRefreshInterval),
		eventRetention: cmp(cfg.EventRetention, DefaultEventRetention),
		eventMaxAge:    cmp(cfg.EventMaxAge, DefaultEventMaxAge),
		eventBuffer:    cmp(cfg.EventWatchBuffer, DefaultEventWatchBuffer),
		eventGrace:     cmp(cfg.EventWatchGrace, DefaultEventWatchGrace),
		backoff:        cmp(cfg.ProviderBackoff, 200*time.Millisecond),
		cooldownBase:   cmp(cfg.CooldownBase, time.Second),
		refresh:        cfg.Refresh.withDefaults(),
		webhooks:       cfg.Webhooks.withDefaults(),
		webhookWake:    make(chan struct{}, 1),
		deviceScan:     cmp(cfg.DeviceScanInterval, time.Second),
		deviceWake:     make(chan struct{}, 1),
		sessTurn:       make(chan struct{}, 1),
		obs:            cfg.Observer,
		discoveryClient: &http.Client{Timeout: 10 * time.Second,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
	}
	b.refresh.callerMinTTL = b.defaultMinTTL
	if b.replica == "" {
		host, _ := os.Hostname()
		b.replica = fmt.Sprintf("%s/%d", host, os.Getpid())
	}
	if !strings.HasSuffix(b.prefix, "/") {
		b.prefix += "/"
	}
	if b.oauth == nil {
		b.oauth = &oauth.Client{}
	}
	if cfg.RequireHTTPS {
		c := *b.oauth
		c.RequireHTTPS = true
		b.oauth = &c
	}
	b.requireHTTPS = cfg.RequireHTTPS
	if b.log == nil {
		b.log = zap.NewNop()
	}
	b.log = b.log.Named("broker")
	if b.obs == nil {
		b.obs = nopObserver{}
	}
	b.SetCallbackURL(cfg.CallbackURL)
	if b.keys == nil {
		k, err := seal.GenerateKey("ephemeral")
		if err != nil {
			return nil, err
		}
		if b.keys, err = seal.NewKeyring(k); err != nil {
			return nil, err
		}
		b.log.Warn("no master key configured: secrets are sealed with an ephemeral key and will not open after a restart")
	}
	if b.now == nil {
		b.now = time.Now
	}
	b.ctx, b.cancel = context.WithCancel(context.Background())

	rev, err := b.load(ctx)
	if err != nil {
		b.cancel()
		return nil, err
	}
	for _, m := range b.mirrors() {
		b.wg.Add(1)
		go b.follow(m, rev)
	}
	b.startRefresher()
	b.wg.Add(1)
	go b.pollDevices()
	return b, nil
}

func cmp[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// Fingerprint tells admins whether a secret changed without revealing it:
// an HMAC under a key derived from the master key (see
// seal.Keyring.Fingerprint), the same on every replica with the same
// master key; "" for no secret.
func (b *Broker) Fingerprint(secret string) string { return b.keys.Fingerprint(secret) }

// Close stops the watches, waits for in-flight fetches, and releases the
// broker's locks. It is safe to call more than once.
func (b *Broker) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	sess := b.sess
	b.mu.Unlock()

	b.cancel()
	b.wg.Wait()
	if sess == nil {
		return nil
	}
	// Revoking the lease releases every lock at once. The session's own
	// context (b.ctx) is done already, so stop its keepalive and revoke
	// with a fresh one.
	sess.Orphan()
	ctx, cancel := context.WithTimeout(context.Background(), b.storeTimeout)
	defer cancel()
	if _, err := b.cli.Revoke(ctx, sess.Lease()); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return storeError(ctx, "revoke session lease", err)
	}
	return nil
}

// enter registers an in-flight operation that Close waits for.
func (b *Broker) enter() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return false
	}
	b.wg.Add(1)
	return true
}

// session returns the broker's etcd session, making a new one when the last
// one's lease was lost. One caller at a time makes it; the others wait for
// their turn no longer than their own store call may take (storeCtx), so
// that with etcd unreachable every caller fails within StoreTimeout rather
// than after each caller queued before it has timed out in turn.
func (b *Broker) session(ctx context.Context) (*concurrency.Session, error) {
	if s, lost := b.liveSession(); lost == nil && s != nil {
		return s, nil
	}
	// Revoking a lost session's lease and granting the new one share one
	// StoreTimeout, with the wait for the turn. The session's keepalive
	// lives as long as b.ctx; ctx only bounds the grant.
	grantCtx, cancel := b.storeCtx(ctx)
	defer cancel()
	select {
	case b.sessTurn <- struct{}{}:
	case <-grantCtx.Done():
		return nil, storeError(ctx, "grant session lease", grantCtx.Err())
	}
	defer func() { <-b.sessTurn }()
	s, lost := b.liveSession()
	if s != nil {
		return s, nil // made by the caller whose turn came before
	}
	if lost != nil {
		b.log.Warn("etcd session lost; starting a new one")
		// The lease may still be alive in etcd (a member that comes back
		// renews its leases): revoke it, so that the locks and leadership
		// it holds go now rather than after its TTL, and the replicas do
		// not win elections on keys of dead sessions.
		if _, err := b.cli.Revoke(grantCtx, lost.Lease()); err != nil {
			b.log.Debug("revoke the lost session's lease", zap.Error(err))
		}
		b.mu.Lock()
		if b.sess == lost {
			b.sess = nil
		}
		b.mu.Unlock()
	}
	lease, err := b.cli.Grant(grantCtx, int64(b.sessionTTL))
	if err != nil {
		return nil, storeError(ctx, "grant session lease", err)
	}
	s, err = concurrency.NewSession(b.cli, concurrency.WithLease(lease.ID), concurrency.WithContext(b.ctx))
	if err != nil {
		return nil, storeError(ctx, "start session", err)
	}
	b.mu.Lock()
	closed := b.closed
	if !closed {
		b.sess = s
	}
	b.mu.Unlock()
	if closed {
		// Close has taken the session it revokes already: this one is
		// revoked here, or its locks would outlive the broker by its TTL.
		s.Orphan()
		rctx, cancel := context.WithTimeout(context.Background(), b.storeTimeout)
		defer cancel()
		if _, err := b.cli.Revoke(rctx, lease.ID); err != nil {
			b.log.Debug("revoke a session made while closing", zap.Error(err))
		}
		return nil, ErrClosed
	}
	return s, nil
}

// liveSession returns the broker's session when it is alive, or the one
// whose lease was lost (lost), or neither when there is none yet.
func (b *Broker) liveSession() (s, lost *concurrency.Session) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sess == nil {
		return nil, nil
	}
	select {
	case <-b.sess.Done():
		return nil, b.sess
	default:
		return b.sess, nil
	}
}

// SetCallbackURL sets where providers send a person back after consent,
// when the URL is known only once the gateway listens.
func (b *Broker) SetCallbackURL(u string) { b.callbackURL.Store(&u) }

// Ready reports whether etcd answers, within a second.
func (b *Broker) Ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if _, err := b.cli.Get(ctx, b.prefix+providersPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil {
		return storeError(ctx, "ready check", err)
	}
	return nil
}
