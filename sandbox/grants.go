package sandbox

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"time"
)

// Scopes that mean something to the server.
const (
	scopeOpenID        = "openid"         // adds an id_token (Config.IDTokens)
	scopeOfflineAccess = "offline_access" // asks for a refresh token (Config.RefreshRequiresOfflineAccess)
)

// Layout of a refresh token before base64url: lineage id, generation (big
// endian), truncated HMAC-SHA256 of both under Server.refreshKey.
const (
	lineageIDLen  = 16
	refreshGenLen = 8
	refreshMACLen = 16
	refreshLen    = lineageIDLen + refreshGenLen + refreshMACLen
)

// lineage is everything issued from one authorization of a user: one password
// grant or one redeemed authorization code, the refresh tokens that follow
// from it and the access tokens issued with them. Revoking it revokes them
// all. Its fields are guarded by Server.mu.
type lineage struct {
	id         string // lineageIDLen random bytes: the key of Server.lineages, named by its refresh tokens
	clientID   string
	user       string
	scope      string    // granted at the start; a refresh may narrow it, never widen it
	refresh    bool      // the lineage has refresh tokens
	gen        uint64    // generation of the current refresh token; each rotation adds one
	refreshExp time.Time // when the current refresh token expires
	revoked    bool
	until      time.Time // when its last token expires: the server may forget it then
}

// keepUntil makes the server remember lin at least until t.
func (lin *lineage) keepUntil(t time.Time) {
	if t.After(lin.until) {
		lin.until = t
	}
}

// authCode is what the server remembers about an authorization code.
type authCode struct {
	clientID      string
	redirectURI   string // where the code was sent
	redirectGiven bool   // the authorization request carried redirect_uri, so the token request must repeat it
	user          string
	scope         string // granted scopes, space separated
	nonce         string // OpenID Connect nonce, copied into the id_token
	challenge     string // S256 code_challenge; empty when none was sent
	exp           time.Time
	lineage       *lineage // set when the code is redeemed: a second redemption revokes it
}

// forgettable reports whether the server may forget c at now: it has expired,
// and the lineage it started, if any, has no live token left to revoke.
func (c *authCode) forgettable(now time.Time) bool {
	return !now.Before(c.exp) && (c.lineage == nil || !now.Before(c.lineage.until))
}

