package broker

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/oauth"
)

// GrantType is an OAuth2 grant type, as sent in grant_type.
type GrantType string

// The grant types a provider may allow.
const (
	GrantClientCredentials GrantType = "client_credentials"
	GrantPassword          GrantType = "password"
	GrantAuthorizationCode GrantType = "authorization_code"
	GrantRefreshToken      GrantType = "refresh_token"
	// GrantJWTBearer is the JWT-bearer authorization grant (RFC 7523
	// §2.1): the broker signs an assertion with the provider's client key
	// (see JWTBearer) and trades it for a token.
	GrantJWTBearer GrantType = oauth.JWTBearerGrantType
	// GrantDeviceCode is the device authorization grant (RFC 8628): a
	// person consents on another device to an account the broker then
	// polls for.
	GrantDeviceCode GrantType = oauth.DeviceCodeGrantType
)

func (g GrantType) valid() bool {
	switch g {
	case GrantClientCredentials, GrantPassword, GrantAuthorizationCode, GrantRefreshToken, GrantJWTBearer, GrantDeviceCode, GrantTokenExchange:
		return true
	}
	return false
}

// DefaultTokenLifetime is assumed when a provider's token response carries no
// expires_in and the provider names no lifetime of its own.
const DefaultTokenLifetime = time.Hour

// Provider is an upstream authorization server and the broker's client
// registration with it.
type Provider struct {
	Name             string
	TokenURL         string
	AuthorizeURL     string
	IntrospectionURL string
	RevocationURL    string
	// DeviceAuthorizationURL is the device authorization endpoint (RFC
	// 8628 §3.1), for the device_code grant.
	DeviceAuthorizationURL string
	// GrantTokenURLs holds a token URL per grant where it differs from
	// TokenURL (MediaHaven's password grant has its own endpoint).
	GrantTokenURLs map[GrantType]string
	ClientID       string
	// ClientSecret is write-only: it is stored, used for token requests, and
	// never returned by the admin API (only SecretFingerprint is).
	ClientSecret string
	ClientAuth   oauth.AuthStyle
	// IntrospectionAuth is how the broker authenticates to the
	// introspection endpoint; ClientAuth when zero (MediaHaven takes
	// credentials in the body at its token endpoint, HTTP Basic at its
	// introspection endpoint).
	IntrospectionAuth oauth.AuthStyle
	// ClientKeys sign client assertions when ClientAuth (or
	// IntrospectionAuth) is private_key_jwt: the one without a RetireTime
	// signs, the others are replaced keys still served in the JWKS until
	// their RetireTime. PutProvider keeps the stored keys unless p brings
	// one of its own (an import), and generates one of
	// ClientKeyAlgorithm when private_key_jwt has none.
	ClientKeys []ClientKey
	// ClientKeyAlgorithm is the algorithm of a key the broker generates;
	// DefaultClientKeyAlgorithm when empty.
	ClientKeyAlgorithm string
	// AssertionAudience is the aud of client assertions (the provider's
	// issuer, for providers that want it); empty means the token endpoint.
	AssertionAudience string
	// JWTBearer is the assertion of the JWT-bearer grant, signed with the
	// signing key of ClientKeys.
	JWTBearer JWTBearer
	// ClientCertificate (a PEM chain, the leaf first) and
	// ClientCertificateKey (its PEM private key, write-only) are presented
	// on the TLS connection when ClientAuth (or IntrospectionAuth) is
	// tls_client_auth or self_signed_tls_client_auth (RFC 8705).
	// PutProvider keeps the stored pair when p brings neither.
	ClientCertificate     string
	ClientCertificateKey  string
	CertificateUpdateTime time.Time
	// TokenExchange, with the token exchange grant allowed, makes the
	// provider's own identity obtain its tokens by exchanging a subject
	// token (RFC 8693).
	TokenExchange *TokenExchange
	// DefaultScopes are requested when a caller names none.
	DefaultScopes []string
	// TokenParams are extra form parameters sent with every token request.
	TokenParams map[string]string
	// GrantTypes the provider allows; empty means client_credentials only.
	GrantTypes []GrantType
	// DefaultTokenLifetime applies when a token response has no expires_in;
	// zero means DefaultTokenLifetime.
	DefaultTokenLifetime time.Duration
	// PKCE makes authorization requests carry an S256 code challenge.
	PKCE bool
	// RefreshLeadFraction, RefreshMinLead and RefreshIdleAfter override the
	// broker's RefreshConfig for this provider's tokens when set.
	RefreshLeadFraction float64
	RefreshMinLead      time.Duration
	RefreshIdleAfter    time.Duration
	// KeepAlive refreshes the tokens of named accounts (password and
	// authorization-code grants) at least this often even when no caller
	// asks, so that their refresh token does not lapse; 0 turns it off.
	KeepAlive time.Duration
	// RedirectURL is the broker's callback registered at the provider
	// (…/v1/oauth/callback), for the authorization code grant.
	RedirectURL string
	// RefreshRevokesAccessToken says whether a refresh of a grant revokes
	// the access tokens issued before it (RFC 6749 §6 allows it; MediaHaven
	// and Hydra/fosite do). Nil means unknown: the broker then learns it
	// through the introspection endpoint, if there is one, and until it
	// knows assumes that it does. See RevokesOnRefresh.
	RefreshRevokesAccessToken *bool
	// LearnedRefreshRevokesAccessToken is what the broker learned of the
	// same through the introspection endpoint; nil until it has. It is kept
	// apart from the provider's record, and only read, never set, by
	// PutProvider.
	LearnedRefreshRevokesAccessToken *bool

	SecretUpdateTime time.Time
	// ConfigSecretDigest is the SHA-256 (hex) of the client secret the
	// config file last set, stored sealed. A config applied again with the
	// same secret keeps a secret rotated through the API since.
	ConfigSecretDigest string
	// PreviousSecret is tried when ClientSecret is refused with
	// invalid_client, until PreviousSecretUntil (a rotation's overlap).
	PreviousSecret      string
	PreviousSecretUntil time.Time
	CreateTime          time.Time
	UpdateTime          time.Time
	// Revision is the etcd revision the provider was read at; writes made
	// on its behalf commit only while it is unchanged.
	Revision int64
}

