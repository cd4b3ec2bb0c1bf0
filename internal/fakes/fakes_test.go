package fakes

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// recordingT stands for the test a fake fails: it records Errorf instead of
// failing, so that a test can show the fake's checks fire.
type recordingT struct {
	testing.TB
	mu   sync.Mutex
	errs []string
}

func (r *recordingT) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func (r *recordingT) Helper() {}

func (r *recordingT) errors() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.errs, "\n")
}

// call is a request to a fake.
type call struct {
	method string
	path   string
	form   url.Values
	query  url.Values
	// basic is "id:secret" for an Authorization: Basic header carrying
	// exactly that (raw, as RFC 7617 has it); "" for none.
	basic  string
	accept string
	login  bool // send it to Mediaflow's login host
}

// send makes c to s and returns the status and the decoded JSON answer.
func send(t *testing.T, s *Server, c call) (int, map[string]any) {
	t.Helper()
	base := s.URL()
	if c.login {
		base = s.login
	}
	u := base + c.path
	if c.query != nil {
		u += "?" + c.query.Encode()
	}
	req, err := http.NewRequest(c.method, u, strings.NewReader(c.form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	if c.form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if c.basic != "" {
		req.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(c.basic)))
	}
	if c.accept != "" {
		req.Header.Set("Accept", c.accept)
	}
	resp, err := s.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", c.method, c.path, err)
	}
	defer resp.Body.Close()
	var body map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&body) // not every answer is JSON
	return resp.StatusCode, body
}

func form(kv ...string) url.Values {
	v := url.Values{}
	for i := 0; i < len(kv); i += 2 {
		v.Set(kv[i], kv[i+1])
	}
	return v
}

