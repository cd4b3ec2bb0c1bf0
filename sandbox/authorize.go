package sandbox

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// authorizeParams are the parameters of an authorization request, in the
// order the sign-in form carries them as hidden fields.
var authorizeParams = []string{"response_type", "client_id", "redirect_uri", "scope", "state", "code_challenge", "code_challenge_method", "nonce"}

// authorizeRequest is an authorization request whose client and redirect URI
// are valid.
type authorizeRequest struct {
	clientID      string
	redirectURI   string // the registered URI the answer goes to
	redirectGiven bool   // the request carried redirect_uri
	scope         string // granted scopes, space separated
	state         string
	challenge     string // S256 code_challenge; empty when none
	nonce         string
}

// Authorize mints an authorization code as if user had signed in and
// approved an authorization request of clientID with redirect_uri, scope and
// an S256 code_challenge (none when empty). An empty redirectURI stands for
// the client's only registered one, and the token request then need not
// repeat it. state plays no part in the code: it is accepted so that a call
// reads like the request it replaces. The errors wrap ErrUnknownClient,
// ErrRedirectURI, ErrUnknownUser, ErrInvalidScope or ErrInvalidCodeChallenge
// (also when Config.RequirePKCE is set and codeChallenge is empty).
func (s *Server) Authorize(clientID, redirectURI, user, scope, state, codeChallenge string) (code string, err error) {
	uri, err := s.redirectURIFor(clientID, redirectURI)
	if err != nil {
		return "", err
	}
	if _, ok := s.users[user]; !ok {
		return "", fmt.Errorf("%w: %q", ErrUnknownUser, user)
	}
	granted, oerr := s.grantScope(scope)
	if oerr != nil {
		return "", fmt.Errorf("%w: %s", ErrInvalidScope, oerr.Description)
	}
	method := ""
	if codeChallenge != "" {
		method = "S256"
	}
	if problem := s.challengeProblem(codeChallenge, method); problem != "" {
		return "", fmt.Errorf("%w: %s", ErrInvalidCodeChallenge, problem)
	}
	req := authorizeRequest{clientID: clientID, redirectURI: uri, redirectGiven: redirectURI != "", scope: granted, state: state, challenge: codeChallenge}
	return s.newCode(req, user, s.now()), nil
}

// handleAuthorize serves the authorization endpoint; Server describes it.
func (s *Server) handleAuthorize(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
	h.Set("X-Frame-Options", "DENY")

	var params url.Values
	switch r.Method {
	case http.MethodGet:
		params = r.URL.Query()
		if repeated(params) {
			renderPage(w, http.StatusBadRequest, errorPage, "Request parameters must not be repeated.")
			return
		}
	case http.MethodPost:
		if oerr := parseForm(w, r); oerr != nil {
			renderPage(w, http.StatusBadRequest, errorPage, "Bad form: "+oerr.Description+".")
			return
		}
		params = r.PostForm
	default:
		h.Set("Allow", "GET, POST")
		renderPage(w, http.StatusMethodNotAllowed, errorPage, "The authorization endpoint accepts GET and POST only.")
		return
	}

	uri, err := s.redirectURIFor(params.Get("client_id"), params.Get("redirect_uri"))
	if err != nil {
		renderPage(w, http.StatusBadRequest, errorPage, err.Error()+". The request is not sent back to the application: its client_id or redirect_uri cannot be trusted.")
		return
	}
	req, oerr := s.checkAuthorize(params, uri)
	if oerr != nil {
		redirect(w, uri, errorParams(oerr, req.state))
		return
	}

	if r.Method == http.MethodPost {
		if params.Get("deny") != "" {
			redirect(w, uri, errorParams(&oauthError{Code: "access_denied", Description: "the user denied the request"}, req.state))
			return
		}
		user := params.Get("username")
		if !s.checkUser(user, params.Get("password")) {
			renderPage(w, http.StatusUnauthorized, formPage, newForm(req, params, user, "Wrong username or password."))
			return
		}
		s.approve(w, req, user)
		return
	}
	if user, password, ok := r.BasicAuth(); ok {
		if !s.checkUser(user, password) {
			h.Set("WWW-Authenticate", `Basic realm="`+realm+`"`)
			renderPage(w, http.StatusUnauthorized, formPage, newForm(req, params, user, "Wrong username or password."))
			return
		}
		s.approve(w, req, user)
		return
	}
	renderPage(w, http.StatusOK, formPage, newForm(req, params, "", ""))
}

