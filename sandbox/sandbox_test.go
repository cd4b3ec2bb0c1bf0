package sandbox

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// t0 is when every fake clock starts.
var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// clock is a fake Config.Now, safe for concurrent use.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// fixture is a Server behind a real HTTP listener, with a fake clock.
type fixture struct {
	s     *Server
	srv   *httptest.Server
	clock *clock
}

// testClients has a client whose id and secret need form-url-encoding in HTTP
// Basic (RFC 6749 §2.3.1).
var testClients = map[string]string{
	"svc":         "s3cret",
	"odd:id é":    "p@ss word+&%=:",
	"other-team":  "hunter2",
	"mediahound1": "mh-secret",
}

// newFixture starts a Server with testClients, scopes read/write/admin and a
// fake clock; edit adjusts the Config first.
func newFixture(t *testing.T, edit func(*Config)) *fixture {
	t.Helper()
	c := &clock{now: t0}
	cfg := Config{
		Clients: testClients,
		Scopes:  []string{"read", "write", "admin"},
		Now:     c.Now,
	}
	if edit != nil {
		edit(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: got error %v, want nil", err)
	}
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	return &fixture{s: s, srv: srv, clock: c}
}

// call describes one HTTP request to the fixture.
type call struct {
	method      string      // default POST
	path        string      // default TokenPath
	contentType string      // default application/x-www-form-urlencoded
	basic       []string    // client_id, client_secret: sent as HTTP Basic, form-url-encoded
	form        url.Values  // the body
	header      http.Header // extra headers
}

// result is what the fixture answered.
type result struct {
	status int
	header http.Header
	body   map[string]any // the decoded JSON body; nil when empty
	raw    string
}

func (f *fixture) do(t *testing.T, c call) result {
	t.Helper()
	req := f.request(t, context.Background(), c)
	resp, err := f.srv.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: got error %v, want a response", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: got error %v, want nil", err)
	}
	res := result{status: resp.StatusCode, header: resp.Header, raw: string(raw)}
	// A body that is not a JSON object (a Failure's, say) leaves res.body nil.
	_ = json.Unmarshal(raw, &res.body)
	return res
}

func (f *fixture) request(t *testing.T, ctx context.Context, c call) *http.Request {
	t.Helper()
	method, path, ct := c.method, c.path, c.contentType
	if method == "" {
		method = http.MethodPost
	}
	if path == "" {
		path = TokenPath
	}
	if ct == "" {
		ct = "application/x-www-form-urlencoded"
	}
	req, err := http.NewRequestWithContext(ctx, method, f.srv.URL+path, strings.NewReader(c.form.Encode()))
	if err != nil {
		t.Fatalf("NewRequest: got error %v, want nil", err)
	}
	req.Header.Set("Content-Type", ct)
	for k, vs := range c.header {
		req.Header[k] = vs
	}
	if len(c.basic) == 2 {
		req.SetBasicAuth(url.QueryEscape(c.basic[0]), url.QueryEscape(c.basic[1]))
	}
	return req
}

// token gets an access token for client svc with scope (none when empty).
func (f *fixture) token(t *testing.T, scope string) string {
	t.Helper()
	form := url.Values{"grant_type": {"client_credentials"}}
	if scope != "" {
		form.Set("scope", scope)
	}
	res := f.do(t, call{basic: []string{"svc", "s3cret"}, form: form})
	tok, _ := res.body["access_token"].(string)
	if res.status != http.StatusOK || tok == "" {
		t.Fatalf("token: got %d %s, want 200 with an access_token", res.status, res.raw)
	}
	return tok
}

