package oauth_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/oauth"
)

// seen is what a fake provider received.
type seen struct {
	Method, Path, Authorization, Accept, ContentType, UserAgent string
	Form                                                        url.Values
}

// provider is a fake token endpoint that records every request before
// answer handles it; answer finds the form in r.PostForm.
type provider struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []seen
}

func newProvider(t *testing.T, answer http.HandlerFunc) *provider {
	t.Helper()
	p := &provider{}
	p.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("provider: read request body: %v", err)
		}
		form, err := url.ParseQuery(string(body))
		if err != nil {
			t.Errorf("provider: request body is not form-encoded: %v", err)
		}
		r.PostForm = form
		p.mu.Lock()
		p.reqs = append(p.reqs, seen{
			Method:        r.Method,
			Path:          r.URL.Path,
			Authorization: r.Header.Get("Authorization"),
			Accept:        r.Header.Get("Accept"),
			ContentType:   r.Header.Get("Content-Type"),
			UserAgent:     r.Header.Get("User-Agent"),
			Form:          form,
		})
		p.mu.Unlock()
		answer(w, r)
	}))
	t.Cleanup(p.Close)
	return p
}

func (p *provider) requests() []seen {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]seen(nil), p.reqs...)
}

// only returns the single request p received.
func (p *provider) only(t *testing.T) seen {
	t.Helper()
	reqs := p.requests()
	if len(reqs) != 1 {
		t.Fatalf("provider got %d requests, want 1", len(reqs))
	}
	return reqs[0]
}

func reply(w http.ResponseWriter, status int, contentType, body string) {
	if contentType != "" {
		w.Header().Set("Content-Type", contentType)
	}
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}

func replyJSON(w http.ResponseWriter, status int, body string) {
	reply(w, status, "application/json;charset=UTF-8", body)
}

// checkHeaders asserts what every token request must carry.
func checkHeaders(t *testing.T, got seen, path string) {
	t.Helper()
	if got.Method != http.MethodPost {
		t.Errorf("provider saw method %q, want POST", got.Method)
	}
	if got.Path != path {
		t.Errorf("provider saw path %q, want %q", got.Path, path)
	}
	if got.Accept != "application/json" {
		t.Errorf("provider saw Accept %q, want application/json", got.Accept)
	}
	if got.ContentType != "application/x-www-form-urlencoded" {
		t.Errorf("provider saw Content-Type %q, want application/x-www-form-urlencoded", got.ContentType)
	}
	if got.UserAgent != "tokenbroker" {
		t.Errorf("provider saw User-Agent %q, want tokenbroker", got.UserAgent)
	}
}

