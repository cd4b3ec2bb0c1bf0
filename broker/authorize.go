package broker

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tokenbroker/tokenbroker/broker/event"
	"github.com/tokenbroker/tokenbroker/broker/oauth"
)

// AuthorizationTTL is how long a started authorization waits for the
// person's consent.
const AuthorizationTTL = 10 * time.Minute

// ErrAuthorizationDenied: the person (or the provider) refused consent.
var ErrAuthorizationDenied = errors.New("broker: authorization denied")

// Authorization is a started consent flow: a code grant's authorize URL
// and state, or a device authorization's user code and verification URI.
type Authorization struct {
	// URL is the provider's authorize URL to open in a browser.
	URL string
	// State is single use and bound to the provider and account.
	State     string
	ExpiresAt time.Time
	// UserCode is what the person enters at VerificationURI (device
	// authorization); VerificationURIComplete, when the provider sends
	// one, carries it already.
	UserCode                string
	VerificationURI         string
	VerificationURIComplete string
	// Interval is how often the broker polls the provider at first.
	Interval time.Duration
}

// storedAuthorization is a pending consent, kept under the hash of its
// state with a lease of AuthorizationTTL.
type storedAuthorization struct {
	Provider    string    `json:"provider"`
	Account     string    `json:"account"`
	Scope       string    `json:"scope,omitempty"`
	RedirectURI string    `json:"redirect_uri"`
	Verifier    []byte    `json:"code_verifier_sealed,omitempty"`
	ExpiresAt   time.Time `json:"expires_at"`
}

// StartAuthorization begins the consent flow of an authorization-code
// account, creating the account when it does not exist. It returns the
// provider's authorize URL carrying a fresh state (and an S256 PKCE
// challenge when the provider takes one). Errors wrap ErrInvalidArgument,
// ErrNotFound or ErrStoreUnavailable.
func (b *Broker) StartAuthorization(ctx context.Context, provider, account string, scopes []string) (*Authorization, error) {
	p, scope, err := b.consentTarget(ctx, provider, account, GrantAuthorizationCode, scopes, func(p *Provider) bool {
		return p.Allows(GrantAuthorizationCode) && p.AuthorizeURL != ""
	}, "an authorize_url")
	if err != nil {
		return nil, err
	}
	redirect := cmp(p.RedirectURL, *b.callbackURL.Load())
	if redirect == "" {
		return nil, invalidf("no redirect URI: set the provider's redirect_uri or the broker's public_url")
	}

	state := randomToken()
	key := b.prefix + statesPrefix + stateHash(state)
	stored := storedAuthorization{Provider: provider, Account: account, Scope: scope, RedirectURI: redirect,
		ExpiresAt: b.now().Add(AuthorizationTTL).UTC()}
	q := url.Values{
		"response_type": {"code"},
		"client_id":     {p.ClientID},
		"redirect_uri":  {redirect},
		"state":         {state},
	}
	if scope != "" {
		q.Set("scope", scope)
	}
	if slices.Contains(strings.Fields(scope), "offline_access") {
		// OpenID Connect Core §11: offline_access needs prompt=consent, or
		// a strict provider issues no refresh token.
		q.Set("prompt", "consent")
	}
	if p.PKCE {
		verifier := randomToken()
		sum := sha256.Sum256([]byte(verifier))
		q.Set("code_challenge", base64.RawURLEncoding.EncodeToString(sum[:]))
		q.Set("code_challenge_method", "S256")
		if stored.Verifier, err = b.sealString(key, "code_verifier", verifier); err != nil {
			return nil, err
		}
	}
	val, err := b.signRecord(key, stored)
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithTimeout(ctx, b.storeTimeout)
	defer cancel()
	lease, err := b.cli.Grant(sctx, int64(AuthorizationTTL/time.Second))
	if err != nil {
		return nil, storeError(ctx, "grant authorization lease", err)
	}
	if _, err := b.cli.Put(sctx, key, string(val), clientv3.WithLease(lease.ID)); err != nil {
		return nil, storeError(ctx, "store authorization", err)
	}
	u, err := url.Parse(p.AuthorizeURL)
	if err != nil {
		return nil, invalidf("provider %q has an invalid authorize_url", provider)
	}
	query := u.Query()
	for k, v := range q {
		query[k] = v
	}
	u.RawQuery = query.Encode()
	return &Authorization{URL: u.String(), State: state, ExpiresAt: stored.ExpiresAt}, nil
}

