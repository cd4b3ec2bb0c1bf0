package broker

import (
	"context"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
)

// TestIntrospectReplacedTokens: a token replaced by a refresh stays active
// until its own expiry, on the replica that replaced it, on a replica that
// learnt of it through its watch and on one started afterwards; the record
// carries it, and no lease or key per token is written.
func TestIntrospectReplacedTokens(t *testing.T) {
	e := etcdtest.Start(t)
	clock := newClock()
	mh := newMediaHound(t, 0)
	a := newTestBroker(t, e, withClock(clock))
	watching := newTestBroker(t, e, withClock(clock))
	putProvider(t, a, mediaHoundProvider(mh), mediaHoundClientSecret)
	ctx := context.Background()
	cli := e.Client(t, nil)
	leases, err := cli.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}

	first := getToken(t, a, "mediahound")
	clock.Advance(time.Hour)
	second, err := a.Refresh(ctx, TokenRequest{Provider: "mediahound"}, first.AccessToken)
	if err != nil || second.AccessToken == first.AccessToken {
		t.Fatalf("Refresh = %+v, %v; want a new token", second, err)
	}
	clock.Advance(time.Hour)
	third, err := a.Refresh(ctx, TokenRequest{Provider: "mediahound"}, second.AccessToken)
	if err != nil || third.AccessToken == second.AccessToken {
		t.Fatalf("Refresh = %+v, %v; want a new token", third, err)
	}
	after, err := cli.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(after.Leases) != len(leases.Leases) {
		t.Errorf("etcd holds %d leases after three token writes, want %d: a token takes no lease", len(after.Leases), len(leases.Leases))
	}

	started := newTestBroker(t, e, withClock(clock))
	for _, b := range []struct {
		name string
		b    *Broker
	}{{"the replica that refreshed", a}, {"a watching replica", watching}, {"a replica started later", started}} {
		for _, rec := range []*TokenRecord{first, second, third} {
			got, err := b.b.Introspect(ctx, rec.AccessToken)
			if err != nil || !got.Active || !got.IssuedAt.Equal(rec.IssuedAt) || !got.ExpiresAt.Equal(rec.ExpiresAt) ||
				got.ClientID != mediaHoundClientID || got.Provider != "mediahound" || got.Scope != "public" {
				t.Errorf("%s: Introspect(generation %d) = %+v, %v; want active, issued %s, expiring %s", b.name, rec.Generation, got, err, rec.IssuedAt, rec.ExpiresAt)
			}
		}
	}

	// The first token expires; the others stay active.
	clock.Advance(first.ExpiresAt.Sub(clock.Now()))
	for _, b := range []*Broker{a, started} {
		if got, err := b.Introspect(ctx, first.AccessToken); err != nil || got.Active {
			t.Errorf("Introspect(expired first token) = %+v, %v; want inactive", got, err)
		}
		if got, err := b.Introspect(ctx, second.AccessToken); err != nil || !got.Active {
			t.Errorf("Introspect(second token, still valid) = %+v, %v; want active", got, err)
		}
	}
	if n := mh.calls(); n != 3 {
		t.Errorf("provider got %d calls, want 3: introspection uses the broker's own records", n)
	}
}

// TestIntrospectCatchesUpWithTheWatch: before answering that a token is
// unknown, a replica waits until its watch has applied everything etcd had
// committed, even when nothing under the token prefix changed since, so a
// token another replica has just stored is never reported inactive.
func TestIntrospectCatchesUpWithTheWatch(t *testing.T) {
	e := etcdtest.Start(t)
	b := newTestBroker(t, e)
	ctx := context.Background()
	cli := e.Client(t, nil)
	resp, err := cli.Put(ctx, b.prefix+"unrelated", "x")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := b.catchUpTokens(ctx); err != nil {
		t.Fatalf("catchUpTokens: %v", err)
	}
	if v, _ := b.tokensRev.at(); v < resp.Header.Revision {
		t.Errorf("after catching up the token watch is at revision %d, want at least %d", v, resp.Header.Revision)
	}
	t.Logf("caught up in %s", time.Since(start))

	// A record written behind the broker's back (as another replica
	// would) is found at once.
	other := newTestBroker(t, e)
	mh := newMediaHound(t, 0)
	putProvider(t, other, mediaHoundProvider(mh), mediaHoundClientSecret)
	rec := getToken(t, other, "mediahound")
	if got, err := b.Introspect(ctx, rec.AccessToken); err != nil || !got.Active {
		t.Errorf("Introspect on another replica right after the token was stored = %+v, %v; want active", got, err)
	}
}
