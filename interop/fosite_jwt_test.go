package interop_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/ory/fosite"
	"github.com/ory/fosite/compose"
	"github.com/ory/fosite/storage"
	"go.uber.org/zap"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/oauth"
	"github.com/tokenbroker/tokenbroker/server"
)

// fosite with the broker as a client that holds no secret: a client on
// private_key_jwt whose keys fosite fetches from the broker's jwks_uri,
// and the JWT-bearer grant through fosite's RFC 7523 handler, trusting the
// broker's key for an issuer and subject. fosite serves no metadata; the
// test's mux serves RFC 8414 metadata for it, as Hydra does.

const (
	fositePKJClient     = "broker-pkj"
	fositeBearerIssuer  = "https://tokenbroker.example"
	fositeBearerSubject = "svc-reports"
	fositeMetadataPath  = "/.well-known/oauth-authorization-server"
)

// startFositeSecretless starts fosite with the basic client of startFosite
// (to introspect with), a private_key_jwt client (ES256) whose keys are at
// jwksURI, and the JWT-bearer grant without client authentication; its
// RFC 8414 metadata names private_key_jwt as the one client
// authentication method. Keys for the JWT-bearer grant are added with
// trust.
func startFositeSecretless(t *testing.T, jwksURI string) (*fositeServer, *storage.MemoryStore) {
	t.Helper()
	secret, key, hashed := fositeSecrets(t)
	store := storage.NewMemoryStore()
	store.Clients[fositeClient] = &fosite.DefaultClient{ID: fositeClient, Secret: hashed, GrantTypes: []string{"client_credentials"}, Scopes: []string{"read"}}
	store.Clients[fositePKJClient] = &fosite.DefaultOpenIDConnectClient{
		DefaultClient:                     &fosite.DefaultClient{ID: fositePKJClient, GrantTypes: []string{"client_credentials"}, Scopes: []string{"read", "write"}},
		JSONWebKeysURI:                    jwksURI,
		TokenEndpointAuthMethod:           "private_key_jwt",
		TokenEndpointAuthSigningAlgorithm: "ES256",
	}
	cfg := &fosite.Config{
		AccessTokenLifespan:                 time.Hour,
		GlobalSecret:                        secret,
		ScopeStrategy:                       fosite.ExactScopeStrategy,
		GrantTypeJWTBearerCanSkipClientAuth: true,
		JWKSFetcherStrategy:                 fosite.NewDefaultJWKSFetcherStrategy(),
	}
	s := &fositeServer{provider: compose.ComposeAllEnabled(cfg, store, key)}
	mux := http.NewServeMux()
	mux.HandleFunc(fositeTokenPath, s.token)
	mux.HandleFunc(fositeIntrospectPath, s.introspect)
	mux.HandleFunc("GET "+fositeMetadataPath, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"issuer": s.URL, "token_endpoint": s.URL + fositeTokenPath, "introspection_endpoint": s.URL + fositeIntrospectPath,
			"grant_types_supported":                            []string{"client_credentials", "urn:ietf:params:oauth:grant-type:jwt-bearer"},
			"token_endpoint_auth_methods_supported":            []string{"private_key_jwt"},
			"token_endpoint_auth_signing_alg_values_supported": []string{"ES256", "RS256"},
		})
	})
	s.Server = httptest.NewServer(mux)
	t.Cleanup(s.Close)
	cfg.TokenURL = s.URL + fositeTokenPath // the aud fosite accepts
	return s, store
}

// serveBrokerJWKS serves b's public keys the way the broker's REST
// listener does and returns the listener's URL.
func serveBrokerJWKS(t *testing.T, b *broker.Broker) string {
	t.Helper()
	srv := httptest.NewServer(server.JWKSHandler(b, zap.NewNop()))
	t.Cleanup(srv.Close)
	return srv.URL
}

