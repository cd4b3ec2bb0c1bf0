package interop_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker"
)

// TestFositeServedExpiryIsAPromise hands out fosite tokens of a password
// account, 5s each, for several lifetimes, and introspects every token
// handed out at fosite shortly before the expiry it was served with: fosite
// revokes the access token a refresh token came with, so the broker, which
// is not told so, must learn it (or assume it) and serve each token only
// until it replaces it. None may be inactive.
func TestFositeServedExpiryIsAPromise(t *testing.T) {
	const (
		lifetime    = 5 * time.Second
		run         = 13 * time.Second
		checkBefore = 200 * time.Millisecond
	)
	s := startFosite(t, lifetime)
	b := newBroker(t, "")
	fositeProvider(t, b, s, "fosite")
	ctx := context.Background()
	fositeAlice(t, b)
	req := broker.TokenRequest{Provider: "fosite", Account: "alice", MinTTL: time.Second}
	var (
		mu       sync.Mutex
		seen     = map[string]bool{}
		inactive int
		checks   sync.WaitGroup
	)
	for start := time.Now(); time.Since(start) < run; time.Sleep(25 * time.Millisecond) {
		rec, err := b.GetToken(ctx, req)
		if err != nil {
			t.Fatalf("GetToken after %v: %v", time.Since(start), err)
		}
		if seen[rec.AccessToken] {
			continue
		}
		seen[rec.AccessToken] = true
		checks.Add(1)
		go func() {
			defer checks.Done()
			time.Sleep(time.Until(rec.ExpiresAt.Add(-checkBefore)))
			if !s.active(t, rec.AccessToken) {
				mu.Lock()
				inactive++
				mu.Unlock()
			}
		}()
	}
	checks.Wait()
	t.Logf("fosite: %d tokens handed out, %d inactive %v before their served expiry; fosite saw %v", len(seen), inactive, checkBefore, s.grantTypes())
	if inactive != 0 {
		t.Errorf("%d of %d tokens handed out were inactive at fosite before their served expiry, want 0", inactive, len(seen))
	}
	if len(seen) < 3 {
		t.Errorf("%d tokens handed out in %v, want at least 3", len(seen), run)
	}
	p, err := b.GetProvider(ctx, "fosite")
	if err != nil || p.LearnedRefreshRevokesAccessToken == nil || !*p.LearnedRefreshRevokesAccessToken {
		t.Errorf("learned refresh_revokes_access_token %v, %v; want true learned from fosite's introspection", p.LearnedRefreshRevokesAccessToken, err)
	}
}
