package interop_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/oauth"
	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
	"github.com/tokenbroker/tokenbroker/internal/testkeys"
)

const callbackPath = "/v1/oauth/callback"

// newBroker builds a broker on an embedded etcd. The background refresher
// is off, so that the authorization server sees only the requests the test
// causes.
func newBroker(t *testing.T, callbackURL string, opts ...func(*broker.Config)) *broker.Broker {
	t.Helper()
	e := etcdtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg := broker.Config{
		Client:       e.Client(t, nil),
		Keyring:      testkeys.Keyring(),
		Logger:       zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)),
		StoreTimeout: 5 * time.Second,
		FetchTimeout: 15 * time.Second,
		CallbackURL:  callbackURL,
		Refresh:      broker.RefreshConfig{Disabled: true},
	}
	for _, o := range opts {
		o(&cfg)
	}
	b, err := broker.New(ctx, cfg)
	if err != nil {
		t.Fatalf("broker.New: %v", err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("close broker: %v", err)
		}
	})
	return b
}

// registerOIDC registers the authorization server with b the way an admin
// does: the "oidc" preset reads the issuer's discovery document. auth zero
// lets discovery choose the client authentication.
func registerOIDC(t *testing.T, b *broker.Broker, s *authServer, name, clientID string, auth oauth.AuthStyle, scopes ...string) *broker.Provider {
	t.Helper()
	ctx := context.Background()
	p := broker.Provider{Name: name, ClientID: clientID, ClientAuth: auth, DefaultScopes: scopes}
	if err := b.ApplyPreset(ctx, &p, "oidc", s.Issuer); err != nil {
		t.Fatalf("ApplyPreset(oidc, %s): %v", s.Issuer, err)
	}
	d := s.discovery(t)
	for _, f := range []struct{ field, got, key string }{
		{"TokenURL", p.TokenURL, "token_endpoint"},
		{"AuthorizeURL", p.AuthorizeURL, "authorization_endpoint"},
		{"IntrospectionURL", p.IntrospectionURL, "introspection_endpoint"},
		{"RevocationURL", p.RevocationURL, "revocation_endpoint"},
	} {
		if want := str(t, d, f.key); f.got != want {
			t.Errorf("after discovery %s = %q, want the server's %s %q", f.field, f.got, f.key, want)
		}
	}
	wantGrants := []broker.GrantType{broker.GrantClientCredentials, broker.GrantAuthorizationCode, broker.GrantRefreshToken}
	if !slices.Equal(p.GrantTypes, wantGrants) {
		t.Errorf("after discovery GrantTypes = %v, want %v", p.GrantTypes, wantGrants)
	}
	if !p.PKCE {
		t.Error("after discovery PKCE is off; the server advertises S256")
	}
	stored, err := b.PutProvider(ctx, p, clientSecret)
	if err != nil {
		t.Fatalf("PutProvider(%s): %v", name, err)
	}
	return stored
}

// callback is the gateway's GET /v1/oauth/callback, reduced to what the
// broker does there: CompleteAuthorization, and a page telling the person
// whether it worked.
type callback struct {
	*httptest.Server
	broker  atomic.Pointer[broker.Broker]
	results chan callbackResult
}

type callbackResult struct {
	query url.Values
	grant *broker.Grant
	err   error
}

func newCallback(t *testing.T) *callback {
	t.Helper()
	c := &callback{results: make(chan callbackResult, 4)}
	c.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b := c.broker.Load()
		if r.URL.Path != callbackPath || b == nil {
			http.NotFound(w, r)
			return
		}
		q := r.URL.Query()
		g, err := b.CompleteAuthorization(r.Context(), broker.Callback{
			State: q.Get("state"), Code: q.Get("code"), Error: q.Get("error"), ErrorDescription: q.Get("error_description"),
		})
		c.results <- callbackResult{query: q, grant: g, err: err}
		if err != nil {
			http.Error(w, "authorization failed: "+err.Error(), http.StatusBadRequest)
			return
		}
		_, _ = io.WriteString(w, "authorized: you can close this page")
	}))
	t.Cleanup(c.Close)
	return c
}

// URL of the callback as the provider sees it.
func (c *callback) URI() string { return c.Server.URL + callbackPath }

// isCallback reports whether u is the callback.
func (c *callback) isCallback(u *url.URL) bool {
	return u.Scheme+"://"+u.Host+u.Path == c.URI()
}

