package broker

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/event"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// GrantHealth is the state of a grant as admins see it.
type GrantHealth string

// The states of a grant.
const (
	HealthOK         GrantHealth = "ok"
	HealthRefreshing GrantHealth = "refreshing"
	// HealthReauthorizationRequired: the provider rejected the grant (a
	// revoked or rotated-away refresh token, a changed password). Nothing
	// is retried until an admin updates or re-authorizes it.
	HealthReauthorizationRequired GrantHealth = "reauthorization_required"
	// HealthFailing: the last attempt failed for a reason that may pass.
	HealthFailing GrantHealth = "failing"
	// HealthPending: an authorization-code grant awaiting consent.
	HealthPending GrantHealth = "pending"
)

// ErrReauthorizationRequired: the grant needs an admin to re-authorize or
// update it; the provider is not called again until then.
var ErrReauthorizationRequired = errors.New("broker: reauthorization required")

// Grant is an account under a provider: one lineage of tokens. The account
// "" is the provider's own client identity (client_credentials); its grant
// record is made on the first token.
type Grant struct {
	Provider string
	Account  string
	Type     GrantType
	Username string
	// Password and RefreshToken are write-only secrets.
	Password     string
	RefreshToken string
	// Scopes requested for the account's tokens when a caller names none.
	Scopes      []string
	Health      GrantHealth
	LastError   string
	LastRefresh time.Time
	ExpireTime  time.Time
	RefreshedBy string
	// Generation counts the provider answers that updated the grant.
	Generation             int64
	PasswordUpdateTime     time.Time
	RefreshTokenUpdateTime time.Time
	CreateTime             time.Time
	UpdateTime             time.Time
	// Cooldown, when set, is the grant's pause after failed token
	// requests: stored with the grant, so that every replica honours it.
	Cooldown *Cooldown
	// Revision is the etcd revision the grant was read at (0: not stored).
	Revision int64
}

func grantID(provider, account string) string {
	return provider + "/" + url.PathEscape(account)
}

func (b *Broker) grantKey(provider, account string) string {
	return b.prefix + grantsPrefix + grantID(provider, account)
}

// Account describes an account an admin puts.
type Account struct {
	Provider string
	Account  string
	Type     GrantType // GrantPassword, GrantAuthorizationCode, GrantDeviceCode or GrantJWTBearer (Username is the subject)
	Username string
	// Password; empty keeps the stored one.
	Password string
	Scopes   []string
}

