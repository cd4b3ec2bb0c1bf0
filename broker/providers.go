package broker

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tokenbroker/tokenbroker/broker/event"
	"github.com/tokenbroker/tokenbroker/broker/oauth"
)

const maxCASAttempts = 5

// FillDefaults fills what a provider may leave unset: no ClientAuth means
// HTTP Basic (RFC 6749 §2.3.1: every server supports it). PutProvider
// applies it; a preset's own style, applied first, wins.
func (p *Provider) FillDefaults() { fillAuth(p, oauth.AuthBasic) }

// PutProvider creates or replaces provider p. An empty secret keeps the
// stored client secret; no ClientAuth means HTTP Basic. The stored client
// keys are kept; a key in p.ClientKeys (an import) becomes the signing key
// unless it is the signing key already, the one it replaces served for
// DefaultClientKeyOverlap; a provider on private_key_jwt without any key
// gets one generated. Changing where or as whom tokens are obtained (token
// URLs, client_id, default scopes or token parameters) drops the provider's
// cached tokens in the same transaction; rotating only the secret keeps
// them. Errors wrap ErrInvalidArgument, ErrStoreUnavailable or ErrConflict.
func (b *Broker) PutProvider(ctx context.Context, p Provider, secret string) (*Provider, error) {
	p.ClientSecret = secret
	p.FillDefaults()
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if b.requireHTTPS {
		for _, u := range append([]string{p.TokenURL, p.AuthorizeURL, p.IntrospectionURL, p.RevocationURL, p.DeviceAuthorizationURL}, slices.Collect(maps.Values(p.GrantTokenURLs))...) {
			if strings.HasPrefix(u, "http:") {
				return nil, invalidf("provider %q: %s: plain http is refused (serve --insecure-http-loopback allows it to loopback addresses)", p.Name, quote(u))
			}
		}
	}
	imported := p.ClientKeys
	var generated *ClientKey
	key := b.prefix + providersPrefix + p.Name
	for range maxCASAttempts {
		sctx, cancel := context.WithTimeout(ctx, b.storeTimeout)
		resp, err := b.cli.Get(sctx, key)
		cancel()
		if err != nil {
			return nil, storeError(ctx, "read provider", err)
		}
		next := p
		now := b.now().UTC()
		next.CreateTime, next.UpdateTime = now, now
		next.ClientKeys = nil
		if p.ClientCertificate != "" || p.ClientCertificateKey != "" {
			next.CertificateUpdateTime = now
		}
		cond := clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
		ops := []clientv3.Op(nil)
		change := "created"
		if secret != "" {
			next.SecretUpdateTime = now
		}
		if len(resp.Kvs) > 0 {
			old, err := b.decodeProvider(key, resp.Kvs[0].Value, resp.Kvs[0].ModRevision)
			if errors.Is(err, ErrUntrustedRecord) {
				// Nothing of a forged record is kept: the put replaces it
				// whole, and the tokens cached under it go.
				b.log.Error("put provider: replacing a record that failed authentication", zap.Error(err))
				old = &Provider{}
			} else if err != nil {
				return nil, err
			}
			next.CreateTime = old.CreateTime
			if next.ConfigSecretDigest == "" {
				next.ConfigSecretDigest = old.ConfigSecretDigest
			}
			next.PreviousSecret, next.PreviousSecretUntil = old.PreviousSecret, old.PreviousSecretUntil
			next.ClientKeys = old.ClientKeys
			if next.ClientCertificate == "" && next.ClientCertificateKey == "" {
				next.ClientCertificate, next.ClientCertificateKey = old.ClientCertificate, old.ClientCertificateKey
			} else if next.ClientCertificateKey == "" {
				next.ClientCertificateKey = old.ClientCertificateKey // a renewed certificate of the same key
			}
			if next.ClientCertificate == old.ClientCertificate && next.ClientCertificateKey == old.ClientCertificateKey {
				next.CertificateUpdateTime = old.CertificateUpdateTime
			}
			if secret == "" || secret == old.ClientSecret {
				next.ClientSecret, next.SecretUpdateTime = old.ClientSecret, old.SecretUpdateTime
			}
			cond = clientv3.Compare(clientv3.ModRevision(key), "=", resp.Kvs[0].ModRevision)
			change = ""
			if !sameIdentity(old, &next) {
				// Another endpoint or client may revoke on refresh or not:
				// what was learned of the old one is forgotten too.
				ops = append(ops, clientv3.OpDelete(b.prefix+tokensPrefix+p.Name+"/", clientv3.WithPrefix()),
					clientv3.OpDelete(b.learnedKey(p.Name)))
				change = "where or as whom tokens are obtained changed"
			}
		}
		if next.SecretUpdateTime.Equal(now) && change == "" {
			change = "client secret set"
		}
		if err := b.checkClientCertificate(&next, now); err != nil {
			return nil, err
		}
		if next.CertificateUpdateTime.Equal(now) && change == "" {
			change = "client certificate set"
		}
		signing, _ := next.SigningKey()
		if len(imported) > 0 {
			k := imported[0]
			k.CreateTime, k.RetireTime = now, time.Time{}
			next.ClientKeys = withKey(next.ClientKeys, k, now, DefaultClientKeyOverlap)
		}
		if _, ok := next.SigningKey(); !ok && next.usesPrivateKeyJWT() {
			if generated == nil {
				k, err := GenerateClientKey(next.ClientKeyAlgorithm)
				if err != nil {
					return nil, err
				}
				generated = &k
			}
			generated.CreateTime = now
			next.ClientKeys = withKey(next.ClientKeys, *generated, now, 0)
		}
		if k, _ := next.SigningKey(); k.KeyID != signing.KeyID && change == "" {
			change = "client key set"
		}
		val, err := b.encodeProvider(key, &next)
		if err != nil {
			return nil, err
		}
		sctx, cancel = context.WithTimeout(ctx, b.storeTimeout)
		if change != "" { // a put that changes nothing that matters (a reload) is no event
			ev := event.New(event.ProviderChanged, time.Now())
			ev.Provider, ev.Detail = p.Name, change
			ops = b.withEvent(ops, ev)
		}
		txn, err := b.cli.Txn(sctx).If(cond).Then(append(ops, clientv3.OpPut(key, string(val)))...).Commit()
		cancel()
		if err != nil {
			return nil, storeError(ctx, "write provider", err)
		}
		if txn.Succeeded {
			next.Revision = txn.Header.Revision
			b.awaitProviders(ctx, next.Revision)
			return &next, nil
		}
	}
	return nil, fmt.Errorf("%w: provider %q changed %d times during the update", ErrConflict, p.Name, maxCASAttempts)
}