// redirectURIFor returns the redirect URI of an authorization request of
// clientID that carried given: given itself when it is registered for the
// client, the client's only registered URI when given is empty. The error
// wraps ErrUnknownClient or ErrRedirectURI.
func (s *Server) redirectURIFor(clientID, given string) (string, error) {
	if _, ok := (*s.clients.Load())[clientID]; !ok {
		return "", fmt.Errorf("%w: %q", ErrUnknownClient, clientID)
	}
	uris := s.redirects[clientID]
	switch {
	case len(uris) == 0:
		return "", fmt.Errorf("%w: client %q has none", ErrRedirectURI, clientID)
	case given == "" && len(uris) == 1:
		return uris[0], nil
	case given == "":
		return "", fmt.Errorf("%w: client %q has several, so redirect_uri is required", ErrRedirectURI, clientID)
	case slices.Contains(uris, given):
		return given, nil
	}
	return "", fmt.Errorf("%w: %q", ErrRedirectURI, given)
}

// checkAuthorize checks the parameters of an authorization request whose
// client and redirect URI are valid; the error is one to redirect with
// (RFC 6749 §4.1.2.1). The request is returned even then, for its state.
func (s *Server) checkAuthorize(params url.Values, uri string) (authorizeRequest, *oauthError) {
	req := authorizeRequest{
		clientID:      params.Get("client_id"),
		redirectURI:   uri,
		redirectGiven: params.Get("redirect_uri") != "",
		state:         params.Get("state"),
		challenge:     params.Get("code_challenge"),
		nonce:         params.Get("nonce"),
	}
	switch params.Get("response_type") {
	case "code":
	case "":
		return req, errInvalidRequest("missing response_type")
	default:
		return req, &oauthError{Code: "unsupported_response_type", Description: "response_type must be code"}
	}
	scope, oerr := s.grantScope(params.Get("scope"))
	if oerr != nil {
		return req, oerr
	}
	req.scope = scope
	if problem := s.challengeProblem(req.challenge, params.Get("code_challenge_method")); problem != "" {
		return req, errInvalidRequest(problem)
	}
	return req, nil
}

// challengeProblem describes what is wrong with a PKCE challenge and method
// (RFC 7636 §4.3), or returns "" when nothing is. Only S256 is supported: the
// method defaults to plain, so a challenge without a method is refused.
func (s *Server) challengeProblem(challenge, method string) string {
	switch {
	case challenge == "" && method != "":
		return "code_challenge_method without code_challenge"
	case challenge == "" && s.requirePKCE:
		return "code_challenge is required, with code_challenge_method S256"
	case challenge == "":
		return ""
	case method != "S256":
		return "code_challenge_method must be S256"
	}
	if b, err := base64.RawURLEncoding.DecodeString(challenge); err != nil || len(b) != sha256.Size {
		return "code_challenge must be the base64url SHA-256 of the code_verifier"
	}
	return ""
}

// approve mints a code for req and user and redirects to the client with it.
func (s *Server) approve(w http.ResponseWriter, req authorizeRequest, user string) {
	params := url.Values{"code": {s.newCode(req, user, s.now())}}
	if req.state != "" {
		params.Set("state", req.state)
	}
	redirect(w, req.redirectURI, params)
}

