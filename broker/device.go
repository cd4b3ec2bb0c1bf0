package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"

	"github.com/tokenbroker/tokenbroker/broker/oauth"
)

// The device authorization grant (RFC 8628). StartDeviceAuthorization asks
// the provider for a device code and a user code, and stores the pending
// authorization in etcd, one per account, leased to expire with the code.
// Every replica looks for pending authorizations (pollDevices); the one
// that takes an authorization's etcd lock, leased to its session, is its
// only poller: it polls the token endpoint at the interval the provider
// asks (slow_down adds 5 s, for good), and keeps the interval and the time
// of the next poll in the record, so that a replica taking over from a
// dead poller goes on at the same pace. Every write of a poller is fenced
// by its lock and by the record's revision. The consent completes as the
// code grant's does: the grant becomes ok, its first token is stored, and
// grant.authorized is recorded, in the transaction that deletes the
// pending authorization.

// storedDeviceAuthorization is a pending device authorization, kept under
// device_authorizations/<grant id> with a lease that ends a little after
// the device code expires. It is a signed record: its device code is
// sealed, and its forgery would make the broker poll for another grant.
type storedDeviceAuthorization struct {
	Provider                string        `json:"provider"`
	Account                 string        `json:"account"`
	Scope                   string        `json:"scope,omitempty"`
	DeviceCode              []byte        `json:"device_code_sealed"`
	UserCode                string        `json:"user_code"`
	VerificationURI         string        `json:"verification_uri"`
	VerificationURIComplete string        `json:"verification_uri_complete,omitempty"`
	Interval                time.Duration `json:"interval"`
	NextPoll                time.Time     `json:"next_poll"`
	ExpiresAt               time.Time     `json:"expires_at"`
	StartTime               time.Time     `json:"start_time"`
	Polls                   int           `json:"polls"`
	// Failures counts the polls in a row that got no answer or a
	// temporary error.
	Failures int    `json:"failures,omitempty"`
	PolledBy string `json:"polled_by,omitempty"`
}

// deviceLeaseMargin is how long a pending authorization's record outlives
// its device code: its poller records the expiry itself.
const deviceLeaseMargin = 30 * time.Second

func (b *Broker) deviceKey(provider, account string) string {
	return b.prefix + devicePrefix + grantID(provider, account)
}

// StartDeviceAuthorization begins the device authorization grant (RFC
// 8628) of an account, creating the account (of type GrantDeviceCode) when
// it does not exist. It returns the user code and the verification URI to
// show the person; the broker then polls the provider until the person
// consents, refuses, or the code expires, and the account becomes ready as
// after the code grant's callback. A new start replaces the account's
// pending one. Errors wrap ErrInvalidArgument (no device_code grant or
// device_authorization_url, an account of another type), ErrNotFound, a
// *ProviderError or ErrStoreUnavailable.
func (b *Broker) StartDeviceAuthorization(ctx context.Context, provider, account string, scopes []string) (*Authorization, error) {
	p, scope, err := b.consentTarget(ctx, provider, account, GrantDeviceCode, scopes, func(p *Provider) bool {
		return p.Allows(GrantDeviceCode) && p.DeviceAuthorizationURL != ""
	}, "a device_authorization_url")
	if err != nil {
		return nil, err
	}
	params := url.Values{}
	if scope != "" {
		params.Set("scope", scope)
	}
	auth, err := p.clientAuth(p.ClientAuth, p.ClientSecret)
	if err != nil {
		return nil, err
	}
	started := time.Now()
	d, err := b.oauth.DeviceAuthorization(ctx, oauth.Request{TokenURL: p.DeviceAuthorizationURL, Auth: auth, Params: params})
	if err != nil {
		return nil, &ProviderError{Provider: p.Name, Err: err}
	}
	answered := time.Now()
	for _, u := range []string{d.VerificationURI, d.VerificationURIComplete} {
		if err := validateURL(u); err != nil {
			return nil, &ProviderError{Provider: p.Name, Err: fmt.Errorf("%w: verification_uri: %w", oauth.ErrBadResponse, err)}
		}
	}
	key := b.deviceKey(provider, account)
	sealed, err := b.sealString(key, "device_code", d.DeviceCode)
	if err != nil {
		return nil, err
	}
	stored := storedDeviceAuthorization{
		Provider: provider, Account: account, Scope: scope, DeviceCode: sealed, UserCode: d.UserCode,
		VerificationURI: d.VerificationURI, VerificationURIComplete: d.VerificationURIComplete,
		Interval: d.Interval, NextPoll: answered.Add(d.Interval).UTC(), ExpiresAt: started.Add(d.ExpiresIn).UTC(),
		StartTime: started.UTC(),
	}
	val, err := b.signRecord(key, stored)
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithTimeout(ctx, b.storeTimeout)
	defer cancel()
	lease, err := b.cli.Grant(sctx, int64((d.ExpiresIn+deviceLeaseMargin+time.Second-1)/time.Second))
	if err != nil {
		return nil, storeError(ctx, "grant device authorization lease", err)
	}
	if _, err := b.cli.Put(sctx, key, string(val), clientv3.WithLease(lease.ID)); err != nil {
		return nil, storeError(ctx, "store device authorization", err)
	}
	select {
	case b.deviceWake <- struct{}{}:
	default:
	}
	b.log.Info("device authorization started", zap.String("provider", provider), zap.String("account", account),
		zap.Duration("interval", d.Interval), zap.Time("expires_at", stored.ExpiresAt))
	return &Authorization{
		UserCode: d.UserCode, VerificationURI: d.VerificationURI, VerificationURIComplete: d.VerificationURIComplete,
		ExpiresAt: stored.ExpiresAt, Interval: d.Interval,
	}, nil
}

