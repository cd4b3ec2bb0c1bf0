package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/oauth"
)

// A preset describes a known provider relative to its base URL, from its
// public OAuth2 documentation.
type preset struct {
	defaultBase string
	apply       func(p *Provider, base string)
}

// presets are the seed providers. Each fills only what is empty.
var presets = map[string]preset{
	"google-service-account": {defaultBase: strings.TrimSuffix(GoogleTokenURL, "/token"), apply: googleServiceAccount},
	// MediaCore: users approve the client in the browser (authorization
	// code); bearer tokens over HTTPS; refreshable. Its overview names no
	// endpoint paths, so authorize_url and token_url must be given.
	"mediacore": {apply: func(p *Provider, _ string) {
		fillGrants(p, GrantAuthorizationCode, GrantRefreshToken)
	}},
	// MediaHound: client_credentials with HTTP Basic and the credentials
	// repeated in the body; no refresh tokens.
	"mediahound": {defaultBase: "https://api.mediahound.com", apply: func(p *Provider, base string) {
		fill(&p.TokenURL, base+"/1.3/security/oauth/token")
		fillAuth(p, oauth.AuthBasicAndPost)
		fillGrants(p, GrantClientCredentials)
	}},
	// MediaValet: OIDC; /connect/authorize and /connect/token; "openid api"
	// required, offline_access for refresh tokens; codes live 60 s.
	"mediavalet": {apply: func(p *Provider, base string) {
		fill(&p.AuthorizeURL, base+"/connect/authorize")
		fill(&p.TokenURL, base+"/connect/token")
		fillAuth(p, oauth.AuthPost)
		fillGrants(p, GrantAuthorizationCode, GrantPassword, GrantRefreshToken)
		if len(p.DefaultScopes) == 0 {
			p.DefaultScopes = []string{"api", "offline_access", "openid"}
		}
		p.PKCE = true
	}},
	// Mediaflow: authorize at login.mediaflowpro.com, token at
	// accounts.mediaflow.com; credentials always in the body; state echoed.
	"mediaflow": {defaultBase: "https://accounts.mediaflow.com", apply: func(p *Provider, base string) {
		fill(&p.AuthorizeURL, "https://login.mediaflowpro.com/authorize")
		fill(&p.TokenURL, base+"/1/oauth2/token")
		fillAuth(p, oauth.AuthPost)
		fillGrants(p, GrantAuthorizationCode, GrantPassword, GrantRefreshToken)
	}},
	// MediaHaven: /auth?client_id=… to authorize, /auth/oauth2/token, the
	// password grant at /auth/ropc.php, introspection at
	// /auth/introspect.php (HTTP Basic); refresh tokens rotate, and "the
	// previous access_token and refresh_token will be invalid".
	"mediahaven": {apply: func(p *Provider, base string) {
		if p.RefreshRevokesAccessToken == nil {
			revokes := true
			p.RefreshRevokesAccessToken = &revokes
		}
		fill(&p.AuthorizeURL, base+"/auth")
		fill(&p.TokenURL, base+"/auth/oauth2/token")
		fill(&p.IntrospectionURL, base+"/auth/introspect.php")
		if p.IntrospectionAuth == 0 {
			p.IntrospectionAuth = oauth.AuthBasic // "It requires BASIC Auth"
		}
		if p.GrantTokenURLs == nil {
			p.GrantTokenURLs = map[GrantType]string{}
		}
		if p.GrantTokenURLs[GrantPassword] == "" {
			p.GrantTokenURLs[GrantPassword] = base + "/auth/ropc.php"
		}
		fillAuth(p, oauth.AuthPost)
		fillGrants(p, GrantAuthorizationCode, GrantPassword, GrantRefreshToken)
	}},
}

// googleServiceAccount is the JWT-bearer grant of a Google service
// account (Google's "OAuth 2.0 for Server to Server Applications"): an
// RS256 assertion with iss the account's email, aud the token endpoint and
// the scopes in a scope claim, no client authentication. The key file
// fills the rest (ApplyServiceAccountKey).
func googleServiceAccount(p *Provider, base string) {
	fill(&p.TokenURL, base+"/token")
	fill(&p.JWTBearer.Audience, p.TokenURL)
	p.JWTBearer.ScopeClaim = true
	fillAuth(p, oauth.AuthNone)
	fillGrants(p, GrantJWTBearer)
	if p.ClientKeyAlgorithm == "" {
		p.ClientKeyAlgorithm = KeyRS256
	}
}

