// Package sandbox is a small in-process OAuth2 authorization server, for
// `tokenbroker dev`, for end-to-end tests and for benchmarks.
//
// It serves the token endpoint of RFC 6749 with the client_credentials grant
// and, when configured, the password, authorization_code (with PKCE, RFC 7636)
// and refresh_token grants; an authorize page that a script can complete
// without a human; token revocation (RFC 7009), token introspection (RFC 7662)
// and one protected resource that accepts bearer tokens (RFC 6750). Options
// reproduce the quirks of the providers in ../shared/seeds: MediaValet's
// offline_access and id_token, Mediaflow's echoed state, MediaHaven's separate
// password endpoint and rotating refresh tokens. Everything lives in memory
// and memory stays proportional to the live codes and tokens. The server
// starts no goroutines and never logs, so there is nothing to close: stop
// serving it and it is gone.
//
// A newcomer gets a token with:
//
//	curl -u svc:s3cret -d grant_type=client_credentials http://127.0.0.1:PORT/oauth2/token
//
// and, with Config.Users {"alice": "wonderland"} and Config.RedirectURIs
// {"svc": {"http://127.0.0.1:8080/cb"}}, an authorization code without a
// browser (the Basic header approves at once; see Server):
//
//	curl -si -u alice:wonderland 'http://127.0.0.1:PORT/oauth2/authorize?response_type=code&client_id=svc&state=xyz'
package sandbox

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"mime"
	"net/http"
	"net/url"
	"path"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Routes served by a Server.
const (
	TokenPath      = "/oauth2/token"      // RFC 6749 token endpoint, POST
	IntrospectPath = "/oauth2/introspect" // RFC 7662 introspection endpoint, POST
	WhoamiPath     = "/api/whoami"        // protected resource, GET with a bearer token
	AuthorizePath  = "/oauth2/authorize"  // RFC 6749 authorization endpoint, GET and POST
	RevokePath     = "/oauth2/revoke"     // RFC 7009 revocation endpoint, POST
)

// Grant types the token endpoint understands.
const (
	GrantClientCredentials = "client_credentials"
	GrantPassword          = "password"
	GrantAuthorizationCode = "authorization_code"
	GrantRefreshToken      = "refresh_token"
)

// Defaults of the Config durations.
const (
	// DefaultTokenLifetime is the lifetime of issued access tokens when
	// Config.TokenLifetime is zero.
	DefaultTokenLifetime = time.Hour
	// DefaultCodeLifetime is the lifetime of authorization codes when
	// Config.CodeLifetime is zero: MediaValet's 60 seconds.
	DefaultCodeLifetime = 60 * time.Second
	// DefaultRefreshTokenLifetime is the lifetime of refresh tokens when
	// Config.RefreshTokenLifetime is zero.
	DefaultRefreshTokenLifetime = 24 * time.Hour
)

// ErrInvalidConfig is wrapped by every error New returns.
var ErrInvalidConfig = errors.New("sandbox: invalid config")

// Errors of Server.Authorize.
var (
	ErrUnknownClient        = errors.New("sandbox: unknown client")
	ErrRedirectURI          = errors.New("sandbox: redirect_uri not registered for the client")
	ErrUnknownUser          = errors.New("sandbox: unknown user")
	ErrInvalidScope         = errors.New("sandbox: invalid scope")
	ErrInvalidCodeChallenge = errors.New("sandbox: invalid code_challenge")
)

const (
	// maxBodyBytes bounds the request bodies the server reads.
	maxBodyBytes = 64 << 10
	// minSweep is the size the maps of tokens, codes and lineages must reach
	// together before adding to them first drops what expired.
	minSweep = 1024
	// realm is the realm of the HTTP Basic challenge.
	realm = "sandbox"
)

