package broker

import (
	"context"
	"testing"

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
