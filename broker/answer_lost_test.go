package broker

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
	"github.com/tokenbroker/tokenbroker/sandbox"
)

// A replica dies after presenting a refresh token and before the answer
// of a provider that rotates refresh tokens reaches etcd: the provider has
// replaced the refresh token the grant holds. The broker cannot prevent
// that; it says what happened. The next refresh (on another replica)
// gets invalid_grant: a password account falls back to its password and
// goes on; an authorization-code account needs consent again, and
// ListGrants says the refresh answer was lost.
func TestRefreshAnswerLost(t *testing.T) {
	t.Parallel()
	const redirect = "https://broker.example/v1/oauth/callback"
	e := etcdtest.Start(t)
	f := newSandboxFront(t, sandbox.Config{
		Users:               map[string]string{"alice": "wonderland", "bob": "builder"},
		RedirectURIs:        map[string][]string{sandboxClientID: {redirect}},
		RefreshTokens:       true,
		RotateRefreshTokens: true,
	})
	cfg := fleetConfig()
	cfg.Refresh = RefreshConfig{Disabled: true}
	cfg.CallbackURL = redirect
	cfg.MinForcedRefreshInterval = -1 // each refresh below reaches the provider
	r0 := newFleetReplica(t, e.Endpoint, "lost-0", cfg)
	r1 := newFleetReplica(t, e.Endpoint, "lost-1", cfg)
	p := sandboxProvider("media", f.TokenURL())
	p.AuthorizeURL = f.URL + sandbox.AuthorizePath
	p.GrantTypes = []GrantType{GrantPassword, GrantRefreshToken, GrantAuthorizationCode}
	// Refresh without a stale token replaces the token at once (it
	// would wait for the hand-over of a provider that revokes).
	p.RefreshRevokesAccessToken = ptr(false)
	putProvider(t, r0.Broker, p, sandboxClientSecret)
	ctx := context.Background()
	if _, err := r0.PutAccount(ctx, Account{Provider: "media", Account: "alice", Type: GrantPassword, Username: "alice", Password: "wonderland"}); err != nil {
		t.Fatal(err)
	}
	if _, err := r0.PutAccount(ctx, Account{Provider: "media", Account: "bob", Type: GrantAuthorizationCode}); err != nil {
		t.Fatal(err)
	}
	consentAtSandbox(t, r0.Broker, f.sb, "media", "bob", "bob")
	if _, err := r0.GetToken(ctx, TokenRequest{Provider: "media", Account: "alice"}); err != nil {
		t.Fatal(err)
	}

	// A replica presents each account's refresh token; the provider
	// rotates it and answers, but the replica is dead by then.
	for i, account := range []string{"alice", "bob"} {
		dying := newFleetReplica(t, e.Endpoint, "dying-"+account, cfg)
		h := f.holdNext()
		h.evenIfGone = true
		go func() {
			_, _ = dying.Refresh(ctx, TokenRequest{Provider: "media", Account: account}, "")
		}()
		select {
		case <-h.arrived:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the refresh did not reach the provider", account)
		}
		dying.kill()
		h.Release()
		<-h.answered
		if !strings.Contains(string(h.answer), "refresh_token") {
			t.Fatalf("%s (%d): the provider answered %s, want a new (rotated) refresh token", account, i, h.answer)
		}
	}

	// alice: the refresh token is refused; the password gets a token.
	passwords := grantTypeCounts(f.sb)["password"]
	rec, err := r1.Refresh(ctx, TokenRequest{Provider: "media", Account: "alice"}, "")
	if err != nil {
		t.Fatalf("alice after the lost answer: %v, want a token through the password grant", err)
	}
	if got := grantTypeCounts(f.sb)["password"] - passwords; got != 1 {
		t.Errorf("alice: %d password grants after the lost answer, want 1", got)
	}
	if code := f.whoami(t, rec.AccessToken); code != 200 {
		t.Errorf("alice: the provider answers %d to the token served, want 200", code)
	}

	// bob: consent is needed again, and the grant says why.
	_, err = r1.Refresh(ctx, TokenRequest{Provider: "media", Account: "bob"}, "")
	if !errors.Is(err, ErrReauthorizationRequired) {
		t.Fatalf("bob after the lost answer: %v, want ErrReauthorizationRequired", err)
	}
	grants, err := r1.ListGrants(ctx, "media")
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range grants {
		t.Logf("grant %s: health %s, last error %q", g.Account, g.Health, g.LastError)
		switch g.Account {
		case "bob":
			if g.Health != HealthReauthorizationRequired || !strings.Contains(g.LastError, "refresh answer lost") {
				t.Errorf("bob: health %s, last error %q; want reauthorization_required saying the refresh answer was lost", g.Health, g.LastError)
			}
		case "alice":
			if g.Health != HealthOK {
				t.Errorf("alice: health %s (%s), want ok", g.Health, g.LastError)
			}
		}
	}
}