// Config configures a Server. Zero values take the defaults noted.
type Config struct {
	Clients       map[string]string // client_id → client_secret; must not be empty
	TokenLifetime time.Duration     // expires_in of issued tokens; default 1h
	Scopes        []string          // scopes the server knows; empty = any scope accepted
	Now           func() time.Time  // clock, default time.Now

	// MaxRecorded is how many token-endpoint requests Requests keeps, the most
	// recent ones; zero keeps them all. Set it in long benchmarks so that
	// memory stays bounded.
	MaxRecorded int

	// Users are the resource owners, username → password: they sign in on the
	// authorize page and use the password grant. A username must not contain
	// ':' (HTTP Basic could not carry it). Empty disables the password grant.
	Users map[string]string

	// RedirectURIs registers each client's redirect URIs, client_id → absolute
	// URIs without a fragment. The authorize endpoint and the token endpoint
	// compare them by exact string match, as MediaValet demands. Empty
	// disables the authorization_code grant.
	RedirectURIs map[string][]string

	// RefreshTokens issues refresh tokens with the password and
	// authorization_code grants and enables the refresh_token grant.
	RefreshTokens bool
	// RefreshRequiresOfflineAccess issues refresh tokens only when the granted
	// scope contains offline_access, as MediaValet does. Needs RefreshTokens,
	// and offline_access in Scopes when Scopes is set.
	RefreshRequiresOfflineAccess bool
	// RotateRefreshTokens makes every refresh return a new refresh token and
	// invalidate the refresh token and the access token it replaces, as
	// MediaHaven does. Presenting a replaced refresh token again is
	// invalid_grant and revokes every token of its lineage (reuse detection,
	// OAuth 2.0 Security BCP §4.14.2). Needs RefreshTokens.
	RotateRefreshTokens bool
	// RefreshTokenLifetime is how long a refresh token stays usable; a rotated
	// one gets a fresh lifetime. Default 24h.
	RefreshTokenLifetime time.Duration
	// RefreshErrorStatus is the HTTP status of the invalid_grant errors of the
	// refresh_token grant. Zero means 400, as RFC 6749 §5.2 says; set 401 for
	// MediaHaven ("a 401 on refresh means re-authorization is needed").
	RefreshErrorStatus int

	// CodeLifetime is how long an authorization code can be redeemed. Default
	// 60s, MediaValet's.
	CodeLifetime time.Duration
	// RequirePKCE refuses authorization requests without an S256
	// code_challenge. Without it a challenge is optional, but a code issued
	// with one still needs the matching code_verifier.
	RequirePKCE bool

	// EchoState copies the state parameter of a token request into the token
	// response, as Mediaflow does.
	EchoState bool
	// IDTokens adds an OpenID Connect id_token to the token responses of the
	// user grants when the granted scope contains openid. See Server.
	IDTokens bool

	// PasswordTokenPath, when set, serves the password grant at this path only
	// (MediaHaven's /auth/ropc.php); the token endpoint then refuses it with
	// unsupported_grant_type. It is a token endpoint otherwise: counted,
	// recorded and failed by SetFailure like TokenPath. Needs Users.
	PasswordTokenPath string
}

// Server is an OAuth2 authorization server. It is an http.Handler with these routes:
//
//	POST /oauth2/token       RFC 6749 token endpoint; client auth by HTTP Basic (RFC 6749 §2.3.1,
//	                         form-url-decoded id/secret) or client_id/client_secret in the body, or
//	                         both (must agree). Grants: client_credentials always; password with
//	                         Config.Users (unless Config.PasswordTokenPath moves it);
//	                         authorization_code with Config.RedirectURIs; refresh_token with
//	                         Config.RefreshTokens
//	POST PasswordTokenPath   the password grant only, when Config.PasswordTokenPath is set
//	GET  /oauth2/authorize   RFC 6749 §4.1.1 authorization request → an HTML sign-in form, or an
//	                         immediate redirect with a code when the request carries
//	                         `Authorization: Basic user:pass` of a Config.Users entry
//	POST /oauth2/authorize   the sign-in form: the request's parameters (hidden fields), username,
//	                         password, and deny=1 to refuse
//	POST /oauth2/revoke      RFC 7009 revocation (client auth as above, `token`, optional
//	                         `token_type_hint`)
//	POST /oauth2/introspect  RFC 7662 introspection (client auth as above, `token` form field) →
//	                         {"active":true,"scope":..,"client_id":..,"token_type":"Bearer","exp":..,"iat":..}
//	                         plus "sub" and "username" for a user's token, or {"active":false}
//	GET  /api/whoami         a protected resource: `Authorization: Bearer <token>` → 200
//	                         {"client_id":..,"scope":..} (plus "sub" for a user's token), else 401
//	                         with `WWW-Authenticate: Bearer error="invalid_token"`
//
// Token endpoint errors follow RFC 6749 §5.2, checked in this order: a method
// other than POST is 405; a body that is not application/x-www-form-urlencoded,
// or that repeats a parameter, is 400 invalid_request; failed client
// authentication is 401 invalid_client, with `WWW-Authenticate: Basic
// realm="sandbox"` when the client sent an Authorization header; a missing
// grant_type is 400 invalid_request; one not served at that path is 400
// unsupported_grant_type; a scope the server does not know, or a malformed
// scope, is 400 invalid_scope. Every token endpoint response carries
// `Cache-Control: no-store` and `Pragma: no-cache`.
//
// When a client_credentials, password or authorization request omits scope,
// every scope in Config.Scopes is granted (none when Config.Scopes is empty).
//
// # User grants
//
// The password grant checks username and password against Config.Users:
// a mismatch is invalid_grant, a missing one invalid_request.
//
// The authorize endpoint first checks client_id and redirect_uri: redirect_uri
// must be one registered for the client, or be omitted when the client has
// exactly one. Until both are valid it never redirects: it answers an HTML
// page with status 400. After that every error is a redirect to the
// redirect_uri with error, error_description and state (RFC 6749 §4.1.2.1):
// response_type other than code is unsupported_response_type, a bad scope
// invalid_scope, a bad PKCE challenge invalid_request (only S256 is supported:
// plain, or a challenge without code_challenge_method, is refused), and
// deny=1 is access_denied. Wrong user credentials show the form again with
// status 401 (with a Basic challenge when they came in a Basic header).
// Approval redirects (302) to redirect_uri?code=…&state=…. The Basic shortcut
// exists for automation: an end-to-end test or a newcomer's curl gets a code
// with one request and no HTML. A user's Basic credentials are not
// form-url-encoded (RFC 7617), unlike a client's. The form has no CSRF
// protection: this is a sandbox.
//
// An authorization code is bound to its client, redirect_uri and PKCE
// challenge and lives Config.CodeLifetime. The token request must repeat
// redirect_uri exactly when the authorization request carried it (RFC 6749
// §4.1.3), and must carry the code_verifier when a challenge was sent, and
// only then (RFC 7636 §4.6); any mismatch is invalid_grant and leaves the code
// redeemable. A code is single use: redeeming it again is invalid_grant and
// revokes every token issued from it (RFC 6749 §4.1.2).
//
// A refresh token is bound to its client; a refresh may narrow the scope but
// not widen it (invalid_scope). Without rotation a refresh returns a new
// access token only, and both old tokens stay valid. A refresh token is
// opaque; inside it names its lineage and generation under an HMAC.
//
// A lineage is everything issued from one authorization (one password grant
// or one authorization code): its refresh tokens and access tokens. RevokeGrant,
// revoking a refresh token at /oauth2/revoke, redeeming a code twice and
// presenting a replaced refresh token each revoke the whole lineage.
//
// An id_token (Config.IDTokens) is a JWT signed with HS256, the key being the
// client's secret as OpenID Connect Core §10.1 prescribes, so a client can
// verify it. Its claims are iss (the scheme and Host of the token request),
// sub (the username), aud (the client_id), iat, exp (as the access token's)
// and nonce when the authorization request carried one.
//
// A Server is safe for concurrent use.
type Server struct {
	clients      atomic.Pointer[map[string][sha256.Size]byte] // client_id → SHA-256 of its secret
	secrets      map[string]string                            // client_id → client_secret: the key of its id_tokens
	users        map[string][sha256.Size]byte                 // username → SHA-256 of the password
	redirects    map[string][]string                          // client_id → registered redirect URIs
	lifetime     time.Duration
	codeLifetime time.Duration
	refreshLife  time.Duration
	refreshErr   int    // HTTP status of a refresh's invalid_grant
	passwordPath string // Config.PasswordTokenPath
	refreshes    bool   // Config.RefreshTokens
	offlineOnly  bool   // Config.RefreshRequiresOfflineAccess
	rotate       bool   // Config.RotateRefreshTokens
	requirePKCE  bool
	echoState    bool
	idTokens     bool
	refreshKey   []byte          // HMAC-SHA256 key of refresh tokens
	scopes       []string        // Config.Scopes without duplicates, in order
	known        map[string]bool // Config.Scopes as a set; nil means any scope
	now          func() time.Time
	maxRecord    int
	mux          *http.ServeMux

	mu           sync.Mutex
	tokens       map[string]tokenRecord // access token → what it grants
	codes        map[string]*authCode   // authorization code → its request
	lineages     map[string]*lineage    // lineage id → lineage
	sweepAt      int                    // size of the maps at which adding to them drops what expired
	tokenCalls   int
	refreshCalls int
	reused       int // replaced refresh tokens presented
	issued       int
	requests     []Recorded
	failure      *Failure
}

