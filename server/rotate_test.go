package server_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// TestRotateClientSecret: a wrong secret is refused with the provider's
// error and the old one keeps working; the right one replaces it, new
// tokens are fetched with it, and tokens in flight keep working.
func TestRotateClientSecret(t *testing.T) {
	e := newEnv(t)
	in := e.start(nil)
	e.register(in, "sandbox")
	ctx := context.Background()
	before, err := in.tokens.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: "sandbox"})
	if err != nil {
		t.Fatal(err)
	}
	fp := func() string {
		got, err := in.admin.GetProvider(ctx, &tokenbrokerv1.GetProviderRequest{Name: "sandbox"})
		if err != nil {
			t.Fatal(err)
		}
		return got.GetProvider().GetClientSecret().GetFingerprint()
	}
	oldFP := fp()

	_, err = in.admin.RotateClientSecret(ctx, &tokenbrokerv1.RotateClientSecretRequest{Provider: "sandbox", ClientSecret: "not-the-secret"})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("rotate to a wrong secret = %v, want FailedPrecondition with the provider's error", err)
	}
	// The secret is the caller's input: over REST a 400 that keeps the
	// provider's reason, not the 502 of the broker's own secret refused.
	code, _, raw := restCall(t, http.MethodPost, in.baseURL+"/v1/admin/providers/sandbox:rotateClientSecret", map[string]any{"client_secret": "not-the-secret-either"})
	if code != http.StatusBadRequest || !strings.Contains(raw, `"reason":"INVALID_CLIENT"`) || strings.Contains(raw, `"fault"`) {
		t.Errorf("REST rotate to a wrong secret = %d %s, want 400 with reason INVALID_CLIENT and no fault", code, raw)
	}
	if got := fp(); got != oldFP {
		t.Errorf("fingerprint after a refused rotation = %s, want the old %s", got, oldFP)
	}
	if _, err := in.tokens.Refresh(ctx, &tokenbrokerv1.RefreshRequest{Provider: "sandbox"}); err != nil {
		t.Errorf("the old secret stopped working after a refused rotation: %v", err)
	}

	// The provider now knows a new secret (the admin changed it there
	// first); the broker rotates to it.
	const newSecret = "n3w-s3cr3t-after-rotation-77"
	e.setClientSecret(newSecret)
	if _, err := in.admin.RotateClientSecret(ctx, &tokenbrokerv1.RotateClientSecretRequest{
		Provider: "sandbox", ClientSecret: newSecret, Overlap: durationpb.New(time.Minute),
	}); err != nil {
		t.Fatalf("rotate to the right secret: %v", err)
	}
	if got := fp(); got == oldFP {
		t.Errorf("fingerprint unchanged after a rotation")
	}
	// The cached token keeps being served; a new one uses the new secret.
	hit, err := in.tokens.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: "sandbox", Scopes: []string{"x"}})
	if err != nil {
		t.Fatal(err)
	}
	if hit.GetToken().GetAccessToken() == before.GetToken().GetAccessToken() {
		t.Errorf("a new scope set got the old token")
	}
	reqs := e.provider.Requests()
	last := reqs[len(reqs)-1]
	if user, pass, ok := basicAuth(last.Header); !ok || user != testClientID || pass != newSecret {
		t.Errorf("the provider saw %q/%v on the last token request, want the new secret", user, ok)
	}
}

// setClientSecret changes the client's secret at the provider.
func (e *env) setClientSecret(secret string) { e.provider.SetClientSecret(testClientID, secret) }

func basicAuth(h http.Header) (string, string, bool) {
	return (&http.Request{Header: h}).BasicAuth()
}
