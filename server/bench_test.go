package server_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"go.uber.org/zap"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/server"
)

// BenchmarkGetTokenGRPC measures GetToken of a fresh token through the real
// gRPC stack on loopback: client, server, interceptors, broker memory cache.
// allocs/op counts both client and server.
func BenchmarkGetTokenGRPC(b *testing.B) {
	in, before := benchEnv(b)
	req := &tokenbrokerv1.GetTokenRequest{Provider: "sandbox"}
	ctx := context.Background()
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := in.tokens.GetToken(ctx, req); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.SetParallelism(8)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := in.tokens.GetToken(ctx, req); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	assertNoEtcdOnHits(b, in, before)
}

// BenchmarkGetTokenHandler measures the GetToken handler alone, called as
// the interceptor chain calls it: request validation, the broker's cache
// lookup and the response (a Token with two timestamps). Its allocations
// are the response's and the token id's.
func BenchmarkGetTokenHandler(b *testing.B) {
	in, before := benchEnv(b)
	h := server.NewTokenBrokerServer(in.broker, zap.NewNop())
	ctx := context.Background()
	for _, bc := range []struct {
		name string
		req  *tokenbrokerv1.GetTokenRequest
	}{
		{"no-scope", &tokenbrokerv1.GetTokenRequest{Provider: "sandbox"}},
		{"two-scopes", &tokenbrokerv1.GetTokenRequest{Provider: "sandbox", Scopes: []string{"write", "read"}}},
	} {
		if _, err := h.GetToken(ctx, bc.req); err != nil {
			b.Fatal(err)
		}
		before = in.requests.Load()
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := h.GetToken(ctx, bc.req); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
	assertNoEtcdOnHits(b, in, before)
}

// BenchmarkGetTokenREST measures the same over the REST gateway.
func BenchmarkGetTokenREST(b *testing.B) {
	in, before := benchEnv(b)
	url := in.baseURL + "/v1/providers/sandbox/token"
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	b.ReportAllocs()
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req, err := http.NewRequest(http.MethodPost, url, strings.NewReader("{}"))
			if err != nil {
				b.Error(err)
				return
			}
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Authorization", "Bearer "+testAdminKey)
			resp, err := client.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
	assertNoEtcdOnHits(b, in, before)
}

func benchEnv(b *testing.B) (*instance, int64) {
	e := newEnv(b)
	// One caller identity at full speed: the per-caller limit is lifted
	// out of the way of what is measured.
	in := e.startWith(options{rateLimit: server.RateLimit{RPS: 1e9, Burst: 1e9}, quiet: true})
	e.register(in, "sandbox")
	if _, err := in.tokens.GetToken(context.Background(), &tokenbrokerv1.GetTokenRequest{Provider: "sandbox"}); err != nil {
		b.Fatal(err)
	}
	settle(b, in.requests)
	return in, in.requests.Load()
}

func assertNoEtcdOnHits(b *testing.B, in *instance, before int64) {
	if n := in.requests.Load() - before; n != 0 {
		b.Errorf("etcd requests during cache hits = %d, want 0", n)
	}
}
