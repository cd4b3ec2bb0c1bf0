package server_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/oauth"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/fakes"
)

// TestPrivateKeyJWTAgainstBrokerJWKS registers a provider that verifies
// client assertions against the broker's JWKS, fetched over HTTP from the
// broker's REST listener without credentials, as a provider given the
// broker's jwks_uri would.
func TestPrivateKeyJWTAgainstBrokerJWKS(t *testing.T) {
	e := newEnv(t)
	in := e.start(nil)
	fp := fakes.NewAssertionProvider(t, "broker-client")
	fp.SetJWKSURL(in.baseURL + "/v1/providers/pkj/jwks.json")
	p, err := in.broker.PutProvider(context.Background(), broker.Provider{Name: "pkj", TokenURL: fp.URL + "/token",
		ClientID: "broker-client", ClientAuth: oauth.AuthPrivateKeyJWT}, "")
	if err != nil {
		t.Fatalf("PutProvider: %v", err)
	}
	k, _ := p.SigningKey()
	tok, err := in.tokens.GetToken(context.Background(), &tokenbrokerv1.GetTokenRequest{Provider: "pkj"})
	if err != nil || tok.GetToken().GetAccessToken() == "" {
		t.Fatalf("GetToken() = %v, %v; want a token", tok, err)
	}
	seen := fp.Seen()
	if len(seen) != 1 || seen[0].Err != "" || seen[0].KeyID != k.KeyID || seen[0].HasSecret {
		t.Fatalf("provider saw %+v, want one valid assertion by kid %s and no secret", seen, k.KeyID)
	}

	for _, path := range []string{"/.well-known/jwks.json", "/v1/providers/pkj/jwks.json"} {
		resp, err := http.Get(in.baseURL + path)
		if err != nil {
			t.Fatal(err)
		}
		var set struct{ Keys []map[string]any }
		err = json.NewDecoder(resp.Body).Decode(&set)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || len(set.Keys) != 1 || set.Keys[0]["kid"] != k.KeyID {
			t.Errorf("GET %s = %d %v (%v), want the one key %s", path, resp.StatusCode, set.Keys, err, k.KeyID)
		}
		for _, key := range set.Keys {
			if _, ok := key["d"]; ok {
				t.Errorf("GET %s serves a private key", path)
			}
		}
	}
	resp, err := http.Get(in.baseURL + "/v1/providers/nope/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET the JWKS of an unknown provider = %d, want 404", resp.StatusCode)
	}

	// The admin API answers with no private key material.
	got, err := in.admin.GetProvider(context.Background(), &tokenbrokerv1.GetProviderRequest{Name: "pkj"})
	if err != nil {
		t.Fatal(err)
	}
	jwk, _ := k.JWK().MarshalJSON()
	var priv struct{ D string }
	_ = json.Unmarshal(jwk, &priv)
	if priv.D == "" || strings.Contains(got.String(), priv.D) {
		t.Errorf("GetProvider answers with the private key")
	}
}
