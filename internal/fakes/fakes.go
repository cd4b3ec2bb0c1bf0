// Package fakes holds one fake OAuth2 provider per seed document in
// ../shared/seeds (MediaCore, MediaHound, MediaValet, Mediaflow, MediaHaven)
// and a generic OpenID Connect issuer, for the tests of any package.
//
// Each fake is an httptest server that serves the provider's documented
// paths on top of package sandbox (a complete in-process authorization
// server), with the provider's quirks layered on: a check in front of the
// sandbox that fails the test (t.Errorf) when the client does something the
// document forbids, and a rewrite of the sandbox's answer where the document
// says the provider answers differently. Every request a fake receives is
// recorded, with the answer it got, for assertions on what the provider saw.
//
// The fakes start no goroutines of their own; each closes its servers when
// the test ends.
package fakes

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/sandbox"
)

// The resource owner every fake knows. The authorize endpoints approve at
// once when the request carries `Authorization: Basic User:Password`.
const (
	User     = "alice"
	Password = "wonderland-42"
)

// RedirectURI is the redirect URI every fake registers for its clients
// unless WithRedirectURIs says otherwise: the broker's callback as the
// provider knows it.
const RedirectURI = "https://tokenbroker.example.com/v1/oauth/callback"

// Endpoint is the kind of a fake's route.
type Endpoint int

// The kinds of routes.
const (
	TokenEndpoint Endpoint = iota + 1
	AuthorizeEndpoint
	IntrospectionEndpoint
	RevocationEndpoint
	ResourceEndpoint
	DiscoveryEndpoint
)

var endpointNames = [...]string{TokenEndpoint: "token", AuthorizeEndpoint: "authorize",
	IntrospectionEndpoint: "introspection", RevocationEndpoint: "revocation",
	ResourceEndpoint: "resource", DiscoveryEndpoint: "discovery"}

func (e Endpoint) String() string {
	if e > 0 && int(e) < len(endpointNames) {
		return endpointNames[e]
	}
	return fmt.Sprintf("Endpoint(%d)", int(e))
}

// Request is one request a fake received and what it answered.
type Request struct {
	Endpoint Endpoint // 0 for a path the fake does not serve (answered 404)
	Method   string
	Host     string
	Path     string
	Query    url.Values
	Header   http.Header
	Form     url.Values // the form-encoded body; never the URL query
	Time     time.Time  // the fake's clock when the request arrived
	Status   int
	// Answer is the decoded JSON answer; nil when the answer was not JSON.
	Answer map[string]any
	// Location is the redirect of an authorize answer.
	Location string
}

// AnswerString returns the string field key of the JSON answer, "" when it
// is absent or not a string.
func (r Request) AnswerString(key string) string {
	s, _ := r.Answer[key].(string)
	return s
}

// Option configures a fake.
type Option func(*config)

type config struct {
	now             func() time.Time
	tokenLifetime   time.Duration
	refreshLifetime time.Duration
	codeLifetime    time.Duration
	redirectURIs    []string
	secret          string
}

// WithClock makes now the fake's clock (token and code lifetimes); share it
// with the broker under test to move both at once. time.Now by default.
func WithClock(now func() time.Time) Option { return func(c *config) { c.now = now } }

// WithTokenLifetime sets the lifetime of the access tokens the fake issues;
// one hour by default.
func WithTokenLifetime(d time.Duration) Option { return func(c *config) { c.tokenLifetime = d } }

// WithRefreshTokenLifetime sets how long a refresh token stays usable; 24 h
// by default.
func WithRefreshTokenLifetime(d time.Duration) Option {
	return func(c *config) { c.refreshLifetime = d }
}

// WithCodeLifetime sets how long an authorization code can be redeemed; 60 s
// (MediaValet's) by default.
func WithCodeLifetime(d time.Duration) Option { return func(c *config) { c.codeLifetime = d } }

// WithRedirectURIs registers uris instead of RedirectURI for every client.
func WithRedirectURIs(uris ...string) Option {
	return func(c *config) { c.redirectURIs = slices.Clone(uris) }
}

// WithClientSecret replaces the client secret of the fake's (first) client.
func WithClientSecret(secret string) Option { return func(c *config) { c.secret = secret } }

func newConfig(opts []Option) config {
	c := config{now: time.Now, redirectURIs: []string{RedirectURI}}
	for _, o := range opts {
		o(&c)
	}
	return c
}

