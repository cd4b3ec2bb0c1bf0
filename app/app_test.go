package app

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"

	"github.com/tokenbroker/tokenbroker/internal/testkeys"
)

// TestMain fails the package when a test leaves a goroutine behind: Close
// must stop everything Start started.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestStartUsesEtcdDialOptions starts an App on an embedded etcd with an
// interceptor among the etcd client's dial options: the start's own
// requests (the API key store's load, the broker's) and a request through
// Client pass through it, EtcdEndpoints names the embedded member, and
// Close stops everything.
func TestStartUsesEtcdDialOptions(t *testing.T) {
	cfg := DefaultConfig()
	cfg.GRPCAddr, cfg.HTTPAddr, cfg.MetricsAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.DataDir = t.TempDir()
	cfg.ShutdownTimeout = 5 * time.Second
	cfg.Keyring = testkeys.Keyring()
	cfg.InsecureNoAuth = true
	var calls atomic.Int64
	cfg.EtcdDialOptions = []grpc.DialOption{grpc.WithChainUnaryInterceptor(
		func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			calls.Add(1)
			return invoker(ctx, method, req, reply, cc, opts...)
		})}
	if err := cfg.Validate(envMap(nil)); err != nil {
		t.Fatalf("Validate = %v", err)
	}
	a, err := Start(t.Context(), cfg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	atStart := calls.Load()
	if atStart == 0 {
		t.Errorf("etcd requests through the interceptor during Start = 0, want some")
	}
	if eps := a.EtcdEndpoints(); len(eps) != 1 || eps[0] != a.etcd.Endpoint() {
		t.Errorf("EtcdEndpoints() = %q, want the embedded member's %q", eps, a.etcd.Endpoint())
	}
	if _, err := a.Client().Get(t.Context(), cfg.Etcd.Prefix); err != nil {
		t.Fatalf("Get through Client: %v", err)
	}
	if got := calls.Load(); got <= atStart {
		t.Errorf("etcd requests through the interceptor after a Get = %d, want more than %d", got, atStart)
	}
	if err := a.Close(); err != nil {
		t.Errorf("Close = %v, want nil", err)
	}
}
