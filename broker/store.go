package broker

import (
	"encoding/json"
	"fmt"
	"time"
	"unsafe"

	"github.com/tokenbroker/tokenbroker/broker/oauth"
)

// Key prefixes below the broker's etcd prefix.
const (
	providersPrefix = "providers/"
	grantsPrefix    = "grants/"
	tokensPrefix    = "tokens/"
	locksPrefix     = "locks/"
	statesPrefix    = "authorizations/"
	electionPrefix  = "election/"
	hotPrefix       = "hot/"
	// refreshingPrefix marks a grant whose refresh token was presented
	// and whose answer is not stored yet (see markRefreshing).
	refreshingPrefix = "refreshing/"
	// learnedPrefix holds what the broker learned of a provider (see
	// learnRevocation).
	learnedPrefix = "learned/"
	// devicePrefix holds pending device authorizations, one per account,
	// and devicePollersPrefix the lock of the one replica that polls for
	// each (see device.go).
	devicePrefix        = "device_authorizations/"
	devicePollersPrefix = "device_pollers/"
)

// DefaultPrefix is the etcd prefix of every key the broker writes.
const DefaultPrefix = "/tokenbroker/"

// Every secret and token is sealed (AES-256-GCM, see package seal) before
// it reaches etcd. The additional data is the record's etcd key and the
// field's name, so that a value moved to another record or another field
// does not open.

func (b *Broker) sealString(etcdKey, field, v string) ([]byte, error) {
	if v == "" {
		return nil, nil
	}
	out, err := b.keys.Seal(etcdKey+"#"+field, []byte(v))
	if err != nil {
		return nil, fmt.Errorf("seal %s: %w", field, err)
	}
	return out, nil
}

// Records whose forgery would grant access or change where tokens go —
// providers, grants and pending authorizations (API keys too, in package
// apikey) — carry a tag made with the master key (seal.SignRecord). A
// record without a valid tag is never trusted: reading it is an error
// wrapping ErrUntrustedRecord, and the watch leaves memory as it was.

// signRecord encodes v, a stored record, and tags it for etcdKey.
func (b *Broker) signRecord(etcdKey string, v any) ([]byte, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return b.keys.SignRecord(etcdKey, data)
}

// verifyRecord returns an error wrapping ErrUntrustedRecord when data is
// not a record signed for etcdKey with the master key, and counts it.
func (b *Broker) verifyRecord(etcdKey string, data []byte) error {
	if err := b.keys.VerifyRecord(etcdKey, data); err != nil {
		untrustedRecords.Add(1)
		return fmt.Errorf("%w: %s: %w", ErrUntrustedRecord, etcdKey, err)
	}
	return nil
}

func (b *Broker) openString(etcdKey, field string, sealed []byte) (string, error) {
	if len(sealed) == 0 {
		return "", nil
	}
	v, err := b.keys.Open(etcdKey+"#"+field, sealed)
	if err != nil {
		return "", fmt.Errorf("open %s of %s: %w", field, etcdKey, err)
	}
	if len(v) == 0 {
		return "", nil
	}
	// Open returns a buffer of its own that nothing else refers to: the
	// string is that buffer, not a copy of it (a cache full of tokens
	// would otherwise make one more allocation per token it decodes).
	return unsafe.String(unsafe.SliceData(v), len(v)), nil
}

