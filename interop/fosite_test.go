package interop_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ory/fosite"
	"github.com/ory/fosite/compose"
	"github.com/ory/fosite/storage"
	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/oauth"
	"golang.org/x/crypto/bcrypt"
)

// A second independent authorization server: ory/fosite, the OAuth2 engine
// inside Ory Hydra, run in the test's process. Like Hydra it rotates
// refresh tokens and, when a refresh token is used, revokes the access
// token issued with it (RFC 6749 §6 allows it; RFC 9700 encourages it).

const (
	fositeClient   = "broker-fosite"
	fositeUser     = "alice"
	fositePassword = "wonderland-7"
)

// fositeServer is fosite behind an httptest server: a token endpoint and
// an RFC 7662 introspection endpoint.
type fositeServer struct {
	*httptest.Server
	provider fosite.OAuth2Provider

	mu       sync.Mutex
	requests []url.Values // token requests' forms, secrets included (test only)
}

const (
	fositeTokenPath      = "/oauth2/token"
	fositeIntrospectPath = "/oauth2/introspect"
)

// startFosite starts fosite with one confidential client (HTTP Basic) that
// may use client_credentials, password and refresh_token, one user, and
// access tokens living accessTTL.
func startFosite(t *testing.T, accessTTL time.Duration) *fositeServer {
	t.Helper()
	secret, key, hashed := fositeSecrets(t)
	store := storage.NewMemoryStore()
	store.Clients[fositeClient] = &fosite.DefaultClient{
		ID: fositeClient, Secret: hashed,
		GrantTypes: []string{"client_credentials", "password", "refresh_token"},
		Scopes:     []string{"read", "write", "offline"},
	}
	store.Users[fositeUser] = storage.MemoryUserRelation{Username: fositeUser, Password: fositePassword}
	cfg := &fosite.Config{
		AccessTokenLifespan:  accessTTL,
		RefreshTokenLifespan: time.Hour,
		GlobalSecret:         secret,
		RefreshTokenScopes:   []string{}, // every grant but client_credentials gets a refresh token
		ScopeStrategy:        fosite.ExactScopeStrategy,
	}
	s := &fositeServer{provider: compose.ComposeAllEnabled(cfg, store, key)}
	mux := http.NewServeMux()
	mux.HandleFunc(fositeTokenPath, s.token)
	mux.HandleFunc(fositeIntrospectPath, s.introspect)
	s.Server = httptest.NewServer(mux)
	t.Cleanup(s.Close)
	return s
}

// fositeSecrets makes what a fosite instance needs: its global secret, its
// signing key, and the bcrypt hash of clientSecret.
func fositeSecrets(t *testing.T) (secret []byte, key *rsa.PrivateKey, hashed []byte) {
	t.Helper()
	secret = make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		t.Fatal(err)
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	hashed, err = bcrypt.GenerateFromPassword([]byte(clientSecret), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return secret, key, hashed
}

func (s *fositeServer) token(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	if err := r.ParseForm(); err == nil {
		s.mu.Lock()
		s.requests = append(s.requests, r.PostForm)
		s.mu.Unlock()
	}
	ar, err := s.provider.NewAccessRequest(ctx, r, &fosite.DefaultSession{})
	if err != nil {
		s.provider.WriteAccessError(ctx, w, ar, err)
		return
	}
	for _, scope := range ar.GetRequestedScopes() {
		ar.GrantScope(scope)
	}
	resp, err := s.provider.NewAccessResponse(ctx, ar)
	if err != nil {
		s.provider.WriteAccessError(ctx, w, ar, err)
		return
	}
	s.provider.WriteAccessResponse(ctx, w, ar, resp)
}

func (s *fositeServer) introspect(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	ir, err := s.provider.NewIntrospectionRequest(ctx, r, &fosite.DefaultSession{})
	if err != nil {
		s.provider.WriteIntrospectionError(ctx, w, err)
		return
	}
	s.provider.WriteIntrospectionResponse(ctx, w, ir)
}

// grantTypes counts the token requests by grant_type.
func (s *fositeServer) grantTypes() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int{}
	for _, f := range s.requests {
		out[f.Get("grant_type")]++
	}
	return out
}

// active asks fosite's introspection endpoint whether token is active.
func (s *fositeServer) active(t *testing.T, token string) bool {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, s.URL+fositeIntrospectPath, strings.NewReader(url.Values{"token": {token}}.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(fositeClient, clientSecret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("introspect at fosite: %v", err)
	}
	defer resp.Body.Close()
	var body struct {
		Active bool `json:"active"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("introspect at fosite: %d, %v", resp.StatusCode, err)
	}
	return body.Active
}

// fositeProvider registers fosite with b as provider name.
func fositeProvider(t *testing.T, b *broker.Broker, s *fositeServer, name string) {
	t.Helper()
	p := broker.Provider{
		Name: name, TokenURL: s.URL + fositeTokenPath, IntrospectionURL: s.URL + fositeIntrospectPath,
		ClientID: fositeClient, ClientAuth: oauth.AuthBasic,
		GrantTypes: []broker.GrantType{broker.GrantClientCredentials, broker.GrantPassword, broker.GrantRefreshToken},
	}
	if _, err := b.PutProvider(context.Background(), p, clientSecret); err != nil {
		t.Fatalf("PutProvider(%s): %v", name, err)
	}
}

// fositeAlice registers fosite's user as the password account alice of
// provider fosite.
func fositeAlice(t *testing.T, b *broker.Broker) {
	t.Helper()
	if _, err := b.PutAccount(context.Background(), broker.Account{Provider: "fosite", Account: "alice", Type: broker.GrantPassword,
		Username: fositeUser, Password: fositePassword, Scopes: []string{"read"}}); err != nil {
		t.Fatal(err)
	}
}

// TestFositePasswordGrantRotates runs the password grant and refreshes
// against fosite: each refresh presents the refresh token fosite issued
// last (no reuse, which fosite punishes by revoking the whole chain), and
// fosite revokes the access token the refresh token came with.
func TestFositePasswordGrantRotates(t *testing.T) {
	s := startFosite(t, time.Hour)
	b := newBroker(t, "")
	fositeProvider(t, b, s, "fosite")
	ctx := context.Background()
	fositeAlice(t, b)
	req := broker.TokenRequest{Provider: "fosite", Account: "alice"}
	first, err := b.GetToken(ctx, req)
	if err != nil {
		t.Fatalf("GetToken: %v", err)
	}
	if !s.active(t, first.AccessToken) {
		t.Fatal("fosite says the token the broker served is not active")
	}
	prev := first
	for i := range 3 {
		next, err := b.Refresh(ctx, req, prev.AccessToken)
		if err != nil {
			t.Fatalf("refresh %d: %v", i+1, err)
		}
		if next.AccessToken == prev.AccessToken || !s.active(t, next.AccessToken) {
			t.Fatalf("refresh %d: got the same token or one fosite says is inactive", i+1)
		}
		if s.active(t, prev.AccessToken) {
			t.Errorf("refresh %d: fosite still says the replaced access token is active; it revokes it on refresh", i+1)
		}
		prev = next
	}
	if got := s.grantTypes(); got["password"] != 1 || got["refresh_token"] != 3 {
		t.Errorf("fosite saw token requests %v, want 1 password and 3 refresh_token (each refresh token used once)", got)
	}
	grants, err := b.ListGrants(ctx, "fosite")
	if err != nil || len(grants) == 0 || grants[0].Health != broker.HealthOK {
		t.Errorf("ListGrants(fosite) = %v, %v; want alice ok", grants, err)
	}
}
