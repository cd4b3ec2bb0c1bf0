package fakes

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// AssertionSeen is what the assertion provider made of one request.
type AssertionSeen struct {
	Path     string
	KeyID    string // the kid of the assertion's header
	Audience []string
	JTI      string
	Lifetime time.Duration // exp - iat
	// Err is why the request was refused with invalid_client; "" when the
	// assertion held.
	Err string
	// HasSecret is set when the request carried a client secret or an
	// Authorization header besides the assertion.
	HasSecret bool
}

// AssertionProvider is an authorization server that authenticates its
// client the way RFC 7523 §3 and OpenID Connect Core §9 say: it fetches the
// client's JWKS over HTTP (on every request, as a server that does not
// cache), checks the assertion's signature, iss = sub = ClientID, that its
// aud names Audience, exp in the future and not too far, and refuses a jti
// it has seen. It serves /token (client_credentials), /introspect and
// /revoke.
type AssertionProvider struct {
	*httptest.Server
	ClientID string
	// Audience is the aud the provider accepts; empty means its token
	// endpoint URL.
	Audience string

	mu      sync.Mutex
	jwksURL string
	jtis    map[string]bool
	seen    []AssertionSeen
	issued  int
}

// NewAssertionProvider starts an assertion provider for clientID; set the
// client's JWKS URL with SetJWKSURL before the first request.
func NewAssertionProvider(t testing.TB, clientID string) *AssertionProvider {
	p := &AssertionProvider{ClientID: clientID, jtis: map[string]bool{}}
	p.Server = httptest.NewServer(http.HandlerFunc(p.serve))
	t.Cleanup(p.Close)
	return p
}

// SetJWKSURL says where the client's public keys are.
func (p *AssertionProvider) SetJWKSURL(u string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.jwksURL = u
}

// Seen returns what the provider made of every request so far.
func (p *AssertionProvider) Seen() []AssertionSeen {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.seen)
}

// Replay posts assertion to the token endpoint again and reports the
// status the provider answered with (a reused jti must be refused).
func (p *AssertionProvider) Replay(assertion string) (int, error) {
	resp, err := http.PostForm(p.URL+"/token", map[string][]string{
		"grant_type": {"client_credentials"}, "client_id": {p.ClientID},
		"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"},
		"client_assertion":      {assertion},
	})
	if err != nil {
		return 0, err
	}
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

func (p *AssertionProvider) serve(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	s := AssertionSeen{Path: r.URL.Path,
		HasSecret: r.PostForm.Get("client_secret") != "" || r.Header.Get("Authorization") != ""}
	err := p.verify(r, &s)
	if err != nil {
		s.Err = err.Error()
	}
	p.mu.Lock()
	p.seen = append(p.seen, s)
	p.issued++
	n := p.issued
	p.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"error":"invalid_client"}`))
		return
	}
	switch r.URL.Path {
	case "/token":
		_, _ = fmt.Fprintf(w, `{"access_token":"pkj-%d","token_type":"Bearer","expires_in":3600}`, n)
	case "/introspect":
		_, _ = w.Write([]byte(`{"active":true,"client_id":"` + p.ClientID + `"}`))
	case "/revoke":
		w.WriteHeader(http.StatusOK)
	default:
		w.WriteHeader(http.StatusNotFound)
	}
}

func (p *AssertionProvider) verify(r *http.Request, s *AssertionSeen) error {
	if got := r.PostForm.Get("client_assertion_type"); got != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
		return fmt.Errorf("client_assertion_type is %q", got)
	}
	if id := r.PostForm.Get("client_id"); id != "" && id != p.ClientID {
		return fmt.Errorf("client_id is %q", id)
	}
	tok, err := jwt.ParseSigned(r.PostForm.Get("client_assertion"),
		[]jose.SignatureAlgorithm{jose.RS256, jose.ES256, jose.EdDSA})
	if err != nil {
		return fmt.Errorf("assertion does not parse: %v", err)
	}
	if len(tok.Headers) != 1 {
		return fmt.Errorf("assertion has %d signatures", len(tok.Headers))
	}
	s.KeyID = tok.Headers[0].KeyID
	p.mu.Lock()
	jwksURL := p.jwksURL
	p.mu.Unlock()
	set, err := fetchJWKS(jwksURL)
	if err != nil {
		return err
	}
	keys := set.Key(s.KeyID)
	if len(keys) != 1 {
		return fmt.Errorf("the client's JWKS has %d keys with kid %q", len(keys), s.KeyID)
	}
	if !keys[0].IsPublic() {
		return fmt.Errorf("the client's JWKS serves a private key")
	}
	var c jwt.Claims
	if err := tok.Claims(keys[0].Key, &c); err != nil {
		return fmt.Errorf("signature: %v", err)
	}
	s.Audience, s.JTI = c.Audience, c.ID
	if c.Expiry != nil && c.IssuedAt != nil {
		s.Lifetime = c.Expiry.Time().Sub(c.IssuedAt.Time())
	}
	aud := p.Audience
	if aud == "" {
		aud = p.URL + "/token"
	}
	if err := c.Validate(jwt.Expected{Issuer: p.ClientID, Subject: p.ClientID, AnyAudience: jwt.Audience{aud}, Time: time.Now()}); err != nil {
		return fmt.Errorf("claims: %v", err)
	}
	if c.Expiry == nil || c.Expiry.Time().After(time.Now().Add(10*time.Minute)) {
		return fmt.Errorf("exp is missing or too far")
	}
	if c.ID == "" {
		return fmt.Errorf("jti is missing")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.jtis[c.ID] {
		return fmt.Errorf("jti %s was used before", c.ID)
	}
	p.jtis[c.ID] = true
	return nil
}

func fetchJWKS(u string) (*jose.JSONWebKeySet, error) {
	if u == "" {
		return nil, fmt.Errorf("no JWKS URL for the client")
	}
	resp, err := http.Get(u)
	if err != nil {
		return nil, fmt.Errorf("fetch JWKS: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch JWKS: status %d", resp.StatusCode)
	}
	var set jose.JSONWebKeySet
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil {
		return nil, fmt.Errorf("decode JWKS: %v", err)
	}
	return &set, nil
}