// grantPassword implements RFC 6749 §4.3: the client trades a user's username
// and password for tokens. A missing username or password is invalid_request,
// a wrong one invalid_grant, a bad scope invalid_scope.
func (s *Server) grantPassword(req tokenRequest) (tokenResponse, *oauthError) {
	user, password := req.form.Get("username"), req.form.Get("password")
	if user == "" || password == "" {
		return tokenResponse{}, errInvalidRequest("missing username or password")
	}
	if !s.checkUser(user, password) {
		return tokenResponse{}, errInvalidGrant("unknown user or wrong password")
	}
	scope, oerr := s.grantScope(req.form.Get("scope"))
	if oerr != nil {
		return tokenResponse{}, oerr
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	lin := s.newLineageLocked(req.clientID, user, scope, req.now)
	return s.issueUserLocked(req, lin, scope, "", true), nil
}

// grantAuthorizationCode implements RFC 6749 §4.1.3 with the PKCE check of
// RFC 7636 §4.6. A missing code is invalid_request. An unknown, expired or
// already redeemed code is invalid_grant, and so is a code of another client,
// a redirect_uri that differs from the authorization request's, and a missing,
// unexpected or wrong code_verifier. Redeeming a code a second time also
// revokes the lineage it started.
func (s *Server) grantAuthorizationCode(req tokenRequest) (tokenResponse, *oauthError) {
	code := req.form.Get("code")
	if code == "" {
		return tokenResponse{}, errInvalidRequest("missing code")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.codes[code]
	switch {
	case !ok:
		return tokenResponse{}, errInvalidGrant("unknown authorization code")
	case c.lineage != nil:
		c.lineage.revoked = true
		return tokenResponse{}, errInvalidGrant("authorization code already used: the tokens issued with it are revoked")
	case c.clientID != req.clientID:
		return tokenResponse{}, errInvalidGrant("authorization code issued to another client")
	case !req.now.Before(c.exp):
		delete(s.codes, code)
		return tokenResponse{}, errInvalidGrant("authorization code expired")
	}
	if uri := req.form.Get("redirect_uri"); (c.redirectGiven || uri != "") && uri != c.redirectURI {
		return tokenResponse{}, errInvalidGrant("redirect_uri differs from the authorization request's")
	}
	if oerr := checkVerifier(c.challenge, req.form.Get("code_verifier")); oerr != nil {
		return tokenResponse{}, oerr
	}
	lin := s.newLineageLocked(c.clientID, c.user, c.scope, req.now)
	c.lineage = lin
	return s.issueUserLocked(req, lin, c.scope, c.nonce, true), nil
}

// grantRefreshToken implements RFC 6749 §6. A missing refresh_token is
// invalid_request; a refresh token that is not one of the server's, belongs
// to another client, was revoked, has expired or was replaced by rotation is
// invalid_grant (with status Config.RefreshErrorStatus); a scope wider than
// the original grant is invalid_scope. Presenting a replaced refresh token
// also revokes its lineage and counts in ReusedRefreshTokens.
func (s *Server) grantRefreshToken(req tokenRequest) (tokenResponse, *oauthError) {
	token := req.form.Get("refresh_token")
	if token == "" {
		return tokenResponse{}, errInvalidRequest("missing refresh_token")
	}
	id, gen, ok := s.parseRefreshToken(token)
	if !ok {
		return tokenResponse{}, s.errRefresh("unknown refresh token")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	lin := s.lineages[id]
	switch {
	case lin == nil || !lin.refresh:
		return tokenResponse{}, s.errRefresh("unknown refresh token")
	case lin.clientID != req.clientID:
		return tokenResponse{}, s.errRefresh("refresh token issued to another client")
	case gen != lin.gen:
		s.reused++
		lin.revoked = true
		return tokenResponse{}, s.errRefresh("refresh token already used: every token of its grant is revoked")
	case lin.revoked:
		return tokenResponse{}, s.errRefresh("refresh token revoked")
	case !req.now.Before(lin.refreshExp):
		return tokenResponse{}, s.errRefresh("refresh token expired")
	}
	scope := lin.scope
	if requested := req.form.Get("scope"); requested != "" {
		original := strings.Split(lin.scope, " ")
		var oerr *oauthError
		scope, oerr = s.narrowScope(requested, func(sc string) bool { return lin.scope != "" && slices.Contains(original, sc) })
		if oerr != nil {
			return tokenResponse{}, oerr
		}
	}
	if s.rotate {
		lin.gen++
		lin.refreshExp = req.now.Add(s.refreshLife)
		lin.keepUntil(lin.refreshExp)
	}
	return s.issueUserLocked(req, lin, scope, "", s.rotate), nil
}

// errRefresh is the invalid_grant error of the refresh_token grant.
func (s *Server) errRefresh(desc string) *oauthError {
	e := errInvalidGrant(desc)
	e.status = s.refreshErr
	return e
}

// RevokeGrant revokes the lineage of refreshToken, as a user removing the app
// would: every refresh and access token issued with it stops working.
// Any refresh token of the lineage will do, even one rotation replaced. An
// unknown or malformed token does nothing.
func (s *Server) RevokeGrant(refreshToken string) {
	id, _, ok := s.parseRefreshToken(refreshToken)
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if lin := s.lineages[id]; lin != nil {
		lin.revoked = true
	}
}

// newLineageLocked starts and remembers a lineage for user, with a refresh
// token when Config.RefreshTokens (and the scope, with
// Config.RefreshRequiresOfflineAccess) calls for one. s.mu must be held.
func (s *Server) newLineageLocked(clientID, user, scope string, now time.Time) *lineage {
	s.sweepLocked(now)
	var id [lineageIDLen]byte
	_, _ = rand.Read(id[:]) // never fails: crypto/rand crashes the program instead
	lin := &lineage{
		id:       string(id[:]),
		clientID: clientID,
		user:     user,
		scope:    scope,
		refresh:  s.refreshes && (!s.offlineOnly || hasScope(scope, scopeOfflineAccess)),
		until:    now.Add(s.lifetime), // that of the access token issued with it
	}
	if lin.refresh {
		lin.refreshExp = now.Add(s.refreshLife)
		lin.keepUntil(lin.refreshExp)
	}
	s.lineages[lin.id] = lin
	return lin
}

// issueUserLocked issues an access token with scope in lin and adds the
// current refresh token of lin when withRefresh and lin has one, and an
// id_token when Config.IDTokens and scope contains openid. s.mu must be held.
func (s *Server) issueUserLocked(req tokenRequest, lin *lineage, scope, nonce string, withRefresh bool) tokenResponse {
	resp := s.issueLocked(lin.clientID, lin.user, scope, lin, req.now)
	if withRefresh && lin.refresh {
		resp.RefreshToken = s.refreshToken(lin)
	}
	if s.idTokens && hasScope(scope, scopeOpenID) {
		resp.IDToken = s.idToken(req.issuer, lin.clientID, lin.user, nonce, req.now)
	}
	return resp
}

// refreshToken returns the refresh token of the current generation of lin.
func (s *Server) refreshToken(lin *lineage) string {
	b := make([]byte, 0, refreshLen)
	b = append(b, lin.id...)
	b = binary.BigEndian.AppendUint64(b, lin.gen)
	b = append(b, s.refreshMAC(b)...)
	return base64.RawURLEncoding.EncodeToString(b)
}

// parseRefreshToken returns the lineage id and generation that token names,
// and false when token is not a refresh token this server made.
func (s *Server) parseRefreshToken(token string) (id string, gen uint64, ok bool) {
	b, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil || len(b) != refreshLen {
		return "", 0, false
	}
	body := b[:lineageIDLen+refreshGenLen]
	if !hmac.Equal(b[len(body):], s.refreshMAC(body)) {
		return "", 0, false
	}
	return string(body[:lineageIDLen]), binary.BigEndian.Uint64(body[lineageIDLen:]), true
}

// refreshMAC returns the truncated HMAC-SHA256 of a refresh token's body.
func (s *Server) refreshMAC(body []byte) []byte {
	m := hmac.New(sha256.New, s.refreshKey)
	m.Write(body)
	return m.Sum(nil)[:refreshMACLen]
}

// checkUser reports whether password is user's. It takes the same time
// whether or not user is known and whatever the password's length.
func (s *Server) checkUser(user, password string) bool {
	want, known := s.users[user]
	return equalSecrets(sha256.Sum256([]byte(password)), want) && known
}

// checkVerifier checks the code_verifier of a token request against the S256
// challenge of its code (RFC 7636 §4.6): a verifier is required when there
// was a challenge and refused when there was none, so that PKCE cannot be
// stripped from a flow. Every failure is invalid_grant.
func checkVerifier(challenge, verifier string) *oauthError {
	switch {
	case challenge == "" && verifier == "":
		return nil
	case challenge == "":
		return errInvalidGrant("code_verifier without a code_challenge in the authorization request")
	case verifier == "":
		return errInvalidGrant("missing code_verifier")
	case !validVerifier(verifier):
		return errInvalidGrant("code_verifier must be 43 to 128 unreserved characters")
	}
	sum := sha256.Sum256([]byte(verifier))
	if subtle.ConstantTimeCompare([]byte(base64.RawURLEncoding.EncodeToString(sum[:])), []byte(challenge)) != 1 {
		return errInvalidGrant("code_verifier does not match the code_challenge")
	}
	return nil
}

// validVerifier reports whether v is an RFC 7636 §4.1 code_verifier:
// 43*128( ALPHA / DIGIT / "-" / "." / "_" / "~" ).
func validVerifier(v string) bool {
	if len(v) < 43 || len(v) > 128 {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-._~", c) >= 0) {
			return false
		}
	}
	return true
}

// idClaims are the claims of an id_token (OpenID Connect Core §2).
type idClaims struct {
	Iss   string `json:"iss"`
	Sub   string `json:"sub"`
	Aud   string `json:"aud"`
	Exp   int64  `json:"exp"`
	Iat   int64  `json:"iat"`
	Nonce string `json:"nonce,omitempty"`
}

// idTokenHeader is the JOSE header of every id_token.
const idTokenHeader = `{"alg":"HS256","typ":"JWT"}`

// idToken returns an id_token for user and clientID, an HS256 JWT keyed with
// the client's secret (OpenID Connect Core §10.1).
func (s *Server) idToken(iss, clientID, user, nonce string, now time.Time) string {
	enc := base64.RawURLEncoding
	claims, _ := json.Marshal(idClaims{ // cannot fail: strings and integers
		Iss:   iss,
		Sub:   user,
		Aud:   clientID,
		Exp:   now.Add(s.lifetime).Unix(),
		Iat:   now.Unix(),
		Nonce: nonce,
	})
	input := enc.EncodeToString([]byte(idTokenHeader)) + "." + enc.EncodeToString(claims)
	m := hmac.New(sha256.New, []byte(s.secrets[clientID]))
	m.Write([]byte(input))
	return input + "." + enc.EncodeToString(m.Sum(nil))
}

// issuer returns the scheme and host that r reached, the iss of id_tokens.
func issuer(r *http.Request) string {
	if r.TLS != nil {
		return "https://" + r.Host
	}
	return "http://" + r.Host
}

// hasScope reports whether the space-separated scope contains sc.
func hasScope(scope, sc string) bool {
	return slices.Contains(strings.Split(scope, " "), sc)
}
