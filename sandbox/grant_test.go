package sandbox

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// testUsers are the resource owners of the user-grant fixtures.
var testUsers = map[string]string{"alice": "wonderland", "bob": "the builder"}

// Redirect URIs: svc has one, other-team two, mediahound1 none.
const (
	cbURI      = "https://app.example/cb"
	cbURIQuery = "https://app.example/cb2?tenant=7"
)

var testRedirects = map[string][]string{"svc": {cbURI}, "other-team": {cbURI, cbURIQuery}}

// The PKCE example of RFC 7636 Appendix B.
const (
	pkceVerifier  = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
	pkceChallenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
	otherVerifier = "this-is-a-perfectly-valid-but-wrong-code-verifier"
)

// userScopes are the scopes of the user-grant fixtures.
var userScopes = []string{"read", "write", "admin", "openid", "offline_access"}

// newUserFixture starts a Server with testClients, testUsers, testRedirects,
// userScopes and refresh tokens; edit adjusts the Config first.
func newUserFixture(t *testing.T, edit func(*Config)) *fixture {
	t.Helper()
	return newFixture(t, func(c *Config) {
		c.Users = testUsers
		c.RedirectURIs = testRedirects
		c.Scopes = userScopes
		c.RefreshTokens = true
		if edit != nil {
			edit(c)
		}
	})
}

// as returns a call to path (TokenPath when empty) authenticated as client
// by HTTP Basic, with the form built from key, value pairs.
func as(client, path string, kv ...string) call {
	form := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		form.Set(kv[i], kv[i+1])
	}
	return call{path: path, basic: []string{client, testClients[client]}, form: form}
}

// tokenBody is a decoded token endpoint response.
type tokenBody struct {
	AccessToken  string `json:"access_token"`
	TokenType    string `json:"token_type"`
	ExpiresIn    int64  `json:"expires_in"`
	RefreshToken string `json:"refresh_token"`
	Scope        string `json:"scope"`
	IDToken      string `json:"id_token"`
	State        string `json:"state"`
	Error        string `json:"error"`
}

// tokens makes the token request c and decodes the answer.
func (f *fixture) tokens(t *testing.T, c call) (int, tokenBody) {
	t.Helper()
	res := f.do(t, c)
	var body tokenBody
	if err := json.Unmarshal([]byte(res.raw), &body); err != nil {
		t.Fatalf("token response %q: got error %v, want JSON", res.raw, err)
	}
	return res.status, body
}

// mustTokens makes the token request c and fails unless it succeeds.
func (f *fixture) mustTokens(t *testing.T, c call) tokenBody {
	t.Helper()
	status, body := f.tokens(t, c)
	if status != http.StatusOK || body.AccessToken == "" {
		t.Fatalf("token request %v: got %d %+v, want 200 with an access_token", c.form, status, body)
	}
	return body
}

// password runs the password grant for alice as svc with scope.
func (f *fixture) password(t *testing.T, scope string) tokenBody {
	t.Helper()
	return f.mustTokens(t, as("svc", "", "grant_type", "password", "username", "alice", "password", "wonderland", "scope", scope))
}

// refresh runs the refresh_token grant as svc.
func (f *fixture) refresh(t *testing.T, refreshToken string) (int, tokenBody) {
	t.Helper()
	return f.tokens(t, as("svc", "", "grant_type", "refresh_token", "refresh_token", refreshToken))
}

// active reports whether the protected resource accepts accessToken.
func (f *fixture) active(t *testing.T, accessToken string) bool {
	t.Helper()
	return f.do(t, call{method: http.MethodGet, path: WhoamiPath, header: http.Header{"Authorization": {"Bearer " + accessToken}}}).status == http.StatusOK
}

// mustCode mints a code with Server.Authorize and fails on error.
func (f *fixture) mustCode(t *testing.T, clientID, redirectURI, scope, challenge string) string {
	t.Helper()
	code, err := f.s.Authorize(clientID, redirectURI, "alice", scope, "st", challenge)
	if err != nil {
		t.Fatalf("Authorize: got error %v, want nil", err)
	}
	return code
}

func TestNewUserGrantConfig(t *testing.T) {
	base := func(edit func(*Config)) Config {
		c := Config{Clients: map[string]string{"svc": "s3cret"}, Users: map[string]string{"alice": "pw"}, RedirectURIs: map[string][]string{"svc": {cbURI}}, RefreshTokens: true}
		edit(&c)
		return c
	}
	tests := []struct {
		name string
		give Config
		want error
	}{
		{name: "valid with everything", give: base(func(c *Config) {
			c.Scopes, c.RefreshRequiresOfflineAccess, c.RotateRefreshTokens, c.IDTokens = userScopes, true, true, true
			c.CodeLifetime, c.RefreshTokenLifetime, c.RefreshErrorStatus, c.PasswordTokenPath = time.Minute, time.Hour, 401, "/auth/ropc.php"
			c.RequirePKCE, c.EchoState = true, true
		}), want: nil},
		{name: "custom scheme redirect", give: base(func(c *Config) { c.RedirectURIs = map[string][]string{"svc": {"com.example.app:/cb"}} }), want: nil},
		{name: "redirect URIs of unknown client", give: base(func(c *Config) { c.RedirectURIs = map[string][]string{"ghost": {cbURI}} }), want: ErrInvalidConfig},
		{name: "no redirect URI", give: base(func(c *Config) { c.RedirectURIs = map[string][]string{"svc": {}} }), want: ErrInvalidConfig},
		{name: "relative redirect URI", give: base(func(c *Config) { c.RedirectURIs = map[string][]string{"svc": {"/cb"}} }), want: ErrInvalidConfig},
		{name: "redirect URI with fragment", give: base(func(c *Config) { c.RedirectURIs = map[string][]string{"svc": {cbURI + "#x"}} }), want: ErrInvalidConfig},
		{name: "empty username", give: base(func(c *Config) { c.Users = map[string]string{"": "pw"} }), want: ErrInvalidConfig},
		{name: "username with colon", give: base(func(c *Config) { c.Users = map[string]string{"a:b": "pw"} }), want: ErrInvalidConfig},
		{name: "empty password", give: base(func(c *Config) { c.Users = map[string]string{"alice": ""} }), want: ErrInvalidConfig},
		{name: "negative code lifetime", give: base(func(c *Config) { c.CodeLifetime = -time.Second }), want: ErrInvalidConfig},
		{name: "negative refresh lifetime", give: base(func(c *Config) { c.RefreshTokenLifetime = -time.Second }), want: ErrInvalidConfig},
		{name: "rotation without refresh tokens", give: base(func(c *Config) { c.RefreshTokens, c.RotateRefreshTokens = false, true }), want: ErrInvalidConfig},
		{name: "offline_access without refresh tokens", give: base(func(c *Config) { c.RefreshTokens, c.RefreshRequiresOfflineAccess = false, true }), want: ErrInvalidConfig},
		{name: "offline_access not a known scope", give: base(func(c *Config) { c.Scopes, c.RefreshRequiresOfflineAccess = []string{"read"}, true }), want: ErrInvalidConfig},
		{name: "openid not a known scope", give: base(func(c *Config) { c.Scopes, c.IDTokens = []string{"read"}, true }), want: ErrInvalidConfig},
		{name: "refresh error status 200", give: base(func(c *Config) { c.RefreshErrorStatus = 200 }), want: ErrInvalidConfig},
		{name: "password path without users", give: base(func(c *Config) { c.Users, c.PasswordTokenPath = nil, "/ropc" }), want: ErrInvalidConfig},
		{name: "password path relative", give: base(func(c *Config) { c.PasswordTokenPath = "ropc" }), want: ErrInvalidConfig},
		{name: "password path unclean", give: base(func(c *Config) { c.PasswordTokenPath = "/auth/../ropc" }), want: ErrInvalidConfig},
		{name: "password path is the token path", give: base(func(c *Config) { c.PasswordTokenPath = TokenPath }), want: ErrInvalidConfig},
		{name: "password path with a wildcard", give: base(func(c *Config) { c.PasswordTokenPath = "/auth/{x}" }), want: ErrInvalidConfig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.give)
			if !errors.Is(err, tt.want) {
				t.Errorf("New: got error %v, want %v", err, tt.want)
			}
		})
	}
}