// result waits for the callback's outcome.
func (c *callback) result(t *testing.T) callbackResult {
	t.Helper()
	select {
	case r := <-c.results:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("the callback was not called")
		return callbackResult{}
	}
}

// consent runs a consent flow for account at the server as a person at a
// browser would, and returns the grant the callback stored and the number
// of forms the person filled in on the way.
func consent(t *testing.T, b *broker.Broker, cb *callback, br *browser, provider, account string, scopes []string) (*broker.Grant, int) {
	t.Helper()
	a, err := b.StartAuthorization(context.Background(), provider, account, scopes)
	if err != nil {
		t.Fatalf("StartAuthorization(%s, %s): %v", provider, account, err)
	}
	last, trail := br.authorize(t, a.URL, cb.isCallback)
	res := cb.result(t)
	if res.err != nil {
		t.Fatalf("CompleteAuthorization: %v (callback query %v)", res.err, res.query)
	}
	if last.Status != http.StatusOK || !strings.Contains(last.Body, "authorized") {
		t.Errorf("callback page = %d %q, want 200 saying it worked", last.Status, last.Body)
	}
	return res.grant, len(trail)
}

func tokenRequests(grantType, clientID string) func(seenRequest) bool {
	return func(r seenRequest) bool {
		return r.Endpoint == "token" && r.GrantType == grantType && r.ClientID == clientID
	}
}

func endpointRequests(endpoint, clientID string) func(seenRequest) bool {
	return func(r seenRequest) bool { return r.Endpoint == endpoint && r.ClientID == clientID }
}

// TestClientCredentials runs the client_credentials grant, the token
// cache, introspection and revocation against oidc-provider, with each way
// of client authentication the server supports.
func TestClientCredentials(t *testing.T) {
	s := startAuthServer(t, serverOptions{RedirectURI: "http://127.0.0.1:9/unused"})
	b := newBroker(t, "")
	tests := []struct {
		name     string
		clientID string
		give     oauth.AuthStyle // 0: as discovery says
		wantAuth string          // what the server saw
	}{
		{name: "basic from discovery", clientID: basicClient, give: 0, wantAuth: "basic"},
		{name: "post", clientID: postClient, give: oauth.AuthPost, wantAuth: "post"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			name := "oidc-" + tt.wantAuth
			registerOIDC(t, b, s, name, tt.clientID, tt.give, "api")
			req := broker.TokenRequest{Provider: name}

			first, err := b.GetToken(ctx, req)
			if err != nil {
				t.Fatalf("GetToken: %v", err)
			}
			if first.AccessToken == "" || first.Type() != "Bearer" || first.GrantedScope() != "api" {
				t.Errorf("GetToken = type %q scope %q token empty %v, want a Bearer token for scope api",
					first.Type(), first.GrantedScope(), first.AccessToken == "")
			}
			if life := first.Lifetime(); life < 590*time.Second || life > 600*time.Second {
				t.Errorf("token lifetime = %v, want the server's 600s", life)
			}
			again, err := b.GetToken(ctx, req)
			if err != nil {
				t.Fatalf("second GetToken: %v", err)
			}
			if again.AccessToken != first.AccessToken {
				t.Error("second GetToken got a new token, want the cached one")
			}
			issued := s.matching(t, tokenRequests("client_credentials", tt.clientID))
			if len(issued) != 1 {
				t.Fatalf("server saw %d client_credentials requests %v, want 1 (the second GetToken is a cache hit)", len(issued), issued)
			}
			if got := issued[0]; got.Status != http.StatusOK || got.Auth != tt.wantAuth || got.Scope != "api" {
				t.Errorf("server saw %v scope %q, want status 200, auth %s, scope api", got, got.Scope, tt.wantAuth)
			}

			// Introspection: the server's endpoint decides.
			in, err := b.Introspect(ctx, first.AccessToken)
			if err != nil {
				t.Fatalf("Introspect: %v", err)
			}
			if !in.Active || in.Provider != name || in.Account != "" || in.ClientID != tt.clientID || in.Scope != "api" {
				t.Errorf("Introspect = %+v, want active, provider %s, client %s, scope api", in, name, tt.clientID)
			}
			if d := in.ExpiresAt.Sub(first.ExpiresAt); d < -2*time.Second || d > 2*time.Second {
				t.Errorf("Introspect exp = %v, want about the token's expiry %v", in.ExpiresAt, first.ExpiresAt)
			}
			asked := s.matching(t, endpointRequests("introspection", tt.clientID))
			if len(asked) != 1 || asked[0].Auth != tt.wantAuth || asked[0].Token != digest(first.AccessToken) ||
				asked[0].Active == nil || !*asked[0].Active {
				t.Errorf("server's introspection endpoint saw %v, want one request for the token with auth %s, answered active", asked, tt.wantAuth)
			}

			// Revoking the grant revokes the token at the server (RFC 7009).
			if err := b.RevokeGrant(ctx, name, ""); err != nil {
				t.Fatalf("RevokeGrant: %v", err)
			}
			revoked := s.matching(t, endpointRequests("revocation", tt.clientID))
			if len(revoked) != 1 || revoked[0].Token != digest(first.AccessToken) || revoked[0].Auth != tt.wantAuth ||
				revoked[0].TokenTypeHint != "access_token" || revoked[0].Status != http.StatusOK {
				t.Errorf("server's revocation endpoint saw %v, want the token revoked with hint access_token and auth %s", revoked, tt.wantAuth)
			}
			if s.activeAtServer(t, tt.clientID, first.AccessToken) {
				t.Error("the server still finds the token active after RevokeGrant")
			}
			if in, err := b.Introspect(ctx, first.AccessToken); err != nil || in.Active {
				t.Errorf("Introspect after RevokeGrant = %+v, %v; want inactive", in, err)
			}

			// A new token; the server's operator revokes it behind the
			// broker's back: the broker's own index still holds it, the
			// server's answer decides.
			second, err := b.GetToken(ctx, req)
			if err != nil {
				t.Fatalf("GetToken after RevokeGrant: %v", err)
			}
			if second.AccessToken == first.AccessToken {
				t.Fatal("GetToken after RevokeGrant served the revoked token")
			}
			if in, err := b.Introspect(ctx, second.AccessToken); err != nil || !in.Active {
				t.Fatalf("Introspect of the new token = %+v, %v; want active", in, err)
			}
			s.revokeAtServer(t, tt.clientID, second.AccessToken)
			if in, err := b.Introspect(ctx, second.AccessToken); err != nil || in.Active {
				t.Errorf("Introspect of a token revoked at the server = %+v, %v; want inactive", in, err)
			}
		})
	}
}