func TestNew(t *testing.T) {
	tests := []struct {
		name string
		give Config
		want error
	}{
		{name: "valid", give: Config{Clients: map[string]string{"a": "b"}}, want: nil},
		{name: "valid with everything", give: Config{Clients: map[string]string{"a": "b"}, TokenLifetime: time.Minute, Scopes: []string{"read", "read"}, MaxRecorded: 3}, want: nil},
		{name: "nil clients", give: Config{}, want: ErrInvalidConfig},
		{name: "empty clients", give: Config{Clients: map[string]string{}}, want: ErrInvalidConfig},
		{name: "empty client_id", give: Config{Clients: map[string]string{"": "b"}}, want: ErrInvalidConfig},
		{name: "empty secret", give: Config{Clients: map[string]string{"a": ""}}, want: ErrInvalidConfig},
		{name: "negative lifetime", give: Config{Clients: map[string]string{"a": "b"}, TokenLifetime: -time.Second}, want: ErrInvalidConfig},
		{name: "negative MaxRecorded", give: Config{Clients: map[string]string{"a": "b"}, MaxRecorded: -1}, want: ErrInvalidConfig},
		{name: "scope with a space", give: Config{Clients: map[string]string{"a": "b"}, Scopes: []string{"read write"}}, want: ErrInvalidConfig},
		{name: "empty scope", give: Config{Clients: map[string]string{"a": "b"}, Scopes: []string{""}}, want: ErrInvalidConfig},
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

func TestTokenClientCredentials(t *testing.T) {
	tests := []struct {
		name string
		give call
		want map[string]any // the body without access_token
	}{
		{
			name: "basic",
			give: call{basic: []string{"svc", "s3cret"}, form: url.Values{"grant_type": {"client_credentials"}, "scope": {"read"}}},
			want: map[string]any{"token_type": "Bearer", "expires_in": 3600.0, "scope": "read"},
		},
		{
			name: "post",
			give: call{form: url.Values{"grant_type": {"client_credentials"}, "client_id": {"svc"}, "client_secret": {"s3cret"}, "scope": {"read write"}}},
			want: map[string]any{"token_type": "Bearer", "expires_in": 3600.0, "scope": "read write"},
		},
		{
			name: "basic and post agreeing, as MediaHound sends",
			give: call{basic: []string{"mediahound1", "mh-secret"}, form: url.Values{"grant_type": {"client_credentials"}, "client_id": {"mediahound1"}, "client_secret": {"mh-secret"}}, header: http.Header{"Accept": {"application/json"}}},
			want: map[string]any{"token_type": "Bearer", "expires_in": 3600.0, "scope": "read write admin"},
		},
		{
			name: "basic with credentials that need form-url-encoding",
			give: call{basic: []string{"odd:id é", "p@ss word+&%=:"}, form: url.Values{"grant_type": {"client_credentials"}, "scope": {"admin"}}},
			want: map[string]any{"token_type": "Bearer", "expires_in": 3600.0, "scope": "admin"},
		},
		{
			name: "basic with client_id repeated in the body",
			give: call{basic: []string{"svc", "s3cret"}, form: url.Values{"grant_type": {"client_credentials"}, "client_id": {"svc"}, "scope": {"write"}}},
			want: map[string]any{"token_type": "Bearer", "expires_in": 3600.0, "scope": "write"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, nil)
			res := f.do(t, tt.give)
			if res.status != http.StatusOK {
				t.Fatalf("status: got %d %s, want 200", res.status, res.raw)
			}
			for k, want := range map[string]string{"Content-Type": "application/json", "Cache-Control": "no-store", "Pragma": "no-cache"} {
				if got := res.header.Get(k); got != want {
					t.Errorf("header %s: got %q, want %q", k, got, want)
				}
			}
			tok, _ := res.body["access_token"].(string)
			raw, err := base64.RawURLEncoding.DecodeString(tok)
			if err != nil || len(raw) != 32 {
				t.Errorf("access_token %q: got %d bytes (err %v), want 32 base64url bytes", tok, len(raw), err)
			}
			delete(res.body, "access_token")
			if !reflect.DeepEqual(res.body, tt.want) {
				t.Errorf("body: got %v, want %v", res.body, tt.want)
			}
			if got := f.s.IssuedTokens(); got != 1 {
				t.Errorf("IssuedTokens: got %d, want 1", got)
			}
		})
	}
}

func TestTokenErrors(t *testing.T) {
	cc := url.Values{"grant_type": {"client_credentials"}}
	withClient := func(v url.Values) url.Values {
		v.Set("client_id", "svc")
		v.Set("client_secret", "s3cret")
		return v
	}
	basicChallenge := `Basic realm="sandbox"`

	tests := []struct {
		name       string
		give       call
		wantStatus int
		wantError  string
		wantWWW    string // WWW-Authenticate
	}{
		{name: "wrong secret, basic", give: call{basic: []string{"svc", "nope"}, form: cc}, wantStatus: 401, wantError: "invalid_client", wantWWW: basicChallenge},
		{name: "wrong secret, post", give: call{form: url.Values{"grant_type": {"client_credentials"}, "client_id": {"svc"}, "client_secret": {"nope"}}}, wantStatus: 401, wantError: "invalid_client"},
		{name: "unknown client, basic", give: call{basic: []string{"ghost", "s3cret"}, form: cc}, wantStatus: 401, wantError: "invalid_client", wantWWW: basicChallenge},
		{name: "secret of another client", give: call{basic: []string{"svc", "hunter2"}, form: cc}, wantStatus: 401, wantError: "invalid_client", wantWWW: basicChallenge},
		{name: "no client", give: call{form: cc}, wantStatus: 401, wantError: "invalid_client"},
		{name: "client_id without secret", give: call{form: url.Values{"grant_type": {"client_credentials"}, "client_id": {"svc"}}}, wantStatus: 401, wantError: "invalid_client"},
		{name: "basic and body disagree on client_id", give: call{basic: []string{"svc", "s3cret"}, form: url.Values{"grant_type": {"client_credentials"}, "client_id": {"other-team"}, "client_secret": {"hunter2"}}}, wantStatus: 401, wantError: "invalid_client", wantWWW: basicChallenge},
		{name: "basic and body disagree on secret", give: call{basic: []string{"svc", "s3cret"}, form: url.Values{"grant_type": {"client_credentials"}, "client_id": {"svc"}, "client_secret": {"other"}}}, wantStatus: 401, wantError: "invalid_client", wantWWW: basicChallenge},
		{name: "basic not url-encoded", give: call{header: http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte("odd:id é:p@ss word+&%=:"))}}, form: cc}, wantStatus: 401, wantError: "invalid_client", wantWWW: basicChallenge},
		{name: "authorization not basic", give: call{header: http.Header{"Authorization": {"Bearer abc"}}, form: withClient(url.Values{"grant_type": {"client_credentials"}})}, wantStatus: 401, wantError: "invalid_client", wantWWW: basicChallenge},
		{name: "unsupported grant", give: call{basic: []string{"svc", "s3cret"}, form: url.Values{"grant_type": {"urn:ietf:params:oauth:grant-type:device_code"}}}, wantStatus: 400, wantError: "unsupported_grant_type"},
		{name: "password grant without users", give: call{basic: []string{"svc", "s3cret"}, form: url.Values{"grant_type": {"password"}, "username": {"u"}, "password": {"p"}}}, wantStatus: 400, wantError: "unsupported_grant_type"},
		{name: "missing grant_type", give: call{basic: []string{"svc", "s3cret"}, form: url.Values{"scope": {"read"}}}, wantStatus: 400, wantError: "invalid_request"},
		{name: "empty grant_type", give: call{basic: []string{"svc", "s3cret"}, form: url.Values{"grant_type": {""}}}, wantStatus: 400, wantError: "invalid_request"},
		{name: "repeated parameter", give: call{basic: []string{"svc", "s3cret"}, form: url.Values{"grant_type": {"client_credentials", "client_credentials"}}}, wantStatus: 400, wantError: "invalid_request"},
		{name: "json body", give: call{basic: []string{"svc", "s3cret"}, contentType: "application/json", form: cc}, wantStatus: 400, wantError: "invalid_request"},
		{name: "invalid scope", give: call{basic: []string{"svc", "s3cret"}, form: url.Values{"grant_type": {"client_credentials"}, "scope": {"read delete"}}}, wantStatus: 400, wantError: "invalid_scope"},
		{name: "malformed scope", give: call{basic: []string{"svc", "s3cret"}, form: url.Values{"grant_type": {"client_credentials"}, "scope": {"read  write"}}}, wantStatus: 400, wantError: "invalid_scope"},
		{name: "GET", give: call{method: http.MethodGet, basic: []string{"svc", "s3cret"}}, wantStatus: 405, wantError: "invalid_request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, nil)
			res := f.do(t, tt.give)
			if res.status != tt.wantStatus {
				t.Errorf("status: got %d, want %d", res.status, tt.wantStatus)
			}
			if got := res.body["error"]; got != tt.wantError {
				t.Errorf("error: got %v (body %s), want %q", got, res.raw, tt.wantError)
			}
			if got := res.header.Get("WWW-Authenticate"); got != tt.wantWWW {
				t.Errorf("WWW-Authenticate: got %q, want %q", got, tt.wantWWW)
			}
			if got := res.header.Get("Cache-Control"); got != "no-store" {
				t.Errorf("Cache-Control: got %q, want no-store", got)
			}
			if got := f.s.IssuedTokens(); got != 0 {
				t.Errorf("IssuedTokens: got %d, want 0", got)
			}
			if got := f.s.TokenCalls(); got != 1 {
				t.Errorf("TokenCalls: got %d, want 1", got)
			}
		})
	}
}

