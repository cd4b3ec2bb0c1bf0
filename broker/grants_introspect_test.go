package broker

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/oauth"
	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
	"github.com/tokenbroker/tokenbroker/internal/fakes"
)

// TestIntrospectAtProvider: for a provider with an introspection endpoint
// (MediaHaven's /auth/introspect.php) the provider decides, asked with HTTP
// Basic client authentication and the token as a POST parameter; a token it
// revoked is inactive although the broker's own index still holds it.
//
// The provider is registered with client auth basic+post: with the
// preset's post alone, Introspect sends the client's credentials in the
// body (Provider.endpointRequest keeps post), which introspect.php refuses.
func TestIntrospectAtProvider(t *testing.T) {
	e := etcdtest.Start(t)
	clock := newClock()
	mh := fakes.NewMediaHaven(t, fakes.WithClock(clock.Now))
	f := mh.Server
	b := newTestBroker(t, e, withClock(clock), withBackgroundRefreshOff())
	registerSeed(t, b, "mediahaven", seedEnv{fake: f, preset: "mediahaven", base: f.URL(),
		provider: Provider{ClientAuth: oauth.AuthBasicAndPost}})
	ctx := context.Background()
	authorizeAccount(t, b, f, "mediahaven", "alice", nil)
	rec := accountToken(t, b, "mediahaven", "alice")

	got, err := b.Introspect(ctx, rec.AccessToken)
	if err != nil {
		t.Fatalf("Introspect(served token): %v", err)
	}
	want := Introspection{Active: true, Provider: "mediahaven", Account: "alice", ClientID: fakes.MediaHavenClientID,
		TokenType: "Bearer", Username: fakes.User, Subject: fakes.User, IssuedAt: t0,
		// Served until its hand-over, 2s before the provider's expiry:
		// introspection does not answer for it beyond that.
		ExpiresAt: t0.Add(time.Hour - 2*time.Second)}
	if !sameIntrospection(*got, want) {
		t.Errorf("Introspect(served token) = %+v, want %+v", *got, want)
	}
	calls := f.Calls(fakes.MediaHavenIntrospectPath)
	if len(calls) != 1 {
		t.Fatalf("MediaHaven got %d introspection requests, want 1", len(calls))
	}
	checkRequest(t, f, "introspection request", calls[0], calls[0].Form, wantRequest{
		path: fakes.MediaHavenIntrospectPath, authorization: "basic",
		params: map[string]string{"token": rec.AccessToken, "token_type_hint": "access_token"},
	}, flowValues{})
	if len(calls[0].Query) != 0 {
		t.Errorf("introspection request has query %v, want the token in the POST body only", calls[0].Query)
	}

	f.RevokeAll()
	if got, err := b.Introspect(ctx, rec.AccessToken); err != nil || got.Active {
		t.Errorf("Introspect(token revoked at the provider) = %+v, %v; want inactive", got, err)
	}
	if got, err := b.Introspect(ctx, "never-issued"); err != nil || *got != (Introspection{}) {
		t.Errorf("Introspect(unknown token) = %+v, %v; want inactive", got, err)
	}
	if n := len(f.Calls(fakes.MediaHavenIntrospectPath)); n != 2 {
		t.Errorf("MediaHaven got %d introspection requests, want 2: an unknown token is not asked about", n)
	}
}

// sameIntrospection compares introspections, their times by the instant.
func sameIntrospection(a, b Introspection) bool {
	same := a.IssuedAt.Equal(b.IssuedAt) && a.ExpiresAt.Equal(b.ExpiresAt)
	a.IssuedAt, a.ExpiresAt, b.IssuedAt, b.ExpiresAt = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	return same && a == b
}

