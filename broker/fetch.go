package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/url"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/tokenbroker/tokenbroker/broker/event"
	"github.com/tokenbroker/tokenbroker/broker/oauth"
)

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
// A fresh token in memory is returned without touching etcd.
//
// A token whose replacement revokes it (TokenRecord.ProviderExpiresAt) is
// served with the expiry of its planned replacement, and is not replaced
// before then: a caller whose min_ttl reaches past that moment gets it all
// the same, with that earlier expiry, and without waiting; a caller asking
// once it has passed waits for the replacement. Otherwise the
// token is fetched once under the grant's etcd lock, however many callers
// on however many replicas ask. When the provider fails while the current
// token is still valid, the current token is returned.
//
// Errors wrap ErrInvalidArgument, ErrNotFound (unknown provider or
// account), ErrReauthorizationRequired, ErrStoreUnavailable, ErrLockLost,
// ErrConflict, a *ProviderError (the provider's answer) or the context's
// error. A failed fetch stores no token.
func (b *Broker) GetToken(ctx context.Context, r TokenRequest) (*TokenRecord, error) {
	minTTL := r.MinTTL
	if minTTL <= 0 {
		minTTL = b.defaultMinTTL
	}
	now := b.now()
	if id, ok := tokenID(r.Provider, r.Account, r.Scopes); ok {
		if e, ok := b.tokens.load(id); ok {
			if rec := e.rec.Load(); rec != nil && rec.servable(now, minTTL) {
				b.touch(id, e, now)
				b.obs.TokenServed(OutcomeHit)
				return rec, nil
			}
		}
	}
	key, err := NewTokenKey(r.Provider, r.Account, r.Scopes)
	if err != nil {
		return nil, err
	}
	id := key.id()
	rec, err := b.fetch(ctx, "get\x00"+id, key, func(cur *TokenRecord) bool {
		return cur != nil && cur.servable(b.now(), minTTL)
	}, "", false)
	if err != nil {
		b.obs.TokenServed(OutcomeError)
		return nil, err
	}
	b.obs.TokenServed(OutcomeMiss)
	b.touch(id, b.entry(id), now)
	return rec, nil
}

// Refresh obtains a new token for r, ignoring r.MinTTL. When staleToken is
// not empty and the current token differs from it and is still valid, the
// current token is returned without a provider call: someone refreshed
// first. Without staleToken, refreshes are coalesced across the fleet: a
// valid token obtained less than MinForcedRefreshInterval ago (by any
// replica, for any caller) is returned without a provider call, so that
// the provider sees at most one forced refresh per key and interval.
// A token whose replacement revokes it is not replaced before the
// expiry it was served with (see GetToken) unless it is staleToken: a
// refresh without staleToken returns it until then. Errors as for
// GetToken.
func (b *Broker) Refresh(ctx context.Context, r TokenRequest, staleToken string) (*TokenRecord, error) {
	key, err := NewTokenKey(r.Provider, r.Account, r.Scopes)
	if err != nil {
		return nil, err
	}
	id := key.id()
	current := func(cur *TokenRecord) bool {
		if cur == nil {
			return false
		}
		now := b.now()
		if staleToken == "" {
			return b.minForced > 0 && cur.ExpiresAt.After(now) && now.Sub(cur.IssuedAt) < b.minForced
		}
		return cur.AccessToken != staleToken && cur.ExpiresAt.After(now)
	}
	if rec := b.cached(id); current(rec) || promised(rec, staleToken, b.now()) {
		return rec, nil
	}
	return b.fetch(ctx, "refresh\x00"+id+"\x00"+staleToken, key, current, staleToken, false)
}