// consentTarget reads provider, and account, the account a consent flow
// of grant type gt is for (created when missing), and returns the scope to
// ask consent for: scopes, else the account's, else the provider's
// defaults. ready says whether the provider has what the flow needs (what
// names). Errors wrap ErrInvalidArgument, ErrNotFound or
// ErrStoreUnavailable.
func (b *Broker) consentTarget(ctx context.Context, provider, account string, gt GrantType, scopes []string, ready func(*Provider) bool, what string) (*Provider, string, error) {
	if account == "" {
		return nil, "", invalidf("account name is empty")
	}
	if err := ValidateAccountName(account); err != nil {
		return nil, "", err
	}
	p, err := b.GetProvider(ctx, provider)
	if err != nil {
		return nil, "", err
	}
	if !ready(p) {
		return nil, "", invalidf("provider %q has no %s grant with %s", provider, gt, what)
	}
	g, err := b.readGrant(ctx, b.grantKey(provider, account))
	if err != nil {
		return nil, "", err
	}
	if g == nil {
		if g, err = b.PutAccount(ctx, Account{Provider: provider, Account: account, Type: gt, Scopes: scopes}); err != nil {
			return nil, "", err
		}
	} else if g.Type != gt {
		return nil, "", invalidf("account %q is a %s account, not a %s one", account, g.Type, gt)
	}
	if len(scopes) == 0 {
		scopes = g.Scopes
	}
	scope, err := normalizeScopes(scopes)
	if err != nil {
		return nil, "", err
	}
	if scope == "" {
		scope = strings.Join(p.DefaultScopes, " ")
	}
	return p, scope, nil
}

// Callback is what the provider's redirect brought back to the broker.
type Callback struct {
	State            string
	Code             string
	Error            string
	ErrorDescription string
}

// CompleteAuthorization finishes a consent flow: it takes the state (once),
// exchanges the code at once (codes live briefly: MediaValet's 60 s) with
// the same redirect_uri and the PKCE verifier, and stores the grant's
// refresh token and first access token. Errors wrap ErrInvalidArgument
// (missing, unknown, used or expired state), ErrAuthorizationDenied (the
// provider's error, e.g. access_denied), a *ProviderError, or
// ErrStoreUnavailable; a failure leaves the stored grant as it was.
func (b *Broker) CompleteAuthorization(ctx context.Context, cb Callback) (*Grant, error) {
	if cb.State == "" {
		return nil, invalidf("the callback has no state")
	}
	key := b.prefix + statesPrefix + stateHash(cb.State)
	sctx, cancel := context.WithTimeout(ctx, b.storeTimeout)
	resp, err := b.cli.Txn(sctx).If(clientv3.Compare(clientv3.CreateRevision(key), ">", 0)).
		Then(clientv3.OpGet(key), clientv3.OpDelete(key)).Commit()
	cancel()
	if err != nil {
		return nil, storeError(ctx, "take authorization state", err)
	}
	if !resp.Succeeded {
		return nil, invalidf("unknown, used or expired state")
	}
	val := resp.Responses[0].GetResponseRange().GetKvs()[0].Value
	if err := b.verifyRecord(key, val); err != nil {
		return nil, err
	}
	var a storedAuthorization
	if err := json.Unmarshal(val, &a); err != nil {
		return nil, fmt.Errorf("decode authorization: %w", err)
	}
	if !b.now().Before(a.ExpiresAt) {
		return nil, invalidf("expired state")
	}
	if cb.Error != "" {
		return nil, fmt.Errorf("%w: provider %s answered %s: %s", ErrAuthorizationDenied, a.Provider,
			printable(cb.Error, 64), printable(cb.ErrorDescription, 256))
	}
	if cb.Code == "" {
		return nil, invalidf("the callback has neither code nor error")
	}
	verifier, err := b.openString(key, "code_verifier", a.Verifier)
	if err != nil {
		return nil, err
	}
	p, err := b.GetProvider(ctx, a.Provider)
	if err != nil {
		return nil, err
	}
	params := url.Values{"grant_type": {string(GrantAuthorizationCode)}, "code": {cb.Code}, "redirect_uri": {a.RedirectURI}}
	if verifier != "" {
		params.Set("code_verifier", verifier)
	}
	for k, v := range p.TokenParams {
		params.Set(k, v)
	}
	issued := b.now()
	req, err := p.tokenRequest(GrantAuthorizationCode, params)
	if err != nil {
		return nil, err
	}
	tok, err := b.oauth.Token(ctx, req)
	if err != nil {
		return nil, &ProviderError{Provider: p.Name, Err: err}
	}
	if tok.State != "" && tok.State != cb.State { // Mediaflow echoes the state
		return nil, &ProviderError{Provider: p.Name, Err: fmt.Errorf("%w: the echoed state differs", oauth.ErrBadResponse)}
	}
	return b.consented(ctx, p, a.Account, GrantAuthorizationCode, tok, issued, fencedOps{})
}