// Recorded is what a token endpoint received.
type Recorded struct {
	Header http.Header
	Form   url.Values // the form-encoded body parameters; never the URL query
	Time   time.Time  // Config.Now when the request arrived
	Path   string     // TokenPath or Config.PasswordTokenPath
}

// Failure makes the token endpoint misbehave, for tests of the broker's error handling.
type Failure struct {
	Status      int           // HTTP status to answer; outside 200–599 (zero included) means 500
	ContentType string        // default application/json
	Body        string        // raw body
	Delay       time.Duration // sleep before answering (return early if the request ctx is done)
}

// tokenRecord is what the server remembers about an issued access token.
type tokenRecord struct {
	clientID string
	user     string // the resource owner; empty for client_credentials
	scope    string // granted scopes, space separated
	iat, exp time.Time
	lineage  *lineage // nil for client_credentials
	gen      uint64   // lineage.gen when issued
}

// New returns a Server for cfg. The error wraps ErrInvalidConfig and lists
// every problem at once: Clients is empty, a client_id or client_secret is
// empty, a duration or MaxRecorded is negative, a scope in Scopes is not a
// valid RFC 6749 §3.3 scope-token, a username is empty or contains ':', a
// password is empty, RedirectURIs names an unknown client or holds no URI or
// one that is not absolute or has a fragment, RefreshRequiresOfflineAccess or
// RotateRefreshTokens is set without RefreshTokens, offline_access (with
// RefreshRequiresOfflineAccess) or openid (with IDTokens) is missing from a
// non-empty Scopes, RefreshErrorStatus is neither zero nor a 4xx status, or
// PasswordTokenPath is set without Users or is not a clean absolute path
// distinct from the other routes.
func New(cfg Config) (*Server, error) {
	var errs []error
	invalid := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, args...)))
	}

	if len(cfg.Clients) == 0 {
		invalid("no clients")
	}
	clients := make(map[string][sha256.Size]byte, len(cfg.Clients))
	secrets := make(map[string]string, len(cfg.Clients))
	for _, id := range sortedKeys(cfg.Clients) {
		secret := cfg.Clients[id]
		if id == "" {
			invalid("empty client_id")
		}
		if secret == "" {
			invalid("client %q has an empty secret", id)
		}
		clients[id] = sha256.Sum256([]byte(secret))
		secrets[id] = secret
	}

	users := make(map[string][sha256.Size]byte, len(cfg.Users))
	for _, name := range sortedKeys(cfg.Users) {
		if name == "" || strings.Contains(name, ":") {
			invalid("username %q is empty or contains ':'", name)
		}
		if cfg.Users[name] == "" {
			invalid("user %q has an empty password", name)
		}
		users[name] = sha256.Sum256([]byte(cfg.Users[name]))
	}

	redirects := make(map[string][]string, len(cfg.RedirectURIs))
	for _, id := range sortedKeys(cfg.RedirectURIs) {
		uris := cfg.RedirectURIs[id]
		if _, ok := cfg.Clients[id]; !ok {
			invalid("redirect URIs for unknown client %q", id)
		}
		if len(uris) == 0 {
			invalid("client %q has no redirect URI", id)
		}
		for _, uri := range uris {
			if u, err := url.Parse(uri); err != nil || !u.IsAbs() || u.Fragment != "" || strings.Contains(uri, "#") {
				invalid("redirect URI %q of client %q is not an absolute URI without fragment", uri, id)
			}
		}
		redirects[id] = slices.Clone(uris)
	}

	lifetime := orDefault(cfg.TokenLifetime, DefaultTokenLifetime)
	codeLifetime := orDefault(cfg.CodeLifetime, DefaultCodeLifetime)
	refreshLife := orDefault(cfg.RefreshTokenLifetime, DefaultRefreshTokenLifetime)
	for _, d := range []struct {
		name string
		d    time.Duration
	}{{"token lifetime", lifetime}, {"code lifetime", codeLifetime}, {"refresh token lifetime", refreshLife}} {
		if d.d < 0 {
			invalid("negative %s %v", d.name, d.d)
		}
	}
	if cfg.MaxRecorded < 0 {
		invalid("negative MaxRecorded %d", cfg.MaxRecorded)
	}

	var scopes []string
	var known map[string]bool
	if len(cfg.Scopes) > 0 {
		known = make(map[string]bool, len(cfg.Scopes))
		for _, sc := range cfg.Scopes {
			if !validScopeToken(sc) {
				invalid("scope %q is not a valid scope-token", sc)
			}
			if !known[sc] {
				known[sc] = true
				scopes = append(scopes, sc)
			}
		}
	}

	if cfg.RefreshRequiresOfflineAccess && !cfg.RefreshTokens {
		invalid("RefreshRequiresOfflineAccess without RefreshTokens")
	}
	if cfg.RotateRefreshTokens && !cfg.RefreshTokens {
		invalid("RotateRefreshTokens without RefreshTokens")
	}
	if cfg.RefreshRequiresOfflineAccess && known != nil && !known[scopeOfflineAccess] {
		invalid("RefreshRequiresOfflineAccess but Scopes lacks %s", scopeOfflineAccess)
	}
	if cfg.IDTokens && known != nil && !known[scopeOpenID] {
		invalid("IDTokens but Scopes lacks %s", scopeOpenID)
	}
	refreshErr := cfg.RefreshErrorStatus
	if refreshErr == 0 {
		refreshErr = http.StatusBadRequest
	}
	if refreshErr < 400 || refreshErr > 499 {
		invalid("RefreshErrorStatus %d is not a 4xx status", cfg.RefreshErrorStatus)
	}
	if p := cfg.PasswordTokenPath; p != "" {
		if len(cfg.Users) == 0 {
			invalid("PasswordTokenPath without Users")
		}
		reserved := []string{TokenPath, IntrospectPath, WhoamiPath, AuthorizePath, RevokePath}
		if !strings.HasPrefix(p, "/") || path.Clean(p) != p || p == "/" || strings.ContainsAny(p, " \t\r\n{}?#") || slices.Contains(reserved, p) {
			invalid("PasswordTokenPath %q is not a clean absolute path distinct from the other routes", p)
		}
	}

	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	key := make([]byte, sha256.Size)
	_, _ = rand.Read(key) // never fails: crypto/rand crashes the program instead
	s := &Server{
		secrets:      secrets,
		users:        users,
		redirects:    redirects,
		lifetime:     lifetime,
		codeLifetime: codeLifetime,
		refreshLife:  refreshLife,
		refreshErr:   refreshErr,
		passwordPath: cfg.PasswordTokenPath,
		refreshes:    cfg.RefreshTokens,
		offlineOnly:  cfg.RefreshRequiresOfflineAccess,
		rotate:       cfg.RotateRefreshTokens,
		requirePKCE:  cfg.RequirePKCE,
		echoState:    cfg.EchoState,
		idTokens:     cfg.IDTokens,
		refreshKey:   key,
		scopes:       scopes,
		known:        known,
		now:          now,
		maxRecord:    cfg.MaxRecorded,
		mux:          http.NewServeMux(),
		tokens:       make(map[string]tokenRecord),
		codes:        make(map[string]*authCode),
		lineages:     make(map[string]*lineage),
		sweepAt:      minSweep,
	}
	s.mux.HandleFunc(TokenPath, func(w http.ResponseWriter, r *http.Request) { s.handleToken(w, r, TokenPath) })
	if p := s.passwordPath; p != "" {
		s.mux.HandleFunc(p, func(w http.ResponseWriter, r *http.Request) { s.handleToken(w, r, p) })
	}
	s.mux.HandleFunc(IntrospectPath, s.handleIntrospect)
	s.mux.HandleFunc(WhoamiPath, s.handleWhoami)
	s.mux.HandleFunc(AuthorizePath, s.handleAuthorize)
	s.mux.HandleFunc(RevokePath, s.handleRevoke)
	s.clients.Store(&clients)
	return s, nil
}

