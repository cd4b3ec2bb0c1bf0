package broker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tokenbroker/tokenbroker/broker/oauth"
	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
	"github.com/tokenbroker/tokenbroker/sandbox"
)

// Callers at the default min_ttl wait on the provider once per
// lifetime of a short-lived token: GetToken stops serving a token from
// memory when less than min(DefaultMinTTL, lifetime/2) remains, but the
// refresher only starts when max(lifetime/3, min(MinLead, lifetime/2))
// remains. With 4 s tokens both are 2 s and the callers win the race.
func TestRefresherRegressionAheadDefaultMinTTL(t *testing.T) {
	const lifetime = 4 * time.Second
	e := etcdtest.Start(t)
	f := newSandboxFront(t, sandbox.Config{TokenLifetime: lifetime})
	f.delay.Store(int64(20 * time.Millisecond))
	cfg := fleetConfig() // DefaultMinTTL 1 minute
	var rs []*fleetReplica
	for i := range 3 {
		rs = append(rs, newFleetReplica(t, e.Endpoint, fmt.Sprintf("bug1-%d", i), cfg))
	}
	putProvider(t, rs[0].Broker, sandboxProvider("orders", f.TokenURL()), sandboxClientSecret)
	key, _ := NewTokenKey("orders", "", nil)
	first := getToken(t, rs[0].Broker, "orders")
	pollFor(t, "the first background refresh", 3*lifetime, func() bool {
		rec := rs[0].cached(key.id())
		return rec != nil && rec.Generation > first.Generation
	})
	var mu sync.Mutex
	var misses, calls int
	ctx, stop := context.WithTimeout(context.Background(), 8*time.Second)
	defer stop()
	var wg sync.WaitGroup
	for _, r := range rs {
		wg.Go(func() {
			for ctx.Err() == nil {
				cur := r.cached(key.id())
				miss := cur == nil || !cur.Fresh(time.Now(), cfg.DefaultMinTTL)
				if _, err := r.GetToken(context.Background(), TokenRequest{Provider: "orders"}); err != nil {
					t.Errorf("GetToken: %v", err)
				}
				mu.Lock()
				calls++
				if miss {
					misses++
				}
				mu.Unlock()
				time.Sleep(time.Millisecond)
			}
		})
	}
	wg.Wait()
	if misses != 0 {
		t.Errorf("%d of %d calls at the default min_ttl fetched synchronously, want 0", misses, calls)
	}
}

