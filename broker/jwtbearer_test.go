package broker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/tokenbroker/tokenbroker/broker/oauth"
	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
	"github.com/tokenbroker/tokenbroker/internal/testkeys"
)

// newJWTBearerProvider is a token endpoint of the JWT-bearer grant that
// answers every request with a new token valid for lifetime seconds; the
// tests check what it received against the broker's public keys.
func newJWTBearerProvider(t *testing.T, lifetime int) *fakeProvider {
	var n atomic.Int64
	return newFakeProvider(t, "/token", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, tokenJSON(map[string]any{"access_token": fmt.Sprintf("jwtb-%d", n.Add(1)), "token_type": "Bearer", "expires_in": lifetime}))
	})
}

// TestJWTBearerRefreshedAhead: the elected refresher renews a JWT-bearer
// token before it expires, with no caller asking, through a new assertion.
func TestJWTBearerRefreshedAhead(t *testing.T) {
	e := etcdtest.Start(t)
	b := newTestBroker(t, e)
	f := newJWTBearerProvider(t, 3)
	putProvider(t, b, Provider{Name: "jwtb", TokenURL: f.TokenURL(), ClientID: "broker-client", ClientAuth: oauth.AuthNone,
		GrantTypes: []GrantType{GrantJWTBearer}}, "")
	first, err := b.GetToken(context.Background(), TokenRequest{Provider: "jwtb", MinTTL: time.Second})
	if err != nil {
		t.Fatalf("GetToken: %v", err)
	}
	start := time.Now()
	key, _ := NewTokenKey("jwtb", "", nil)
	var rec *TokenRecord
	pollFor(t, "a refresh ahead of the expiry", 10*time.Second, func() bool {
		rec = inMemory(b, key)
		return rec != nil && rec.AccessToken != first.AccessToken
	})
	if !time.Now().Before(first.ExpiresAt) {
		t.Fatalf("after %v and %d provider calls the cache holds %v, want a new token from one call before the first expired at %v", time.Since(start), f.calls(), rec, first.ExpiresAt)
	}
	keys, err := b.JWKS(context.Background(), "jwtb")
	if err != nil {
		t.Fatal(err)
	}
	reqs := f.requests()
	_, c0 := verifyAssertion(t, reqs[0], keys)
	_, c1 := verifyAssertion(t, reqs[1], keys)
	if c0.ID == c1.ID || c1.Issuer != "broker-client" || c1.Subject != "" || !c1.Audience.Contains(f.TokenURL()) {
		t.Errorf("the refresh's assertion claims %+v (first jti %s), want a new jti, iss the client id, no sub, aud the token URL", c1.Claims, c0.ID)
	}
	t.Logf("refreshed %v after the first token, %v before its expiry", time.Since(start), time.Until(first.ExpiresAt))
}

// assertionClaims is what the fake provider reads of an assertion.
type assertionClaims struct {
	jwt.Claims
	Scope string `json:"scope"`
}

// verifyAssertion checks req as RFC 7523 §2.1 and §3 want a JWT-bearer
// grant request: grant_type, one assertion signed by a key of keys (by its
// kid), no client credentials unless allowed, exp after iat by at most
// five minutes; it returns the assertion's kid and claims.
func verifyAssertion(t *testing.T, req seenRequest, keys *jose.JSONWebKeySet) (string, assertionClaims) {
	t.Helper()
	if got := req.Form.Get("grant_type"); got != oauth.JWTBearerGrantType {
		t.Errorf("grant_type = %q, want %q", got, oauth.JWTBearerGrantType)
	}
	tok, err := jwt.ParseSigned(req.Form.Get("assertion"), []jose.SignatureAlgorithm{jose.RS256, jose.ES256, jose.EdDSA})
	if err != nil {
		t.Fatalf("the assertion does not parse: %v", err)
	}
	kid := tok.Headers[0].KeyID
	match := keys.Key(kid)
	if len(match) != 1 {
		t.Fatalf("the assertion's kid %q is not one of the broker's public keys", kid)
	}
	var c assertionClaims
	if err := tok.Claims(match[0].Key, &c); err != nil {
		t.Fatalf("the assertion's signature does not verify against the broker's public key: %v", err)
	}
	if c.Expiry == nil || c.IssuedAt == nil || c.ID == "" {
		t.Errorf("the assertion lacks exp, iat or jti: %+v", c.Claims)
	} else if life := c.Expiry.Time().Sub(c.IssuedAt.Time()); life <= 0 || life > 5*time.Minute {
		t.Errorf("the assertion is valid for %v, want a short lifetime", life)
	}
	if err := c.ValidateWithLeeway(jwt.Expected{Time: time.Now()}, 0); err != nil {
		t.Errorf("the assertion is not valid now: %v", err)
	}
	return kid, c
}

