package server_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/fakes"
	"github.com/tokenbroker/tokenbroker/internal/testkeys"
	"github.com/tokenbroker/tokenbroker/server"
)

// This file runs every grant each seed provider offers (../shared/seeds)
// through the real gRPC API and the gateway's consent callback, against the
// provider's fake (internal/fakes), and asserts on what the fake received.
// The fakes fail the test by themselves when the broker does what a
// document forbids. The requests wanted are fakes.SeedWants, which
// broker/seeds_test.go checks one level down, on the broker's Go API.

// seedFake is a seed provider's fake and what an admin gives PutProvider
// for it besides the name, client and redirect URI.
type seedFake struct {
	fake     *fakes.Server
	provider *tokenbrokerv1.Provider
}

// seedStarter starts a seed provider's fake.
type seedStarter struct {
	// tls: the fake serves HTTPS only, with a certificate the broker's
	// default HTTP client does not trust.
	tls   bool
	start func(t *testing.T, opts ...fakes.Option) seedFake
}

// seedFakes start each seed provider's fake, by preset name.
var seedFakes = map[string]seedStarter{
	// MediaCore's document names no endpoints: the admin gives them (and
	// no client auth style: the broker's default, HTTP Basic).
	"mediacore": {tls: true, start: func(t *testing.T, opts ...fakes.Option) seedFake {
		f := fakes.NewMediaCore(t, opts...)
		return seedFake{fake: f.Server, provider: &tokenbrokerv1.Provider{
			Preset: "mediacore", BaseUrl: f.URL(),
			TokenUrl: f.URL() + fakes.MediaCoreTokenPath, AuthorizeUrl: f.URL() + fakes.MediaCoreAuthorizePath,
		}}
	}},
	"mediahound": {start: func(t *testing.T, opts ...fakes.Option) seedFake {
		f := fakes.NewMediaHound(t, opts...)
		return seedFake{fake: f.Server, provider: &tokenbrokerv1.Provider{Preset: "mediahound", BaseUrl: f.URL()}}
	}},
	"mediavalet": {start: func(t *testing.T, opts ...fakes.Option) seedFake {
		f := fakes.NewMediaValet(t, opts...)
		return seedFake{fake: f.Server, provider: &tokenbrokerv1.Provider{Preset: "mediavalet", BaseUrl: f.URL()}}
	}},
	// Mediaflow's authorize page is on another host than its token
	// endpoint: the admin gives it.
	"mediaflow": {start: func(t *testing.T, opts ...fakes.Option) seedFake {
		f := fakes.NewMediaflow(t, opts...)
		return seedFake{fake: f.Server, provider: &tokenbrokerv1.Provider{
			Preset: "mediaflow", BaseUrl: f.URL(), AuthorizeUrl: f.LoginURL() + fakes.MediaflowAuthorizePath,
		}}
	}},
	"mediahaven": {start: func(t *testing.T, opts ...fakes.Option) seedFake {
		f := fakes.NewMediaHaven(t, opts...)
		return seedFake{fake: f.Server, provider: &tokenbrokerv1.Provider{Preset: "mediahaven", BaseUrl: f.URL()}}
	}},
}

// seedTransport sends the broker's token requests with the transport of
// an HTTP client set after the broker started: a TLS fake is started once
// the gateway's callback URL (its redirect URI) is known, and its
// certificate is trusted by its own client only.
type seedTransport struct{ client atomic.Pointer[http.Client] }

func (s *seedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c := s.client.Load()
	if c == nil {
		return nil, errors.New("seedTransport: no fake to reach yet")
	}
	return c.Transport.RoundTrip(r)
}

// seedThen is what a case does once the account has its first token.
type seedThen int

const (
	// seedAgain asks GetToken again at once: the broker serves the token it
	// holds.
	seedAgain seedThen = iota
	// seedExpire moves the clock of the broker and the fake past the
	// token's lifetime and asks GetToken again.
	seedExpire
	// seedStale calls Refresh with the token GetToken served, as a caller
	// whose token the provider refused would.
	seedStale
)

