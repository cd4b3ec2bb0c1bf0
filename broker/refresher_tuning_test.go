package broker

import (
	"context"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
	"github.com/tokenbroker/tokenbroker/sandbox"
)

// TestRefresherPerProviderTuningAndKeepAlive: a provider's own lead
// fraction makes the leader refresh its hot token earlier than the broker's
// default would; a provider's keep-alive refreshes an idle password
// account whose token is far from expiry, so that its refresh token stays
// alive; a provider without either is left alone.
func TestRefresherPerProviderTuningAndKeepAlive(t *testing.T) {
	e := etcdtest.Start(t)
	clock := newClock()
	f := newSandboxFront(t, sandbox.Config{
		Users: map[string]string{"alice": "wonderland"}, RefreshTokens: true, RotateRefreshTokens: true, Now: clock.Now,
	})
	b := newTestBroker(t, e, withClock(clock), func(s *brokerSetup) {
		s.cfg.Refresh = RefreshConfig{Tick: 20 * time.Millisecond, ReportInterval: 50 * time.Millisecond}
	})
	eager := sandboxProvider("eager", f.TokenURL())
	eager.RefreshLeadFraction = 0.9
	putProvider(t, b, eager, sandboxClientSecret)
	kept := sandboxProvider("kept", f.TokenURL())
	kept.GrantTypes = []GrantType{GrantPassword, GrantRefreshToken}
	kept.KeepAlive = 10 * time.Minute
	// A token its refresh revokes waits for its hand-over instead
	// (TestHandOverIsNotAdvanced).
	kept.RefreshRevokesAccessToken = ptr(false)
	putProvider(t, b, kept, sandboxClientSecret)
	plain := sandboxProvider("plain", f.TokenURL())
	putProvider(t, b, plain, sandboxClientSecret)
	if _, err := b.PutAccount(context.Background(), Account{Provider: "kept", Account: "alice", Type: GrantPassword, Username: "alice", Password: "wonderland"}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	first := map[string]*TokenRecord{}
	for _, r := range []TokenRequest{{Provider: "eager"}, {Provider: "kept", Account: "alice"}, {Provider: "plain"}} {
		rec, err := b.GetToken(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		first[r.Provider] = rec
	}
	// 11 minutes on, all three tokens (1h) are far from the broker's
	// default lead; eager's 90% lead is passed, kept's keep-alive is due.
	clock.Advance(11 * time.Minute)
	if _, err := b.GetToken(ctx, TokenRequest{Provider: "eager"}); err != nil { // hot
		t.Fatal(err)
	}
	if _, err := b.GetToken(ctx, TokenRequest{Provider: "plain"}); err != nil { // hot too
		t.Fatal(err)
	}
	for _, p := range []string{"eager", "kept"} {
		key, _ := NewTokenKey(p, first[p].Key.Account, nil)
		pollFor(t, p+"'s token refreshed by the leader", 5*time.Second, func() bool {
			rec := b.cached(key.id())
			return rec != nil && rec.Generation > first[p].Generation
		})
	}
	key, _ := NewTokenKey("plain", "", nil)
	time.Sleep(200 * time.Millisecond) // ten ticks
	if rec := b.cached(key.id()); rec.Generation != first["plain"].Generation {
		t.Errorf("plain's token was refreshed (generation %d) though its default lead is far off", rec.Generation)
	}
	if n := f.sb.ReusedRefreshTokens(); n != 0 {
		t.Errorf("provider saw %d reused refresh tokens, want 0", n)
	}
	if n := f.sb.RefreshCalls(); n != 1 {
		t.Errorf("provider got %d refresh_token grants, want 1 (kept's keep-alive)", n)
	}
}

// A provider's own idle time decides how long the leader remembers that
// callers asked for its tokens: a longer one than the broker's is not cut
// short.
func TestRefresherRemembersCallsForTheProvidersIdleTime(t *testing.T) {
	e := etcdtest.Start(t)
	clock := newClock()
	f := newSandboxFront(t, sandbox.Config{Now: clock.Now})
	b := newTestBroker(t, e, withClock(clock))
	patient := sandboxProvider("patient", f.TokenURL())
	patient.RefreshIdleAfter = time.Hour
	putProvider(t, b, patient, sandboxClientSecret)
	putProvider(t, b, sandboxProvider("plain", f.TokenURL()), sandboxClientSecret)
	long, _ := NewTokenKey("patient", "", nil)
	short, _ := NewTokenKey("plain", "", nil)
	eventually(t, "the broker's memory holds patient's tuning", func() bool {
		v, ok := b.providers.Load("patient")
		return ok && v.(*Provider).RefreshIdleAfter == time.Hour
	})
	seen := map[string]time.Time{long.id(): clock.Now(), short.id(): clock.Now()}
	clock.Advance(30 * time.Minute) // past the broker's 10 minutes, within patient's hour
	b.readHot(context.Background(), seen, 0)
	if _, ok := seen[long.id()]; !ok {
		t.Errorf("a call to patient 30 minutes ago was forgotten; its idle time is an hour")
	}
	if _, ok := seen[short.id()]; ok {
		t.Errorf("a call to plain 30 minutes ago is remembered; its idle time is the broker's 10 minutes")
	}
}