func TestPasswordGrant(t *testing.T) {
	tests := []struct {
		name        string
		edit        func(*Config)
		give        call
		wantScope   string
		wantRefresh bool
		wantPath    string // recorded
	}{
		{
			name:        "at the token endpoint",
			give:        as("svc", "", "grant_type", "password", "username", "alice", "password", "wonderland", "scope", "read"),
			wantScope:   "read",
			wantRefresh: true,
			wantPath:    TokenPath,
		},
		{
			name:      "without refresh tokens",
			edit:      func(c *Config) { c.RefreshTokens = false },
			give:      as("svc", "", "grant_type", "password", "username", "bob", "password", "the builder"),
			wantScope: "read write admin openid offline_access",
			wantPath:  TokenPath,
		},
		{
			name:        "credentials in the body, as Mediaflow sends",
			give:        call{form: url.Values{"grant_type": {"password"}, "client_id": {"svc"}, "client_secret": {"s3cret"}, "username": {"alice"}, "password": {"wonderland"}, "scope": {"write"}}},
			wantScope:   "write",
			wantRefresh: true,
			wantPath:    TokenPath,
		},
		{
			name:        "at MediaHaven's separate endpoint",
			edit:        func(c *Config) { c.PasswordTokenPath = "/auth/ropc.php" },
			give:        as("svc", "/auth/ropc.php", "grant_type", "password", "username", "alice", "password", "wonderland", "scope", "admin"),
			wantScope:   "admin",
			wantRefresh: true,
			wantPath:    "/auth/ropc.php",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newUserFixture(t, tt.edit)
			body := f.mustTokens(t, tt.give)
			if body.Scope != tt.wantScope || body.TokenType != "Bearer" || body.ExpiresIn != 3600 {
				t.Errorf("body: got %+v, want scope %q, Bearer, 3600", body, tt.wantScope)
			}
			if got := body.RefreshToken != ""; got != tt.wantRefresh {
				t.Errorf("refresh token present: got %v, want %v", got, tt.wantRefresh)
			}
			res := f.do(t, call{method: http.MethodGet, path: WhoamiPath, header: http.Header{"Authorization": {"Bearer " + body.AccessToken}}})
			if sub := res.body["sub"]; res.status != http.StatusOK || sub != tt.give.form.Get("username") {
				t.Errorf("whoami: got %d %s, want 200 with sub %q", res.status, res.raw, tt.give.form.Get("username"))
			}
			if reqs := f.s.Requests(); len(reqs) != 1 || reqs[0].Path != tt.wantPath {
				t.Errorf("Requests(): got %+v, want one request at %s", reqs, tt.wantPath)
			}
		})
	}
}

