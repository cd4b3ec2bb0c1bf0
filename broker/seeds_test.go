package broker

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"maps"
	"net/url"
	"slices"
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

func pkceS256(verifier string) string {
	sum := sha256.Sum256([]byte(verifier))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

func basicAuthHeader(id, secret string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(id+":"+secret))
}

// wantRequest is what a test wants a fake to have received.
type wantRequest struct {
	path string
	// authorization is the Authorization header: "basic" for the client's
	// HTTP Basic credentials, "user" for the user's, "" for none.
	authorization string
	// params are exactly the parameters (form or query) wanted. A value in
	// braces stands for one known at run time: {code}, {redirect},
	// {verifier} (its S256 is the authorization request's challenge),
	// {challenge}, {state}, {refresh} (the refresh token of the previous
	// token answer), {client_id}, {client_secret}, {user}, {password}.
	params map[string]string
}

// seedRun is one run of TestSeedGrants.
type seedRun struct {
	b                 *Broker
	f                 *fakes.Server
	provider, account string
	authorize         wantRequest
}

// flowValues are the values the braces in wantRequest.params stand for.
type flowValues struct {
	code, state, challenge, refresh string
}

// checkRequest compares a request the fake received with want.
func checkRequest(t *testing.T, f *fakes.Server, what string, got fakes.Request, params url.Values, want wantRequest, v flowValues) {
	t.Helper()
	if got.Path != want.path {
		t.Errorf("%s went to %s, want %s", what, got.Path, want.path)
	}
	wantAuth := map[string]string{
		"basic": basicAuthHeader(f.ClientID(), f.ClientSecret()),
		"user":  basicAuthHeader(fakes.User, fakes.Password),
	}[want.authorization]
	if a := got.Header.Get("Authorization"); a != wantAuth {
		t.Errorf("%s has Authorization %q, want %q", what, a, wantAuth)
	}
	for _, k := range slices.Sorted(maps.Keys(want.params)) {
		w, g := want.params[k], params[k]
		if len(g) != 1 {
			t.Errorf("%s has %s = %q, want one value (%s)", what, k, g, w)
			continue
		}
		switch w {
		case "{verifier}":
			if pkceS256(g[0]) != v.challenge {
				t.Errorf("%s has code_verifier %q whose S256 is %q, want the challenge %q", what, g[0], pkceS256(g[0]), v.challenge)
			}
			continue
		case "{challenge}":
			if len(g[0]) != 43 {
				t.Errorf("%s has code_challenge %q, want 43 base64url characters (S256)", what, g[0])
			}
			continue
		}
		w = strings.NewReplacer("{code}", v.code, "{redirect}", fakes.RedirectURI, "{state}", v.state,
			"{refresh}", v.refresh, "{client_id}", f.ClientID(), "{client_secret}", f.ClientSecret(),
			"{user}", fakes.User, "{password}", fakes.Password).Replace(w)
		if g[0] != w {
			t.Errorf("%s has %s = %q, want %q", what, k, g[0], w)
		}
	}
	for k := range params {
		if _, ok := want.params[k]; !ok {
			t.Errorf("%s has %s = %q, want no such parameter", what, k, params[k])
		}
	}
}

