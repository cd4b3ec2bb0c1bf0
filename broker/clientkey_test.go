package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/oauth"
	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
	"github.com/tokenbroker/tokenbroker/internal/fakes"
)

// serveBrokerJWKS serves b's JWKS of provider over HTTP, as the server does.
func serveBrokerJWKS(t *testing.T, b *Broker, provider string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		set, err := b.JWKS(r.Context(), provider)
		if err != nil {
			http.Error(w, "no such provider", http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(set)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func pkjProvider(name string, p *fakes.AssertionProvider) Provider {
	return Provider{Name: name, TokenURL: p.URL + "/token", IntrospectionURL: p.URL + "/introspect",
		RevocationURL: p.URL + "/revoke", ClientID: p.ClientID, ClientAuth: oauth.AuthPrivateKeyJWT}
}

func TestPrivateKeyJWTGeneratedKeyAtEveryEndpoint(t *testing.T) {
	tests := []struct {
		give string // algorithm
	}{{KeyRS256}, {KeyES256}, {KeyEdDSA}}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			e := etcdtest.Start(t)
			b := newTestBroker(t, e)
			fp := fakes.NewAssertionProvider(t, "broker-client")
			fp.SetJWKSURL(serveBrokerJWKS(t, b, "pkj"))
			p := pkjProvider("pkj", fp)
			p.ClientKeyAlgorithm = tt.give
			stored := putProvider(t, b, p, "")
			k, ok := stored.SigningKey()
			if !ok || k.Algorithm != tt.give || k.KeyID != k.Thumbprint() {
				t.Fatalf("PutProvider kept keys %v, want a generated %s key named by its thumbprint", stored.ClientKeys, tt.give)
			}
			rec := getToken(t, b, "pkj")
			in, err := b.Introspect(context.Background(), rec.AccessToken)
			if err != nil || !in.Active {
				t.Fatalf("Introspect() = %+v, %v; want active", in, err)
			}
			if err := b.RevokeGrant(context.Background(), "pkj", ""); err != nil {
				t.Fatalf("RevokeGrant() = %v", err)
			}
			seen := fp.Seen()
			paths := []string{}
			for _, s := range seen {
				paths = append(paths, s.Path)
				if s.Err != "" || s.KeyID != k.KeyID || s.HasSecret {
					t.Errorf("provider saw at %s: %+v; want an assertion signed by %s and no secret", s.Path, s, k.KeyID)
				}
				if len(s.Audience) != 1 || s.Audience[0] != p.TokenURL {
					t.Errorf("provider saw aud %v at %s, want the token endpoint %s", s.Audience, s.Path, p.TokenURL)
				}
			}
			if got := strings.Join(paths, " "); got != "/token /introspect /revoke" {
				t.Errorf("provider saw requests to %s, want /token /introspect /revoke", got)
			}
		})
	}
}

func TestPrivateKeyJWTIssuerAudience(t *testing.T) {
	e := etcdtest.Start(t)
	b := newTestBroker(t, e)
	fp := fakes.NewAssertionProvider(t, "c")
	fp.Audience = "https://issuer.example.com"
	fp.SetJWKSURL(serveBrokerJWKS(t, b, "pkj"))
	p := pkjProvider("pkj", fp)
	p.AssertionAudience = "https://issuer.example.com"
	putProvider(t, b, p, "")
	getToken(t, b, "pkj")
	if s := fp.Seen()[0]; s.Err != "" || len(s.Audience) != 1 || s.Audience[0] != fp.Audience {
		t.Errorf("provider saw %+v, want a valid assertion for aud %s", s, fp.Audience)
	}
}

func TestClientKeyRotationServesBothDuringOverlap(t *testing.T) {
	e := etcdtest.Start(t)
	clock := newClock()
	b := newTestBroker(t, e, withClock(clock))
	fp := fakes.NewAssertionProvider(t, "c")
	fp.SetJWKSURL(serveBrokerJWKS(t, b, "pkj"))
	first := putProvider(t, b, pkjProvider("pkj", fp), "")
	oldKey, _ := first.SigningKey()

	rotated, err := b.RotateClientKey(context.Background(), "pkj", ClientKey{}, KeyEdDSA, time.Hour)
	if err != nil {
		t.Fatalf("RotateClientKey() = %v", err)
	}
	newKey, _ := rotated.SigningKey()
	// Memory itself, not b.provider: that reads etcd when memory has not
	// the provider yet, and AllJWKS below reads memory only.
	eventually(t, "the watch brings the rotated provider", func() bool {
		v, ok := b.providers.Load("pkj")
		if !ok {
			return false
		}
		k, _ := v.(*Provider).SigningKey()
		return k.KeyID == newKey.KeyID
	})
	set, err := b.JWKS(context.Background(), "pkj")
	if err != nil {
		t.Fatal(err)
	}
	if len(set.Keys) != 2 || len(set.Key(oldKey.KeyID)) != 1 || len(set.Key(newKey.KeyID)) != 1 {
		t.Fatalf("JWKS during the overlap has %d keys, want the new %s and the old %s", len(set.Keys), newKey.KeyID, oldKey.KeyID)
	}
	for _, k := range set.Keys {
		if !k.IsPublic() {
			t.Errorf("JWKS serves a private key (kid %s)", k.KeyID)
		}
	}
	getToken(t, b, "pkj")
	if s := fp.Seen()[0]; s.Err != "" || s.KeyID != newKey.KeyID || newKey.Algorithm != KeyEdDSA {
		t.Errorf("after the rotation the provider saw %+v, want an assertion by the new EdDSA key %s", s, newKey.KeyID)
	}

	clock.Advance(time.Hour + time.Second)
	set, _ = b.JWKS(context.Background(), "pkj")
	if len(set.Keys) != 1 || set.Keys[0].KeyID != newKey.KeyID {
		t.Errorf("JWKS after the overlap has %d keys, want only the new %s", len(set.Keys), newKey.KeyID)
	}
	if all := b.AllJWKS(); len(all.Keys) != 1 {
		t.Errorf("AllJWKS after the overlap has %d keys, want 1", len(all.Keys))
	}
}