// TestGrantErrors covers the token endpoint errors of the user grants that do
// not need a code or a refresh token first.
func TestGrantErrors(t *testing.T) {
	ropc := func(c *Config) { c.PasswordTokenPath = "/auth/ropc.php" }
	tests := []struct {
		name       string
		edit       func(*Config)
		give       call
		wantStatus int
		wantError  string
	}{
		{name: "wrong password", give: as("svc", "", "grant_type", "password", "username", "alice", "password", "nope"), wantStatus: 400, wantError: "invalid_grant"},
		{name: "another user's password", give: as("svc", "", "grant_type", "password", "username", "alice", "password", "the builder"), wantStatus: 400, wantError: "invalid_grant"},
		{name: "unknown user", give: as("svc", "", "grant_type", "password", "username", "mallory", "password", "wonderland"), wantStatus: 400, wantError: "invalid_grant"},
		{name: "missing password", give: as("svc", "", "grant_type", "password", "username", "alice"), wantStatus: 400, wantError: "invalid_request"},
		{name: "unknown scope", give: as("svc", "", "grant_type", "password", "username", "alice", "password", "wonderland", "scope", "delete"), wantStatus: 400, wantError: "invalid_scope"},
		{name: "wrong client secret", give: call{basic: []string{"svc", "nope"}, form: url.Values{"grant_type": {"password"}, "username": {"alice"}, "password": {"wonderland"}}}, wantStatus: 401, wantError: "invalid_client"},
		{name: "password without users", edit: func(c *Config) { c.Users = nil }, give: as("svc", "", "grant_type", "password", "username", "alice", "password", "wonderland"), wantStatus: 400, wantError: "unsupported_grant_type"},
		{name: "password at the token path when PasswordTokenPath is set", edit: ropc, give: as("svc", "", "grant_type", "password", "username", "alice", "password", "wonderland"), wantStatus: 400, wantError: "unsupported_grant_type"},
		{name: "client_credentials at PasswordTokenPath", edit: ropc, give: as("svc", "/auth/ropc.php", "grant_type", "client_credentials"), wantStatus: 400, wantError: "unsupported_grant_type"},
		{name: "wrong password at PasswordTokenPath", edit: ropc, give: as("svc", "/auth/ropc.php", "grant_type", "password", "username", "alice", "password", "nope"), wantStatus: 400, wantError: "invalid_grant"},
		{name: "authorization_code without redirect URIs", edit: func(c *Config) { c.RedirectURIs = nil }, give: as("svc", "", "grant_type", "authorization_code", "code", "x"), wantStatus: 400, wantError: "unsupported_grant_type"},
		{name: "refresh_token without refresh tokens", edit: func(c *Config) { c.RefreshTokens = false }, give: as("svc", "", "grant_type", "refresh_token", "refresh_token", "x"), wantStatus: 400, wantError: "unsupported_grant_type"},
		{name: "missing code", give: as("svc", "", "grant_type", "authorization_code"), wantStatus: 400, wantError: "invalid_request"},
		{name: "unknown code", give: as("svc", "", "grant_type", "authorization_code", "code", "forged"), wantStatus: 400, wantError: "invalid_grant"},
		{name: "missing refresh_token", give: as("svc", "", "grant_type", "refresh_token"), wantStatus: 400, wantError: "invalid_request"},
		{name: "forged refresh_token", give: as("svc", "", "grant_type", "refresh_token", "refresh_token", "forged"), wantStatus: 400, wantError: "invalid_grant"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newUserFixture(t, tt.edit)
			status, body := f.tokens(t, tt.give)
			if status != tt.wantStatus || body.Error != tt.wantError || body.AccessToken != "" {
				t.Errorf("got %d %+v, want %d with error %q", status, body, tt.wantStatus, tt.wantError)
			}
			if got := f.s.IssuedTokens(); got != 0 {
				t.Errorf("IssuedTokens: got %d, want 0", got)
			}
		})
	}
}

func TestAuthorizationCodeGrant(t *testing.T) {
	type authz struct{ client, redirectURI, challenge string }
	tests := []struct {
		name       string
		edit       func(*Config)
		authorize  authz
		wait       time.Duration // between authorization and token request
		give       func(code string) call
		wantStatus int
		wantError  string
	}{
		{
			name:      "redirect_uri repeated",
			authorize: authz{"svc", cbURI, ""},
			give: func(code string) call {
				return as("svc", "", "grant_type", "authorization_code", "code", code, "redirect_uri", cbURI)
			},
			wantStatus: 200,
		},
		{
			name:       "redirect_uri omitted at both steps, as MediaHaven does",
			authorize:  authz{"svc", "", ""},
			give:       func(code string) call { return as("svc", "", "grant_type", "authorization_code", "code", code) },
			wantStatus: 200,
		},
		{
			name:      "redirect_uri omitted at authorization, the registered one at token",
			authorize: authz{"svc", "", ""},
			give: func(code string) call {
				return as("svc", "", "grant_type", "authorization_code", "code", code, "redirect_uri", cbURI)
			},
			wantStatus: 200,
		},
		{
			name:      "PKCE S256",
			authorize: authz{"svc", cbURI, pkceChallenge},
			give: func(code string) call {
				return as("svc", "", "grant_type", "authorization_code", "code", code, "redirect_uri", cbURI, "code_verifier", pkceVerifier)
			},
			wantStatus: 200,
		},
		{
			name:      "59 seconds later",
			authorize: authz{"svc", cbURI, ""},
			wait:      59 * time.Second,
			give: func(code string) call {
				return as("svc", "", "grant_type", "authorization_code", "code", code, "redirect_uri", cbURI)
			},
			wantStatus: 200,
		},
		{
			name:      "expired: MediaValet's 60 seconds",
			authorize: authz{"svc", cbURI, ""},
			wait:      60 * time.Second,
			give: func(code string) call {
				return as("svc", "", "grant_type", "authorization_code", "code", code, "redirect_uri", cbURI)
			},
			wantStatus: 400,
			wantError:  "invalid_grant",
		},
		{
			name:      "CodeLifetime",
			edit:      func(c *Config) { c.CodeLifetime = 10 * time.Minute },
			authorize: authz{"svc", cbURI, ""},
			wait:      9 * time.Minute,
			give: func(code string) call {
				return as("svc", "", "grant_type", "authorization_code", "code", code, "redirect_uri", cbURI)
			},
			wantStatus: 200,
		},
		{
			name:       "redirect_uri missing at token",
			authorize:  authz{"svc", cbURI, ""},
			give:       func(code string) call { return as("svc", "", "grant_type", "authorization_code", "code", code) },
			wantStatus: 400,
			wantError:  "invalid_grant",
		},
		{
			name:      "redirect_uri differs at token",
			authorize: authz{"other-team", cbURI, ""},
			give: func(code string) call {
				return as("other-team", "", "grant_type", "authorization_code", "code", code, "redirect_uri", cbURIQuery)
			},
			wantStatus: 400,
			wantError:  "invalid_grant",
		},
		{
			name:      "redirect_uri with a trailing slash",
			authorize: authz{"svc", cbURI, ""},
			give: func(code string) call {
				return as("svc", "", "grant_type", "authorization_code", "code", code, "redirect_uri", cbURI+"/")
			},
			wantStatus: 400,
			wantError:  "invalid_grant",
		},
		{
			name:      "code of another client",
			authorize: authz{"svc", cbURI, ""},
			give: func(code string) call {
				return as("other-team", "", "grant_type", "authorization_code", "code", code, "redirect_uri", cbURI)
			},
			wantStatus: 400,
			wantError:  "invalid_grant",
		},
		{
			name:      "wrong code_verifier",
			authorize: authz{"svc", cbURI, pkceChallenge},
			give: func(code string) call {
				return as("svc", "", "grant_type", "authorization_code", "code", code, "redirect_uri", cbURI, "code_verifier", otherVerifier)
			},
			wantStatus: 400,
			wantError:  "invalid_grant",
		},
		{
			name:      "malformed code_verifier",
			authorize: authz{"svc", cbURI, pkceChallenge},
			give: func(code string) call {
				return as("svc", "", "grant_type", "authorization_code", "code", code, "redirect_uri", cbURI, "code_verifier", "short")
			},
			wantStatus: 400,
			wantError:  "invalid_grant",
		},
		{
			name:      "missing code_verifier, even without RequirePKCE",
			authorize: authz{"svc", cbURI, pkceChallenge},
			give: func(code string) call {
				return as("svc", "", "grant_type", "authorization_code", "code", code, "redirect_uri", cbURI)
			},
			wantStatus: 400,
			wantError:  "invalid_grant",
		},
		{
			name:      "code_verifier without a challenge",
			authorize: authz{"svc", cbURI, ""},
			give: func(code string) call {
				return as("svc", "", "grant_type", "authorization_code", "code", code, "redirect_uri", cbURI, "code_verifier", pkceVerifier)
			},
			wantStatus: 400,
			wantError:  "invalid_grant",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newUserFixture(t, tt.edit)
			code := f.mustCode(t, tt.authorize.client, tt.authorize.redirectURI, "read offline_access", tt.authorize.challenge)
			f.clock.Advance(tt.wait)
			status, body := f.tokens(t, tt.give(code))
			if status != tt.wantStatus || body.Error != tt.wantError {
				t.Errorf("got %d %+v, want %d with error %q", status, body, tt.wantStatus, tt.wantError)
			}
			if got, want := body.RefreshToken != "", tt.wantStatus == 200; got != want {
				t.Errorf("refresh token present: got %v, want %v", got, want)
			}
		})
	}
}