// TestAuthorizationCode runs the consent flow against oidc-provider:
// authorization code with PKCE S256 through its login and consent pages,
// the callback, refresh with rotation (on expiry and forced), refresh token
// reuse detection, reauthorization, introspection and revocation.
func TestAuthorizationCode(t *testing.T) {
	const (
		name    = "oidc"
		account = "alice"
		ttl     = 6 * time.Second // access tokens of the code and refresh grants
	)
	ctx := context.Background()
	cb := newCallback(t)
	s := startAuthServer(t, serverOptions{RedirectURI: cb.URI(), AccessTokenTTL: ttl, RefreshTokens: "client"})
	b := newBroker(t, cb.URI())
	cb.broker.Store(b)
	registerOIDC(t, b, s, name, basicClient, 0)
	scopes := []string{"openid"} // the server issues refresh tokens without offline_access (see TestOfflineAccessConsent)
	req := broker.TokenRequest{Provider: name, Account: account}

	// Start: the authorize URL carries state and an S256 challenge.
	a, err := b.StartAuthorization(ctx, name, account, scopes)
	if err != nil {
		t.Fatalf("StartAuthorization: %v", err)
	}
	u, err := url.Parse(a.URL)
	if err != nil {
		t.Fatalf("authorize URL %q: %v", a.URL, err)
	}
	q := u.Query()
	for k, want := range map[string]string{
		"response_type": "code", "client_id": basicClient, "redirect_uri": cb.URI(), "state": a.State,
		"code_challenge_method": "S256", "scope": "openid",
	} {
		if got := q.Get(k); got != want {
			t.Errorf("authorize URL %s = %q, want %q", k, got, want)
		}
	}
	if len(q.Get("code_challenge")) != 43 {
		t.Errorf("authorize URL code_challenge = %q, want an S256 challenge (43 characters)", q.Get("code_challenge"))
	}
	if g := grantOf(t, b, name, account); g.Health != broker.HealthPending {
		t.Errorf("before consent the grant is %s, want %s", g.Health, broker.HealthPending)
	}

	// Consent: login and consent pages, then the callback.
	br := newBrowser(t, "alice@interop")
	last, trail := br.authorize(t, a.URL, cb.isCallback)
	res := cb.result(t)
	if res.err != nil {
		t.Fatalf("CompleteAuthorization: %v (callback query %v)", res.err, res.query)
	}
	if last.Status != http.StatusOK {
		t.Errorf("callback page = %d %q, want 200", last.Status, last.Body)
	}
	if len(trail) != 2 {
		t.Errorf("the browser passed %d pages with forms, want 2 (login, consent)", len(trail))
	}
	if res.query.Get("iss") != s.Issuer {
		t.Errorf("callback iss = %q, want the issuer (RFC 9207)", res.query.Get("iss"))
	}
	g := res.grant
	if g.Health != broker.HealthOK || g.RefreshToken == "" || g.Type != broker.GrantAuthorizationCode {
		t.Fatalf("grant after consent: health %s, type %s, refresh token %v; want ok, authorization_code, a refresh token",
			g.Health, g.Type, g.RefreshToken != "")
	}
	codes := s.matching(t, tokenRequests("authorization_code", basicClient))
	if len(codes) != 1 {
		t.Fatalf("server saw %d authorization_code requests %v, want 1", len(codes), codes)
	}
	if got := codes[0]; got.Status != http.StatusOK || !got.CodeVerifier || got.RedirectURI != cb.URI() || got.Auth != "basic" {
		t.Errorf("server saw %v verifier %v redirect_uri %q; want 200 with a code_verifier, redirect_uri %s, basic auth",
			got, got.CodeVerifier, got.RedirectURI, cb.URI())
	}

	// GetToken serves the token of the exchange, from memory.
	rec, err := b.GetToken(ctx, req)
	if err != nil {
		t.Fatalf("GetToken after consent: %v", err)
	}
	if rec.IDToken() == "" || rec.Type() != "Bearer" || rec.Lifetime() > ttl {
		t.Errorf("GetToken: id_token %v, type %s, lifetime %v; want an id_token, Bearer, at most %v",
			rec.IDToken() != "", rec.Type(), rec.Lifetime(), ttl)
	}
	if n := len(s.matching(t, func(r seenRequest) bool { return r.Endpoint == "token" })); n != 1 {
		t.Errorf("server saw %d token requests after GetToken, want 1 (the exchange)", n)
	}
	in, err := b.Introspect(ctx, rec.AccessToken)
	if err != nil {
		t.Fatalf("Introspect: %v", err)
	}
	if !in.Active || in.Provider != name || in.Account != account || in.Subject != "alice@interop" || in.ClientID != basicClient {
		t.Errorf("Introspect = %+v, want active, %s/%s, subject alice@interop, client %s", in, name, account, basicClient)
	}

	// Refresh on expiry: until the broker knows whether the server revokes
	// on refresh, the token is served until its hand-over; after it,
	// GetToken refreshes, and the server rotates the refresh token.
	time.Sleep(time.Until(rec.ExpiresAt) + 50*time.Millisecond)
	refreshed, err := b.GetToken(ctx, req)
	if err != nil {
		t.Fatalf("GetToken after the hand-over: %v", err)
	}
	if refreshed.AccessToken == rec.AccessToken || refreshed.Generation != rec.Generation+1 {
		t.Errorf("GetToken after the hand-over: generation %d (was %d), same token %v; want a new token",
			refreshed.Generation, rec.Generation, refreshed.AccessToken == rec.AccessToken)
	}
	g1 := g
	g2 := grantOf(t, b, name, account)
	if g2.RefreshToken == g1.RefreshToken || testkeys.Keyring().Fingerprint(g2.RefreshToken) == testkeys.Keyring().Fingerprint(g1.RefreshToken) {
		t.Errorf("refresh token fingerprint %s after the refresh, was %s: want it rotated",
			testkeys.Keyring().Fingerprint(g2.RefreshToken), testkeys.Keyring().Fingerprint(g1.RefreshToken))
	}

	// A forced refresh (a resource server rejected the token) rotates again.
	forced, err := b.Refresh(ctx, req, refreshed.AccessToken)
	if err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	if forced.AccessToken == refreshed.AccessToken {
		t.Error("Refresh returned the stale token")
	}
	g3 := grantOf(t, b, name, account)
	if g3.RefreshToken == g2.RefreshToken {
		t.Error("Refresh did not store the rotated refresh token")
	}
	refreshes := s.matching(t, tokenRequests("refresh_token", basicClient))
	wantSent := []string{digest(g1.RefreshToken), digest(g2.RefreshToken)}
	var sent []string
	for _, r := range refreshes {
		sent = append(sent, r.RefreshToken)
		if r.Status != http.StatusOK || r.Auth != "basic" {
			t.Errorf("server saw refresh %v, want 200 with basic auth", r)
		}
	}
	if !slices.Equal(sent, wantSent) {
		t.Errorf("server saw refresh tokens %v, want each rotated one once: %v", sent, wantSent)
	}

	// The first refresh token is dead: presenting it again (a replay) is
	// invalid_grant, and the server revokes the whole grant.
	if status, body := s.post(t, basicClient, "/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {g1.RefreshToken}}); status != http.StatusBadRequest || body["error"] != "invalid_grant" {
		t.Fatalf("replaying the first refresh token: %d %v, want 400 invalid_grant", status, body)
	}
	// The broker's own index still holds the current token; the server
	// says it is revoked, and the server decides.
	if in, err := b.Introspect(ctx, forced.AccessToken); err != nil || in.Active {
		t.Errorf("Introspect of a token of a grant the server revoked = %+v, %v; want inactive", in, err)
	}

	// The broker learns on its next refresh: the grant needs
	// reauthorization, and the dead refresh token is not sent again. (What
	// Refresh returns meanwhile is TestRefreshOfRevokedGrant's subject.)
	_, _ = b.Refresh(ctx, req, forced.AccessToken)
	if g := grantOf(t, b, name, account); g.Health != broker.HealthReauthorizationRequired {
		t.Errorf("grant health %s after invalid_grant, want %s", g.Health, broker.HealthReauthorizationRequired)
	}
	before := len(s.matching(t, tokenRequests("refresh_token", basicClient)))
	_, _ = b.Refresh(ctx, req, forced.AccessToken)
	if after := len(s.matching(t, tokenRequests("refresh_token", basicClient))); after != before {
		t.Errorf("server saw %d more refresh requests after reauthorization_required, want none", after-before)
	}

	// Reauthorization: consent again (the server's session remembers the
	// login, so only the consent page is shown).
	g4, forms := consent(t, b, cb, br, name, account, nil)
	if g4.Health != broker.HealthOK || g4.RefreshToken == "" {
		t.Fatalf("grant after reauthorization: health %s, refresh token %v; want ok and one", g4.Health, g4.RefreshToken != "")
	}
	if forms != 1 {
		t.Errorf("reauthorization showed %d forms, want 1 (consent; the login session is still there)", forms)
	}
	current, err := b.GetToken(ctx, req)
	if err != nil {
		t.Fatalf("GetToken after reauthorization: %v", err)
	}
	if in, err := b.Introspect(ctx, current.AccessToken); err != nil || !in.Active {
		t.Errorf("Introspect after reauthorization = %+v, %v; want active", in, err)
	}

	// RevokeGrant revokes the refresh token and the access token at the
	// server, and forgets them.
	if err := b.RevokeGrant(ctx, name, account); err != nil {
		t.Fatalf("RevokeGrant: %v", err)
	}
	var hints []string
	for _, r := range s.matching(t, endpointRequests("revocation", basicClient)) {
		if r.Token == digest(g4.RefreshToken) || r.Token == digest(current.AccessToken) {
			hints = append(hints, r.TokenTypeHint)
		}
	}
	slices.Sort(hints)
	if !slices.Equal(hints, []string{"access_token", "refresh_token"}) {
		t.Errorf("server's revocation endpoint got the grant's tokens with hints %v, want access_token and refresh_token", hints)
	}
	for what, tok := range map[string]string{"refresh token": g4.RefreshToken, "access token": current.AccessToken} {
		if s.activeAtServer(t, basicClient, tok) {
			t.Errorf("the server finds the %s active after RevokeGrant", what)
		}
	}
	if in, err := b.Introspect(ctx, current.AccessToken); err != nil || in.Active {
		t.Errorf("Introspect after RevokeGrant = %+v, %v; want inactive", in, err)
	}
	if _, err := b.GetToken(ctx, req); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("GetToken after RevokeGrant: %v, want %v", err, broker.ErrNotFound)
	}
}

// grantOf reads the grant of provider/account as an admin sees it.
func grantOf(t *testing.T, b *broker.Broker, provider, account string) *broker.Grant {
	t.Helper()
	gs, err := b.ListGrants(context.Background(), provider)
	if err != nil {
		t.Fatalf("ListGrants(%s): %v", provider, err)
	}
	for _, g := range gs {
		if g.Account == account {
			return g
		}
	}
	t.Fatalf("ListGrants(%s) has no account %q", provider, account)
	return nil
}
