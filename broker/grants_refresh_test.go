package broker

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/oauth"
	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
	"github.com/tokenbroker/tokenbroker/internal/fakes"
)

// TestConsentFlowWithRotation is the whole consent flow against MediaHaven:
// start an authorization, follow the authorize URL as a browser, give the
// callback to the broker, serve the token, and refresh it as it expires.
// Each refresh rotates the refresh token (MediaHaven kills both old
// tokens); the new one is in etcd when GetToken returns, and the old one is
// never sent again (the fake fails the test if it is), not even by a
// broker started afterwards on the same etcd.
func TestConsentFlowWithRotation(t *testing.T) {
	e := etcdtest.Start(t)
	clock := newClock()
	b, env := startSeed(t, e, clock, "mediahaven")
	f := env.fake
	ctx := context.Background()

	auth, cb := consentInBrowser(t, b, f, "mediahaven", "alice", nil)
	if !strings.HasPrefix(auth.URL, f.URL()+fakes.MediaHavenAuthorizePath+"?") {
		t.Errorf("authorize URL is %s, want MediaHaven's %s?…", auth.URL, fakes.MediaHavenAuthorizePath)
	}
	if g := grantOf(t, b, "mediahaven", "alice"); g.Health != HealthPending {
		t.Errorf("grant before the callback is %s, want %s", g.Health, HealthPending)
	}
	if _, err := b.GetToken(ctx, TokenRequest{Provider: "mediahaven", Account: "alice"}); !errors.Is(err, ErrReauthorizationRequired) || len(f.TokenRequests("")) != 0 {
		t.Errorf("GetToken before the callback: %v after %d token requests; want ErrReauthorizationRequired (no consent yet) and none",
			err, len(f.TokenRequests("")))
	}
	g, err := b.CompleteAuthorization(ctx, cb)
	if err != nil {
		t.Fatalf("CompleteAuthorization: %v", err)
	}
	exchange := f.TokenRequests("authorization_code")
	if len(exchange) != 1 || g.Health != HealthOK || g.RefreshToken != exchange[0].AnswerString("refresh_token") {
		t.Fatalf("after the callback: %d code exchanges, grant %s holding %q; want 1, ok, holding the issued refresh token",
			len(exchange), g.Health, g.RefreshToken)
	}
	rec := accountToken(t, b, "mediahaven", "alice")
	if want := exchange[0].AnswerString("access_token"); rec.AccessToken != want {
		t.Errorf("GetToken after the callback = %q, want the exchanged %q", rec.AccessToken, want)
	}
	if n := len(f.TokenRequests("")); n != 1 {
		t.Errorf("GetToken after the callback made the provider answer %d token requests in all, want 1 (served from the consent)", n)
	}

	// Three rotations on this broker, a fourth on a broker started later.
	other := newTestBroker(t, e, withClock(clock), withBackgroundRefreshOff(), withReplicaName("late"))
	for i, broker := range []*Broker{b, b, b, other} {
		before := grantOf(t, b, "mediahaven", "alice")
		old := rec
		clock.Advance(2 * time.Hour)
		rec = accountToken(t, broker, "mediahaven", "alice")
		refreshes := f.TokenRequests("refresh_token")
		if len(refreshes) != i+1 {
			t.Fatalf("rotation %d: the provider got %d refreshes, want %d", i+1, len(refreshes), i+1)
		}
		last := refreshes[i]
		if got := last.Form.Get("refresh_token"); got != before.RefreshToken {
			t.Errorf("rotation %d: refresh sent %q, want the stored %q", i+1, got, before.RefreshToken)
		}
		after := grantOf(t, other, "mediahaven", "alice")
		if want := last.AnswerString("refresh_token"); after.RefreshToken != want || want == before.RefreshToken {
			t.Errorf("rotation %d: etcd holds refresh token %q after GetToken, want the rotated %q (was %q)",
				i+1, after.RefreshToken, want, before.RefreshToken)
		}
		if rec.AccessToken != last.AnswerString("access_token") || rec.Generation != old.Generation+1 {
			t.Errorf("rotation %d: GetToken = %q generation %d, want %q generation %d",
				i+1, rec.AccessToken, rec.Generation, last.AnswerString("access_token"), old.Generation+1)
		}
		if f.Active(old.AccessToken) || !f.Active(rec.AccessToken) {
			t.Errorf("rotation %d: at the provider the old token is active=%t and the new one active=%t, want false and true",
				i+1, f.Active(old.AccessToken), f.Active(rec.AccessToken))
		}
	}

	seen := map[string]bool{}
	for _, r := range f.TokenRequests("refresh_token") {
		rt := r.Form.Get("refresh_token")
		if seen[rt] {
			t.Errorf("refresh token %q was sent twice", rt)
		}
		seen[rt] = true
	}
	if n := f.ReusedRefreshTokens(); n != 0 {
		t.Errorf("the provider saw %d reused refresh tokens, want 0", n)
	}
}