// sameIdentity reports whether tokens obtained under a stay valid under b.
func sameIdentity(a, b *Provider) bool {
	return a.TokenURL == b.TokenURL && a.ClientID == b.ClientID && a.PKCE == b.PKCE && a.IntrospectionAuth == b.IntrospectionAuth && a.RedirectURL == b.RedirectURL &&
		maps.Equal(a.GrantTokenURLs, b.GrantTokenURLs) && maps.Equal(a.TokenParams, b.TokenParams) &&
		slices.Equal(a.DefaultScopes, b.DefaultScopes) && a.TokenExchange.equal(b.TokenExchange)
}

// GetProvider reads provider name from etcd, with what the broker learned
// of it. The result includes the client secret: callers that answer admins
// must not pass it on. Errors wrap ErrInvalidArgument, ErrNotFound or
// ErrStoreUnavailable.
func (b *Broker) GetProvider(ctx context.Context, name string) (*Provider, error) {
	if err := ValidateProviderName(name); err != nil {
		return nil, err
	}
	sctx, cancel := context.WithTimeout(ctx, b.storeTimeout)
	defer cancel()
	resp, err := b.cli.Txn(sctx).Then(clientv3.OpGet(b.prefix+providersPrefix+name), clientv3.OpGet(b.learnedKey(name))).Commit()
	if err != nil {
		return nil, storeError(ctx, "read provider", err)
	}
	kvs := resp.Responses[0].GetResponseRange().GetKvs()
	if len(kvs) == 0 {
		return nil, fmt.Errorf("%w: provider %q", ErrNotFound, name)
	}
	p, err := b.decodeProvider(string(kvs[0].Key), kvs[0].Value, kvs[0].ModRevision)
	if err != nil {
		return nil, err
	}
	if learned := resp.Responses[1].GetResponseRange().GetKvs(); len(learned) > 0 {
		p.LearnedRefreshRevokesAccessToken = b.decodeLearned(string(learned[0].Key), learned[0].Value)
	}
	return p, nil
}

