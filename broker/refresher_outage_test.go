package broker

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// TestRefresherEtcdOutage is acceptance 6. Three replicas keep two hot
// tokens fresh, one of them a rotating refresh-token grant, while callers
// ask continuously; etcd is unreachable for at least 3 s (short: about
// 6 s in practice, as the embedded member's own Close takes 5.2 s) or 10 s
// (long), and comes back on the same data directory. Throughout, every call
// for the cached tokens succeeds; a call for a token never obtained, with
// no deadline of its own, fails with ErrStoreUnavailable after StoreTimeout
// (1 s); after etcd returns one replica takes the refresh shard and keeps
// it (no replica wins and loses it at once), the refresher resumes, and
// nothing written before is lost:
// the tokens are in etcd, and the rotating grant's refresh token still
// works at the provider (no invalid_grant, no reuse).
func TestRefresherEtcdOutage(t *testing.T) {
	t.Parallel() // mostly waiting: overlaps with the other long scenarios
	// Longer than the member's Close (5.2 s, during which open streams are
	// still served) plus the session TTL: the replicas' sessions lapse, and
	// the refresh shard must be won again after etcd returns.
	const outage = 10 * time.Second
	// Refreshed when 90% of its lifetime remains, a token outlives the
	// outage and the recovery.
	const lifetime = 26 * time.Second
	const (
		minTTL       = 500 * time.Millisecond
		storeTimeout = time.Second // what a call that needs etcd waits for it
	)
	etcd := startRestartableEtcd(t)
	f := rotatingSandbox(t, lifetime)
	cfg := fleetConfig()
	cfg.StoreTimeout = storeTimeout
	core, logs := observer.New(zap.InfoLevel)
	cfg.Logger = zap.New(core)
	cfg.FetchTimeout = 5 * time.Second
	cfg.Refresh = RefreshConfig{LeadFraction: 0.9}
	var rs []*fleetReplica
	for i := range 3 {
		rs = append(rs, newFleetReplica(t, etcd.endpoint(), fmt.Sprintf("outage-%d", i), cfg))
	}
	putRotatingAccount(t, rs[0].Broker, f)
	putProvider(t, rs[0].Broker, sandboxProvider("orders", f.TokenURL()), sandboxClientSecret)
	reqs := []TokenRequest{
		{Provider: "media", Account: "alice", MinTTL: minTTL},
		{Provider: "orders", MinTTL: minTTL},
	}
	var ids []string
	for _, req := range reqs {
		key, err := NewTokenKey(req.Provider, req.Account, req.Scopes)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, key.id())
		// Before the outage: a store timeout of 1 s can lapse on a loaded
		// machine, so the first fetch is tried again.
		pollFor(t, fmt.Sprintf("GetToken(%v) before the outage", key), 15*time.Second, func() bool {
			_, err := rs[0].GetToken(context.Background(), req)
			if err != nil && !errors.Is(err, ErrStoreUnavailable) {
				t.Fatalf("GetToken(%v): %v", key, err)
			}
			return err == nil
		})
	}

	var stats callerStats
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, req := range reqs {
		callContinuously(ctx, &wg, 3, func() *fleetReplica { return rs[rand.IntN(len(rs))] }, req, &stats)
	}
	defer func() { stop(); wg.Wait() }()

	// generations are the token generations every replica holds (0 where
	// they differ).
	generations := func() []int64 {
		out := make([]int64, len(ids))
		for i, id := range ids {
			for j, r := range rs {
				rec := r.cached(id)
				switch {
				case rec == nil:
					out[i] = 0
				case j == 0:
					out[i] = rec.Generation
				case rec.Generation != out[i]:
					out[i] = 0
				}
			}
		}
		return out
	}
	// Stop etcd once the refresher keeps both tokens fresh.
	var before []int64
	pollFor(t, "a background refresh of both tokens on every replica", 3*lifetime, func() bool {
		before = generations()
		return before[0] >= 2 && before[1] >= 2
	})

	// etcd is unreachable from the moment Close starts: it stops accepting
	// at once, then waits up to its request timeout (5.2 s here) for the
	// streams still open before it is gone. The probes start once it
	// refuses requests: one sent before Close begins would obtain the
	// token it asks for.
	closed := etcd.stopWhileCalled(rs[0].cli)
	stopped := time.Now()
	var probes []time.Duration
	for time.Since(stopped) < outage || !isClosed(closed) {
		r := rs[len(probes)%len(rs)]
		start := time.Now()
		_, err := r.GetToken(context.Background(), TokenRequest{Provider: "orders", Scopes: []string{"never-asked"}})
		took := time.Since(start)
		probes = append(probes, took)
		if !errors.Is(err, ErrStoreUnavailable) {
			t.Errorf("GetToken of a missing token on %s during the outage: %v, want ErrStoreUnavailable", r.name, err)
		}
		if took > 2*storeTimeout {
			t.Errorf("GetToken of a missing token on %s during the outage took %v, want ErrStoreUnavailable after about StoreTimeout (%v)", r.name, took, storeTimeout)
		}
		time.Sleep(200 * time.Millisecond)
	}

	restarting := time.Now() // replicas may reconnect before start returns
	afterRestart := func(e observer.LoggedEntry) bool { return e.Time.After(restarting) }
	etcd.start()
	restarted := time.Now()
	for _, r := range rs {
		etcd.follow(r.cli)
	}
	resumed := pollFor(t, "background refresh of both tokens after etcd returned", 30*time.Second, func() bool {
		g := generations()
		return g[0] > before[0] && g[1] > before[1]
	})
	stop()
	wg.Wait()
	t.Logf("etcd unreachable for %v; %d calls for a missing token during it answered within max %v; the refresher resumed %v after etcd returned",
		restarted.Sub(stopped).Round(time.Millisecond), len(probes), longestOf(probes), resumed)
	won := logs.FilterMessage("leading refresh shard").Filter(afterRestart).Len()
	lost := logs.FilterMessageSnippet("lost refresh shard leadership").Filter(afterRestart).Len()
	t.Logf("after etcd returned: %d replica(s) won the refresh shard, %d lost it", won, lost)
	if won > 1 || lost > 0 {
		t.Errorf("after etcd returned, the shard was won %d times and lost %d times; want it won once and kept", won, lost)
	}

	stats.check(t)
	for i, id := range ids {
		if rec, err := rs[0].readToken(context.Background(), id); err != nil || rec == nil || rec.Generation <= before[i] {
			t.Errorf("etcd holds %+v (%v) for %s, want a record newer than generation %d", rec, err, id, before[i])
		}
	}
	if n := f.sb.ReusedRefreshTokens(); n != 0 {
		t.Errorf("the provider saw %d replaced refresh tokens presented again, want 0", n)
	}
	if n := grantTypeCounts(f.sb)["password"]; n != 1 {
		t.Errorf("the provider got %d password grants, want 1: the refresh token was lost or rejected", n)
	}
	g := aliceGrant(t, rs[0].Broker)
	if g.Health != HealthOK || g.RefreshToken == "" {
		t.Errorf("grant media/alice: health %q (%s), refresh token set %v; want ok and set", g.Health, g.LastError, g.RefreshToken != "")
	}
	rec, err := rs[1].GetToken(context.Background(), reqs[0])
	if err != nil {
		t.Fatalf("GetToken after the outage: %v", err)
	}
	if code := f.whoami(t, rec.AccessToken); code != 200 {
		t.Errorf("the provider answers %d to the token served after the outage, want 200", code)
	}
	if _, err := rs[2].GetToken(context.Background(), TokenRequest{Provider: "orders", Scopes: []string{"never-asked"}}); err != nil {
		t.Errorf("GetToken of a new token after the outage: %v", err)
	}
}

// isClosed reports whether ch is closed.
func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