// PutAccount creates or replaces an account. Changing the password, the
// username or the grant type clears a reauthorization_required state and
// drops the account's cached tokens. Errors wrap ErrInvalidArgument,
// ErrNotFound (unknown provider), ErrStoreUnavailable or ErrConflict.
func (b *Broker) PutAccount(ctx context.Context, a Account) (*Grant, error) {
	if err := ValidateProviderName(a.Provider); err != nil {
		return nil, err
	}
	if a.Account == "" {
		return nil, invalidf("account name is empty")
	}
	if err := ValidateAccountName(a.Account); err != nil {
		return nil, err
	}
	if _, err := normalizeScopes(a.Scopes); err != nil {
		return nil, err
	}
	p, err := b.GetProvider(ctx, a.Provider)
	if err != nil {
		return nil, err
	}
	switch {
	case len(a.Username) > MaxUsernameLen:
		return nil, invalidf("username is %d bytes, longer than %d", len(a.Username), MaxUsernameLen)
	case len(a.Password) > MaxPasswordLen:
		return nil, invalidf("password is %d bytes, longer than %d", len(a.Password), MaxPasswordLen)
	}
	switch a.Type {
	case GrantPassword:
		if a.Username == "" {
			return nil, invalidf("a password account needs a username")
		}
	case GrantAuthorizationCode, GrantDeviceCode:
		if a.Username != "" || a.Password != "" {
			return nil, invalidf("an %s account has no username or password", a.Type)
		}
	case GrantJWTBearer:
		if a.Username == "" || a.Password != "" {
			return nil, invalidf("a jwt-bearer account has a username (the assertion's subject) and no password")
		}
	default:
		return nil, invalidf("an account's grant type is password, authorization_code, jwt-bearer or %s, not %s", GrantDeviceCode, quote(string(a.Type)))
	}
	if !p.Allows(a.Type) {
		return nil, invalidf("provider %q does not allow the %s grant", p.Name, a.Type)
	}
	key := b.grantKey(a.Provider, a.Account)
	for range maxCASAttempts {
		old, err := b.readGrant(ctx, key)
		if err != nil {
			return nil, err
		}
		now := b.now().UTC()
		g := &Grant{Provider: a.Provider, Account: a.Account, Type: a.Type, Username: a.Username,
			Password: a.Password, Scopes: a.Scopes, Health: HealthOK, CreateTime: now, UpdateTime: now}
		if a.Password != "" {
			g.PasswordUpdateTime = now
		}
		if a.Type == GrantAuthorizationCode || a.Type == GrantDeviceCode {
			g.Health = HealthPending
		}
		reset := true
		if old != nil {
			g.CreateTime = old.CreateTime
			if a.Password == "" || a.Password == old.Password {
				g.Password, g.PasswordUpdateTime = old.Password, old.PasswordUpdateTime
			}
			same := old.Type == g.Type && old.Username == g.Username && old.Password == g.Password
			if same {
				reset = false
				g.RefreshToken, g.RefreshTokenUpdateTime = old.RefreshToken, old.RefreshTokenUpdateTime
				g.Health, g.LastError, g.LastRefresh, g.ExpireTime = old.Health, old.LastError, old.LastRefresh, old.ExpireTime
				g.RefreshedBy, g.Generation = old.RefreshedBy, old.Generation
			}
		}
		if g.Type == GrantPassword && g.Password == "" {
			return nil, invalidf("a password account needs a password")
		}
		val, err := b.encodeGrant(key, g)
		if err != nil {
			return nil, err
		}
		ops := []clientv3.Op{clientv3.OpPut(key, string(val))}
		if reset {
			ops = append(ops, clientv3.OpDelete(b.prefix+tokensPrefix+grantID(a.Provider, a.Account)+"/", clientv3.WithPrefix()))
		}
		rev := int64(0)
		if old != nil {
			rev = old.Revision
		}
		ok, newRev, err := b.casPut(ctx, key, rev, ops...)
		if err != nil {
			return nil, err
		}
		if ok {
			g.Revision = newRev
			return g, nil
		}
	}
	return nil, fmt.Errorf("%w: account %q changed %d times during the update", ErrConflict, a.Account, maxCASAttempts)
}

// casPut runs ops when key's mod revision is still rev (0: key absent).
func (b *Broker) casPut(ctx context.Context, key string, rev int64, ops ...clientv3.Op) (bool, int64, error) {
	cond := clientv3.Compare(clientv3.ModRevision(key), "=", rev)
	if rev == 0 {
		cond = clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
	}
	sctx, cancel := context.WithTimeout(ctx, b.storeTimeout)
	defer cancel()
	resp, err := b.cli.Txn(sctx).If(cond).Then(ops...).Commit()
	if err != nil {
		return false, 0, storeError(ctx, "write "+key, err)
	}
	return resp.Succeeded, resp.Header.Revision, nil
}

