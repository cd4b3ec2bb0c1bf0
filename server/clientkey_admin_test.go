package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/fakes"
	"github.com/tokenbroker/tokenbroker/internal/testkeys"
)

// TestAdminRoundTripKeepsPrivateKeyJWT: a provider on private_key_jwt
// reads back as such with its key ids and times, a PutProvider of what
// GetProvider answered keeps both the style and the key, RotateClientKey
// (gRPC and REST) puts a new key first and keeps the old one for the
// overlap, and the provider goes on verifying assertions against the
// broker's JWKS.
func TestAdminRoundTripKeepsPrivateKeyJWT(t *testing.T) {
	e := newEnv(t)
	in := e.start(nil)
	ctx := context.Background()
	fp := fakes.NewAssertionProvider(t, "rt-client")
	fp.SetJWKSURL(in.baseURL + "/v1/providers/rt/jwks.json")
	keyPEM, _ := testkeys.NewClientKeyPEM()
	put, err := in.admin.PutProvider(ctx, &tokenbrokerv1.PutProviderRequest{
		Provider: &tokenbrokerv1.Provider{Name: "rt", TokenUrl: fp.URL + "/token", ClientId: "rt-client",
			ClientAuthStyle: tokenbrokerv1.ClientAuthStyle_CLIENT_AUTH_STYLE_PRIVATE_KEY_JWT},
		ClientKey: keyPEM,
	})
	if err != nil {
		t.Fatalf("PutProvider(private_key_jwt, imported key): %v", err)
	}
	keys := put.GetProvider().GetClientKeys()
	if put.GetProvider().GetClientAuthStyle() != tokenbrokerv1.ClientAuthStyle_CLIENT_AUTH_STYLE_PRIVATE_KEY_JWT ||
		len(keys) != 1 || keys[0].GetKeyId() == "" || keys[0].GetAlgorithm() != "ES256" || keys[0].GetRetireTime() != nil || keys[0].GetCreateTime() == nil {
		t.Fatalf("PutProvider answered %v, want private_key_jwt with one ES256 signing key", put.GetProvider())
	}
	kid := keys[0].GetKeyId()
	if _, err := in.tokens.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: "rt"}); err != nil {
		t.Fatalf("GetToken with the imported key: %v", err)
	}

	got, err := in.admin.GetProvider(ctx, &tokenbrokerv1.GetProviderRequest{Name: "rt"})
	if err != nil {
		t.Fatal(err)
	}
	again, err := in.admin.PutProvider(ctx, &tokenbrokerv1.PutProviderRequest{Provider: proto.CloneOf(got.GetProvider())})
	if err != nil {
		t.Fatalf("PutProvider(what GetProvider answered): %v", err)
	}
	if a := again.GetProvider(); a.GetClientAuthStyle() != tokenbrokerv1.ClientAuthStyle_CLIENT_AUTH_STYLE_PRIVATE_KEY_JWT ||
		len(a.GetClientKeys()) != 1 || a.GetClientKeys()[0].GetKeyId() != kid {
		t.Fatalf("round trip gave style %v keys %v, want private_key_jwt and key %s", a.GetClientAuthStyle(), a.GetClientKeys(), kid)
	}

	// Rotation over gRPC: a generated EdDSA key, the old one kept an hour.
	rot, err := in.admin.RotateClientKey(ctx, &tokenbrokerv1.RotateClientKeyRequest{Provider: "rt", Algorithm: "EdDSA", Overlap: durationpb.New(time.Hour)})
	if err != nil {
		t.Fatalf("RotateClientKey: %v", err)
	}
	rk := rot.GetProvider().GetClientKeys()
	if len(rk) != 2 || rk[0].GetAlgorithm() != "EdDSA" || rk[0].GetRetireTime() != nil || rk[1].GetKeyId() != kid || rk[1].GetRetireTime() == nil {
		t.Fatalf("RotateClientKey answered keys %v, want a new EdDSA key first and %s retiring", rk, kid)
	}
	if _, err := in.tokens.Refresh(ctx, &tokenbrokerv1.RefreshRequest{Provider: "rt"}); err != nil {
		t.Fatalf("Refresh after the rotation: %v", err)
	}
	seen := fp.Seen()
	if last := seen[len(seen)-1]; last.Err != "" || last.KeyID != rk[0].GetKeyId() {
		t.Fatalf("provider saw %+v after the rotation, want a valid assertion by kid %s", last, rk[0].GetKeyId())
	}

	// Over REST, an imported key; a key that does not parse is refused
	// without being quoted.
	newPEM, _ := testkeys.NewClientKeyPEM()
	code, raw := restDo(t, http.DefaultClient, http.MethodPost, in.baseURL+"/v1/admin/providers/rt:rotateClientKey",
		http.Header{"Authorization": {"Bearer " + testAdminKey}}, mustJSON(t, map[string]any{"client_key": newPEM}))
	var restRot struct {
		Provider struct {
			ClientKeys []struct {
				KeyID string `json:"key_id"`
			} `json:"client_keys"`
		} `json:"provider"`
	}
	if code != http.StatusOK || json.Unmarshal(raw, &restRot) != nil || len(restRot.Provider.ClientKeys) != 2 {
		t.Fatalf("REST rotateClientKey = %d %s, want the new key and the one before (no overlap: the EdDSA key goes)", code, raw)
	}
	_, err = in.admin.RotateClientKey(ctx, &tokenbrokerv1.RotateClientKeyRequest{Provider: "rt", ClientKey: "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"})
	if status.Code(err) != codes.InvalidArgument || strings.Contains(status.Convert(err).Message(), "bm90IGEga2V5") {
		t.Errorf("RotateClientKey(garbage) = %v, want InvalidArgument without the input", err)
	}
	_, err = in.admin.RotateClientKey(ctx, &tokenbrokerv1.RotateClientKeyRequest{Provider: "rt", ClientKey: newPEM, Algorithm: "RS256"})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("RotateClientKey(P-256 key as RS256) = %v, want InvalidArgument", err)
	}
}

