package broker

import (
	"context"
	"encoding/base64"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/oauth"
	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
	"github.com/tokenbroker/tokenbroker/internal/fakes"
)

// This file runs every grant each seed provider offers (../shared/seeds)
// through the broker's API against the provider's fake (internal/fakes),
// and asserts on what the fake received. The fakes fail the test by
// themselves when the broker does what a document forbids.

// seedEnv is a seed provider's fake and the broker's registration with it.
type seedEnv struct {
	fake *fakes.Server
	// provider holds what an admin sets before the preset fills the rest.
	provider Provider
	preset   string
	base     string
	// brokerOpts are what the broker needs to reach the fake.
	brokerOpts []brokerOption
}

// seedFakes start the fake of each seed provider, by preset name.
var seedFakes = map[string]func(t *testing.T, opts ...fakes.Option) seedEnv{
	// MediaCore names no endpoints: the admin gives them, and the auth
	// style. Its fake serves TLS only.
	"mediacore": func(t *testing.T, opts ...fakes.Option) seedEnv {
		f := fakes.NewMediaCore(t, opts...)
		return seedEnv{
			fake: f.Server, preset: "mediacore",
			provider: Provider{
				AuthorizeURL: f.URL() + fakes.MediaCoreAuthorizePath, TokenURL: f.URL() + fakes.MediaCoreTokenPath,
				ClientAuth: oauth.AuthBasic,
			},
			brokerOpts: []brokerOption{withOAuth(&oauth.Client{HTTPClient: f.Client()})},
		}
	},
	"mediahound": func(t *testing.T, opts ...fakes.Option) seedEnv {
		f := fakes.NewMediaHound(t, opts...)
		return seedEnv{fake: f.Server, preset: "mediahound", base: f.URL()}
	},
	"mediavalet": func(t *testing.T, opts ...fakes.Option) seedEnv {
		f := fakes.NewMediaValet(t, opts...)
		return seedEnv{fake: f.Server, preset: "mediavalet", base: f.URL()}
	},
	// Mediaflow's authorize page is on another host than its token
	// endpoint: the admin gives it.
	"mediaflow": func(t *testing.T, opts ...fakes.Option) seedEnv {
		f := fakes.NewMediaflow(t, opts...)
		return seedEnv{
			fake: f.Server, preset: "mediaflow", base: f.URL(),
			provider: Provider{AuthorizeURL: f.LoginURL() + fakes.MediaflowAuthorizePath},
		}
	},
	"mediahaven": func(t *testing.T, opts ...fakes.Option) seedEnv {
		f := fakes.NewMediaHaven(t, opts...)
		return seedEnv{fake: f.Server, preset: "mediahaven", base: f.URL()}
	},
}

// withBackgroundRefreshOff turns the broker's background refresher off, so
// that only the test's calls reach the provider.
func withBackgroundRefreshOff() brokerOption {
	return func(s *brokerSetup) { s.cfg.Refresh.Disabled = true }
}

// withReplicaName names the broker instance.
func withReplicaName(name string) brokerOption {
	return func(s *brokerSetup) { s.cfg.Replica = name }
}

// registerSeed registers env's provider under name with b: the admin's
// fields, then the preset, then PutProvider with the fake's client secret.
func registerSeed(t *testing.T, b *Broker, name string, env seedEnv) *Provider {
	t.Helper()
	p := env.provider
	p.Name, p.ClientID, p.RedirectURL = name, env.fake.ClientID(), fakes.RedirectURI
	if err := b.ApplyPreset(context.Background(), &p, env.preset, env.base); err != nil {
		t.Fatalf("ApplyPreset(%s, %s): %v", env.preset, env.base, err)
	}
	return putProvider(t, b, p, env.fake.ClientSecret())
}

// startSeed starts seed's fake on clock and a broker (background refresher
// off) on e that knows it as provider seed.
func startSeed(t *testing.T, e *etcdtest.Etcd, clock *fakeClock, seed string, opts ...fakes.Option) (*Broker, seedEnv) {
	t.Helper()
	env := seedFakes[seed](t, append([]fakes.Option{fakes.WithClock(clock.Now)}, opts...)...)
	b := newTestBroker(t, e, append([]brokerOption{withClock(clock), withBackgroundRefreshOff()}, env.brokerOpts...)...)
	registerSeed(t, b, seed, env)
	return b, env
}