// TestIntrospectOwnIndex: for a provider without an introspection endpoint
// (Mediaflow) the broker's own index of the tokens it handed out answers;
// an expired or revoked token is inactive.
func TestIntrospectOwnIndex(t *testing.T) {
	e := etcdtest.Start(t)
	clock := newClock()
	b, env := startSeed(t, e, clock, "mediaflow")
	ctx := context.Background()
	putPasswordAccount(t, b, "mediaflow", "bob", fakes.Password)
	rec := accountToken(t, b, "mediaflow", "bob")
	other := newTestBroker(t, e, withClock(clock), withBackgroundRefreshOff())
	requests := len(env.fake.Requests())

	got, err := other.Introspect(ctx, rec.AccessToken)
	if err != nil {
		t.Fatalf("Introspect(served token): %v", err)
	}
	want := Introspection{Active: true, Provider: "mediaflow", Account: "bob", ClientID: fakes.MediaflowClientID,
		TokenType: "Bearer", Username: fakes.User, IssuedAt: t0, ExpiresAt: rec.ExpiresAt}
	if !sameIntrospection(*got, want) {
		t.Errorf("Introspect(served token) = %+v, want %+v", *got, want)
	}

	tests := []struct {
		name string
		give func() string // the token, after what happened to it
	}{
		{name: "unknown", give: func() string { return rec.AccessToken + "x" }},
		{name: "expired", give: func() string { clock.Advance(rec.Lifetime()); return rec.AccessToken }},
		{name: "revoked", give: func() string {
			clock.Advance(-rec.Lifetime())
			if err := b.RevokeGrant(ctx, "mediaflow", "bob"); err != nil {
				t.Fatalf("RevokeGrant: %v", err)
			}
			return rec.AccessToken
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, err := other.Introspect(ctx, tt.give()); err != nil || *got != (Introspection{}) {
				t.Errorf("Introspect = %+v, %v; want inactive", got, err)
			}
		})
	}
	if n := len(env.fake.Requests()) - requests; n != 0 {
		t.Errorf("Mediaflow got %d requests during introspection, want none", n)
	}
}

// TestRevokeGrant: deleting a grant revokes its tokens at the provider when
// it has a revocation endpoint (RFC 7009), and always removes them from
// etcd, from the introspection index, and from every broker's memory.
func TestRevokeGrant(t *testing.T) {
	type want struct {
		// revocations are the token_type_hint of each revocation request.
		revocations []string
	}
	// start registers a provider named after its preset with a broker.
	start := map[string]func(t *testing.T, e *etcdtest.Etcd, clock *fakeClock) (*Broker, *fakes.Server){
		"oidc": func(t *testing.T, e *etcdtest.Etcd, clock *fakeClock) (*Broker, *fakes.Server) {
			f := fakes.NewOIDC(t, fakes.WithClock(clock.Now)).Server
			b := newTestBroker(t, e, withClock(clock), withBackgroundRefreshOff())
			registerSeed(t, b, "oidc", seedEnv{fake: f, preset: "oidc", base: f.URL()})
			return b, f
		},
		"mediahaven": func(t *testing.T, e *etcdtest.Etcd, clock *fakeClock) (*Broker, *fakes.Server) {
			b, env := startSeed(t, e, clock, "mediahaven")
			return b, env.fake
		},
	}
	tests := []struct {
		name string
		give string // the provider
		want want
	}{
		{name: "oidc issuer with a revocation endpoint", give: "oidc", want: want{revocations: []string{"refresh_token", "access_token"}}},
		{name: "mediahaven without one", give: "mediahaven", want: want{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := etcdtest.Start(t)
			clock := newClock()
			ctx := context.Background()
			b, f := start[tt.give](t, e, clock)
			other := newTestBroker(t, e, withClock(clock), withBackgroundRefreshOff())
			putPasswordAccount(t, b, tt.give, "alice", fakes.Password)
			rec := accountToken(t, b, tt.give, "alice")
			rt := grantOf(t, b, tt.give, "alice").RefreshToken
			if got := accountToken(t, other, tt.give, "alice"); got.AccessToken != rec.AccessToken {
				t.Fatalf("the other broker serves %q, want %q", got.AccessToken, rec.AccessToken)
			}

			if err := b.RevokeGrant(ctx, tt.give, "alice"); err != nil {
				t.Fatalf("RevokeGrant: %v", err)
			}

			var hints []string
			for _, r := range f.Requests() {
				if r.Endpoint != fakes.RevocationEndpoint {
					continue
				}
				hints = append(hints, r.Form.Get("token_type_hint"))
				wantToken := map[string]string{"refresh_token": rt, "access_token": rec.AccessToken}[r.Form.Get("token_type_hint")]
				if r.Form.Get("token") != wantToken || r.Status != 200 || r.Header.Get("Authorization") != basicAuthHeader(f.ClientID(), f.ClientSecret()) {
					t.Errorf("revocation request: token %q, answered %d, Authorization %q; want token %q, 200, the client's Basic credentials",
						r.Form.Get("token"), r.Status, r.Header.Get("Authorization"), wantToken)
				}
			}
			if !slices.Equal(hints, tt.want.revocations) {
				t.Errorf("the provider got revocations of %q, want %q", hints, tt.want.revocations)
			}
			if active := f.Active(rec.AccessToken); active != (len(tt.want.revocations) == 0) {
				t.Errorf("at the provider the access token is active=%t, want %t", active, len(tt.want.revocations) == 0)
			}
			for _, prefix := range []string{grantsPrefix + tt.give + "/alice", tokensPrefix + tt.give + "/alice/"} {
				if kvs := etcdKeys(t, e.Client(t, nil), DefaultPrefix+prefix); len(kvs) != 0 {
					t.Errorf("etcd still holds %v", kvs)
				}
			}
			eventually(t, "the other broker forgets the token", func() bool { return inMemory(other, rec.Key) == nil })
			if _, err := other.GetToken(ctx, TokenRequest{Provider: tt.give, Account: "alice"}); !errors.Is(err, ErrNotFound) {
				t.Errorf("GetToken on the other broker after RevokeGrant: %v, want ErrNotFound", err)
			}
			if got, err := other.Introspect(ctx, rec.AccessToken); err != nil || got.Active {
				t.Errorf("Introspect after RevokeGrant = %+v, %v; want inactive", got, err)
			}
			if err := b.RevokeGrant(ctx, tt.give, "alice"); !errors.Is(err, ErrNotFound) {
				t.Errorf("RevokeGrant again: %v, want ErrNotFound", err)
			}
		})
	}
}