func TestTokenScope(t *testing.T) {
	tests := []struct {
		name   string
		scopes []string // Config.Scopes
		give   url.Values
		want   map[string]any // the body without access_token
	}{
		{name: "omitted grants all known", scopes: []string{"read", "write"}, give: url.Values{}, want: map[string]any{"token_type": "Bearer", "expires_in": 3600.0, "scope": "read write"}},
		{name: "subset", scopes: []string{"read", "write"}, give: url.Values{"scope": {"write"}}, want: map[string]any{"token_type": "Bearer", "expires_in": 3600.0, "scope": "write"}},
		{name: "duplicates dropped", scopes: []string{"read", "write"}, give: url.Values{"scope": {"write read write"}}, want: map[string]any{"token_type": "Bearer", "expires_in": 3600.0, "scope": "write read"}},
		{name: "any scope when none configured", scopes: nil, give: url.Values{"scope": {"openid offline_access api"}}, want: map[string]any{"token_type": "Bearer", "expires_in": 3600.0, "scope": "openid offline_access api"}},
		{name: "no scope field when none granted", scopes: nil, give: url.Values{}, want: map[string]any{"token_type": "Bearer", "expires_in": 3600.0}},
		{name: "empty scope is omitted", scopes: []string{"read"}, give: url.Values{"scope": {""}}, want: map[string]any{"token_type": "Bearer", "expires_in": 3600.0, "scope": "read"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, func(c *Config) { c.Scopes = tt.scopes })
			tt.give.Set("grant_type", "client_credentials")
			res := f.do(t, call{basic: []string{"svc", "s3cret"}, form: tt.give})
			delete(res.body, "access_token")
			if res.status != http.StatusOK || !reflect.DeepEqual(res.body, tt.want) {
				t.Errorf("got %d %v, want 200 %v", res.status, res.body, tt.want)
			}
		})
	}
}

