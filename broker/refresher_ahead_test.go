package broker

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
	"github.com/tokenbroker/tokenbroker/sandbox"
)

// TestRefresherAheadOfExpiry is acceptance 2: tokens live 4 seconds, callers
// on three replicas ask continuously, and once the key is hot no call waits
// on the provider: the elected leader refreshes the token when a third of
// its lifetime (here the 2 s MinLead) remains, and every replica serves the
// new token from memory. Short version 8 s, long version 60 s.
//
// A call that finds no token in memory fresh enough for its min_ttl leaves
// the hot path (etcd lock, maybe the provider): the test counts those
// synchronous fetches with the same check GetToken makes, and wants none.
// Its callers ask with min_ttl 1 s, below the refresher's 2 s lead. (A
// caller at the default min_ttl, capped at half the lifetime, i.e. 2 s
// here, finds the token stale at the very moment the leader starts to
// refresh it, and waits.)
func TestRefresherAheadOfExpiry(t *testing.T) {
	t.Parallel() // mostly waiting: overlaps with the other long scenarios
	duration := shortOrLong(t, "callers ask for", 8*time.Second, 60*time.Second)
	const (
		lifetime = 4 * time.Second
		minTTL   = time.Second
		perRep   = 4 // callers per replica
	)
	e := etcdtest.Start(t)
	f := newSandboxFront(t, sandbox.Config{TokenLifetime: lifetime})
	f.delay.Store(int64(20 * time.Millisecond)) // a provider call costs something
	cfg := fleetConfig()
	var rs []*fleetReplica
	for i := range 3 {
		rs = append(rs, newFleetReplica(t, e.Endpoint, fmt.Sprintf("ahead-%d", i), cfg))
	}
	putProvider(t, rs[0].Broker, sandboxProvider("orders", f.TokenURL()), sandboxClientSecret)
	req := TokenRequest{Provider: "orders", MinTTL: minTTL}
	key, err := NewTokenKey("orders", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	id := key.id()

	// Warm up: one call makes the key hot; with no caller at all after it,
	// the leader refreshes the token ahead of its expiry and every replica
	// sees the new one.
	first, err := rs[1].GetToken(context.Background(), req)
	if err != nil {
		t.Fatalf("first GetToken: %v", err)
	}
	pollFor(t, "the first background refresh on every replica", 3*lifetime, func() bool {
		for _, r := range rs {
			if rec := r.cached(id); rec == nil || rec.Generation <= first.Generation {
				return false
			}
		}
		return true
	})
	refresh := cfg.Refresh.withDefaults()
	lead := max(time.Duration(float64(lifetime)*refresh.LeadFraction), min(refresh.MinLead, lifetime/2))

	var (
		lat                latencyLog
		calls, synchronous atomic.Int64
		expired, tooShort  atomic.Int64
		errMu              sync.Mutex
		errs               []error
	)
	calls0 := f.sb.TokenCalls()
	ctx, stop := context.WithTimeout(context.Background(), duration)
	defer stop()
	var wg sync.WaitGroup
	for _, r := range rs {
		for range perRep {
			wg.Go(func() {
				for ctx.Err() == nil {
					// The check GetToken makes on its hot path.
					cur := r.cached(id)
					miss := cur == nil || !cur.Fresh(time.Now(), minTTL)
					start := time.Now()
					rec, err := r.GetToken(context.Background(), req)
					lat.add(time.Since(start))
					calls.Add(1)
					now := time.Now()
					switch {
					case err != nil:
						errMu.Lock()
						errs = append(errs, err)
						errMu.Unlock()
					case !rec.ExpiresAt.After(now):
						expired.Add(1)
					case rec.ExpiresAt.Sub(now) < min(minTTL, rec.Lifetime()/2): // GetToken's contract
						tooShort.Add(1)
					}
					if miss {
						synchronous.Add(1)
					}
					time.Sleep(time.Millisecond)
				}
			})
		}
	}
	wg.Wait()
	provider := f.sb.TokenCalls() - calls0

	n, p50, p99, maxLat, slow := lat.summary(10 * time.Millisecond)
	interval := lifetime - lead
	t.Logf("%d GetToken calls on %d replicas in %v: p50 %v, p99 %v, max %v; %d took over 10ms; %d synchronous fetches",
		n, len(rs), duration, p50, p99, maxLat, slow, synchronous.Load())
	t.Logf("provider calls: %d in %v (%.2f per %v token lifetime; a refresh every %v would make %.1f)",
		provider, duration, float64(provider)/(float64(duration)/float64(lifetime)), lifetime, interval, float64(duration)/float64(interval))

	if len(errs) > 0 {
		t.Errorf("%d calls failed, first: %v; want none", len(errs), errs[0])
	}
	if got := expired.Load(); got != 0 {
		t.Errorf("%d calls got an expired token, want 0", got)
	}
	if got := tooShort.Load(); got != 0 {
		t.Errorf("%d calls got a token valid for less than min_ttl %v, want 0", got, minTTL)
	}
	if got := synchronous.Load(); got != 0 {
		t.Errorf("%d of %d calls found no fresh token in memory and fetched synchronously, want 0", got, n)
	}
	// One provider call per refresh interval, however many replicas: the
	// leader refreshes, the others only watch.
	if limit := int(duration/interval) + 2; provider > limit {
		t.Errorf("provider got %d calls in %v, want at most %d (one per %v refresh interval)", provider, duration, limit, interval)
	}
}