// A leader whose session lease is lost while its refresh of a
// rotating grant is in flight keeps retrying that refresh with the same
// refresh token; the new leader, holding the grant lock now, refreshes
// with the same refresh token: the provider sees a replaced refresh token
// again, answers invalid_grant and revokes the lineage.
func TestRefresherRegressionDeposedLeaderRetriesRotatingRefresh(t *testing.T) {
	e := etcdtest.Start(t)
	f := rotatingSandbox(t, 10*time.Second)
	cfg := fleetConfig()
	cfg.Refresh = RefreshConfig{LeadFraction: 0.9}
	var rs []*fleetReplica
	for i := range 3 {
		rs = append(rs, newFleetReplica(t, e.Endpoint, fmt.Sprintf("bug2-%d", i), cfg))
	}
	putRotatingAccount(t, rs[0].Broker, f)
	req := TokenRequest{Provider: "media", Account: "alice", MinTTL: time.Second}
	for _, r := range rs { // every replica reports the key hot
		if _, err := r.GetToken(context.Background(), req); err != nil {
			t.Fatal(err)
		}
	}
	sent := f.sb.RefreshCalls()
	f.sb.SetFailure(&sandbox.Failure{Status: 503, Body: `{"error":"temporarily_unavailable"}`, Delay: time.Second})
	pollFor(t, "the leader's refresh at the provider", 10*time.Second, func() bool { return f.sb.RefreshCalls() > sent })
	old := leaderAmong(rs, 0)
	if old == nil {
		t.Fatal("no single leader")
	}
	sess, err := old.session(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	cli := e.Client(t, nil)
	if _, err := cli.Revoke(context.Background(), sess.Lease()); err != nil { // old keeps running
		t.Fatal(err)
	}
	f.sb.SetFailure(nil)
	time.Sleep(3 * time.Second) // the new leader refreshes; old's request is answered 503 and retried

	if n := f.sb.ReusedRefreshTokens(); n != 0 {
		t.Errorf("the provider saw %d replaced refresh tokens presented again, want 0", n)
	}
	if n := grantTypeCounts(f.sb)["password"]; n != 1 {
		t.Errorf("the provider got %d password grants, want 1 (a rejected refresh token made the broker fall back)", n)
	}
}

// A provider that hangs: a timeout starts no cooldown (noteFailure
// gives up when the fetch context has expired, which a timeout always
// has), so every wave of callers sends the provider another request, for
// as long as it hangs; and
// the fetches that waited for the grant lock behind the hanging one fail
// with context.DeadlineExceeded (gRPC DeadlineExceeded although the
// caller's own deadline is far), without serving the token that is still
// valid.
func TestRefresherRegressionHangingProvider(t *testing.T) {
	e := etcdtest.Start(t)
	clock := newClock()
	f := newSandboxFront(t, sandbox.Config{})
	cfg := fleetConfig()
	cfg.Now = clock.Now
	cfg.FetchTimeout = time.Second
	cfg.CooldownBase = time.Minute
	var rs []*fleetReplica
	for i := range 3 {
		rs = append(rs, newFleetReplica(t, e.Endpoint, fmt.Sprintf("bug3-%d", i), cfg))
	}
	putProvider(t, rs[0].Broker, sandboxProvider("orders", f.TokenURL()), sandboxClientSecret)
	valid, err := rs[0].GetToken(context.Background(), TokenRequest{Provider: "orders", Scopes: []string{"read"}})
	if err != nil {
		t.Fatal(err)
	}
	f.sb.SetFailure(&sandbox.Failure{Delay: time.Hour})
	clock.Advance(50 * time.Minute) // valid for 10 more minutes
	calls0 := f.sb.TokenCalls()
	for wave := range 4 {
		var wg sync.WaitGroup
		for _, r := range rs {
			wg.Go(func() {
				rec, err := r.GetToken(context.Background(), TokenRequest{Provider: "orders", Scopes: []string{"read"}, MinTTL: 30 * time.Minute})
				if err != nil || rec.AccessToken != valid.AccessToken {
					t.Errorf("wave %d, %s: the still-valid token: got %v, %v; want it served", wave, r.name, rec, err)
				}
			})
			wg.Go(func() {
				_, err := r.GetToken(context.Background(), TokenRequest{Provider: "orders", Scopes: []string{"write"}})
				if !errors.Is(err, ErrProviderTimeout) {
					t.Errorf("wave %d, %s: a token never obtained: error %v, want one wrapping ErrProviderTimeout", wave, r.name, err)
				}
			})
		}
		wg.Wait()
	}
	// The cooldown is per replica: each may try once in a minute.
	if calls := f.sb.TokenCalls() - calls0; calls > len(rs) {
		t.Errorf("the hanging provider got %d calls in four waves within a minute, want at most %d (one per replica, then the cooldown)", calls, len(rs))
	}
}

// Retry-After is honoured between fetches: after a 429 with Retry-After
// the request fails at once and the grant cools down until the time the
// provider named, not for CooldownBase only.
func TestRefresherRegressionRetryAfterBetweenFetches(t *testing.T) {
	e := etcdtest.Start(t)
	f := newSandboxFront(t, sandbox.Config{})
	cfg := fleetConfig()
	cfg.CooldownBase = 100 * time.Millisecond
	r := newFleetReplica(t, e.Endpoint, "bug4-0", cfg)
	putProvider(t, r.Broker, sandboxProvider("orders", f.TokenURL()), sandboxClientSecret)
	ra := "3"
	f.retryAfter.Store(&ra)
	f.sb.SetFailure(&sandbox.Failure{Status: http.StatusTooManyRequests, ContentType: "text/plain", Body: "slow down"})
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		_, err := r.GetToken(context.Background(), TokenRequest{Provider: "orders"})
		var oe *oauth.Error
		if !errors.As(err, &oe) || oe.StatusCode != 429 {
			t.Fatalf("GetToken: %v, want the provider's 429", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if calls := f.sb.TokenCalls(); calls != 1 {
		t.Errorf("the provider got %d calls within 2 s of answering 429 with Retry-After: 3, want 1", calls)
	}
}

// During an etcd outage, a call that needs etcd and has no
// deadline of its own waits FetchTimeout (30 s by default) on the grant
// lock and fails with context.DeadlineExceeded, not "Unavailable quickly"
// (ErrStoreUnavailable within StoreTimeout); and a token still valid in
// memory is not served to a caller whose min_ttl it no longer meets.
func TestRefresherRegressionEtcdOutageAnswersQuickly(t *testing.T) {
	etcd := startRestartableEtcd(t)
	f := newSandboxFront(t, sandbox.Config{TokenLifetime: 20 * time.Second})
	cfg := fleetConfig() // StoreTimeout 2s, FetchTimeout 10s
	cfg.Refresh = RefreshConfig{Disabled: true}
	r := newFleetReplica(t, etcd.endpoint(), "bug5-0", cfg)
	putProvider(t, r.Broker, sandboxProvider("orders", f.TokenURL()), sandboxClientSecret)
	valid := getToken(t, r.Broker, "orders")
	stopped := etcd.stopWhileCalled(r.cli)

	start := time.Now()
	_, err := r.GetToken(context.Background(), TokenRequest{Provider: "orders", Scopes: []string{"missing"}})
	took := time.Since(start)
	if !errors.Is(err, ErrStoreUnavailable) || took > cfg.StoreTimeout+time.Second {
		t.Errorf("GetToken of a missing token with etcd down: %v after %v; want ErrStoreUnavailable within about StoreTimeout (%v)", err, took, cfg.StoreTimeout)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	rec, err := r.GetToken(ctx, TokenRequest{Provider: "orders", MinTTL: 15 * time.Second})
	if err != nil || rec.AccessToken != valid.AccessToken {
		t.Errorf("GetToken of a still-valid token beyond its min_ttl with etcd down: %v, %v; want the valid token", rec, err)
	}
	<-stopped
	etcd.start()
	etcd.follow(r.cli)
}

// Close after the session's lease was lost (expired or revoked)
// reports an error: revoking a lease that is already gone is
// "requested lease not found", which means the locks are released already.
func TestRefresherRegressionCloseAfterLeaseLoss(t *testing.T) {
	e := etcdtest.Start(t)
	r := newFleetReplica(t, e.Endpoint, "bug6-0", fleetConfig())
	sess, err := r.session(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.Endpoint}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Revoke(context.Background(), sess.Lease()); err != nil {
		t.Fatal(err)
	}
	r.killed.Store(true) // the test closes it
	defer close(r.dead)
	defer r.cli.Close()
	if err := r.Close(); err != nil {
		t.Errorf("Close after the session lease was lost: %v, want nil", err)
	}
}
