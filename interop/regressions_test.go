package interop_test

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker"
)

// Regressions found against oidc-provider.

// TestRefreshOfRevokedGrant: the server's operator revokes the grant (its
// refresh token, and with it every token of the grant). The broker's next
// refresh gets invalid_grant; from then on the grant needs reauthorization,
// and neither Refresh nor GetToken may hand out the revoked access token:
// Refresh was told it is stale, and it died with the grant (RFC 7009 §2.1;
// oidc-provider and MediaHaven both revoke it).
func TestRefreshOfRevokedGrant(t *testing.T) {
	const name, account = "oidc", "alice"
	ctx := context.Background()
	cb := newCallback(t)
	s := startAuthServer(t, serverOptions{RedirectURI: cb.URI(), AccessTokenTTL: time.Minute, RefreshTokens: "client"})
	b := newBroker(t, cb.URI())
	cb.broker.Store(b)
	registerOIDC(t, b, s, name, basicClient, 0)
	req := broker.TokenRequest{Provider: name, Account: account}

	g, _ := consent(t, b, cb, newBrowser(t, "alice@interop"), name, account, []string{"openid"})
	cur, err := b.GetToken(ctx, req)
	if err != nil {
		t.Fatalf("GetToken: %v", err)
	}
	s.revokeAtServer(t, basicClient, g.RefreshToken)
	if s.activeAtServer(t, basicClient, cur.AccessToken) {
		t.Fatal("the server still finds the access token active after its grant was revoked")
	}

	got, err := b.Refresh(ctx, req, cur.AccessToken)
	if !errors.Is(err, broker.ErrReauthorizationRequired) {
		t.Errorf("Refresh(stale = the revoked token) = same token %v, %v; want %v",
			got != nil && got.AccessToken == cur.AccessToken, err, broker.ErrReauthorizationRequired)
	}
	got, err = b.GetToken(ctx, req)
	if !errors.Is(err, broker.ErrReauthorizationRequired) {
		t.Errorf("GetToken after invalid_grant = same token %v, %v; want %v",
			got != nil && got.AccessToken == cur.AccessToken, err, broker.ErrReauthorizationRequired)
	}
}

// TestOfflineAccessConsent: an OpenID provider grants offline_access, and
// so a refresh token, only to an authorization request with prompt=consent
// (OpenID Connect Core §11; oidc-provider's default, a certified OP). The
// broker asks for offline_access without it, gets no refresh token, and
// reports the consent as a success: the grant dies with its first access
// token.
func TestOfflineAccessConsent(t *testing.T) {
	const name, account = "oidc", "alice"
	cb := newCallback(t)
	s := startAuthServer(t, serverOptions{RedirectURI: cb.URI()}) // REFRESH_TOKENS=offline_access
	b := newBroker(t, cb.URI())
	cb.broker.Store(b)
	registerOIDC(t, b, s, name, basicClient, 0)

	g, _ := consent(t, b, cb, newBrowser(t, "alice@interop"), name, account, []string{"openid", "offline_access"})
	if g.RefreshToken == "" {
		t.Errorf("consent with offline_access stored no refresh token (grant health %s)", g.Health)
	}
}

// TestRefreshAfterNarrowedScope: the server may grant fewer scopes than
// asked (RFC 6749 §3.3); here it drops "profile", a scope it does not
// know. A refresh must not ask for a scope that was not granted (RFC 6749
// §6: without scope, it means the scope granted), yet the broker sends the
// requested scopes and gets invalid_scope.
func TestRefreshAfterNarrowedScope(t *testing.T) {
	const name, account = "oidc", "alice"
	ctx := context.Background()
	cb := newCallback(t)
	s := startAuthServer(t, serverOptions{RedirectURI: cb.URI(), AccessTokenTTL: time.Minute, RefreshTokens: "client"})
	b := newBroker(t, cb.URI())
	cb.broker.Store(b)
	registerOIDC(t, b, s, name, basicClient, 0)
	req := broker.TokenRequest{Provider: name, Account: account}

	consent(t, b, cb, newBrowser(t, "alice@interop"), name, account, []string{"openid", "profile"})
	cur, err := b.GetToken(ctx, req)
	if err != nil {
		t.Fatalf("GetToken: %v", err)
	}
	if cur.GrantedScope() != "openid" {
		t.Fatalf("granted scope %q, want the server to have narrowed it to openid", cur.GrantedScope())
	}
	got, err := b.Refresh(ctx, req, cur.AccessToken)
	if err != nil || got.AccessToken == cur.AccessToken {
		t.Errorf("Refresh = same token %v, %v; want a new token", got != nil && got.AccessToken == cur.AccessToken, err)
	}
	for _, r := range s.matching(t, tokenRequests("refresh_token", basicClient)) {
		if r.Status != http.StatusOK {
			t.Errorf("server answered the refresh (scope %q) with %d %s", r.Scope, r.Status, r.Error)
		}
	}
}
