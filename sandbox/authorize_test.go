package sandbox

import (
	"encoding/base64"
	"errors"
	"html"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// page is what the authorize endpoint answered; redirects are not followed.
type page struct {
	status int
	header http.Header
	body   string
}

// browse sends method target (a path and query) to the fixture with form as
// the body when not nil, and does not follow redirects.
func (f *fixture) browse(t *testing.T, method, target string, form url.Values, header http.Header) page {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, f.srv.URL+target, body)
	if err != nil {
		t.Fatalf("NewRequest: got error %v, want nil", err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	client := *f.srv.Client()
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: got error %v, want a response", method, target, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: got error %v, want nil", err)
	}
	return page{status: resp.StatusCode, header: resp.Header, body: string(raw)}
}

// basicUser is the Authorization header of the authorize endpoint's shortcut.
func basicUser(user, password string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+password))
}

// locationQuery returns the query of res's Location, nil when there is none.
// A Location that is not a registered redirect URI fails the test.
func locationQuery(t *testing.T, res page) url.Values {
	t.Helper()
	loc := res.header.Get("Location")
	if loc == "" {
		return nil
	}
	if !strings.HasPrefix(loc, cbURI+"?") && !strings.HasPrefix(loc, cbURIQuery+"&") {
		t.Errorf("Location %q: want a registered redirect URI", loc)
	}
	u, err := url.Parse(loc)
	if err != nil {
		t.Fatalf("Location %q: got error %v, want a URL", loc, err)
	}
	return u.Query()
}

// redirectQuery returns the query of the redirect res, which must be a 302
// to a registered redirect URI.
func redirectQuery(t *testing.T, res page) url.Values {
	t.Helper()
	if res.status != http.StatusFound {
		t.Fatalf("authorize: got %d %s, want 302", res.status, res.body)
	}
	return locationQuery(t, res)
}

var hiddenInput = regexp.MustCompile(`<input type="hidden" name="([^"]*)" value="([^"]*)">`)

// hiddenFields returns the hidden fields of the sign-in form in body.
func hiddenFields(body string) url.Values {
	fields := url.Values{}
	for _, m := range hiddenInput.FindAllStringSubmatch(body, -1) {
		fields.Add(html.UnescapeString(m[1]), html.UnescapeString(m[2]))
	}
	return fields
}

// TestAuthorizationCodeFlowForm goes through the sign-in form as a browser
// would: GET the form, post it back with a wrong and then the right password,
// follow the redirect's code to the token endpoint with the PKCE verifier.
func TestAuthorizationCodeFlowForm(t *testing.T) {
	f := newUserFixture(t, func(c *Config) { c.RequirePKCE = true })
	q := url.Values{
		"response_type":         {"code"},
		"client_id":             {"other-team"},
		"redirect_uri":          {cbURIQuery},
		"scope":                 {"read offline_access"},
		"state":                 {"af0ifjsldkj"},
		"code_challenge":        {pkceChallenge},
		"code_challenge_method": {"S256"},
	}
	res := f.browse(t, http.MethodGet, AuthorizePath+"?"+q.Encode(), nil, nil)
	if res.status != http.StatusOK || res.header.Get("Content-Type") != "text/html; charset=utf-8" || res.header.Get("Location") != "" {
		t.Fatalf("GET authorize: got %d %q Location %q, want 200 text/html without Location", res.status, res.header.Get("Content-Type"), res.header.Get("Location"))
	}
	form := hiddenFields(res.body)
	if !reflect.DeepEqual(form, q) {
		t.Fatalf("hidden fields: got %v, want the request %v", form, q)
	}

	form.Set("username", "bob")
	form.Set("password", "wrong")
	res = f.browse(t, http.MethodPost, AuthorizePath, form, nil)
	if res.status != http.StatusUnauthorized || !strings.Contains(res.body, "Wrong username or password") {
		t.Fatalf("POST with a wrong password: got %d %s, want 401 with the form again", res.status, res.body)
	}
	form = hiddenFields(res.body)
	if !reflect.DeepEqual(form, q) {
		t.Fatalf("hidden fields of the form shown again: got %v, want %v", form, q)
	}

	form.Set("username", "bob")
	form.Set("password", "the builder")
	got := redirectQuery(t, f.browse(t, http.MethodPost, AuthorizePath, form, nil))
	if got.Get("code") == "" || got.Get("state") != "af0ifjsldkj" || got.Get("tenant") != "7" {
		t.Fatalf("redirect query: got %v, want a code, state af0ifjsldkj and the registered tenant=7", got)
	}

	tok := f.mustTokens(t, as("other-team", "", "grant_type", "authorization_code", "code", got.Get("code"), "redirect_uri", cbURIQuery, "code_verifier", pkceVerifier))
	if tok.RefreshToken == "" || tok.Scope != "read offline_access" {
		t.Errorf("token response: got %+v, want a refresh token and scope read offline_access", tok)
	}
	who := f.do(t, call{method: http.MethodGet, path: WhoamiPath, header: http.Header{"Authorization": {"Bearer " + tok.AccessToken}}})
	if want := map[string]any{"client_id": "other-team", "scope": "read offline_access", "sub": "bob"}; !reflect.DeepEqual(who.body, want) {
		t.Errorf("whoami: got %d %v, want %v", who.status, who.body, want)
	}
}