// consentInBrowser starts an authorization of account, approves it at the fake as
// the user's browser would, and returns the callback the provider sent the
// browser to (not yet given to the broker).
func consentInBrowser(t *testing.T, b *Broker, f *fakes.Server, provider, account string, scopes []string) (*Authorization, Callback) {
	t.Helper()
	auth, err := b.StartAuthorization(context.Background(), provider, account, scopes)
	if err != nil {
		t.Fatalf("StartAuthorization(%s, %s): %v", provider, account, err)
	}
	loc, err := f.Consent(auth.URL, fakes.User, fakes.Password)
	if err != nil {
		t.Fatalf("consent at %s: %v", auth.URL, err)
	}
	q := loc.Query()
	if back := strings.TrimSuffix(loc.String(), "?"+loc.RawQuery); back != fakes.RedirectURI {
		t.Errorf("the provider sent the browser to %s, want the broker's callback %s", back, fakes.RedirectURI)
	}
	if q.Get("state") != auth.State {
		t.Errorf("the callback carries state %q, want %q", q.Get("state"), auth.State)
	}
	return auth, Callback{State: q.Get("state"), Code: q.Get("code"), Error: q.Get("error"), ErrorDescription: q.Get("error_description")}
}

// authorizeAccount runs a whole consent flow for account and returns the
// grant the broker stored.
func authorizeAccount(t *testing.T, b *Broker, f *fakes.Server, provider, account string, scopes []string) *Grant {
	t.Helper()
	_, cb := consentInBrowser(t, b, f, provider, account, scopes)
	g, err := b.CompleteAuthorization(context.Background(), cb)
	if err != nil {
		t.Fatalf("CompleteAuthorization(%s, %s): %v", provider, account, err)
	}
	return g
}

// putPasswordAccount makes account a password account of the fake's user.
func putPasswordAccount(t *testing.T, b *Broker, provider, account, password string) *Grant {
	t.Helper()
	g, err := b.PutAccount(context.Background(), Account{Provider: provider, Account: account, Type: GrantPassword,
		Username: fakes.User, Password: password})
	if err != nil {
		t.Fatalf("PutAccount(%s, %s): %v", provider, account, err)
	}
	return g
}

// accountToken asks b for account's default-scope token and fails the test
// on an error.
func accountToken(t *testing.T, b *Broker, provider, account string) *TokenRecord {
	t.Helper()
	rec, err := b.GetToken(context.Background(), TokenRequest{Provider: provider, Account: account})
	if err != nil {
		t.Fatalf("GetToken(%s, %s): %v", provider, account, err)
	}
	return rec
}

// grantOf reads account's grant through ListGrants.
func grantOf(t *testing.T, b *Broker, provider, account string) *Grant {
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

func basicAuthHeader(id, secret string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(id+":"+secret))
}

// wantRequest is fakes.WantRequest in this package's words: authorization
// is "basic" for the client's HTTP Basic credentials, "user" for the user's,
// "" for none.
type wantRequest struct {
	path, authorization string
	params              map[string]string
}

// flowValues are fakes.FlowValues with the broker's redirect URI,
// fakes.RedirectURI.
type flowValues struct {
	code, state, challenge, refresh string
}

// checkRequest compares a request the fake received with want, as
// fakes.CheckRequest does.
func checkRequest(t *testing.T, f *fakes.Server, what string, got fakes.Request, params url.Values, want wantRequest, v flowValues) {
	t.Helper()
	fakes.CheckRequest(t, f, what, got, params,
		fakes.WantRequest{Path: want.path, Auth: fakes.Auth(want.authorization), Params: want.params},
		fakes.FlowValues{Code: v.code, State: v.state, Challenge: v.challenge, Refresh: v.refresh})
}