// consented stores what the provider answered a completed consent for
// account of p, whose grant is of type gt: the grant becomes ok with tok's
// refresh token, tok is its first token, and grant.authorized is recorded,
// in one transaction that extra also guards and writes to. Errors wrap
// ErrConflict (the account was removed or changed meanwhile), a
// *ProviderError (tok is not a bearer token), ErrLockLost or
// ErrStoreUnavailable.
func (b *Broker) consented(ctx context.Context, p *Provider, account string, gt GrantType, tok *oauth.Token, issued time.Time, extra fencedOps) (*Grant, error) {
	if tok.TokenType != "" && !isBearer(tok.TokenType) {
		return nil, &ProviderError{Provider: p.Name, Err: fmt.Errorf("%w: token_type %q is not bearer", oauth.ErrBadResponse, tok.TokenType)}
	}
	gid := grantID(p.Name, account)
	tkey, err := NewTokenKey(p.Name, account, nil)
	if err != nil {
		return nil, err
	}
	m, read, unlock, err := b.grantLock(ctx, gid, b.tokenAndGrantReads(tkey.id(), gid)...)
	if err != nil {
		return nil, err
	}
	defer unlock()
	cur, g, err := b.decodeTokenAndGrant(tkey.id(), gid, read)
	if err != nil {
		return nil, err
	}
	if g == nil || g.Type != gt {
		return nil, fmt.Errorf("%w: account %q of provider %q was removed or changed during the consent", ErrConflict, account, p.Name)
	}
	lifetime := tok.ExpiresIn
	if lifetime <= 0 {
		lifetime = p.TokenLifetime()
	}
	rec := &TokenRecord{Key: tkey, AccessToken: tok.AccessToken, IssuedAt: issued, ExpiresAt: issued.Add(lifetime), Generation: 1}
	rec.fill(tok.TokenType, tok.Scope, rareFields{idToken: tok.IDToken})
	if cur != nil {
		rec.Generation = cur.Generation + 1
	}
	b.planHandOver(rec, p, g.Type, tok.RefreshToken)
	next := *g
	next.Health, next.LastError, next.Cooldown = HealthOK, "", nil
	next.RefreshToken, next.RefreshTokenUpdateTime = tok.RefreshToken, issued.UTC()
	next.LastRefresh, next.ExpireTime, next.RefreshedBy = issued.UTC(), rec.ExpiresAt.UTC(), b.replica
	next.Generation++
	next.UpdateTime = issued.UTC()
	if err := b.commitWith(ctx, m, p, g, &next, tkey.id(), rec, extra, b.grantEvent(event.GrantAuthorized, g, g.Health, next.Health, "")); err != nil {
		return nil, err
	}
	b.offer(tkey.id(), rec)
	b.clearCooldown(gid)
	b.log.Info("authorization completed", zap.String("provider", p.Name), zap.String("account", account),
		zap.String("grant_type", string(gt)), zap.Bool("refresh_token", tok.RefreshToken != ""))
	return &next, nil
}

func randomToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b)
}

func stateHash(state string) string { return tokenHash("state\x00" + state) }

// printable keeps at most n bytes of visible ASCII of s, for text that came
// from a browser's query string.
func printable(s string, n int) string {
	out := make([]byte, 0, min(len(s), n))
	for i := 0; i < len(s) && len(out) < n; i++ {
		if c := s[i]; c >= 0x20 && c < 0x7f {
			out = append(out, c)
		}
	}
	return string(out)
}