// TestAuthorizationCodeRetryAfterFailure checks that a failed redemption
// (a wrong verifier) does not use the code up.
func TestAuthorizationCodeRetryAfterFailure(t *testing.T) {
	f := newUserFixture(t, nil)
	code := f.mustCode(t, "svc", cbURI, "read", pkceChallenge)
	if status, body := f.tokens(t, as("svc", "", "grant_type", "authorization_code", "code", code, "redirect_uri", cbURI, "code_verifier", otherVerifier)); status != 400 || body.Error != "invalid_grant" {
		t.Fatalf("wrong verifier: got %d %+v, want 400 invalid_grant", status, body)
	}
	f.mustTokens(t, as("svc", "", "grant_type", "authorization_code", "code", code, "redirect_uri", cbURI, "code_verifier", pkceVerifier))
}

func TestAuthorizationCodeReuse(t *testing.T) {
	tests := []struct {
		name string
		wait time.Duration // before the second redemption
	}{
		{name: "at once", wait: 0},
		{name: "after the code expired", wait: 2 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newUserFixture(t, nil)
			code := f.mustCode(t, "svc", cbURI, "read offline_access", "")
			redeem := as("svc", "", "grant_type", "authorization_code", "code", code, "redirect_uri", cbURI)
			first := f.mustTokens(t, redeem)
			f.clock.Advance(tt.wait)

			if status, body := f.tokens(t, redeem); status != 400 || body.Error != "invalid_grant" {
				t.Errorf("second redemption: got %d %+v, want 400 invalid_grant", status, body)
			}
			if f.active(t, first.AccessToken) {
				t.Error("access token of a code redeemed twice: got active, want revoked")
			}
			if status, body := f.refresh(t, first.RefreshToken); status != 400 || body.Error != "invalid_grant" {
				t.Errorf("refresh token of a code redeemed twice: got %d %+v, want 400 invalid_grant", status, body)
			}
			if got := f.s.ReusedRefreshTokens(); got != 0 {
				t.Errorf("ReusedRefreshTokens: got %d, want 0: a reused code is not a reused refresh token", got)
			}
		})
	}
}

func TestRefreshWithoutRotation(t *testing.T) {
	f := newUserFixture(t, nil)
	first := f.password(t, "read write")

	for i := range 3 { // the same refresh token works again and again
		status, body := f.refresh(t, first.RefreshToken)
		if status != http.StatusOK || body.AccessToken == "" || body.RefreshToken != "" || body.Scope != "read write" {
			t.Fatalf("refresh %d: got %d %+v, want 200 with an access token, no refresh token, scope read write", i, status, body)
		}
		if !f.active(t, body.AccessToken) {
			t.Errorf("refresh %d: new access token inactive, want active", i)
		}
	}
	if !f.active(t, first.AccessToken) {
		t.Error("first access token after refreshes without rotation: got inactive, want active")
	}
	if got := f.s.RefreshCalls(); got != 3 {
		t.Errorf("RefreshCalls: got %d, want 3", got)
	}
	if got := f.s.ReusedRefreshTokens(); got != 0 {
		t.Errorf("ReusedRefreshTokens: got %d, want 0", got)
	}
}

func TestRefreshRotation(t *testing.T) {
	f := newUserFixture(t, func(c *Config) { c.RotateRefreshTokens = true })
	first := f.password(t, "read")

	status, second := f.refresh(t, first.RefreshToken)
	if status != http.StatusOK || second.RefreshToken == "" || second.RefreshToken == first.RefreshToken {
		t.Fatalf("first refresh: got %d %+v, want 200 with a new refresh token", status, second)
	}
	if f.active(t, first.AccessToken) {
		t.Error("access token replaced by a rotation: got active, want inactive")
	}
	status, third := f.refresh(t, second.RefreshToken)
	if status != http.StatusOK || third.RefreshToken == second.RefreshToken {
		t.Fatalf("second refresh: got %d %+v, want 200 with a new refresh token", status, third)
	}
	if !f.active(t, third.AccessToken) || f.active(t, second.AccessToken) {
		t.Error("after the second refresh: want only the newest access token active")
	}
	if got := f.s.ReusedRefreshTokens(); got != 0 {
		t.Errorf("ReusedRefreshTokens before any reuse: got %d, want 0", got)
	}

	// Reuse detection: presenting the first, replaced, refresh token revokes
	// the lineage, the newest tokens included.
	if status, body := f.refresh(t, first.RefreshToken); status != 400 || body.Error != "invalid_grant" {
		t.Errorf("reused refresh token: got %d %+v, want 400 invalid_grant", status, body)
	}
	if f.active(t, third.AccessToken) {
		t.Error("newest access token after reuse: got active, want revoked")
	}
	if status, body := f.refresh(t, third.RefreshToken); status != 400 || body.Error != "invalid_grant" {
		t.Errorf("newest refresh token after reuse: got %d %+v, want 400 invalid_grant", status, body)
	}
	if got := f.s.ReusedRefreshTokens(); got != 1 {
		t.Errorf("ReusedRefreshTokens: got %d, want 1", got)
	}
	if got := f.s.RefreshCalls(); got != 4 {
		t.Errorf("RefreshCalls: got %d, want 4", got)
	}

	// Another lineage of the same user and client is unaffected.
	other := f.password(t, "read")
	if status, _ := f.refresh(t, other.RefreshToken); status != http.StatusOK {
		t.Errorf("refresh in another lineage: got %d, want 200", status)
	}
}