// fetch runs fetchLocked once per flight key however many callers wait, on
// a context of the broker's own (bounded by FetchTimeout), so that one
// caller giving up does not fail the others.
// A failing provider does not fail callers while the current token is
// valid, except that stale (a token a caller found refused) is never served.
//
// A token promised to callers (TokenRecord.Promised) counts as good
// whatever good says, unless it is stale: it is not replaced before the
// expiry it was served with.
func (b *Broker) fetch(ctx context.Context, flight string, key TokenKey, good func(*TokenRecord) bool, stale string, background bool) (*TokenRecord, error) {
	wanted := good
	good = func(cur *TokenRecord) bool { return wanted(cur) || promised(cur, stale, b.now()) }
	ch := b.flights.DoChan(flight, func() (any, error) {
		if !b.enter() {
			return nil, ErrClosed
		}
		defer b.wg.Done()
		base := b.ctx
		if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
			// The provider call shows in the first caller's trace.
			base = trace.ContextWithSpanContext(base, sc)
		}
		fctx, cancel := context.WithTimeout(base, b.fetchTimeout)
		defer cancel()
		rec, err := b.fetchLocked(fctx, key, good, stale, background)
		if errors.Is(err, ErrConflict) { // an admin changed the provider or grant meanwhile
			rec, err = b.fetchLocked(fctx, key, good, stale, background)
		}
		return rec, err
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

// storeBudgetKey carries, in a context, the deadline that several store
// calls share (withStoreBudget); the context itself keeps its own
// deadline, so that a store call running out of budget is
// ErrStoreUnavailable, not the caller's deadline.
type storeBudgetKey struct{}

func withStoreBudget(ctx context.Context, d time.Duration) context.Context {
	return context.WithValue(ctx, storeBudgetKey{}, time.Now().Add(d))
}

// storeCtx bounds one store call: by StoreTimeout, and by the budget ctx
// carries, if any.
func (b *Broker) storeCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	deadline := time.Now().Add(b.storeTimeout)
	if budget, ok := ctx.Value(storeBudgetKey{}).(time.Time); ok && budget.Before(deadline) {
		deadline = budget
	}
	return context.WithDeadline(ctx, deadline)
}

// lockName is what a fetch of key locks: the grant of an account, whose
// refreshes must happen one at a time (a refresh token rotates); the token
// key itself for the provider's own client identity (client credentials),
// so that tokens of different scopes do not wait on each other.
func lockName(key TokenKey) string {
	if key.Account == "" {
		return key.id()
	}
	return grantID(key.Provider, key.Account)
}

// sharedGrant reports whether g's record is written by fetches that hold
// different locks (the provider's own identity: one lock per token key);
// such a record is written without a compare on its revision, and holds
// nothing a lost update would break (health, statistics, cooldown).
func sharedGrant(g *Grant) bool { return g.Account == "" }

// promised reports whether cur, the current token, must not be replaced
// at now: it is promised to callers (TokenRecord.Promised) and is not the
// token a caller found refused.
func promised(cur *TokenRecord, stale string, now time.Time) bool {
	return cur != nil && cur.AccessToken != stale && cur.Promised(now)
}

// fetchLocked takes the grant's lock, re-reads the token and the grant, and
// when the token is still not good enough, obtains a new one and stores it
// fenced by the lock, the provider's and the grant's revisions.
func (b *Broker) fetchLocked(ctx context.Context, key TokenKey, good func(*TokenRecord) bool, stale string, background bool) (*TokenRecord, error) {
	gid := grantID(key.Provider, key.Account)
	id := key.id()
	// Read before waiting for the lock: an unknown provider takes no lock;
	// with etcd unreachable this fails within StoreTimeout (the lock would
	// wait for the whole fetch) and a still-valid token is served; and a
	// token another replica stored meanwhile is served without the lock.
	//
	// The read and the taking of the lock share one StoreTimeout: with
	// etcd unreachable a fetch answers within it, whichever step waits.
	//
	// A background refresh goes to the lock directly: its token is known
	// (the refresher found it in memory, due), its provider too, and what
	// the read would find, the watch brings here as well; the reads under
	// the lock decide. So does a fetch for the provider's own identity
	// (client credentials) of a provider memory knows, unless this replica
	// saw its grant cooling down: the read would save a lock only when the
	// watch lags, and costs every miss a round trip. A fetch for an
	// account reads first, so that an account that does not exist takes
	// no lock.
	budget := withStoreBudget(ctx, b.storeTimeout)
	direct := background
	if _, known := b.providers.Load(key.Provider); known && key.Account == "" {
		if err, cooling := b.cooldown(gid); cooling {
			return b.serveStale(b.cached(id), stale, err)
		}
		direct = true
	}
	if !direct {
		if cur, g, err := b.readBeforeLock(budget, key.Provider, id, gid); err != nil {
			if errors.Is(err, ErrNotFound) {
				return nil, err
			}
			return b.serveStale(b.cached(id), stale, err)
		} else if cur != nil && good(cur) {
			b.offer(id, cur)
			return cur, nil
		} else if err, cooling := b.coolingDown(key.Provider, gid, g); cooling {
			// Without queueing on the lock: the grant is left alone by every
			// replica until its cooldown ends.
			return b.serveStale(cur, stale, err)
		}
	}
	m, read, unlock, err := b.grantLock(budget, lockName(key), b.fetchReads(key.Provider, id, gid)...)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && b.ctx.Err() == nil {
			// The fetch's own budget ran out while another fetch of the
			// grant (here or on another replica) held the lock.
			err = fmt.Errorf("%w: grant %s busy for %s", ErrProviderTimeout, gid, b.fetchTimeout)
		}
		return b.serveStale(b.cached(id), stale, err)
	}
	defer b.releaseLater(unlock)

	p, cur, g, err := b.decodeFetchReads(key.Provider, id, gid, read)
	if err != nil {
		return nil, err
	}
	if cur != nil {
		b.offer(id, cur)
		if good(cur) {
			return cur, nil
		}
	}
	if key.Account != "" && g == nil {
		return nil, fmt.Errorf("%w: account %q of provider %q", ErrNotFound, key.Account, key.Provider)
	}
	if g == nil {
		g = &Grant{Provider: key.Provider, Type: p.ownGrant(), Health: HealthOK}
	} else if key.Account == "" && g.Type != p.ownGrant() { // the provider changed how it obtains them
		own := *g
		own.Type = p.ownGrant()
		g = &own
	}
	if g.Health == HealthReauthorizationRequired || g.Health == HealthPending {
		return b.serveStale(cur, stale, fmt.Errorf("%w: account %q of provider %q: %s", ErrReauthorizationRequired, key.Account, key.Provider, cmp(g.LastError, "no consent yet")))
	}
	if err, ok := b.coolingDown(key.Provider, gid, g); ok {
		return b.serveStale(cur, stale, err)
	}

	// held confirms, before a request is sent again, that the lock is
	// still ours: a deposed holder must not present the grant's refresh
	// token once another may have used it.
	held := func(ctx context.Context) error {
		sctx, cancel := context.WithTimeout(ctx, b.storeTimeout)
		defer cancel()
		resp, err := b.cli.Txn(sctx).If(m.IsOwner()).Commit()
		if err != nil {
			return storeError(ctx, "check grant lock", err)
		}
		if !resp.Succeeded {
			return fmt.Errorf("%w: grant %s: not retrying the provider", ErrLockLost, gid)
		}
		return nil
	}
	lost := false
	if g.RefreshToken != "" {
		if lost, err = b.markRefreshing(ctx, m, gid); err != nil {
			return b.serveStale(cur, stale, err)
		}
	}
	rec, next, method, err := b.obtain(ctx, p, g, key, cur, held)
	if err != nil {
		if lost && errors.Is(err, ErrReauthorizationRequired) {
			err = fmt.Errorf("%w (%w)", err, ErrRefreshAnswerLost)
		}
		b.noteFailure(ctx, m, p, g, next, gid, err)
		return b.serveStale(cur, stale, err)
	}
	if lost {
		b.log.Info("an earlier refresh of the grant got no stored answer; this one succeeded", zap.String("grant", gid))
	}
	if (next.RefreshToken == g.RefreshToken || g.RefreshToken == "") && (cur == nil || cur.ProviderExpiresAt().IsZero()) {
		// Tokens replaced stay valid until they expire, unless the provider
		// rotated the refresh token, which revokes them (see commit), or
		// revokes them on refresh.
		if prev := carried(cur, rec.AccessToken, b.now()); len(prev) > 0 {
			rec.setReplaced(prev)
		}
	}
	if err := b.commit(ctx, m, p, g, next, id, rec); err != nil {
		return nil, err
	}
	b.clearCooldown(gid)
	b.offer(id, rec)
	b.log.Info("token obtained", zap.Stringer("key", key), zap.Int64("generation", rec.Generation),
		zap.Duration("lifetime", rec.Lifetime()), zap.Bool("refresh_token_rotated", next.RefreshToken != g.RefreshToken),
		zap.Bool("served_until_hand_over", !rec.ProviderExpiresAt().IsZero()))
	if method == GrantRefreshToken && cur != nil && cur.AccessToken != rec.AccessToken {
		b.learnRevocation(ctx, p, cur)
	}
	return rec, nil
}