func TestImportedClientKeyIsKeptAcrossPuts(t *testing.T) {
	e := etcdtest.Start(t)
	b := newTestBroker(t, e)
	fp := fakes.NewAssertionProvider(t, "c")
	fp.SetJWKSURL(serveBrokerJWKS(t, b, "pkj"))
	imported, err := GenerateClientKey(KeyRS256)
	if err != nil {
		t.Fatal(err)
	}
	jwk, _ := imported.JWK().MarshalJSON()
	parsed, err := ParseClientKey(jwk, "")
	if err != nil {
		t.Fatalf("ParseClientKey(JWK) = %v", err)
	}
	p := pkjProvider("pkj", fp)
	p.ClientKeys = []ClientKey{parsed}
	putProvider(t, b, p, "")
	again := putProvider(t, b, p, "") // a config applied again
	if len(again.ClientKeys) != 1 || again.ClientKeys[0].KeyID != imported.KeyID {
		t.Errorf("after the same import twice: keys %v, want only %s", again.ClientKeys, imported.KeyID)
	}
	p.ClientKeys = nil
	kept := putProvider(t, b, p, "")
	if k, _ := kept.SigningKey(); k.KeyID != imported.KeyID {
		t.Errorf("a put without a key signs with %s, want the imported %s", k.KeyID, imported.KeyID)
	}
	getToken(t, b, "pkj")
	if s := fp.Seen()[0]; s.Err != "" || s.KeyID != imported.KeyID {
		t.Errorf("provider saw %+v, want an assertion by the imported key", s)
	}
}

func TestClientKeyIsSealedAtRest(t *testing.T) {
	e := etcdtest.Start(t)
	b := newTestBroker(t, e)
	fp := fakes.NewAssertionProvider(t, "c")
	got := putProvider(t, b, pkjProvider("pkj", fp), "")
	k, _ := got.SigningKey()
	jwk, _ := k.JWK().MarshalJSON()
	var private struct{ D string }
	if err := json.Unmarshal(jwk, &private); err != nil || private.D == "" {
		t.Fatalf("the key's JWK has no private part: %v", err)
	}
	for key, val := range etcdKeys(t, e.Client(t, nil), DefaultPrefix) {
		if strings.Contains(val, private.D) {
			t.Errorf("etcd key %s holds the private key in the clear", key)
		}
	}
	if s := got.ClientKeys[0]; strings.Contains(fmtSprint(s), private.D) {
		t.Errorf("a ClientKey formats with its private key")
	}
}

func TestParseClientKeyRefusesWithoutQuoting(t *testing.T) {
	tests := []struct {
		give, alg string
	}{
		{"-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END PRIVATE KEY-----", ""},
		{`{"kty":"oct","k":"c2VjcmV0LWtleS1tYXRlcmlhbA"}`, ""},
		{"c2VjcmV0LWtleS1tYXRlcmlhbA", ""},
	}
	for _, tt := range tests {
		_, err := ParseClientKey([]byte(tt.give), tt.alg)
		if !errors.Is(err, ErrInvalidArgument) || strings.Contains(err.Error(), "c2VjcmV0") {
			t.Errorf("ParseClientKey(...) = %v, want ErrInvalidArgument not quoting the input", err)
		}
	}
	k, _ := GenerateClientKey(KeyES256)
	jwk, _ := k.JWK().MarshalJSON()
	if _, err := ParseClientKey(jwk, KeyRS256); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("ParseClientKey(P-256 key, RS256) = %v, want ErrInvalidArgument", err)
	}
}

func fmtSprint(v any) string { return fmt.Sprintf("%v %+v %#v %s", v, v, v, v) }