// TestFositePrivateKeyJWT registers fosite through its RFC 8414 metadata
// (the oauth preset), which makes the broker authenticate with
// private_key_jwt; fosite fetches the broker's JWKS from its jwks_uri,
// verifies each assertion's signature, aud and jti, and issues tokens; a
// replayed assertion is refused; after a key rotation with overlap fosite
// fetches the JWKS again and accepts the new key.
func TestFositePrivateKeyJWT(t *testing.T) {
	b := newBroker(t, "")
	ctx := context.Background()
	jwks := serveBrokerJWKS(t, b)
	s, _ := startFositeSecretless(t, jwks+"/v1/providers/fosite-pkj/jwks.json")

	p := broker.Provider{Name: "fosite-pkj", ClientID: fositePKJClient, DefaultScopes: []string{"read"}}
	if err := b.ApplyPreset(ctx, &p, "oauth", s.URL); err != nil {
		t.Fatalf("ApplyPreset(oauth, fosite): %v", err)
	}
	if p.ClientAuth != oauth.AuthPrivateKeyJWT || p.TokenURL != s.URL+fositeTokenPath || p.IntrospectionURL != s.URL+fositeIntrospectPath ||
		!p.Allows(broker.GrantClientCredentials) || !p.Allows(broker.GrantJWTBearer) {
		t.Fatalf("the metadata made %+v, want private_key_jwt, fosite's endpoints, client_credentials and jwt-bearer", p)
	}
	stored, err := b.PutProvider(ctx, p, "")
	if err != nil {
		t.Fatalf("PutProvider: %v", err)
	}
	first, _ := stored.SigningKey()

	tok, err := b.GetToken(ctx, broker.TokenRequest{Provider: "fosite-pkj"})
	if err != nil {
		t.Fatalf("GetToken through private_key_jwt: %v", err)
	}
	if !s.active(t, tok.AccessToken) {
		t.Fatal("fosite says the token it issued to the broker is not active")
	}
	refreshed, err := b.Refresh(ctx, broker.TokenRequest{Provider: "fosite-pkj"}, tok.AccessToken)
	if err != nil || refreshed.AccessToken == tok.AccessToken {
		t.Fatalf("Refresh = %v, %v; want a new token with a new assertion", refreshed, err)
	}

	// What fosite received: assertions, no secret; one replayed is refused.
	s.mu.Lock()
	seen := append([]url.Values(nil), s.requests...)
	s.mu.Unlock()
	if len(seen) != 2 {
		t.Fatalf("fosite got %d token requests, want 2", len(seen))
	}
	for _, f := range seen {
		if f.Get("client_assertion_type") != oauth.ClientAssertionType || f.Get("client_assertion") == "" || f.Has("client_secret") {
			t.Errorf("fosite got form fields %v, want a client assertion and no secret", keysOf(f))
		}
	}
	if status := postForm(t, s.URL+fositeTokenPath, seen[0]); status != http.StatusUnauthorized && status != http.StatusBadRequest {
		t.Errorf("a replayed assertion got %d from fosite, want it refused (jti used before)", status)
	}

	// A new key, the old one kept in the JWKS: fosite, whose cache has
	// only the old key, fetches the JWKS again for the new kid.
	rotated, err := b.RotateClientKey(ctx, "fosite-pkj", broker.ClientKey{}, broker.KeyES256, time.Hour)
	if err != nil {
		t.Fatalf("RotateClientKey: %v", err)
	}
	second, _ := rotated.SigningKey()
	if second.KeyID == first.KeyID {
		t.Fatal("RotateClientKey kept the signing key")
	}
	after, err := b.Refresh(ctx, broker.TokenRequest{Provider: "fosite-pkj"}, refreshed.AccessToken)
	if err != nil || !s.active(t, after.AccessToken) {
		t.Fatalf("Refresh after the key rotation = %v, %v; want a token fosite says is active", after, err)
	}
}

