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
	"net/url"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/tokenbroker/tokenbroker/broker/oauth"
	"github.com/tokenbroker/tokenbroker/broker/seal"
)

// ErrClosed is returned by calls on a closed Broker.
var ErrClosed = errors.New("broker: closed")

// Config configures a Broker.
type Config struct {
	// Client is the etcd client; the Broker does not close it.
	Client *clientv3.Client
	// Prefix of every etcd key; DefaultPrefix when empty.
	Prefix string
	// OAuth calls the providers' token endpoints; a default client when nil.
	OAuth *oauth.Client
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

	tokens    sync.Map // token id → *TokenRecord
	providers sync.Map // name → *Provider
	flights   singleflight.Group

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	closed bool
	sess   *concurrency.Session
}

// New loads the providers and tokens stored under the prefix into memory and
// starts the watches that keep memory coherent with etcd. It returns an error
// wrapping ErrStoreUnavailable when etcd cannot be read.
func New(ctx context.Context, cfg Config) (*Broker, error) {
	if cfg.Client == nil {
		return nil, errors.New("broker: config has no etcd client")
	}
	b := &Broker{
		cli:           cfg.Client,
		prefix:        cmp(cfg.Prefix, DefaultPrefix),
		oauth:         cfg.OAuth,
		log:           cfg.Logger,
		now:           cfg.Now,
		defaultMinTTL: cmp(cfg.DefaultMinTTL, time.Minute),
		storeTimeout:  cmp(cfg.StoreTimeout, 5*time.Second),
		fetchTimeout:  cmp(cfg.FetchTimeout, 30*time.Second),
		sessionTTL:    cmp(cfg.SessionTTL, 10),
	}
	if !strings.HasSuffix(b.prefix, "/") {
		b.prefix += "/"
	}
	if b.oauth == nil {
		b.oauth = &oauth.Client{}
	}
	if b.log == nil {
		b.log = zap.NewNop()
	}
	b.log = b.log.Named("broker")
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
	return b, nil
}

func cmp[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

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
	if _, err := b.cli.Revoke(ctx, sess.Lease()); err != nil {
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
// one's lease was lost.
func (b *Broker) session(ctx context.Context) (*concurrency.Session, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sess != nil {
		select {
		case <-b.sess.Done():
			b.log.Warn("etcd session lost; starting a new one")
			b.sess = nil
		default:
			return b.sess, nil
		}
	}
	// The session's keepalive lives as long as b.ctx; ctx only bounds the
	// lease grant.
	grantCtx, cancel := context.WithTimeout(ctx, b.storeTimeout)
	defer cancel()
	lease, err := b.cli.Grant(grantCtx, int64(b.sessionTTL))
	if err != nil {
		return nil, storeError(ctx, "grant session lease", err)
	}
	s, err := concurrency.NewSession(b.cli, concurrency.WithLease(lease.ID), concurrency.WithContext(b.ctx))
	if err != nil {
		return nil, storeError(ctx, "start session", err)
	}
	b.sess = s
	return s, nil
}

// TokenRequest names the token a caller wants.
type TokenRequest struct {
	Provider string
	Account  string
	Scopes   []string
	// MinTTL is how long the token must stay valid; the broker's default
	// when zero. It is capped at half the token's lifetime (see Fresh).
	MinTTL time.Duration
}

// GetToken returns a token for r that stays valid for at least r.MinTTL.
// A fresh token in memory is returned without touching etcd. Otherwise the
// token is fetched once under a per-key etcd lock, however many callers ask.
//
// Errors wrap ErrInvalidArgument, ErrNotFound (unknown provider or account),
// ErrStoreUnavailable, ErrLockLost, an oauth error (*oauth.Error, or
// oauth.ErrTransport, ErrBadResponse, ErrResponseTooLarge) or the context's
// error. A failed fetch stores nothing.
func (b *Broker) GetToken(ctx context.Context, r TokenRequest) (*TokenRecord, error) {
	key, err := NewTokenKey(r.Provider, r.Account, r.Scopes)
	if err != nil {
		return nil, err
	}
	minTTL := r.MinTTL
	if minTTL <= 0 {
		minTTL = b.defaultMinTTL
	}
	id := key.id()
	if v, ok := b.tokens.Load(id); ok {
		if rec := v.(*TokenRecord); rec.Fresh(b.now(), minTTL) {
			return rec, nil
		}
	}
	return b.fetch(ctx, "get\x00"+id, key, func(cur *TokenRecord) bool {
		return cur != nil && cur.Fresh(b.now(), minTTL)
	})
}

// Refresh obtains a new token for r, ignoring r.MinTTL. When staleToken is
// not empty and the current token differs from it and is still valid, the
// current token is returned without a provider call: someone refreshed
// first. Errors as for GetToken.
func (b *Broker) Refresh(ctx context.Context, r TokenRequest, staleToken string) (*TokenRecord, error) {
	key, err := NewTokenKey(r.Provider, r.Account, r.Scopes)
	if err != nil {
		return nil, err
	}
	id := key.id()
	current := func(cur *TokenRecord) bool {
		return staleToken != "" && cur != nil && cur.AccessToken != staleToken && cur.ExpiresAt.After(b.now())
	}
	if v, ok := b.tokens.Load(id); ok && current(v.(*TokenRecord)) {
		return v.(*TokenRecord), nil
	}
	return b.fetch(ctx, "refresh\x00"+id+"\x00"+staleToken, key, current)
}

// fetch runs fetchLocked once per flight key however many callers wait, on
// a context of the broker's own (bounded by FetchTimeout), so that one
// caller giving up does not fail the others.
func (b *Broker) fetch(ctx context.Context, flight string, key TokenKey, good func(*TokenRecord) bool) (*TokenRecord, error) {
	ch := b.flights.DoChan(flight, func() (any, error) {
		if !b.enter() {
			return nil, ErrClosed
		}
		defer b.wg.Done()
		fctx, cancel := context.WithTimeout(b.ctx, b.fetchTimeout)
		defer cancel()
		return b.fetchLocked(fctx, key, good)
	})
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(*TokenRecord), nil
	}
}

// fetchLocked takes the key's etcd lock, re-reads the record, and when it is
// still not good enough, obtains a new token and stores it fenced by the lock.
func (b *Broker) fetchLocked(ctx context.Context, key TokenKey, good func(*TokenRecord) bool) (*TokenRecord, error) {
	p, err := b.provider(ctx, key.Provider)
	if err != nil {
		return nil, err
	}
	if key.Account != "" {
		// Accounts (password and authorization-code grants) are not
		// registered yet; only the provider's own identity exists.
		return nil, fmt.Errorf("%w: account %q of provider %q", ErrNotFound, key.Account, key.Provider)
	}
	sess, err := b.session(ctx)
	if err != nil {
		return nil, err
	}
	id := key.id()
	m := concurrency.NewMutex(sess, b.prefix+locksPrefix+id)
	if err := m.Lock(ctx); err != nil {
		return nil, storeError(ctx, "lock "+key.String(), err)
	}
	defer func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.storeTimeout)
		defer cancel()
		if err := m.Unlock(uctx); err != nil {
			// The lease releases it at the latest after SessionTTL.
			b.log.Warn("unlock token key", zap.Stringer("key", key), zap.Error(err))
		}
	}()

	cur, err := b.readToken(ctx, id)
	if err != nil {
		return nil, err
	}
	if cur != nil {
		b.offer(id, cur)
		if good(cur) {
			return cur, nil
		}
	}
	rec, err := b.obtain(ctx, p, key, cur)
	if err != nil {
		return nil, err
	}
	if err := b.writeToken(ctx, m, p, id, rec); err != nil {
		return nil, err
	}
	b.offer(id, rec)
	b.log.Info("token obtained", zap.Stringer("key", key), zap.Int64("generation", rec.Generation),
		zap.Duration("lifetime", rec.Lifetime()))
	return rec, nil
}