// TestFakeChecks sends each fake requests that its document allows and
// requests it forbids: the first are answered, the second fail the test
// (here: are recorded by a stand-in) and are refused.
func TestFakeChecks(t *testing.T) {
	const (
		houndCreds = MediaHoundClientID + ":" + MediaHoundClientSecret
		havenCreds = MediaHavenClientID + ":" + MediaHavenClientSecret
	)
	houndBody := form("grant_type", "client_credentials", "client_id", MediaHoundClientID, "client_secret", MediaHoundClientSecret)
	havenBody := func(kv ...string) url.Values {
		return form(append([]string{"client_id", MediaHavenClientID, "client_secret", MediaHavenClientSecret}, kv...)...)
	}
	valetBody := func(kv ...string) url.Values {
		return form(append([]string{"client_id", MediaValetClientID, "client_secret", MediaValetClientSecret}, kv...)...)
	}
	type give struct {
		fake  func(testing.TB, ...Option) *Server
		opts  []Option
		calls []call // the last one is checked
	}
	type want struct {
		status int
		answer map[string]any // fields of the JSON answer
		// failure is in the test failure the fake reported; "" for none.
		failure string
	}
	hound := func(tb testing.TB, o ...Option) *Server { return NewMediaHound(tb, o...).Server }
	haven := func(tb testing.TB, o ...Option) *Server { return NewMediaHaven(tb, o...).Server }
	valet := func(tb testing.TB, o ...Option) *Server { return NewMediaValet(tb, o...).Server }
	flow := func(tb testing.TB, o ...Option) *Server { return NewMediaflow(tb, o...).Server }
	core := func(tb testing.TB, o ...Option) *Server { return NewMediaCore(tb, o...).Server }
	tests := []struct {
		name string
		give give
		want want
	}{
		{
			name: "MediaHound: Basic and body credentials",
			give: give{fake: hound, calls: []call{{method: "POST", path: MediaHoundTokenPath, form: houndBody, basic: houndCreds, accept: "application/json"}}},
			want: want{status: 200, answer: map[string]any{"token_type": "bearer", "scope": MediaHoundScope, "expires_in": 3600.0, "refresh_token": nil}},
		},
		{
			name: "MediaHound: no Basic header",
			give: give{fake: hound, calls: []call{{method: "POST", path: MediaHoundTokenPath, form: houndBody, accept: "application/json"}}},
			want: want{status: 401, answer: map[string]any{"error": "invalid_client"}, failure: "without HTTP Basic"},
		},
		{
			name: "MediaHound: no body credentials",
			give: give{fake: hound, calls: []call{{method: "POST", path: MediaHoundTokenPath, form: form("grant_type", "client_credentials"),
				basic: houndCreds, accept: "application/json"}}},
			want: want{status: 401, failure: "in the form body"},
		},
		{
			name: "MediaHound: no Accept header",
			give: give{fake: hound, calls: []call{{method: "POST", path: MediaHoundTokenPath, form: houndBody, basic: houndCreds}}},
			want: want{status: 200, failure: "want application/json"},
		},
		{
			name: "MediaHound: another grant",
			give: give{fake: hound, calls: []call{{method: "POST", path: MediaHoundTokenPath,
				form:  form("grant_type", "refresh_token", "refresh_token", "x", "client_id", MediaHoundClientID, "client_secret", MediaHoundClientSecret),
				basic: houndCreds, accept: "application/json"}}},
			want: want{status: 400, answer: map[string]any{"error": "unsupported_grant_type"}, failure: `got grant_type "refresh_token"`},
		},
		{
			name: "MediaHound: raw Basic of a secret with special characters",
			give: give{fake: hound, opts: []Option{WithClientSecret("Ab+/c=d")}, calls: []call{{method: "POST", path: MediaHoundTokenPath,
				form:  form("grant_type", "client_credentials", "client_id", MediaHoundClientID, "client_secret", "Ab+/c=d"),
				basic: MediaHoundClientID + ":Ab+/c=d", accept: "application/json"}}},
			want: want{status: 200},
		},
		{
			name: "MediaHound: form-url-encoded Basic of such a secret",
			give: give{fake: hound, opts: []Option{WithClientSecret("Ab+/c=d")}, calls: []call{{method: "POST", path: MediaHoundTokenPath,
				form:  form("grant_type", "client_credentials", "client_id", MediaHoundClientID, "client_secret", "Ab+/c=d"),
				basic: MediaHoundClientID + ":" + url.QueryEscape("Ab+/c=d"), accept: "application/json"}}},
			want: want{status: 401, answer: map[string]any{"error": "invalid_client"}},
		},
		{
			name: "MediaHaven: password grant at its own endpoint",
			give: give{fake: haven, calls: []call{{method: "POST", path: MediaHavenPasswordPath,
				form: havenBody("grant_type", "password", "username", User, "password", Password)}}},
			want: want{status: 200, answer: map[string]any{"token_type": "Bearer"}},
		},
		{
			name: "MediaHaven: password grant at the token endpoint",
			give: give{fake: haven, calls: []call{{method: "POST", path: MediaHavenTokenPath,
				form: havenBody("grant_type", "password", "username", User, "password", Password)}}},
			want: want{status: 400, answer: map[string]any{"error": "unsupported_grant_type"}, failure: `got grant_type "password"`},
		},
		{
			name: "MediaHaven: credentials in Basic only",
			give: give{fake: haven, calls: []call{{method: "POST", path: MediaHavenPasswordPath,
				form: form("grant_type", "password", "username", User, "password", Password), basic: havenCreds}}},
			want: want{status: 401, failure: "in the form body"},
		},
		{
			name: "MediaHaven: a wrong password",
			give: give{fake: haven, calls: []call{{method: "POST", path: MediaHavenPasswordPath,
				form: havenBody("grant_type", "password", "username", User, "password", "nope")}}},
			want: want{status: 400, answer: map[string]any{"error": "invalid_grant"}},
		},
		{
			name: "MediaHaven: introspection with Basic",
			give: give{fake: haven, calls: []call{{method: "POST", path: MediaHavenIntrospectPath, form: form("token", "unknown"), basic: havenCreds}}},
			want: want{status: 200, answer: map[string]any{"active": false}},
		},
		{
			name: "MediaHaven: introspection with body credentials",
			give: give{fake: haven, calls: []call{{method: "POST", path: MediaHavenIntrospectPath,
				form: havenBody("token", "unknown")}}},
			want: want{status: 401, failure: "introspection request without HTTP Basic"},
		},
		{
			name: "MediaHaven: introspection with the token in the query",
			give: give{fake: haven, calls: []call{{method: "POST", path: MediaHavenIntrospectPath, form: url.Values{},
				query: form("token", "unknown"), basic: havenCreds}}},
			want: want{status: 400, failure: "without token in the POST body"},
		},
		{
			name: "MediaHaven: the documented authorization request",
			give: give{fake: haven, calls: []call{{method: "GET", path: MediaHavenAuthorizePath, query: form("client_id", MediaHavenClientID),
				basic: User + ":" + Password}}},
			want: want{status: 302},
		},
		{
			name: "MediaHaven: an unregistered redirect_uri",
			give: give{fake: haven, calls: []call{{method: "GET", path: MediaHavenAuthorizePath,
				query: form("client_id", MediaHavenClientID, "redirect_uri", "https://elsewhere.example.com/cb"), basic: User + ":" + Password}}},
			want: want{status: 400, failure: "want one of the registered"},
		},
		{
			name: "MediaValet: authorization request without api",
			give: give{fake: valet, calls: []call{{method: "GET", path: MediaValetAuthorizePath,
				query: form("client_id", MediaValetClientID, "response_type", "code", "scope", "openid"), basic: User + ":" + Password}}},
			want: want{status: 400, failure: "want openid and api"},
		},
		{
			name: "MediaValet: password with openid api offline_access",
			give: give{fake: valet, calls: []call{{method: "POST", path: MediaValetTokenPath,
				form: valetBody("grant_type", "password", "username", User, "password", Password, "scope", "openid api offline_access")}}},
			want: want{status: 200},
		},
		{
			name: "MediaValet: password without api",
			give: give{fake: valet, calls: []call{{method: "POST", path: MediaValetTokenPath,
				form: valetBody("grant_type", "password", "username", User, "password", Password, "scope", "openid")}}},
			want: want{status: 400, failure: "want openid and api"},
		},
		{
			name: "MediaValet: client credentials (coming soon)",
			give: give{fake: valet, calls: []call{{method: "POST", path: MediaValetTokenPath, form: valetBody("grant_type", "client_credentials")}}},
			want: want{status: 400, answer: map[string]any{"error": "unsupported_grant_type"}, failure: `got grant_type "client_credentials"`},
		},
		{
			name: "MediaValet: code without redirect_uri",
			give: give{fake: valet, calls: []call{{method: "POST", path: MediaValetTokenPath, form: valetBody("grant_type", "authorization_code", "code", "c")}}},
			want: want{status: 400, failure: "without redirect_uri"},
		},
		{
			name: "Mediaflow: a client without the password grant",
			give: give{fake: flow, calls: []call{{method: "POST", path: MediaflowTokenPath,
				form: form("grant_type", "password", "username", User, "password", Password,
					"client_id", MediaflowLimitedClientID, "client_secret", MediaflowLimitedClientSecret)}}},
			want: want{status: 400, answer: map[string]any{"error": "unauthorized_client"}},
		},
		{
			name: "Mediaflow: the password grant echoes state",
			give: give{fake: flow, calls: []call{{method: "POST", path: MediaflowTokenPath,
				form: form("grant_type", "password", "username", User, "password", Password, "state", "s-42",
					"client_id", MediaflowClientID, "client_secret", MediaflowClientSecret)}}},
			want: want{status: 200, answer: map[string]any{"state": "s-42", "token_type": "Bearer"}},
		},
		{
			name: "Mediaflow: credentials in Basic",
			give: give{fake: flow, calls: []call{{method: "POST", path: MediaflowTokenPath,
				form: form("grant_type", "password", "username", User, "password", Password), basic: MediaflowClientID + ":" + MediaflowClientSecret}}},
			want: want{status: 401, failure: "in the form body"},
		},
		{
			name: "Mediaflow: authorize on the login host",
			give: give{fake: flow, calls: []call{{method: "GET", path: MediaflowAuthorizePath, login: true,
				query: form("client_id", MediaflowClientID, "response_type", "code", "state", "xyz"), basic: User + ":" + Password}}},
			want: want{status: 302},
		},
		{
			name: "Mediaflow: no authorize on the token host",
			give: give{fake: flow, calls: []call{{method: "GET", path: MediaflowAuthorizePath,
				query: form("client_id", MediaflowClientID, "response_type", "code"), basic: User + ":" + Password}}},
			want: want{status: 404},
		},
		{
			name: "MediaCore: client credentials",
			give: give{fake: core, calls: []call{{method: "POST", path: MediaCoreTokenPath, form: form("grant_type", "client_credentials"),
				basic: MediaCoreClientID + ":" + MediaCoreClientSecret}}},
			want: want{status: 400, failure: `got grant_type "client_credentials"`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt := &recordingT{TB: t}
			s := tt.give.fake(rt, tt.give.opts...)
			var status int
			var answer map[string]any
			for _, c := range tt.give.calls {
				status, answer = send(t, s, c)
			}
			if status != tt.want.status {
				t.Errorf("status = %d (%v), want %d", status, answer, tt.want.status)
			}
			for k, want := range tt.want.answer {
				if got := answer[k]; got != want {
					t.Errorf("answer %s = %v, want %v (answer %v)", k, got, want, answer)
				}
			}
			got := rt.errors()
			if (tt.want.failure == "") != (got == "") || !strings.Contains(got, tt.want.failure) {
				t.Errorf("the fake reported %q, want a failure saying %q", got, tt.want.failure)
			}
		})
	}
}