func TestRefreshScope(t *testing.T) {
	tests := []struct {
		name      string
		original  string // scope of the password grant
		give      string // scope of the refresh
		wantScope string
		wantError string
	}{
		{name: "omitted keeps the original", original: "read write", give: "", wantScope: "read write"},
		{name: "narrowed", original: "read write", give: "write", wantScope: "write"},
		{name: "same", original: "read write", give: "write read", wantScope: "write read"},
		{name: "widened", original: "read write", give: "read admin", wantError: "invalid_scope"},
		{name: "malformed", original: "read write", give: "read  write", wantError: "invalid_scope"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newUserFixture(t, nil)
			first := f.password(t, tt.original)
			_, body := f.tokens(t, as("svc", "", "grant_type", "refresh_token", "refresh_token", first.RefreshToken, "scope", tt.give))
			if body.Scope != tt.wantScope || body.Error != tt.wantError {
				t.Errorf("got %+v, want scope %q error %q", body, tt.wantScope, tt.wantError)
			}
			// A narrowed refresh does not narrow the grant.
			if _, again := f.refresh(t, first.RefreshToken); again.Scope != tt.original {
				t.Errorf("refresh without scope afterwards: got scope %q, want %q", again.Scope, tt.original)
			}
		})
	}
}

func TestRefreshErrors(t *testing.T) {
	tests := []struct {
		name       string
		edit       func(*Config)
		give       func(t *testing.T, f *fixture, tok tokenBody) call
		wantStatus int
		wantError  string
	}{
		{
			name: "refresh token of another client",
			give: func(t *testing.T, f *fixture, tok tokenBody) call {
				return as("other-team", "", "grant_type", "refresh_token", "refresh_token", tok.RefreshToken)
			},
			wantStatus: 400,
			wantError:  "invalid_grant",
		},
		{
			name: "an access token",
			give: func(t *testing.T, f *fixture, tok tokenBody) call {
				return as("svc", "", "grant_type", "refresh_token", "refresh_token", tok.AccessToken)
			},
			wantStatus: 400,
			wantError:  "invalid_grant",
		},
		{
			name: "tampered",
			give: func(t *testing.T, f *fixture, tok tokenBody) call {
				b, _ := base64.RawURLEncoding.DecodeString(tok.RefreshToken)
				b[lineageIDLen+refreshGenLen-1]++ // a later generation, without the key
				return as("svc", "", "grant_type", "refresh_token", "refresh_token", base64.RawURLEncoding.EncodeToString(b))
			},
			wantStatus: 400,
			wantError:  "invalid_grant",
		},
		{
			name: "expired",
			give: func(t *testing.T, f *fixture, tok tokenBody) call {
				f.clock.Advance(DefaultRefreshTokenLifetime)
				return as("svc", "", "grant_type", "refresh_token", "refresh_token", tok.RefreshToken)
			},
			wantStatus: 400,
			wantError:  "invalid_grant",
		},
		{
			name: "RefreshTokenLifetime",
			edit: func(c *Config) { c.RefreshTokenLifetime = time.Minute },
			give: func(t *testing.T, f *fixture, tok tokenBody) call {
				f.clock.Advance(time.Minute)
				return as("svc", "", "grant_type", "refresh_token", "refresh_token", tok.RefreshToken)
			},
			wantStatus: 400,
			wantError:  "invalid_grant",
		},
		{
			name: "grant revoked by the user",
			give: func(t *testing.T, f *fixture, tok tokenBody) call {
				f.s.RevokeGrant(tok.RefreshToken)
				return as("svc", "", "grant_type", "refresh_token", "refresh_token", tok.RefreshToken)
			},
			wantStatus: 400,
			wantError:  "invalid_grant",
		},
		{
			name: "MediaHaven answers 401",
			edit: func(c *Config) { c.RefreshErrorStatus = http.StatusUnauthorized },
			give: func(t *testing.T, f *fixture, tok tokenBody) call {
				f.s.RevokeGrant(tok.RefreshToken)
				return as("svc", "", "grant_type", "refresh_token", "refresh_token", tok.RefreshToken)
			},
			wantStatus: 401,
			wantError:  "invalid_grant",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newUserFixture(t, tt.edit)
			tok := f.password(t, "read")
			status, body := f.tokens(t, tt.give(t, f, tok))
			if status != tt.wantStatus || body.Error != tt.wantError || body.AccessToken != "" {
				t.Errorf("got %d %+v, want %d with error %q", status, body, tt.wantStatus, tt.wantError)
			}
			if got := f.s.RefreshCalls(); got != 1 {
				t.Errorf("RefreshCalls: got %d, want 1", got)
			}
			if got := f.s.ReusedRefreshTokens(); got != 0 {
				t.Errorf("ReusedRefreshTokens: got %d, want 0", got)
			}
		})
	}
}

// TestRevokeGrant checks that RevokeGrant ends every token of a lineage and
// no other.
func TestRevokeGrant(t *testing.T) {
	f := newUserFixture(t, func(c *Config) { c.RotateRefreshTokens = true })
	first := f.password(t, "read")
	_, second := f.refresh(t, first.RefreshToken)
	other := f.password(t, "read")

	f.s.RevokeGrant(first.RefreshToken) // a replaced token names the lineage too
	f.s.RevokeGrant("not-a-refresh-token")

	if f.active(t, second.AccessToken) {
		t.Error("access token of a revoked grant: got active, want revoked")
	}
	if status, _ := f.refresh(t, second.RefreshToken); status != 400 {
		t.Errorf("refresh token of a revoked grant: got %d, want 400", status)
	}
	if !f.active(t, other.AccessToken) {
		t.Error("access token of another grant: got revoked, want active")
	}
	if got := f.s.ReusedRefreshTokens(); got != 0 {
		t.Errorf("ReusedRefreshTokens: got %d, want 0", got)
	}
}