// sortedKeys returns the keys of m in order, so that New reports problems in
// a stable order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// orDefault returns d, or def when d is zero.
func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// ServeHTTP serves the routes listed on Server; any other path is 404.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mux.ServeHTTP(w, r)
}

// TokenCalls returns the number of requests to the token endpoints (TokenPath
// and Config.PasswordTokenPath), successful or not, including those answered
// by a Failure.
func (s *Server) TokenCalls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tokenCalls
}

// RefreshCalls returns the number of token endpoint requests with
// grant_type=refresh_token, successful or not, including those answered by a
// Failure.
func (s *Server) RefreshCalls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.refreshCalls
}

// ReusedRefreshTokens returns how many times a refresh token that rotation had
// already replaced was presented to the token endpoint. Each such request
// revoked its lineage; a correct client never makes one, so tests of the
// broker assert that this is 0.
func (s *Server) ReusedRefreshTokens() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reused
}

// IssuedTokens returns the number of access tokens issued.
func (s *Server) IssuedTokens() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.issued
}

// Requests returns copies of every token-endpoint request received, in order
// (only the most recent Config.MaxRecorded when that is set). Changing them
// does not change what the server recorded.
func (s *Server) Requests() []Recorded {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Recorded, len(s.requests))
	for i, rec := range s.requests {
		out[i] = rec.clone()
	}
	return out
}