// TestRotationUnderConcurrency runs many callers on two brokers sharing one
// etcd while MediaHaven's access token expires again and again: every
// expiry must cause exactly one refresh, serialized across the brokers by
// the grant's etcd lock, so that no refresh token is ever presented twice
// (MediaHaven revokes the whole grant on reuse) and no caller ever sees
// invalid_grant. The background refreshers run too.
func TestRotationUnderConcurrency(t *testing.T) {
	const (
		rotations        = 52
		callersPerBroker = 4
	)
	e := etcdtest.Start(t)
	clock := newClock()
	mh := fakes.NewMediaHaven(t, fakes.WithClock(clock.Now))
	f := mh.Server
	fast := func(s *brokerSetup) {
		s.cfg.Refresh.Tick = 10 * time.Millisecond
		s.cfg.Refresh.ReportInterval = 20 * time.Millisecond
	}
	brokers := []*Broker{
		newTestBroker(t, e, withClock(clock), withReplicaName("replica-a"), fast),
		newTestBroker(t, e, withClock(clock), withReplicaName("replica-b"), fast),
	}
	registerSeed(t, brokers[0], "mediahaven", seedEnv{fake: f, preset: "mediahaven", base: f.URL()})
	authorizeAccount(t, brokers[0], f, "mediahaven", "alice", nil)

	ctx, stop := context.WithCancel(context.Background())
	var (
		wg        sync.WaitGroup
		calls     atomic.Int64
		failures  atomic.Int64
		mu        sync.Mutex
		firstErrs []error
	)
	for _, b := range brokers {
		for range callersPerBroker {
			wg.Go(func() {
				for ctx.Err() == nil {
					_, err := b.GetToken(ctx, TokenRequest{Provider: "mediahaven", Account: "alice"})
					calls.Add(1)
					if err != nil && ctx.Err() == nil {
						failures.Add(1)
						mu.Lock()
						if len(firstErrs) < 5 {
							firstErrs = append(firstErrs, err)
						}
						mu.Unlock()
					}
					time.Sleep(time.Millisecond)
				}
			})
		}
	}

	// Each expiry is followed by GetToken calls until one serves the next
	// generation: a call may join a fetch that a caller began before the
	// clock moved, and get that fetch's (then fresh) answer.
	last := int64(1)
	for i := range rotations {
		clock.Advance(2 * time.Hour) // MediaHaven's tokens live 1 h
		var rec *TokenRecord
		for attempt := 0; attempt < 20 && (rec == nil || rec.Generation == last); attempt++ {
			var err error
			rec, err = brokers[i%2].GetToken(context.Background(), TokenRequest{Provider: "mediahaven", Account: "alice"})
			if err != nil {
				t.Fatalf("expiry %d: GetToken: %v", i+1, err)
			}
		}
		if rec.Generation != last+1 {
			t.Errorf("expiry %d: GetToken served generation %d, want %d", i+1, rec.Generation, last+1)
		}
		last = rec.Generation
	}
	stop()
	wg.Wait()

	var refreshed, rejected int
	for _, r := range f.TokenRequests("refresh_token") {
		if r.Status == 200 {
			refreshed++
		} else {
			rejected++
		}
	}
	t.Logf("%d GetToken calls by %d callers; %d refreshes", calls.Load(), 2*callersPerBroker, refreshed)
	if refreshed < 50 || refreshed != rotations {
		t.Errorf("the provider answered %d refreshes, want %d: one per expiry (at least 50)", refreshed, rotations)
	}
	if rejected != 0 || f.ReusedRefreshTokens() != 0 {
		t.Errorf("the provider rejected %d refreshes and saw %d reused refresh tokens, want 0 and 0", rejected, f.ReusedRefreshTokens())
	}
	if n := failures.Load(); n != 0 {
		t.Errorf("%d of %d GetToken calls failed, want none; first errors: %v", n, calls.Load(), firstErrs)
	}
	if g := grantOf(t, brokers[1], "mediahaven", "alice"); g.Health != HealthOK || g.RefreshToken != lastOr(f.RefreshTokens(), "") {
		t.Errorf("grant is %s holding %q, want ok holding the last issued refresh token %q", g.Health, g.RefreshToken, lastOr(f.RefreshTokens(), ""))
	}
}