// obtain asks the provider for a new token of key. prev is the current
// record, or nil.
func (b *Broker) obtain(ctx context.Context, p *Provider, key TokenKey, prev *TokenRecord) (*TokenRecord, error) {
	if !p.Allows(GrantClientCredentials) {
		return nil, fmt.Errorf("%w: provider %q does not allow client_credentials", ErrNotFound, p.Name)
	}
	params := url.Values{"grant_type": {string(GrantClientCredentials)}}
	for k, v := range p.TokenParams {
		params.Set(k, v)
	}
	scope := key.Scope
	if scope == "" {
		scope = strings.Join(p.DefaultScopes, " ")
	}
	if scope != "" {
		params.Set("scope", scope)
	}
	issued := b.now()
	tok, err := b.oauth.Token(ctx, oauth.Request{
		TokenURL:     p.TokenURLFor(GrantClientCredentials),
		ClientID:     p.ClientID,
		ClientSecret: p.ClientSecret,
		AuthStyle:    p.ClientAuth,
		Params:       params,
	})
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, fmt.Errorf("%w: provider %s did not answer in time", ErrProviderTimeout, p.Name)
		}
		return nil, &ProviderError{Provider: p.Name, Err: err}
	}
	lifetime := tok.ExpiresIn
	if lifetime <= 0 {
		lifetime = p.TokenLifetime()
	}
	rec := &TokenRecord{
		Key:          key,
		AccessToken:  tok.AccessToken,
		TokenType:    tok.TokenType,
		Scope:        tok.Scope,
		IDToken:      tok.IDToken,
		RefreshToken: tok.RefreshToken,
		IssuedAt:     issued,
		ExpiresAt:    issued.Add(lifetime),
		Generation:   1,
	}
	if prev != nil {
		rec.Generation = prev.Generation + 1
		if rec.RefreshToken == "" {
			rec.RefreshToken = prev.RefreshToken
		}
	}
	return rec, nil
}

// ErrProviderTimeout: the provider did not answer within the fetch deadline.
var ErrProviderTimeout = errors.New("broker: provider timed out")

