package fakes

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/sandbox"
)

// MediaCore (seed 000): users approve the client in the browser
// (authorization code); tokens are bearer tokens sent in the Authorization
// header; HTTPS is mandatory, so the fake serves TLS only (use Client, or
// its transport, to reach it); tokens can be refreshed. The document names
// no paths: the fake serves the sandbox's (AuthorizePath, TokenPath) and a
// protected resource at APIPath.
type MediaCore struct{ *Server }

// MediaCore's client and paths.
const (
	MediaCoreClientID      = "mediacore-client"
	MediaCoreClientSecret  = "mediacore-secret-2c41"
	MediaCoreAuthorizePath = sandbox.AuthorizePath
	MediaCoreTokenPath     = sandbox.TokenPath
	MediaCoreAPIPath       = sandbox.WhoamiPath
)

// NewMediaCore starts a MediaCore fake. Its token endpoint takes the
// authorization_code and refresh_token grants only (the test fails on any
// other) and accepts the client's credentials in HTTP Basic or the body.
func NewMediaCore(t testing.TB, opts ...Option) *MediaCore {
	t.Helper()
	s := newServer(t, "MediaCore", newConfig(opts), MediaCoreClientID, sandbox.Config{
		Clients:       map[string]string{MediaCoreClientID: MediaCoreClientSecret},
		Users:         map[string]string{User: Password},
		RedirectURIs:  map[string][]string{MediaCoreClientID: nil},
		RefreshTokens: true,
	})
	s.check = func(e Endpoint, r *http.Request, form url.Values) *answer {
		if e != TokenEndpoint {
			return nil
		}
		return s.requireGrant(r, form, sandbox.GrantAuthorizationCode, sandbox.GrantRefreshToken)
	}
	s.srv = s.listen(true, map[string]route{
		MediaCoreAuthorizePath: {endpoint: AuthorizeEndpoint, target: sandbox.AuthorizePath},
		MediaCoreTokenPath:     {endpoint: TokenEndpoint, target: sandbox.TokenPath},
		MediaCoreAPIPath:       {endpoint: ResourceEndpoint, target: sandbox.WhoamiPath},
	})
	return &MediaCore{s}
}