// TestSeedGrants runs every grant of every seed provider through the
// broker: PutProvider with the seed's preset, then GetToken (client
// credentials), PutAccount + GetToken (password), StartAuthorization + the
// browser + CompleteAuthorization + GetToken (authorization code), and a
// GetToken after expiry (refresh). It asserts what the provider received:
// the endpoint, the client authentication, every form field, PKCE, the
// redirect_uri; and that GetToken serves what the provider issued.
func TestSeedGrants(t *testing.T) {
	// The browser signs the user in with the sandbox's Basic shortcut.
	code := func(path string, params map[string]string) wantRequest {
		return wantRequest{path: path, authorization: "user", params: params}
	}
	// The authorization requests wanted, per seed.
	plainAuthorize := map[string]string{"response_type": "code", "client_id": "{client_id}", "redirect_uri": "{redirect}", "state": "{state}"}
	valetAuthorize := map[string]string{"response_type": "code", "client_id": "{client_id}", "redirect_uri": "{redirect}", "state": "{state}",
		"scope": "api offline_access openid", "prompt": "consent", "code_challenge": "{challenge}", "code_challenge_method": "S256"}
	inBody := map[string]string{"client_id": "{client_id}", "client_secret": "{client_secret}"}
	with := func(base map[string]string, kv ...string) map[string]string {
		m := maps.Clone(base)
		if m == nil {
			m = map[string]string{}
		}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}

	type give struct {
		seed string
		// grant is how the first token is obtained; then the clock moves
		// by expire and the token is asked for again.
		grant  GrantType
		expire time.Duration
	}
	type want struct {
		authorize wantRequest // for the authorization_code grant
		token     wantRequest // the last token request
		// tokenRequests is how many token requests the fake got in all.
		tokenRequests int
		idToken       bool
	}
	tests := []struct {
		name string
		give give
		want want
	}{
		{
			name: "mediacore/authorization_code",
			give: give{seed: "mediacore", grant: GrantAuthorizationCode},
			want: want{
				authorize: code(fakes.MediaCoreAuthorizePath, plainAuthorize),
				token: wantRequest{path: fakes.MediaCoreTokenPath, authorization: "basic",
					params: map[string]string{"grant_type": "authorization_code", "code": "{code}", "redirect_uri": "{redirect}"}},
				tokenRequests: 1,
			},
		},
		{
			name: "mediacore/refresh_token",
			give: give{seed: "mediacore", grant: GrantAuthorizationCode, expire: 2 * time.Hour},
			want: want{
				authorize: code(fakes.MediaCoreAuthorizePath, plainAuthorize),
				token: wantRequest{path: fakes.MediaCoreTokenPath, authorization: "basic",
					params: map[string]string{"grant_type": "refresh_token", "refresh_token": "{refresh}"}},
				tokenRequests: 2,
			},
		},
		{
			name: "mediahound/client_credentials",
			give: give{seed: "mediahound", grant: GrantClientCredentials},
			want: want{
				token: wantRequest{path: fakes.MediaHoundTokenPath, authorization: "basic",
					params: with(inBody, "grant_type", "client_credentials")},
				tokenRequests: 1,
			},
		},
		{
			name: "mediahound/client_credentials again after expiry",
			give: give{seed: "mediahound", grant: GrantClientCredentials, expire: 2 * time.Hour},
			want: want{
				token: wantRequest{path: fakes.MediaHoundTokenPath, authorization: "basic",
					params: with(inBody, "grant_type", "client_credentials")},
				tokenRequests: 2,
			},
		},
		{
			name: "mediavalet/authorization_code",
			give: give{seed: "mediavalet", grant: GrantAuthorizationCode},
			want: want{
				authorize: code(fakes.MediaValetAuthorizePath, valetAuthorize),
				token: wantRequest{path: fakes.MediaValetTokenPath,
					params: with(inBody, "grant_type", "authorization_code", "code", "{code}", "redirect_uri", "{redirect}", "code_verifier", "{verifier}")},
				tokenRequests: 1, idToken: true,
			},
		},
		{
			name: "mediavalet/password",
			give: give{seed: "mediavalet", grant: GrantPassword},
			want: want{
				token: wantRequest{path: fakes.MediaValetTokenPath,
					params: with(inBody, "grant_type", "password", "username", "{user}", "password", "{password}", "scope", "api offline_access openid")},
				tokenRequests: 1, idToken: true,
			},
		},
		{
			name: "mediavalet/refresh_token",
			give: give{seed: "mediavalet", grant: GrantAuthorizationCode, expire: 2 * time.Hour},
			want: want{
				authorize: code(fakes.MediaValetAuthorizePath, valetAuthorize),
				token: wantRequest{path: fakes.MediaValetTokenPath,
					params: with(inBody, "grant_type", "refresh_token", "refresh_token", "{refresh}")},
				tokenRequests: 2, idToken: true,
			},
		},
		{
			name: "mediaflow/authorization_code",
			give: give{seed: "mediaflow", grant: GrantAuthorizationCode},
			want: want{
				authorize: code(fakes.MediaflowAuthorizePath, plainAuthorize),
				token: wantRequest{path: fakes.MediaflowTokenPath,
					params: with(inBody, "grant_type", "authorization_code", "code", "{code}", "redirect_uri", "{redirect}")},
				tokenRequests: 1,
			},
		},
		{
			name: "mediaflow/password",
			give: give{seed: "mediaflow", grant: GrantPassword},
			want: want{
				token: wantRequest{path: fakes.MediaflowTokenPath,
					params: with(inBody, "grant_type", "password", "username", "{user}", "password", "{password}")},
				tokenRequests: 1,
			},
		},
		{
			name: "mediaflow/refresh_token",
			give: give{seed: "mediaflow", grant: GrantPassword, expire: 2 * time.Hour},
			want: want{
				token: wantRequest{path: fakes.MediaflowTokenPath,
					params: with(inBody, "grant_type", "refresh_token", "refresh_token", "{refresh}")},
				tokenRequests: 2,
			},
		},
		{
			name: "mediahaven/authorization_code",
			give: give{seed: "mediahaven", grant: GrantAuthorizationCode},
			want: want{
				authorize: code(fakes.MediaHavenAuthorizePath, plainAuthorize),
				token: wantRequest{path: fakes.MediaHavenTokenPath,
					params: with(inBody, "grant_type", "authorization_code", "code", "{code}", "redirect_uri", "{redirect}")},
				tokenRequests: 1,
			},
		},
		{
			name: "mediahaven/password at its own endpoint",
			give: give{seed: "mediahaven", grant: GrantPassword},
			want: want{
				token: wantRequest{path: fakes.MediaHavenPasswordPath,
					params: with(inBody, "grant_type", "password", "username", "{user}", "password", "{password}")},
				tokenRequests: 1,
			},
		},
		{
			name: "mediahaven/refresh_token of a consent",
			give: give{seed: "mediahaven", grant: GrantAuthorizationCode, expire: 2 * time.Hour},
			want: want{
				authorize: code(fakes.MediaHavenAuthorizePath, plainAuthorize),
				token: wantRequest{path: fakes.MediaHavenTokenPath,
					params: with(inBody, "grant_type", "refresh_token", "refresh_token", "{refresh}")},
				tokenRequests: 2,
			},
		},
		{
			name: "mediahaven/refresh_token of a password grant",
			give: give{seed: "mediahaven", grant: GrantPassword, expire: 2 * time.Hour},
			want: want{
				token: wantRequest{path: fakes.MediaHavenTokenPath,
					params: with(inBody, "grant_type", "refresh_token", "refresh_token", "{refresh}")},
				tokenRequests: 2,
			},
		},
	}
	// accountFor is the account a grant is tried with; "" is the
	// provider's own client identity.
	accountFor := map[GrantType]string{GrantClientCredentials: "", GrantPassword: "bob", GrantAuthorizationCode: "alice"}
	// obtain gets an account's first token by grant, as an admin and a
	// caller would, and returns the values of the flow.
	obtain := map[GrantType]func(t *testing.T, r seedRun) flowValues{
		GrantClientCredentials: func(t *testing.T, r seedRun) flowValues {
			accountToken(t, r.b, r.provider, r.account)
			return flowValues{}
		},
		GrantPassword: func(t *testing.T, r seedRun) flowValues {
			putPasswordAccount(t, r.b, r.provider, r.account, fakes.Password)
			accountToken(t, r.b, r.provider, r.account)
			return flowValues{}
		},
		GrantAuthorizationCode: func(t *testing.T, r seedRun) flowValues {
			auth, cb := consentInBrowser(t, r.b, r.f, r.provider, r.account, nil)
			authz := r.f.Calls(r.authorize.path)
			if len(authz) != 1 {
				t.Fatalf("the fake got %d requests at %s, want 1 authorization request", len(authz), r.authorize.path)
			}
			v := flowValues{code: cb.Code, state: auth.State, challenge: authz[0].Query.Get("code_challenge")}
			checkRequest(t, r.f, "authorization request", authz[0], authz[0].Query, r.authorize, v)
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

			v := obtain[tt.give.grant](t, seedRun{b: b, f: f, provider: provider, account: account, authorize: tt.want.authorize})
			v.refresh = lastOr(f.TokenRequests(""), fakes.Request{}).AnswerString("refresh_token")
			clock.Advance(tt.give.expire)
			rec := accountToken(t, b, provider, account)

			reqs := f.TokenRequests("")
			if len(reqs) != tt.want.tokenRequests {
				t.Fatalf("the fake got %d token requests, want %d", len(reqs), tt.want.tokenRequests)
			}
			last := reqs[len(reqs)-1]
			checkRequest(t, f, "token request", last, last.Form, tt.want.token, v)
			for h, want := range map[string]string{"Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded"} {
				if got := last.Header.Get(h); got != want {
					t.Errorf("token request has %s %q, want %q", h, got, want)
				}
			}
			if last.Status != 200 {
				t.Fatalf("the fake answered the token request %d %v, want 200", last.Status, last.Answer)
			}
			if want := last.AnswerString("access_token"); rec.AccessToken != want {
				t.Errorf("GetToken served %q, want %q, the access token the provider issued", rec.AccessToken, want)
			}
			if want := last.AnswerString("id_token"); rec.IDToken != want || (want != "") != tt.want.idToken {
				t.Errorf("GetToken served id_token %q, want %q (an id_token wanted: %t)", rec.IDToken, want, tt.want.idToken)
			}
			if rec.Type() != "Bearer" {
				t.Errorf("GetToken served token type %q, want Bearer", rec.Type())
			}
			if want := clock.Now().Add(time.Duration(last.Answer["expires_in"].(float64)) * time.Second); !rec.ExpiresAt.Equal(want) {
				t.Errorf("GetToken served a token expiring at %v, want %v (expires_in %v)", rec.ExpiresAt, want, last.Answer["expires_in"])
			}
			if n := f.ReusedRefreshTokens(); n != 0 {
				t.Errorf("the provider saw %d reused refresh tokens, want 0", n)
			}
			g := grantOf(t, b, provider, account)
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