// pollDevices runs until Close: every DeviceScanInterval, and at once
// after a start on this replica, it takes the poller's lock of each
// pending authorization that no replica polls for, and polls for it.
func (b *Broker) pollDevices() {
	defer b.wg.Done()
	var (
		mu      sync.Mutex
		polling = map[string]bool{}
		wg      sync.WaitGroup
	)
	defer wg.Wait()
	for {
		for _, key := range b.pendingDevices() {
			mu.Lock()
			busy := polling[key]
			mu.Unlock()
			if busy {
				continue
			}
			sess, m, ok := b.takeDevicePoller(key)
			if !ok {
				continue
			}
			mu.Lock()
			polling[key] = true
			mu.Unlock()
			wg.Go(func() {
				defer func() {
					mu.Lock()
					delete(polling, key)
					mu.Unlock()
				}()
				b.pollDevice(key, sess, m)
			})
		}
		select {
		case <-b.ctx.Done():
			return
		case <-b.deviceWake:
		case <-time.After(b.deviceScan):
		}
	}
}

// pendingDevices lists the keys of the pending device authorizations.
func (b *Broker) pendingDevices() []string {
	ctx, cancel := b.storeCtx(b.ctx)
	defer cancel()
	resp, err := b.cli.Get(ctx, b.prefix+devicePrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		if b.ctx.Err() == nil {
			b.log.Debug("list device authorizations", zap.Error(err))
		}
		return nil
	}
	keys := make([]string, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		keys[i] = string(kv.Key)
	}
	return keys
}

