package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
	"github.com/tokenbroker/tokenbroker/internal/fakes"
	"github.com/tokenbroker/tokenbroker/sandbox"
)

// activeAt asks sb's introspection endpoint, as the provider's own API
// would decide, whether token is an active access token.
func activeAt(t *testing.T, sb *sandbox.Server, clientID, secret, token string) bool {
	t.Helper()
	form := url.Values{"token": {token}}
	req := httptest.NewRequest(http.MethodPost, sandbox.IntrospectPath, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(url.QueryEscape(clientID), url.QueryEscape(secret))
	rr := httptest.NewRecorder()
	sb.ServeHTTP(rr, req)
	var in struct {
		Active bool `json:"active"`
	}
	if err := json.Unmarshal(rr.Body.Bytes(), &in); err != nil || rr.Code != http.StatusOK {
		t.Errorf("introspect at the provider answered %d %q", rr.Code, rr.Body.Bytes())
	}
	return in.Active
}

// countingSandbox serves a sandbox and counts the introspection requests
// it receives.
type countingSandbox struct {
	*httptest.Server
	sb             *sandbox.Server
	introspections atomic.Int64
}

func newCountingSandbox(t *testing.T, cfg sandbox.Config) *countingSandbox {
	t.Helper()
	cfg.Clients = map[string]string{sandboxClientID: sandboxClientSecret}
	sb, err := sandbox.New(cfg)
	if err != nil {
		t.Fatalf("sandbox.New: %v", err)
	}
	c := &countingSandbox{sb: sb}
	c.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == sandbox.IntrospectPath {
			c.introspections.Add(1)
		}
		sb.ServeHTTP(w, r)
	}))
	t.Cleanup(c.Close)
	return c
}

// servedToken is a token handed out, with the expiry it was served with.
type servedToken struct {
	token             string
	expiresAt         time.Time
	providerExpiresAt time.Time
}