// TestMediaHavenRotation: a refresh rotates the refresh token and kills the
// old access token; presenting the old refresh token again fails the test,
// is answered 401 and revokes the grant.
func TestMediaHavenRotation(t *testing.T) {
	rt := &recordingT{TB: t}
	mh := NewMediaHaven(rt)
	body := func(kv ...string) url.Values {
		return form(append([]string{"client_id", MediaHavenClientID, "client_secret", MediaHavenClientSecret}, kv...)...)
	}
	_, first := send(t, mh.Server, call{method: "POST", path: MediaHavenPasswordPath, form: body("grant_type", "password", "username", User, "password", Password)})
	rt1, at1 := first["refresh_token"].(string), first["access_token"].(string)
	status, second := send(t, mh.Server, call{method: "POST", path: MediaHavenTokenPath, form: body("grant_type", "refresh_token", "refresh_token", rt1)})
	rt2, at2 := second["refresh_token"].(string), second["access_token"].(string)
	if status != 200 || rt2 == "" || rt2 == rt1 || mh.Active(at1) || !mh.Active(at2) {
		t.Fatalf("refresh = %d with refresh token %q (was %q), old access token active=%t, new active=%t; want 200, a new refresh token, false, true",
			status, rt2, rt1, mh.Active(at1), mh.Active(at2))
	}
	if got := rt.errors(); got != "" {
		t.Errorf("the fake reported %q, want nothing", got)
	}
	status, _ = send(t, mh.Server, call{method: "POST", path: MediaHavenTokenPath, form: body("grant_type", "refresh_token", "refresh_token", rt1)})
	if status != 401 || !strings.Contains(rt.errors(), "again") || mh.ReusedRefreshTokens() != 1 || mh.Active(at2) {
		t.Errorf("reuse = %d, reported %q, %d reuses counted, new token active=%t; want 401, a failure, 1, false",
			status, rt.errors(), mh.ReusedRefreshTokens(), mh.Active(at2))
	}
	mh.SetBareUnauthorized(true)
	status, answer := send(t, mh.Server, call{method: "POST", path: MediaHavenTokenPath, form: body("grant_type", "refresh_token", "refresh_token", rt2)})
	if status != 401 || answer != nil {
		t.Errorf("refresh of a revoked grant = %d %v, want a bare 401", status, answer)
	}
}