func TestTokenLifetime(t *testing.T) {
	tests := []struct {
		name string
		give time.Duration
		want float64
	}{
		{name: "default", give: 0, want: 3600},
		{name: "five minutes", give: 5 * time.Minute, want: 300},
		{name: "fraction rounds up", give: 1500 * time.Millisecond, want: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, func(c *Config) { c.TokenLifetime = tt.give })
			res := f.do(t, call{basic: []string{"svc", "s3cret"}, form: url.Values{"grant_type": {"client_credentials"}}})
			if got := res.body["expires_in"]; got != tt.want {
				t.Errorf("expires_in: got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestIntrospect(t *testing.T) {
	tests := []struct {
		name string
		give func(t *testing.T, f *fixture) string // returns the token to introspect
		want map[string]any
	}{
		{
			name: "issued",
			give: func(t *testing.T, f *fixture) string { return f.token(t, "read write") },
			want: map[string]any{"active": true, "scope": "read write", "client_id": "svc", "token_type": "Bearer", "iat": float64(t0.Unix()), "exp": float64(t0.Add(time.Hour).Unix())},
		},
		{
			name: "one second before expiry",
			give: func(t *testing.T, f *fixture) string {
				tok := f.token(t, "read")
				f.clock.Advance(time.Hour - time.Second)
				return tok
			},
			want: map[string]any{"active": true, "scope": "read", "client_id": "svc", "token_type": "Bearer", "iat": float64(t0.Unix()), "exp": float64(t0.Add(time.Hour).Unix())},
		},
		{
			name: "revoked",
			give: func(t *testing.T, f *fixture) string {
				tok := f.token(t, "read")
				f.s.Revoke(tok)
				return tok
			},
			want: map[string]any{"active": false},
		},
		{
			name: "expired at exp",
			give: func(t *testing.T, f *fixture) string {
				tok := f.token(t, "read")
				f.clock.Advance(time.Hour)
				return tok
			},
			want: map[string]any{"active": false},
		},
		{
			name: "unknown",
			give: func(t *testing.T, f *fixture) string { return "not-a-token" },
			want: map[string]any{"active": false},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, nil)
			tok := tt.give(t, f)
			res := f.do(t, call{path: IntrospectPath, basic: []string{"other-team", "hunter2"}, form: url.Values{"token": {tok}, "token_type_hint": {"access_token"}}})
			if res.status != http.StatusOK || !reflect.DeepEqual(res.body, tt.want) {
				t.Errorf("got %d %v, want 200 %v", res.status, res.body, tt.want)
			}
		})
	}
}

func TestIntrospectErrors(t *testing.T) {
	tests := []struct {
		name       string
		give       call
		wantStatus int
		wantError  string
		wantWWW    string
	}{
		{name: "no client", give: call{path: IntrospectPath, form: url.Values{"token": {"x"}}}, wantStatus: 401, wantError: "invalid_client"},
		{name: "wrong secret, basic", give: call{path: IntrospectPath, basic: []string{"svc", "nope"}, form: url.Values{"token": {"x"}}}, wantStatus: 401, wantError: "invalid_client", wantWWW: `Basic realm="sandbox"`},
		{name: "missing token", give: call{path: IntrospectPath, basic: []string{"svc", "s3cret"}, form: url.Values{}}, wantStatus: 400, wantError: "invalid_request"},
		{name: "GET", give: call{method: http.MethodGet, path: IntrospectPath, basic: []string{"svc", "s3cret"}}, wantStatus: 405, wantError: "invalid_request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, nil)
			res := f.do(t, tt.give)
			if res.status != tt.wantStatus || res.body["error"] != tt.wantError {
				t.Errorf("got %d %s, want %d with error %q", res.status, res.raw, tt.wantStatus, tt.wantError)
			}
			if got := res.header.Get("WWW-Authenticate"); got != tt.wantWWW {
				t.Errorf("WWW-Authenticate: got %q, want %q", got, tt.wantWWW)
			}
			if got := f.s.TokenCalls(); got != 0 {
				t.Errorf("TokenCalls: got %d, want 0: introspection is not the token endpoint", got)
			}
		})
	}
}