func checkToken(t *testing.T, got *oauth.Token, err error, want *oauth.Token) {
	t.Helper()
	if err != nil {
		t.Fatalf("Token() error = %v, want nil", err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Token() = %+v, want %+v", got, want)
	}
}

func asError(t *testing.T, err error) *oauth.Error {
	t.Helper()
	var e *oauth.Error
	if !errors.As(err, &e) {
		t.Fatalf("Token() error = %v (%T), want an *oauth.Error", err, err)
	}
	return e
}

// newMediaHound fakes seed 001: client_credentials only, the client
// authenticates with HTTP Basic and repeats its credentials in the body.
func newMediaHound(t *testing.T, id, secret string) *provider {
	return newProvider(t, func(w http.ResponseWriter, r *http.Request) {
		user, pass, ok := r.BasicAuth()
		switch {
		case !ok || user != id || pass != secret,
			r.PostForm.Get("client_id") != id || r.PostForm.Get("client_secret") != secret:
			replyJSON(w, http.StatusUnauthorized, `{"error":"invalid_client","error_description":"Bad client credentials"}`)
		case r.PostForm.Get("grant_type") != "client_credentials":
			replyJSON(w, http.StatusBadRequest, `{"error":"unsupported_grant_type"}`)
		default:
			replyJSON(w, http.StatusOK, `{"access_token":"mh-access-1","token_type":"bearer","expires_in":86400,"scope":"public"}`)
		}
	})
}

func TestMediaHoundClientCredentials(t *testing.T) {
	const path = "/1.3/security/oauth/token"
	tests := []struct {
		give      oauth.AuthStyle
		wantAuth  string
		wantForm  url.Values
		wantToken *oauth.Token
		wantCode  string
	}{
		{
			give:     oauth.AuthBasicAndPost,
			wantAuth: "Basic TXlDbGllbnRJZDpNeUNsaWVudFNlY3JldA==", // the seed's own example
			wantForm: url.Values{"grant_type": {"client_credentials"}, "client_id": {"MyClientId"}, "client_secret": {"MyClientSecret"}},
			wantToken: &oauth.Token{
				AccessToken: "mh-access-1", TokenType: "bearer", Scope: "public", ExpiresIn: 24 * time.Hour,
			},
		},
		{
			give:     oauth.AuthBasic,
			wantAuth: "Basic TXlDbGllbnRJZDpNeUNsaWVudFNlY3JldA==",
			wantForm: url.Values{"grant_type": {"client_credentials"}},
			wantCode: "invalid_client",
		},
		{
			give:     oauth.AuthPost,
			wantForm: url.Values{"grant_type": {"client_credentials"}, "client_id": {"MyClientId"}, "client_secret": {"MyClientSecret"}},
			wantCode: "invalid_client",
		},
	}
	for _, tt := range tests {
		t.Run(tt.give.String(), func(t *testing.T) {
			p := newMediaHound(t, "MyClientId", "MyClientSecret")
			params := url.Values{"grant_type": {"client_credentials"}}
			tok, err := new(oauth.Client).Token(t.Context(), oauth.Request{
				TokenURL:     p.URL + path,
				ClientID:     "MyClientId",
				ClientSecret: "MyClientSecret",
				AuthStyle:    tt.give,
				Params:       params,
			})

			got := p.only(t)
			checkHeaders(t, got, path)
			if got.Authorization != tt.wantAuth {
				t.Errorf("provider saw Authorization %q, want %q", got.Authorization, tt.wantAuth)
			}
			if !reflect.DeepEqual(got.Form, tt.wantForm) {
				t.Errorf("provider saw form %v, want %v", got.Form, tt.wantForm)
			}
			if want := (url.Values{"grant_type": {"client_credentials"}}); !reflect.DeepEqual(params, want) {
				t.Errorf("Token() changed Params to %v, want %v", params, want)
			}
			if tt.wantCode != "" {
				if e := asError(t, err); e.StatusCode != http.StatusUnauthorized || e.Code != tt.wantCode {
					t.Errorf("Token() error = %d %q, want 401 %q", e.StatusCode, e.Code, tt.wantCode)
				}
				return
			}
			checkToken(t, tok, err, tt.wantToken)
		})
	}
}

func TestBasicAuthEscapesCredentials(t *testing.T) {
	const id, secret = "my client:1", "p@ss w/rd"
	p := newProvider(t, func(w http.ResponseWriter, r *http.Request) {
		replyJSON(w, http.StatusOK, `{"access_token":"a"}`)
	})
	_, err := new(oauth.Client).Token(t.Context(), oauth.Request{
		TokenURL: p.URL, ClientID: id, ClientSecret: secret, AuthStyle: oauth.AuthBasic,
		Params: url.Values{"grant_type": {"client_credentials"}},
	})
	if err != nil {
		t.Fatalf("Token() error = %v, want nil", err)
	}
	// RFC 6749 §2.3.1: form-url-encode each part, then join and base64.
	want := "Basic " + base64.StdEncoding.EncodeToString([]byte("my+client%3A1:p%40ss+w%2Frd"))
	if got := p.only(t).Authorization; got != want {
		t.Errorf("provider saw Authorization %q, want %q", got, want)
	}
}

// newMediaflow fakes seed 003: credentials always in the body; grant types
// refresh_token, authorization_code and password; state echoed back.
func newMediaflow(t *testing.T, id, secret string) *provider {
	return newProvider(t, func(w http.ResponseWriter, r *http.Request) {
		f := r.PostForm
		if f.Get("client_id") != id || f.Get("client_secret") != secret {
			replyJSON(w, http.StatusUnauthorized, `{"error":"invalid_client"}`)
			return
		}
		switch f.Get("grant_type") {
		case "password":
			if f.Get("username") != "ann" || f.Get("password") != "hunter2" {
				replyJSON(w, http.StatusBadRequest, `{"error":"invalid_grant"}`)
				return
			}
		case "refresh_token":
			if f.Get("refresh_token") != "mf-refresh-1" {
				replyJSON(w, http.StatusBadRequest, `{"error":"invalid_grant"}`)
				return
			}
		default:
			replyJSON(w, http.StatusBadRequest, `{"error":"unsupported_grant_type"}`)
			return
		}
		state := ""
		if s := f.Get("state"); s != "" {
			state = fmt.Sprintf(`,"state":%q`, s)
		}
		replyJSON(w, http.StatusOK, `{"access_token":"mf-access-2","refresh_token":"mf-refresh-2","token_type":"Bearer","expires_in":3600`+state+`}`)
	})
}

func TestMediaflowPostAuth(t *testing.T) {
	const path = "/1/oauth2/token"
	tests := []struct {
		name     string
		give     url.Values
		wantForm url.Values
		want     *oauth.Token
	}{
		{
			name:     "password with state",
			give:     url.Values{"grant_type": {"password"}, "username": {"ann"}, "password": {"hunter2"}, "state": {"xyz 1"}},
			wantForm: url.Values{"grant_type": {"password"}, "username": {"ann"}, "password": {"hunter2"}, "state": {"xyz 1"}, "client_id": {"mf-id"}, "client_secret": {"mf-secret"}},
			want:     &oauth.Token{AccessToken: "mf-access-2", RefreshToken: "mf-refresh-2", TokenType: "Bearer", ExpiresIn: time.Hour, State: "xyz 1"},
		},
		{
			name:     "refresh without state",
			give:     url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"mf-refresh-1"}},
			wantForm: url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"mf-refresh-1"}, "client_id": {"mf-id"}, "client_secret": {"mf-secret"}},
			want:     &oauth.Token{AccessToken: "mf-access-2", RefreshToken: "mf-refresh-2", TokenType: "Bearer", ExpiresIn: time.Hour},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newMediaflow(t, "mf-id", "mf-secret")
			tok, err := new(oauth.Client).Token(t.Context(), oauth.Request{
				TokenURL: p.URL + path, ClientID: "mf-id", ClientSecret: "mf-secret",
				AuthStyle: oauth.AuthPost, Params: tt.give,
			})
			checkToken(t, tok, err, tt.want)
			got := p.only(t)
			checkHeaders(t, got, path)
			if got.Authorization != "" {
				t.Errorf("provider saw Authorization %q, want none", got.Authorization)
			}
			if !reflect.DeepEqual(got.Form, tt.wantForm) {
				t.Errorf("provider saw form %v, want %v", got.Form, tt.wantForm)
			}
			if _, ok := tt.give["client_id"]; ok {
				t.Errorf("Token() added client_id to the caller's Params")
			}
		})
	}
}