// JWTBearer says what the assertions of a provider's JWT-bearer grant
// (RFC 7523 §2.1, §3) claim.
type JWTBearer struct {
	// Issuer is the iss claim; the client_id when empty.
	Issuer string
	// Subject is the sub claim of the provider's own token (account "");
	// a named account's username is its subject. No sub claim when
	// empty for the provider's own token (Google service accounts).
	Subject string
	// Audience is the aud claim; the token endpoint when empty.
	Audience string
	// ScopeClaim puts the scopes asked for in a "scope" claim of the
	// assertion instead of the request's scope parameter (Google).
	ScopeClaim bool
	// Lifetime bounds each assertion's validity;
	// oauth.DefaultAssertionLifetime when zero.
	Lifetime time.Duration
}

// TokenURLFor returns the token endpoint of grant g.
func (p *Provider) TokenURLFor(g GrantType) string {
	if u, ok := p.GrantTokenURLs[g]; ok && u != "" {
		return u
	}
	return p.TokenURL
}

// Allows reports whether the provider allows grant g.
func (p *Provider) Allows(g GrantType) bool {
	if len(p.GrantTypes) == 0 {
		return g == GrantClientCredentials
	}
	return slices.Contains(p.GrantTypes, g)
}

// RevokesOnRefresh reports whether a refresh of one of p's grants revokes
// the access tokens issued before it: as configured, else as learned, else
// yes (a token served as valid must not die early, and assuming revocation
// only serves it for a shorter time).
func (p *Provider) RevokesOnRefresh() bool {
	switch {
	case p.RefreshRevokesAccessToken != nil:
		return *p.RefreshRevokesAccessToken
	case p.LearnedRefreshRevokesAccessToken != nil:
		return *p.LearnedRefreshRevokesAccessToken
	}
	return true
}

