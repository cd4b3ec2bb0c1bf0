package server_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// TestAdminChangeReachesOtherReplica: a change made through replica A is
// served by replica B within a second, without a restart.
func TestAdminChangeReachesOtherReplica(t *testing.T) {
	e := newEnv(t)
	a, b := e.start(nil), e.start(nil)
	ctx := context.Background()
	within := func(what string, ok func() bool) time.Duration {
		t.Helper()
		start := time.Now()
		for !ok() {
			if time.Since(start) > time.Second {
				t.Fatalf("%s: not seen on replica B within 1s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
		return time.Since(start)
	}

	e.register(a, "sandbox")
	d := within("new provider", func() bool {
		_, err := b.tokens.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: "sandbox"})
		return err == nil
	})
	t.Logf("a provider put on A served by B after %s", d)

	// The secret rotated through A is the one B's next token request uses.
	const rotated = "r0tated-on-replica-a-51"
	e.provider.SetClientSecret(testClientID, rotated)
	if _, err := a.admin.RotateClientSecret(ctx, &tokenbrokerv1.RotateClientSecretRequest{Provider: "sandbox", ClientSecret: rotated}); err != nil {
		t.Fatal(err)
	}
	d = within("rotated secret", func() bool {
		_, err := b.tokens.Refresh(ctx, &tokenbrokerv1.RefreshRequest{Provider: "sandbox"})
		return err == nil
	})
	t.Logf("a secret rotated on A used by B after %s", d)
	reqs := e.provider.Requests()
	if _, pass, _ := basicAuth(reqs[len(reqs)-1].Header); pass != rotated {
		t.Errorf("B's last token request used another secret")
	}

	if _, err := a.admin.DeleteProvider(ctx, &tokenbrokerv1.DeleteProviderRequest{Name: "sandbox"}); err != nil {
		t.Fatal(err)
	}
	d = within("deleted provider", func() bool {
		_, err := b.tokens.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: "sandbox"})
		return status.Code(err) == codes.NotFound
	})
	t.Logf("a provider deleted on A gone from B after %s", d)
}