// newMediaHaven fakes seed 004's /auth/oauth2/token: credentials in the
// body, a refresh rotates both tokens and invalidates the old ones, a dead
// refresh token gets a bare 401. expiresIn is written into the JSON as is.
func newMediaHaven(t *testing.T, expiresIn string) *provider {
	var (
		mu      sync.Mutex
		n       int
		refresh = map[string]bool{}
	)
	return newProvider(t, func(w http.ResponseWriter, r *http.Request) {
		f := r.PostForm
		if f.Get("client_id") != "882rgLgNTSqwBSnUUbC3qRiUfMGhorzZ" || f.Get("client_secret") != "KwfoaaXUDc6xdQKxBwxvxK55D4wZQ757" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		switch f.Get("grant_type") {
		case "authorization_code":
			if f.Get("code") != "OORO1gjyWP7Mr9ztl2Dvp06NjR2kTApc" {
				replyJSON(w, http.StatusBadRequest, `{"error":"invalid_grant"}`)
				return
			}
		case "refresh_token":
			if !refresh[f.Get("refresh_token")] {
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			delete(refresh, f.Get("refresh_token"))
		default:
			replyJSON(w, http.StatusBadRequest, `{"error":"unsupported_grant_type"}`)
			return
		}
		n++
		refresh[fmt.Sprintf("mh-refresh-%d", n)] = true
		replyJSON(w, http.StatusOK, fmt.Sprintf(
			`{ "refresh_token":"mh-refresh-%d", "token_type":"bearer", "access_token":"mh-access-%d", "expires_in":%s }`, n, n, expiresIn))
	})
}

func TestMediaHavenRotation(t *testing.T) {
	const path = "/auth/oauth2/token"
	tests := []struct {
		name string
		give string // expires_in as the fake writes it
	}{
		{name: "number", give: `7200`},
		{name: "string", give: `"7200"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newMediaHaven(t, tt.give)
			c := &oauth.Client{}
			call := func(params url.Values) (*oauth.Token, error) {
				return c.Token(t.Context(), oauth.Request{
					TokenURL: p.URL + path, ClientID: "882rgLgNTSqwBSnUUbC3qRiUfMGhorzZ",
					ClientSecret: "KwfoaaXUDc6xdQKxBwxvxK55D4wZQ757", AuthStyle: oauth.AuthPost, Params: params,
				})
			}

			tok, err := call(url.Values{"grant_type": {"authorization_code"}, "code": {"OORO1gjyWP7Mr9ztl2Dvp06NjR2kTApc"}})
			checkToken(t, tok, err, &oauth.Token{AccessToken: "mh-access-1", RefreshToken: "mh-refresh-1", TokenType: "bearer", ExpiresIn: 2 * time.Hour})

			tok, err = call(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"mh-refresh-1"}})
			checkToken(t, tok, err, &oauth.Token{AccessToken: "mh-access-2", RefreshToken: "mh-refresh-2", TokenType: "bearer", ExpiresIn: 2 * time.Hour})

			_, err = call(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"mh-refresh-1"}})
			if e := asError(t, err); e.StatusCode != http.StatusUnauthorized || e.Code != "" || e.Temporary() {
				t.Errorf("reused refresh token: error %d %q temporary=%v, want 401 \"\" temporary=false", e.StatusCode, e.Code, e.Temporary())
			}

			reqs := p.requests()
			if len(reqs) != 3 {
				t.Fatalf("provider got %d requests, want 3", len(reqs))
			}
			for _, r := range reqs {
				checkHeaders(t, r, path)
			}
			wantForm := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"mh-refresh-1"},
				"client_id": {"882rgLgNTSqwBSnUUbC3qRiUfMGhorzZ"}, "client_secret": {"KwfoaaXUDc6xdQKxBwxvxK55D4wZQ757"}}
			if !reflect.DeepEqual(reqs[1].Form, wantForm) {
				t.Errorf("provider saw refresh form %v, want %v", reqs[1].Form, wantForm)
			}
		})
	}
}

// newMediaValet fakes seed 002's /connect/token for the authorization code
// grant: the code's granted scopes decide whether an id_token (openid) and a
// refresh_token (offline_access) come back; redirect_uri must match.
func newMediaValet(t *testing.T) *provider {
	granted := map[string]string{"code-offline": "openid api offline_access", "code-online": "openid api"}
	return newProvider(t, func(w http.ResponseWriter, r *http.Request) {
		f := r.PostForm
		scope, ok := granted[f.Get("code")]
		switch {
		case f.Get("client_id") != "mv-id" || f.Get("client_secret") != "mv-secret":
			replyJSON(w, http.StatusUnauthorized, `{"error":"invalid_client"}`)
			return
		case f.Get("grant_type") != "authorization_code":
			replyJSON(w, http.StatusBadRequest, `{"error":"unsupported_grant_type"}`)
			return
		case !ok || f.Get("redirect_uri") != "https://broker.example/callback":
			replyJSON(w, http.StatusBadRequest, `{"error":"invalid_grant"}`)
			return
		}
		body := `{"access_token":"mv-access","expires_in":3600,"token_type":"Bearer","scope":"` + scope + `"`
		if strings.Contains(scope, "openid") {
			body += `,"id_token":"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln"`
		}
		if strings.Contains(scope, "offline_access") {
			body += `,"refresh_token":"mv-refresh"`
		}
		replyJSON(w, http.StatusOK, body+"}")
	})
}

func TestMediaValetIDToken(t *testing.T) {
	const path = "/connect/token"
	tests := []struct {
		give string // authorization code
		want *oauth.Token
	}{
		{
			give: "code-offline",
			want: &oauth.Token{AccessToken: "mv-access", TokenType: "Bearer", ExpiresIn: time.Hour, Scope: "openid api offline_access",
				IDToken: "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln", RefreshToken: "mv-refresh"},
		},
		{
			give: "code-online",
			want: &oauth.Token{AccessToken: "mv-access", TokenType: "Bearer", ExpiresIn: time.Hour, Scope: "openid api",
				IDToken: "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			p := newMediaValet(t)
			tok, err := new(oauth.Client).Token(t.Context(), oauth.Request{
				TokenURL: p.URL + path, ClientID: "mv-id", ClientSecret: "mv-secret", AuthStyle: oauth.AuthPost,
				Params: url.Values{"grant_type": {"authorization_code"}, "code": {tt.give}, "redirect_uri": {"https://broker.example/callback"}},
			})
			checkToken(t, tok, err, tt.want)
			got := p.only(t)
			checkHeaders(t, got, path)
			wantForm := url.Values{"grant_type": {"authorization_code"}, "code": {tt.give}, "redirect_uri": {"https://broker.example/callback"},
				"client_id": {"mv-id"}, "client_secret": {"mv-secret"}}
			if !reflect.DeepEqual(got.Form, wantForm) {
				t.Errorf("provider saw form %v, want %v", got.Form, wantForm)
			}
		})
	}
}

func TestExpiresIn(t *testing.T) {
	tests := []struct {
		name    string
		give    string // the expires_in member, "" for none
		want    time.Duration
		wantErr error
	}{
		{name: "number", give: `,"expires_in":3600`, want: time.Hour},
		{name: "float", give: `,"expires_in":3600.0`, want: time.Hour},
		{name: "fraction", give: `,"expires_in":1.5`, want: 1500 * time.Millisecond},
		{name: "exponent", give: `,"expires_in":3.6e3`, want: time.Hour},
		{name: "numeric string", give: `,"expires_in":"3600"`, want: time.Hour},
		{name: "empty string", give: `,"expires_in":""`, want: 0},
		{name: "missing", give: ``, want: 0},
		{name: "null", give: `,"expires_in":null`, want: 0},
		{name: "zero", give: `,"expires_in":0`, want: 0},
		{name: "ten years", give: `,"expires_in":315360000`, want: 10 * 365 * 24 * time.Hour},
		{name: "negative", give: `,"expires_in":-1`, wantErr: oauth.ErrBadResponse},
		{name: "negative string", give: `,"expires_in":"-60"`, wantErr: oauth.ErrBadResponse},
		{name: "abc", give: `,"expires_in":"abc"`, wantErr: oauth.ErrBadResponse},
		{name: "padded string", give: `,"expires_in":" 60"`, wantErr: oauth.ErrBadResponse},
		{name: "hex string", give: `,"expires_in":"0x10"`, wantErr: oauth.ErrBadResponse},
		{name: "Inf string", give: `,"expires_in":"Infinity"`, wantErr: oauth.ErrBadResponse},
		{name: "bool", give: `,"expires_in":true`, wantErr: oauth.ErrBadResponse},
		{name: "object", give: `,"expires_in":{}`, wantErr: oauth.ErrBadResponse},
		{name: "huge", give: `,"expires_in":315360001`, wantErr: oauth.ErrBadResponse},
		{name: "overflow", give: `,"expires_in":1e400`, wantErr: oauth.ErrBadResponse},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newProvider(t, func(w http.ResponseWriter, r *http.Request) {
				replyJSON(w, http.StatusOK, `{"access_token":"at"`+tt.give+`}`)
			})
			tok, err := new(oauth.Client).Token(t.Context(), oauth.Request{
				TokenURL: p.URL, ClientID: "id", ClientSecret: "s", AuthStyle: oauth.AuthBasic,
				Params: url.Values{"grant_type": {"client_credentials"}},
			})
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) || tok != nil {
					t.Fatalf("Token() = %+v, %v; want nil, %v", tok, err, tt.wantErr)
				}
				return
			}
			checkToken(t, tok, err, &oauth.Token{AccessToken: "at", ExpiresIn: tt.want})
		})
	}
}

func TestErrorAnswers(t *testing.T) {
	tests := []struct {
		name          string
		status        int
		contentType   string
		header        http.Header
		give          string
		want          oauth.Error
		wantString    string
		wantTemporary bool
	}{
		{
			name: "invalid_client", status: 401, contentType: "application/json",
			give:       `{"error":"invalid_client","error_description":"Client authentication failed"}`,
			want:       oauth.Error{StatusCode: 401, Code: "invalid_client", Description: "Client authentication failed"},
			wantString: "oauth: token endpoint answered 401: invalid_client: Client authentication failed",
		},
		{
			name: "invalid_grant", status: 400, contentType: "application/json",
			give:       `{"error":"invalid_grant","error_description":"Refresh token expired","error_uri":"https://idp.example/errors#grant"}`,
			want:       oauth.Error{StatusCode: 400, Code: "invalid_grant", Description: "Refresh token expired", URI: "https://idp.example/errors#grant"},
			wantString: "oauth: token endpoint answered 400: invalid_grant: Refresh token expired",
		},
		{
			name: "html bad gateway", status: 502, contentType: "text/html",
			give:          `<html><body><h1>502 Bad Gateway</h1>nginx</body></html>`,
			want:          oauth.Error{StatusCode: 502},
			wantString:    "oauth: token endpoint answered 502 Bad Gateway",
			wantTemporary: true,
		},
		{
			name: "rate limited", status: 429, contentType: "application/json", header: http.Header{"Retry-After": {"7"}},
			give:          `{"error":"slow_down"}`,
			want:          oauth.Error{StatusCode: 429, Code: "slow_down", RetryAfter: 7 * time.Second},
			wantString:    "oauth: token endpoint answered 429: slow_down",
			wantTemporary: true,
		},
		{
			name: "rate limited capped", status: 429, header: http.Header{"Retry-After": {"86400"}},
			want:          oauth.Error{StatusCode: 429, RetryAfter: time.Hour},
			wantString:    "oauth: token endpoint answered 429 Too Many Requests",
			wantTemporary: true,
		},
		{
			name: "json with a wrong content type", status: 503, contentType: "text/html",
			give:          `{"error":"temporarily_unavailable"}`,
			want:          oauth.Error{StatusCode: 503, Code: "temporarily_unavailable"},
			wantString:    "oauth: token endpoint answered 503: temporarily_unavailable",
			wantTemporary: true,
		},
		{
			name: "form error", status: 400, contentType: "application/x-www-form-urlencoded",
			give:       `error=invalid_scope&error_description=scope+%22admin%22+unknown`,
			want:       oauth.Error{StatusCode: 400, Code: "invalid_scope", Description: `scope "admin" unknown`},
			wantString: `oauth: token endpoint answered 400: invalid_scope: scope "admin" unknown`,
		},
		{
			name: "error in a 200", status: 200, contentType: "text/plain",
			give:       `error=bad_verification_code&error_description=The+code+is+incorrect+or+expired.`,
			want:       oauth.Error{StatusCode: 200, Code: "bad_verification_code", Description: "The code is incorrect or expired."},
			wantString: "oauth: token endpoint answered 200: bad_verification_code: The code is incorrect or expired.",
		},
		{
			name: "empty 500", status: 500,
			want:          oauth.Error{StatusCode: 500},
			wantString:    "oauth: token endpoint answered 500 Internal Server Error",
			wantTemporary: true,
		},
		{
			name: "hostile description", status: 400, contentType: "application/json",
			give:       `{"error":"invalid_request","error_description":"line1\nline2\u0000\u001b[31m` + strings.Repeat("x", 400) + `"}`,
			want:       oauth.Error{StatusCode: 400, Code: "invalid_request", Description: ("line1 line2[31m" + strings.Repeat("x", 400))[:256]},
			wantString: "oauth: token endpoint answered 400: invalid_request: " + ("line1 line2[31m" + strings.Repeat("x", 400))[:256],
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newProvider(t, func(w http.ResponseWriter, r *http.Request) {
				for k, v := range tt.header {
					w.Header()[k] = v
				}
				reply(w, tt.status, tt.contentType, tt.give)
			})
			tok, err := new(oauth.Client).Token(t.Context(), oauth.Request{
				TokenURL: p.URL, ClientID: "id", ClientSecret: "s", AuthStyle: oauth.AuthBasic,
				Params: url.Values{"grant_type": {"client_credentials"}},
			})
			if tok != nil {
				t.Errorf("Token() = %+v, want nil", tok)
			}
			e := asError(t, err)
			if *e != tt.want {
				t.Errorf("Token() error = %+v, want %+v", *e, tt.want)
			}
			if got := err.Error(); got != tt.wantString {
				t.Errorf("Error() = %q, want %q", got, tt.wantString)
			}
			if got := e.Temporary(); got != tt.wantTemporary {
				t.Errorf("Temporary() = %v, want %v", got, tt.wantTemporary)
			}
		})
	}
}

func TestBadAnswers(t *testing.T) {
	tests := []struct {
		name        string
		status      int
		contentType string
		give        string
		max         int64
		want        error
	}{
		{name: "html 200", status: 200, contentType: "text/html; charset=utf-8", give: `<!doctype html><title>Login</title>`, want: oauth.ErrBadResponse},
		{name: "missing access_token", status: 200, contentType: "application/json", give: `{"token_type":"bearer","expires_in":3600}`, want: oauth.ErrBadResponse},
		{name: "empty access_token", status: 200, contentType: "application/json", give: `{"access_token":""}`, want: oauth.ErrBadResponse},
		{name: "numeric access_token", status: 200, contentType: "application/json", give: `{"access_token":12345}`, want: oauth.ErrBadResponse},
		{name: "truncated json", status: 200, contentType: "application/json", give: `{"access_token":"a`, want: oauth.ErrBadResponse},
		{name: "too large 200", status: 200, contentType: "application/json", give: `{"access_token":"` + strings.Repeat("a", 200) + `"}`, max: 64, want: oauth.ErrResponseTooLarge},
		{name: "too large 500", status: 500, contentType: "text/html", give: strings.Repeat("<p>oops</p>", 100), max: 64, want: oauth.ErrResponseTooLarge},
		{name: "exactly the limit", status: 200, contentType: "application/json", give: `{"access_token":"abc"}`, max: 22},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newProvider(t, func(w http.ResponseWriter, r *http.Request) {
				reply(w, tt.status, tt.contentType, tt.give)
			})
			c := &oauth.Client{MaxResponseBytes: tt.max}
			tok, err := c.Token(t.Context(), oauth.Request{
				TokenURL: p.URL, ClientID: "id", ClientSecret: "s", AuthStyle: oauth.AuthBasic,
				Params: url.Values{"grant_type": {"client_credentials"}},
			})
			if !errors.Is(err, tt.want) || (err == nil) != (tok != nil) {
				t.Errorf("Token() = %+v, %v; want error %v", tok, err, tt.want)
			}
		})
	}
}

// slowProvider answers only when the request is abandoned, and tells
// arrived when a request is in.
func slowProvider(t *testing.T) (p *provider, arrived chan struct{}) {
	arrived = make(chan struct{}, 1)
	p = newProvider(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case arrived <- struct{}{}:
		default:
		}
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	})
	return p, arrived
}