// TestAuthorizationCodeFlowBasic uses the automation shortcut: Basic user
// credentials on the GET approve at once.
func TestAuthorizationCodeFlowBasic(t *testing.T) {
	f := newUserFixture(t, func(c *Config) { c.RequirePKCE = true })
	q := url.Values{"response_type": {"code"}, "client_id": {"svc"}, "state": {"xyz"}, "code_challenge": {pkceChallenge}, "code_challenge_method": {"S256"}}
	got := redirectQuery(t, f.browse(t, http.MethodGet, AuthorizePath+"?"+q.Encode(), nil, http.Header{"Authorization": {basicUser("bob", "the builder")}}))
	if got.Get("code") == "" || got.Get("state") != "xyz" || len(got) != 2 {
		t.Fatalf("redirect query: got %v, want code and state xyz only", got)
	}
	// No redirect_uri at authorization (svc has one), so none at the token endpoint.
	tok := f.mustTokens(t, as("svc", "", "grant_type", "authorization_code", "code", got.Get("code"), "code_verifier", pkceVerifier))
	if !f.active(t, tok.AccessToken) {
		t.Error("access token: got inactive, want active")
	}
}

// authQuery returns an authorization request of svc with state s, changed by
// key, value pairs; an empty value removes the key.
func authQuery(kv ...string) url.Values {
	q := url.Values{"response_type": {"code"}, "client_id": {"svc"}, "redirect_uri": {cbURI}, "state": {"s"}}
	for i := 0; i+1 < len(kv); i += 2 {
		q.Set(kv[i], kv[i+1])
		if kv[i+1] == "" {
			q.Del(kv[i])
		}
	}
	return q
}

// signIn returns the sign-in form post of authQuery(kv...) with credentials.
func signIn(user, password string, kv ...string) url.Values {
	q := authQuery(kv...)
	q.Set("username", user)
	q.Set("password", password)
	return q
}