func TestWhoami(t *testing.T) {
	tests := []struct {
		name       string
		give       func(t *testing.T, f *fixture) http.Header
		wantStatus int
		wantWWW    string
		wantBody   map[string]any
	}{
		{
			name: "valid token",
			give: func(t *testing.T, f *fixture) http.Header {
				return http.Header{"Authorization": {"Bearer " + f.token(t, "read")}}
			},
			wantStatus: 200,
			wantBody:   map[string]any{"client_id": "svc", "scope": "read"},
		},
		{
			name: "scheme is case-insensitive",
			give: func(t *testing.T, f *fixture) http.Header {
				return http.Header{"Authorization": {"bearer " + f.token(t, "")}}
			},
			wantStatus: 200,
			wantBody:   map[string]any{"client_id": "svc", "scope": "read write admin"},
		},
		{
			name:       "unknown token",
			give:       func(t *testing.T, f *fixture) http.Header { return http.Header{"Authorization": {"Bearer forged"}} },
			wantStatus: 401,
			wantWWW:    `Bearer error="invalid_token"`,
		},
		{
			name: "expired token",
			give: func(t *testing.T, f *fixture) http.Header {
				tok := f.token(t, "read")
				f.clock.Advance(2 * time.Hour)
				return http.Header{"Authorization": {"Bearer " + tok}}
			},
			wantStatus: 401,
			wantWWW:    `Bearer error="invalid_token"`,
		},
		{
			name: "revoked token",
			give: func(t *testing.T, f *fixture) http.Header {
				tok := f.token(t, "read")
				f.s.Revoke(tok)
				return http.Header{"Authorization": {"Bearer " + tok}}
			},
			wantStatus: 401,
			wantWWW:    `Bearer error="invalid_token"`,
		},
		{
			name:       "no credentials",
			give:       func(t *testing.T, f *fixture) http.Header { return http.Header{} },
			wantStatus: 401,
			wantWWW:    "Bearer",
		},
		{
			name: "basic credentials",
			give: func(t *testing.T, f *fixture) http.Header {
				return http.Header{"Authorization": {"Basic c3ZjOnMzY3JldA=="}}
			},
			wantStatus: 401,
			wantWWW:    "Bearer",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, nil)
			res := f.do(t, call{method: http.MethodGet, path: WhoamiPath, header: tt.give(t, f)})
			if res.status != tt.wantStatus {
				t.Errorf("status: got %d, want %d", res.status, tt.wantStatus)
			}
			if got := res.header.Get("WWW-Authenticate"); got != tt.wantWWW {
				t.Errorf("WWW-Authenticate: got %q, want %q", got, tt.wantWWW)
			}
			if !reflect.DeepEqual(res.body, tt.wantBody) {
				t.Errorf("body: got %v, want %v", res.body, tt.wantBody)
			}
		})
	}
}