// storedProvider is the etcd encoding of a Provider.
type storedProvider struct {
	Name                 string            `json:"name"`
	TokenURL             string            `json:"token_url"`
	AuthorizeURL         string            `json:"authorize_url,omitempty"`
	IntrospectionURL     string            `json:"introspection_url,omitempty"`
	RevocationURL        string            `json:"revocation_url,omitempty"`
	DeviceAuthURL        string            `json:"device_authorization_url,omitempty"`
	GrantTokenURLs       map[string]string `json:"grant_token_urls,omitempty"`
	ClientID             string            `json:"client_id"`
	ClientSecret         []byte            `json:"client_secret_sealed,omitempty"`
	ClientAuth           string            `json:"client_auth"`
	IntrospectionAuth    string            `json:"introspection_auth,omitempty"`
	DefaultScopes        []string          `json:"default_scopes,omitempty"`
	TokenParams          map[string]string `json:"token_params,omitempty"`
	GrantTypes           []string          `json:"grant_types,omitempty"`
	DefaultTokenLifetime time.Duration     `json:"default_token_lifetime,omitempty"`
	PKCE                 bool              `json:"pkce,omitempty"`
	RefreshLeadFraction  float64           `json:"refresh_lead_fraction,omitempty"`
	RefreshMinLead       time.Duration     `json:"refresh_min_lead,omitempty"`
	RefreshIdleAfter     time.Duration     `json:"refresh_idle_after,omitempty"`
	KeepAlive            time.Duration     `json:"keep_alive,omitempty"`
	RedirectURL          string            `json:"redirect_url,omitempty"`
	RevokesOnRefresh     *bool             `json:"refresh_revokes_access_token,omitempty"`
	SecretUpdateTime     time.Time         `json:"secret_update_time"`
	PreviousSecret       []byte            `json:"previous_client_secret_sealed,omitempty"`
	ConfigSecretDigest   []byte            `json:"config_secret_digest_sealed,omitempty"`
	PreviousSecretUntil  time.Time         `json:"previous_client_secret_until,omitzero"`
	ClientKeys           []storedClientKey `json:"client_keys,omitempty"`
	ClientKeyAlgorithm   string            `json:"client_key_algorithm,omitempty"`
	AssertionAudience    string            `json:"client_assertion_audience,omitempty"`
	JWTBearer            *storedJWTBearer  `json:"jwt_bearer,omitempty"`
	ClientCertificate    string            `json:"client_certificate,omitempty"`
	ClientCertKey        []byte            `json:"client_certificate_key_sealed,omitempty"`
	CertificateTime      time.Time         `json:"client_certificate_update_time,omitzero"`
	TokenExchange        *storedExchange   `json:"token_exchange,omitempty"`
	CreateTime           time.Time         `json:"create_time"`
	UpdateTime           time.Time         `json:"update_time"`
}

func (b *Broker) encodeProvider(key string, p *Provider) ([]byte, error) {
	secret, err := b.sealString(key, "client_secret", p.ClientSecret)
	if err != nil {
		return nil, err
	}
	previous, err := b.sealString(key, "previous_client_secret", p.PreviousSecret)
	if err != nil {
		return nil, err
	}
	configDigest, err := b.sealString(key, "config_secret_digest", p.ConfigSecretDigest)
	if err != nil {
		return nil, err
	}
	keys, err := b.encodeClientKeys(key, p.ClientKeys)
	if err != nil {
		return nil, err
	}
	certKey, err := b.sealString(key, "client_certificate_key", p.ClientCertificateKey)
	if err != nil {
		return nil, err
	}
	s := storedProvider{
		TokenExchange:     encodeExchange(p.TokenExchange),
		ClientCertificate: p.ClientCertificate, ClientCertKey: certKey, CertificateTime: p.CertificateUpdateTime,
		ClientKeys: keys, ClientKeyAlgorithm: p.ClientKeyAlgorithm, AssertionAudience: p.AssertionAudience,
		PreviousSecret: previous, PreviousSecretUntil: p.PreviousSecretUntil, ConfigSecretDigest: configDigest,
		Name: p.Name, TokenURL: p.TokenURL, AuthorizeURL: p.AuthorizeURL,
		IntrospectionURL: p.IntrospectionURL, RevocationURL: p.RevocationURL, DeviceAuthURL: p.DeviceAuthorizationURL,
		ClientID: p.ClientID, ClientSecret: secret, ClientAuth: p.ClientAuth.String(),
		DefaultScopes: p.DefaultScopes, TokenParams: p.TokenParams,
		DefaultTokenLifetime: p.DefaultTokenLifetime, PKCE: p.PKCE, RedirectURL: p.RedirectURL,
		RefreshLeadFraction: p.RefreshLeadFraction, RefreshMinLead: p.RefreshMinLead,
		RefreshIdleAfter: p.RefreshIdleAfter, KeepAlive: p.KeepAlive, RevokesOnRefresh: p.RefreshRevokesAccessToken,
		SecretUpdateTime: p.SecretUpdateTime, CreateTime: p.CreateTime, UpdateTime: p.UpdateTime,
	}
	if len(p.GrantTokenURLs) > 0 {
		s.GrantTokenURLs = make(map[string]string, len(p.GrantTokenURLs))
		for g, u := range p.GrantTokenURLs {
			s.GrantTokenURLs[string(g)] = u
		}
	}
	for _, g := range p.GrantTypes {
		s.GrantTypes = append(s.GrantTypes, string(g))
	}
	if p.IntrospectionAuth != 0 {
		s.IntrospectionAuth = p.IntrospectionAuth.String()
	}
	if p.JWTBearer != (JWTBearer{}) {
		j := storedJWTBearer(p.JWTBearer)
		s.JWTBearer = &j
	}
	return b.signRecord(key, s)
}

