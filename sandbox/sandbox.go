// Package sandbox is a small in-process OAuth2 authorization server, for
// `tokenbroker dev`, for end-to-end tests and for benchmarks.
//
// It serves the token endpoint of RFC 6749 (the client_credentials grant), token
// introspection (RFC 7662) and one protected resource that accepts bearer
// tokens (RFC 6750). Everything lives in memory. The server starts no
// goroutines and never logs, so there is nothing to close: stop serving it and
// it is gone.
//
// A newcomer gets a token with:
//
//	curl -u svc:s3cret -d grant_type=client_credentials http://127.0.0.1:PORT/oauth2/token
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
	"mime"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// Routes served by a Server.
const (
	TokenPath      = "/oauth2/token"      // RFC 6749 token endpoint, POST
	IntrospectPath = "/oauth2/introspect" // RFC 7662 introspection endpoint, POST
	WhoamiPath     = "/api/whoami"        // protected resource, GET with a bearer token
)

// Grant types the token endpoint understands.
const (
	GrantClientCredentials = "client_credentials"
)

// DefaultTokenLifetime is the lifetime of issued tokens when
// Config.TokenLifetime is zero.
const DefaultTokenLifetime = time.Hour

// ErrInvalidConfig is wrapped by every error New returns.
var ErrInvalidConfig = errors.New("sandbox: invalid config")

const (
	// maxBodyBytes bounds the request bodies the server reads.
	maxBodyBytes = 64 << 10
	// minSweep is the size the token map must reach before issuing a token
	// first drops the expired ones.
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
}

// Server is an OAuth2 authorization server. It is an http.Handler with these routes:
//
//	POST /oauth2/token       RFC 6749 token endpoint (client_credentials); client auth by HTTP Basic
//	                         (RFC 6749 §2.3.1, form-url-decoded id/secret) or client_id/client_secret
//	                         in the body, or both (must agree)
//	POST /oauth2/introspect  RFC 7662 introspection (client auth as above, `token` form field) →
//	                         {"active":true,"scope":..,"client_id":..,"token_type":"Bearer","exp":..,"iat":..}
//	                         or {"active":false}
//	GET  /api/whoami         a protected resource: `Authorization: Bearer <token>` → 200
//	                         {"client_id":..,"scope":..}, else 401 with
//	                         `WWW-Authenticate: Bearer error="invalid_token"`
//
// Token endpoint errors follow RFC 6749 §5.2, checked in this order: a method
// other than POST is 405; a body that is not application/x-www-form-urlencoded,
// or that repeats a parameter, is 400 invalid_request; failed client
// authentication is 401 invalid_client, with `WWW-Authenticate: Basic
// realm="sandbox"` when the client sent an Authorization header; a missing
// grant_type is 400 invalid_request; an unknown one is 400
// unsupported_grant_type; a scope the server does not know, or a malformed
// scope, is 400 invalid_scope. Every token endpoint response carries
// `Cache-Control: no-store` and `Pragma: no-cache`.
//
// When the client_credentials request omits scope, every scope in
// Config.Scopes is granted (none when Config.Scopes is empty).
//
// A Server is safe for concurrent use.
type Server struct {
	clients   map[string][sha256.Size]byte // client_id → SHA-256 of its secret
	lifetime  time.Duration
	scopes    []string        // Config.Scopes without duplicates, in order
	known     map[string]bool // Config.Scopes as a set; nil means any scope
	now       func() time.Time
	maxRecord int
	mux       *http.ServeMux

	mu         sync.Mutex
	tokens     map[string]tokenRecord // access token → what it grants
	sweepAt    int                    // len(tokens) at which issue drops expired tokens
	tokenCalls int
	issued     int
	requests   []Recorded
	failure    *Failure
}

// Recorded is what the token endpoint received.
type Recorded struct {
	Header http.Header
	Form   url.Values // the form-encoded body parameters; never the URL query
	Time   time.Time  // Config.Now when the request arrived
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
	scope    string // granted scopes, space separated
	iat, exp time.Time
}

// New returns a Server for cfg. The error wraps ErrInvalidConfig and lists
// every problem at once: Clients is empty, a client_id or client_secret is
// empty, TokenLifetime or MaxRecorded is negative, or a scope in Scopes is not
// a valid RFC 6749 §3.3 scope-token.
func New(cfg Config) (*Server, error) {
	var errs []error
	invalid := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, args...)))
	}

	if len(cfg.Clients) == 0 {
		invalid("no clients")
	}
	ids := make([]string, 0, len(cfg.Clients))
	for id := range cfg.Clients {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	clients := make(map[string][sha256.Size]byte, len(cfg.Clients))
	for _, id := range ids {
		secret := cfg.Clients[id]
		if id == "" {
			invalid("empty client_id")
		}
		if secret == "" {
			invalid("client %q has an empty secret", id)
		}
		clients[id] = sha256.Sum256([]byte(secret))
	}

	lifetime := cfg.TokenLifetime
	if lifetime == 0 {
		lifetime = DefaultTokenLifetime
	}
	if lifetime < 0 {
		invalid("negative token lifetime %v", lifetime)
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

	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	s := &Server{
		clients:   clients,
		lifetime:  lifetime,
		scopes:    scopes,
		known:     known,
		now:       now,
		maxRecord: cfg.MaxRecorded,
		mux:       http.NewServeMux(),
		tokens:    make(map[string]tokenRecord),
		sweepAt:   minSweep,
	}
	s.mux.HandleFunc(TokenPath, s.handleToken)
	s.mux.HandleFunc(IntrospectPath, s.handleIntrospect)
	s.mux.HandleFunc(WhoamiPath, s.handleWhoami)
	return s, nil
}

// ServeHTTP serves the routes listed on Server; any other path is 404.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mux.ServeHTTP(w, r)
}

