package server

import (
	"context"
	"net"
	"testing"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/tokenbroker/tokenbroker/broker/apikey"
	"github.com/tokenbroker/tokenbroker/broker/policy"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
	"github.com/tokenbroker/tokenbroker/internal/testkeys"
)

// BenchmarkInterceptorChain measures the interceptor chain of a GetToken
// call as the servers run it (metrics, logging, API-key authentication,
// rate limit, policy, recovery) around a handler that returns a prepared
// answer: the cost the chain adds to every call.
func BenchmarkInterceptorChain(b *testing.B) {
	e := etcdtest.Start(b)
	keys, err := apikey.NewStore(context.Background(), e.Client(b, nil), "/bench/", testkeys.Keyring(), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer keys.Close()
	_, key, err := keys.Create(context.Background(), "svc-bench", "")
	if err != nil {
		b.Fatal(err)
	}
	pol, err := policy.New([]policy.Rule{{Identities: []string{"svc-*"}, Providers: []string{"sandbox"}, Actions: []policy.Action{policy.Token}}})
	if err != nil {
		b.Fatal(err)
	}
	g := newGuard(AuthConfig{Keys: keys, Policy: pol, RateLimit: RateLimit{RPS: 1e9, Burst: 1e9}}, zap.NewNop(), zap.NewNop())
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+key, "content-type", "application/grpc", "user-agent", "grpc-go/1.80.0"))
	ctx = peer.NewContext(ctx, &peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}})
	req := &tokenbrokerv1.GetTokenRequest{Provider: "sandbox", Scopes: []string{"read"}}
	resp := &tokenbrokerv1.GetTokenResponse{}
	info := &grpc.UnaryServerInfo{FullMethod: tokenbrokerv1.TokenBrokerService_GetToken_FullMethodName}
	handler := func(context.Context, any) (any, error) { return resp, nil }

	metrics := NewMetrics()
	registered := grpc.NewServer()
	tokenbrokerv1.RegisterTokenBrokerServiceServer(registered, tokenbrokerv1.UnimplementedTokenBrokerServiceServer{})
	metrics.grpc.InitializeMetrics(registered)
	for _, tt := range []struct {
		name    string
		metrics *Metrics
	}{{"metrics", metrics}, {"no-metrics", nil}} {
		chain := unaryChain(zap.NewNop(), g, tt.metrics)
		b.Run(tt.name, func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := chain(ctx, req, info, handler); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