// storedJWTBearer is the etcd encoding of JWTBearer.
type storedJWTBearer struct {
	Issuer     string        `json:"issuer,omitempty"`
	Subject    string        `json:"subject,omitempty"`
	Audience   string        `json:"audience,omitempty"`
	ScopeClaim bool          `json:"scope_claim,omitempty"`
	Lifetime   time.Duration `json:"lifetime,omitempty"`
}

func (b *Broker) decodeProvider(key string, data []byte, rev int64) (*Provider, error) {
	if err := b.verifyRecord(key, data); err != nil {
		return nil, err
	}
	var s storedProvider
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("decode provider: %w", err)
	}
	auth, err := oauth.ParseAuthStyle(s.ClientAuth)
	if err != nil {
		return nil, fmt.Errorf("decode provider %s: %w", s.Name, err)
	}
	secret, err := b.openString(key, "client_secret", s.ClientSecret)
	if err != nil {
		return nil, err
	}
	previous, err := b.openString(key, "previous_client_secret", s.PreviousSecret)
	if err != nil {
		return nil, err
	}
	configDigest, err := b.openString(key, "config_secret_digest", s.ConfigSecretDigest)
	if err != nil {
		return nil, err
	}
	keys, err := b.decodeClientKeys(key, s.ClientKeys)
	if err != nil {
		return nil, err
	}
	certKey, err := b.openString(key, "client_certificate_key", s.ClientCertKey)
	if err != nil {
		return nil, err
	}
	p := &Provider{
		TokenExchange:     decodeExchange(s.TokenExchange),
		ClientCertificate: s.ClientCertificate, ClientCertificateKey: certKey, CertificateUpdateTime: s.CertificateTime,
		ClientKeys: keys, ClientKeyAlgorithm: s.ClientKeyAlgorithm, AssertionAudience: s.AssertionAudience,
		PreviousSecret: previous, PreviousSecretUntil: s.PreviousSecretUntil, ConfigSecretDigest: configDigest,
		Name: s.Name, TokenURL: s.TokenURL, AuthorizeURL: s.AuthorizeURL,
		IntrospectionURL: s.IntrospectionURL, RevocationURL: s.RevocationURL, DeviceAuthorizationURL: s.DeviceAuthURL,
		ClientID: s.ClientID, ClientSecret: secret, ClientAuth: auth,
		DefaultScopes: s.DefaultScopes, TokenParams: s.TokenParams,
		DefaultTokenLifetime: s.DefaultTokenLifetime, PKCE: s.PKCE, RedirectURL: s.RedirectURL,
		RefreshLeadFraction: s.RefreshLeadFraction, RefreshMinLead: s.RefreshMinLead,
		RefreshIdleAfter: s.RefreshIdleAfter, KeepAlive: s.KeepAlive, RefreshRevokesAccessToken: s.RevokesOnRefresh,
		SecretUpdateTime: s.SecretUpdateTime, CreateTime: s.CreateTime, UpdateTime: s.UpdateTime,
		Revision: rev,
	}
	if len(s.GrantTokenURLs) > 0 {
		p.GrantTokenURLs = make(map[GrantType]string, len(s.GrantTokenURLs))
		for g, u := range s.GrantTokenURLs {
			p.GrantTokenURLs[GrantType(g)] = u
		}
	}
	for _, g := range s.GrantTypes {
		p.GrantTypes = append(p.GrantTypes, GrantType(g))
	}
	if s.JWTBearer != nil {
		p.JWTBearer = JWTBearer(*s.JWTBearer)
	}
	if s.IntrospectionAuth != "" {
		if p.IntrospectionAuth, err = oauth.ParseAuthStyle(s.IntrospectionAuth); err != nil {
			return nil, fmt.Errorf("decode provider %s: %w", s.Name, err)
		}
	}
	return p, nil
}