// TestSeedGrants runs every grant of every seed provider through the
// broker: PutProvider with the seed's preset, then GetToken (client
// credentials), PutAccount + GetToken (password), StartAuthorization + the
// browser + CompleteAuthorization + GetToken (authorization code), and a
// GetToken after expiry (refresh). It asserts what the provider received,
// as fakes.SeedWants says a client sends it: the endpoint, the client
// authentication, every form field, PKCE, the redirect_uri; and that
// GetToken serves what the provider issued.
func TestSeedGrants(t *testing.T) {
	type give struct {
		seed string
		// grant is how the first token is obtained; then the clock moves
		// by expire and the token is asked for again.
		grant  GrantType
		expire time.Duration
	}
	type want struct {
		// token is the grant_type of the last token request.
		token GrantType
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
			give: give{seed: "mediacore", grant: GrantAuthorizationCode},
			want: want{token: GrantAuthorizationCode, tokenRequests: 1},
		},
		{
			name: "mediacore/refresh_token",
			give: give{seed: "mediacore", grant: GrantAuthorizationCode, expire: 2 * time.Hour},
			want: want{token: GrantRefreshToken, tokenRequests: 2},
		},
		{
			name: "mediahound/client_credentials",
			give: give{seed: "mediahound", grant: GrantClientCredentials},
			want: want{token: GrantClientCredentials, tokenRequests: 1},
		},
		{
			name: "mediahound/client_credentials again after expiry",
			give: give{seed: "mediahound", grant: GrantClientCredentials, expire: 2 * time.Hour},
			want: want{token: GrantClientCredentials, tokenRequests: 2},
		},
		{
			name: "mediavalet/authorization_code",
			give: give{seed: "mediavalet", grant: GrantAuthorizationCode},
			want: want{token: GrantAuthorizationCode, tokenRequests: 1},
		},
		{
			name: "mediavalet/password",
			give: give{seed: "mediavalet", grant: GrantPassword},
			want: want{token: GrantPassword, tokenRequests: 1},
		},
		{
			name: "mediavalet/refresh_token",
			give: give{seed: "mediavalet", grant: GrantAuthorizationCode, expire: 2 * time.Hour},
			want: want{token: GrantRefreshToken, tokenRequests: 2},
		},
		{
			name: "mediaflow/authorization_code",
			give: give{seed: "mediaflow", grant: GrantAuthorizationCode},
			want: want{token: GrantAuthorizationCode, tokenRequests: 1},
		},
		{
			name: "mediaflow/password",
			give: give{seed: "mediaflow", grant: GrantPassword},
			want: want{token: GrantPassword, tokenRequests: 1},
		},
		{
			name: "mediaflow/refresh_token",
			give: give{seed: "mediaflow", grant: GrantPassword, expire: 2 * time.Hour},
			want: want{token: GrantRefreshToken, tokenRequests: 2},
		},
		{
			name: "mediahaven/authorization_code",
			give: give{seed: "mediahaven", grant: GrantAuthorizationCode},
			want: want{token: GrantAuthorizationCode, tokenRequests: 1},
		},
		{
			name: "mediahaven/password at its own endpoint",
			give: give{seed: "mediahaven", grant: GrantPassword},
			want: want{token: GrantPassword, tokenRequests: 1},
		},
		{
			name: "mediahaven/refresh_token of a consent",
			give: give{seed: "mediahaven", grant: GrantAuthorizationCode, expire: 2 * time.Hour},
			want: want{token: GrantRefreshToken, tokenRequests: 2},
		},
		{
			name: "mediahaven/refresh_token of a password grant",
			give: give{seed: "mediahaven", grant: GrantPassword, expire: 2 * time.Hour},
			want: want{token: GrantRefreshToken, tokenRequests: 2},
		},
	}
	// accountFor is the account a grant is tried with; "" is the
	// provider's own client identity.
	accountFor := map[GrantType]string{GrantClientCredentials: "", GrantPassword: "bob", GrantAuthorizationCode: "alice"}
	// seedRun is one run of the test.
	type seedRun struct {
		b                 *Broker
		f                 *fakes.Server
		provider, account string
		authorize         fakes.WantRequest
	}
	// obtain gets an account's first token by grant, as an admin and a
	// caller would, and returns the values of the flow.
	obtain := map[GrantType]func(t *testing.T, r seedRun) fakes.FlowValues{
		GrantClientCredentials: func(t *testing.T, r seedRun) fakes.FlowValues {
			accountToken(t, r.b, r.provider, r.account)
			return fakes.FlowValues{}
		},
		GrantPassword: func(t *testing.T, r seedRun) fakes.FlowValues {
			putPasswordAccount(t, r.b, r.provider, r.account, fakes.Password)
			accountToken(t, r.b, r.provider, r.account)
			return fakes.FlowValues{}
		},
		GrantAuthorizationCode: func(t *testing.T, r seedRun) fakes.FlowValues {
			auth, cb := consentInBrowser(t, r.b, r.f, r.provider, r.account, nil)
			v := fakes.CheckAuthorization(t, r.f, r.authorize, fakes.FlowValues{Code: cb.Code, State: auth.State})
			if _, err := r.b.CompleteAuthorization(context.Background(), cb); err != nil {
				t.Fatalf("CompleteAuthorization: %v", err)
			}
			accountToken(t, r.b, r.provider, r.account)
			return v
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := etcdtest.Start(t)
			clock := newClock()
			b, env := startSeed(t, e, clock, tt.give.seed)
			f := env.fake
			provider, account := tt.give.seed, accountFor[tt.give.grant]
			seed := fakes.SeedWants[tt.give.seed]
			wantToken := fakes.SeedToken(t, tt.give.seed, string(tt.want.token))

			v := obtain[tt.give.grant](t, seedRun{b: b, f: f, provider: provider, account: account, authorize: seed.Authorize})
			v.Refresh = lastOr(f.TokenRequests(""), fakes.Request{}).AnswerString("refresh_token")
			clock.Advance(tt.give.expire)
			rec := accountToken(t, b, provider, account)

			last := fakes.CheckTokenRequests(t, f, tt.want.tokenRequests, wantToken, v)
			fakes.CheckServed(t, fakes.Served{AccessToken: rec.AccessToken, IDToken: rec.IDToken(), TokenType: rec.Type(), ExpiresAt: rec.ExpiresAt, ProviderExpiresAt: rec.ProviderExpiresAt()},
				last, clock.Now(), seed.IDToken)
			g := grantOf(t, b, provider, account)
			// Every seed that refreshes revokes on refresh or does not say
			// (MediaHaven says it does): a token of a grant with a refresh
			// token is served until its hand-over.
			if handedOver := !rec.ProviderExpiresAt().IsZero(); handedOver != (g.RefreshToken != "") {
				t.Errorf("token served until a hand-over: %t, want %t (the grant holds a refresh token: %t)", handedOver, !handedOver, g.RefreshToken != "")
			}
			if want := f.RefreshTokens(); g.RefreshToken != lastOr(want, "") || g.Health != HealthOK {
				t.Errorf("grant holds refresh token %q, health %s; want %q (the last one issued), ok", g.RefreshToken, g.Health, lastOr(want, ""))
			}
		})
	}
}

func lastOr[T any](s []T, def T) T {
	if len(s) == 0 {
		return def
	}
	return s[len(s)-1]
}

// TestMediaCoreBearerToken shows that the token the broker serves for a
// MediaCore account opens MediaCore's API as a bearer token over HTTPS.
func TestMediaCoreBearerToken(t *testing.T) {
	e := etcdtest.Start(t)
	clock := newClock()
	b, env := startSeed(t, e, clock, "mediacore")
	authorizeAccount(t, b, env.fake, "mediacore", "alice", nil)
	rec := accountToken(t, b, "mediacore", "alice")
	mc := &fakes.MediaCore{Server: env.fake}
	if got, err := mc.CallAPI(rec.AccessToken); err != nil || got != 200 {
		t.Errorf("MediaCore API with the served token = %d, %v; want 200", got, err)
	}
	if !strings.HasPrefix(env.fake.URL(), "https://") {
		t.Errorf("MediaCore's fake is at %s, want https", env.fake.URL())
	}
}
