package fakes

import (
	"crypto/sha256"
	"encoding/base64"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"
)

// Auth is the Authorization header a test wants a request to carry.
type Auth string

// The Authorization headers a test can want.
const (
	NoAuth Auth = ""
	// ClientBasic is HTTP Basic with the fake's client_id and client_secret.
	ClientBasic Auth = "basic"
	// UserBasic is HTTP Basic with User and Password: the browser signing
	// in with the sandbox's shortcut (Consent).
	UserBasic Auth = "user"
)

// WantRequest is what a test wants a fake to have received.
type WantRequest struct {
	Path string
	Auth Auth
	// Params are exactly the parameters (query or form) wanted. A value in
	// braces stands for one known at run time: {code}, {state}, {redirect},
	// {refresh} (the refresh token of the previous token answer), {verifier}
	// (its S256 is FlowValues.Challenge), {challenge} (any S256 challenge),
	// {client_id}, {client_secret}, {user}, {password}.
	Params map[string]string
}

// FlowValues are the values the braces in WantRequest.Params stand for
// besides the fake's client and user.
type FlowValues struct {
	Code, State, Challenge, Refresh string
	// Redirect is the client's redirect URI; RedirectURI when empty.
	Redirect string
}

// CheckRequest fails the test (t.Errorf) unless got, whose parameters are
// params, is the request want describes, with v for the braces: the path,
// the Authorization header, each wanted parameter once with its value, no
// other parameter. A brace whose value v leaves empty is an error.
func CheckRequest(t testing.TB, f *Server, what string, got Request, params url.Values, want WantRequest, v FlowValues) {
	t.Helper()
	if got.Path != want.Path {
		t.Errorf("%s went to %s, want %s", what, got.Path, want.Path)
	}
	wantAuth := map[Auth]string{
		ClientBasic: basicAuth(f.ClientID(), f.ClientSecret()),
		UserBasic:   basicAuth(User, Password),
	}[want.Auth]
	if a := got.Header.Get("Authorization"); a != wantAuth {
		t.Errorf("%s has Authorization %q, want %q", what, a, wantAuth)
	}
	if v.Redirect == "" {
		v.Redirect = RedirectURI
	}
	known := map[string]string{
		"{code}": v.Code, "{state}": v.State, "{redirect}": v.Redirect, "{refresh}": v.Refresh,
		"{client_id}": f.ClientID(), "{client_secret}": f.ClientSecret(), "{user}": User, "{password}": Password,
	}
	var oldnew []string
	for k, val := range known {
		oldnew = append(oldnew, k, val)
	}
	fill := strings.NewReplacer(oldnew...)
	for _, k := range slices.Sorted(maps.Keys(want.Params)) {
		w, g := want.Params[k], params[k]
		if len(g) != 1 {
			t.Errorf("%s has %s = %q, want one value (%s)", what, k, g, w)
			continue
		}
		switch w {
		case "{verifier}":
			if v.Challenge == "" || s256(g[0]) != v.Challenge {
				t.Errorf("%s has code_verifier %q whose S256 is %q, want the authorization request's challenge %q", what, g[0], s256(g[0]), v.Challenge)
			}
			continue
		case "{challenge}":
			if len(g[0]) != 43 {
				t.Errorf("%s has code_challenge %q, want 43 base64url characters (S256)", what, g[0])
			}
			continue
		}
		if val, ok := known[w]; ok && val == "" {
			t.Errorf("%s: the test knows no value for %s %s (got %q)", what, k, w, g[0])
			continue
		}
		if w = fill.Replace(w); g[0] != w {
			t.Errorf("%s has %s = %q, want %q", what, k, g[0], w)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(params)) {
		if _, ok := want.Params[k]; !ok {
			t.Errorf("%s has %s = %q, want no such parameter", what, k, params[k])
		}
	}
}

// CheckAuthorization fails the test unless f received exactly one request
// at want.Path, as CheckRequest with v judges it; v.Challenge is taken from
// that request. It returns v with the challenge.
func CheckAuthorization(t testing.TB, f *Server, want WantRequest, v FlowValues) FlowValues {
	t.Helper()
	calls := f.Calls(want.Path)
	if len(calls) != 1 {
		t.Fatalf("the fake got %d requests at %s, want 1 authorization request", len(calls), want.Path)
	}
	v.Challenge = calls[0].Query.Get("code_challenge")
	CheckRequest(t, f, "authorization request", calls[0], calls[0].Query, want, v)
	return v
}

// CheckTokenRequests fails the test unless f received n token requests in
// all, the last as CheckRequest with v judges it, sent with `Accept:
// application/json` and a form-encoded body and answered 200, and no
// refresh token was presented after rotation replaced it. It returns the
// last request.
func CheckTokenRequests(t testing.TB, f *Server, n int, want WantRequest, v FlowValues) Request {
	t.Helper()
	reqs := f.TokenRequests("")
	if len(reqs) != n {
		t.Fatalf("the fake got %d token requests, want %d", len(reqs), n)
	}
	last := reqs[len(reqs)-1]
	CheckRequest(t, f, "token request", last, last.Form, want, v)
	for _, h := range []struct{ name, want string }{
		{"Accept", "application/json"}, {"Content-Type", "application/x-www-form-urlencoded"},
	} {
		if got := last.Header.Get(h.name); got != h.want {
			t.Errorf("token request has %s %q, want %q", h.name, got, h.want)
		}
	}
	if last.Status != http.StatusOK {
		t.Fatalf("the fake answered the token request %d %v, want 200", last.Status, last.Answer)
	}
	if n := f.ReusedRefreshTokens(); n != 0 {
		t.Errorf("the provider saw %d reused refresh tokens, want 0", n)
	}
	return last
}

// Served is a token as a broker served it.
type Served struct {
	AccessToken, IDToken, TokenType string
	ExpiresAt                       time.Time
	// ProviderExpiresAt, when set, is the provider's expiry of a token the
	// broker serves until an earlier hand-over (ExpiresAt).
	ProviderExpiresAt time.Time
}

// CheckServed fails the test unless served is what the token answer of
// issued carried: its access token, its id_token (one wanted when idToken),
// type Bearer, and an expiry expires_in after now (or, for a token served
// until its hand-over, a provider's expiry so, and a served one before it).
func CheckServed(t testing.TB, served Served, issued Request, now time.Time, idToken bool) {
	t.Helper()
	if want := issued.AnswerString("access_token"); served.AccessToken != want {
		t.Errorf("the broker served access token %q, want %q, the one the provider issued last", served.AccessToken, want)
	}
	if want := issued.AnswerString("id_token"); served.IDToken != want || (want != "") != idToken {
		t.Errorf("the broker served id_token %q, want %q (an id_token wanted: %t)", served.IDToken, want, idToken)
	}
	if served.TokenType != "Bearer" {
		t.Errorf("the broker served token type %q, want Bearer", served.TokenType)
	}
	expiresIn, _ := issued.Answer["expires_in"].(float64)
	expiry := served.ExpiresAt
	if !served.ProviderExpiresAt.IsZero() {
		if !served.ExpiresAt.Before(served.ProviderExpiresAt) {
			t.Errorf("the broker served a token until %v, its hand-over, want before the provider's expiry %v", served.ExpiresAt, served.ProviderExpiresAt)
		}
		expiry = served.ProviderExpiresAt
	}
	if want := now.Add(time.Duration(expiresIn) * time.Second); !expiry.Equal(want) {
		t.Errorf("the broker took a token to expire at %v, want %v (expires_in %v)", expiry, want, issued.Answer["expires_in"])
	}
}

// SeedWant is what a correct client sends a seed provider's fake, and what
// the fake answers that a test checks.
type SeedWant struct {
	// Authorize is the authorization request; zero for a seed that offers
	// no authorization code grant.
	Authorize WantRequest
	// Token is the token request of each grant_type the seed offers.
	Token map[string]WantRequest
	// IDToken: every token answer carries an id_token.
	IDToken bool
}

// SeedWants are the seed providers' SeedWant, by preset name, as the
// documents in ../shared/seeds describe the requests.
var SeedWants = map[string]SeedWant{
	// HTTP Basic client authentication, the credentials nowhere else.
	"mediacore": {
		Authorize: WantRequest{Path: MediaCoreAuthorizePath, Auth: UserBasic, Params: plainAuthorize},
		Token: map[string]WantRequest{
			"authorization_code": {Path: MediaCoreTokenPath, Auth: ClientBasic,
				Params: map[string]string{"grant_type": "authorization_code", "code": "{code}", "redirect_uri": "{redirect}"}},
			"refresh_token": {Path: MediaCoreTokenPath, Auth: ClientBasic,
				Params: map[string]string{"grant_type": "refresh_token", "refresh_token": "{refresh}"}},
		},
	},
	// HTTP Basic and the credentials repeated in the body.
	"mediahound": {
		Token: map[string]WantRequest{
			"client_credentials": {Path: MediaHoundTokenPath, Auth: ClientBasic, Params: inBody("grant_type", "client_credentials")},
		},
	},
	// PKCE, the scopes openid and api required, offline_access for a
	// refresh token.
	"mediavalet": {
		Authorize: WantRequest{Path: MediaValetAuthorizePath, Auth: UserBasic, Params: with(plainAuthorize,
			"scope", "api offline_access openid", "prompt", "consent", "code_challenge", "{challenge}", "code_challenge_method", "S256")},
		Token: map[string]WantRequest{
			"authorization_code": {Path: MediaValetTokenPath,
				Params: inBody("grant_type", "authorization_code", "code", "{code}", "redirect_uri", "{redirect}", "code_verifier", "{verifier}")},
			"password": {Path: MediaValetTokenPath,
				Params: inBody("grant_type", "password", "username", "{user}", "password", "{password}", "scope", "api offline_access openid")},
			"refresh_token": {Path: MediaValetTokenPath, Params: inBody("grant_type", "refresh_token", "refresh_token", "{refresh}")},
		},
		IDToken: true,
	},
	"mediaflow": {
		Authorize: WantRequest{Path: MediaflowAuthorizePath, Auth: UserBasic, Params: plainAuthorize},
		Token: map[string]WantRequest{
			"authorization_code": {Path: MediaflowTokenPath,
				Params: inBody("grant_type", "authorization_code", "code", "{code}", "redirect_uri", "{redirect}")},
			"password":      {Path: MediaflowTokenPath, Params: inBody("grant_type", "password", "username", "{user}", "password", "{password}")},
			"refresh_token": {Path: MediaflowTokenPath, Params: inBody("grant_type", "refresh_token", "refresh_token", "{refresh}")},
		},
	},
	// The password grant at its own endpoint.
	"mediahaven": {
		Authorize: WantRequest{Path: MediaHavenAuthorizePath, Auth: UserBasic, Params: plainAuthorize},
		Token: map[string]WantRequest{
			"authorization_code": {Path: MediaHavenTokenPath,
				Params: inBody("grant_type", "authorization_code", "code", "{code}", "redirect_uri", "{redirect}")},
			"password":      {Path: MediaHavenPasswordPath, Params: inBody("grant_type", "password", "username", "{user}", "password", "{password}")},
			"refresh_token": {Path: MediaHavenTokenPath, Params: inBody("grant_type", "refresh_token", "refresh_token", "{refresh}")},
		},
	},
}

// SeedToken returns the token request SeedWants holds for seed and
// grantType, and fails the test when it holds none.
func SeedToken(t testing.TB, seed, grantType string) WantRequest {
	t.Helper()
	w, ok := SeedWants[seed].Token[grantType]
	if !ok {
		t.Fatalf("fakes: no %s token request is wanted of %s", grantType, seed)
	}
	return w
}

// plainAuthorize is an authorization request with nothing but what RFC
// 6749 §4.1.1 requires and the state.
var plainAuthorize = map[string]string{"response_type": "code", "client_id": "{client_id}", "redirect_uri": "{redirect}", "state": "{state}"}

// inBody is a token request with the client's credentials in the body and
// the parameters kv (key, value, key, value…).
func inBody(kv ...string) map[string]string {
	return with(map[string]string{"client_id": "{client_id}", "client_secret": "{client_secret}"}, kv...)
}

// with is a copy of base with the parameters kv (key, value, …) added.
func with(base map[string]string, kv ...string) map[string]string {
	m := maps.Clone(base)
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

func basicAuth(id, secret string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(id+":"+secret))
}

func s256(verifier string) string {
	sum := sha256.Sum256([]byte(verifier))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}