// storedExchange is the etcd encoding of a TokenExchange.
type storedExchange struct {
	SubjectProvider    string   `json:"subject_provider,omitempty"`
	SubjectAccount     string   `json:"subject_account,omitempty"`
	SubjectScopes      []string `json:"subject_scopes,omitempty"`
	SubjectTokenFile   string   `json:"subject_token_file,omitempty"`
	SubjectTokenType   string   `json:"subject_token_type,omitempty"`
	RequestedTokenType string   `json:"requested_token_type,omitempty"`
	Audience           []string `json:"audience,omitempty"`
	Resource           []string `json:"resource,omitempty"`
}

func encodeExchange(x *TokenExchange) *storedExchange {
	if x == nil {
		return nil
	}
	s := storedExchange(*x)
	return &s
}

func decodeExchange(s *storedExchange) *TokenExchange {
	if s == nil {
		return nil
	}
	x := TokenExchange(*s)
	return &x
}

// storedClientKey is the etcd encoding of a ClientKey: the private key is
// a JWK, sealed for the provider's key and the key's id.
type storedClientKey struct {
	KeyID      string    `json:"kid"`
	Algorithm  string    `json:"alg"`
	Private    []byte    `json:"private_jwk_sealed"`
	CreateTime time.Time `json:"create_time"`
	RetireTime time.Time `json:"retire_time,omitzero"`
}

func clientKeyField(kid string) string { return "client_key/" + kid }

func (b *Broker) encodeClientKeys(key string, keys []ClientKey) ([]storedClientKey, error) {
	var out []storedClientKey
	for _, k := range keys {
		jwk, err := k.JWK().MarshalJSON()
		if err != nil {
			return nil, fmt.Errorf("encode client key %s: %w", k.KeyID, err)
		}
		sealed, err := b.sealString(key, clientKeyField(k.KeyID), string(jwk))
		if err != nil {
			return nil, err
		}
		out = append(out, storedClientKey{KeyID: k.KeyID, Algorithm: k.Algorithm, Private: sealed, CreateTime: k.CreateTime, RetireTime: k.RetireTime})
	}
	return out, nil
}

func (b *Broker) decodeClientKeys(key string, stored []storedClientKey) ([]ClientKey, error) {
	var out []ClientKey
	for _, s := range stored {
		jwk, err := b.openString(key, clientKeyField(s.KeyID), s.Private)
		if err != nil {
			return nil, err
		}
		k, err := ParseClientKey([]byte(jwk), s.Algorithm)
		if err != nil {
			return nil, fmt.Errorf("decode client key %s of %s: the stored key does not parse", s.KeyID, key)
		}
		k.KeyID, k.CreateTime, k.RetireTime = s.KeyID, s.CreateTime, s.RetireTime
		out = append(out, k)
	}
	return out, nil
}

