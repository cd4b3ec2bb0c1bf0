package fakes

import (
	"net/http"
	"slices"
	"testing"

	"github.com/tokenbroker/tokenbroker/sandbox"
)

// OIDC is a generic OpenID Connect issuer: it serves its discovery document
// at /.well-known/openid-configuration (OpenID Connect Discovery 1.0)
// naming the sandbox's authorization, token, introspection (RFC 7662) and
// revocation (RFC 7009) endpoints, client_secret_basic, and S256 PKCE. It
// issues refresh tokens with the user grants, and id_tokens with openid.
type OIDC struct {
	*Server
	issuer      string   // guarded by Server.mu; "" means URL()
	authMethods []string // guarded by Server.mu
}

// The OIDC fake's client and discovery path.
const (
	OIDCClientID      = "oidc-client"
	OIDCClientSecret  = "oidc-secret-5f2a"
	OIDCDiscoveryPath = "/.well-known/openid-configuration"
)

// NewOIDC starts an OpenID Connect issuer whose issuer identifier is its
// URL. Its token endpoint takes client_credentials, password,
// authorization_code and refresh_token.
func NewOIDC(t testing.TB, opts ...Option) *OIDC {
	t.Helper()
	s := newServer(t, "OIDC issuer", newConfig(opts), OIDCClientID, sandbox.Config{
		Clients:       map[string]string{OIDCClientID: OIDCClientSecret},
		Users:         map[string]string{User: Password},
		RedirectURIs:  map[string][]string{OIDCClientID: nil},
		RefreshTokens: true,
		IDTokens:      true,
	})
	o := &OIDC{Server: s, authMethods: []string{"client_secret_basic", "client_secret_post"}}
	s.srv = s.listen(false, map[string]route{
		OIDCDiscoveryPath:      {endpoint: DiscoveryEndpoint, serve: o.discovery},
		sandbox.AuthorizePath:  {endpoint: AuthorizeEndpoint, target: sandbox.AuthorizePath},
		sandbox.TokenPath:      {endpoint: TokenEndpoint, target: sandbox.TokenPath},
		sandbox.IntrospectPath: {endpoint: IntrospectionEndpoint, target: sandbox.IntrospectPath},
		sandbox.RevokePath:     {endpoint: RevocationEndpoint, target: sandbox.RevokePath},
	})
	return o
}

// SetIssuer makes the discovery document name issuer instead of URL(), as a
// misconfigured or impersonating issuer would.
func (o *OIDC) SetIssuer(issuer string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.issuer = issuer
}

// SetAuthMethods sets token_endpoint_auth_methods_supported; empty leaves
// it out of the document.
func (o *OIDC) SetAuthMethods(methods ...string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.authMethods = slices.Clone(methods)
}

func (o *OIDC) discovery(r *http.Request) *answer {
	if r.Method != http.MethodGet {
		return &answer{status: http.StatusMethodNotAllowed, header: http.Header{"Allow": {http.MethodGet}}}
	}
	o.mu.Lock()
	issuer, methods := o.issuer, slices.Clone(o.authMethods)
	o.mu.Unlock()
	base := o.URL()
	if issuer == "" {
		issuer = base
	}
	doc := map[string]any{
		"issuer":                                issuer,
		"authorization_endpoint":                base + sandbox.AuthorizePath,
		"token_endpoint":                        base + sandbox.TokenPath,
		"introspection_endpoint":                base + sandbox.IntrospectPath,
		"revocation_endpoint":                   base + sandbox.RevokePath,
		"response_types_supported":              []string{"code"},
		"grant_types_supported":                 []string{"authorization_code", "refresh_token", "password", "client_credentials"},
		"code_challenge_methods_supported":      []string{"S256"},
		"scopes_supported":                      []string{"openid", "offline_access"},
		"subject_types_supported":               []string{"public"},
		"id_token_signing_alg_values_supported": []string{"HS256"},
	}
	if len(methods) > 0 {
		doc["token_endpoint_auth_methods_supported"] = methods
	}
	return jsonAnswer(http.StatusOK, doc)
}