// ErrRefreshAnswerLost is what a grant's last error adds when the provider
// refused a refresh token after an earlier refresh of it got no stored
// answer.
var ErrRefreshAnswerLost = errors.New("refresh answer lost: a replica presented the refresh token and stopped before storing the provider's answer; " +
	"a provider that rotates refresh tokens had already replaced it")

// markRefreshing records, under the grant's lock and before its refresh
// token is presented, that an answer is awaited; the commit or the
// failure that follows removes the mark. It reports whether a mark was
// there already: an earlier refresh whose answer was never stored (its
// replica died mid-request), after which a provider that rotates refresh
// tokens refuses the one stored.
func (b *Broker) markRefreshing(ctx context.Context, m *grantMutex, gid string) (bool, error) {
	val, err := json.Marshal(struct {
		Replica string    `json:"replica"`
		At      time.Time `json:"at"`
	}{b.replica, time.Now().UTC()})
	if err != nil {
		return false, err
	}
	key := b.prefix + refreshingPrefix + gid
	sctx, cancel := context.WithTimeout(ctx, b.storeTimeout)
	defer cancel()
	resp, err := b.cli.Txn(sctx).If(m.IsOwner()).Then(clientv3.OpGet(key), clientv3.OpPut(key, string(val))).Commit()
	if err != nil {
		return false, storeError(ctx, "mark refresh of "+gid, err)
	}
	if !resp.Succeeded {
		return false, fmt.Errorf("%w: grant %s", ErrLockLost, gid)
	}
	return len(resp.Responses[0].GetResponseRange().GetKvs()) > 0, nil
}

// ErrProviderCoolingDown: the provider failed recently for this grant and is
// left alone for a while; callers without a valid token get the last error.
var ErrProviderCoolingDown = errors.New("broker: provider cooling down")

// serveStale returns cur when it is still valid, so that a failing provider
// does not fail callers while their token lasts; else err. A grant the
// provider rejected is not served: its tokens were revoked with it.
func (b *Broker) serveStale(cur *TokenRecord, stale string, err error) (*TokenRecord, error) {
	if cur != nil && cur.AccessToken != stale && cur.ExpiresAt.After(b.now()) && !errors.Is(err, ErrConflict) && !errors.Is(err, ErrReauthorizationRequired) {
		b.log.Warn("serving a token that is still valid while its refresh fails",
			zap.Stringer("key", cur.Key), zap.Time("expires_at", cur.ExpiresAt), zap.Error(err))
		return cur, nil
	}
	return nil, err
}

// readBeforeLock reads, in one round trip and at one revision, a token
// record and its grant, and whether the provider exists.
func (b *Broker) readBeforeLock(ctx context.Context, provider, id, gid string) (*TokenRecord, *Grant, error) {
	resps, err := b.read(ctx, "read token and grant", append(b.tokenAndGrantReads(id, gid),
		clientv3.OpGet(b.prefix+providersPrefix+provider, clientv3.WithCountOnly()))...)
	if err != nil {
		return nil, nil, err
	}
	if resps[2].GetResponseRange().GetCount() == 0 {
		return nil, nil, fmt.Errorf("%w: provider %q", ErrNotFound, provider)
	}
	return b.decodeTokenAndGrant(id, gid, resps)
}