func TestSetFailure(t *testing.T) {
	tests := []struct {
		name            string
		give            Failure
		wantStatus      int
		wantContentType string
		wantBody        string
	}{
		{name: "html outage", give: Failure{Status: 503, ContentType: "text/html", Body: "<h1>down</h1>"}, wantStatus: 503, wantContentType: "text/html", wantBody: "<h1>down</h1>"},
		{name: "default content type", give: Failure{Status: 400, Body: `{"error":"invalid_grant"}`}, wantStatus: 400, wantContentType: "application/json", wantBody: `{"error":"invalid_grant"}`},
		{name: "truncated json on 200", give: Failure{Status: 200, Body: `{"access_token":`}, wantStatus: 200, wantContentType: "application/json", wantBody: `{"access_token":`},
		{name: "zero status is 500", give: Failure{}, wantStatus: 500, wantContentType: "application/json", wantBody: ""},
		{name: "short delay then answer", give: Failure{Status: 429, Body: "slow down", ContentType: "text/plain", Delay: time.Millisecond}, wantStatus: 429, wantContentType: "text/plain", wantBody: "slow down"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, nil)
			give := tt.give
			f.s.SetFailure(&give)
			give.Status = 299 // SetFailure must have copied it

			res := f.do(t, call{basic: []string{"svc", "s3cret"}, form: url.Values{"grant_type": {"client_credentials"}}})
			if res.status != tt.wantStatus || res.header.Get("Content-Type") != tt.wantContentType || res.raw != tt.wantBody {
				t.Errorf("got %d %q %q, want %d %q %q", res.status, res.header.Get("Content-Type"), res.raw, tt.wantStatus, tt.wantContentType, tt.wantBody)
			}
			if got := f.s.IssuedTokens(); got != 0 {
				t.Errorf("IssuedTokens during failure: got %d, want 0", got)
			}

			f.s.SetFailure(nil)
			res = f.do(t, call{basic: []string{"svc", "s3cret"}, form: url.Values{"grant_type": {"client_credentials"}}})
			if res.status != http.StatusOK {
				t.Errorf("after SetFailure(nil): got %d %s, want 200", res.status, res.raw)
			}
			if got := f.s.TokenCalls(); got != 2 {
				t.Errorf("TokenCalls: got %d, want 2", got)
			}
			if got := len(f.s.Requests()); got != 2 {
				t.Errorf("len(Requests()): got %d, want 2", got)
			}
		})
	}
}