// TestConsentAndCodeChecks: the fakes' authorize pages redirect with a code
// that the token endpoint redeems once, with the same redirect_uri; another
// redirect_uri fails the test.
func TestConsentAndCodeChecks(t *testing.T) {
	tests := []struct {
		name string
		give string // the redirect_uri of the token request
		want string // the failure reported; "" for none
	}{
		{name: "same redirect_uri", give: RedirectURI},
		{name: "another redirect_uri", give: "https://tokenbroker.example.com/other", want: "as in the authorization request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt := &recordingT{TB: t}
			mv := NewMediaValet(rt)
			q := form("client_id", MediaValetClientID, "response_type", "code", "redirect_uri", RedirectURI,
				"scope", "openid api offline_access", "state", "st-1")
			loc, err := mv.Consent(mv.URL()+MediaValetAuthorizePath+"?"+q.Encode(), User, Password)
			if err != nil {
				t.Fatal(err)
			}
			if loc.Query().Get("state") != "st-1" || loc.Query().Get("code") == "" {
				t.Fatalf("consent redirected to %s, want a code and state st-1", loc)
			}
			status, answer := send(t, mv.Server, call{method: "POST", path: MediaValetTokenPath, form: form(
				"grant_type", "authorization_code", "code", loc.Query().Get("code"), "redirect_uri", tt.give,
				"client_id", MediaValetClientID, "client_secret", MediaValetClientSecret)})
			got := rt.errors()
			if (tt.want == "") != (got == "") || !strings.Contains(got, tt.want) {
				t.Errorf("the fake reported %q, want a failure saying %q", got, tt.want)
			}
			if tt.want == "" && (status != 200 || answer["id_token"] == nil || answer["refresh_token"] == nil) {
				t.Errorf("code exchange = %d %v, want 200 with an id_token and a refresh token", status, answer)
			}
			denied, err := mv.Deny(mv.URL() + MediaValetAuthorizePath + "?" + q.Encode())
			if err != nil || denied.Query().Get("error") != "access_denied" || denied.Query().Get("state") != "st-1" {
				t.Errorf("Deny = %v, %v; want a redirect with error=access_denied and state st-1", denied, err)
			}
		})
	}
}

// TestOIDCDiscoveryDocument: the issuer's document names its endpoints.
func TestOIDCDiscoveryDocument(t *testing.T) {
	o := NewOIDC(t)
	status, doc := send(t, o.Server, call{method: "GET", path: OIDCDiscoveryPath})
	want := map[string]any{
		"issuer":                 o.URL(),
		"token_endpoint":         o.URL() + "/oauth2/token",
		"authorization_endpoint": o.URL() + "/oauth2/authorize",
		"revocation_endpoint":    o.URL() + "/oauth2/revoke",
		"introspection_endpoint": o.URL() + "/oauth2/introspect",
	}
	if status != 200 {
		t.Fatalf("discovery = %d, want 200", status)
	}
	for k, v := range want {
		if doc[k] != v {
			t.Errorf("discovery %s = %v, want %v", k, doc[k], v)
		}
	}
	o.SetIssuer("https://impostor.example.com")
	if _, doc := send(t, o.Server, call{method: "GET", path: OIDCDiscoveryPath}); doc["issuer"] != "https://impostor.example.com" {
		t.Errorf("discovery issuer after SetIssuer = %v, want the impostor", doc["issuer"])
	}
}