// fetchReads are the reads a fetch makes under the grant's lock, in the
// transaction that takes it: the token record, its grant, and the provider
// from etcd, not from memory, so that the fenced write compares the
// revision that is current.
func (b *Broker) fetchReads(provider, id, gid string) []clientv3.Op {
	return append(b.tokenAndGrantReads(id, gid),
		clientv3.OpGet(b.prefix+providersPrefix+provider), clientv3.OpGet(b.learnedKey(provider)))
}

// decodeFetchReads decodes the answers to fetchReads.
func (b *Broker) decodeFetchReads(provider, id, gid string, resps []*etcdserverpb.ResponseOp) (*Provider, *TokenRecord, *Grant, error) {
	rec, g, err := b.decodeTokenAndGrant(id, gid, resps)
	if err != nil {
		return nil, nil, nil, err
	}
	pkey := b.prefix + providersPrefix + provider
	kvs := resps[2].GetResponseRange().GetKvs()
	if len(kvs) == 0 {
		return nil, nil, nil, fmt.Errorf("%w: provider %q", ErrNotFound, provider)
	}
	p, err := b.decodeProvider(pkey, kvs[0].Value, kvs[0].ModRevision)
	if err != nil {
		return nil, nil, nil, err
	}
	if kvs := resps[3].GetResponseRange().GetKvs(); len(kvs) > 0 {
		p.LearnedRefreshRevokesAccessToken = b.decodeLearned(string(kvs[0].Key), kvs[0].Value)
	}
	return p, rec, g, nil
}

// readTokenAndGrant reads a token record and its grant in one round trip.
func (b *Broker) readTokenAndGrant(ctx context.Context, id, gid string) (*TokenRecord, *Grant, error) {
	resps, err := b.read(ctx, "read token and grant", b.tokenAndGrantReads(id, gid)...)
	if err != nil {
		return nil, nil, err
	}
	return b.decodeTokenAndGrant(id, gid, resps)
}

// read makes ops, reads, in one transaction bounded like any store call.
func (b *Broker) read(ctx context.Context, what string, ops ...clientv3.Op) ([]*etcdserverpb.ResponseOp, error) {
	sctx, cancel := b.storeCtx(ctx)
	defer cancel()
	resp, err := b.cli.Txn(sctx).Then(ops...).Commit()
	if err != nil {
		return nil, storeError(ctx, what, err)
	}
	return resp.Responses, nil
}

func (b *Broker) tokenAndGrantReads(id, gid string) []clientv3.Op {
	return []clientv3.Op{clientv3.OpGet(b.prefix + tokensPrefix + id), clientv3.OpGet(b.prefix + grantsPrefix + gid)}
}

// decodeTokenAndGrant decodes the answers to tokenAndGrantReads: the token
// record and the grant (unless gid is empty), each nil when there is none.
func (b *Broker) decodeTokenAndGrant(id, gid string, resps []*etcdserverpb.ResponseOp) (*TokenRecord, *Grant, error) {
	tkey, gkey := b.prefix+tokensPrefix+id, b.prefix+grantsPrefix+gid
	var rec *TokenRecord
	if kvs := resps[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
		var err error
		if rec, err = b.decodeToken(tkey, kvs[0].Value, kvs[0].ModRevision); err != nil {
			// An undecodable record (say, sealed with a retired key) is
			// replaced by a new token rather than failing every caller.
			b.log.Error("ignore undecodable token record", zap.String("key", tkey), zap.Error(err))
			rec = nil
		}
	}
	var g *Grant
	if kvs := resps[1].GetResponseRange().GetKvs(); gid != "" && len(kvs) > 0 {
		var err error
		if g, err = b.decodeGrant(gkey, kvs[0].Value, kvs[0].ModRevision); err != nil {
			return nil, nil, err
		}
	}
	return rec, g, nil
}

// readToken reads a token record from etcd; nil when there is none.
func (b *Broker) readToken(ctx context.Context, id string) (*TokenRecord, error) {
	rec, _, err := b.readTokenAndGrant(ctx, id, "")
	return rec, err
}