func TestRefreshRequiresOfflineAccess(t *testing.T) {
	tests := []struct {
		name        string
		give        func(t *testing.T, f *fixture, scope string) call
		scope       string
		wantRefresh bool
	}{
		{name: "password with offline_access", give: passwordCall, scope: "openid offline_access", wantRefresh: true},
		{name: "password without", give: passwordCall, scope: "openid read", wantRefresh: false},
		{name: "code with offline_access", give: codeCall, scope: "read offline_access", wantRefresh: true},
		{name: "code without", give: codeCall, scope: "read", wantRefresh: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newUserFixture(t, func(c *Config) { c.RefreshRequiresOfflineAccess = true })
			body := f.mustTokens(t, tt.give(t, f, tt.scope))
			if got := body.RefreshToken != ""; got != tt.wantRefresh {
				t.Errorf("refresh token present: got %v, want %v", got, tt.wantRefresh)
			}
		})
	}
}

// passwordCall is the password grant for alice as svc.
func passwordCall(t *testing.T, f *fixture, scope string) call {
	return as("svc", "", "grant_type", "password", "username", "alice", "password", "wonderland", "scope", scope)
}

// codeCall mints a code for alice and svc and returns its redemption.
func codeCall(t *testing.T, f *fixture, scope string) call {
	return as("svc", "", "grant_type", "authorization_code", "code", f.mustCode(t, "svc", cbURI, scope, ""), "redirect_uri", cbURI)
}

func TestEchoState(t *testing.T) {
	tests := []struct {
		name string
		echo bool
		give call
		want string
	}{
		{name: "password", echo: true, give: as("svc", "", "grant_type", "password", "username", "alice", "password", "wonderland", "state", "s-1"), want: "s-1"},
		{name: "client_credentials", echo: true, give: as("svc", "", "grant_type", "client_credentials", "state", "s-2"), want: "s-2"},
		{name: "without state", echo: true, give: as("svc", "", "grant_type", "client_credentials"), want: ""},
		{name: "EchoState off", echo: false, give: as("svc", "", "grant_type", "password", "username", "alice", "password", "wonderland", "state", "s-1"), want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newUserFixture(t, func(c *Config) { c.EchoState = tt.echo })
			res := f.do(t, tt.give)
			if got, _ := res.body["state"].(string); res.status != http.StatusOK || got != tt.want {
				t.Errorf("got %d %s, want 200 with state %q", res.status, res.raw, tt.want)
			}
		})
	}
}

func TestIDTokens(t *testing.T) {
	// server stands for the test server's URL in want.Iss.
	const server = "SERVER"
	alice := idClaims{Iss: server, Sub: "alice", Aud: "svc", Iat: t0.Unix(), Exp: t0.Add(time.Hour).Unix()}
	withNonce := alice
	withNonce.Nonce = "n-0S6_WzA2Mj"
	tests := []struct {
		name     string
		idTokens bool
		give     func(t *testing.T, f *fixture) tokenBody
		want     idClaims // zero: no id_token
	}{
		{
			name:     "password with openid",
			idTokens: true,
			give:     func(t *testing.T, f *fixture) tokenBody { return f.password(t, "openid read") },
			want:     alice,
		},
		{
			name:     "password without openid",
			idTokens: true,
			give:     func(t *testing.T, f *fixture) tokenBody { return f.password(t, "read") },
		},
		{
			name:     "IDTokens off",
			idTokens: false,
			give:     func(t *testing.T, f *fixture) tokenBody { return f.password(t, "openid read") },
		},
		{
			name:     "client_credentials with openid",
			idTokens: true,
			give: func(t *testing.T, f *fixture) tokenBody {
				return f.mustTokens(t, as("svc", "", "grant_type", "client_credentials", "scope", "openid"))
			},
		},
		{
			name:     "refresh with openid",
			idTokens: true,
			give: func(t *testing.T, f *fixture) tokenBody {
				_, body := f.refresh(t, f.password(t, "openid offline_access").RefreshToken)
				return body
			},
			want: alice,
		},
		{
			name:     "authorization code with a nonce",
			idTokens: true,
			give: func(t *testing.T, f *fixture) tokenBody {
				q := url.Values{"response_type": {"code"}, "client_id": {"svc"}, "scope": {"openid api"}, "nonce": {"n-0S6_WzA2Mj"}}
				res := f.browse(t, http.MethodGet, AuthorizePath+"?"+q.Encode(), nil, http.Header{"Authorization": {basicUser("alice", "wonderland")}})
				code := redirectQuery(t, res).Get("code")
				return f.mustTokens(t, as("svc", "", "grant_type", "authorization_code", "code", code))
			},
			want: withNonce,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newUserFixture(t, func(c *Config) { c.IDTokens, c.Scopes = tt.idTokens, nil })
			got := claimsOf(t, tt.give(t, f).IDToken, "s3cret")
			want := tt.want
			want.Iss = strings.Replace(want.Iss, server, f.srv.URL, 1)
			if got != want {
				t.Errorf("id_token claims: got %+v, want %+v", got, want)
			}
		})
	}
}

// claimsOf checks the HS256 signature of idToken with key and returns its
// claims; none when idToken is empty.
func claimsOf(t *testing.T, idToken, key string) idClaims {
	t.Helper()
	if idToken == "" {
		return idClaims{}
	}
	parts := strings.Split(idToken, ".")
	if len(parts) != 3 {
		t.Fatalf("id_token %q: got %d parts, want 3", idToken, len(parts))
	}
	header, _ := base64.RawURLEncoding.DecodeString(parts[0])
	if string(header) != `{"alg":"HS256","typ":"JWT"}` {
		t.Errorf("id_token header: got %s, want HS256 JWT", header)
	}
	m := hmac.New(sha256.New, []byte(key))
	m.Write([]byte(parts[0] + "." + parts[1]))
	if sig, _ := base64.RawURLEncoding.DecodeString(parts[2]); !hmac.Equal(sig, m.Sum(nil)) {
		t.Error("id_token signature: does not verify with the client secret")
	}
	payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
	var claims idClaims
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatalf("id_token claims %s: got error %v, want JSON", payload, err)
	}
	return claims
}