func TestTransportFailures(t *testing.T) {
	ccReq := func(tokenURL string) oauth.Request {
		return oauth.Request{TokenURL: tokenURL, ClientID: "id", ClientSecret: "s", AuthStyle: oauth.AuthBasic,
			Params: url.Values{"grant_type": {"client_credentials"}}}
	}

	t.Run("provider slower than Timeout", func(t *testing.T) {
		p, _ := slowProvider(t)
		c := &oauth.Client{Timeout: 100 * time.Millisecond}
		_, err := c.Token(t.Context(), ccReq(p.URL))
		if !errors.Is(err, oauth.ErrTransport) || errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Token() error = %v, want ErrTransport and not context.DeadlineExceeded", err)
		}
	})

	t.Run("caller cancels", func(t *testing.T) {
		p, arrived := slowProvider(t)
		ctx, cancel := context.WithCancel(t.Context())
		go func() {
			<-arrived
			cancel()
		}()
		_, err := new(oauth.Client).Token(ctx, ccReq(p.URL))
		if !errors.Is(err, context.Canceled) || errors.Is(err, oauth.ErrTransport) {
			t.Errorf("Token() error = %v, want context.Canceled and not ErrTransport", err)
		}
	})

	t.Run("caller deadline", func(t *testing.T) {
		p, _ := slowProvider(t)
		ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
		defer cancel()
		_, err := new(oauth.Client).Token(ctx, ccReq(p.URL))
		if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, oauth.ErrTransport) {
			t.Errorf("Token() error = %v, want context.DeadlineExceeded and not ErrTransport", err)
		}
	})

	t.Run("connection refused", func(t *testing.T) {
		srv := httptest.NewServer(http.NotFoundHandler())
		srv.Close()
		_, err := new(oauth.Client).Token(t.Context(), ccReq(srv.URL+"/token?tenant=acme"))
		if !errors.Is(err, oauth.ErrTransport) {
			t.Fatalf("Token() error = %v, want ErrTransport", err)
		}
		if strings.Contains(err.Error(), "tenant=acme") {
			t.Errorf("Token() error = %q, want the query string left out", err)
		}
	})

	t.Run("redirect is not followed", func(t *testing.T) {
		elsewhere := newProvider(t, func(w http.ResponseWriter, r *http.Request) {
			replyJSON(w, http.StatusOK, `{"access_token":"stolen"}`)
		})
		p := newProvider(t, func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, elsewhere.URL, http.StatusTemporaryRedirect)
		})
		_, err := new(oauth.Client).Token(t.Context(), ccReq(p.URL))
		if e := asError(t, err); e.StatusCode != http.StatusTemporaryRedirect {
			t.Errorf("Token() error status = %d, want 307", e.StatusCode)
		}
		if n := len(elsewhere.requests()); n != 0 {
			t.Errorf("redirect target got %d requests, want 0", n)
		}
	})
}