// TestJWTBearerGrant: a provider whose grant is jwt-bearer gets, for the
// provider's own token and for a named account, an assertion signed with
// the broker's key (verified against the broker's JWKS) with the
// configured iss, sub and aud and a new jti each time; the token is cached
// like every other and replaced ahead of its expiry with a new assertion.
func TestJWTBearerGrant(t *testing.T) {
	e := etcdtest.Start(t)
	clock := newClock()
	b := newTestBroker(t, e, withClock(clock), withBackgroundRefreshOff())
	ctx := context.Background()
	f := newJWTBearerProvider(t, 3600)
	p := putProvider(t, b, Provider{Name: "jwtb", TokenURL: f.TokenURL(), ClientID: "broker-client", ClientAuth: oauth.AuthNone,
		GrantTypes: []GrantType{GrantJWTBearer}, ClientKeyAlgorithm: KeyEdDSA,
		JWTBearer: JWTBearer{Issuer: "https://broker.example", Subject: "svc-reporting", Audience: "https://idp.example"}}, "")
	signing, ok := p.SigningKey()
	if !ok || signing.Algorithm != KeyEdDSA {
		t.Fatalf("PutProvider made keys %v, want a generated EdDSA signing key", p.ClientKeys)
	}
	keys, err := b.JWKS(ctx, "jwtb")
	if err != nil {
		t.Fatal(err)
	}

	first, err := b.GetToken(ctx, TokenRequest{Provider: "jwtb", Scopes: []string{"write", "read"}})
	if err != nil {
		t.Fatalf("GetToken: %v", err)
	}
	if again, err := b.GetToken(ctx, TokenRequest{Provider: "jwtb", Scopes: []string{"read", "write"}}); err != nil || again.AccessToken != first.AccessToken || f.calls() != 1 {
		t.Fatalf("GetToken again = %v, %v after %d calls; want the cached token and one call", again, err, f.calls())
	}
	clock.Advance(50 * time.Minute) // less than a third of the hour left
	renewed, err := b.GetToken(ctx, TokenRequest{Provider: "jwtb", Scopes: []string{"read", "write"}, MinTTL: 15 * time.Minute})
	if err != nil || renewed.AccessToken == first.AccessToken {
		t.Fatalf("GetToken near expiry = %v, %v; want a new token", renewed, err)
	}
	if _, err := b.PutAccount(ctx, Account{Provider: "jwtb", Account: "alice", Type: GrantJWTBearer, Username: "alice@example.com"}); err != nil {
		t.Fatalf("PutAccount(jwt-bearer): %v", err)
	}
	if _, err := b.GetToken(ctx, TokenRequest{Provider: "jwtb", Account: "alice"}); err != nil {
		t.Fatalf("GetToken(alice): %v", err)
	}

	reqs := f.requests()
	if len(reqs) != 3 {
		t.Fatalf("the provider got %d requests, want 3 (one per token)", len(reqs))
	}
	jtis := map[string]bool{}
	for i, want := range []struct{ sub, scope string }{{"svc-reporting", "read write"}, {"svc-reporting", "read write"}, {"alice@example.com", ""}} {
		kid, c := verifyAssertion(t, reqs[i], keys)
		if kid != signing.KeyID || c.Issuer != "https://broker.example" || c.Subject != want.sub || !c.Audience.Contains("https://idp.example") || c.Scope != "" {
			t.Errorf("request %d: kid %s, claims %+v; want kid %s, iss https://broker.example, sub %s, aud https://idp.example, no scope claim", i, kid, c, signing.KeyID, want.sub)
		}
		if got := reqs[i].Form.Get("scope"); got != want.scope {
			t.Errorf("request %d: scope = %q, want %q", i, got, want.scope)
		}
		if jtis[c.ID] {
			t.Errorf("request %d reuses jti %s", i, c.ID)
		}
		jtis[c.ID] = true
		if reqs[i].Header.Get("Authorization") != "" || reqs[i].Form.Has("client_id") || reqs[i].Form.Has("client_secret") {
			t.Errorf("request %d carries client credentials with auth style none: %v %v", i, reqs[i].Header, reqs[i].Form)
		}
	}
}