// TestAuthorizeEndpoint covers every answer of the authorize endpoint but
// approval.
func TestAuthorizeEndpoint(t *testing.T) {
	tests := []struct {
		name       string
		edit       func(*Config)
		method     string     // default GET
		query      url.Values // the URL query
		form       url.Values // the POST body
		header     http.Header
		wantStatus int
		wantQuery  url.Values // of the redirect, without error_description; nil: no redirect
		wantWWW    string
		wantBody   string // a part of the body
	}{
		{name: "sign-in form", query: authQuery(), wantStatus: 200, wantBody: `name="username"`},
		{name: "bearer header ignored", query: authQuery(), header: http.Header{"Authorization": {"Bearer x"}}, wantStatus: 200, wantBody: `name="password"`},
		{name: "unknown client", query: authQuery("client_id", "ghost"), wantStatus: 400, wantBody: "unknown client"},
		{name: "missing client_id", query: authQuery("client_id", ""), wantStatus: 400, wantBody: "unknown client"},
		{name: "unregistered redirect_uri", query: authQuery("redirect_uri", "https://evil.example/cb"), wantStatus: 400, wantBody: "not registered"},
		{name: "redirect_uri with a trailing slash", query: authQuery("redirect_uri", cbURI+"/"), wantStatus: 400, wantBody: "not registered"},
		{name: "redirect_uri of another client", query: authQuery("client_id", "svc", "redirect_uri", cbURIQuery), wantStatus: 400, wantBody: "not registered"},
		{name: "redirect_uri omitted, several registered", query: authQuery("client_id", "other-team", "redirect_uri", ""), wantStatus: 400, wantBody: "several"},
		{name: "client without redirect URIs", query: authQuery("client_id", "mediahound1", "redirect_uri", ""), wantStatus: 400, wantBody: "has none"},
		{name: "repeated parameter", query: url.Values{"response_type": {"code"}, "client_id": {"svc"}, "redirect_uri": {cbURI, "https://evil.example/cb"}}, wantStatus: 400, wantBody: "repeated"},
		{name: "markup in client_id is escaped", query: authQuery("client_id", "<script>alert(1)</script>"), wantStatus: 400, wantBody: "&lt;script&gt;alert(1)&lt;/script&gt;"},
		{name: "markup in state is escaped", query: authQuery("state", `"><script>x</script>`), wantStatus: 200, wantBody: `value="&#34;&gt;&lt;script&gt;x&lt;/script&gt;"`},
		{name: "PUT", method: http.MethodPut, query: authQuery(), wantStatus: 405},
		{name: "response_type token", query: authQuery("response_type", "token"), wantStatus: 302, wantQuery: url.Values{"error": {"unsupported_response_type"}, "state": {"s"}}},
		{name: "missing response_type", query: authQuery("response_type", ""), wantStatus: 302, wantQuery: url.Values{"error": {"invalid_request"}, "state": {"s"}}},
		{name: "unknown scope", query: authQuery("scope", "read delete"), wantStatus: 302, wantQuery: url.Values{"error": {"invalid_scope"}, "state": {"s"}}},
		{name: "error without state", query: authQuery("scope", "delete", "state", ""), wantStatus: 302, wantQuery: url.Values{"error": {"invalid_scope"}}},
		{name: "error keeps the registered query", query: authQuery("client_id", "other-team", "redirect_uri", cbURIQuery, "scope", "delete"), wantStatus: 302, wantQuery: url.Values{"tenant": {"7"}, "error": {"invalid_scope"}, "state": {"s"}}},
		{name: "plain PKCE", query: authQuery("code_challenge", pkceVerifier, "code_challenge_method", "plain"), wantStatus: 302, wantQuery: url.Values{"error": {"invalid_request"}, "state": {"s"}}},
		{name: "challenge without method means plain", query: authQuery("code_challenge", pkceChallenge), wantStatus: 302, wantQuery: url.Values{"error": {"invalid_request"}, "state": {"s"}}},
		{name: "method without challenge", query: authQuery("code_challenge_method", "S256"), wantStatus: 302, wantQuery: url.Values{"error": {"invalid_request"}, "state": {"s"}}},
		{name: "malformed challenge", query: authQuery("code_challenge", "abc", "code_challenge_method", "S256"), wantStatus: 302, wantQuery: url.Values{"error": {"invalid_request"}, "state": {"s"}}},
		{name: "RequirePKCE without challenge", edit: func(c *Config) { c.RequirePKCE = true }, query: authQuery(), wantStatus: 302, wantQuery: url.Values{"error": {"invalid_request"}, "state": {"s"}}},
		{name: "RequirePKCE refuses the Basic shortcut too", edit: func(c *Config) { c.RequirePKCE = true }, query: authQuery(), header: http.Header{"Authorization": {basicUser("alice", "wonderland")}}, wantStatus: 302, wantQuery: url.Values{"error": {"invalid_request"}, "state": {"s"}}},
		{name: "wrong Basic credentials", query: authQuery(), header: http.Header{"Authorization": {basicUser("alice", "nope")}}, wantStatus: 401, wantWWW: `Basic realm="sandbox"`, wantBody: "Wrong username or password"},
		{name: "deny", method: http.MethodPost, form: signIn("", "", "deny", "1"), wantStatus: 302, wantQuery: url.Values{"error": {"access_denied"}, "state": {"s"}}},
		{name: "deny with credentials", method: http.MethodPost, form: signIn("alice", "wonderland", "deny", "1", "state", ""), wantStatus: 302, wantQuery: url.Values{"error": {"access_denied"}}},
		{name: "wrong password", method: http.MethodPost, form: signIn("alice", "nope"), wantStatus: 401, wantBody: `value="alice"`},
		{name: "unknown user", method: http.MethodPost, form: signIn("mallory", "wonderland"), wantStatus: 401, wantBody: "Wrong username or password"},
		{name: "post to an unregistered redirect_uri", method: http.MethodPost, form: signIn("alice", "wonderland", "redirect_uri", "https://evil.example/cb"), wantStatus: 400, wantBody: "not registered"},
		{name: "post that is not a form", method: http.MethodPost, form: signIn("alice", "wonderland"), header: http.Header{"Content-Type": {"application/json"}}, wantStatus: 400, wantBody: "Bad form"},
		{name: "post ignores the URL query", method: http.MethodPost, query: authQuery(), form: url.Values{"username": {"alice"}, "password": {"wonderland"}}, wantStatus: 400, wantBody: "unknown client"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newUserFixture(t, tt.edit)
			method := tt.method
			if method == "" {
				method = http.MethodGet
			}
			res := f.browse(t, method, AuthorizePath+"?"+tt.query.Encode(), tt.form, tt.header)
			if res.status != tt.wantStatus {
				t.Errorf("status: got %d (%s), want %d", res.status, res.body, tt.wantStatus)
			}
			got := locationQuery(t, res)
			got.Del("error_description")
			if !reflect.DeepEqual(got, tt.wantQuery) {
				t.Errorf("redirect query: got %v, want %v", got, tt.wantQuery)
			}
			if got := res.header.Get("WWW-Authenticate"); got != tt.wantWWW {
				t.Errorf("WWW-Authenticate: got %q, want %q", got, tt.wantWWW)
			}
			if !strings.Contains(res.body, tt.wantBody) {
				t.Errorf("body: got %s, want it to contain %s", res.body, tt.wantBody)
			}
			if strings.Contains(res.body, "<script") {
				t.Errorf("body: got %s, want no unescaped markup", res.body)
			}
			if got := res.header.Get("Cache-Control"); got != "no-store" {
				t.Errorf("Cache-Control: got %q, want no-store", got)
			}
			f.s.mu.Lock()
			codes := len(f.s.codes)
			f.s.mu.Unlock()
			if codes != 0 {
				t.Errorf("codes minted: got %d, want 0", codes)
			}
		})
	}
}