// Revoke makes accessToken inactive: introspection reports it inactive and the
// protected resource rejects it. Revoking an unknown token does nothing. The
// refresh token of its lineage, if any, stays valid.
func (s *Server) Revoke(accessToken string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.tokens, accessToken)
}

// SetFailure makes the token endpoints answer every request with a copy of f
// instead of handling it, until SetFailure(nil). Requests answered so are still
// counted and recorded. The other routes are not affected.
func (s *Server) SetFailure(f *Failure) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f == nil {
		s.failure = nil
		return
	}
	c := *f
	s.failure = &c
}

// handleToken serves an RFC 6749 token endpoint at path: TokenPath or
// Config.PasswordTokenPath.
func (s *Server) handleToken(w http.ResponseWriter, r *http.Request, path string) {
	formErr := parseForm(w, r)
	now := s.now()

	s.mu.Lock()
	s.tokenCalls++
	if r.PostForm.Get("grant_type") == GrantRefreshToken {
		s.refreshCalls++
	}
	s.recordLocked(Recorded{Header: r.Header.Clone(), Form: cloneValues(r.PostForm), Time: now, Path: path})
	failure := s.failure
	s.mu.Unlock()

	if failure != nil {
		answerFailure(w, r, *failure)
		return
	}

	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
	if r.Method != http.MethodPost {
		h.Set("Allow", http.MethodPost)
		writeError(w, &oauthError{status: http.StatusMethodNotAllowed, Code: "invalid_request", Description: "the token endpoint accepts POST only"})
		return
	}
	if formErr != nil {
		writeError(w, formErr)
		return
	}
	clientID, oerr := s.authenticateClient(r)
	if oerr != nil {
		writeError(w, oerr)
		return
	}
	resp, oerr := s.grant(tokenRequest{clientID: clientID, form: r.PostForm, now: now, path: path, issuer: issuer(r)})
	if oerr != nil {
		writeError(w, oerr)
		return
	}
	if s.echoState {
		resp.State = r.PostForm.Get("state")
	}
	writeJSON(w, http.StatusOK, resp)
}

// tokenRequest is an authenticated token request, as a grant sees it.
type tokenRequest struct {
	clientID string     // the authenticated client
	form     url.Values // body parameters, none repeated
	now      time.Time
	path     string // the token endpoint that received it
	issuer   string // the iss of id_tokens: the scheme and host the request reached
}

// tokenResponse is the RFC 6749 §5.1 successful token response.
type tokenResponse struct {
	AccessToken  string `json:"access_token"`
	TokenType    string `json:"token_type"`
	ExpiresIn    int64  `json:"expires_in"`
	RefreshToken string `json:"refresh_token,omitempty"`
	Scope        string `json:"scope,omitempty"`
	IDToken      string `json:"id_token,omitempty"`
	State        string `json:"state,omitempty"` // Config.EchoState
}