// Server is what every fake shares: the routes, the sandbox behind them, the
// record of requests and the knobs. Its methods are safe for concurrent use.
type Server struct {
	t       testing.TB
	name    string
	cfg     config
	sb      *sandbox.Server
	srv     *httptest.Server
	login   string            // Mediaflow's second host
	clients map[string]string // client_id → client_secret
	// clientID and clientSecret are the fake's first client, the one its
	// constructor documents.
	clientID, clientSecret string
	// rotates: a refresh token dies on first use, so the fake fails the
	// test when one is presented twice.
	rotates bool
	// check sees every routed request before the sandbox (an authorize
	// request after requireRegisteredRedirect); a non-nil answer is sent
	// instead of the sandbox's.
	check func(e Endpoint, r *http.Request, form url.Values) *answer
	// alter rewrites a successful token answer; code is the authorization
	// request of an authorization_code grant (zero otherwise).
	alter func(form url.Values, code Code, resp map[string]any)

	mu        sync.Mutex
	reqs      []Request
	fail      *answer
	presented map[string]bool // refresh tokens presented to the token endpoint
	refreshes []string        // refresh tokens issued
	accesses  []string        // access tokens issued
	codes     map[string]Code // authorization code → its authorization request
	passwords map[string]string
	tokenType string
	bare401   bool // MediaHaven.SetBareUnauthorized
	// foreignState is Mediaflow.EchoForeignState.
	foreignState bool
}

// Code is the authorization request an authorization code was issued for.
type Code struct {
	ClientID    string
	RedirectURI string // as the authorization request carried it ("" when it did not)
	State       string
	Challenge   string
	Scope       string
}

// answer is an HTTP answer a fake sends.
type answer struct {
	status int
	header http.Header
	body   []byte
}

func jsonAnswer(status int, v any) *answer {
	body, err := json.Marshal(v)
	if err != nil {
		panic(err) // the fakes marshal maps of strings and numbers only
	}
	return &answer{status: status, header: http.Header{"Content-Type": {"application/json"}}, body: body}
}

func oauthError(status int, code, desc string) *answer {
	return jsonAnswer(status, map[string]string{"error": code, "error_description": desc})
}

// route is one path a fake serves: by the sandbox at target, or by serve.
type route struct {
	endpoint Endpoint
	target   string
	serve    func(r *http.Request) *answer
}

// newServer builds the sandbox of a fake whose first client is clientID;
// the caller starts the listeners.
func newServer(t testing.TB, name string, cfg config, clientID string, sc sandbox.Config) *Server {
	t.Helper()
	if cfg.secret != "" {
		sc.Clients[clientID] = cfg.secret
	}
	sc.Now = cfg.now
	sc.TokenLifetime = cfg.tokenLifetime
	sc.RefreshTokenLifetime = cfg.refreshLifetime
	sc.CodeLifetime = cfg.codeLifetime
	if sc.RedirectURIs != nil {
		for id := range sc.RedirectURIs {
			sc.RedirectURIs[id] = slices.Clone(cfg.redirectURIs)
		}
	}
	sb, err := sandbox.New(sc)
	if err != nil {
		t.Fatalf("fakes: %s: %v", name, err)
	}
	return &Server{
		t: t, name: name, cfg: cfg, sb: sb, clients: maps.Clone(sc.Clients),
		clientID: clientID, clientSecret: sc.Clients[clientID],
		presented: map[string]bool{}, codes: map[string]Code{}, passwords: map[string]string{},
	}
}

// listen serves routes on a new httptest server, closed when the test ends.
func (s *Server) listen(tls bool, routes map[string]route) *httptest.Server {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.serve(w, r, routes) })
	var srv *httptest.Server
	if tls {
		srv = httptest.NewTLSServer(h)
	} else {
		srv = httptest.NewServer(h)
	}
	s.t.Cleanup(srv.Close)
	return srv
}

// URL is the base URL of the fake (scheme and host, no path).
func (s *Server) URL() string { return s.srv.URL }

// Client returns an HTTP client that trusts the fake (it may use TLS) and
// does not follow redirects, as the broker's token client does not.
func (s *Server) Client() *http.Client {
	c := *s.srv.Client()
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &c
}

// ClientID is the client the fake registered for the broker.
func (s *Server) ClientID() string { return s.clientID }

// ClientSecret is ClientID's secret.
func (s *Server) ClientSecret() string { return s.clientSecret }