// TestReauthorization: the provider revokes the grant; once the access
// token expires, GetToken answers ErrReauthorizationRequired carrying the
// provider's error, admins see reauthorization_required with the error, and
// the provider is not asked again, by this broker or another, until an
// admin re-authorizes (a new consent) or updates the account (a new
// password).
func TestReauthorization(t *testing.T) {
	type give struct {
		grant GrantType
		// bare401 makes MediaHaven answer a dead refresh token with a 401
		// and no OAuth error code.
		bare401 bool
	}
	type want struct {
		status   int    // of the provider's answer
		code     string // its OAuth error
		lastCall string // the grant of the provider's last (rejected) call
	}
	tests := []struct {
		name string
		give give
		want want
	}{
		{
			name: "consent revoked, 401 invalid_grant",
			give: give{grant: GrantAuthorizationCode},
			want: want{status: 401, code: "invalid_grant", lastCall: "refresh_token"},
		},
		{
			name: "consent revoked, bare 401",
			give: give{grant: GrantAuthorizationCode, bare401: true},
			want: want{status: 401, code: "", lastCall: "refresh_token"},
		},
		{
			name: "grant revoked and password changed",
			give: give{grant: GrantPassword},
			want: want{status: 400, code: "invalid_grant", lastCall: "password"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := etcdtest.Start(t)
			clock := newClock()
			b, env := startSeed(t, e, clock, "mediahaven")
			f := env.fake
			(&fakes.MediaHaven{Server: f}).SetBareUnauthorized(tt.give.bare401)
			other := newTestBroker(t, e, withClock(clock), withBackgroundRefreshOff(), withReplicaName("other"))
			ctx := context.Background()
			req := TokenRequest{Provider: "mediahaven", Account: "alice"}
			switch tt.give.grant {
			case GrantAuthorizationCode:
				authorizeAccount(t, b, f, "mediahaven", "alice", nil)
			case GrantPassword:
				putPasswordAccount(t, b, "mediahaven", "alice", fakes.Password)
			}
			stale := accountToken(t, b, "mediahaven", "alice")

			f.RevokeAll()
			f.SetPassword(fakes.User, "a-new-password")
			clock.Advance(2 * time.Hour)
			_, err := b.GetToken(ctx, req)
			var oe *oauth.Error
			if !errors.Is(err, ErrReauthorizationRequired) || !errors.As(err, &oe) || oe.StatusCode != tt.want.status || oe.Code != tt.want.code {
				t.Fatalf("GetToken after revocation: %v; want ErrReauthorizationRequired wrapping the provider's %d %q", err, tt.want.status, tt.want.code)
			}
			calls := f.TokenRequests("")
			if got := calls[len(calls)-1].Form.Get("grant_type"); got != tt.want.lastCall {
				t.Errorf("the provider's last call was grant_type %s, want %s", got, tt.want.lastCall)
			}
			g := grantOf(t, b, "mediahaven", "alice")
			if g.Health != HealthReauthorizationRequired || !strings.Contains(g.LastError, oe.Error()) {
				t.Errorf("grant is %s with last error %q, want %s with the provider's %q", g.Health, g.LastError, HealthReauthorizationRequired, oe.Error())
			}

			// Nobody asks the provider again.
			for i, call := range []func() error{
				func() error { _, err := b.GetToken(ctx, req); return err },
				func() error { _, err := other.GetToken(ctx, req); return err },
				func() error { _, err := b.Refresh(ctx, req, stale.AccessToken); return err },
				func() error { clock.Advance(time.Hour); _, err := other.GetToken(ctx, req); return err },
			} {
				err := call()
				if !errors.Is(err, ErrReauthorizationRequired) || !strings.Contains(err.Error(), oe.Error()) {
					t.Errorf("call %d after the rejection: %v; want ErrReauthorizationRequired naming %q", i+1, err, oe.Error())
				}
			}
			if n := len(f.TokenRequests("")); n != len(calls) {
				t.Errorf("the provider got %d more token requests after the rejection, want none", n-len(calls))
			}

			// The admin re-authorizes.
			switch tt.give.grant {
			case GrantAuthorizationCode:
				authorizeAccount(t, b, f, "mediahaven", "alice", nil)
			case GrantPassword:
				putPasswordAccount(t, b, "mediahaven", "alice", "a-new-password")
			}
			rec, err := other.GetToken(ctx, req)
			if err != nil {
				t.Fatalf("GetToken after re-authorization: %v", err)
			}
			if !f.Active(rec.AccessToken) {
				t.Errorf("GetToken after re-authorization served %q, which the provider does not know as active", rec.AccessToken)
			}
			if g := grantOf(t, b, "mediahaven", "alice"); g.Health != HealthOK || g.LastError != "" {
				t.Errorf("grant after re-authorization is %s with last error %q, want ok and none", g.Health, g.LastError)
			}
			if n := f.ReusedRefreshTokens(); n != 0 {
				t.Errorf("the provider saw %d reused refresh tokens, want 0", n)
			}
		})
	}
}