// TestOIDCDiscovery: the "oidc" preset reads the issuer's
// /.well-known/openid-configuration and fills the endpoints, the client
// authentication, PKCE and the grants; an issuer whose document names
// another issuer is refused.
func TestOIDCDiscovery(t *testing.T) {
	type give struct {
		issuer      string   // the document's issuer; "" for the fake's URL
		authMethods []string // token_endpoint_auth_methods_supported
		path        string   // appended to the fake's URL as the base URL
	}
	type want struct {
		auth oauth.AuthStyle
		err  string // in the error; "" for success
	}
	tests := []struct {
		name string
		give give
		want want
	}{
		{name: "basic and post", give: give{authMethods: []string{"client_secret_basic", "client_secret_post"}}, want: want{auth: oauth.AuthBasic}},
		{name: "post only", give: give{authMethods: []string{"client_secret_post"}}, want: want{auth: oauth.AuthPost}},
		{name: "no auth methods: the OIDC default", give: give{}, want: want{auth: oauth.AuthBasic}},
		{name: "issuer given with a trailing slash", give: give{authMethods: []string{"client_secret_basic"}, path: "/"}, want: want{auth: oauth.AuthBasic}},
		{name: "private_key_jwt only", give: give{authMethods: []string{"private_key_jwt"}}, want: want{auth: oauth.AuthPrivateKeyJWT}},
		{name: "mismatched issuer", give: give{issuer: "https://impostor.example.com", authMethods: []string{"client_secret_basic"}},
			want: want{err: `the metadata names issuer "https://impostor.example.com", not`}},
		{name: "no discovery document", give: give{path: "/not-an-issuer"}, want: want{err: "/not-an-issuer/.well-known/openid-configuration and "}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := etcdtest.Start(t)
			o := fakes.NewOIDC(t)
			o.SetIssuer(tt.give.issuer)
			o.SetAuthMethods(tt.give.authMethods...)
			b := newTestBroker(t, e, withBackgroundRefreshOff())
			p := Provider{Name: "issuer", ClientID: fakes.OIDCClientID}
			err := b.ApplyPreset(context.Background(), &p, "oidc", o.URL()+tt.give.path)
			calls := o.Calls(strings.TrimSuffix(tt.give.path, "/") + fakes.OIDCDiscoveryPath)
			if len(calls) != 1 || calls[0].Method != "GET" || calls[0].Header.Get("Accept") != "application/json" {
				t.Errorf("the issuer got %d discovery requests, want 1 GET accepting application/json", len(calls))
			}
			if tt.want.err != "" {
				if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), tt.want.err) {
					t.Errorf("ApplyPreset(oidc) = %v, want ErrInvalidArgument (a configuration error) that says %q", err, tt.want.err)
				}
				if p.TokenURL != "" || p.AuthorizeURL != "" {
					t.Errorf("ApplyPreset(oidc) failed but filled token_url %q, authorize_url %q", p.TokenURL, p.AuthorizeURL)
				}
				return
			}
			if err != nil {
				t.Fatalf("ApplyPreset(oidc): %v", err)
			}
			wantP := Provider{Name: "issuer", ClientID: fakes.OIDCClientID,
				TokenURL: o.URL() + "/oauth2/token", AuthorizeURL: o.URL() + "/oauth2/authorize",
				IntrospectionURL: o.URL() + "/oauth2/introspect", RevocationURL: o.URL() + "/oauth2/revoke",
				ClientAuth: tt.want.auth, PKCE: true,
				GrantTypes: []GrantType{GrantClientCredentials, GrantPassword, GrantAuthorizationCode, GrantRefreshToken}}
			if p.TokenURL != wantP.TokenURL || p.AuthorizeURL != wantP.AuthorizeURL || p.IntrospectionURL != wantP.IntrospectionURL ||
				p.RevocationURL != wantP.RevocationURL || p.ClientAuth != wantP.ClientAuth || p.PKCE != wantP.PKCE || !slices.Equal(p.GrantTypes, wantP.GrantTypes) {
				t.Errorf("ApplyPreset(oidc) made %+v, want %+v", p, wantP)
			}
		})
	}
}