// PresetNames lists the presets, "oidc" and "oauth" included.
func PresetNames() []string {
	names := []string{"oauth", "oidc"}
	for n := range presets {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// DiscoveryPresets are the presets that read the provider's metadata from
// its issuer URL, at registration: "oidc" (OpenID Connect Discovery 1.0,
// then RFC 8414) and "oauth" (RFC 8414, then OpenID Connect Discovery).
var DiscoveryPresets = []string{"oauth", "oidc"}

func fill(dst *string, v string) {
	if *dst == "" {
		*dst = v
	}
}

func fillAuth(p *Provider, a oauth.AuthStyle) {
	if p.ClientAuth == 0 {
		p.ClientAuth = a
	}
}

func fillGrants(p *Provider, gs ...GrantType) {
	if len(p.GrantTypes) == 0 {
		p.GrantTypes = gs
	}
}

// ApplyPreset fills p's empty fields from the named preset and base URL
// ("oidc" and "oauth" read the issuer's metadata). ClientAuth zero means
// unset. Errors wrap ErrInvalidArgument (unknown preset, bad base URL, no
// or no usable metadata at the issuer) or are a *ProviderError (the
// issuer could not be reached or answered 5xx).
func (b *Broker) ApplyPreset(ctx context.Context, p *Provider, name, base string) error {
	if len(base) > MaxURLLen {
		return invalidf("base_url: %v", tooLong("the URL", len(base), MaxURLLen))
	}
	if slices.Contains(DiscoveryPresets, name) {
		return b.discover(ctx, p, name, strings.TrimRight(base, "/"))
	}
	return ApplyStaticPreset(p, name, base)
}

// ApplyStaticPreset is ApplyPreset for the presets that need no network:
// every one but "oidc" and "oauth".
func ApplyStaticPreset(p *Provider, name, base string) error {
	base = strings.TrimRight(base, "/")
	pr, ok := presets[name]
	if !ok {
		return invalidf("unknown preset %s; known: %s", quote(name), strings.Join(PresetNames(), ", "))
	}
	if base == "" {
		base = pr.defaultBase
	}
	if err := validateURL(base); err != nil || (base == "" && name != "mediacore") {
		return invalidf("preset %s needs a base_url (https://host)", name)
	}
	pr.apply(p, base)
	return nil
}

// discoveryDocument holds the fields of OpenID Connect Discovery 1.0 and
// RFC 8414 authorization server metadata the broker uses.
type discoveryDocument struct {
	Issuer                      string   `json:"issuer"`
	AuthorizationEndpoint       string   `json:"authorization_endpoint"`
	TokenEndpoint               string   `json:"token_endpoint"`
	IntrospectionEndpoint       string   `json:"introspection_endpoint"`
	RevocationEndpoint          string   `json:"revocation_endpoint"`
	DeviceAuthorizationEndpoint string   `json:"device_authorization_endpoint"`
	GrantTypesSupported         []string `json:"grant_types_supported"`
	TokenAuthMethods            []string `json:"token_endpoint_auth_methods_supported"`
	CodeChallengeMethods        []string `json:"code_challenge_methods_supported"`
	ScopesSupported             []string `json:"scopes_supported"`
	ResponseTypesSupported      []string `json:"response_types_supported"`
}

// metadataURLs are where issuer's metadata is looked for, in order: for
// "oidc" the OpenID Connect location (the issuer's path, then
// /.well-known/openid-configuration) and then RFC 8414's (§3.1:
// /.well-known/oauth-authorization-server inserted before the issuer's
// path); for "oauth" the other way round.
func metadataURLs(preset, issuer string) ([]string, error) {
	u, err := url.Parse(issuer)
	if err != nil {
		return nil, err
	}
	oidc := issuer + "/.well-known/openid-configuration"
	rfc8414 := (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: "/.well-known/oauth-authorization-server" + u.Path}).String()
	if preset == "oauth" {
		return []string{rfc8414, oidc}, nil
	}
	return []string{oidc, rfc8414}, nil
}

// discover fills p from the metadata of issuer: the first of
// metadataURLs that does not answer 404 (or 410). No metadata anywhere,
// and metadata that is not usable (not JSON, no token_endpoint, another
// issuer), are configuration errors, wrapping ErrInvalidArgument with the
// URLs tried; an issuer that cannot be reached or fails (5xx) is a
// *ProviderError wrapping oauth.ErrTransport.
func (b *Broker) discover(ctx context.Context, p *Provider, preset, issuer string) error {
	if err := validateURL(issuer); err != nil || issuer == "" {
		return invalidf("%s preset needs the issuer URL in base_url", preset)
	}
	urls, err := metadataURLs(preset, issuer)
	if err != nil {
		return invalidf("%s preset: bad issuer URL", preset)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var d *discoveryDocument
	for _, u := range urls {
		if d, err = b.fetchMetadata(ctx, p.Name, u); err != nil || d != nil {
			break
		}
	}
	switch {
	case err != nil:
		return err
	case d == nil:
		return invalidf("%s preset: no authorization server metadata for issuer %s: %s answered 404 Not Found (is base_url the issuer?)",
			preset, issuer, strings.Join(urls, " and "))
	case strings.TrimRight(d.Issuer, "/") != issuer:
		return invalidf("%s preset: the metadata names issuer %s, not %s", preset, quote(d.Issuer), issuer)
	}
	fill(&p.TokenURL, d.TokenEndpoint)
	fill(&p.AuthorizeURL, d.AuthorizationEndpoint)
	fill(&p.IntrospectionURL, d.IntrospectionEndpoint)
	fill(&p.RevocationURL, d.RevocationEndpoint)
	fill(&p.DeviceAuthorizationURL, d.DeviceAuthorizationEndpoint)
	switch methods := d.TokenAuthMethods; {
	case len(methods) == 0 || slices.Contains(methods, "client_secret_basic"):
		fillAuth(p, oauth.AuthBasic) // the default of both specifications
	case slices.Contains(methods, "client_secret_post"):
		fillAuth(p, oauth.AuthPost)
	case slices.Contains(methods, "private_key_jwt"):
		fillAuth(p, oauth.AuthPrivateKeyJWT)
	}
	if slices.Contains(d.CodeChallengeMethods, "S256") {
		p.PKCE = true
	}
	if len(p.GrantTypes) == 0 {
		supported := d.GrantTypesSupported
		if len(supported) == 0 {
			supported = []string{"authorization_code", "implicit"} // the specifications' default
		}
		for _, g := range []GrantType{GrantClientCredentials, GrantPassword, GrantAuthorizationCode, GrantRefreshToken, GrantJWTBearer} {
			if slices.Contains(supported, string(g)) {
				p.GrantTypes = append(p.GrantTypes, g)
			}
		}
	}
	return nil
}

// fetchMetadata reads the metadata document at u: nil, nil when u answers
// 404 or 410. Errors as for discover.
func (b *Broker) fetchMetadata(ctx context.Context, provider, u string) (*discoveryDocument, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, invalidf("discovery: bad metadata URL %s", quote(u))
	}
	req.Header.Set("Accept", "application/json")
	resp, err := b.discoveryClient.Do(req)
	if err != nil {
		return nil, &ProviderError{Provider: provider, Err: fmt.Errorf("%w: discovery at %s: %v", oauth.ErrTransport, u, errors.Unwrap(err))}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	switch {
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusGone:
		return nil, nil
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
		return nil, &ProviderError{Provider: provider, Err: fmt.Errorf("%w: discovery at %s answered %d", oauth.ErrTransport, u, resp.StatusCode)}
	case err != nil:
		return nil, &ProviderError{Provider: provider, Err: fmt.Errorf("%w: discovery at %s: %v", oauth.ErrTransport, u, err)}
	case resp.StatusCode != http.StatusOK:
		return nil, invalidf("discovery: %s answered %d, not metadata", u, resp.StatusCode)
	}
	var d discoveryDocument
	if err := json.Unmarshal(body, &d); err != nil {
		return nil, invalidf("discovery: %s answered with something that is not a JSON metadata document", u)
	}
	if d.TokenEndpoint == "" {
		return nil, invalidf("discovery: the metadata at %s has no token_endpoint", u)
	}
	return &d, nil
}