// TokenLifetime is the lifetime assumed for tokens without expires_in.
func (p *Provider) TokenLifetime() time.Duration {
	if p.DefaultTokenLifetime > 0 {
		return p.DefaultTokenLifetime
	}
	return DefaultTokenLifetime
}

// Validate reports every problem of p at once, wrapped in ErrInvalidArgument.
func (p *Provider) Validate() error {
	var errs []error
	if err := ValidateProviderName(p.Name); err != nil {
		errs = append(errs, err)
	}
	if p.TokenURL == "" {
		errs = append(errs, errors.New("token_url is required"))
	}
	for name, u := range map[string]string{
		"token_url": p.TokenURL, "authorize_url": p.AuthorizeURL,
		"introspection_url": p.IntrospectionURL, "revocation_url": p.RevocationURL,
		"redirect_uri": p.RedirectURL, "device_authorization_url": p.DeviceAuthorizationURL,
	} {
		if err := validateURL(u); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
	}
	for g, u := range p.GrantTokenURLs {
		if !g.valid() {
			errs = append(errs, fmt.Errorf("grant_token_urls: unknown grant type %s", quote(string(g))))
			continue
		}
		if err := validateURL(u); err != nil {
			errs = append(errs, fmt.Errorf("grant_token_urls[%s]: %w", g, err))
		}
	}
	switch {
	case p.ClientID == "":
		errs = append(errs, errors.New("client_id is required"))
	case len(p.ClientID) > MaxClientIDLen:
		errs = append(errs, tooLong("client_id", len(p.ClientID), MaxClientIDLen))
	}
	if len(p.ClientSecret) > MaxClientSecretLen {
		errs = append(errs, tooLong("client_secret", len(p.ClientSecret), MaxClientSecretLen))
	}
	if _, ok := clientAuthMethods[p.ClientAuth]; !ok {
		errs = append(errs, fmt.Errorf("client_auth_style %d is not one of basic, post, basic+post, private_key_jwt, none, tls_client_auth, self_signed_tls_client_auth", p.ClientAuth))
	}
	if _, ok := clientAuthMethods[p.IntrospectionAuth]; !ok && p.IntrospectionAuth != 0 {
		errs = append(errs, fmt.Errorf("introspection_auth_style %d is not one of basic, post, basic+post, private_key_jwt, none, tls_client_auth, self_signed_tls_client_auth", p.IntrospectionAuth))
	}
	errs = append(errs, p.validateClientCertificate()...)
	if p.TokenExchange != nil {
		errs = append(errs, p.TokenExchange.validate(p.Name)...)
	}
	if len(p.ClientKeys) > 1 {
		errs = append(errs, errors.New("client_key: at most one key is imported at a time"))
	}
	switch p.ClientKeyAlgorithm {
	case "", KeyRS256, KeyES256, KeyEdDSA:
	default:
		errs = append(errs, fmt.Errorf("client_key_algorithm %q is not RS256, ES256 or EdDSA", p.ClientKeyAlgorithm))
	}
	if err := validateURL(p.AssertionAudience); err != nil {
		errs = append(errs, fmt.Errorf("client_assertion_audience: %w", err))
	}
	errs = append(errs, p.JWTBearer.validate()...)
	if len(p.GrantTypes) > MaxGrantTypes {
		errs = append(errs, fmt.Errorf("grant_types has %d entries, more than %d", len(p.GrantTypes), MaxGrantTypes))
	} else {
		for _, g := range p.GrantTypes {
			if !g.valid() {
				errs = append(errs, fmt.Errorf("grant_types: unknown grant type %s", quote(string(g))))
			}
		}
	}
	if len(p.DefaultScopes) > maxScopes {
		errs = append(errs, fmt.Errorf("default_scopes has %d entries, more than %d", len(p.DefaultScopes), maxScopes))
	} else if _, err := normalizeScopes(p.DefaultScopes); err != nil {
		errs = append(errs, fmt.Errorf("default_scopes: %w", err))
	}
	errs = append(errs, validateTokenParams(p.TokenParams)...)
	if p.RefreshLeadFraction < 0 || p.RefreshLeadFraction >= 1 {
		errs = append(errs, errors.New("refresh_lead_fraction must be between 0 and 1"))
	}
	if p.RefreshMinLead < 0 || p.RefreshIdleAfter < 0 || p.KeepAlive < 0 {
		errs = append(errs, errors.New("refresh_min_lead, refresh_idle_after and keep_alive must not be negative"))
	}
	if p.DefaultTokenLifetime < 0 {
		errs = append(errs, errors.New("default_token_lifetime must not be negative"))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: provider %s: %w", ErrInvalidArgument, quote(p.Name), errors.Join(errs...))
	}
	return nil
}