func TestAuthorize(t *testing.T) {
	tests := []struct {
		name        string
		edit        func(*Config)
		client      string
		redirectURI string
		user        string
		scope       string
		challenge   string
		want        error
	}{
		{name: "ok", client: "svc", redirectURI: cbURI, user: "alice", scope: "read", want: nil},
		{name: "only registered URI implied", client: "svc", user: "alice", want: nil},
		{name: "with a challenge", client: "svc", redirectURI: cbURI, user: "alice", challenge: pkceChallenge, want: nil},
		{name: "unknown client", client: "ghost", redirectURI: cbURI, user: "alice", want: ErrUnknownClient},
		{name: "unregistered redirect URI", client: "svc", redirectURI: "https://evil.example/cb", user: "alice", want: ErrRedirectURI},
		{name: "several registered, none given", client: "other-team", user: "alice", want: ErrRedirectURI},
		{name: "unknown user", client: "svc", redirectURI: cbURI, user: "mallory", want: ErrUnknownUser},
		{name: "unknown scope", client: "svc", redirectURI: cbURI, user: "alice", scope: "delete", want: ErrInvalidScope},
		{name: "malformed challenge", client: "svc", redirectURI: cbURI, user: "alice", challenge: "abc", want: ErrInvalidCodeChallenge},
		{name: "RequirePKCE without challenge", edit: func(c *Config) { c.RequirePKCE = true }, client: "svc", redirectURI: cbURI, user: "alice", want: ErrInvalidCodeChallenge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newUserFixture(t, tt.edit)
			code, err := f.s.Authorize(tt.client, tt.redirectURI, tt.user, tt.scope, "st", tt.challenge)
			if !errors.Is(err, tt.want) || (err == nil) != (code != "") {
				t.Errorf("Authorize: got %q, %v, want a code and error %v", code, err, tt.want)
			}
		})
	}
}

// FuzzAuthorize checks that whatever reaches the authorize endpoint, it
// answers with one of its statuses and never redirects anywhere but to a
// registered redirect URI.
func FuzzAuthorize(f *testing.F) {
	f.Add(true, "response_type=code&client_id=svc&state=x", "", "")
	f.Add(true, "response_type=code&client_id=svc&redirect_uri=https%3A%2F%2Fevil.example%2F", "", "Basic YWxpY2U6cHc=")
	f.Add(false, "", "response_type=code&client_id=svc&username=alice&password=pw", "")
	f.Add(false, "", "response_type=code&client_id=svc&deny=1&state=%22%3E", "")
	f.Add(true, "response_type=code&client_id=svc&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256", "", "Basic YWxpY2U6cHc=")
	f.Add(true, "%zz&client_id=svc", "", "Basic %%%")
	s, err := New(Config{
		Clients:      map[string]string{"svc": "s3cret", "other": "x"},
		Users:        map[string]string{"alice": "pw"},
		RedirectURIs: map[string][]string{"svc": {cbURI}, "other": {cbURI, cbURIQuery}},
		Scopes:       []string{"read", "openid"},
	})
	if err != nil {
		f.Fatalf("New: got error %v, want nil", err)
	}
	allowed := map[int]bool{200: true, 302: true, 400: true, 401: true}
	f.Fuzz(func(t *testing.T, get bool, query, body, auth string) {
		method := http.MethodPost
		if get {
			method = http.MethodGet
		}
		req := httptest.NewRequest(method, AuthorizePath, strings.NewReader(body))
		req.URL.RawQuery = query
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header["Authorization"] = []string{auth}
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)

		loc := rec.Header().Get("Location")
		if !allowed[rec.Code] || (rec.Code == http.StatusFound) != (loc != "") {
			t.Fatalf("got %d with Location %q, want 200, 400 or 401 without Location, or 302 with one", rec.Code, loc)
		}
		if loc != "" && !strings.HasPrefix(loc, cbURI+"?") && !strings.HasPrefix(loc, cbURIQuery+"&") {
			t.Errorf("Location %q: want a registered redirect URI", loc)
		}
	})
}