// Active reports whether the provider holds token as an active access
// token, by asking the sandbox behind the fake directly (not recorded).
func (s *Server) Active(token string) bool {
	form := url.Values{"token": {token}}
	req := httptest.NewRequest(http.MethodPost, sandbox.IntrospectPath, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(url.QueryEscape(s.clientID), url.QueryEscape(s.clientSecret))
	rr := httptest.NewRecorder()
	s.sb.ServeHTTP(rr, req)
	var in struct {
		Active bool `json:"active"`
	}
	if err := json.Unmarshal(rr.Body.Bytes(), &in); err != nil || rr.Code != http.StatusOK {
		s.t.Errorf("fakes: %s: introspect in the sandbox answered %d %q", s.name, rr.Code, rr.Body.Bytes())
	}
	return in.Active
}

// Sandbox is the authorization server behind the fake.
func (s *Server) Sandbox() *sandbox.Server { return s.sb }

// ReusedRefreshTokens counts the refresh tokens presented after rotation
// had replaced them; a correct client keeps it at 0.
func (s *Server) ReusedRefreshTokens() int { return s.sb.ReusedRefreshTokens() }

// Requests returns every request received so far, in order.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.reqs)
}

// Calls returns the requests received at path, in order.
func (s *Server) Calls(path string) []Request {
	var out []Request
	for _, r := range s.Requests() {
		if r.Path == path {
			out = append(out, r)
		}
	}
	return out
}

// TokenRequests returns the requests to the token endpoints with
// grant_type grant (every one when grant is empty), in order.
func (s *Server) TokenRequests(grant string) []Request {
	var out []Request
	for _, r := range s.Requests() {
		if r.Endpoint == TokenEndpoint && (grant == "" || r.Form.Get("grant_type") == grant) {
			out = append(out, r)
		}
	}
	return out
}

// RefreshTokens returns the refresh tokens the fake issued, in order.
func (s *Server) RefreshTokens() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.refreshes)
}

// Fail makes every token endpoint answer status and body (JSON) instead of
// handling the request, until Recover. The request is recorded and nothing
// it carried is used: a refresh token stays valid.
func (s *Server) Fail(status int, body string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail = &answer{status: status, header: http.Header{"Content-Type": {"application/json"}}, body: []byte(body)}
}

// Recover undoes Fail.
func (s *Server) Recover() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail = nil
}

// RevokeAll revokes every grant the fake issued, as a user removing the app
// would: each refresh token (and its whole lineage) and each access token
// stops working.
func (s *Server) RevokeAll() {
	s.mu.Lock()
	rts, ats := slices.Clone(s.refreshes), slices.Clone(s.accesses)
	s.mu.Unlock()
	for _, rt := range rts {
		s.sb.RevokeGrant(rt)
	}
	for _, at := range ats {
		s.sb.Revoke(at)
	}
}

// SetPassword changes user's password at the provider: the password grant
// with any other password is invalid_grant from now on.
func (s *Server) SetPassword(user, password string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.passwords[user] = password
}

// SetTokenType makes successful token answers carry token_type tt (the
// grant itself is processed as usual: a rotating provider still rotates);
// "" restores the provider's own.
func (s *Server) SetTokenType(tt string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokenType = tt
}

// Consent opens authorizeURL as a browser whose user signs in and approves
// at once (`Authorization: Basic user:password`, the sandbox's shortcut)
// and returns where the provider sends the browser back. It does not
// follow that redirect.
func (s *Server) Consent(authorizeURL, user, password string) (*url.URL, error) {
	req, err := http.NewRequest(http.MethodGet, authorizeURL, nil)
	if err != nil {
		return nil, err
	}
	req.SetBasicAuth(user, password)
	return s.follow(req)
}

// Deny opens authorizeURL and refuses consent on the sign-in page; it
// returns where the provider sends the browser back.
func (s *Server) Deny(authorizeURL string) (*url.URL, error) {
	u, err := url.Parse(authorizeURL)
	if err != nil {
		return nil, err
	}
	form := u.Query()
	form.Set("deny", "1")
	u.RawQuery = ""
	req, err := http.NewRequest(http.MethodPost, u.String(), strings.NewReader(form.Encode()))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return s.follow(req)
}

func (s *Server) follow(req *http.Request) (*url.URL, error) {
	resp, err := s.Client().Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusFound {
		return nil, fmt.Errorf("fakes: %s: authorize answered %d, want 302: %s", s.name, resp.StatusCode, body)
	}
	return url.Parse(resp.Header.Get("Location"))
}

