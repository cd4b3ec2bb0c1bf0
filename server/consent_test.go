package server_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/sandbox"
	"github.com/tokenbroker/tokenbroker/server"
)

// TestConsentFlowThroughTheGateway runs the authorization code grant as an
// admin and a person would: StartAuthorization over gRPC, the browser at the
// provider's authorize URL, the redirect to the gateway's callback page,
// then GetToken for the account, a refresh with rotation, and revocation.
func TestConsentFlowThroughTheGateway(t *testing.T) {
	e := newEnv(t)
	in := e.start(nil)
	callback := in.baseURL + server.CallbackPath
	in.broker.SetCallbackURL(callback)
	sb, err := sandbox.New(sandbox.Config{
		Clients:             map[string]string{testClientID: testClientSecret},
		Users:               map[string]string{"alice": "wonderland"},
		RedirectURIs:        map[string][]string{testClientID: {callback}},
		RefreshTokens:       true,
		RotateRefreshTokens: true,
		RequirePKCE:         true,
	})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(sb)
	t.Cleanup(ts.Close)
	ctx := context.Background()
	_, err = in.admin.PutProvider(ctx, &tokenbrokerv1.PutProviderRequest{
		Provider: &tokenbrokerv1.Provider{
			Name: "haven", TokenUrl: ts.URL + sandbox.TokenPath, AuthorizeUrl: ts.URL + sandbox.AuthorizePath,
			RevocationUrl: ts.URL + sandbox.RevokePath, ClientId: testClientID, Pkce: true,
			ClientAuthStyle: tokenbrokerv1.ClientAuthStyle_CLIENT_AUTH_STYLE_POST,
			GrantTypes: []tokenbrokerv1.GrantType{
				tokenbrokerv1.GrantType_GRANT_TYPE_AUTHORIZATION_CODE, tokenbrokerv1.GrantType_GRANT_TYPE_REFRESH_TOKEN,
			},
		},
		ClientSecret: testClientSecret,
	})
	if err != nil {
		t.Fatal(err)
	}

	// Before consent the account has no token.
	start, err := in.admin.StartAuthorization(ctx, &tokenbrokerv1.StartAuthorizationRequest{Provider: "haven", Account: "alice"})
	if err != nil {
		t.Fatalf("StartAuthorization: %v", err)
	}
	if _, err := in.tokens.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: "haven", Account: "alice"}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("GetToken before consent = %v, want FailedPrecondition", err)
	}
	authz, _ := url.Parse(start.GetAuthorizeUrl())
	q := authz.Query()
	if q.Get("code_challenge_method") != "S256" || q.Get("redirect_uri") != callback || q.Get("state") != start.GetState() {
		t.Fatalf("authorize URL %s lacks PKCE, the callback or the state", start.GetAuthorizeUrl())
	}

	// The browser: sign in at the provider (the sandbox's Basic shortcut),
	// follow its redirect to the gateway's callback page.
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, _ := http.NewRequest(http.MethodGet, start.GetAuthorizeUrl(), nil)
	req.SetBasicAuth("alice", "wonderland")
	resp, err := noFollow.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusFound || !strings.HasPrefix(loc, callback+"?") {
		t.Fatalf("authorize answered %d to %q, want a redirect to the callback", resp.StatusCode, loc)
	}
	page := getPage(t, loc)
	if page.code != http.StatusOK || !strings.Contains(page.body, "Authorization complete") || strings.Contains(page.body, "code=") {
		t.Fatalf("callback page = %d %q, want the success page", page.code, page.body)
	}
	// The state is single use.
	if again := getPage(t, loc); again.code != http.StatusBadRequest || !strings.Contains(again.body, "Authorization failed") {
		t.Errorf("reused callback = %d %q, want 400 with the failure page", again.code, again.body)
	}

	first, err := in.tokens.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: "haven", Account: "alice"})
	if err != nil {
		t.Fatalf("GetToken after consent: %v", err)
	}
	grants, err := in.admin.ListGrants(ctx, &tokenbrokerv1.ListGrantsRequest{Provider: "haven"})
	if err != nil || len(grants.GetGrants()) != 1 {
		t.Fatalf("ListGrants = %v, %v; want alice's grant", grants, err)
	}
	g := grants.GetGrants()[0]
	if g.GetHealth() != tokenbrokerv1.GrantHealth_GRANT_HEALTH_OK || !g.GetRefreshToken().GetSet() {
		t.Errorf("grant = %v, want ok with a refresh token", g)
	}

	// A caller whose token was refused refreshes: the refresh token rotates.
	refreshed, err := in.tokens.Refresh(ctx, &tokenbrokerv1.RefreshRequest{Provider: "haven", Account: "alice", StaleAccessToken: first.GetToken().GetAccessToken()})
	if err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	if refreshed.GetToken().GetAccessToken() == first.GetToken().GetAccessToken() {
		t.Errorf("Refresh returned the stale token")
	}
	after, _ := in.admin.ListGrants(ctx, &tokenbrokerv1.ListGrantsRequest{Provider: "haven"})
	if fp := after.GetGrants()[0].GetRefreshToken().GetFingerprint(); fp == g.GetRefreshToken().GetFingerprint() {
		t.Errorf("refresh token fingerprint unchanged after a rotating refresh")
	}
	if n := sb.ReusedRefreshTokens(); n != 0 {
		t.Errorf("provider saw %d reused refresh tokens, want 0", n)
	}
	var pkce, refresh int
	for _, r := range sb.Requests() {
		switch r.Form.Get("grant_type") {
		case "authorization_code":
			if r.Form.Get("code_verifier") != "" && r.Form.Get("redirect_uri") == callback {
				pkce++
			}
		case "refresh_token":
			refresh++
		}
	}
	if pkce != 1 || refresh != 1 {
		t.Errorf("provider saw %d code exchanges with verifier and callback, %d refreshes; want 1 and 1", pkce, refresh)
	}

	// Revocation: the grant and its tokens are gone.
	if _, err := in.admin.RevokeGrant(ctx, &tokenbrokerv1.RevokeGrantRequest{Provider: "haven", Account: "alice"}); err != nil {
		t.Fatalf("RevokeGrant: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := in.tokens.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: "haven", Account: "alice"})
		if status.Code(err) == codes.NotFound {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GetToken after RevokeGrant = %v, want NotFound", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type page struct {
	code int
	body string
}

func getPage(t *testing.T, u string) page {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return page{resp.StatusCode, string(b)}
}