func TestInvalidRequest(t *testing.T) {
	p := newProvider(t, func(w http.ResponseWriter, r *http.Request) {
		replyJSON(w, http.StatusOK, `{"access_token":"a"}`)
	})
	tests := []struct {
		name string
		give oauth.Request
	}{
		{name: "no auth style", give: oauth.Request{TokenURL: p.URL, ClientID: "id"}},
		{name: "unknown auth style", give: oauth.Request{TokenURL: p.URL, ClientID: "id", AuthStyle: 9}},
		{name: "empty url", give: oauth.Request{ClientID: "id", AuthStyle: oauth.AuthPost}},
		{name: "relative url", give: oauth.Request{TokenURL: "/token", ClientID: "id", AuthStyle: oauth.AuthPost}},
		{name: "ftp url", give: oauth.Request{TokenURL: "ftp://idp.example/token", ClientID: "id", AuthStyle: oauth.AuthPost}},
		{name: "userinfo url", give: oauth.Request{TokenURL: strings.Replace(p.URL, "//", "//id:pw-in-url@", 1), ClientID: "id", AuthStyle: oauth.AuthPost}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, err := new(oauth.Client).Token(t.Context(), tt.give)
			if err == nil || tok != nil {
				t.Fatalf("Token() = %+v, %v; want an error", tok, err)
			}
			if errors.Is(err, oauth.ErrTransport) || strings.Contains(err.Error(), "pw-in-url") {
				t.Errorf("Token() error = %q, want a request error without the URL", err)
			}
		})
	}
	if n := len(p.requests()); n != 0 {
		t.Errorf("provider got %d requests, want 0", n)
	}
}