// serve records r, answers it, and records the answer.
func (s *Server) serve(w http.ResponseWriter, r *http.Request, routes map[string]route) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		s.t.Errorf("fakes: %s: read request body: %v", s.name, err)
	}
	form := url.Values{}
	if r.Method == http.MethodPost {
		if form, err = url.ParseQuery(string(body)); err != nil {
			s.t.Errorf("fakes: %s: %s %s: body is not form-encoded: %v", s.name, r.Method, r.URL.Path, err)
		}
	}
	rec := Request{
		Method: r.Method, Host: r.Host, Path: r.URL.Path, Query: r.URL.Query(),
		Header: r.Header.Clone(), Form: form, Time: s.cfg.now(),
	}
	var a *answer
	if rt, ok := routes[r.URL.Path]; ok {
		rec.Endpoint = rt.endpoint
		a = s.answer(rt, r, body, form)
	} else {
		a = &answer{status: http.StatusNotFound, header: http.Header{"Content-Type": {"text/plain"}}, body: []byte("404 page not found\n")}
	}
	rec.Status = a.status
	rec.Location = a.header.Get("Location")
	if strings.HasPrefix(a.header.Get("Content-Type"), "application/json") {
		_ = json.Unmarshal(a.body, &rec.Answer) // not every JSON answer is an object
	}
	s.mu.Lock()
	s.reqs = append(s.reqs, rec)
	s.mu.Unlock()

	maps.Copy(w.Header(), a.header)
	w.WriteHeader(a.status)
	_, _ = w.Write(a.body) // the client went away: nothing to do
}

// answer produces the answer to a routed request.
func (s *Server) answer(rt route, r *http.Request, body []byte, form url.Values) *answer {
	s.mu.Lock()
	fail := s.fail
	s.mu.Unlock()
	if rt.endpoint == TokenEndpoint && fail != nil {
		return fail
	}
	if rt.endpoint == AuthorizeEndpoint {
		s.requireRegisteredRedirect(authorizeParams(r, form))
	}
	if s.check != nil {
		if a := s.check(rt.endpoint, r, form); a != nil {
			return a
		}
	}
	if rt.serve != nil {
		return rt.serve(r)
	}
	var code Code
	if rt.endpoint == TokenEndpoint {
		if a := s.checkToken(form); a != nil {
			return a
		}
		body = []byte(form.Encode()) // checkToken may have rewritten it
		s.mu.Lock()
		code = s.codes[form.Get("code")]
		s.mu.Unlock()
	}

	inner := r.Clone(r.Context())
	inner.URL.Path, inner.URL.RawPath = rt.target, ""
	inner.Body = io.NopCloser(bytes.NewReader(body))
	inner.ContentLength = int64(len(body))
	rr := httptest.NewRecorder()
	s.sb.ServeHTTP(rr, inner)
	a := &answer{status: rr.Code, header: rr.Header().Clone(), body: rr.Body.Bytes()}

	switch rt.endpoint {
	case TokenEndpoint:
		return s.tokenAnswer(form, code, a)
	case AuthorizeEndpoint:
		s.noteCode(authorizeParams(r, form), a)
	}
	return a
}

// checkToken applies what every fake's token endpoint shares: a refresh
// token of a rotating provider is never presented twice; a password changed
// with SetPassword; an authorization code redeemed with the redirect_uri of
// its authorization request.
func (s *Server) checkToken(form url.Values) *answer {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch form.Get("grant_type") {
	case sandbox.GrantRefreshToken:
		rt := form.Get("refresh_token")
		if s.rotates && rt != "" {
			if s.presented[rt] {
				s.t.Errorf("fakes: %s received refresh token %s again; it rotates on first use, so a client must never send it twice",
					s.name, abbrev(rt))
			}
			s.presented[rt] = true
		}
	case sandbox.GrantPassword:
		if want, ok := s.passwords[form.Get("username")]; ok {
			if form.Get("password") != want {
				return oauthError(http.StatusBadRequest, "invalid_grant", "wrong username or password")
			}
			form.Set("password", Password)
		}
	case sandbox.GrantAuthorizationCode:
		if c, ok := s.codes[form.Get("code")]; ok && c.RedirectURI != "" && form.Get("redirect_uri") != c.RedirectURI {
			s.t.Errorf("fakes: %s: token request has redirect_uri %q, want %q as in the authorization request",
				s.name, form.Get("redirect_uri"), c.RedirectURI)
		}
	}
	return nil
}