// TestServedExpiryIsAPromise hands out tokens of a password account,
// refreshed with its refresh token, for several of their (short)
// lifetimes, from two replicas that share etcd and whose elected refresher
// keeps the token warm; and introspects every token handed out at the
// provider shortly before the expiry it was served with. A provider that
// revokes the previous access token on refresh (MediaHaven), whether the
// broker is told so (the preset), learns it (introspection) or assumes it
// (no introspection), finds no token inactive: the broker serves each token
// until its hand-over and replaces it then, not before. A provider that
// keeps access tokens is learned to, and its tokens are served until the
// provider's expiry.
func TestServedExpiryIsAPromise(t *testing.T) {
	t.Parallel() // mostly waiting
	const (
		lifetime = 5 * time.Second
		run      = 14 * time.Second
		minTTL   = time.Second
		// checkBefore is how long before its served expiry a token is
		// introspected at the provider.
		checkBefore = 200 * time.Millisecond
	)
	type provider struct {
		active         func(t *testing.T, token string) bool
		introspections func() int
		reused         func() int
		refreshes      func() int
	}
	mediaHaven := func(t *testing.T, introspection bool, setting *bool) (Provider, provider) {
		f := fakes.NewMediaHaven(t, fakes.WithTokenLifetime(lifetime))
		p := Provider{Name: "mediahaven", ClientID: f.ClientID()}
		if err := ApplyStaticPreset(&p, "mediahaven", f.URL()); err != nil {
			t.Fatal(err)
		}
		p.RefreshRevokesAccessToken = setting
		if !introspection {
			p.IntrospectionURL = ""
		}
		return p, provider{
			active:         func(t *testing.T, token string) bool { return f.Active(token) },
			introspections: func() int { return len(f.Calls(fakes.MediaHavenIntrospectPath)) },
			reused:         f.ReusedRefreshTokens,
			refreshes:      func() int { return len(f.TokenRequests("refresh_token")) },
		}
	}
	keeping := func(t *testing.T) (Provider, provider) {
		f := newCountingSandbox(t, sandbox.Config{TokenLifetime: lifetime, Users: map[string]string{fakes.User: fakes.Password}, RefreshTokens: true})
		p := sandboxProvider("keeping", f.URL+sandbox.TokenPath)
		p.IntrospectionURL = f.URL + sandbox.IntrospectPath
		p.GrantTypes = []GrantType{GrantPassword, GrantRefreshToken}
		return p, provider{
			active: func(t *testing.T, token string) bool {
				return activeAt(t, f.sb, sandboxClientID, sandboxClientSecret, token)
			},
			introspections: func() int { return int(f.introspections.Load()) },
			reused:         f.sb.ReusedRefreshTokens,
			refreshes:      f.sb.RefreshCalls,
		}
	}
	tests := []struct {
		name string
		give func(t *testing.T) (Provider, provider)
		// wantLearned is what the broker must have stored in etcd; nil
		// for nothing.
		wantLearned *bool
		// wantIntrospections is how many introspection requests the
		// broker sends the provider.
		wantIntrospections int
		// wantHandOver: tokens are served until a hand-over before the
		// provider's expiry.
		wantHandOver bool
	}{
		{
			name:         "revokes/preset",
			give:         func(t *testing.T) (Provider, provider) { return mediaHaven(t, true, ptr(true)) },
			wantHandOver: true,
		},
		{
			name:               "revokes/learned",
			give:               func(t *testing.T) (Provider, provider) { return mediaHaven(t, true, nil) },
			wantLearned:        ptr(true),
			wantIntrospections: 1,
			wantHandOver:       true,
		},
		{
			name:         "revokes/assumed",
			give:         func(t *testing.T) (Provider, provider) { return mediaHaven(t, false, nil) },
			wantHandOver: true,
		},
		{
			name:               "keeps/learned",
			give:               keeping,
			wantLearned:        ptr(false),
			wantIntrospections: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := etcdtest.Start(t)
			p, prov := tt.give(t)
			secret := sandboxClientSecret
			if p.Name == "mediahaven" {
				secret = fakes.MediaHavenClientSecret
			}
			var replicas []*Broker
			for i := range 2 {
				replicas = append(replicas, newTestBroker(t, e, func(s *brokerSetup) {
					s.cfg.Replica = fmt.Sprintf("handover-%d", i)
					s.cfg.Refresh = RefreshConfig{Tick: 50 * time.Millisecond, ReportInterval: 100 * time.Millisecond}
				}))
			}
			putProvider(t, replicas[0], p, secret)
			if _, err := replicas[0].PutAccount(context.Background(), Account{Provider: p.Name, Account: "bob", Type: GrantPassword,
				Username: fakes.User, Password: fakes.Password}); err != nil {
				t.Fatalf("PutAccount: %v", err)
			}

			var (
				mu       sync.Mutex
				served   = map[string]servedToken{} // by access token
				differed int                        // tokens served with two expiries
				handOver int                        // tokens served until a hand-over
				inactive []string
				checks   sync.WaitGroup
				calls    int
			)
			req := TokenRequest{Provider: p.Name, Account: "bob", MinTTL: minTTL}
			for start := time.Now(); time.Since(start) < run; time.Sleep(20 * time.Millisecond) {
				b := replicas[calls%len(replicas)]
				calls++
				rec, err := b.GetToken(context.Background(), req)
				if err != nil {
					t.Fatalf("GetToken after %v: %v", time.Since(start), err)
				}
				if now := time.Now(); !rec.ExpiresAt.After(now) {
					t.Fatalf("GetToken served a token expired %v ago", now.Sub(rec.ExpiresAt))
				}
				mu.Lock()
				prev, seen := served[rec.AccessToken]
				switch {
				case seen && !prev.expiresAt.Equal(rec.ExpiresAt):
					differed++
				case !seen:
					served[rec.AccessToken] = servedToken{rec.AccessToken, rec.ExpiresAt, rec.ProviderExpiresAt()}
					if !rec.ProviderExpiresAt().IsZero() {
						handOver++
					}
					checks.Add(1)
					go func() {
						defer checks.Done()
						time.Sleep(time.Until(rec.ExpiresAt.Add(-checkBefore)))
						if !prov.active(t, rec.AccessToken) {
							mu.Lock()
							inactive = append(inactive, fmt.Sprintf("generation %d, %v before its served expiry", rec.Generation, time.Until(rec.ExpiresAt)))
							mu.Unlock()
						}
					}()
				}
				mu.Unlock()
			}
			checks.Wait()

			t.Logf("%s: %d calls; %d tokens handed out, %d of them until a hand-over; %d inactive before their served expiry; the provider got %d refreshes and %d introspections from the broker",
				tt.name, calls, len(served), handOver, len(inactive), prov.refreshes(), prov.introspections())
			if len(inactive) > 0 {
				t.Errorf("%d of %d tokens handed out were inactive at the provider %v before their served expiry (%s), want 0", len(inactive), len(served), checkBefore, strings.Join(inactive, "; "))
			}
			if len(served) < 3 {
				t.Errorf("%d tokens handed out in %v, want at least 3: the refresher keeps the token warm", len(served), run)
			}
			if differed != 0 {
				t.Errorf("%d tokens were served with two different expiries, want every replica to serve one", differed)
			}
			// Tokens follow the provider's kind, but for those obtained
			// before the broker learned it (the first refresh tells):
			// until then revocation is assumed.
			if tt.wantHandOver && handOver != len(served) || !tt.wantHandOver && handOver > 2 {
				t.Errorf("%d of %d tokens were served until a hand-over; want all: %t (but the first two while learning)", handOver, len(served), tt.wantHandOver)
			}
			if n := prov.reused(); n != 0 {
				t.Errorf("the provider saw %d replaced refresh tokens presented again, want 0", n)
			}
			if n := prov.introspections(); n != tt.wantIntrospections {
				t.Errorf("the provider got %d introspection requests from the broker, want %d", n, tt.wantIntrospections)
			}
			learned := etcdKeys(t, e.Client(t, nil), DefaultPrefix+learnedPrefix)
			switch raw, ok := learned[DefaultPrefix+learnedPrefix+p.Name]; {
			case tt.wantLearned == nil && ok:
				t.Errorf("etcd holds %s for the provider, want nothing learned", raw)
			case tt.wantLearned != nil && !strings.Contains(raw, fmt.Sprintf(`"refresh_revokes_access_token":%t`, *tt.wantLearned)):
				t.Errorf("etcd holds %q for the provider, want refresh_revokes_access_token %t learned", raw, *tt.wantLearned)
			}
			got, err := replicas[1].GetProvider(context.Background(), p.Name)
			if err != nil {
				t.Fatal(err)
			}
			if tt.wantLearned != nil && (got.LearnedRefreshRevokesAccessToken == nil || *got.LearnedRefreshRevokesAccessToken != *tt.wantLearned) {
				t.Errorf("GetProvider says learned %v, want %v", got.LearnedRefreshRevokesAccessToken, *tt.wantLearned)
			}
		})
	}
}