// TestFositeJWTBearerGrant: fosite's RFC 7523 handler trusts the broker's
// public key (fetched from the broker's JWKS) for an issuer and subject;
// the broker's JWT-bearer grant gets tokens for the scope asked for, and a
// named account gets them for its own subject.
func TestFositeJWTBearerGrant(t *testing.T) {
	b := newBroker(t, "")
	ctx := context.Background()
	jwks := serveBrokerJWKS(t, b)
	s, store := startFositeSecretless(t, jwks+"/v1/providers/fosite-pkj/jwks.json")

	stored, err := b.PutProvider(ctx, broker.Provider{
		Name: "fosite-jwtb", TokenURL: s.URL + fositeTokenPath, ClientID: "unused", ClientAuth: oauth.AuthNone,
		GrantTypes: []broker.GrantType{broker.GrantJWTBearer}, ClientKeyAlgorithm: broker.KeyRS256,
		JWTBearer: broker.JWTBearer{Issuer: fositeBearerIssuer, Subject: fositeBearerSubject},
	}, "")
	if err != nil {
		t.Fatalf("PutProvider: %v", err)
	}
	// An admin trusts the broker's key, as published at its jwks_uri, for
	// two subjects.
	svc := fetchBrokerKey(t, jwks+"/v1/providers/fosite-jwtb/jwks.json", "read", "write")
	alice := fetchBrokerKey(t, jwks+"/v1/providers/fosite-jwtb/jwks.json", "read")
	kid := svc.Key.KeyID
	if k, _ := stored.SigningKey(); kid != k.KeyID {
		t.Fatalf("the broker's JWKS serves kid %s, want the signing key %s", kid, k.KeyID)
	}
	store.IssuerPublicKeys[fositeBearerIssuer] = storage.IssuerPublicKeys{Issuer: fositeBearerIssuer, KeysBySub: map[string]storage.SubjectPublicKeys{
		fositeBearerSubject: {Subject: fositeBearerSubject, Keys: map[string]storage.PublicKeyScopes{kid: svc}},
		"alice":             {Subject: "alice", Keys: map[string]storage.PublicKeyScopes{kid: alice}},
	}}

	tok, err := b.GetToken(ctx, broker.TokenRequest{Provider: "fosite-jwtb", Scopes: []string{"write"}})
	if err != nil {
		t.Fatalf("GetToken through the JWT-bearer grant: %v", err)
	}
	if !s.active(t, tok.AccessToken) || tok.Scope() != "write" {
		t.Fatalf("token scope %q, active at fosite %v; want an active token for write", tok.Scope(), s.active(t, tok.AccessToken))
	}
	again, err := b.GetToken(ctx, broker.TokenRequest{Provider: "fosite-jwtb", Scopes: []string{"write"}})
	if err != nil || again.AccessToken != tok.AccessToken {
		t.Fatalf("GetToken again = %v, %v; want the cached token", again, err)
	}
	if _, err := b.PutAccount(ctx, broker.Account{Provider: "fosite-jwtb", Account: "alice", Type: broker.GrantJWTBearer, Username: "alice"}); err != nil {
		t.Fatal(err)
	}
	aliceTok, err := b.GetToken(ctx, broker.TokenRequest{Provider: "fosite-jwtb", Account: "alice", Scopes: []string{"read"}})
	if err != nil || !s.active(t, aliceTok.AccessToken) {
		t.Fatalf("GetToken(alice) = %v, %v; want a token fosite says is active", aliceTok, err)
	}
	// fosite refuses a scope the key is not trusted with for alice.
	if _, err := b.GetToken(ctx, broker.TokenRequest{Provider: "fosite-jwtb", Account: "alice", Scopes: []string{"write"}}); err == nil {
		t.Error("GetToken(alice, write) succeeded; fosite trusts alice's key for read only")
	}
	if got := s.grantTypes(); got[oauth.JWTBearerGrantType] != 3 {
		t.Errorf("fosite saw token requests %v, want 3 of the JWT-bearer grant", got)
	}
}

// fetchBrokerKey reads the one public key at a JWKS URL into what fosite
// trusts for an issuer and subject, with scopes.
func fetchBrokerKey(t *testing.T, u string, scopes ...string) storage.PublicKeyScopes {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var set struct{ Keys []json.RawMessage }
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil || len(set.Keys) != 1 {
		t.Fatalf("GET %s: %d keys (%v), want one", u, len(set.Keys), err)
	}
	k := storage.PublicKeyScopes{Scopes: scopes}
	if err := json.Unmarshal(set.Keys[0], &k.Key); err != nil || !k.Key.IsPublic() {
		t.Fatalf("GET %s: the key does not parse as a public JWK (%v)", u, err)
	}
	return k
}

func postForm(t *testing.T, u string, form url.Values) int {
	t.Helper()
	resp, err := http.PostForm(u, form)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func keysOf(v url.Values) []string {
	var out []string
	for k := range v {
		out = append(out, k)
	}
	return out
}