// storedToken is the etcd encoding of a TokenRecord.
type storedToken struct {
	Provider     string    `json:"provider"`
	Account      string    `json:"account,omitempty"`
	Scope        string    `json:"scope,omitempty"`
	AccessToken  []byte    `json:"access_token_sealed"`
	TokenType    string    `json:"token_type,omitempty"`
	GrantedScope string    `json:"granted_scope,omitempty"`
	IDToken      []byte    `json:"id_token_sealed,omitempty"`
	IssuedAt     time.Time `json:"issued_at"`
	ExpiresAt    time.Time `json:"expires_at"`
	// ProviderExpiresAt is set when ExpiresAt is the hand-over (see
	// TokenRecord.ProviderExpiresAt).
	ProviderExpiresAt time.Time `json:"provider_expires_at,omitzero"`
	Generation        int64     `json:"generation"`
	// For introspection: whom the token was issued to, and the tokens it
	// replaced that are still valid.
	ClientID string          `json:"client_id,omitempty"`
	Username string          `json:"username,omitempty"`
	Previous []previousToken `json:"previous,omitempty"`
}

// encodeToken encodes r; clientID and username are stored for
// introspection only.
func (b *Broker) encodeToken(key string, r *TokenRecord, clientID, username string) ([]byte, error) {
	access, err := b.sealString(key, "access_token", r.AccessToken)
	if err != nil {
		return nil, err
	}
	id, err := b.sealString(key, "id_token", r.IDToken())
	if err != nil {
		return nil, err
	}
	return json.Marshal(storedToken{
		Provider: r.Key.Provider, Account: r.Key.Account, Scope: r.Key.Scope,
		AccessToken: access, TokenType: r.TokenType(), GrantedScope: r.Scope(), IDToken: id,
		IssuedAt: r.IssuedAt, ExpiresAt: r.ExpiresAt, ProviderExpiresAt: r.ProviderExpiresAt(), Generation: r.Generation,
		ClientID: clientID, Username: username, Previous: r.replaced(),
	})
}

// intern returns the broker's copy of s. It is meant for values of few
// kinds (provider names, token types), not for anything per token.
func (b *Broker) intern(s string) string {
	if s == "" {
		return ""
	}
	if v, ok := b.interned.Load(s); ok {
		return v.(string)
	}
	v, _ := b.interned.LoadOrStore(s, s)
	return v.(string)
}

func (b *Broker) decodeToken(key string, data []byte, rev int64) (*TokenRecord, error) {
	var s storedToken
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("decode token record: %w", err)
	}
	access, err := b.openString(key, "access_token", s.AccessToken)
	if err != nil {
		return nil, err
	}
	id, err := b.openString(key, "id_token", s.IDToken)
	if err != nil {
		return nil, err
	}
	// A cache holds many records of few providers: they share the name.
	// (Most share a token type and are granted the scopes they asked for:
	// the record keeps no string of its own for those, see fill.)
	r := &TokenRecord{
		Key:         TokenKey{Provider: b.intern(s.Provider), Account: s.Account, Scope: s.Scope},
		AccessToken: access, IssuedAt: s.IssuedAt, ExpiresAt: s.ExpiresAt, Generation: s.Generation, Revision: rev,
	}
	r.fill(b.intern(s.TokenType), s.GrantedScope, rareFields{idToken: id, providerExpiresAt: s.ProviderExpiresAt, previous: s.Previous})
	return r, nil
}