// TestHandOverIsNotAdvanced: a token that its replacement revokes is served
// until its hand-over and not replaced before, whatever a caller asks:
// GetToken with a min_ttl past the hand-over and Refresh without a stale
// token get it, with its true expiry, and the provider is not called; a
// caller reporting the token refused (Refresh with it as stale) replaces
// it; past the hand-over, GetToken gets the next one.
func TestHandOverIsNotAdvanced(t *testing.T) {
	e := etcdtest.Start(t)
	clock := newClock()
	f := fakes.NewMediaHaven(t, fakes.WithClock(clock.Now))
	b := newTestBroker(t, e, withClock(clock), withBackgroundRefreshOff())
	p := Provider{Name: "mediahaven", ClientID: f.ClientID()}
	if err := ApplyStaticPreset(&p, "mediahaven", f.URL()); err != nil {
		t.Fatal(err)
	}
	if p.RefreshRevokesAccessToken == nil || !*p.RefreshRevokesAccessToken {
		t.Fatalf("the mediahaven preset sets refresh_revokes_access_token %v, want true", p.RefreshRevokesAccessToken)
	}
	putProvider(t, b, p, fakes.MediaHavenClientSecret)
	putPasswordAccount(t, b, "mediahaven", "bob", fakes.Password)
	ctx := context.Background()
	req := TokenRequest{Provider: "mediahaven", Account: "bob", MinTTL: time.Minute}

	first, err := b.GetToken(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if first.ProviderExpiresAt().IsZero() || !first.ExpiresAt.Equal(first.ProviderExpiresAt().Add(-2*time.Second)) {
		t.Fatalf("served until %v, provider's expiry %v; want the hand-over 2s (the refresher's min lead) before the provider's expiry", first.ExpiresAt, first.ProviderExpiresAt())
	}
	calls := len(f.TokenRequests(""))
	clock.Advance(first.ExpiresAt.Sub(clock.Now()) - 10*time.Second) // 10s left, min_ttl 1m
	tests := []struct {
		name string
		call func() (*TokenRecord, error)
	}{
		{"GetToken with a min_ttl past the hand-over", func() (*TokenRecord, error) { return b.GetToken(ctx, req) }},
		{"Refresh without a stale token", func() (*TokenRecord, error) { return b.Refresh(ctx, req, "") }},
		{"Refresh with an older stale token", func() (*TokenRecord, error) { return b.Refresh(ctx, req, "older") }},
	}
	for _, tt := range tests {
		rec, err := tt.call()
		if err != nil || rec.AccessToken != first.AccessToken || !rec.ExpiresAt.Equal(first.ExpiresAt) {
			t.Errorf("%s 10s before the hand-over: %v, %v; want the same token, served until %v", tt.name, rec, err, first.ExpiresAt)
		}
	}
	if n := len(f.TokenRequests("")) - calls; n != 0 {
		t.Errorf("the provider got %d token requests before the hand-over, want 0", n)
	}
	if !f.Active(first.AccessToken) {
		t.Error("the token is inactive at the provider before its hand-over")
	}

	refused, err := b.Refresh(ctx, req, first.AccessToken)
	if err != nil || refused.AccessToken == first.AccessToken {
		t.Fatalf("Refresh of the token as refused: %v, %v; want a new token", refused, err)
	}
	clock.Advance(refused.ExpiresAt.Sub(clock.Now()))
	next, err := b.GetToken(ctx, req)
	if err != nil || next.AccessToken == refused.AccessToken || next.Generation != refused.Generation+1 {
		t.Fatalf("GetToken at the hand-over: %v, %v; want the next token", next, err)
	}
	if got := len(f.TokenRequests("refresh_token")); got != 2 {
		t.Errorf("the provider got %d refreshes, want 2", got)
	}
	if f.Active(refused.AccessToken) || !f.Active(next.AccessToken) {
		t.Errorf("at the provider, the replaced token is active: %t, the new one: %t; want false, true", f.Active(refused.AccessToken), f.Active(next.AccessToken))
	}
	in, err := b.Introspect(ctx, next.AccessToken)
	if err != nil || !in.Active || !in.ExpiresAt.Equal(next.ExpiresAt) {
		t.Errorf("Introspect(new token) = %+v, %v; want active until the hand-over %v, not the provider's expiry", in, err, next.ExpiresAt)
	}
}

// An explicit setting wins over learning: the broker sends no
// introspection request and stores nothing.
func TestSettingIsNotLearned(t *testing.T) {
	e := etcdtest.Start(t)
	clock := newClock()
	f := fakes.NewMediaHaven(t, fakes.WithClock(clock.Now))
	b := newTestBroker(t, e, withClock(clock), withBackgroundRefreshOff())
	p := Provider{Name: "mediahaven", ClientID: f.ClientID(), RefreshRevokesAccessToken: ptr(false)}
	if err := ApplyStaticPreset(&p, "mediahaven", f.URL()); err != nil {
		t.Fatal(err)
	}
	putProvider(t, b, p, fakes.MediaHavenClientSecret)
	putPasswordAccount(t, b, "mediahaven", "bob", fakes.Password)
	req := TokenRequest{Provider: "mediahaven", Account: "bob"}
	first, err := b.GetToken(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if !first.ProviderExpiresAt().IsZero() {
		t.Errorf("a provider set not to revoke has its token served until a hand-over %v", first.ExpiresAt)
	}
	if _, err := b.Refresh(context.Background(), req, first.AccessToken); err != nil {
		t.Fatal(err)
	}
	if n := len(f.Calls(fakes.MediaHavenIntrospectPath)); n != 0 {
		t.Errorf("the provider got %d introspection requests, want 0", n)
	}
	if got := etcdKeys(t, e.Client(t, nil), DefaultPrefix+learnedPrefix); len(got) != 0 {
		t.Errorf("etcd holds %v, want nothing learned", got)
	}
	got, err := b.GetProvider(context.Background(), "mediahaven")
	if err != nil || got.RefreshRevokesAccessToken == nil || *got.RefreshRevokesAccessToken {
		t.Errorf("GetProvider: refresh_revokes_access_token %v, %v; want false stored", got.RefreshRevokesAccessToken, err)
	}
}