func TestRevokeEndpoint(t *testing.T) {
	tests := []struct {
		name string
		// give returns the revocation request and the access token whose fate it decides.
		give       func(t *testing.T, f *fixture) (call, string)
		wantStatus int
		wantError  string
		wantActive bool
	}{
		{
			name: "access token",
			give: func(t *testing.T, f *fixture) (call, string) {
				tok := f.password(t, "read")
				return as("svc", RevokePath, "token", tok.AccessToken, "token_type_hint", "access_token"), tok.AccessToken
			},
			wantStatus: 200,
		},
		{
			name: "client_credentials token, credentials in the body",
			give: func(t *testing.T, f *fixture) (call, string) {
				tok := f.token(t, "read")
				return call{path: RevokePath, form: url.Values{"token": {tok}, "client_id": {"svc"}, "client_secret": {"s3cret"}}}, tok
			},
			wantStatus: 200,
		},
		{
			name: "refresh token revokes its lineage",
			give: func(t *testing.T, f *fixture) (call, string) {
				tok := f.password(t, "read")
				return as("svc", RevokePath, "token", tok.RefreshToken, "token_type_hint", "refresh_token"), tok.AccessToken
			},
			wantStatus: 200,
		},
		{
			name: "refresh token with the wrong hint",
			give: func(t *testing.T, f *fixture) (call, string) {
				tok := f.password(t, "read")
				return as("svc", RevokePath, "token", tok.RefreshToken, "token_type_hint", "access_token"), tok.AccessToken
			},
			wantStatus: 200,
		},
		{
			name: "unknown token",
			give: func(t *testing.T, f *fixture) (call, string) {
				return as("svc", RevokePath, "token", "never-issued"), f.password(t, "read").AccessToken
			},
			wantStatus: 200,
			wantActive: true,
		},
		{
			name: "token of another client",
			give: func(t *testing.T, f *fixture) (call, string) {
				tok := f.password(t, "read")
				return as("other-team", RevokePath, "token", tok.RefreshToken), tok.AccessToken
			},
			wantStatus: 400,
			wantError:  "unauthorized_client",
			wantActive: true,
		},
		{
			name: "missing token",
			give: func(t *testing.T, f *fixture) (call, string) {
				return as("svc", RevokePath), f.password(t, "read").AccessToken
			},
			wantStatus: 400,
			wantError:  "invalid_request",
			wantActive: true,
		},
		{
			name: "no client authentication",
			give: func(t *testing.T, f *fixture) (call, string) {
				tok := f.password(t, "read")
				return call{path: RevokePath, form: url.Values{"token": {tok.AccessToken}}}, tok.AccessToken
			},
			wantStatus: 401,
			wantError:  "invalid_client",
			wantActive: true,
		},
		{
			name: "GET",
			give: func(t *testing.T, f *fixture) (call, string) {
				return call{method: http.MethodGet, path: RevokePath, basic: []string{"svc", "s3cret"}}, f.password(t, "read").AccessToken
			},
			wantStatus: 405,
			wantError:  "invalid_request",
			wantActive: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newUserFixture(t, nil)
			c, probe := tt.give(t, f)
			res := f.do(t, c)
			if got, _ := res.body["error"].(string); res.status != tt.wantStatus || got != tt.wantError {
				t.Errorf("got %d %s, want %d with error %q", res.status, res.raw, tt.wantStatus, tt.wantError)
			}
			if got := f.active(t, probe); got != tt.wantActive {
				t.Errorf("access token active afterwards: got %v, want %v", got, tt.wantActive)
			}
			if got := f.s.TokenCalls(); got != 1 { // the grant that made the probe
				t.Errorf("TokenCalls: got %d, want 1: revocation is not the token endpoint", got)
			}
		})
	}
}

// TestConcurrentRotatingRefresh presents one rotating refresh token 50 times
// at once. Exactly one request wins; every other one presents a token the
// winner has replaced, which is reuse: the server answers invalid_grant and
// revokes the whole lineage, the winner's new tokens included. This is what
// a broker that refreshes one key from several goroutines or replicas
// without a lock does to its users, so broker tests assert that
// ReusedRefreshTokens stays 0.
func TestConcurrentRotatingRefresh(t *testing.T) {
	const n = 50
	f := newUserFixture(t, func(c *Config) { c.RotateRefreshTokens = true })
	first := f.password(t, "read")

	start := make(chan struct{})
	results := make(chan tokenBody, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			req := f.request(t, context.Background(), as("svc", "", "grant_type", "refresh_token", "refresh_token", first.RefreshToken))
			<-start
			resp, err := f.srv.Client().Do(req)
			if err != nil {
				t.Errorf("Do: got error %v, want nil", err)
				return
			}
			defer resp.Body.Close()
			var body tokenBody
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
				t.Errorf("decode: got error %v, want nil", err)
			}
			results <- body
		})
	}
	close(start)
	wg.Wait()
	close(results)

	var winners []tokenBody
	invalid := 0
	for body := range results {
		switch {
		case body.AccessToken != "":
			winners = append(winners, body)
		case body.Error == "invalid_grant":
			invalid++
		}
	}
	if len(winners) != 1 || invalid != n-1 {
		t.Fatalf("got %d successes and %d invalid_grant, want 1 and %d", len(winners), invalid, n-1)
	}
	if got := f.s.ReusedRefreshTokens(); got != n-1 {
		t.Errorf("ReusedRefreshTokens: got %d, want %d", got, n-1)
	}
	if got := f.s.RefreshCalls(); got != n {
		t.Errorf("RefreshCalls: got %d, want %d", got, n)
	}
	if f.active(t, winners[0].AccessToken) {
		t.Error("winner's access token after reuse: got active, want revoked")
	}
	if status, body := f.refresh(t, winners[0].RefreshToken); status != 400 || body.Error != "invalid_grant" {
		t.Errorf("winner's refresh token after reuse: got %d %+v, want 400 invalid_grant", status, body)
	}
}

// TestConcurrentCodeRedemption redeems one code 20 times at once: one
// request wins, and the others, being second uses, revoke what it got.
func TestConcurrentCodeRedemption(t *testing.T) {
	const n = 20
	f := newUserFixture(t, nil)
	code := f.mustCode(t, "svc", cbURI, "read", "")

	results := make(chan tokenBody, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			req := f.request(t, context.Background(), as("svc", "", "grant_type", "authorization_code", "code", code, "redirect_uri", cbURI))
			resp, err := f.srv.Client().Do(req)
			if err != nil {
				t.Errorf("Do: got error %v, want nil", err)
				return
			}
			defer resp.Body.Close()
			var body tokenBody
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
				t.Errorf("decode: got error %v, want nil", err)
			}
			results <- body
		})
	}
	wg.Wait()
	close(results)

	var winners []string
	for body := range results {
		if body.AccessToken != "" {
			winners = append(winners, body.AccessToken)
		}
	}
	if len(winners) != 1 {
		t.Fatalf("successful redemptions: got %d, want 1", len(winners))
	}
	if f.active(t, winners[0]) {
		t.Error("access token of a code redeemed 20 times: got active, want revoked")
	}
}