// TestAdminJWTBearerRoundTrip: a provider on the JWT-bearer grant reads
// back with its assertion settings, a PutProvider of what GetProvider
// answered keeps them and the key, and its tokens come from assertions
// that verify against the broker's JWKS, fetched as a provider given the
// broker's jwks_uri would.
func TestAdminJWTBearerRoundTrip(t *testing.T) {
	e := newEnv(t)
	in := e.start(nil)
	ctx := context.Background()
	var seen atomic.Pointer[any] // the last assertion's claims, or its error
	idp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		v := verifyWithJWKS(in.baseURL+"/v1/providers/jwtb/jwks.json", r.PostForm)
		seen.Store(&v)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"access_token":"jwtb-token","token_type":"Bearer","expires_in":600}`))
	}))
	t.Cleanup(idp.Close)
	give := &tokenbrokerv1.Provider{Name: "jwtb", TokenUrl: idp.URL + "/token", ClientId: "broker",
		ClientAuthStyle: tokenbrokerv1.ClientAuthStyle_CLIENT_AUTH_STYLE_NONE, GrantTypes: []tokenbrokerv1.GrantType{tokenbrokerv1.GrantType_GRANT_TYPE_JWT_BEARER},
		JwtBearer: &tokenbrokerv1.JwtBearerGrant{Issuer: "https://broker.example", Subject: "svc", Audience: "https://idp.example", Lifetime: durationpb.New(2 * time.Minute)}}
	if _, err := in.admin.PutProvider(ctx, &tokenbrokerv1.PutProviderRequest{Provider: give}); err != nil {
		t.Fatalf("PutProvider(jwt-bearer): %v", err)
	}
	got, err := in.admin.GetProvider(ctx, &tokenbrokerv1.GetProviderRequest{Name: "jwtb"})
	if err != nil {
		t.Fatal(err)
	}
	again, err := in.admin.PutProvider(ctx, &tokenbrokerv1.PutProviderRequest{Provider: got.GetProvider()})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []*tokenbrokerv1.Provider{got.GetProvider(), again.GetProvider()} {
		if !proto.Equal(p.GetJwtBearer(), give.GetJwtBearer()) || p.GetClientAuthStyle() != give.GetClientAuthStyle() ||
			len(p.GetGrantTypes()) != 1 || p.GetGrantTypes()[0] != tokenbrokerv1.GrantType_GRANT_TYPE_JWT_BEARER || len(p.GetClientKeys()) != 1 ||
			p.GetClientKeys()[0].GetKeyId() != got.GetProvider().GetClientKeys()[0].GetKeyId() {
			t.Fatalf("provider read back as %v, want the settings of %v and one generated key", p, give)
		}
	}
	tok, err := in.tokens.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: "jwtb", Scopes: []string{"read"}})
	if err != nil || tok.GetToken().GetAccessToken() != "jwtb-token" {
		t.Fatalf("GetToken = %v, %v; want the provider's token", tok, err)
	}
	last := seen.Load()
	if last == nil {
		t.Fatal("the provider got no request")
	}
	c, ok := (*last).(jwt.Claims)
	if !ok {
		t.Fatalf("the provider refused the assertion: %v", *last)
	}
	if c.Issuer != "https://broker.example" || c.Subject != "svc" || !c.Audience.Contains("https://idp.example") || c.Expiry.Time().Sub(c.IssuedAt.Time()) != 2*time.Minute {
		t.Errorf("assertion claims %+v, want iss https://broker.example, sub svc, aud https://idp.example, valid 2m", c)
	}
}

// verifyWithJWKS checks the JWT-bearer grant request form against the
// JWKS at jwksURL: the claims when the assertion's signature holds, else
// an error.
func verifyWithJWKS(jwksURL string, form url.Values) any {
	if form.Get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
		return fmt.Errorf("grant_type %q", form.Get("grant_type"))
	}
	resp, err := http.Get(jwksURL)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var set jose.JSONWebKeySet
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil {
		return err
	}
	tok, err := jwt.ParseSigned(form.Get("assertion"), []jose.SignatureAlgorithm{jose.ES256, jose.RS256, jose.EdDSA})
	if err != nil {
		return err
	}
	keys := set.Key(tok.Headers[0].KeyID)
	if len(keys) != 1 {
		return fmt.Errorf("kid %q not in the JWKS", tok.Headers[0].KeyID)
	}
	var c jwt.Claims
	if err := tok.Claims(keys[0].Key, &c); err != nil {
		return err
	}
	return c
}
