package interop_test

import (
	"context"
	"testing"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/oauth"
)

// TestOIDCProviderPrivateKeyJWT registers the broker with oidc-provider as
// a client without a secret (broker-pkj, private_key_jwt, ES256) whose
// jwks_uri is the broker's JWKS: oidc-provider fetches the keys, verifies
// the broker's assertions at the token, introspection and revocation
// endpoints, and refuses nothing.
func TestOIDCProviderPrivateKeyJWT(t *testing.T) {
	b := newBroker(t, "")
	ctx := context.Background()
	jwks := serveBrokerJWKS(t, b)
	s := startAuthServer(t, serverOptions{BrokerJWKSURI: jwks + "/v1/providers/op-pkj/jwks.json"})
	p := broker.Provider{Name: "op-pkj", ClientID: "broker-pkj", ClientAuth: oauth.AuthPrivateKeyJWT, ClientKeyAlgorithm: broker.KeyES256,
		DefaultScopes: []string{"api"}, GrantTypes: []broker.GrantType{broker.GrantClientCredentials}}
	if err := b.ApplyPreset(ctx, &p, "oidc", s.Issuer); err != nil {
		t.Fatalf("ApplyPreset(oidc): %v", err)
	}
	if _, err := b.PutProvider(ctx, p, ""); err != nil {
		t.Fatalf("PutProvider: %v", err)
	}
	tok, err := b.GetToken(ctx, broker.TokenRequest{Provider: "op-pkj"})
	if err != nil {
		t.Fatalf("GetToken through private_key_jwt: %v", err)
	}
	refreshed, err := b.Refresh(ctx, broker.TokenRequest{Provider: "op-pkj"}, tok.AccessToken)
	if err != nil || refreshed.AccessToken == tok.AccessToken {
		t.Fatalf("Refresh = %v, %v; want a new token from a new assertion", refreshed, err)
	}
	in, err := b.Introspect(ctx, refreshed.AccessToken)
	if err != nil || !in.Active || in.Provider != "op-pkj" {
		t.Fatalf("Introspect = %+v, %v; want active at oidc-provider", in, err)
	}
	if err := b.RevokeGrant(ctx, "op-pkj", ""); err != nil {
		t.Fatalf("RevokeGrant (revocation with private_key_jwt): %v", err)
	}
	if s.activeAtServer(t, basicClient, refreshed.AccessToken) {
		t.Error("oidc-provider still says the revoked token is active")
	}

	seen := s.matching(t, func(r seenRequest) bool { return r.ClientID == "broker-pkj" || r.Auth == "private_key_jwt" })
	want := map[string]int{"token": 2, "introspection": 1, "revocation": 1}
	got := map[string]int{}
	for _, r := range seen {
		got[r.Endpoint]++
		if r.Auth != "private_key_jwt" || r.ClientID != "broker-pkj" || r.Status != 200 || r.Error != "" {
			t.Errorf("oidc-provider saw %v, want broker-pkj authenticated by private_key_jwt and answered 200", r)
		}
	}
	for e, n := range want {
		if got[e] < n {
			t.Errorf("oidc-provider saw %d %s requests of broker-pkj, want at least %d (all: %v)", got[e], e, n, seen)
		}
	}
}