// ProviderError is a failed call to a provider. Err is an error of package
// oauth: an *oauth.Error carrying the provider's OAuth2 error, or one of its
// sentinels. Its text is safe to log and to return to callers.
type ProviderError struct {
	Provider string
	Err      error
}

func (e *ProviderError) Error() string { return "provider " + e.Provider + ": " + e.Err.Error() }

func (e *ProviderError) Unwrap() error { return e.Err }

// writeToken stores rec and its introspection entry in one transaction that
// commits only while m is still held. A lost lock discards the write and
// returns ErrLockLost.
func (b *Broker) writeToken(ctx context.Context, m *concurrency.Mutex, p *Provider, id string, rec *TokenRecord) error {
	val, err := encodeToken(rec)
	if err != nil {
		return err
	}
	idx, err := jsonMarshal(storedIntrospection{
		Provider: rec.Key.Provider, Account: rec.Key.Account, Scope: rec.GrantedScope(),
		ClientID: p.ClientID, TokenType: rec.Type(), IssuedAt: rec.IssuedAt, ExpiresAt: rec.ExpiresAt,
	})
	if err != nil {
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, b.storeTimeout)
	defer cancel()
	// The index entry vanishes with the token: its lease outlives the token
	// by a second at most.
	ttl := int64(rec.ExpiresAt.Sub(b.now())/time.Second) + 1
	lease, err := b.cli.Grant(sctx, max(ttl, 1))
	if err != nil {
		return storeError(ctx, "grant introspection lease", err)
	}
	resp, err := b.cli.Txn(sctx).If(m.IsOwner()).Then(
		clientv3.OpPut(b.prefix+tokensPrefix+id, string(val)),
		clientv3.OpPut(b.prefix+introspectPrefix+tokenHash(rec.AccessToken), string(idx), clientv3.WithLease(lease.ID)),
	).Commit()
	if err != nil {
		return storeError(ctx, "write token", err)
	}
	if !resp.Succeeded {
		b.revokeLease(lease.ID)
		return fmt.Errorf("%w: write of %s discarded", ErrLockLost, rec.Key)
	}
	rec.Revision = resp.Header.Revision
	return nil
}

func (b *Broker) revokeLease(id clientv3.LeaseID) {
	ctx, cancel := context.WithTimeout(b.ctx, b.storeTimeout)
	defer cancel()
	if _, err := b.cli.Revoke(ctx, id); err != nil {
		b.log.Debug("revoke unused lease", zap.Error(err))
	}
}

// readToken reads a token record from etcd; nil when there is none.
func (b *Broker) readToken(ctx context.Context, id string) (*TokenRecord, error) {
	sctx, cancel := context.WithTimeout(ctx, b.storeTimeout)
	defer cancel()
	resp, err := b.cli.Get(sctx, b.prefix+tokensPrefix+id)
	if err != nil {
		return nil, storeError(ctx, "read token", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	kv := resp.Kvs[0]
	return decodeToken(kv.Value, kv.ModRevision)
}

// offer publishes rec in memory unless a newer record is there already.
func (b *Broker) offer(id string, rec *TokenRecord) {
	for {
		v, loaded := b.tokens.LoadOrStore(id, rec)
		if !loaded || v.(*TokenRecord).Revision >= rec.Revision || b.tokens.CompareAndSwap(id, v, rec) {
			return
		}
	}
}

// forget drops the record of id from memory unless it is newer than rev.
func (b *Broker) forget(id string, rev int64) {
	for {
		v, ok := b.tokens.Load(id)
		if !ok || v.(*TokenRecord).Revision > rev || b.tokens.CompareAndDelete(id, v) {
			return
		}
	}
}

// Introspection is what the broker knows of a token it handed out, in RFC
// 7662 terms.
type Introspection struct {
	Active    bool
	Provider  string
	Account   string
	Scope     string
	ClientID  string
	TokenType string
	IssuedAt  time.Time
	ExpiresAt time.Time
}

// Introspect looks a token up in the broker's index of the tokens it handed
// out. An unknown or expired token is inactive, not an error. Errors wrap
// ErrInvalidArgument (empty token) or ErrStoreUnavailable.
func (b *Broker) Introspect(ctx context.Context, token string) (*Introspection, error) {
	if token == "" {
		return nil, invalidf("token is empty")
	}
	sctx, cancel := context.WithTimeout(ctx, b.storeTimeout)
	defer cancel()
	resp, err := b.cli.Get(sctx, b.prefix+introspectPrefix+tokenHash(token))
	if err != nil {
		return nil, storeError(ctx, "read introspection index", err)
	}
	if len(resp.Kvs) == 0 {
		return &Introspection{}, nil
	}
	var s storedIntrospection
	if err := jsonUnmarshal(resp.Kvs[0].Value, &s); err != nil {
		return nil, err
	}
	if !s.ExpiresAt.After(b.now()) {
		return &Introspection{}, nil
	}
	return &Introspection{
		Active: true, Provider: s.Provider, Account: s.Account, Scope: s.Scope, ClientID: s.ClientID,
		TokenType: s.TokenType, IssuedAt: s.IssuedAt, ExpiresAt: s.ExpiresAt,
	}, nil
}