// TestSeedGrantsOverGRPC runs every grant of every seed provider through
// the gRPC API and the gateway: AdminService.PutProvider with the seed's
// preset, then GetToken (client credentials), PutAccount + GetToken
// (password), StartAuthorization + the browser at the authorize URL + the
// gateway's callback page + GetToken (authorization code), then GetToken
// after expiry or Refresh with the stale token (refresh). It asserts what
// the provider received in its last token request (endpoint, client
// authentication, every form field, the PKCE verifier, the redirect URI:
// fakes.SeedWants), how many token requests it got, and that the broker serves what the
// provider issued.
func TestSeedGrantsOverGRPC(t *testing.T) {
	const (
		code     = tokenbrokerv1.GrantType_GRANT_TYPE_AUTHORIZATION_CODE
		password = tokenbrokerv1.GrantType_GRANT_TYPE_PASSWORD
		client   = tokenbrokerv1.GrantType_GRANT_TYPE_CLIENT_CREDENTIALS
	)
	type give struct {
		seed  string
		grant tokenbrokerv1.GrantType
		then  seedThen
	}
	type want struct {
		// token is the grant_type of the last token request.
		token string
		// tokenRequests is how many token requests the fake got in all.
		tokenRequests int
	}
	tests := []struct {
		name string
		give give
		want want
	}{
		{
			name: "mediacore/authorization_code",
			give: give{seed: "mediacore", grant: code},
			want: want{token: "authorization_code", tokenRequests: 1},
		},
		{
			name: "mediacore/refresh_token after expiry",
			give: give{seed: "mediacore", grant: code, then: seedExpire},
			want: want{token: "refresh_token", tokenRequests: 2},
		},
		{
			name: "mediahound/client_credentials",
			give: give{seed: "mediahound", grant: client},
			want: want{token: "client_credentials", tokenRequests: 1},
		},
		{
			name: "mediahound/client_credentials again after expiry",
			give: give{seed: "mediahound", grant: client, then: seedExpire},
			want: want{token: "client_credentials", tokenRequests: 2},
		},
		{
			name: "mediavalet/authorization_code with PKCE",
			give: give{seed: "mediavalet", grant: code},
			want: want{token: "authorization_code", tokenRequests: 1},
		},
		{
			name: "mediavalet/password",
			give: give{seed: "mediavalet", grant: password},
			want: want{token: "password", tokenRequests: 1},
		},
		{
			name: "mediavalet/refresh_token of a consent after expiry",
			give: give{seed: "mediavalet", grant: code, then: seedExpire},
			want: want{token: "refresh_token", tokenRequests: 2},
		},
		{
			name: "mediavalet/refresh_token of a password grant by Refresh",
			give: give{seed: "mediavalet", grant: password, then: seedStale},
			want: want{token: "refresh_token", tokenRequests: 2},
		},
		{
			name: "mediaflow/authorization_code",
			give: give{seed: "mediaflow", grant: code},
			want: want{token: "authorization_code", tokenRequests: 1},
		},
		{
			name: "mediaflow/password",
			give: give{seed: "mediaflow", grant: password},
			want: want{token: "password", tokenRequests: 1},
		},
		{
			name: "mediaflow/refresh_token of a consent after expiry",
			give: give{seed: "mediaflow", grant: code, then: seedExpire},
			want: want{token: "refresh_token", tokenRequests: 2},
		},
		{
			name: "mediaflow/refresh_token of a password grant by Refresh",
			give: give{seed: "mediaflow", grant: password, then: seedStale},
			want: want{token: "refresh_token", tokenRequests: 2},
		},
		{
			name: "mediahaven/authorization_code",
			give: give{seed: "mediahaven", grant: code},
			want: want{token: "authorization_code", tokenRequests: 1},
		},
		{
			name: "mediahaven/password at its own endpoint",
			give: give{seed: "mediahaven", grant: password},
			want: want{token: "password", tokenRequests: 1},
		},
		{
			name: "mediahaven/rotating refresh_token of a consent after expiry",
			give: give{seed: "mediahaven", grant: code, then: seedExpire},
			want: want{token: "refresh_token", tokenRequests: 2},
		},
		{
			name: "mediahaven/rotating refresh_token of a password grant by Refresh",
			give: give{seed: "mediahaven", grant: password, then: seedStale},
			want: want{token: "refresh_token", tokenRequests: 2},
		},
	}
	// accountFor is the account a grant is tried with; "" is the
	// provider's own client identity.
	accountFor := map[tokenbrokerv1.GrantType]string{client: "", password: "bob", code: "alice"}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t)
			seed := seedFakes[tt.give.seed]
			// The broker starts first: the fake registers the gateway's
			// callback as its client's redirect URI.
			var in *instance
			var late *seedTransport
			if seed.tls {
				late = &seedTransport{}
				in = e.startWith(options{quiet: true, transport: late})
			} else {
				in = e.startWith(options{quiet: true})
			}
			callback := in.baseURL + server.CallbackPath
			sf := seed.start(t, fakes.WithClock(e.clock.Now), fakes.WithRedirectURIs(callback))
			f := sf.fake
			if late != nil {
				late.client.Store(f.Client())
			}
			provider, account := tt.give.seed, accountFor[tt.give.grant]
			wants := fakes.SeedWants[tt.give.seed]
			wantToken := fakes.SeedToken(t, tt.give.seed, tt.want.token)

			p := proto.Clone(sf.provider).(*tokenbrokerv1.Provider)
			p.Name, p.ClientId, p.RedirectUri = provider, f.ClientID(), callback
			if _, err := in.admin.PutProvider(ctx, &tokenbrokerv1.PutProviderRequest{Provider: p, ClientSecret: f.ClientSecret()}); err != nil {
				t.Fatalf("PutProvider(%s, preset %s): %v", provider, p.Preset, err)
			}

			getToken := func() *tokenbrokerv1.Token {
				t.Helper()
				resp, err := in.tokens.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: provider, Account: account})
				if err != nil {
					t.Fatalf("GetToken(%s, %q): %v", provider, account, err)
				}
				return resp.GetToken()
			}

			v := fakes.FlowValues{Redirect: callback}
			switch tt.give.grant {
			case password:
				if _, err := in.admin.PutAccount(ctx, &tokenbrokerv1.PutAccountRequest{Provider: provider, Account: account,
					GrantType: password, Username: fakes.User, Password: fakes.Password}); err != nil {
					t.Fatalf("PutAccount(%s, %s): %v", provider, account, err)
				}
			case code:
				authz, err := in.admin.StartAuthorization(ctx, &tokenbrokerv1.StartAuthorizationRequest{Provider: provider, Account: account})
				if err != nil {
					t.Fatalf("StartAuthorization(%s, %s): %v", provider, account, err)
				}
				// The browser: sign in at the provider, which sends it back
				// to the gateway's callback page.
				loc, err := f.Consent(authz.GetAuthorizeUrl(), fakes.User, fakes.Password)
				if err != nil {
					t.Fatalf("consent at %s: %v", authz.GetAuthorizeUrl(), err)
				}
				if back := strings.TrimSuffix(loc.String(), "?"+loc.RawQuery); back != callback {
					t.Fatalf("the provider sent the browser to %s, want the gateway's callback %s", back, callback)
				}
				if got := loc.Query().Get("state"); got != authz.GetState() {
					t.Errorf("the callback carries state %q, want %q", got, authz.GetState())
				}
				if pg := getPage(t, loc.String()); pg.code != http.StatusOK || !strings.Contains(pg.body, "Authorization complete") {
					t.Fatalf("callback page = %d %q, want 200 with the success page", pg.code, pg.body)
				}
				v.Code, v.State = loc.Query().Get("code"), authz.GetState()
				v = fakes.CheckAuthorization(t, f, wants.Authorize, v)
			}
			first := getToken()
			if reqs := f.TokenRequests(""); len(reqs) > 0 {
				v.Refresh = reqs[len(reqs)-1].AnswerString("refresh_token")
			}

			var tok *tokenbrokerv1.Token
			switch tt.give.then {
			case seedAgain:
				tok = getToken()
			case seedExpire:
				e.clock.Advance(2 * time.Hour) // the fakes' tokens live 1 h, refresh tokens 24 h
				tok = getToken()
			case seedStale:
				resp, err := in.tokens.Refresh(ctx, &tokenbrokerv1.RefreshRequest{Provider: provider, Account: account,
					StaleAccessToken: first.GetAccessToken()})
				if err != nil {
					t.Fatalf("Refresh(%s, %q): %v", provider, account, err)
				}
				tok = resp.GetToken()
			}

			last := fakes.CheckTokenRequests(t, f, tt.want.tokenRequests, wantToken, v)
			served := fakes.Served{AccessToken: tok.GetAccessToken(), IDToken: tok.GetIdToken(), TokenType: tok.GetTokenType(),
				ExpiresAt: tok.GetExpiresAt().AsTime()}
			if len(f.RefreshTokens()) > 0 {
				// The seeds revoke on refresh or do not say: a token of a
				// grant with a refresh token is served until its hand-over,
				// the refresher's 2s minimum lead before the provider's
				// expiry.
				served.ProviderExpiresAt = served.ExpiresAt.Add(2 * time.Second)
			}
			fakes.CheckServed(t, served, last, e.clock.Now(), wants.IDToken)
			if tt.give.then != seedAgain && tok.GetAccessToken() == first.GetAccessToken() {
				t.Errorf("the broker served the first access token %q again, want a new one", first.GetAccessToken())
			}
			if got, want := tok.GetProvider()+"/"+tok.GetAccount(), provider+"/"+account; got != want {
				t.Errorf("the broker served a token of %s, want %s", got, want)
			}
			if account == "" {
				return // client credentials: no account, no grant
			}
			grants, err := in.admin.ListGrants(ctx, &tokenbrokerv1.ListGrantsRequest{Provider: provider})
			if err != nil {
				t.Fatalf("ListGrants(%s): %v", provider, err)
			}
			var g *tokenbrokerv1.Grant
			for _, gr := range grants.GetGrants() {
				if gr.GetAccount() == account {
					g = gr
				}
			}
			if g == nil {
				t.Fatalf("ListGrants(%s) = %v, want account %q", provider, grants.GetGrants(), account)
			}
			issued := f.RefreshTokens()
			if len(issued) == 0 {
				t.Fatalf("the fake issued no refresh token, want one for %s", tt.give.grant)
			}
			if got, want := g.GetRefreshToken().GetFingerprint(), testkeys.Keyring().Fingerprint(issued[len(issued)-1]); got != want {
				t.Errorf("the grant holds refresh token fingerprint %q, want %q (the last one the provider issued)", got, want)
			}
			if got, want := g.GetHealth(), tokenbrokerv1.GrantHealth_GRANT_HEALTH_OK; got != want {
				t.Errorf("the grant's health is %s (last error %q), want %s", got, g.GetLastError(), want)
			}
		})
	}
}