// CallAPI calls MediaCore's protected resource with `Authorization: Bearer
// token` and returns the status: 200 for a valid token, 401 otherwise.
func (m *MediaCore) CallAPI(token string) (int, error) {
	req, err := http.NewRequest(http.MethodGet, m.URL()+MediaCoreAPIPath, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := m.Client().Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// MediaHound (seed 001): the client_credentials grant only, at
// MediaHoundTokenPath. The client authenticates with HTTP Basic (client_id
// and client_secret joined by a colon and base64-encoded, nothing else) AND
// repeats client_id and client_secret in the form, with `Accept:
// application/json`. The answer carries access_token, token_type "bearer",
// expires_in as a number and scope: all the application's default scopes
// (MediaHoundScope), whatever was asked. There is no refresh token: "once
// expired, simply request a new one".
type MediaHound struct{ *Server }

// MediaHound's client (the document's own example), path and scopes.
const (
	MediaHoundClientID     = "MyClientId"
	MediaHoundClientSecret = "MyClientSecret"
	MediaHoundTokenPath    = "/1.3/security/oauth/token"
	MediaHoundScope        = "public"
)

// NewMediaHound starts a MediaHound fake. The test fails when a token
// request lacks the Basic header, the body credentials or the Accept header,
// or asks for any grant but client_credentials. Credentials that are present
// but wrong are answered 401 invalid_client without failing the test.
func NewMediaHound(t testing.TB, opts ...Option) *MediaHound {
	t.Helper()
	s := newServer(t, "MediaHound", newConfig(opts), MediaHoundClientID, sandbox.Config{
		Clients: map[string]string{MediaHoundClientID: MediaHoundClientSecret},
	})
	s.check = func(e Endpoint, r *http.Request, form url.Values) *answer {
		if e != TokenEndpoint {
			return nil
		}
		ca := authOf(r, form)
		if !ca.basic {
			s.t.Errorf("fakes: MediaHound: token request without HTTP Basic client authentication (Authorization = %q); the document requires it",
				r.Header.Get("Authorization"))
			return oauthError(http.StatusUnauthorized, "invalid_client", "Basic authorization header required")
		}
		if a := s.requireBodyCredentials(r, form, "MediaHound wants them repeated in the body besides HTTP Basic"); a != nil {
			return a
		}
		if got := r.Header.Get("Accept"); !strings.Contains(got, "application/json") {
			s.t.Errorf("fakes: MediaHound: token request has Accept %q, want application/json", got)
		}
		if a := s.requireGrant(r, form, sandbox.GrantClientCredentials); a != nil {
			return a
		}
		// The document's Basic header is the plain "id:secret" in base64.
		if ca.basicID != s.clientID || ca.basicPass != s.clientSecret || ca.bodyID != s.clientID || ca.bodySecret != s.clientSecret {
			return oauthError(http.StatusUnauthorized, "invalid_client", "Bad client credentials")
		}
		passBasicToSandbox(r)
		return nil
	}
	s.alter = func(_ url.Values, _ Code, resp map[string]any) {
		resp["token_type"] = "bearer"
		resp["scope"] = MediaHoundScope
		delete(resp, "refresh_token")
	}
	s.srv = s.listen(false, map[string]route{
		MediaHoundTokenPath: {endpoint: TokenEndpoint, target: sandbox.TokenPath},
	})
	return &MediaHound{s}
}

// MediaValet (seed 002): an OpenID Connect provider with /connect/authorize
// and /connect/token. Grants: authorization_code (a code lives 60 s; the
// token request must carry redirect_uri, equal to the authorization
// request's) and resource owner password; refresh_token. The scopes "openid"
// and "api" are required; a refresh token comes only with offline_access,
// an id_token with openid. The client authenticates with client_id and
// client_secret in the body. Client credentials is "coming soon": not
// offered.
type MediaValet struct{ *Server }

// MediaValet's client and paths.
const (
	MediaValetClientID      = "mediavalet-client"
	MediaValetClientSecret  = "mediavalet-secret-9e07"
	MediaValetAuthorizePath = "/connect/authorize"
	MediaValetTokenPath     = "/connect/token"
)

// NewMediaValet starts a MediaValet fake. The test fails on an authorization
// or password request whose scope lacks openid or api, a token request
// without body credentials or with a grant the document does not offer, and
// a code redeemed without its redirect_uri or with another one.
func NewMediaValet(t testing.TB, opts ...Option) *MediaValet {
	t.Helper()
	s := newServer(t, "MediaValet", newConfig(opts), MediaValetClientID, sandbox.Config{
		Clients:                      map[string]string{MediaValetClientID: MediaValetClientSecret},
		Users:                        map[string]string{User: Password},
		RedirectURIs:                 map[string][]string{MediaValetClientID: nil},
		Scopes:                       []string{"openid", "api", "offline_access"},
		RefreshTokens:                true,
		RefreshRequiresOfflineAccess: true,
		IDTokens:                     true,
	})
	s.check = func(e Endpoint, r *http.Request, form url.Values) *answer {
		switch e {
		case AuthorizeEndpoint:
			params := authorizeParams(r, form)
			if !hasScopes(params.Get("scope"), "openid", "api") {
				s.t.Errorf("fakes: MediaValet: authorization request has scope %q, want openid and api (required)", params.Get("scope"))
				return &answer{status: http.StatusBadRequest, header: http.Header{"Content-Type": {"text/plain"}},
					body: []byte("openid and api scopes are required")}
			}
		case TokenEndpoint:
			if a := s.requireBodyCredentials(r, form, "MediaValet's token endpoint takes client_id and client_secret as request parameters"); a != nil {
				return a
			}
			if a := s.requireGrant(r, form, sandbox.GrantAuthorizationCode, sandbox.GrantPassword, sandbox.GrantRefreshToken); a != nil {
				return a
			}
			switch form.Get("grant_type") {
			case sandbox.GrantAuthorizationCode:
				if form.Get("redirect_uri") == "" {
					s.t.Errorf("fakes: MediaValet: authorization_code token request without redirect_uri; the document requires it")
					return oauthError(http.StatusBadRequest, "invalid_request", "redirect_uri is required")
				}
			case sandbox.GrantPassword:
				if !hasScopes(form.Get("scope"), "openid", "api") {
					s.t.Errorf("fakes: MediaValet: password request has scope %q, want openid and api (required)", form.Get("scope"))
					return oauthError(http.StatusBadRequest, "invalid_scope", "openid and api are required")
				}
			}
		}
		return nil
	}
	s.srv = s.listen(false, map[string]route{
		MediaValetAuthorizePath: {endpoint: AuthorizeEndpoint, target: sandbox.AuthorizePath},
		MediaValetTokenPath:     {endpoint: TokenEndpoint, target: sandbox.TokenPath},
	})
	return &MediaValet{s}
}

// Mediaflow (seed 003): the authorize page lives on one host
// (login.mediaflowpro.com: LoginURL) and the token endpoint on another
// (accounts.mediaflow.com: URL). Grants: authorization_code, password and
// refresh_token; client_id and client_secret always in the form body. The
// answer echoes the request's state; an authorization_code answer echoes
// the state of the authorization request. Whether a refresh token comes and
// how long a token lives depend on the client: MediaflowClientID gets
// refresh tokens; MediaflowLimitedClientID gets none, tokens of
// MediaflowLimitedLifetime seconds, and no password grant ("not all
// client_id values support the password grant type").
type Mediaflow struct {
	*Server
}

// Mediaflow's clients and paths.
const (
	MediaflowClientID            = "mediaflow-client"
	MediaflowClientSecret        = "mediaflow-secret-71b3"
	MediaflowLimitedClientID     = "mediaflow-kiosk"
	MediaflowLimitedClientSecret = "mediaflow-kiosk-secret-0d5a"
	MediaflowLimitedLifetime     = 900
	MediaflowAuthorizePath       = "/authorize"
	MediaflowTokenPath           = "/1/oauth2/token"
)

// NewMediaflow starts a Mediaflow fake. The test fails on a token request
// without body credentials or with a grant the document does not offer, and
// on an authorization_code request without redirect_uri or with another one
// than the authorization request's.
func NewMediaflow(t testing.TB, opts ...Option) *Mediaflow {
	t.Helper()
	s := newServer(t, "Mediaflow", newConfig(opts), MediaflowClientID, sandbox.Config{
		Clients: map[string]string{
			MediaflowClientID:        MediaflowClientSecret,
			MediaflowLimitedClientID: MediaflowLimitedClientSecret,
		},
		Users:         map[string]string{User: Password},
		RedirectURIs:  map[string][]string{MediaflowClientID: nil, MediaflowLimitedClientID: nil},
		RefreshTokens: true,
	})
	s.check = func(e Endpoint, r *http.Request, form url.Values) *answer {
		if e != TokenEndpoint {
			return nil
		}
		if a := s.requireBodyCredentials(r, form, "Mediaflow wants them in the body of every request"); a != nil {
			return a
		}
		if a := s.requireGrant(r, form, sandbox.GrantRefreshToken, sandbox.GrantAuthorizationCode, sandbox.GrantPassword); a != nil {
			return a
		}
		switch form.Get("grant_type") {
		case sandbox.GrantPassword:
			if form.Get("client_id") == MediaflowLimitedClientID {
				return oauthError(http.StatusBadRequest, "unauthorized_client", "this client_id does not support the password grant type")
			}
		case sandbox.GrantAuthorizationCode:
			if form.Get("redirect_uri") == "" {
				s.t.Errorf("fakes: Mediaflow: authorization_code token request without redirect_uri; it must match the one of step 1")
				return oauthError(http.StatusBadRequest, "invalid_request", "redirect_uri is required")
			}
		}
		return nil
	}
	s.alter = func(form url.Values, code Code, resp map[string]any) {
		if form.Get("client_id") == MediaflowLimitedClientID {
			delete(resp, "refresh_token")
			resp["expires_in"] = MediaflowLimitedLifetime
		}
		state := form.Get("state")
		if state == "" {
			state = code.State
		}
		s.mu.Lock()
		foreign := s.foreignState
		s.mu.Unlock()
		if state != "" && foreign {
			state = "not-" + state
		}
		if state != "" {
			resp["state"] = state
		}
	}
	login := s.listen(false, map[string]route{
		MediaflowAuthorizePath: {endpoint: AuthorizeEndpoint, target: sandbox.AuthorizePath},
	})
	s.srv = s.listen(false, map[string]route{
		MediaflowTokenPath: {endpoint: TokenEndpoint, target: sandbox.TokenPath},
	})
	s.login = login.URL
	return &Mediaflow{s}
}

// LoginURL is the base URL of the host of the authorize page.
func (m *Mediaflow) LoginURL() string { return m.login }

// EchoForeignState makes token answers echo a state other than the one the
// client sent or authorized with, as a mix-up would.
func (m *Mediaflow) EchoForeignState(on bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.foreignState = on
}

// MediaHaven (seed 004): the authorization code flow starts at
// /auth?client_id=…; the token endpoint is /auth/oauth2/token with the
// client's credentials in the body; the password grant lives at another
// endpoint, /auth/ropc.php. A refresh returns a new access_token and a new
// refresh_token and invalidates both old ones; presenting an old refresh
// token again revokes the whole grant, and the fake fails the test. A dead
// refresh token is answered 401 ("start the flow back from the
// beginning"). Introspection (RFC 7662) is at /auth/introspect.php with HTTP
// Basic client authentication and the token as a POST parameter. There is
// no revocation endpoint.
type MediaHaven struct{ *Server }

// MediaHaven's client (the document's example) and paths.
const (
	MediaHavenClientID       = "882rgLgNTSqwBSnUUbC3qRiUfMGhorzZ"
	MediaHavenClientSecret   = "KwfoaaXUDc6xdQKxBwxvxK55D4wZQ757"
	MediaHavenAuthorizePath  = "/auth"
	MediaHavenTokenPath      = "/auth/oauth2/token"
	MediaHavenPasswordPath   = "/auth/ropc.php"
	MediaHavenIntrospectPath = "/auth/introspect.php"
)

// NewMediaHaven starts a MediaHaven fake. The test fails when a refresh
// token is presented a second time, a token request lacks body credentials
// or asks a path for a grant it does not serve (the password grant at the
// token endpoint included), an introspection request lacks HTTP Basic or
// carries the token elsewhere than in the POST body, or an authorization
// request lacks client_id or names an unregistered redirect_uri.
func NewMediaHaven(t testing.TB, opts ...Option) *MediaHaven {
	t.Helper()
	s := newServer(t, "MediaHaven", newConfig(opts), MediaHavenClientID, sandbox.Config{
		Clients:             map[string]string{MediaHavenClientID: MediaHavenClientSecret},
		Users:               map[string]string{User: Password},
		RedirectURIs:        map[string][]string{MediaHavenClientID: nil},
		RefreshTokens:       true,
		RotateRefreshTokens: true,
		RefreshErrorStatus:  http.StatusUnauthorized,
		PasswordTokenPath:   MediaHavenPasswordPath,
	})
	s.rotates = true
	s.check = func(e Endpoint, r *http.Request, form url.Values) *answer {
		switch e {
		case AuthorizeEndpoint:
			params := authorizeParams(r, form)
			if params.Get("client_id") == "" {
				s.t.Errorf("fakes: MediaHaven: authorization request without client_id")
			}
			if r.Method == http.MethodGet && params.Get("response_type") == "" {
				// /auth?client_id=… is the whole documented request.
				params.Set("response_type", "code")
				r.URL.RawQuery = params.Encode()
			}
		case TokenEndpoint:
			if a := s.requireBodyCredentials(r, form, "MediaHaven's token endpoints take client_id and client_secret as POST data"); a != nil {
				return a
			}
			if r.URL.Path == MediaHavenPasswordPath {
				return s.requireGrant(r, form, sandbox.GrantPassword)
			}
			return s.requireGrant(r, form, sandbox.GrantAuthorizationCode, sandbox.GrantRefreshToken)
		case IntrospectionEndpoint:
			ca := authOf(r, form)
			if !ca.basic {
				s.t.Errorf("fakes: MediaHaven: introspection request without HTTP Basic (Authorization = %q); it requires Basic with client_id and client_secret",
					r.Header.Get("Authorization"))
				return oauthError(http.StatusUnauthorized, "invalid_client", "Basic authentication required")
			}
			if form.Get("token") == "" {
				s.t.Errorf("fakes: MediaHaven: introspection request without token in the POST body (query %q)", r.URL.RawQuery)
				return oauthError(http.StatusBadRequest, "invalid_request", "token is required")
			}
			if ca.basicID != s.clientID || ca.basicPass != s.clientSecret {
				return oauthError(http.StatusUnauthorized, "invalid_client", "Bad client credentials")
			}
			passBasicToSandbox(r)
		}
		return nil
	}
	s.srv = s.listen(false, map[string]route{
		MediaHavenAuthorizePath:  {endpoint: AuthorizeEndpoint, target: sandbox.AuthorizePath},
		MediaHavenTokenPath:      {endpoint: TokenEndpoint, target: sandbox.TokenPath},
		MediaHavenPasswordPath:   {endpoint: TokenEndpoint, target: MediaHavenPasswordPath},
		MediaHavenIntrospectPath: {endpoint: IntrospectionEndpoint, target: sandbox.IntrospectPath},
	})
	return &MediaHaven{s}
}

// SetBareUnauthorized makes a refresh with a dead refresh token answer a
// bare 401 with an HTML body, no OAuth error code, as the document leaves
// open; off, the 401 carries invalid_grant.
func (m *MediaHaven) SetBareUnauthorized(on bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.bare401 = on
}