// TestErrorsKeepSecrets makes every kind of failure happen with distinctive
// credentials and tokens around, some echoed by the provider, and checks
// that none reaches an error string.
func TestErrorsKeepSecrets(t *testing.T) {
	const (
		secret   = "SEKRET-c1ient-9f3a"
		refresh  = "REFRESH-tok-77b1"
		password = "PASSWORD-u5er-e02c"
		access   = "ACCESS-tok-41d9"
		query    = "QUERY-tenant-5a0e"
	)
	leaks := []string{secret, refresh, password, access, query, "<html"}
	everything := secret + " " + refresh + " " + password + " " + access

	tests := []struct {
		name   string
		answer http.HandlerFunc // nil: nothing listens
	}{
		{name: "401 echoing the secret", answer: func(w http.ResponseWriter, r *http.Request) {
			replyJSON(w, 401, `{"error":"invalid_client","error_description":"bad secret `+secret+`"}`)
		}},
		{name: "400 echoing the refresh token in every field", answer: func(w http.ResponseWriter, r *http.Request) {
			replyJSON(w, 400, `{"error":"`+refresh+`","error_description":"`+refresh+`","error_uri":"https://x/`+refresh+`"}`)
		}},
		{name: "400 echoing the form", answer: func(w http.ResponseWriter, r *http.Request) {
			replyJSON(w, 400, fmt.Sprintf(`{"error":"invalid_request","error_description":%q}`, r.PostForm.Encode()))
		}},
		{name: "502 html", answer: func(w http.ResponseWriter, r *http.Request) {
			reply(w, 502, "text/html", "<html>"+everything+"</html>")
		}},
		{name: "200 html", answer: func(w http.ResponseWriter, r *http.Request) {
			reply(w, 200, "text/html", "<html>"+everything+"</html>")
		}},
		{name: "200 error with tokens", answer: func(w http.ResponseWriter, r *http.Request) {
			replyJSON(w, 200, `{"error":"invalid_grant","error_description":"password `+password+` wrong","access_token":"`+access+`"}`)
		}},
		{name: "200 bad expires_in", answer: func(w http.ResponseWriter, r *http.Request) {
			replyJSON(w, 200, `{"access_token":"`+access+`","refresh_token":"`+refresh+`","expires_in":"`+secret+`"}`)
		}},
		{name: "200 bad token_type", answer: func(w http.ResponseWriter, r *http.Request) {
			replyJSON(w, 200, `{"access_token":"`+access+`","token_type":["`+secret+`"]}`)
		}},
		{name: "200 token with a newline", answer: func(w http.ResponseWriter, r *http.Request) {
			replyJSON(w, 200, `{"access_token":"`+access+`\n"}`)
		}},
		{name: "200 not json", answer: func(w http.ResponseWriter, r *http.Request) {
			reply(w, 200, "application/json", `{"access_token":"`+access+`" `+secret)
		}},
		{name: "too large", answer: func(w http.ResponseWriter, r *http.Request) {
			replyJSON(w, 200, `{"access_token":"`+access+strings.Repeat("x", 2000)+`"}`)
		}},
		{name: "too slow", answer: func(w http.ResponseWriter, r *http.Request) {
			<-r.Context().Done()
		}},
		{name: "connection refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var tokenURL string
			if tt.answer != nil {
				tokenURL = newProvider(t, tt.answer).URL
			} else {
				srv := httptest.NewServer(http.NotFoundHandler())
				srv.Close()
				tokenURL = srv.URL
			}
			c := &oauth.Client{Timeout: 100 * time.Millisecond, MaxResponseBytes: 1000}
			tok, err := c.Token(t.Context(), oauth.Request{
				TokenURL:     tokenURL + "/token?tenant=" + query,
				ClientID:     "id",
				ClientSecret: secret,
				AuthStyle:    oauth.AuthBasicAndPost,
				Params:       url.Values{"grant_type": {"password"}, "username": {"ann"}, "password": {password}, "refresh_token": {refresh}},
			})
			if err == nil {
				t.Fatalf("Token() = %+v, want an error", tok)
			}
			for _, leak := range leaks {
				if strings.Contains(err.Error(), leak) {
					t.Errorf("Token() error = %q, want it without %q", err, leak)
				}
			}
		})
	}
}