// TestGoogleServiceAccount: the google-service-account preset with a key
// file sends what Google's server-to-server flow wants: an RS256 assertion
// whose kid is the key's private_key_id, iss the client_email, aud the
// token_uri, the scopes in a scope claim, no sub, and no client
// authentication; the key is stored sealed, and a damaged file is refused
// without being quoted.
func TestGoogleServiceAccount(t *testing.T) {
	e := etcdtest.Start(t)
	b := newTestBroker(t, e, withBackgroundRefreshOff())
	ctx := context.Background()
	f := newJWTBearerProvider(t, 3600)
	file, key, _ := testkeys.NewServiceAccountKey("4f1e9a0c2b7d", f.TokenURL())
	p := Provider{Name: "gsa"}
	if err := ApplyServiceAccountKey(&p, file); err != nil {
		t.Fatalf("ApplyServiceAccountKey: %v", err)
	}
	stored := putProvider(t, b, p, "")
	if stored.TokenURL != f.TokenURL() || stored.ClientAuth != oauth.AuthNone || !stored.Allows(GrantJWTBearer) || len(stored.ClientKeys) != 1 || stored.ClientKeys[0].KeyID != "4f1e9a0c2b7d" {
		t.Fatalf("the provider is %+v, want the token_uri, no client auth, the jwt-bearer grant and the key 4f1e9a0c2b7d", stored)
	}
	const scope = "https://www.googleapis.com/auth/cloud-platform"
	if _, err := b.GetToken(ctx, TokenRequest{Provider: "gsa", Scopes: []string{scope}}); err != nil {
		t.Fatalf("GetToken: %v", err)
	}
	reqs := f.requests()
	if len(reqs) != 1 {
		t.Fatalf("the provider got %d requests, want 1", len(reqs))
	}
	public := &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "4f1e9a0c2b7d", Algorithm: "RS256"}}}
	kid, c := verifyAssertion(t, reqs[0], public)
	if kid != "4f1e9a0c2b7d" || c.Issuer != "reporter@demo-project.iam.gserviceaccount.com" || c.Subject != "" ||
		!c.Audience.Contains(f.TokenURL()) || len(c.Audience) != 1 || c.Scope != scope {
		t.Errorf("assertion kid %s claims %+v scope %q; want kid 4f1e9a0c2b7d, iss the client_email, no sub, aud %s, scope %s", kid, c.Claims, c.Scope, f.TokenURL(), scope)
	}
	if reqs[0].Form.Has("scope") || reqs[0].Form.Has("client_id") || reqs[0].Header.Get("Authorization") != "" {
		t.Errorf("the request carries %v and Authorization %q; want only grant_type and assertion", reqs[0].Form, reqs[0].Header.Get("Authorization"))
	}

	for _, tt := range []struct {
		name, give, want string
	}{
		{"not JSON", "private_key: -----BEGIN", "not a JSON key file"},
		{"another type", `{"type":"authorized_user","client_email":"a@b","private_key":"x"}`, `type is "authorized_user"`},
		{"a damaged key", strings.Replace(string(file), "MII", "MIX", 1), "private_key: client key: the PEM private key does not parse"},
	} {
		err := ApplyServiceAccountKey(&Provider{Name: "gsa"}, []byte(tt.give))
		if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "MIX") {
			t.Errorf("%s: ApplyServiceAccountKey = %v, want ErrInvalidArgument saying %q without quoting the file", tt.name, err, tt.want)
		}
	}
}