// storedGrant is the etcd encoding of a Grant.
type storedGrant struct {
	Provider     string          `json:"provider"`
	Account      string          `json:"account,omitempty"`
	Type         string          `json:"grant_type"`
	Username     string          `json:"username,omitempty"`
	Password     []byte          `json:"password_sealed,omitempty"`
	RefreshToken []byte          `json:"refresh_token_sealed,omitempty"`
	Scopes       []string        `json:"scopes,omitempty"`
	Health       string          `json:"health"`
	LastError    string          `json:"last_error,omitempty"`
	LastRefresh  time.Time       `json:"last_refresh_time"`
	ExpireTime   time.Time       `json:"expire_time"`
	RefreshedBy  string          `json:"refreshed_by,omitempty"`
	Generation   int64           `json:"generation"`
	PasswordTime time.Time       `json:"password_update_time"`
	RefreshTime  time.Time       `json:"refresh_token_update_time"`
	CreateTime   time.Time       `json:"create_time"`
	UpdateTime   time.Time       `json:"update_time"`
	Cooldown     *storedCooldown `json:"cooldown,omitempty"`
}

// storedCooldown is the etcd encoding of a Cooldown.
type storedCooldown struct {
	Until       time.Time `json:"until"`
	Failures    int       `json:"failures"`
	Class       string    `json:"class"`
	Status      int       `json:"status,omitempty"`
	Code        string    `json:"code,omitempty"`
	Description string    `json:"description,omitempty"`
	Message     string    `json:"message,omitempty"`
}

func encodeCooldown(c *Cooldown) *storedCooldown {
	if c == nil {
		return nil
	}
	return &storedCooldown{Until: c.Until, Failures: c.Failures, Class: c.Class, Status: c.Status, Code: c.Code, Description: c.Description, Message: c.Message}
}

func decodeCooldown(s *storedCooldown) *Cooldown {
	if s == nil {
		return nil
	}
	return &Cooldown{Until: s.Until, Failures: s.Failures, Class: s.Class, Status: s.Status, Code: s.Code, Description: s.Description, Message: s.Message}
}

func (b *Broker) encodeGrant(key string, g *Grant) ([]byte, error) {
	pw, err := b.sealString(key, "password", g.Password)
	if err != nil {
		return nil, err
	}
	rt, err := b.sealString(key, "refresh_token", g.RefreshToken)
	if err != nil {
		return nil, err
	}
	return b.signRecord(key, storedGrant{
		Provider: g.Provider, Account: g.Account, Type: string(g.Type), Username: g.Username,
		Password: pw, RefreshToken: rt, Scopes: g.Scopes, Health: string(g.Health), LastError: g.LastError,
		LastRefresh: g.LastRefresh, ExpireTime: g.ExpireTime, RefreshedBy: g.RefreshedBy, Generation: g.Generation,
		PasswordTime: g.PasswordUpdateTime, RefreshTime: g.RefreshTokenUpdateTime,
		CreateTime: g.CreateTime, UpdateTime: g.UpdateTime, Cooldown: encodeCooldown(g.Cooldown),
	})
}

func (b *Broker) decodeGrant(key string, data []byte, rev int64) (*Grant, error) {
	if err := b.verifyRecord(key, data); err != nil {
		return nil, err
	}
	var s storedGrant
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("decode grant: %w", err)
	}
	pw, err := b.openString(key, "password", s.Password)
	if err != nil {
		return nil, err
	}
	rt, err := b.openString(key, "refresh_token", s.RefreshToken)
	if err != nil {
		return nil, err
	}
	return &Grant{
		Provider: s.Provider, Account: s.Account, Type: GrantType(s.Type), Username: s.Username,
		Password: pw, RefreshToken: rt, Scopes: s.Scopes, Health: GrantHealth(s.Health), LastError: s.LastError,
		LastRefresh: s.LastRefresh, ExpireTime: s.ExpireTime, RefreshedBy: s.RefreshedBy, Generation: s.Generation,
		PasswordUpdateTime: s.PasswordTime, RefreshTokenUpdateTime: s.RefreshTime,
		CreateTime: s.CreateTime, UpdateTime: s.UpdateTime, Cooldown: decodeCooldown(s.Cooldown), Revision: rev,
	}, nil
}