// validateTokenParams bounds the extra token parameters: how many, the
// length of each key and value, and no key the broker sets itself.
func validateTokenParams(params map[string]string) []error {
	if len(params) > MaxTokenParams {
		return []error{fmt.Errorf("token_params has %d entries, more than %d", len(params), MaxTokenParams)}
	}
	var errs []error
	for k, v := range params {
		switch {
		case k == "":
			errs = append(errs, errors.New("token_params: a key is empty"))
		case len(k) > MaxTokenParamKeyLen:
			errs = append(errs, fmt.Errorf("token_params: key %s: %w", quote(k), tooLong("the key", len(k), MaxTokenParamKeyLen)))
		case reservedParam(k):
			errs = append(errs, fmt.Errorf("token_params: %s is set by the broker", quote(k)))
		case len(v) > MaxTokenParamValueLen:
			errs = append(errs, fmt.Errorf("token_params[%s]: %w", quote(k), tooLong("the value", len(v), MaxTokenParamValueLen)))
		}
	}
	return errs
}

func reservedParam(k string) bool {
	switch k {
	case "grant_type", "client_id", "client_secret", "scope", "username", "password", "refresh_token", "code", "redirect_uri", "code_verifier",
		"assertion", "client_assertion", "client_assertion_type":
		return true
	}
	return false
}

func validateURL(raw string) error {
	if raw == "" {
		return nil
	}
	if len(raw) > MaxURLLen {
		return tooLong("the URL", len(raw), MaxURLLen)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return errors.New("not a URL")
	}
	if u.Scheme != "https" && u.Scheme != "http" {
		return errors.New("scheme must be https")
	}
	if u.Host == "" {
		return errors.New("host is missing")
	}
	if u.Scheme == "http" && !oauth.IsLoopback(u.Hostname()) {
		return errors.New("scheme must be https (plain http only to a loopback address in development)")
	}
	if u.User != nil {
		return errors.New("credentials in the URL are not allowed")
	}
	return nil
}

const maxNameLen = 63

// ValidateProviderName checks a provider name: 1 to 63 characters of
// lowercase letters, digits, '-', '_' and '.', starting with a letter or digit.
func ValidateProviderName(name string) error {
	if name == "" {
		return invalidf("provider name is empty")
	}
	if len(name) > maxNameLen {
		return invalidf("provider name is longer than %d characters", maxNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case (c == '-' || c == '_' || c == '.') && i > 0:
		default:
			return invalidf("provider name %s: only lowercase letters, digits, '-', '_' and '.' are allowed, starting with a letter or digit", quote(name))
		}
	}
	return nil
}

const maxAccountLen = 128

// ValidateAccountName checks an account name: empty (the provider's own
// client identity) or up to 128 printable ASCII characters without spaces,
// '/' or '%'.
func ValidateAccountName(name string) error {
	if len(name) > maxAccountLen {
		return invalidf("account name is longer than %d characters", maxAccountLen)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c <= ' ' || c >= 0x7f || c == '/' || c == '%' {
			return invalidf("account name has a character that is not allowed at byte %d", i)
		}
	}
	return nil
}

const (
	maxScopes   = 64
	maxScopeLen = 256
)

// normalizeScopes sorts and deduplicates scopes and joins them with spaces.
// A scope is a non-empty run of the characters RFC 6749 §3.3 allows.
func normalizeScopes(scopes []string) (string, error) {
	switch len(scopes) {
	case 0:
		return "", nil
	case 1:
		return scopes[0], validateScope(scopes[0])
	}
	if len(scopes) > maxScopes {
		return "", invalidf("more than %d scopes", maxScopes)
	}
	for _, s := range scopes {
		if err := validateScope(s); err != nil {
			return "", err
		}
	}
	if !slices.IsSorted(scopes) {
		scopes = slices.Sorted(slices.Values(scopes))
	}
	return strings.Join(slices.Compact(slices.Clone(scopes)), " "), nil
}