// obtain asks the provider for a new token of key through grant g, and
// returns it with the grant as it must be stored next. prev is the current
// record, or nil. A refresh token that the provider rejects falls back to
// the password grant where the account has a password. method is the grant
// the token was obtained with.
//
// A token of a grant that the next refresh revokes (it holds a refresh
// token and p.RevokesOnRefresh) gets, as its ExpiresAt, its hand-over: the
// moment the broker will replace it (RefreshConfig.handOver), earlier than
// the provider's expiry, which goes to ProviderExpiresAt.
func (b *Broker) obtain(ctx context.Context, p *Provider, g *Grant, key TokenKey, prev *TokenRecord, held func(context.Context) error) (*TokenRecord, *Grant, GrantType, error) {
	method := g.Type
	if g.RefreshToken != "" {
		method = GrantRefreshToken
	}
	if method == GrantAuthorizationCode || method == GrantDeviceCode { // consented once, but holds no refresh token
		return nil, nil, "", fmt.Errorf("%w: account %q of provider %q has no refresh token", ErrReauthorizationRequired, g.Account, p.Name)
	}
	if !p.Allows(method) && method != GrantRefreshToken {
		return nil, nil, "", fmt.Errorf("%w: provider %q does not allow the %s grant", ErrNotFound, p.Name, method)
	}
	issued := b.now()
	scope := grantScope(p, g, key)
	if method == GrantRefreshToken && key.Scope == "" {
		// RFC 6749 §6: without a scope the refresh keeps the scope granted,
		// which may be narrower than the one asked for at consent.
		scope = ""
	}
	tok, err := b.call(ctx, p, g, method, scope, held)
	if err != nil && method == GrantRefreshToken && g.Type == GrantPassword && rejectsGrant(err) {
		method = GrantPassword
		tok, err = b.call(ctx, p, g, method, grantScope(p, g, key), held)
	}
	if err != nil {
		// The provider's own grant (account "") has nothing an admin
		// re-authorizes: its refusal is retried after a cooldown.
		if rejectsGrant(err) && g.Account != "" {
			return nil, nil, "", fmt.Errorf("%w: %w", ErrReauthorizationRequired, err)
		}
		return nil, nil, "", err
	}
	// RFC 8693 §2.2.1: an exchanged token that is not an access token has
	// the token_type N_A.
	if tok.TokenType != "" && !isBearer(tok.TokenType) && (method != GrantTokenExchange || !strings.EqualFold(tok.TokenType, "N_A")) {
		err := &ProviderError{Provider: p.Name, Err: fmt.Errorf("%w: token_type %q is not bearer", oauth.ErrBadResponse, tok.TokenType)}
		if !standalone(g.Type) && tok.RefreshToken != "" && tok.RefreshToken != g.RefreshToken {
			// The access token is refused, but the provider rotated the
			// refresh token all the same: the new one must be kept, or the
			// lineage breaks on the next refresh.
			next := *g
			next.RefreshToken, next.RefreshTokenUpdateTime = tok.RefreshToken, issued.UTC()
			return nil, &next, "", err
		}
		return nil, nil, "", err
	}
	lifetime := tok.ExpiresIn
	if lifetime <= 0 {
		lifetime = p.TokenLifetime()
	}
	rec := &TokenRecord{
		Key: key, AccessToken: tok.AccessToken, IssuedAt: issued, ExpiresAt: issued.Add(lifetime), Generation: 1,
	}
	rec.fill(tok.TokenType, tok.Scope, rareFields{idToken: tok.IDToken})
	if prev != nil {
		rec.Generation = prev.Generation + 1
	}
	b.planHandOver(rec, p, g.Type, cmp(tok.RefreshToken, g.RefreshToken))
	next := *g
	next.Health, next.LastError, next.Cooldown = HealthOK, "", nil
	next.LastRefresh, next.ExpireTime, next.RefreshedBy = issued.UTC(), rec.ExpiresAt.UTC(), b.replica
	next.Generation++
	next.UpdateTime = issued.UTC()
	if next.CreateTime.IsZero() {
		next.CreateTime = issued.UTC()
	}
	// RFC 6749 §4.4.3: client credentials need no refresh token; a new
	// token is simply requested (MediaHound). So with every standalone
	// grant.
	if !standalone(g.Type) && tok.RefreshToken != "" && tok.RefreshToken != g.RefreshToken {
		// Rotation (MediaHaven): the old refresh token is dead from now on;
		// the new one is stored with the token, before anyone uses it.
		next.RefreshToken, next.RefreshTokenUpdateTime = tok.RefreshToken, issued.UTC()
	}
	return rec, &next, method, nil
}

// planHandOver makes rec, just obtained through a grant of type gt, a token
// served until its hand-over when the next refresh, with refreshToken,
// revokes it; rec keeps the provider's expiry otherwise.
func (b *Broker) planHandOver(rec *TokenRecord, p *Provider, gt GrantType, refreshToken string) {
	if standalone(gt) || refreshToken == "" || !p.RevokesOnRefresh() {
		return
	}
	rec.setProviderExpiresAt(rec.ExpiresAt)
	rec.ExpiresAt = b.tuningOf(p).handOver(rec.IssuedAt, rec.ProviderExpiresAt())
}