// grant dispatches req to the method that implements its grant_type. A new
// grant is one more case here, one more in grantTypes and one more method.
func (s *Server) grant(req tokenRequest) (tokenResponse, *oauthError) {
	gt := req.form.Get("grant_type")
	if gt == "" {
		return tokenResponse{}, errInvalidRequest("missing grant_type")
	}
	served := s.grantTypes(req.path)
	if !slices.Contains(served, gt) {
		return tokenResponse{}, &oauthError{status: http.StatusBadRequest, Code: "unsupported_grant_type", Description: "grant types served here: " + strings.Join(served, " ")}
	}
	switch gt {
	case GrantPassword:
		return s.grantPassword(req)
	case GrantAuthorizationCode:
		return s.grantAuthorizationCode(req)
	case GrantRefreshToken:
		return s.grantRefreshToken(req)
	default:
		return s.grantClientCredentials(req)
	}
}

// grantTypes returns the grant types served at the token endpoint path.
func (s *Server) grantTypes(path string) []string {
	if path != TokenPath {
		return []string{GrantPassword} // Config.PasswordTokenPath
	}
	served := []string{GrantClientCredentials}
	if len(s.users) > 0 && s.passwordPath == "" {
		served = append(served, GrantPassword)
	}
	if len(s.redirects) > 0 {
		served = append(served, GrantAuthorizationCode)
	}
	if s.refreshes {
		served = append(served, GrantRefreshToken)
	}
	return served
}

// grantClientCredentials implements RFC 6749 §4.4: the client asks for a token
// for itself. It fails with invalid_scope when the requested scope is
// malformed or unknown.
func (s *Server) grantClientCredentials(req tokenRequest) (tokenResponse, *oauthError) {
	scope, oerr := s.grantScope(req.form.Get("scope"))
	if oerr != nil {
		return tokenResponse{}, oerr
	}
	return s.issue(req.clientID, scope, req.now), nil
}

// grantScope returns the scopes to grant for the requested scope parameter,
// space separated: the requested ones without duplicates, or every configured
// scope when none was requested (RFC 6749 §3.3 lets the server pick a default).
func (s *Server) grantScope(requested string) (string, *oauthError) {
	if requested == "" {
		return strings.Join(s.scopes, " "), nil
	}
	return s.narrowScope(requested, func(sc string) bool { return s.known == nil || s.known[sc] })
}

// narrowScope returns the requested scopes without duplicates, space
// separated, and invalid_scope when requested is malformed or holds a scope
// that allowed refuses.
func (s *Server) narrowScope(requested string, allowed func(string) bool) (string, *oauthError) {
	var granted []string
	for _, sc := range strings.Split(requested, " ") {
		if !validScopeToken(sc) {
			return "", &oauthError{status: http.StatusBadRequest, Code: "invalid_scope", Description: "scope must be scope-tokens separated by single spaces"}
		}
		if !allowed(sc) {
			return "", &oauthError{status: http.StatusBadRequest, Code: "invalid_scope", Description: "scope not allowed: " + sc}
		}
		if !slices.Contains(granted, sc) {
			granted = append(granted, sc)
		}
	}
	return strings.Join(granted, " "), nil
}

// issue creates and remembers an access token for clientID.
func (s *Server) issue(clientID, scope string, now time.Time) tokenResponse {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.issueLocked(clientID, "", scope, nil, now)
}

// issueLocked creates and remembers an access token for clientID, on behalf
// of user when that is not empty, as part of lin when that is not nil. s.mu
// must be held.
func (s *Server) issueLocked(clientID, user, scope string, lin *lineage, now time.Time) tokenResponse {
	s.sweepLocked(now)
	token := newToken()
	rec := tokenRecord{clientID: clientID, user: user, scope: scope, iat: now, exp: now.Add(s.lifetime), lineage: lin}
	if lin != nil {
		rec.gen = lin.gen
		lin.keepUntil(rec.exp)
	}
	s.tokens[token] = rec
	s.issued++
	return tokenResponse{
		AccessToken: token,
		TokenType:   "Bearer",
		ExpiresIn:   int64((s.lifetime + time.Second - 1) / time.Second),
		Scope:       scope,
	}
}

// sweepLocked, once the maps of tokens, codes and lineages together have
// grown past sweepAt, drops what has expired or been revoked, so that memory
// stays proportional to what is live. Callers call it before adding to a map.
// s.mu must be held.
func (s *Server) sweepLocked(now time.Time) {
	if len(s.tokens)+len(s.codes)+len(s.lineages) < s.sweepAt {
		return
	}
	for t, rec := range s.tokens {
		if !s.activeLocked(rec, now) {
			delete(s.tokens, t)
		}
	}
	for id, lin := range s.lineages {
		if !now.Before(lin.until) {
			delete(s.lineages, id)
		}
	}
	for c, ac := range s.codes {
		if ac.forgettable(now) {
			delete(s.codes, c)
		}
	}
	s.sweepAt = max(minSweep, 2*(len(s.tokens)+len(s.codes)+len(s.lineages)))
}

// activeLocked reports whether the access token rec is usable at now: not
// expired, its lineage not revoked and, with rotation, not replaced by a
// refresh. s.mu must be held.
func (s *Server) activeLocked(rec tokenRecord, now time.Time) bool {
	if !now.Before(rec.exp) {
		return false
	}
	if lin := rec.lineage; lin != nil && (lin.revoked || (s.rotate && rec.gen != lin.gen)) {
		return false
	}
	return true
}