func TestSetFailureDelayHonoursCancellation(t *testing.T) {
	f := newFixture(t, nil)
	returned := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.s.ServeHTTP(w, r)
		close(returned)
	}))
	defer srv.Close()
	f.srv = srv
	f.s.SetFailure(&Failure{Status: 503, Delay: time.Hour})

	ctx, cancel := context.WithCancel(context.Background())
	req := f.request(t, ctx, call{basic: []string{"svc", "s3cret"}, form: url.Values{"grant_type": {"client_credentials"}}})
	errc := make(chan error, 1)
	go func() {
		resp, err := srv.Client().Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	// Cancel once the server has the request, so the cancellation reaches the
	// handler and not only the client.
	for f.s.TokenCalls() == 0 {
		time.Sleep(time.Millisecond)
	}
	cancel()

	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("Do: got error %v, want context.Canceled", err)
	}
	select {
	case <-returned:
	case <-time.After(30 * time.Second): // a hang guard, far below the hour of Delay
		t.Fatal("handler still sleeping 30s after the request was cancelled, want it to return")
	}
}

func TestRequests(t *testing.T) {
	f := newFixture(t, nil)
	f.do(t, call{
		basic:  []string{"svc", "s3cret"},
		header: http.Header{"Accept": {"application/json"}, "X-Request-Id": {"r-1"}},
		form:   url.Values{"grant_type": {"client_credentials"}, "client_id": {"svc"}, "client_secret": {"s3cret"}, "scope": {"read"}},
	})
	f.clock.Advance(time.Minute)
	f.do(t, call{method: http.MethodGet})

	got := f.s.Requests()
	if len(got) != 2 {
		t.Fatalf("len(Requests()): got %d, want 2", len(got))
	}
	wantForm := url.Values{"grant_type": {"client_credentials"}, "client_id": {"svc"}, "client_secret": {"s3cret"}, "scope": {"read"}}
	if !reflect.DeepEqual(got[0].Form, wantForm) {
		t.Errorf("Requests()[0].Form: got %v, want %v", got[0].Form, wantForm)
	}
	wantHeader := map[string]string{
		"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte("svc:s3cret")),
		"Accept":        "application/json",
		"X-Request-Id":  "r-1",
		"Content-Type":  "application/x-www-form-urlencoded",
	}
	for k, want := range wantHeader {
		if v := got[0].Header.Get(k); v != want {
			t.Errorf("Requests()[0].Header %s: got %q, want %q", k, v, want)
		}
	}
	if !got[0].Time.Equal(t0) || !got[1].Time.Equal(t0.Add(time.Minute)) {
		t.Errorf("Times: got %v, %v, want %v, %v", got[0].Time, got[1].Time, t0, t0.Add(time.Minute))
	}
	if len(got[1].Form) != 0 {
		t.Errorf("Requests()[1].Form of a GET: got %v, want empty", got[1].Form)
	}

	got[0].Form.Set("scope", "changed")
	got[0].Header.Set("Accept", "changed")
	again := f.s.Requests()
	if again[0].Form.Get("scope") != "read" || again[0].Header.Get("Accept") != "application/json" {
		t.Errorf("Requests() after changing its result: got %v %v, want the original request", again[0].Form, again[0].Header)
	}
}

func TestMaxRecorded(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.MaxRecorded = 2 })
	for _, scope := range []string{"read", "write", "admin"} {
		f.token(t, scope)
	}
	got := f.s.Requests()
	var scopes []string
	for _, r := range got {
		scopes = append(scopes, r.Form.Get("scope"))
	}
	if want := []string{"write", "admin"}; !reflect.DeepEqual(scopes, want) {
		t.Errorf("scopes of Requests(): got %v, want %v", scopes, want)
	}
	if got := f.s.TokenCalls(); got != 3 {
		t.Errorf("TokenCalls: got %d, want 3", got)
	}
}

func TestConcurrentIssue(t *testing.T) {
	const n = 100
	f := newFixture(t, nil)
	tokens := make(chan string, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			req := f.request(t, context.Background(), call{basic: []string{"svc", "s3cret"}, form: url.Values{"grant_type": {"client_credentials"}}})
			resp, err := f.srv.Client().Do(req)
			if err != nil {
				t.Errorf("Do: got error %v, want nil", err)
				return
			}
			defer resp.Body.Close()
			var body struct {
				AccessToken string `json:"access_token"`
			}
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != http.StatusOK {
				t.Errorf("got %d (decode error %v), want 200 with a token", resp.StatusCode, err)
			}
			tokens <- body.AccessToken
		})
	}
	wg.Wait()
	close(tokens)

	seen := make(map[string]bool)
	for tok := range tokens {
		seen[tok] = true
	}
	if len(seen) != n {
		t.Errorf("distinct tokens: got %d, want %d", len(seen), n)
	}
	if got := f.s.TokenCalls(); got != n {
		t.Errorf("TokenCalls: got %d, want %d", got, n)
	}
	if got := f.s.IssuedTokens(); got != n {
		t.Errorf("IssuedTokens: got %d, want %d", got, n)
	}
	if got := len(f.s.Requests()); got != n {
		t.Errorf("len(Requests()): got %d, want %d", got, n)
	}
}