// call makes one token request with bounded retries: temporary failures
// (5xx, timeouts, connection errors, 429) are retried with exponential
// backoff and jitter, honouring Retry-After while it fits the deadline.
func (b *Broker) call(ctx context.Context, p *Provider, g *Grant, method GrantType, scope string, held func(context.Context) error) (*oauth.Token, error) {
	params := url.Values{"grant_type": {string(method)}}
	for k, v := range p.TokenParams {
		params.Set(k, v)
	}
	if scope != "" {
		params.Set("scope", scope)
	}
	grant, ok := grantHandlers[method]
	if !ok {
		return nil, invalidf("provider %q: the broker does not obtain tokens with the %s grant", p.Name, method)
	}
	base := params
	req, err := p.tokenRequest(method, params)
	if err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		// Each attempt gets its parameters anew: an assertion is signed
		// for one request (its jti is not to be used twice).
		req.Params = maps.Clone(base)
		if err := grant.tokenParams(ctx, b, p, g, req.Params); err != nil {
			return nil, err
		}
		var tok *oauth.Token
		start := time.Now()
		tok, err = b.oauth.Token(ctx, req)
		b.obs.ProviderCall(p.Name, method, callOutcome(err), time.Since(start))
		if err != nil && refusesClient(err) && p.ClientAuth.UsesSecret() && p.PreviousSecret != "" && time.Now().Before(p.PreviousSecretUntil) {
			// Within a rotation's overlap: the old secret may still be the
			// one the provider knows.
			old := req
			old.Auth, _ = p.clientAuth(p.ClientAuth, p.PreviousSecret)
			tok, err = b.oauth.Token(ctx, old)
		}
		if err == nil {
			return tok, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w: provider %s did not answer in time", ErrProviderTimeout, p.Name)
		}
		wait, retry := b.retryAfter(err, attempt)
		if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) < wait {
			retry = false
		}
		// A refresh token is never sent twice after a request without an
		// answer: the provider may have rotated it already.
		if method == GrantRefreshToken && !errors.As(err, new(*oauth.Error)) {
			retry = false
		}
		if !retry {
			break
		}
		b.log.Debug("retrying provider", zap.String("provider", p.Name), zap.Int("attempt", attempt+1), zap.Duration("wait", wait), zap.Error(err))
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: provider %s did not answer in time", ErrProviderTimeout, p.Name)
		case <-time.After(wait):
		}
		if err := held(ctx); err != nil {
			return nil, err
		}
	}
	return nil, &ProviderError{Provider: p.Name, Err: err}
}

// retryAfter says whether err is worth another attempt and after how long.
func (b *Broker) retryAfter(err error, attempt int) (time.Duration, bool) {
	if attempt+1 >= b.retries {
		return 0, false
	}
	var oe *oauth.Error
	switch {
	case errors.As(err, &oe):
		if !oe.Temporary() {
			return 0, false
		}
		if oe.RetryAfter > 0 {
			// The provider named when to ask again: the round ends, and
			// the grant's cooldown, shared by every replica, honours it.
			return 0, false
		}
	case errors.Is(err, oauth.ErrTransport):
	default:
		return 0, false
	}
	backoff := b.backoff << attempt
	return backoff/2 + rand.N(backoff/2+1), true
}

// rejectsGrant reports whether the provider refused the grant itself (a
// revoked refresh token, a wrong password): invalid_grant, or a 401 on a
// grant request as MediaHaven answers a dead refresh token.
func rejectsGrant(err error) bool {
	var oe *oauth.Error
	if !errors.As(err, &oe) {
		return false
	}
	return oe.Code == "invalid_grant" || (oe.Code == "" && oe.StatusCode == 401)
}

// callOutcome classifies a token request's result for metrics.
func callOutcome(err error) string {
	var oe *oauth.Error
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &oe) && !oe.Temporary():
		return "rejected"
	case errors.Is(err, oauth.ErrBadResponse), errors.Is(err, oauth.ErrResponseTooLarge):
		return "malformed"
	}
	return "unavailable"
}

// refusesClient reports whether the provider refused the client's
// credentials.
func refusesClient(err error) bool {
	var oe *oauth.Error
	return errors.As(err, &oe) && oe.Code == "invalid_client"
}

func isBearer(t string) bool { return strings.EqualFold(t, "bearer") }

// commit stores rec and the grant as it must be next in one transaction that commits only while m is held and neither
// the provider nor the grant changed since they were read. When the lock
// was lost but nobody touched the grant, a rotated refresh token is still
// saved, since no one else can have used the old one.
//
// The commit records the event of the grant's change in the same
// transaction: events when given, else grant.recovered when the grant was
// failing or needed reauthorization.
func (b *Broker) commit(ctx context.Context, m *grantMutex, p *Provider, g, next *Grant, id string, rec *TokenRecord, events ...event.Event) error {
	return b.commitWith(ctx, m, p, g, next, id, rec, fencedOps{}, events...)
}

// fencedOps are more conditions and writes for one of commit's
// transactions.
type fencedOps struct {
	cmps []clientv3.Cmp
	ops  []clientv3.Op
}