// TestUserGrantMemoryBounded checks that codes, lineages and tokens are
// forgotten once expired, and that rotation does not grow a lineage.
func TestUserGrantMemoryBounded(t *testing.T) {
	c := &clock{now: t0}
	s, err := New(Config{
		Clients:              map[string]string{"svc": "s3cret"},
		Users:                map[string]string{"alice": "pw"},
		RedirectURIs:         map[string][]string{"svc": {cbURI}},
		RefreshTokens:        true,
		RotateRefreshTokens:  true,
		TokenLifetime:        time.Minute,
		RefreshTokenLifetime: time.Minute,
		Now:                  c.Now,
		MaxRecorded:          1,
	})
	if err != nil {
		t.Fatalf("New: got error %v, want nil", err)
	}
	post := func(body string) tokenBody {
		req := httptest.NewRequest(http.MethodPost, TokenPath, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth("svc", "s3cret")
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)
		var tok tokenBody
		if err := json.Unmarshal(rec.Body.Bytes(), &tok); err != nil || rec.Code != http.StatusOK {
			t.Fatalf("token: got %d %s, want 200", rec.Code, rec.Body)
		}
		return tok
	}
	size := func() int {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.tokens) + len(s.codes) + len(s.lineages)
	}

	const rounds = 4 * minSweep
	for range rounds {
		post("grant_type=password&username=alice&password=pw")
		if _, err := s.Authorize("svc", "", "alice", "", "", ""); err != nil {
			t.Fatalf("Authorize: got error %v, want nil", err)
		}
		c.Advance(time.Second) // about 60 of each live at any time
	}
	if got := size(); got > 2*minSweep {
		t.Errorf("entries remembered after %d rounds with ~180 live: got %d, want at most %d", rounds, got, 2*minSweep)
	}

	tok := post("grant_type=password&username=alice&password=pw")
	before := size()
	for range rounds {
		tok = post("grant_type=refresh_token&refresh_token=" + url.QueryEscape(tok.RefreshToken))
	}
	if got := size(); got > before+minSweep {
		t.Errorf("entries after %d rotations of one lineage: got %d, want at most %d", rounds, got, before+minSweep)
	}
}

// FuzzUserGrants checks that whatever a client sends to a server with every
// grant enabled, the token endpoint answers 200 with a token or an RFC 6749
// §5.2 error, as JSON.
func FuzzUserGrants(f *testing.F) {
	f.Add("grant_type=password&username=alice&password=pw&scope=openid+offline_access&state=x")
	f.Add("grant_type=refresh_token&refresh_token=AAAA")
	f.Add("grant_type=refresh_token&refresh_token=&scope=read")
	f.Add("grant_type=authorization_code&code=x&redirect_uri=https%3A%2F%2Fapp.example%2Fcb&code_verifier=" + pkceVerifier)
	f.Add("grant_type=password&username=alice&password=pw&username=bob")
	s, err := New(Config{
		Clients:             map[string]string{"svc": "s3cret"},
		Users:               map[string]string{"alice": "pw"},
		RedirectURIs:        map[string][]string{"svc": {cbURI}},
		RefreshTokens:       true,
		RotateRefreshTokens: true,
		IDTokens:            true,
		EchoState:           true,
		MaxRecorded:         1,
	})
	if err != nil {
		f.Fatalf("New: got error %v, want nil", err)
	}
	f.Fuzz(func(t *testing.T, body string) {
		req := httptest.NewRequest(http.MethodPost, TokenPath, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth("svc", "s3cret")
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)

		var got tokenBody
		if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
			t.Fatalf("body %q: got error %v, want JSON", rec.Body, err)
		}
		ok := rec.Code == http.StatusOK && got.AccessToken != "" && got.Error == ""
		failed := rec.Code == http.StatusBadRequest && got.AccessToken == "" && got.Error != ""
		if !ok && !failed {
			t.Errorf("got %d %s, want 200 with a token or 400 with an error", rec.Code, rec.Body)
		}
	})
}

func BenchmarkRefreshRotating(b *testing.B) {
	s, err := New(Config{Clients: map[string]string{"svc": "s3cret"}, Users: map[string]string{"alice": "pw"}, RefreshTokens: true, RotateRefreshTokens: true, MaxRecorded: 1})
	if err != nil {
		b.Fatalf("New: got error %v, want nil", err)
	}
	post := func(body string) string {
		req := httptest.NewRequest(http.MethodPost, TokenPath, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth("svc", "s3cret")
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)
		var tok tokenBody
		if err := json.Unmarshal(rec.Body.Bytes(), &tok); err != nil || rec.Code != http.StatusOK {
			b.Fatalf("token: got %d %s, want 200", rec.Code, rec.Body)
		}
		return tok.RefreshToken
	}
	refresh := post("grant_type=password&username=alice&password=pw")
	for b.Loop() {
		refresh = post("grant_type=refresh_token&refresh_token=" + url.QueryEscape(refresh))
	}
	if got := s.ReusedRefreshTokens(); got != 0 {
		b.Errorf("ReusedRefreshTokens: got %d, want 0", got)
	}
}

// TestRecordedPathCopied checks that Requests copies the new Path field.
func TestRecordedPathCopied(t *testing.T) {
	f := newUserFixture(t, func(c *Config) { c.PasswordTokenPath = "/auth/ropc.php" })
	f.mustTokens(t, as("svc", "/auth/ropc.php", "grant_type", "password", "username", "alice", "password", "wonderland"))
	f.token(t, "read")
	var paths []string
	for _, r := range f.s.Requests() {
		paths = append(paths, r.Path)
	}
	if want := []string{"/auth/ropc.php", TokenPath}; !reflect.DeepEqual(paths, want) {
		t.Errorf("Requests() paths: got %v, want %v", paths, want)
	}
	if got := f.s.TokenCalls(); got != 2 {
		t.Errorf("TokenCalls: got %d, want 2: both paths are token endpoints", got)
	}
}
