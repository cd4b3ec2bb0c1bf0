package oauth_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/tokenbroker/tokenbroker/broker/oauth"
	"github.com/tokenbroker/tokenbroker/internal/fakes"
)

func newSigningKey(t *testing.T, alg jose.SignatureAlgorithm) jose.JSONWebKey {
	t.Helper()
	var priv crypto.Signer
	var err error
	switch alg {
	case jose.RS256:
		priv, err = rsa.GenerateKey(rand.Reader, 2048)
	case jose.ES256:
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case jose.EdDSA:
		_, priv, err = ed25519.GenerateKey(rand.Reader)
	}
	if err != nil {
		t.Fatal(err)
	}
	return jose.JSONWebKey{Key: priv, KeyID: "k-" + string(alg), Algorithm: string(alg), Use: "sig"}
}

// serveJWKS serves the public halves of keys as a JWKS.
func serveJWKS(t *testing.T, keys ...jose.JSONWebKey) string {
	t.Helper()
	var set jose.JSONWebKeySet
	for _, k := range keys {
		set.Keys = append(set.Keys, k.Public())
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(set)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func TestPrivateKeyJWTAtEveryEndpoint(t *testing.T) {
	for _, alg := range []jose.SignatureAlgorithm{jose.RS256, jose.ES256, jose.EdDSA} {
		t.Run(string(alg), func(t *testing.T) {
			key := newSigningKey(t, alg)
			p := fakes.NewAssertionProvider(t, "pkj-client")
			p.SetJWKSURL(serveJWKS(t, key))
			auth := oauth.PrivateKeyJWT{ClientID: "pkj-client", Key: key, Audience: p.URL + "/token"}
			c := new(oauth.Client)
			tok, err := c.Token(t.Context(), oauth.Request{TokenURL: p.URL + "/token", Auth: auth,
				Params: url.Values{"grant_type": {"client_credentials"}}})
			if err != nil || tok.AccessToken == "" {
				t.Fatalf("Token() = %+v, %v; want a token", tok, err)
			}
			in, err := c.Introspect(t.Context(), oauth.Request{TokenURL: p.URL + "/introspect", Auth: auth}, tok.AccessToken)
			if err != nil || !in.Active {
				t.Fatalf("Introspect() = %+v, %v; want active", in, err)
			}
			if err := c.Revoke(t.Context(), oauth.Request{TokenURL: p.URL + "/revoke", Auth: auth}, tok.AccessToken); err != nil {
				t.Fatalf("Revoke() = %v, want nil", err)
			}
			seen := p.Seen()
			if len(seen) != 3 {
				t.Fatalf("provider saw %d requests, want 3", len(seen))
			}
			jtis := map[string]bool{}
			for _, s := range seen {
				if s.Err != "" || s.KeyID != key.KeyID || s.HasSecret || s.Lifetime != time.Minute {
					t.Errorf("provider saw at %s: %+v; want a valid assertion by kid %s, no secret, 60s lifetime", s.Path, s, key.KeyID)
				}
				jtis[s.JTI] = true
			}
			if len(jtis) != 3 {
				t.Errorf("provider saw %d distinct jti in 3 requests, want 3", len(jtis))
			}
		})
	}
}

func TestPrivateKeyJWTAudienceDefaultsToEndpoint(t *testing.T) {
	key := newSigningKey(t, jose.ES256)
	p := fakes.NewAssertionProvider(t, "c")
	p.SetJWKSURL(serveJWKS(t, key))
	_, err := new(oauth.Client).Token(t.Context(), oauth.Request{TokenURL: p.URL + "/token",
		Auth: oauth.PrivateKeyJWT{ClientID: "c", Key: key}, Params: url.Values{"grant_type": {"client_credentials"}}})
	if err != nil {
		t.Fatalf("Token() error = %v, want nil", err)
	}
	if got := p.Seen()[0].Audience; len(got) != 1 || got[0] != p.URL+"/token" {
		t.Errorf("provider saw aud %v, want [%s/token]", got, p.URL)
	}
}

func TestPrivateKeyJWTReplayRefused(t *testing.T) {
	key := newSigningKey(t, jose.EdDSA)
	p := fakes.NewAssertionProvider(t, "c")
	p.SetJWKSURL(serveJWKS(t, key))
	a, err := oauth.PrivateKeyJWT{ClientID: "c", Key: key}.Assertion(p.URL + "/token")
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []int{http.StatusOK, http.StatusUnauthorized} {
		if got, err := p.Replay(a); err != nil || got != want {
			t.Errorf("post #%d of one assertion: status %d (%v), want %d", i+1, got, err, want)
		}
	}
}

func TestPrivateKeyJWTWithoutPrivateKey(t *testing.T) {
	key := newSigningKey(t, jose.ES256)
	p := newProvider(t, func(w http.ResponseWriter, r *http.Request) { replyJSON(w, 200, `{"access_token":"a"}`) })
	_, err := new(oauth.Client).Token(t.Context(), oauth.Request{TokenURL: p.URL,
		Auth: oauth.PrivateKeyJWT{ClientID: "c", Key: key.Public()}, Params: url.Values{"grant_type": {"client_credentials"}}})
	if err == nil || !strings.Contains(err.Error(), "client assertion") {
		t.Errorf("Token() with a public key = %v, want ErrClientAssertion", err)
	}
	if n := len(p.requests()); n != 0 {
		t.Errorf("provider got %d requests, want none", n)
	}
}