// commitWith is commit, its transaction also guarded by extra.cmps and
// making extra.ops.
func (b *Broker) commitWith(ctx context.Context, m *grantMutex, p *Provider, g, next *Grant, id string, rec *TokenRecord, extra fencedOps, events ...event.Event) error {
	tkey := b.prefix + tokensPrefix + id
	gkey := b.grantKey(g.Provider, g.Account)
	pkey := b.prefix + providersPrefix + p.Name
	val, err := b.encodeToken(tkey, rec, p.ClientID, g.Username)
	if err != nil {
		return err
	}
	gval, err := b.encodeGrant(gkey, next)
	if err != nil {
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, b.storeTimeout)
	defer cancel()
	unchanged := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(pkey), "=", p.Revision)}
	if !sharedGrant(g) {
		unchanged = append(unchanged, clientv3.Compare(clientv3.ModRevision(gkey), "=", g.Revision))
	}
	writes := []clientv3.Op{
		clientv3.OpPut(tkey, string(val)),
		clientv3.OpPut(gkey, string(gval)),
		clientv3.OpDelete(b.prefix + refreshingPrefix + grantID(g.Provider, g.Account)),
	}
	if len(events) == 0 && (g.Health == HealthFailing || g.Health == HealthReauthorizationRequired) {
		events = append(events, b.grantEvent(event.GrantRecovered, g, g.Health, next.Health, ""))
	}
	for _, e := range events {
		writes = b.withEvent(writes, e)
	}
	var others []string
	if next.RefreshToken != g.RefreshToken && g.RefreshToken != "" {
		// A rotating provider (MediaHaven) invalidates the previous access
		// tokens with the refresh token: the grant's other tokens go too,
		// as this replica's memory knows them.
		others = b.grantTokens(grantID(g.Provider, g.Account), id)
		for _, other := range others {
			writes = append(writes, clientv3.OpDelete(b.prefix+tokensPrefix+other))
		}
	}
	// The lock goes with the write that ends the fetch: one etcd write
	// less per token than a release of its own.
	writes = append(writes, extra.ops...)
	writes = append(writes, m.release())
	unchanged = append(unchanged, extra.cmps...)
	resp, err := b.cli.Txn(sctx).If(append(unchanged, m.IsOwner())...).Then(writes...).
		Else(clientv3.OpGet(pkey), clientv3.OpGet(gkey)).Commit()
	if err != nil {
		return storeError(ctx, "write token", err)
	}
	m.releasedBy(resp)
	if resp.Succeeded {
		rec.Revision = resp.Header.Revision
		b.forgetNow(others, resp.Header.Revision)
		return nil
	}
	if next.RefreshToken != g.RefreshToken {
		// The token is discarded, but the provider rotated the refresh
		// token already: as long as no one else changed the grant (no one
		// else can have used the old refresh token then), the new one is
		// saved, or the lineage would break on the next refresh.
		salvage, err := b.cli.Txn(sctx).If(clientv3.Compare(clientv3.ModRevision(gkey), "=", g.Revision)).
			Then(clientv3.OpPut(gkey, string(gval)), clientv3.OpDelete(b.prefix+refreshingPrefix+grantID(g.Provider, g.Account))).Commit()
		if err == nil && salvage.Succeeded {
			b.log.Warn("token write discarded; the rotated refresh token was saved", zap.Stringer("key", rec.Key))
		}
	}
	if changed := resp.Responses; len(changed) == 2 &&
		(modRevision(changed[0]) != p.Revision || (!sharedGrant(g) && modRevision(changed[1]) != g.Revision)) {
		return fmt.Errorf("%w: provider or grant changed while %s was fetched; token discarded", ErrConflict, rec.Key)
	}
	return fmt.Errorf("%w: write of %s discarded", ErrLockLost, rec.Key)
}

// noteFailure records a failed attempt on the grant, fenced like a token
// write: reauthorization_required when the provider rejected the grant,
// failing otherwise, and starts the grant's cooldown.
// next, when not nil, is the grant as the failed answer left it (a rotated
// refresh token).
func (b *Broker) noteFailure(ctx context.Context, m *grantMutex, p *Provider, g, rotated *Grant, gid string, cause error) {
	if errors.Is(cause, ErrConflict) || b.ctx.Err() != nil {
		return
	}
	ctx = context.WithoutCancel(ctx) // a timed-out fetch still records its failure
	next := *g
	if rotated != nil {
		next = *rotated
	}
	next.Health, next.LastError = HealthFailing, cause.Error()
	if errors.Is(cause, ErrReauthorizationRequired) {
		next.Health, next.Cooldown = HealthReauthorizationRequired, nil
	} else {
		next.Cooldown = b.nextCooldown(g.Cooldown, cause)
		b.cooldowns.Store(gid, next.Cooldown)
	}
	next.UpdateTime = b.now().UTC()
	gkey := b.grantKey(g.Provider, g.Account)
	val, err := b.encodeGrant(gkey, &next)
	if err != nil {
		return
	}
	sctx, cancel := context.WithTimeout(ctx, b.storeTimeout)
	defer cancel()
	ops := []clientv3.Op{clientv3.OpPut(gkey, string(val)), clientv3.OpDelete(b.prefix + refreshingPrefix + gid)}
	if next.Health != g.Health {
		t := event.GrantFailing
		if next.Health == HealthReauthorizationRequired {
			t = event.GrantReauthorizationRequired
		}
		ops = b.withEvent(ops, b.grantEvent(t, g, g.Health, next.Health, next.LastError))
	}
	if errors.Is(cause, ErrRefreshAnswerLost) {
		ops = b.withEvent(ops, b.grantEvent(event.RefreshAnswerLost, g, g.Health, next.Health, ErrRefreshAnswerLost.Error()))
	}
	if next.Health == HealthReauthorizationRequired {
		// The provider revoked the grant, and its tokens with it: every
		// replica forgets them.
		ops = append(ops, clientv3.OpDelete(b.prefix+tokensPrefix+gid+"/", clientv3.WithPrefix()))
	}
	cond := []clientv3.Cmp{m.IsOwner(), clientv3.Compare(clientv3.ModRevision(b.prefix+providersPrefix+p.Name), "=", p.Revision)}
	if !sharedGrant(g) {
		cond = append(cond, clientv3.Compare(clientv3.ModRevision(gkey), "=", g.Revision))
	}
	ops = append(ops, m.release())
	resp, err := b.cli.Txn(sctx).If(cond...).Then(ops...).Commit()
	if err == nil {
		m.releasedBy(resp)
	}
	switch {
	case err != nil:
		b.log.Warn("record grant failure", zap.String("grant", gid), zap.Error(err))
	case resp.Succeeded && next.Health == HealthReauthorizationRequired:
		b.forgetNow(b.grantTokens(gid, ""), resp.Header.Revision)
	}
	b.log.Warn("token request failed", zap.String("grant", gid), zap.String("health", string(next.Health)), zap.Error(cause))
}