// takeDevicePoller takes, without waiting, the poller's lock of the
// pending authorization at key, unless another replica holds it.
func (b *Broker) takeDevicePoller(key string) (*concurrency.Session, *concurrency.Mutex, bool) {
	lock := b.prefix + devicePollersPrefix + strings.TrimPrefix(key, b.prefix+devicePrefix)
	ctx, cancel := b.storeCtx(b.ctx)
	defer cancel()
	// A lock held is seen without a write; TryLock would write and delete
	// a key of its own on every scan.
	held, err := b.cli.Get(ctx, lock+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || held.Count > 0 {
		return nil, nil, false
	}
	sess, err := b.session(ctx)
	if err != nil {
		return nil, nil, false
	}
	m := concurrency.NewMutex(sess, lock)
	if err := m.TryLock(ctx); err != nil {
		if !errors.Is(err, concurrency.ErrLocked) && b.ctx.Err() == nil {
			b.log.Debug("take device poller lock", zap.String("key", key), zap.Error(err))
		}
		return nil, nil, false
	}
	return sess, m, true
}

// pollDevice polls for the pending authorization at key while it exists
// and this replica holds m, its poller's lock, then releases m.
func (b *Broker) pollDevice(key string, sess *concurrency.Session, m *concurrency.Mutex) {
	ctx, stop := whileAlive(b.ctx, sess)
	defer stop()
	log := b.log.With(zap.String("device_authorization", strings.TrimPrefix(key, b.prefix+devicePrefix)))
	defer func() {
		if isDone(sess) {
			return // the lease, and the lock with it, is gone
		}
		uctx, cancel := context.WithTimeout(context.Background(), b.storeTimeout)
		defer cancel()
		if err := m.Unlock(uctx); err != nil {
			log.Warn("release device poller lock", zap.Error(err))
		}
	}()
	log.Info("polling for a device authorization")
	for ctx.Err() == nil {
		d, rev, err := b.readDeviceAuthorization(ctx, key)
		switch {
		case errors.Is(err, ErrUntrustedRecord):
			log.Error("not polling for a device authorization that failed authentication", zap.Error(err))
			return
		case err != nil:
			if ctx.Err() == nil {
				log.Warn("read device authorization", zap.Error(err))
				sleepCtx(ctx, time.Second)
			}
			continue
		case d == nil:
			return // completed, ended, or expired with its lease
		}
		if !sleepCtx(ctx, time.Until(d.NextPoll)) {
			return
		}
		if !time.Now().Before(d.ExpiresAt) {
			b.endDevice(ctx, m, key, rev, d, fmt.Errorf("%s: the user code expired before the person consented", oauth.CodeExpiredToken), log)
			return
		}
		if done := b.pollDeviceOnce(ctx, m, key, rev, d, log); done {
			return
		}
	}
}

// pollDeviceOnce makes one device access token request for d and acts on
// the answer. It reports whether the authorization ended.
func (b *Broker) pollDeviceOnce(ctx context.Context, m *concurrency.Mutex, key string, rev int64, d *storedDeviceAuthorization, log *zap.Logger) bool {
	p, err := b.GetProvider(ctx, d.Provider)
	if errors.Is(err, ErrNotFound) {
		b.endDevice(ctx, m, key, rev, d, err, log)
		return true
	}
	if err != nil {
		log.Warn("read provider of a device authorization", zap.Error(err))
		sleepCtx(ctx, time.Second)
		return false
	}
	code, err := b.openString(key, "device_code", d.DeviceCode)
	if err != nil {
		b.endDevice(ctx, m, key, rev, d, err, log)
		return true
	}
	params := url.Values{}
	for k, v := range p.TokenParams {
		params.Set(k, v)
	}
	params.Set("grant_type", string(GrantDeviceCode))
	params.Set("device_code", code)
	req, err := p.tokenRequest(GrantDeviceCode, params)
	if err != nil {
		b.endDevice(ctx, m, key, rev, d, err, log)
		return true
	}
	issued := b.now()
	start := time.Now()
	tok, err := b.oauth.Token(ctx, req)
	b.obs.ProviderCall(p.Name, GrantDeviceCode, callOutcome(err), time.Since(start))
	if ctx.Err() != nil {
		return true
	}
	next := *d
	next.Polls++
	next.PolledBy = b.replica
	failures := next.Failures
	next.Failures = 0
	var oe *oauth.Error
	switch {
	case err == nil:
		// The device code is used up: whatever happens to the write, the
		// authorization ends here.
		fence := fencedOps{
			cmps: []clientv3.Cmp{m.IsOwner(), clientv3.Compare(clientv3.ModRevision(key), "=", rev)},
			ops:  []clientv3.Op{clientv3.OpDelete(key)},
		}
		if _, err := b.consented(ctx, p, d.Account, GrantDeviceCode, tok, issued, fence); err != nil {
			b.endDevice(ctx, m, key, rev, d, err, log)
		}
		return true
	case errors.As(err, &oe) && oe.Code == oauth.CodeAuthorizationPending:
	case errors.As(err, &oe) && oe.Code == oauth.CodeSlowDown:
		next.Interval += oauth.SlowDownIncrement
		log.Info("the provider asked to slow down", zap.Duration("interval", next.Interval))
	case errors.As(err, &oe) && !oe.Temporary():
		// access_denied, expired_token, or a refused client or grant.
		b.endDevice(ctx, m, key, rev, d, &ProviderError{Provider: p.Name, Err: err}, log)
		return true
	default:
		// The provider is down or did not answer: try again later, backing
		// off exponentially (RFC 8628 §3.5), no sooner than it asks.
		next.Failures = failures + 1
		wait := next.Interval << min(failures+1, 5)
		if oe != nil {
			wait = max(wait, oe.RetryAfter)
		}
		log.Warn("device access token request failed; polling on", zap.Duration("wait", wait), zap.Error(err))
		next.NextPoll = time.Now().Add(wait).UTC()
		return !b.updateDevice(ctx, m, key, rev, &next, log)
	}
	next.NextPoll = time.Now().Add(next.Interval).UTC()
	return !b.updateDevice(ctx, m, key, rev, &next, log)
}

// updateDevice stores d, fenced by m and the record's revision. It
// reports whether polling goes on; after a failed fence it does, and reads
// the record again: another start may have replaced it.
func (b *Broker) updateDevice(ctx context.Context, m *concurrency.Mutex, key string, rev int64, d *storedDeviceAuthorization, log *zap.Logger) bool {
	val, err := b.signRecord(key, d)
	if err != nil {
		log.Error("encode device authorization", zap.Error(err))
		return false
	}
	sctx, cancel := b.storeCtx(ctx)
	defer cancel()
	if _, err := b.cli.Txn(sctx).If(m.IsOwner(), clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
		Then(clientv3.OpPut(key, string(val), clientv3.WithIgnoreLease())).Commit(); err != nil {
		log.Warn("store device authorization", zap.Error(err))
	}
	return true
}

// endDevice ends the pending authorization d at key without consent: it
// is deleted and its account's last error says why (the account keeps its
// health: pending, or ok with the refresh token it had). Both writes are
// fenced by m and the revisions read.
func (b *Broker) endDevice(ctx context.Context, m *concurrency.Mutex, key string, rev int64, d *storedDeviceAuthorization, cause error, log *zap.Logger) {
	ctx = context.WithoutCancel(ctx)
	log.Warn("device authorization ended without consent", zap.Error(cause))
	gkey := b.grantKey(d.Provider, d.Account)
	for range maxCASAttempts {
		g, err := b.readGrant(ctx, gkey)
		if err != nil && !errors.Is(err, ErrUntrustedRecord) {
			log.Warn("end device authorization", zap.Error(err))
			return
		}
		cmps := []clientv3.Cmp{m.IsOwner(), clientv3.Compare(clientv3.ModRevision(key), "=", rev)}
		ops := []clientv3.Op{clientv3.OpDelete(key)}
		if g != nil && g.Type == GrantDeviceCode {
			next := *g
			next.LastError = "device authorization: " + cause.Error()
			next.UpdateTime = b.now().UTC()
			val, err := b.encodeGrant(gkey, &next)
			if err != nil {
				return
			}
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(gkey), "=", g.Revision))
			ops = append(ops, clientv3.OpPut(gkey, string(val)))
		}
		sctx, cancel := b.storeCtx(ctx)
		resp, err := b.cli.Txn(sctx).If(cmps...).Then(ops...).Commit()
		cancel()
		if err != nil {
			log.Warn("end device authorization", zap.Error(err))
			return
		}
		if resp.Succeeded {
			return
		}
		if _, cur, err := b.readDeviceAuthorization(ctx, key); err != nil || cur != rev {
			return // replaced, or gone
		}
	}
}

// readDeviceAuthorization reads and verifies the pending authorization at
// key; nil when there is none.
func (b *Broker) readDeviceAuthorization(ctx context.Context, key string) (*storedDeviceAuthorization, int64, error) {
	sctx, cancel := b.storeCtx(ctx)
	defer cancel()
	resp, err := b.cli.Get(sctx, key)
	if err != nil {
		return nil, 0, storeError(ctx, "read device authorization", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, nil
	}
	kv := resp.Kvs[0]
	if err := b.verifyRecord(key, kv.Value); err != nil {
		return nil, 0, err
	}
	var d storedDeviceAuthorization
	if err := json.Unmarshal(kv.Value, &d); err != nil {
		return nil, 0, fmt.Errorf("decode device authorization: %w", err)
	}
	return &d, kv.ModRevision, nil
}

// sleepCtx waits d, or until ctx ends; it reports whether ctx is alive.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
