package sandbox

import "net/http"

// handleRevoke serves RFC 7009 token revocation. The caller authenticates as
// a client exactly as at the token endpoint. The server tells refresh tokens
// from access tokens itself, so token_type_hint is accepted and ignored
// (RFC 7009 §2.1 allows that). Revoking a refresh token revokes its lineage;
// revoking an access token revokes that token only. An unknown, expired or
// already revoked token is answered 200 like a revoked one (§2.2). A missing
// token is 400 invalid_request; a token issued to another client is 400
// unauthorized_client and stays valid (§2.1: "the request is refused").
func (s *Server) handleRevoke(w http.ResponseWriter, r *http.Request) {
	clientID, token, ok := s.clientTokenRequest(w, r, "revocation")
	if !ok {
		return
	}
	if !s.revoke(clientID, token) {
		writeError(w, &oauthError{status: http.StatusBadRequest, Code: "unauthorized_client", Description: "the token was issued to another client"})
		return
	}
	w.WriteHeader(http.StatusOK)
}

// clientTokenRequest reads what the revocation and introspection endpoints
// both take: a POST, authenticated as a client exactly as at the token
// endpoint, naming a token. Their answers are not cached. When ok is false
// it has answered the request with the error.
func (s *Server) clientTokenRequest(w http.ResponseWriter, r *http.Request, endpoint string) (clientID, token string, ok bool) {
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
	if r.Method != http.MethodPost {
		h.Set("Allow", http.MethodPost)
		writeError(w, &oauthError{status: http.StatusMethodNotAllowed, Code: "invalid_request", Description: "the " + endpoint + " endpoint accepts POST only"})
		return "", "", false
	}
	if oerr := parseForm(w, r); oerr != nil {
		writeError(w, oerr)
		return "", "", false
	}
	clientID, oerr := s.authenticateClient(r)
	if oerr != nil {
		writeError(w, oerr)
		return "", "", false
	}
	if token = r.PostForm.Get("token"); token == "" {
		writeError(w, errInvalidRequest("missing token"))
		return "", "", false
	}
	return clientID, token, true
}

// revoke revokes token, a refresh or access token, for clientID. It returns
// false, revoking nothing, when the token was issued to another client.
func (s *Server) revoke(clientID, token string) bool {
	id, _, isRefresh := s.parseRefreshToken(token)
	s.mu.Lock()
	defer s.mu.Unlock()
	if isRefresh {
		lin := s.lineages[id]
		if lin == nil {
			return true
		}
		if lin.clientID != clientID {
			return false
		}
		lin.revoked = true
		return true
	}
	rec, ok := s.tokens[token]
	if !ok {
		return true
	}
	if rec.clientID != clientID {
		return false
	}
	delete(s.tokens, token)
	return true
}