// lookup returns what token grants, and false when the token is unknown,
// revoked, replaced or expired at now. Such a token is forgotten.
func (s *Server) lookup(token string, now time.Time) (tokenRecord, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rec, ok := s.tokens[token]
	if !ok {
		return tokenRecord{}, false
	}
	if !s.activeLocked(rec, now) {
		delete(s.tokens, token)
		return tokenRecord{}, false
	}
	return rec, true
}

// introspection is the RFC 7662 §2.2 introspection response.
type introspection struct {
	Active    bool   `json:"active"`
	Scope     string `json:"scope,omitempty"`
	ClientID  string `json:"client_id,omitempty"`
	Username  string `json:"username,omitempty"`
	TokenType string `json:"token_type,omitempty"`
	Exp       int64  `json:"exp,omitempty"`
	Iat       int64  `json:"iat,omitempty"`
	Sub       string `json:"sub,omitempty"`
}

// handleIntrospect serves RFC 7662 introspection of access tokens (a refresh
// token introspects as inactive). The caller authenticates as a client
// exactly as at the token endpoint; any client may introspect any token. A
// missing token parameter is 400 invalid_request.
func (s *Server) handleIntrospect(w http.ResponseWriter, r *http.Request) {
	_, token, ok := s.clientTokenRequest(w, r, "introspection")
	if !ok {
		return
	}
	rec, ok := s.lookup(token, s.now())
	if !ok {
		writeJSON(w, http.StatusOK, introspection{Active: false})
		return
	}
	writeJSON(w, http.StatusOK, introspection{
		Active:    true,
		Scope:     rec.scope,
		ClientID:  rec.clientID,
		Username:  rec.user,
		TokenType: "Bearer",
		Exp:       rec.exp.Unix(),
		Iat:       rec.iat.Unix(),
		Sub:       rec.user,
	})
}

// whoami is the body of a successful /api/whoami response.
type whoami struct {
	ClientID string `json:"client_id"`
	Scope    string `json:"scope"`
	Sub      string `json:"sub,omitempty"` // the user; absent for client_credentials
}

