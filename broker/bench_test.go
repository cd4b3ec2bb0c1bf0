package broker

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
)

// BenchmarkGetTokenHit measures the broker's hot path: GetToken of a fresh
// token in memory (key normalization, cache lookup, freshness, the
// access-time touch and the hit counter), with one scope, several scopes
// out of order, and an account.
func BenchmarkGetTokenHit(b *testing.B) {
	e := etcdtest.Start(b)
	mh := newMediaHound(b, 0)
	br := newTestBroker(b, e)
	putProvider(b, br, mediaHoundProvider(mh), mediaHoundClientSecret)
	ctx := context.Background()
	for _, bc := range []struct {
		name string
		req  TokenRequest
	}{
		{"no-scope", TokenRequest{Provider: "mediahound"}},
		{"one-scope", TokenRequest{Provider: "mediahound", Scopes: []string{"read"}}},
		{"three-scopes", TokenRequest{Provider: "mediahound", Scopes: []string{"write", "read", "admin:org"}}},
	} {
		if _, err := br.GetToken(ctx, bc.req); err != nil {
			b.Fatal(err)
		}
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := br.GetToken(ctx, bc.req); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
	if n := mh.calls(); n != 3 {
		b.Errorf("provider calls = %d, want 3 (one per key, every measured call a hit)", n)
	}
}

// BenchmarkDueTokens measures the refresh leader's look for due tokens,
// which runs every Tick, with 100k tokens cached: "hot" looks at the 100
// tokens callers asked for lately (every tick), "keep-alive-scan" also
// reads the whole cache for idle accounts (once a minute, when a provider
// has a keep-alive).
func BenchmarkDueTokens(b *testing.B) {
	e := etcdtest.Start(b)
	br := newTestBroker(b, e)
	p := mediaHoundProvider(newMediaHound(b, 0))
	p.KeepAlive = 24 * time.Hour
	putProvider(b, br, p, mediaHoundClientSecret)
	now := br.now()
	seen := map[string]time.Time{}
	for i := range 100000 {
		key, err := NewTokenKey("mediahound", "", []string{"api.read", fmt.Sprintf("tenant.%06d", i)})
		if err != nil {
			b.Fatal(err)
		}
		br.offer(key.id(), &TokenRecord{Key: key, AccessToken: fmt.Sprintf("token-%06d", i), IssuedAt: now, ExpiresAt: now.Add(time.Hour), Revision: 1})
		if i%1000 == 0 {
			seen[key.id()] = now
		}
	}
	for _, bc := range []struct {
		name string
		scan bool
	}{{"hot", false}, {"keep-alive-scan", true}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if due := br.dueTokens(0, now, seen, bc.scan); len(due) != 0 {
					b.Fatalf("%d tokens due, want none", len(due))
				}
			}
		})
	}
}
