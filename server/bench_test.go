package server_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

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