// TestOIDCDiscoveredProvider runs the consent flow with PKCE and a refresh
// against a provider registered by discovery alone.
func TestOIDCDiscoveredProvider(t *testing.T) {
	e := etcdtest.Start(t)
	clock := newClock()
	o := fakes.NewOIDC(t, fakes.WithClock(clock.Now))
	f := o.Server
	b := newTestBroker(t, e, withClock(clock), withBackgroundRefreshOff())
	registerSeed(t, b, "issuer", seedEnv{fake: f, preset: "oidc", base: f.URL()})

	auth, cb := consentInBrowser(t, b, f, "issuer", "alice", []string{"openid", "offline_access"})
	if _, err := b.CompleteAuthorization(context.Background(), cb); err != nil {
		t.Fatalf("CompleteAuthorization: %v", err)
	}
	rec := accountToken(t, b, "issuer", "alice")
	clock.Advance(2 * time.Hour)
	refreshed := accountToken(t, b, "issuer", "alice")

	authz := f.Calls("/oauth2/authorize")
	v := flowValues{code: cb.Code, state: auth.State, challenge: authz[0].Query.Get("code_challenge")}
	checkRequest(t, f, "authorization request", authz[0], authz[0].Query, wantRequest{path: "/oauth2/authorize", authorization: "user",
		params: map[string]string{"response_type": "code", "client_id": "{client_id}", "redirect_uri": "{redirect}", "state": "{state}",
			"scope": "offline_access openid", "prompt": "consent", "code_challenge": "{challenge}", "code_challenge_method": "S256"}}, v)
	tokens := f.TokenRequests("")
	if len(tokens) != 2 {
		t.Fatalf("the issuer got %d token requests, want 2 (exchange, refresh)", len(tokens))
	}
	checkRequest(t, f, "code exchange", tokens[0], tokens[0].Form, wantRequest{path: "/oauth2/token", authorization: "basic",
		params: map[string]string{"grant_type": "authorization_code", "code": "{code}", "redirect_uri": "{redirect}", "code_verifier": "{verifier}"}}, v)
	v.refresh = tokens[0].AnswerString("refresh_token")
	checkRequest(t, f, "refresh", tokens[1], tokens[1].Form, wantRequest{path: "/oauth2/token", authorization: "basic",
		params: map[string]string{"grant_type": "refresh_token", "refresh_token": "{refresh}"}}, v)
	if rec.IDToken() == "" || rec.IDToken() != tokens[0].AnswerString("id_token") {
		t.Errorf("GetToken served id_token %q, want the issued %q", rec.IDToken(), tokens[0].AnswerString("id_token"))
	}
	if refreshed.AccessToken != tokens[1].AnswerString("access_token") {
		t.Errorf("GetToken after expiry served %q, want the refreshed %q", refreshed.AccessToken, tokens[1].AnswerString("access_token"))
	}
}