// ListProviders reads every provider from etcd, sorted by name. Errors wrap
// ErrStoreUnavailable.
func (b *Broker) ListProviders(ctx context.Context) ([]*Provider, error) {
	sctx, cancel := context.WithTimeout(ctx, b.storeTimeout)
	defer cancel()
	resp, err := b.cli.Get(sctx, b.prefix+providersPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, storeError(ctx, "list providers", err)
	}
	out := make([]*Provider, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		p, err := b.decodeProvider(string(kv.Key), kv.Value, kv.ModRevision)
		if errors.Is(err, ErrUntrustedRecord) {
			b.log.Error("list providers: skip a record that failed authentication", zap.Error(err))
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// DeleteProvider removes provider name, its accounts and every token cached
// for it.
// Errors wrap ErrInvalidArgument, ErrNotFound or ErrStoreUnavailable.
func (b *Broker) DeleteProvider(ctx context.Context, name string) error {
	if err := ValidateProviderName(name); err != nil {
		return err
	}
	key := b.prefix + providersPrefix + name
	sctx, cancel := context.WithTimeout(ctx, b.storeTimeout)
	defer cancel()
	resp, err := b.cli.Txn(sctx).If(clientv3.Compare(clientv3.CreateRevision(key), ">", 0)).Then(
		clientv3.OpDelete(key),
		clientv3.OpDelete(b.prefix+tokensPrefix+name+"/", clientv3.WithPrefix()),
		clientv3.OpDelete(b.prefix+grantsPrefix+name+"/", clientv3.WithPrefix()),
		clientv3.OpDelete(b.learnedKey(name)),
	).Commit()
	if err != nil {
		return storeError(ctx, "delete provider", err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("%w: provider %q", ErrNotFound, name)
	}
	b.awaitProviders(ctx, resp.Header.Revision)
	return nil
}

// awaitProviders waits, up to StoreTimeout, until this replica's memory
// holds every provider change up to rev, one of its own writes: once the
// call that changed a provider returns, what reads memory only sees the
// change on this replica (its JWKS serves a rotated key before the key
// signs an assertion here, the refresher uses new tuning). A watch that
// starts behind etcd's head catches up only in etcd's next sync, up to
// 100 ms later. The change is committed either way: a wait that runs out
// is logged, not returned.
func (b *Broker) awaitProviders(ctx context.Context, rev int64) {
	ctx, cancel := context.WithTimeout(ctx, b.storeTimeout)
	defer cancel()
	for {
		v, changed := b.providersRev.at()
		if v >= rev {
			return
		}
		select {
		case <-changed:
		case <-ctx.Done():
			b.log.Warn("a provider change is not in this replica's memory yet", zap.Int64("revision", rev), zap.Int64("applied", v))
			return
		}
	}
}

// provider returns provider name from memory, or from etcd when the watch
// has not brought it yet.
func (b *Broker) provider(ctx context.Context, name string) (*Provider, error) {
	if v, ok := b.providers.Load(name); ok {
		return v.(*Provider), nil
	}
	return b.GetProvider(ctx, name)
}

// RotateClientSecret replaces provider name's client secret. With validate,
// the new secret is first proven by a client_credentials token request
// (providers without that grant cannot be checked this way and are refused
// with ErrInvalidArgument: pass validate=false); a failed proof leaves the
// old secret in place and returns the *ProviderError, wrapped in
// ErrSecretRefused when the provider refused the secret. With overlap > 0
// the old secret is kept and tried, until overlap has passed, whenever the
// new one is refused with invalid_client. Cached tokens are kept. Errors wrap
// ErrInvalidArgument, ErrNotFound, ErrStoreUnavailable or ErrConflict.
func (b *Broker) RotateClientSecret(ctx context.Context, name, secret string, validate bool, overlap time.Duration) (*Provider, error) {
	switch {
	case secret == "":
		return nil, invalidf("the new client secret is empty")
	case len(secret) > MaxClientSecretLen:
		return nil, invalidf("the new client secret is %d bytes, longer than %d", len(secret), MaxClientSecretLen)
	}
	if overlap < 0 || overlap > 7*24*time.Hour {
		return nil, invalidf("overlap must be between 0 and 7 days")
	}
	p, err := b.GetProvider(ctx, name)
	if err != nil {
		return nil, err
	}
	if validate {
		if !p.Allows(GrantClientCredentials) {
			return nil, invalidf("provider %q has no client_credentials grant to prove the secret with; rotate with skip_validation", name)
		}
		params := url.Values{"grant_type": {string(GrantClientCredentials)}}
		for k, v := range p.TokenParams {
			params.Set(k, v)
		}
		if len(p.DefaultScopes) > 0 {
			params.Set("scope", strings.Join(p.DefaultScopes, " "))
		}
		if !p.ClientAuth.UsesSecret() {
			return nil, invalidf("provider %q authenticates with %v, not its secret: rotate with skip_validation", name, p.ClientAuth)
		}
		auth, err := p.clientAuth(p.ClientAuth, secret)
		if err != nil {
			return nil, err
		}
		if _, err := b.oauth.Token(ctx, oauth.Request{TokenURL: p.TokenURLFor(GrantClientCredentials), Auth: auth, Params: params}); err != nil {
			if oe := (*oauth.Error)(nil); errors.As(err, &oe) && !oe.Temporary() {
				return nil, fmt.Errorf("%w: %w", ErrSecretRefused, &ProviderError{Provider: name, Err: err})
			}
			return nil, &ProviderError{Provider: name, Err: err}
		}
	}
	key := b.prefix + providersPrefix + name
	for range maxCASAttempts {
		cur, err := b.GetProvider(ctx, name)
		if err != nil {
			return nil, err
		}
		now := b.now().UTC()
		next := *cur
		next.ClientSecret, next.SecretUpdateTime, next.UpdateTime = secret, now, now
		switch {
		case cur.ClientSecret == secret:
			// A repeated rotation keeps the overlap of the first one.
			next.SecretUpdateTime = cur.SecretUpdateTime
		case overlap > 0 && cur.ClientSecret != "":
			next.PreviousSecret, next.PreviousSecretUntil = cur.ClientSecret, time.Now().Add(overlap).UTC()
		default:
			next.PreviousSecret, next.PreviousSecretUntil = "", time.Time{}
		}
		val, err := b.encodeProvider(key, &next)
		if err != nil {
			return nil, err
		}
		ev := event.New(event.ProviderSecretRotated, time.Now())
		ev.Provider = name
		ok, rev, err := b.casPut(ctx, key, cur.Revision, b.withEvent([]clientv3.Op{clientv3.OpPut(key, string(val))}, ev)...)
		if err != nil {
			return nil, err
		}
		if ok {
			next.Revision = rev
			b.awaitProviders(ctx, rev)
			return &next, nil
		}
	}
	return nil, fmt.Errorf("%w: provider %q changed %d times during the rotation", ErrConflict, name, maxCASAttempts)
}

// usesPrivateKeyJWT reports whether p signs client assertions for any of
// its endpoints, or the assertions of its JWT-bearer grant.
func (p *Provider) usesPrivateKeyJWT() bool {
	return p.ClientAuth == oauth.AuthPrivateKeyJWT || p.IntrospectionAuth == oauth.AuthPrivateKeyJWT || p.Allows(GrantJWTBearer)
}

// RotateClientKey makes k provider name's signing key; a zero k (no
// Private) is generated with algorithm alg (the provider's
// ClientKeyAlgorithm when empty). The key that signed before stays in the
// JWKS until overlap has passed (dropped at once when overlap is zero), so
// that a provider caching the JWKS keeps verifying while it refetches.
// Cached tokens are kept. Errors wrap ErrInvalidArgument, ErrNotFound,
// ErrStoreUnavailable or ErrConflict.
func (b *Broker) RotateClientKey(ctx context.Context, name string, k ClientKey, alg string, overlap time.Duration) (*Provider, error) {
	if overlap < 0 || overlap > maxClientKeyOverlap {
		return nil, invalidf("overlap must be between 0 and 30 days")
	}
	if k.Private != nil && alg != "" && alg != k.Algorithm {
		return nil, invalidf("the imported key is %s, not %s", k.Algorithm, alg)
	}
	key := b.prefix + providersPrefix + name
	for range maxCASAttempts {
		cur, err := b.GetProvider(ctx, name)
		if err != nil {
			return nil, err
		}
		if k.Private == nil {
			if k, err = GenerateClientKey(orString(alg, cur.ClientKeyAlgorithm)); err != nil {
				return nil, err
			}
		}
		now := b.now().UTC()
		next := *cur
		k.CreateTime, k.RetireTime = now, time.Time{}
		next.ClientKeys, next.UpdateTime = withKey(cur.ClientKeys, k, now, overlap), now
		val, err := b.encodeProvider(key, &next)
		if err != nil {
			return nil, err
		}
		ev := event.New(event.ProviderClientKeyRotated, time.Now())
		ev.Provider, ev.Detail = name, "kid "+k.KeyID
		ok, rev, err := b.casPut(ctx, key, cur.Revision, b.withEvent([]clientv3.Op{clientv3.OpPut(key, string(val))}, ev)...)
		if err != nil {
			return nil, err
		}
		if ok {
			next.Revision = rev
			b.awaitProviders(ctx, rev)
			return &next, nil
		}
	}
	return nil, fmt.Errorf("%w: provider %q changed %d times during the key rotation", ErrConflict, name, maxCASAttempts)
}

// JWKS returns the public keys provider name signs client assertions with:
// the signing key and the replaced ones still in their overlap. Errors wrap
// ErrInvalidArgument, ErrNotFound or ErrStoreUnavailable.
func (b *Broker) JWKS(ctx context.Context, name string) (*jose.JSONWebKeySet, error) {
	if err := ValidateProviderName(name); err != nil {
		return nil, err
	}
	p, err := b.provider(ctx, name)
	if err != nil {
		return nil, err
	}
	return &jose.JSONWebKeySet{Keys: orEmpty(p.PublicKeys(b.now()))}, nil
}

// AllJWKS returns the public keys of every provider the broker knows, as
// JWKS does for one. It reads memory only.
func (b *Broker) AllJWKS() *jose.JSONWebKeySet {
	var keys []jose.JSONWebKey
	now := b.now()
	b.providers.Range(func(_, v any) bool {
		keys = append(keys, v.(*Provider).PublicKeys(now)...)
		return true
	})
	slices.SortFunc(keys, func(a, b jose.JSONWebKey) int { return strings.Compare(a.KeyID, b.KeyID) })
	return &jose.JSONWebKeySet{Keys: orEmpty(keys)}
}

func orEmpty(keys []jose.JSONWebKey) []jose.JSONWebKey {
	if keys == nil {
		return []jose.JSONWebKey{}
	}
	return keys
}

// ApplyConfigProvider puts p as the config file declares it. A secret the
// file set before (same digest) is not applied again, so that a secret
// rotated through the API since is kept; a secret the file changed is
// applied. Errors as for PutProvider.
func (b *Broker) ApplyConfigProvider(ctx context.Context, p Provider, secret string) (*Provider, error) {
	if secret != "" {
		sum := sha256.Sum256([]byte(secret))
		digest := hex.EncodeToString(sum[:])
		if old, err := b.GetProvider(ctx, p.Name); err == nil && subtle.ConstantTimeCompare([]byte(old.ConfigSecretDigest), []byte(digest)) == 1 {
			secret = "" // unchanged in the file: keep what is stored
		}
		p.ConfigSecretDigest = digest
	}
	return b.PutProvider(ctx, p, secret)
}
