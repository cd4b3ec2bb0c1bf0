package server_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

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

// TestProviderRefreshTuningRoundTrip: the refresh tuning an admin sets is
// stored and returned as given; a lead fraction out of range is refused.
func TestProviderRefreshTuningRoundTrip(t *testing.T) {
	e := newEnv(t)
	in := e.start(nil)
	ctx := context.Background()
	p := &tokenbrokerv1.Provider{
		Name: "tuned", TokenUrl: e.url + "/oauth2/token", ClientId: testClientID,
		RefreshLeadFraction: 0.5, RefreshMinLead: durationpb.New(30 * time.Second),
		RefreshIdleAfter: durationpb.New(time.Hour), KeepAlive: durationpb.New(6 * time.Hour),
	}
	if _, err := in.admin.PutProvider(ctx, &tokenbrokerv1.PutProviderRequest{Provider: p, ClientSecret: testClientSecret}); err != nil {
		t.Fatal(err)
	}
	got, err := in.admin.GetProvider(ctx, &tokenbrokerv1.GetProviderRequest{Name: "tuned"})
	if err != nil {
		t.Fatal(err)
	}
	g := got.GetProvider()
	if g.GetRefreshLeadFraction() != 0.5 || g.GetRefreshMinLead().AsDuration() != 30*time.Second ||
		g.GetRefreshIdleAfter().AsDuration() != time.Hour || g.GetKeepAlive().AsDuration() != 6*time.Hour {
		t.Errorf("GetProvider = %v, want the tuning as put", g)
	}
	p.RefreshLeadFraction = 1.5
	if _, err := in.admin.PutProvider(ctx, &tokenbrokerv1.PutProviderRequest{Provider: p}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("PutProvider with lead fraction 1.5 = %v, want InvalidArgument", err)
	}
}