// TokenCalls returns the number of requests to /oauth2/token, successful or
// not, including those answered by a Failure.
func (s *Server) TokenCalls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tokenCalls
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
// protected resource rejects it. Revoking an unknown token does nothing.
func (s *Server) Revoke(accessToken string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.tokens, accessToken)
}

// SetFailure makes the token endpoint answer every request with a copy of f
// instead of handling it, until SetFailure(nil). Requests answered so are still
// counted and recorded. Introspection and the protected resource are not
// affected.
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

// handleToken serves the RFC 6749 token endpoint.
func (s *Server) handleToken(w http.ResponseWriter, r *http.Request) {
	formErr := parseForm(w, r)
	now := s.now()

	s.mu.Lock()
	s.tokenCalls++
	s.recordLocked(Recorded{Header: r.Header.Clone(), Form: cloneValues(r.PostForm), Time: now})
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
	resp, oerr := s.grant(tokenRequest{clientID: clientID, form: r.PostForm, now: now})
	if oerr != nil {
		writeError(w, oerr)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

// tokenRequest is an authenticated token request, as a grant sees it.
type tokenRequest struct {
	clientID string     // the authenticated client
	form     url.Values // body parameters, none repeated
	now      time.Time
}

// tokenResponse is the RFC 6749 §5.1 successful token response.
type tokenResponse struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int64  `json:"expires_in"`
	Scope       string `json:"scope,omitempty"`
}

// grant dispatches req to the method that implements its grant_type. A new
// grant is one more case here and one more method.
func (s *Server) grant(req tokenRequest) (tokenResponse, *oauthError) {
	switch gt := req.form.Get("grant_type"); gt {
	case "":
		return tokenResponse{}, errInvalidRequest("missing grant_type")
	case GrantClientCredentials:
		return s.grantClientCredentials(req)
	default:
		return tokenResponse{}, &oauthError{status: http.StatusBadRequest, Code: "unsupported_grant_type", Description: "the server supports grant_type client_credentials only"}
	}
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
	var granted []string
	for _, sc := range strings.Split(requested, " ") {
		if !validScopeToken(sc) {
			return "", &oauthError{status: http.StatusBadRequest, Code: "invalid_scope", Description: "scope must be scope-tokens separated by single spaces"}
		}
		if s.known != nil && !s.known[sc] {
			return "", &oauthError{status: http.StatusBadRequest, Code: "invalid_scope", Description: "unknown scope requested"}
		}
		if !slices.Contains(granted, sc) {
			granted = append(granted, sc)
		}
	}
	return strings.Join(granted, " "), nil
}

// issue creates and remembers an access token for clientID. Before storing
// it, once the token map has grown past sweepAt, it drops the expired tokens
// so that memory stays proportional to the live ones.
func (s *Server) issue(clientID, scope string, now time.Time) tokenResponse {
	token := newToken()
	rec := tokenRecord{clientID: clientID, scope: scope, iat: now, exp: now.Add(s.lifetime)}

	s.mu.Lock()
	if len(s.tokens) >= s.sweepAt {
		for t, r := range s.tokens {
			if !now.Before(r.exp) {
				delete(s.tokens, t)
			}
		}
		s.sweepAt = max(minSweep, 2*len(s.tokens))
	}
	s.tokens[token] = rec
	s.issued++
	s.mu.Unlock()

	return tokenResponse{
		AccessToken: token,
		TokenType:   "Bearer",
		ExpiresIn:   int64((s.lifetime + time.Second - 1) / time.Second),
		Scope:       scope,
	}
}

// lookup returns what token grants, and false when the token is unknown,
// revoked or expired at now. An expired token is forgotten.
func (s *Server) lookup(token string, now time.Time) (tokenRecord, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rec, ok := s.tokens[token]
	if !ok {
		return tokenRecord{}, false
	}
	if !now.Before(rec.exp) {
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
	TokenType string `json:"token_type,omitempty"`
	Exp       int64  `json:"exp,omitempty"`
	Iat       int64  `json:"iat,omitempty"`
}

// handleIntrospect serves RFC 7662 introspection. The caller authenticates as
// a client exactly as at the token endpoint; any client may introspect any
// token. A missing token parameter is 400 invalid_request.
func (s *Server) handleIntrospect(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
	if r.Method != http.MethodPost {
		h.Set("Allow", http.MethodPost)
		writeError(w, &oauthError{status: http.StatusMethodNotAllowed, Code: "invalid_request", Description: "the introspection endpoint accepts POST only"})
		return
	}
	if oerr := parseForm(w, r); oerr != nil {
		writeError(w, oerr)
		return
	}
	if _, oerr := s.authenticateClient(r); oerr != nil {
		writeError(w, oerr)
		return
	}
	token := r.PostForm.Get("token")
	if token == "" {
		writeError(w, errInvalidRequest("missing token"))
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
		TokenType: "Bearer",
		Exp:       rec.exp.Unix(),
		Iat:       rec.iat.Unix(),
	})
}

// whoami is the body of a successful /api/whoami response.
type whoami struct {
	ClientID string `json:"client_id"`
	Scope    string `json:"scope"`
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
	writeJSON(w, http.StatusOK, whoami{ClientID: rec.clientID, Scope: rec.scope})
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
	want, known := s.clients[id]
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
	return Recorded{Header: rec.Header.Clone(), Form: cloneValues(rec.Form), Time: rec.Time}
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