// TestRefreshTokenQuirks covers the providers' rules on refresh tokens:
// MediaValet issues one only with offline_access, Mediaflow only to some
// clients (and shorter tokens to them); without one, an expired consent
// needs re-authorization instead of a provider call. A refresh that brings
// no new refresh token keeps the old one.
func TestRefreshTokenQuirks(t *testing.T) {
	tests := []struct {
		name string
		give func(t *testing.T, e *etcdtest.Etcd, clock *fakeClock) (*Broker, *fakes.Server)
		want time.Duration // the token's lifetime
	}{
		{
			name: "mediavalet without offline_access",
			give: func(t *testing.T, e *etcdtest.Etcd, clock *fakeClock) (*Broker, *fakes.Server) {
				b, env := startSeed(t, e, clock, "mediavalet")
				g := authorizeAccount(t, b, env.fake, "mediavalet", "alice", []string{"api", "openid"})
				if g.RefreshToken != "" {
					t.Errorf("grant holds refresh token %q, want none: offline_access was not asked for", g.RefreshToken)
				}
				return b, env.fake
			},
			want: time.Hour,
		},
		{
			name: "mediaflow client without refresh tokens",
			give: func(t *testing.T, e *etcdtest.Etcd, clock *fakeClock) (*Broker, *fakes.Server) {
				env := seedFakes["mediaflow"](t, fakes.WithClock(clock.Now))
				b := newTestBroker(t, e, withClock(clock), withBackgroundRefreshOff())
				p := env.provider
				p.Name, p.ClientID, p.RedirectURL = "mediaflow", fakes.MediaflowLimitedClientID, fakes.RedirectURI
				if err := b.ApplyPreset(context.Background(), &p, "mediaflow", env.base); err != nil {
					t.Fatal(err)
				}
				putProvider(t, b, p, fakes.MediaflowLimitedClientSecret)
				authorizeAccount(t, b, env.fake, "mediaflow", "alice", nil)
				return b, env.fake
			},
			want: fakes.MediaflowLimitedLifetime * time.Second,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := etcdtest.Start(t)
			clock := newClock()
			b, f := tt.give(t, e, clock)
			provider := strings.Fields(tt.name)[0]
			rec := accountToken(t, b, provider, "alice")
			if rec.Lifetime() != tt.want {
				t.Errorf("token lifetime = %v, want %v", rec.Lifetime(), tt.want)
			}
			before := len(f.TokenRequests(""))
			clock.Advance(rec.Lifetime() + time.Second)
			_, err := b.GetToken(context.Background(), TokenRequest{Provider: provider, Account: "alice"})
			if !errors.Is(err, ErrReauthorizationRequired) {
				t.Errorf("GetToken after expiry: %v, want ErrReauthorizationRequired (no refresh token)", err)
			}
			if n := len(f.TokenRequests("")) - before; n != 0 {
				t.Errorf("GetToken after expiry made %d token requests, want 0", n)
			}
			if g := grantOf(t, b, provider, "alice"); g.Health != HealthReauthorizationRequired {
				t.Errorf("grant is %s, want %s", g.Health, HealthReauthorizationRequired)
			}
		})
	}
}

// TestRefreshKeepsRefreshTokenWithoutNewOne: a provider that does not
// rotate (MediaValet) answers a refresh without a refresh token; the broker
// keeps the old one and uses it again.
func TestRefreshKeepsRefreshTokenWithoutNewOne(t *testing.T) {
	e := etcdtest.Start(t)
	clock := newClock()
	b, env := startSeed(t, e, clock, "mediavalet")
	g := authorizeAccount(t, b, env.fake, "mediavalet", "alice", nil)
	for i := range 3 {
		clock.Advance(2 * time.Hour)
		accountToken(t, b, "mediavalet", "alice")
		refreshes := env.fake.TokenRequests("refresh_token")
		if len(refreshes) != i+1 || refreshes[i].Status != 200 || refreshes[i].AnswerString("refresh_token") != "" {
			t.Fatalf("refresh %d: %d refreshes, the last answered %d with refresh token %q; want %d, 200, none",
				i+1, len(refreshes), refreshes[len(refreshes)-1].Status, refreshes[len(refreshes)-1].AnswerString("refresh_token"), i+1)
		}
		if got := refreshes[i].Form.Get("refresh_token"); got != g.RefreshToken {
			t.Errorf("refresh %d sent %q, want the consent's %q", i+1, got, g.RefreshToken)
		}
	}
	if got := grantOf(t, b, "mediavalet", "alice"); got.RefreshToken != g.RefreshToken {
		t.Errorf("grant holds %q, want the consent's %q", got.RefreshToken, g.RefreshToken)
	}
}