// Cooldown is a grant's pause after consecutive failed rounds of token
// requests. It is stored with the grant in etcd, so that every replica
// leaves the provider alone until Until (wall clock): a Retry-After is
// honoured by the fleet, not by one process. It also keeps what the
// provider last answered, to tell callers meanwhile.
type Cooldown struct {
	Until    time.Time
	Failures int
	// Class is "oauth" (an OAuth2 error answer: Status, Code, Description),
	// "bad_response", "too_large", "timeout", "transport" or "other"
	// (Message).
	Class       string
	Status      int
	Code        string
	Description string
	Message     string
}

// nextCooldown is the cooldown after a failed round that cause ended,
// following prev: CooldownBase doubled per consecutive failure up to 64
// times, and never shorter than the provider's Retry-After.
func (b *Broker) nextCooldown(prev *Cooldown, cause error) *Cooldown {
	failures := 0
	if prev != nil {
		failures = prev.Failures
	}
	wait := b.cooldownBase << min(failures, 6)
	c := &Cooldown{Failures: failures + 1, Class: "other", Message: cause.Error()}
	var oe *oauth.Error
	switch {
	case errors.As(cause, &oe):
		wait = max(wait, oe.RetryAfter)
		c.Class, c.Status, c.Code, c.Description, c.Message = "oauth", oe.StatusCode, oe.Code, oe.Description, ""
	case errors.Is(cause, oauth.ErrBadResponse):
		c.Class = "bad_response"
	case errors.Is(cause, oauth.ErrResponseTooLarge):
		c.Class = "too_large"
	case errors.Is(cause, ErrProviderTimeout):
		c.Class = "timeout"
	case errors.Is(cause, oauth.ErrTransport):
		c.Class = "transport"
	}
	c.Until = time.Now().Add(wait).UTC()
	return c
}

// err is what callers get while the cooldown lasts: ErrProviderCoolingDown
// wrapping the provider's last answer, its Retry-After the time left.
func (c *Cooldown) err(provider string, now time.Time) error {
	var cause error
	switch c.Class {
	case "oauth":
		left := c.Until.Sub(now).Round(time.Second)
		cause = &oauth.Error{StatusCode: c.Status, Code: c.Code, Description: c.Description, RetryAfter: max(left, time.Second)}
	case "bad_response":
		cause = oauth.ErrBadResponse
	case "too_large":
		cause = oauth.ErrResponseTooLarge
	case "timeout":
		cause = ErrProviderTimeout
	case "transport":
		cause = oauth.ErrTransport
	default:
		cause = errors.New(c.Message)
	}
	return fmt.Errorf("%w until %s: %w", ErrProviderCoolingDown, c.Until.Format(time.RFC3339), &ProviderError{Provider: provider, Err: cause})
}

// coolingDown returns the error of grant g (read from etcd; nil when it is
// not stored yet) while its cooldown lasts, and remembers the cooldown for
// the background refresher (cooldown).
func (b *Broker) coolingDown(provider, gid string, g *Grant) (error, bool) {
	if g == nil || g.Cooldown == nil {
		return nil, false
	}
	now := time.Now()
	if !now.Before(g.Cooldown.Until) {
		return nil, false
	}
	b.cooldowns.Store(gid, g.Cooldown)
	return g.Cooldown.err(provider, now), true
}

// cooldown reports whether this replica last saw grant gid cooling down;
// the background refresher skips such grants.
func (b *Broker) cooldown(gid string) (error, bool) {
	v, ok := b.cooldowns.Load(gid)
	if !ok {
		return nil, false
	}
	c := v.(*Cooldown)
	if !time.Now().Before(c.Until) {
		return nil, false
	}
	return c.err(strings.SplitN(gid, "/", 2)[0], time.Now()), true
}

func (b *Broker) clearCooldown(gid string) { b.cooldowns.Delete(gid) }

// modRevision is the mod revision a range response found, 0 for none.
func modRevision(r *etcdserverpb.ResponseOp) int64 {
	if kvs := r.GetResponseRange().GetKvs(); len(kvs) > 0 {
		return kvs[0].ModRevision
	}
	return 0
}

// grantTokens lists the ids of grant gid's tokens in memory, but except.
func (b *Broker) grantTokens(gid, except string) []string {
	var ids []string
	b.tokens.each(func(id string, _ *cacheEntry) bool {
		if id != except && strings.HasPrefix(id, gid+"/") {
			ids = append(ids, id)
		}
		return true
	})
	return ids
}

// forgetNow drops from memory the tokens ids, deleted from etcd at rev: the
// replica that deleted them stops serving them at once, not when its watch
// brings the deletion.
func (b *Broker) forgetNow(ids []string, rev int64) {
	for _, id := range ids {
		b.forget(id, rev)
	}
}
