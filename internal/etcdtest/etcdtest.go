// Package etcdtest runs a real, embedded etcd for tests.
package etcdtest

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/tokenbroker/tokenbroker/internal/embedetcd"
)

// Etcd is an embedded etcd member started for one test.
type Etcd struct {
	Endpoint string
	srv      *embedetcd.Server
}

// Start starts a fast, fsync-free member in a temporary directory and stops
// it when the test ends.
func Start(t testing.TB) *Etcd {
	t.Helper()
	srv, err := embedetcd.Start(context.Background(), embedetcd.Config{Dir: t.TempDir(), Fast: true, NoFsync: true})
	if err != nil {
		t.Fatalf("start embedded etcd: %v", err)
	}
	t.Cleanup(srv.Close)
	return &Etcd{Endpoint: srv.Endpoint(), srv: srv}
}

// Counter counts the requests a client sends to etcd.
type Counter struct{ n atomic.Int64 }

// Load returns the number of requests sent so far.
func (c *Counter) Load() int64 { return c.n.Load() }

// Client returns a new client of e, closed when the test ends. When counter is
// non-nil, every unary and streaming request the client sends is counted.
func (e *Etcd) Client(t testing.TB, counter *Counter) *clientv3.Client {
	t.Helper()
	cfg := clientv3.Config{Endpoints: []string{e.Endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()}
	if counter != nil {
		cfg.DialOptions = []grpc.DialOption{
			grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
				counter.n.Add(1)
				return invoker(ctx, method, req, reply, cc, opts...)
			}),
			grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
				counter.n.Add(1)
				return streamer(ctx, desc, cc, method, opts...)
			}),
		}
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}
