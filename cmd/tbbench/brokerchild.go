package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/apikey"
	"github.com/tokenbroker/tokenbroker/broker/oauth"
	"github.com/tokenbroker/tokenbroker/broker/policy"
	"github.com/tokenbroker/tokenbroker/broker/seal"
	"github.com/tokenbroker/tokenbroker/internal/embedetcd"
	"github.com/tokenbroker/tokenbroker/server"
)

// brokerChildConfig is what the broker process is told, as JSON in
// TBBENCH_BROKER.
type brokerChildConfig struct {
	SandboxURL   string             `json:"sandbox_url"`
	ClientID     string             `json:"client_id"`
	ClientSecret string             `json:"client_secret"`
	Keys         []apikey.StaticKey `json:"keys"`
	// MasterKey is the key-file line of the master key (seal.FormatKey):
	// the tokens loaded for the memory figure are sealed with it.
	MasterKey string `json:"master_key"`
}

// The provider every benchmark call names, and the policy that lets the
// benchmark's callers (identities bench-0, bench-1, …) get its tokens.
const (
	benchProvider = "sandbox"
	benchIdentity = "bench-*"
)

// newProductionLogger is the logger `tokenbroker serve` builds by default
// (cmd/tokenbroker newLogger): JSON, ISO 8601 times, level info, to w.
func newProductionLogger(w io.Writer) *zap.Logger {
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	return zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(enc), zapcore.Lock(zapcore.AddSync(w)), zapcore.InfoLevel),
		zap.ErrorOutput(zapcore.AddSync(w)))
}

// runBrokerChild runs the broker as `tokenbroker serve` does with embedded
// etcd (cmd/tokenbroker StartApp): etcd with its production settings
// (fsync, default raft ticks) in a temporary directory, one etcd client
// shared by the API key store and the broker, the broker with its
// background refresher, authentication by API key and a policy, and the
// info-level JSON log on stderr. Two things differ: the etcd client counts
// its requests, and the per-caller rate limit is lifted, since the
// benchmark's few identities call far more often than the default 1000/s.
func runBrokerChild(ctx context.Context, ready func(readyLine), control *http.ServeMux) error {
	var cfg brokerChildConfig
	if err := json.Unmarshal([]byte(getenv("TBBENCH_BROKER")), &cfg); err != nil {
		return fmt.Errorf("TBBENCH_BROKER: %w", err)
	}
	start := time.Now()
	log := newProductionLogger(os.Stderr)
	dir, err := os.MkdirTemp("", "tbbench-broker-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	etcd, err := embedetcd.Start(ctx, embedetcd.Config{Dir: dir, Logger: log.Named("etcd").WithOptions(zap.IncreaseLevel(zap.ErrorLevel))})
	if err != nil {
		return err
	}
	defer etcd.Close()

	counter := newEtcdCounter(broker.DefaultPrefix)
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{etcd.Endpoint()},
		DialTimeout: 5 * time.Second,
		Logger:      log.Named("etcd-client").WithOptions(zap.IncreaseLevel(zap.WarnLevel)),
		Context:     context.Background(),
		DialOptions: counter.dialOptions(),
	})
	if err != nil {
		return err
	}
	defer cli.Close()

	keyring, err := seal.ParseKeyEnv(cfg.MasterKey)
	if err != nil {
		return err
	}
	keys, err := apikey.NewStore(ctx, cli, broker.DefaultPrefix, keyring, log)
	if err != nil {
		return err
	}
	defer keys.Close()
	if err := keys.SetStatic(cfg.Keys); err != nil {
		return err
	}
	pol, err := policy.New([]policy.Rule{{Identities: []string{benchIdentity}, Providers: []string{benchProvider, sentinelProvider}, Actions: []policy.Action{policy.Token, policy.Introspect}}})
	if err != nil {
		return err
	}
	metrics := server.NewMetrics()
	b, err := broker.New(ctx, broker.Config{Client: cli, Keyring: keyring, Logger: log, Observer: metrics})
	if err != nil {
		return err
	}
	defer b.Close()
	metrics.WatchGrants(b)
	if _, err := b.PutProvider(ctx, broker.Provider{
		Name: benchProvider, TokenURL: cfg.SandboxURL, ClientID: cfg.ClientID, ClientAuth: oauth.AuthBasic,
	}, cfg.ClientSecret); err != nil {
		return err
	}
	srv, err := server.New(server.Config{
		GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Broker: b, Logger: log, Metrics: metrics,
		Auth: server.AuthConfig{Keys: keys, Policy: pol, RateLimit: server.RateLimit{RPS: 1e9, Burst: 1e9}},
	})
	if err != nil {
		return err
	}
	b.SetCallbackURL("http://" + srv.HTTPAddr() + server.CallbackPath)
	srv.Start()
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	startup := time.Since(start)

	control.HandleFunc("GET /etcd", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, counter.snapshot()) })

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	cs := &http.Server{Handler: control, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = cs.Serve(lis) }()
	defer cs.Close()
	ready(readyLine{GRPC: srv.GRPCAddr(), HTTP: srv.HTTPAddr(), Control: lis.Addr().String(), Startup: startup.String(), EtcdAddr: etcd.Endpoint()})
	select {
	case <-ctx.Done():
		return nil
	case err := <-srv.Err():
		return err
	}
}