func validateScope(s string) error {
	if s == "" {
		return invalidf("empty scope")
	}
	if len(s) > maxScopeLen {
		return invalidf("scope longer than %d characters", maxScopeLen)
	}
	for i := 0; i < len(s); i++ {
		// RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
		if c := s[i]; c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
			return invalidf("scope %s has a character RFC 6749 does not allow", quote(s))
		}
	}
	return nil
}

// endpointRequest is a client-authenticated request to the provider's
// introspection or revocation endpoint: authenticated as at the token
// endpoint (RFC 7009 §2.1), Basic when the token endpoint takes both, and
// with IntrospectionAuth for introspection when it is set. An error wraps
// ErrInvalidArgument (private_key_jwt without a key).
func (p *Provider) endpointRequest(endpoint string, params url.Values, introspection bool) (oauth.Request, error) {
	style := p.ClientAuth
	if style == oauth.AuthBasicAndPost {
		style = oauth.AuthBasic
	}
	if introspection && p.IntrospectionAuth != 0 {
		style = p.IntrospectionAuth
	}
	auth, err := p.clientAuth(style, p.ClientSecret)
	return oauth.Request{TokenURL: endpoint, Auth: auth, Params: params}, err
}

// tokenRequest is a client-authenticated request to the token endpoint of
// grant g. An error wraps ErrInvalidArgument (private_key_jwt without a key).
func (p *Provider) tokenRequest(g GrantType, params url.Values) (oauth.Request, error) {
	auth, err := p.clientAuth(p.ClientAuth, p.ClientSecret)
	return oauth.Request{TokenURL: p.TokenURLFor(g), Auth: auth, Params: params}, err
}

// clientAuth builds p's authenticator of style, with secret for the
// styles that take one.
func (p *Provider) clientAuth(style oauth.AuthStyle, secret string) (oauth.ClientAuthenticator, error) {
	build, ok := clientAuthMethods[style]
	if !ok {
		return nil, invalidf("provider %q: client authentication %v is unknown", p.Name, style)
	}
	return build(p, style, secret)
}

// clientAuthMethods builds each way of authenticating to a provider from
// the provider, the style and the secret in use. A new way is one entry.
var clientAuthMethods = map[oauth.AuthStyle]func(p *Provider, style oauth.AuthStyle, secret string) (oauth.ClientAuthenticator, error){
	oauth.AuthBasic:         clientSecretAuth,
	oauth.AuthPost:          clientSecretAuth,
	oauth.AuthBasicAndPost:  clientSecretAuth,
	oauth.AuthPrivateKeyJWT: privateKeyJWTAuth,
	oauth.AuthNone:          noClientAuth,

	oauth.AuthTLSClientAuth:           tlsClientAuth,
	oauth.AuthSelfSignedTLSClientAuth: tlsClientAuth,
}

func noClientAuth(*Provider, oauth.AuthStyle, string) (oauth.ClientAuthenticator, error) {
	return oauth.NoClientAuth{}, nil
}

func clientSecretAuth(p *Provider, style oauth.AuthStyle, secret string) (oauth.ClientAuthenticator, error) {
	return oauth.ClientSecret{ID: p.ClientID, Secret: secret, Style: style}, nil
}

// privateKeyJWTAuth signs with p's signing key, for the audience p names
// or its token endpoint.
func privateKeyJWTAuth(p *Provider, _ oauth.AuthStyle, _ string) (oauth.ClientAuthenticator, error) {
	k, ok := p.SigningKey()
	if !ok {
		return nil, invalidf("provider %q: private_key_jwt without a client key", p.Name)
	}
	return oauth.PrivateKeyJWT{ClientID: p.ClientID, Key: k.JWK(), Audience: orString(p.AssertionAudience, p.TokenURL)}, nil
}
