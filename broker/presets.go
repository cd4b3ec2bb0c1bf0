package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
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

// PresetNames lists the presets, "oidc" included.
func PresetNames() []string {
	names := []string{"oidc"}
	for n := range presets {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

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
// ("oidc" reads the issuer's discovery document). ClientAuth zero means
// unset. Errors wrap ErrInvalidArgument (unknown preset, bad base URL) or
// are a *ProviderError (discovery failed).
func (b *Broker) ApplyPreset(ctx context.Context, p *Provider, name, base string) error {
	if len(base) > MaxURLLen {
		return invalidf("base_url: %v", tooLong("the URL", len(base), MaxURLLen))
	}
	if name == "oidc" {
		return b.discover(ctx, p, strings.TrimRight(base, "/"))
	}
	return ApplyStaticPreset(p, name, base)
}

// ApplyStaticPreset is ApplyPreset for the presets that need no network:
// every one but "oidc".
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

// discoveryDocument holds the fields of OpenID Connect Discovery 1.0 (and
// RFC 8414) the broker uses.
type discoveryDocument struct {
	Issuer                 string   `json:"issuer"`
	AuthorizationEndpoint  string   `json:"authorization_endpoint"`
	TokenEndpoint          string   `json:"token_endpoint"`
	IntrospectionEndpoint  string   `json:"introspection_endpoint"`
	RevocationEndpoint     string   `json:"revocation_endpoint"`
	GrantTypesSupported    []string `json:"grant_types_supported"`
	TokenAuthMethods       []string `json:"token_endpoint_auth_methods_supported"`
	CodeChallengeMethods   []string `json:"code_challenge_methods_supported"`
	ScopesSupported        []string `json:"scopes_supported"`
	ResponseTypesSupported []string `json:"response_types_supported"`
}

// discover fills p from issuer's /.well-known/openid-configuration.
func (b *Broker) discover(ctx context.Context, p *Provider, issuer string) error {
	if err := validateURL(issuer); err != nil || issuer == "" {
		return invalidf("oidc preset needs the issuer URL in base_url")
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, issuer+"/.well-known/openid-configuration", nil)
	if err != nil {
		return invalidf("oidc preset: bad issuer URL")
	}
	req.Header.Set("Accept", "application/json")
	resp, err := b.discoveryClient.Do(req)
	if err != nil {
		return &ProviderError{Provider: p.Name, Err: fmt.Errorf("%w: discovery: %v", oauth.ErrTransport, err)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		return &ProviderError{Provider: p.Name, Err: fmt.Errorf("%w: discovery answered %d", oauth.ErrBadResponse, resp.StatusCode)}
	}
	var d discoveryDocument
	if err := json.Unmarshal(body, &d); err != nil || d.TokenEndpoint == "" {
		return &ProviderError{Provider: p.Name, Err: fmt.Errorf("%w: discovery document without token_endpoint", oauth.ErrBadResponse)}
	}
	if strings.TrimRight(d.Issuer, "/") != issuer {
		return &ProviderError{Provider: p.Name, Err: fmt.Errorf("%w: discovery issuer %q differs from %q", oauth.ErrBadResponse, d.Issuer, issuer)}
	}
	fill(&p.TokenURL, d.TokenEndpoint)
	fill(&p.AuthorizeURL, d.AuthorizationEndpoint)
	fill(&p.IntrospectionURL, d.IntrospectionEndpoint)
	fill(&p.RevocationURL, d.RevocationEndpoint)
	switch {
	case len(d.TokenAuthMethods) == 0 || slices.Contains(d.TokenAuthMethods, "client_secret_basic"):
		fillAuth(p, oauth.AuthBasic) // the OIDC default
	case slices.Contains(d.TokenAuthMethods, "client_secret_post"):
		fillAuth(p, oauth.AuthPost)
	}
	if slices.Contains(d.CodeChallengeMethods, "S256") {
		p.PKCE = true
	}
	if len(p.GrantTypes) == 0 {
		supported := d.GrantTypesSupported
		if len(supported) == 0 {
			supported = []string{"authorization_code", "implicit"} // the spec's default
		}
		for _, g := range []GrantType{GrantClientCredentials, GrantPassword, GrantAuthorizationCode, GrantRefreshToken} {
			if slices.Contains(supported, string(g)) {
				p.GrantTypes = append(p.GrantTypes, g)
			}
		}
	}
	return nil
}