// tokenAnswer notes the tokens of a successful answer and applies the
// provider's rewrites; a dead refresh token answered 401 loses its body when
// SetBareUnauthorized is on.
func (s *Server) tokenAnswer(form url.Values, code Code, a *answer) *answer {
	s.mu.Lock()
	bare, tt := s.bare401, s.tokenType
	s.mu.Unlock()
	if a.status == http.StatusUnauthorized && bare && form.Get("grant_type") == sandbox.GrantRefreshToken {
		return &answer{status: http.StatusUnauthorized, header: http.Header{"Content-Type": {"text/html"}},
			body: []byte("<html><body>401 Unauthorized</body></html>")}
	}
	if a.status != http.StatusOK {
		return a
	}
	var resp map[string]any
	if err := json.Unmarshal(a.body, &resp); err != nil {
		s.t.Errorf("fakes: %s: the sandbox answered a token request with %q: %v", s.name, a.body, err)
		return a
	}
	s.mu.Lock()
	if at, _ := resp["access_token"].(string); at != "" {
		s.accesses = append(s.accesses, at)
	}
	if rt, _ := resp["refresh_token"].(string); rt != "" {
		s.refreshes = append(s.refreshes, rt)
	}
	s.mu.Unlock()
	if s.alter != nil {
		s.alter(form, code, resp)
	}
	if tt != "" {
		resp["token_type"] = tt
	}
	out := jsonAnswer(http.StatusOK, resp)
	maps.Copy(out.header, a.header)
	return out
}

// noteCode remembers the authorization request of a code the sandbox
// issued, from its redirect.
func (s *Server) noteCode(params url.Values, a *answer) {
	loc, err := url.Parse(a.header.Get("Location"))
	if a.status != http.StatusFound || err != nil || loc.Query().Get("code") == "" {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.codes[loc.Query().Get("code")] = Code{
		ClientID: params.Get("client_id"), RedirectURI: params.Get("redirect_uri"), State: params.Get("state"),
		Challenge: params.Get("code_challenge"), Scope: params.Get("scope"),
	}
}

// clientAuth is how a request authenticated its client.
type clientAuth struct {
	basic              bool
	basicID, basicPass string // raw, as RFC 7617 carries them
	bodyID, bodySecret string
}

func authOf(r *http.Request, form url.Values) clientAuth {
	id, pass, ok := r.BasicAuth()
	return clientAuth{basic: ok, basicID: id, basicPass: pass, bodyID: form.Get("client_id"), bodySecret: form.Get("client_secret")}
}

// passBasicToSandbox rewrites a Basic header that carries the client's
// credentials raw (RFC 7617, as MediaHound and MediaHaven describe it) into
// the form-url-encoded form the sandbox decodes (RFC 6749 §2.3.1).
func passBasicToSandbox(r *http.Request) {
	if id, secret, ok := r.BasicAuth(); ok {
		r.SetBasicAuth(url.QueryEscape(id), url.QueryEscape(secret))
	}
}

// requireBodyCredentials fails the test when a token request does not carry
// client_id and client_secret in its form body, as the document says it
// must; the answer is then 401 invalid_client.
func (s *Server) requireBodyCredentials(r *http.Request, form url.Values, why string) *answer {
	ca := authOf(r, form)
	if ca.bodyID == "" || ca.bodySecret == "" {
		s.t.Errorf("fakes: %s: %s %s has client_id %q and client_secret set=%t in the form body; %s",
			s.name, r.Method, r.URL.Path, ca.bodyID, ca.bodySecret != "", why)
		return oauthError(http.StatusUnauthorized, "invalid_client", "client_id and client_secret are required in the request body")
	}
	return nil
}

// requireGrant fails the test when a token request's grant_type is not one
// of those the document offers at that path.
func (s *Server) requireGrant(r *http.Request, form url.Values, allowed ...string) *answer {
	if gt := form.Get("grant_type"); !slices.Contains(allowed, gt) {
		s.t.Errorf("fakes: %s: %s got grant_type %q, want one of %q (the only grants the document offers there)",
			s.name, r.URL.Path, gt, allowed)
		return oauthError(http.StatusBadRequest, "unsupported_grant_type", "grant types served here: "+strings.Join(allowed, " "))
	}
	return nil
}

// requireRegisteredRedirect fails the test when an authorization request
// names a redirect_uri the client did not register: the provider would
// refuse it.
// Every fake's authorize endpoint applies it, before the fake's own check.
func (s *Server) requireRegisteredRedirect(params url.Values) {
	if uri := params.Get("redirect_uri"); uri != "" && !slices.Contains(s.cfg.redirectURIs, uri) {
		s.t.Errorf("fakes: %s: authorization request has redirect_uri %q, want one of the registered %q",
			s.name, uri, s.cfg.redirectURIs)
	}
}

// authorizeParams are an authorization request's parameters, from the
// query of a GET or the form of a POST.
func authorizeParams(r *http.Request, form url.Values) url.Values {
	if r.Method == http.MethodPost {
		return form
	}
	return r.URL.Query()
}

// hasScopes reports whether the space-separated scope holds every one of want.
func hasScopes(scope string, want ...string) bool {
	have := strings.Fields(scope)
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

// abbrev shortens a token for a failure message.
func abbrev(tok string) string {
	if len(tok) <= 8 {
		return tok
	}
	return tok[:8] + "…"
}