// newCode creates and remembers an authorization code for req and user.
func (s *Server) newCode(req authorizeRequest, user string, now time.Time) string {
	code := newToken()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sweepLocked(now)
	s.codes[code] = &authCode{
		clientID:      req.clientID,
		redirectURI:   req.redirectURI,
		redirectGiven: req.redirectGiven,
		user:          user,
		scope:         req.scope,
		nonce:         req.nonce,
		challenge:     req.challenge,
		exp:           now.Add(s.codeLifetime),
	}
	return code
}

// errorParams are the redirect parameters of an authorization error.
func errorParams(e *oauthError, state string) url.Values {
	params := url.Values{"error": {e.Code}, "error_description": {e.Description}}
	if state != "" {
		params.Set("state", state)
	}
	return params
}

// redirect answers 302 Found to the registered URI uri with params added to
// its query, which it keeps (RFC 6749 §3.1.2).
func redirect(w http.ResponseWriter, uri string, params url.Values) {
	sep := "?" // registered URIs have no fragment, so a '?' starts the query
	switch {
	case strings.HasSuffix(uri, "?"), strings.HasSuffix(uri, "&"):
		sep = ""
	case strings.Contains(uri, "?"):
		sep = "&"
	}
	w.Header().Set("Location", uri+sep+params.Encode())
	w.WriteHeader(http.StatusFound)
}

// repeated reports whether a parameter of params is repeated, which RFC 6749
// §3.1 forbids.
func repeated(params url.Values) bool {
	for _, vs := range params {
		if len(vs) > 1 {
			return true
		}
	}
	return false
}

// form is what the sign-in page shows.
type form struct {
	ClientID string
	Scope    string
	Error    string
	Username string
	Hidden   []hiddenField
}

// hiddenField is a parameter of the authorization request, carried by the form.
type hiddenField struct{ Name, Value string }

// newForm returns the sign-in page of req, carrying params, with username
// filled in and an error message when not empty.
func newForm(req authorizeRequest, params url.Values, username, errMsg string) form {
	f := form{ClientID: req.clientID, Scope: req.scope, Error: errMsg, Username: username}
	for _, name := range authorizeParams {
		if v := params.Get(name); v != "" {
			f.Hidden = append(f.Hidden, hiddenField{Name: name, Value: v})
		}
	}
	return f
}

// formPage is the sign-in page. It posts to its own URL, the authorization
// endpoint. html/template escapes everything it inserts.
var formPage = template.Must(template.New("form").Parse(`<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Sandbox: sign in</title></head>
<body>
<h1>Sign in to the sandbox</h1>
<p>Client <b>{{.ClientID}}</b> asks for access{{if .Scope}} with scope <code>{{.Scope}}</code>{{end}}.</p>
{{if .Error}}<p role="alert">{{.Error}}</p>
{{end}}<form method="post">
{{range .Hidden}}<input type="hidden" name="{{.Name}}" value="{{.Value}}">
{{end}}<p><label>Username <input name="username" value="{{.Username}}" autocomplete="username" required autofocus></label></p>
<p><label>Password <input name="password" type="password" autocomplete="current-password" required></label></p>
<p><button type="submit">Sign in and allow</button> <button type="submit" name="deny" value="1" formnovalidate>Deny</button></p>
</form>
</body>
</html>
`))

// errorPage tells the user why an authorization request cannot go on.
var errorPage = template.Must(template.New("error").Parse(`<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Sandbox: authorization error</title></head>
<body>
<h1>Authorization error</h1>
<p>{{.}}</p>
</body>
</html>
`))

// renderPage writes t executed with data as an HTML page with status.
func renderPage(w http.ResponseWriter, status int, t *template.Template, data any) {
	var buf bytes.Buffer
	if err := t.Execute(&buf, data); err != nil { // cannot happen: the templates and their data are fixed
		http.Error(w, "template error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes()) // the client went away; nothing to do
}