// etcdCounter counts what an etcd client sends: every unary request and
// every message sent on a stream, by gRPC method, with the background
// traffic of the refresher told apart: the hot-token report (a Put under
// hot/ once a second), the leader's read of the reports (a Range under
// hot/) and lease keep-alives.
type etcdCounter struct {
	hot []byte
	mu  sync.Mutex
	n   map[string]int64
}

func newEtcdCounter(prefix string) *etcdCounter {
	return &etcdCounter{hot: []byte(prefix + "hot/"), n: map[string]int64{}}
}

// Classes of etcd requests in etcdCounts.
const (
	etcdHotReport = "hot-token report (Put hot/)"
	etcdHotRead   = "hot-token read (Range hot/)"
	etcdKeepAlive = "lease keep-alive"
)

func (c *etcdCounter) count(method string, msg any) {
	class := method
	switch m := msg.(type) {
	case *etcdserverpb.PutRequest:
		if bytes.HasPrefix(m.Key, c.hot) {
			class = etcdHotReport
		}
	case *etcdserverpb.RangeRequest:
		if bytes.HasPrefix(m.Key, c.hot) {
			class = etcdHotRead
		}
	case *etcdserverpb.LeaseKeepAliveRequest:
		class = etcdKeepAlive
	}
	c.mu.Lock()
	c.n[class]++
	c.mu.Unlock()
}

func (c *etcdCounter) snapshot() map[string]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.n)
}

func (c *etcdCounter) dialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			c.count(method, req)
			return invoker(ctx, method, req, reply, cc, opts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			c.count(method+" (stream opened)", nil)
			s, err := streamer(ctx, desc, cc, method, opts...)
			if err != nil {
				return nil, err
			}
			return &countedStream{ClientStream: s, c: c, method: method}, nil
		}),
	}
}

type countedStream struct {
	grpc.ClientStream
	c      *etcdCounter
	method string
}

func (s *countedStream) SendMsg(m any) error {
	s.c.count(s.method, m)
	return s.ClientStream.SendMsg(m)
}

// etcdDelta is what the counter counted between two snapshots, without the
// classes that did not change.
func etcdDelta(before, after map[string]int64) map[string]int64 {
	out := map[string]int64{}
	for k, v := range after {
		if d := v - before[k]; d != 0 {
			out[k] = d
		}
	}
	return out
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(v); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
	}
}

func getenv(name string) string { return os.Getenv(name) }
