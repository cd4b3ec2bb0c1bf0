package server_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

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