// TestExpiredTokensDropped checks that the token map does not keep expired
// tokens forever.
func TestExpiredTokensDropped(t *testing.T) {
	c := &clock{now: t0}
	s, err := New(Config{Clients: map[string]string{"svc": "s3cret"}, TokenLifetime: time.Minute, Now: c.Now, MaxRecorded: 1})
	if err != nil {
		t.Fatalf("New: got error %v, want nil", err)
	}
	issue := func() {
		req := httptest.NewRequest(http.MethodPost, TokenPath, strings.NewReader("grant_type=client_credentials&client_id=svc&client_secret=s3cret"))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			t.Fatalf("token: got %d %s, want 200", rec.Code, rec.Body)
		}
	}
	for range 10 * minSweep {
		issue()
		c.Advance(time.Second) // about 60 tokens live at any time
	}
	s.mu.Lock()
	size := len(s.tokens)
	s.mu.Unlock()
	if size > minSweep+1 {
		t.Errorf("tokens remembered after %d issues with ~60 live: got %d, want at most %d", 10*minSweep, size, minSweep+1)
	}
	if got := s.IssuedTokens(); got != 10*minSweep {
		t.Errorf("IssuedTokens: got %d, want %d", got, 10*minSweep)
	}
}

// FuzzTokenEndpoint checks that whatever a client sends, the token endpoint
// answers 200 with a token or an RFC 6749 §5.2 error, as JSON.
func FuzzTokenEndpoint(f *testing.F) {
	f.Add("grant_type=client_credentials&client_id=svc&client_secret=s3cret", "")
	f.Add("grant_type=client_credentials&scope=read+write", "Basic c3ZjOnMzY3JldA==")
	f.Add("grant_type=client_credentials&scope=%22", "Basic c3ZjOnMzY3JldA==")
	f.Add("grant_type=password&username=a&password=b", "Basic c3ZjOnMzY3JldA==")
	f.Add("grant_type=client_credentials&grant_type=x", "Basic %%%")
	f.Add("%zz", "Bearer x")
	s, err := New(Config{Clients: map[string]string{"svc": "s3cret"}, Scopes: []string{"read", "write"}, MaxRecorded: 1})
	if err != nil {
		f.Fatalf("New: got error %v, want nil", err)
	}
	f.Fuzz(func(t *testing.T, body, auth string) {
		req := httptest.NewRequest(http.MethodPost, TokenPath, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header["Authorization"] = []string{auth}
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)

		var got struct {
			AccessToken string `json:"access_token"`
			Error       string `json:"error"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
			t.Fatalf("body %q: got error %v, want JSON", rec.Body, err)
		}
		ok := rec.Code == http.StatusOK && got.AccessToken != "" && got.Error == ""
		failed := (rec.Code == http.StatusBadRequest || rec.Code == http.StatusUnauthorized) && got.AccessToken == "" && got.Error != ""
		if !ok && !failed {
			t.Errorf("got %d %s, want 200 with a token or 400/401 with an error", rec.Code, rec.Body)
		}
	})
}

func BenchmarkToken(b *testing.B) {
	s, err := New(Config{Clients: map[string]string{"svc": "s3cret"}, MaxRecorded: 1})
	if err != nil {
		b.Fatalf("New: got error %v, want nil", err)
	}
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req := httptest.NewRequest(http.MethodPost, TokenPath, strings.NewReader("grant_type=client_credentials"))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.SetBasicAuth("svc", "s3cret")
			rec := httptest.NewRecorder()
			s.ServeHTTP(rec, req)
			if rec.Code != http.StatusOK {
				b.Fatalf("token: got %d, want 200", rec.Code)
			}
		}
	})
}