func (b *Broker) readGrant(ctx context.Context, key string) (*Grant, error) {
	sctx, cancel := context.WithTimeout(ctx, b.storeTimeout)
	defer cancel()
	resp, err := b.cli.Get(sctx, key)
	if err != nil {
		return nil, storeError(ctx, "read grant", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	return b.decodeGrant(key, resp.Kvs[0].Value, resp.Kvs[0].ModRevision)
}

// ListGrants reads the grants of provider (every provider when empty),
// sorted by provider and account. Errors wrap ErrInvalidArgument or
// ErrStoreUnavailable.
func (b *Broker) ListGrants(ctx context.Context, provider string) ([]*Grant, error) {
	prefix := b.prefix + grantsPrefix
	if provider != "" {
		if err := ValidateProviderName(provider); err != nil {
			return nil, err
		}
		prefix += provider + "/"
	}
	sctx, cancel := context.WithTimeout(ctx, b.storeTimeout)
	defer cancel()
	resp, err := b.cli.Get(sctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, storeError(ctx, "list grants", err)
	}
	out := make([]*Grant, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		g, err := b.decodeGrant(string(kv.Key), kv.Value, kv.ModRevision)
		if errors.Is(err, ErrUntrustedRecord) {
			b.log.Error("list grants: skip a record that failed authentication", zap.Error(err))
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, g)
	}
	return out, nil
}

// RevokeGrant deletes an account's grant and tokens from etcd (and so from
// every replica's memory) and, when the provider has a revocation endpoint,
// revokes its refresh token there (RFC 7009). A failed revocation at the
// provider is reported after the local deletion. Errors wrap
// ErrInvalidArgument, ErrNotFound or ErrStoreUnavailable.
func (b *Broker) RevokeGrant(ctx context.Context, provider, account string) error {
	if err := ValidateProviderName(provider); err != nil {
		return err
	}
	if err := ValidateAccountName(account); err != nil {
		return err
	}
	key := b.grantKey(provider, account)
	g, err := b.readGrant(ctx, key)
	if err != nil {
		return err
	}
	tokens := b.prefix + tokensPrefix + grantID(provider, account) + "/"
	sctx, cancel := context.WithTimeout(ctx, b.storeTimeout)
	defer cancel()
	ops := []clientv3.Op{
		clientv3.OpDelete(key),
		clientv3.OpDelete(tokens, clientv3.WithPrefix(), clientv3.WithPrevKV()),
		clientv3.OpDelete(b.prefix + refreshingPrefix + grantID(provider, account)),
		clientv3.OpDelete(b.deviceKey(provider, account)),
	}
	if g != nil {
		ops = b.withEvent(ops, b.grantEvent(event.GrantRevoked, g, g.Health, "", ""))
	}
	resp, err := b.cli.Txn(sctx).Then(ops...).Commit()
	if err != nil {
		return storeError(ctx, "revoke grant", err)
	}
	deleted := resp.Responses[1].GetResponseDeleteRange()
	if g == nil && deleted.GetDeleted() == 0 {
		return fmt.Errorf("%w: account %q of provider %q", ErrNotFound, account, provider)
	}
	var accessTokens []string
	b.forgetNow(b.grantTokens(grantID(provider, account), ""), resp.Header.Revision)
	for _, kv := range deleted.GetPrevKvs() {
		rec, err := b.decodeToken(string(kv.Key), kv.Value, kv.ModRevision)
		if err != nil {
			continue
		}
		accessTokens = append(accessTokens, rec.AccessToken)
	}
	p, err := b.provider(ctx, provider)
	if err != nil || p.RevocationURL == "" {
		return nil
	}
	var errs []error
	if g != nil && g.RefreshToken != "" {
		errs = append(errs, b.revokeAtProvider(ctx, p, g.RefreshToken, "refresh_token"))
	}
	for _, t := range accessTokens {
		errs = append(errs, b.revokeAtProvider(ctx, p, t, "access_token"))
	}
	return errors.Join(errs...)
}

// revokeAtProvider asks the provider to revoke a token (RFC 7009).
func (b *Broker) revokeAtProvider(ctx context.Context, p *Provider, token, hint string) error {
	req, err := p.endpointRequest(p.RevocationURL, url.Values{"token_type_hint": {hint}}, false)
	if err != nil {
		return err
	}
	if err := b.oauth.Revoke(ctx, req, token); err != nil {
		return &ProviderError{Provider: p.Name, Err: err}
	}
	return nil
}

// grantScope is the scope requested for key: the caller's, else the
// account's, else the provider's default scopes.
func grantScope(p *Provider, g *Grant, key TokenKey) string {
	if key.Scope != "" {
		return key.Scope
	}
	if g != nil && len(g.Scopes) > 0 {
		s, _ := normalizeScopes(g.Scopes)
		return s
	}
	return strings.Join(p.DefaultScopes, " ")
}