// handleWhoami serves the protected resource. Following RFC 6750 §3, a request
// without bearer credentials gets the bare challenge `Bearer`, and one whose
// token is unknown, revoked or expired gets `Bearer error="invalid_token"`;
// both are 401 with no body.
func (s *Server) handleWhoami(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		w.WriteHeader(http.StatusMethodNotAllowed)
		return
	}
	token, ok := bearerToken(r)
	if !ok {
		w.Header().Set("WWW-Authenticate", "Bearer")
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	rec, ok := s.lookup(token, s.now())
	if !ok {
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	writeJSON(w, http.StatusOK, whoami{ClientID: rec.clientID, Scope: rec.scope, Sub: rec.user})
}

// bearerToken returns the token of an `Authorization: Bearer <token>` header
// (the scheme is case-insensitive), and false when there is none.
func bearerToken(r *http.Request) (string, bool) {
	scheme, token, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	token = strings.TrimSpace(token)
	if !strings.EqualFold(scheme, "Bearer") || token == "" {
		return "", false
	}
	return token, true
}

// authenticateClient authenticates the client of a token or introspection
// request and returns its client_id.
//
// When the request carries an Authorization header it must be HTTP Basic with
// the form-url-encoded client_id and client_secret (RFC 6749 §2.3.1);
// client_id and client_secret in the body are then optional but, when present,
// must equal those. Without the header, both must be in the body. Any failure
// is 401 invalid_client, with a Basic challenge when the header was sent.
func (s *Server) authenticateClient(r *http.Request) (string, *oauthError) {
	bodyID, bodySecret := r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	if r.Header.Get("Authorization") == "" {
		if bodyID == "" {
			return "", errInvalidClient(false, "client authentication required")
		}
		return s.checkClient(bodyID, bodySecret, false)
	}

	id, secret, ok := basicCredentials(r)
	if !ok {
		return "", errInvalidClient(true, "the Authorization header must be HTTP Basic with form-url-encoded credentials")
	}
	if bodyID != "" && bodyID != id {
		return "", errInvalidClient(true, "client_id in the body and in HTTP Basic disagree")
	}
	if bodySecret != "" && !equalSecrets(sha256.Sum256([]byte(bodySecret)), sha256.Sum256([]byte(secret))) {
		return "", errInvalidClient(true, "client_secret in the body and in HTTP Basic disagree")
	}
	return s.checkClient(id, secret, true)
}

// checkClient returns id when secret is its secret. It takes the same time
// whether or not id is known and whatever the secret's length.
func (s *Server) checkClient(id, secret string, basic bool) (string, *oauthError) {
	want, known := (*s.clients.Load())[id]
	if !equalSecrets(sha256.Sum256([]byte(secret)), want) || !known {
		return "", errInvalidClient(basic, "unknown client or wrong secret")
	}
	return id, nil
}

// equalSecrets compares two secret digests in constant time.
func equalSecrets(a, b [sha256.Size]byte) bool {
	return subtle.ConstantTimeCompare(a[:], b[:]) == 1
}

// basicCredentials returns the client_id and client_secret of an HTTP Basic
// Authorization header, form-url-decoded as RFC 6749 §2.3.1 requires.
func basicCredentials(r *http.Request) (id, secret string, ok bool) {
	rawID, rawSecret, ok := r.BasicAuth()
	if !ok {
		return "", "", false
	}
	id, err := url.QueryUnescape(rawID)
	if err != nil || id == "" {
		return "", "", false
	}
	secret, err = url.QueryUnescape(rawSecret)
	if err != nil {
		return "", "", false
	}
	return id, secret, true
}

// parseForm parses the form-encoded body of r into r.PostForm, reading at most
// maxBodyBytes. It fails with invalid_request when a POST body is not
// application/x-www-form-urlencoded or cannot be parsed, or when a parameter
// is repeated (RFC 6749 §3.2). r.PostForm is set even when it fails.
func parseForm(w http.ResponseWriter, r *http.Request) *oauthError {
	r.Body = http.MaxBytesReader(w, r.Body, maxBodyBytes)
	parseErr := r.ParseForm()
	if r.PostForm == nil {
		r.PostForm = url.Values{}
	}
	if r.Method != http.MethodPost {
		return nil
	}
	if ct, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || ct != "application/x-www-form-urlencoded" {
		return errInvalidRequest("the body must be application/x-www-form-urlencoded")
	}
	if parseErr != nil {
		return errInvalidRequest("malformed form body")
	}
	for _, vs := range r.PostForm {
		if len(vs) > 1 {
			return errInvalidRequest("request parameters must not be repeated")
		}
	}
	return nil
}

// recordLocked appends rec to the recorded requests, keeping at most
// maxRecord of them when that is set. s.mu must be held.
func (s *Server) recordLocked(rec Recorded) {
	s.requests = append(s.requests, rec)
	if s.maxRecord > 0 && len(s.requests) > s.maxRecord {
		s.requests[0] = Recorded{} // let the collector have it
		s.requests = s.requests[1:]
	}
}

// clone returns a deep copy of rec.
func (rec Recorded) clone() Recorded {
	return Recorded{Header: rec.Header.Clone(), Form: cloneValues(rec.Form), Time: rec.Time, Path: rec.Path}
}

// cloneValues returns a deep copy of v, never nil.
func cloneValues(v url.Values) url.Values {
	c := make(url.Values, len(v))
	for k, vs := range v {
		c[k] = slices.Clone(vs)
	}
	return c
}

// answerFailure writes f after f.Delay, or nothing when the request's context
// is done first.
func answerFailure(w http.ResponseWriter, r *http.Request, f Failure) {
	if f.Delay > 0 {
		timer := time.NewTimer(f.Delay)
		defer timer.Stop()
		select {
		case <-r.Context().Done():
			return
		case <-timer.C:
		}
	}
	status := f.Status
	if status < 200 || status > 599 {
		status = http.StatusInternalServerError
	}
	ct := f.ContentType
	if ct == "" {
		ct = "application/json"
	}
	w.Header().Set("Content-Type", ct)
	w.WriteHeader(status)
	_, _ = io.WriteString(w, f.Body) // the client went away; nothing to do
}

// newToken returns 32 bytes from crypto/rand, base64url-encoded without padding.
func newToken() string {
	var b [32]byte
	_, _ = rand.Read(b[:]) // never fails: crypto/rand crashes the program instead
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// validScopeToken reports whether s is an RFC 6749 §3.3 scope-token:
// 1*( %x21 / %x23-5B / %x5D-7E ).
func validScopeToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// oauthError is an RFC 6749 §5.2 error response.
type oauthError struct {
	status      int    // HTTP status
	basic       bool   // add the HTTP Basic challenge
	Code        string `json:"error"`
	Description string `json:"error_description,omitempty"` // ASCII without '"' or '\'
}

func errInvalidRequest(desc string) *oauthError {
	return &oauthError{status: http.StatusBadRequest, Code: "invalid_request", Description: desc}
}

func errInvalidGrant(desc string) *oauthError {
	return &oauthError{status: http.StatusBadRequest, Code: "invalid_grant", Description: desc}
}

func errInvalidClient(basic bool, desc string) *oauthError {
	return &oauthError{status: http.StatusUnauthorized, basic: basic, Code: "invalid_client", Description: desc}
}

// writeError writes e as JSON, with its HTTP Basic challenge if any.
func writeError(w http.ResponseWriter, e *oauthError) {
	if e.basic {
		w.Header().Set("WWW-Authenticate", `Basic realm="`+realm+`"`)
	}
	writeJSON(w, e.status, e)
}

// writeJSON writes v as an application/json body with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil { // cannot happen: v is one of this package's response types
		status, body = http.StatusInternalServerError, []byte(`{"error":"server_error"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n')) // the client went away; nothing to do
}

// SetClientSecret registers a new secret for client id (a rotation at the
// provider); the old secret stops working at once.
func (s *Server) SetClientSecret(id, secret string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := maps.Clone(*s.clients.Load())
	next[id] = sha256.Sum256([]byte(secret))
	s.clients.Store(&next)
}
