package broker

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/event"
	"github.com/tokenbroker/tokenbroker/broker/oauth"
	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
	"github.com/tokenbroker/tokenbroker/internal/fakes"
)

func putDeviceProvider(t *testing.T, b *Broker, f *fakes.Device) {
	t.Helper()
	_, err := b.PutProvider(context.Background(), Provider{
		Name: "tv", TokenURL: f.URL + "/token", DeviceAuthorizationURL: f.URL + "/device",
		ClientID: fakes.DeviceClientID, ClientAuth: oauth.AuthPost, DefaultScopes: []string{"offline_access", "api"},
		GrantTypes: []GrantType{GrantDeviceCode, GrantRefreshToken},
	}, fakes.DeviceClientSecret)
	if err != nil {
		t.Fatalf("PutProvider: %v", err)
	}
}

// waitGrant waits until cond holds for the grant of account on b.
func waitGrant(t *testing.T, b *Broker, account string, within time.Duration, cond func(*Grant) bool) *Grant {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		g, err := b.readGrant(context.Background(), b.grantKey("tv", account))
		if err != nil {
			t.Fatalf("read grant: %v", err)
		}
		if g != nil && cond(g) {
			return g
		}
		if time.Now().After(deadline) {
			t.Fatalf("grant %s is %+v after %v", account, g, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestDeviceAuthorizationPolling: the broker polls at the interval the
// device authorization response names, adds 5 s for good after slow_down,
// sends the device code with the client's credentials, and stores the
// grant once the person consented, with grant.authorized.
func TestDeviceAuthorizationPolling(t *testing.T) {
	e := etcdtest.Start(t)
	f := fakes.NewDevice(t, 1, oauth.CodeAuthorizationPending, oauth.CodeSlowDown)
	f.Approve() // the poll after the script gets a token
	b := newTestBroker(t, e)
	putDeviceProvider(t, b, f)
	ctx := context.Background()

	a, err := b.StartDeviceAuthorization(ctx, "tv", "living-room", nil)
	if err != nil {
		t.Fatalf("StartDeviceAuthorization: %v", err)
	}
	if a.UserCode != fakes.DeviceUserCode || a.VerificationURI != f.URL+"/activate" || !strings.Contains(a.VerificationURIComplete, "user_code=WDJB-MJHT") || a.Interval != time.Second {
		t.Errorf("StartDeviceAuthorization = %+v, want the provider's user code, URIs and 1s interval", a)
	}
	if left := time.Until(a.ExpiresAt); left < 110*time.Second || left > 120*time.Second {
		t.Errorf("expires in %v, want about the provider's 120s", left)
	}
	if g := waitGrant(t, b, "living-room", time.Second, func(*Grant) bool { return true }); g.Type != GrantDeviceCode || g.Health != HealthPending {
		t.Errorf("new account = %s %s, want a pending %s account", g.Type, g.Health, GrantDeviceCode)
	}
	forms, times := f.Starts()
	if len(forms) != 1 || forms[0].Get("scope") != "offline_access api" || forms[0].Get("client_id") != fakes.DeviceClientID {
		t.Fatalf("device authorization requests = %v, want one with the scope and client_id", forms)
	}
	start := times[0]

	polls := f.WaitPolls(t, 3, 15*time.Second)
	g := waitGrant(t, b, "living-room", 5*time.Second, func(g *Grant) bool { return g.Health == HealthOK })
	wantGaps := []time.Duration{time.Second, time.Second, 6 * time.Second} // start→1, 1→2 (pending), 2→3 (slow_down: 1+5)
	prev := start
	for i, p := range polls {
		gap := p.At.Sub(prev)
		t.Logf("poll %d answered %q, %v after the previous request", i+1, p.Answer, gap)
		if gap < wantGaps[i] {
			t.Errorf("poll %d came %v after the previous request, want at least %v", i+1, gap, wantGaps[i])
		}
		if gap > wantGaps[i]+2*time.Second {
			t.Errorf("poll %d came %v after the previous request, want about %v", i+1, gap, wantGaps[i])
		}
		for k, want := range map[string]string{"grant_type": oauth.DeviceCodeGrantType, "device_code": "device-code-1", "client_id": fakes.DeviceClientID, "client_secret": fakes.DeviceClientSecret} {
			if got := p.Form.Get(k); got != want {
				t.Errorf("poll %d: %s = %q, want %q", i+1, k, got, want)
			}
		}
		prev = p.At
	}
	if g.RefreshToken != "device-rt" || g.LastError != "" || g.Type != GrantDeviceCode {
		t.Errorf("grant after consent: refresh token set %v, last error %q, type %s", g.RefreshToken == "device-rt", g.LastError, g.Type)
	}
	rec, err := b.GetToken(ctx, TokenRequest{Provider: "tv", Account: "living-room"})
	if err != nil || rec.AccessToken != "device-at-3" {
		t.Fatalf("GetToken after consent = %v, %v; want the token of the consent", rec, err)
	}
	if n := len(f.Polls()); n != 3 {
		t.Errorf("the token endpoint got %d requests, want 3 (GetToken serves the stored token)", n)
	}
	if keys := etcdKeys(t, e.Client(t, nil), b.prefix+devicePrefix); len(keys) != 0 {
		t.Errorf("pending device authorizations after consent: %v, want none", keys)
	}
	evs, _, err := b.ListEvents(ctx, "", 100, EventFilter{Types: []event.Type{event.GrantAuthorized}})
	if err != nil || len(evs) != 1 || evs[0].Account != "living-room" {
		t.Errorf("grant.authorized events = %+v, %v; want one for living-room", evs, err)
	}
	time.Sleep(1500 * time.Millisecond)
	if n := len(f.Polls()); n != 3 {
		t.Errorf("%d polls after consent, want polling to stop", n-3)
	}
}

// TestDeviceAuthorizationRefused: access_denied and expired_token end the
// polling; the account stays pending with the provider's answer as its
// last error.
func TestDeviceAuthorizationRefused(t *testing.T) {
	e := etcdtest.Start(t)
	b := newTestBroker(t, e)
	for _, code := range []string{oauth.CodeAccessDenied, oauth.CodeExpiredToken} {
		t.Run(code, func(t *testing.T) {
			f := fakes.NewDevice(t, 1, oauth.CodeAuthorizationPending, code)
			putDeviceProvider(t, b, f)
			account := "acct-" + strings.ReplaceAll(code, "_", "-")
			if _, err := b.StartDeviceAuthorization(context.Background(), "tv", account, nil); err != nil {
				t.Fatalf("StartDeviceAuthorization: %v", err)
			}
			g := waitGrant(t, b, account, 10*time.Second, func(g *Grant) bool { return g.LastError != "" })
			if g.Health != HealthPending || !strings.Contains(g.LastError, code) {
				t.Errorf("grant = %s, last error %q; want pending, saying %s", g.Health, g.LastError, code)
			}
			time.Sleep(1500 * time.Millisecond)
			if n := len(f.Polls()); n != 2 {
				t.Errorf("the token endpoint got %d polls, want 2 (none after %s)", n, code)
			}
			if _, err := b.GetToken(context.Background(), TokenRequest{Provider: "tv", Account: account}); err == nil {
				t.Error("GetToken of a refused account succeeded")
			}
		})
	}
}

// TestDeviceAuthorizationOnePoller runs three replicas: one of them polls,
// at the provider's interval; when it is killed, one other takes over at
// the same pace, within the session TTL, and completes the grant.
func TestDeviceAuthorizationOnePoller(t *testing.T) {
	e := etcdtest.Start(t)
	f := fakes.NewDevice(t, 1)
	var rs []*fleetReplica
	for i := range 3 {
		cfg := fleetConfig()
		cfg.Refresh.Disabled = true
		cfg.DeviceScanInterval = 200 * time.Millisecond
		name := fmt.Sprintf("replica-%d", i)
		cfg.OAuth = &oauth.Client{UserAgent: name}
		rs = append(rs, newFleetReplica(t, e.Endpoint, name, cfg))
	}
	putDeviceProvider(t, rs[0].Broker, f)
	if _, err := rs[1].StartDeviceAuthorization(context.Background(), "tv", "kiosk", nil); err != nil {
		t.Fatalf("StartDeviceAuthorization: %v", err)
	}
	before := f.WaitPolls(t, 4, 10*time.Second)
	poller := before[0].Agent
	for i, p := range before {
		if p.Agent != poller {
			t.Fatalf("poll %d came from %s, poll 1 from %s: want one poller", i+1, p.Agent, poller)
		}
	}
	var victim *fleetReplica
	for _, r := range rs {
		if r.name == poller {
			victim = r
		}
	}
	if victim == nil {
		t.Fatalf("the polls came from %q, not a replica", poller)
	}
	last := f.Polls()
	killed := time.Now()
	victim.kill()
	t.Logf("killed the poller %s after %d polls", poller, len(last))

	after := f.WaitPolls(t, len(last)+3, 15*time.Second)
	var taker string
	for i, p := range after[len(last):] {
		if p.Agent == poller && i == 0 && p.At.Before(killed.Add(100*time.Millisecond)) {
			continue // a poll on its way when it died
		}
		if taker == "" {
			taker = p.Agent
			t.Logf("%s took over: first poll %v after the kill", taker, p.At.Sub(killed))
			if d := p.At.Sub(killed); d > 2*time.Second+time.Second+2*time.Second {
				t.Errorf("the new poller polled %v after the kill, want within the session TTL (2s) + scan + slack", d)
			}
		}
		if p.Agent != taker || p.Agent == poller {
			t.Errorf("poll after the kill from %s, want only %s (not the dead %s)", p.Agent, taker, poller)
		}
	}
	all := f.Polls()
	for i := 1; i < len(all); i++ {
		if gap := all[i].At.Sub(all[i-1].At); gap < time.Second {
			t.Errorf("polls %d (%s) and %d (%s) are %v apart, want at least the 1s interval: two pollers", i, all[i-1].Agent, i+1, all[i].Agent, gap)
		}
	}
	f.Approve()
	for _, r := range rs {
		if r == victim {
			continue
		}
		waitGrant(t, r.Broker, "kiosk", 5*time.Second, func(g *Grant) bool { return g.Health == HealthOK })
	}
	final := f.Polls()
	t.Logf("%d polls in all; %s polled %d before the kill, %s the rest", len(final), poller, len(last), taker)
	evs, _, err := rs[2].ListEvents(context.Background(), "", 100, EventFilter{Types: []event.Type{event.GrantAuthorized}})
	if err != nil || len(evs) != 1 {
		t.Errorf("grant.authorized events = %d, %v; want exactly one", len(evs), err)
	}
}

// TestDeviceAuthorizationBacksOff: temporary errors double the wait
// between polls (RFC 8628 §3.5); the next authorization_pending or token
// ends the backoff.
func TestDeviceAuthorizationBacksOff(t *testing.T) {
	e := etcdtest.Start(t)
	f := fakes.NewDevice(t, 1, "temporarily_unavailable", "temporarily_unavailable", oauth.CodeAuthorizationPending)
	f.Approve()
	b := newTestBroker(t, e)
	putDeviceProvider(t, b, f)
	if _, err := b.StartDeviceAuthorization(context.Background(), "tv", "lobby", nil); err != nil {
		t.Fatalf("StartDeviceAuthorization: %v", err)
	}
	polls := f.WaitPolls(t, 4, 15*time.Second)
	waitGrant(t, b, "lobby", 5*time.Second, func(g *Grant) bool { return g.Health == HealthOK })
	wantGaps := []time.Duration{2 * time.Second, 4 * time.Second, time.Second} // after 1 and 2 failures, then after pending
	for i, want := range wantGaps {
		gap := polls[i+1].At.Sub(polls[i].At)
		t.Logf("poll %d came %v after poll %d (%q)", i+2, gap, i+1, polls[i].Answer)
		if gap < want || gap > want+2*time.Second {
			t.Errorf("poll %d came %v after poll %d, want about %v", i+2, gap, i+1, want)
		}
	}
}
