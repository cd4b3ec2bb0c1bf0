package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/tokenbroker/tokenbroker/app"
	"github.com/tokenbroker/tokenbroker/broker/event"
	"github.com/tokenbroker/tokenbroker/internal/embedetcd"
	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
)

// The provider every benchmark call names, and the policy that lets the
// benchmark's callers (identities bench-0, bench-1, …) get its tokens.
const (
	benchProvider = "sandbox"
	benchIdentity = "bench-*"
)

// Environment of the broker process: its configuration file's content and
// its master key, as an operator would give them to `tokenbroker serve`.
const (
	brokerConfigEnv = "TBBENCH_BROKER_CONFIG"
	brokerKeyEnv    = app.MasterKeyEnv
	dataDirEnv      = "TBBENCH_DATA_DIR"
)

// brokerConfig is the broker's configuration: the defaults of `tokenbroker
// serve` with loopback listeners, the sandbox provider at tokenURL, the
// benchmark's API keys and a policy for them. One thing differs: the
// per-caller rate limit is lifted, since the benchmark's few identities
// call far more often than the default 1000/s.
func brokerConfig(tokenURL, clientID, clientSecret string, keys []app.APIKeyConfig) app.Config {
	cfg := app.DefaultConfig()
	cfg.GRPCAddr, cfg.HTTPAddr, cfg.MetricsAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.Auth.APIKeys = keys
	cfg.Auth.Policy = []app.PolicyRule{{Identities: []string{benchIdentity}, Providers: []string{benchProvider, sentinelProvider}, Actions: []string{"token", "introspect"}}}
	cfg.Auth.RateLimit = app.RateLimitConfig{RPS: 1e9, Burst: 1_000_000}
	cfg.Providers = []app.ProviderConfig{{Name: benchProvider, TokenURL: tokenURL, ClientID: clientID, ClientSecret: clientSecret, ClientAuthStyle: "basic"}}
	return cfg
}

// runBrokerChild runs the broker as `tokenbroker serve
// --insecure-http-loopback` does (app.Start), from the YAML configuration
// in $TBBENCH_BROKER_CONFIG and the master key in $TOKENBROKER_MASTER_KEY:
// embedded etcd with its production settings (fsync, default raft ticks)
// in a temporary directory, the broker with its background refresher,
// authentication by API key and a policy, and the info-level JSON log on
// stderr. The etcd client also counts its requests, for the control
// listener's /etcd.
func runBrokerChild(ctx context.Context, ready func(readyLine), control *http.ServeMux) error {
	start := time.Now()
	cfg := app.DefaultConfig()
	if err := app.DecodeConfig(strings.NewReader(getenv(brokerConfigEnv)), &cfg); err != nil {
		return fmt.Errorf("$%s: %w", brokerConfigEnv, err)
	}
	// The data directory is the parent's when it names one (the restart
	// figure starts a second broker on the first one's data); otherwise a
	// temporary one.
	dir := getenv(dataDirEnv)
	if dir == "" {
		tmp, err := os.MkdirTemp("", "tbbench-broker-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	cfg.DataDir = dir
	cfg.InsecureHTTPLoopback = true // the sandbox is plain http on loopback
	counter := newEtcdCounter(cfg.Etcd.Prefix)
	cfg.EtcdDialOptions = counter.dialOptions()
	if err := cfg.Validate(os.Getenv); err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	log, err := app.NewLogger(cfg.Log, os.Stderr)
	if err != nil {
		return err
	}
	a, err := app.Start(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer a.Close()
	startup := time.Since(start)

	control.HandleFunc("GET /etcd", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, counter.snapshot()) })
	control.HandleFunc("GET /leading", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, a.Broker().LeadingShards()) })
	addr, closeControl, err := serveControl(control)
	if err != nil {
		return err
	}
	defer closeControl()
	ready(readyLine{GRPC: a.GRPCAddr(), HTTP: a.HTTPAddr(), Control: addr, Startup: startup.String(), EtcdAddr: a.EtcdEndpoints()[0]})
	return a.Wait(ctx)
}

// serveControl serves a child's control listener on loopback.
func serveControl(control *http.ServeMux) (addr string, stop func(), err error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	cs := &http.Server{Handler: control, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = cs.Serve(lis) }()
	return lis.Addr().String(), func() { cs.Close() }, nil
}

// runEtcdChild runs an etcd member alone, with the production settings of
// the broker's embedded one, for the figures of several replicas on one
// etcd.
func runEtcdChild(ctx context.Context, ready func(readyLine), control *http.ServeMux) error {
	dir, err := os.MkdirTemp("", "tbbench-etcd-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	s, err := embedetcd.Start(ctx, embedetcd.Config{Dir: dir})
	if err != nil {
		return err
	}
	defer s.Close()
	addr, closeControl, err := serveControl(control)
	if err != nil {
		return err
	}
	defer closeControl()
	ready(readyLine{Control: addr, EtcdAddr: s.Endpoint()})
	<-ctx.Done()
	return nil
}

// etcdCounter counts what an etcd client sends: every unary request and
// every message sent on a stream, by gRPC method, with the background
// traffic of the refresher told apart: the hot-token report (a Put under
// hot/ once a second), the leader's read of the reports (a Range under
// hot/) and lease keep-alives.
type etcdCounter struct {
	prefix, hot, events, webhooks, devices []byte
	mu                                     sync.Mutex
	n                                      map[string]int64
}

func newEtcdCounter(prefix string) *etcdCounter {
	return &etcdCounter{prefix: []byte(prefix), hot: []byte(prefix + "hot/"), events: []byte(prefix + event.Prefix), webhooks: []byte(prefix + "webhooks/"), devices: []byte(prefix + "device_authorizations/"), n: map[string]int64{}}
}

// Classes of etcd requests in etcdCounts.
const (
	etcdHotReport = "hot-token report (Put hot/)"
	etcdHotRead   = "hot-token read (Range hot/)"
	etcdKeepAlive = "lease keep-alive"
	etcdCompact   = "event retention (Range, DeleteRange events/)"
	etcdWebhooks  = "webhook delivery poll (Range webhooks/)"
	etcdDevices   = "device authorization scan (Range device_authorizations/)"
)

// background says whether a class of etcd requests is the broker's
// time-driven background work, not a caller's.
func background(class string) bool {
	switch class {
	case etcdHotReport, etcdHotRead, etcdKeepAlive, etcdCompact, etcdWebhooks, etcdDevices:
		return true
	}
	return false
}

func (c *etcdCounter) count(method string, msg any) {
	class := method
	switch m := msg.(type) {
	case *etcdserverpb.PutRequest:
		if bytes.HasPrefix(m.Key, c.hot) {
			class = etcdHotReport
		}
	case *etcdserverpb.RangeRequest:
		switch {
		case bytes.HasPrefix(m.Key, c.hot):
			class = etcdHotRead
		case bytes.HasPrefix(m.Key, c.events):
			class = etcdCompact
		case bytes.HasPrefix(m.Key, c.webhooks):
			class = etcdWebhooks
		case bytes.HasPrefix(m.Key, c.devices):
			class = etcdDevices
		default:
			class = method + " " + c.segment(m.Key)
		}
	case *etcdserverpb.DeleteRangeRequest:
		if bytes.HasPrefix(m.Key, c.events) {
			class = etcdCompact
		}
	case *etcdserverpb.LeaseKeepAliveRequest:
		class = etcdKeepAlive
	}
	c.mu.Lock()
	c.n[class]++
	c.mu.Unlock()
}

// segment is the first part of key after the broker's prefix: what kind of
// record a request reads.
func (c *etcdCounter) segment(key []byte) string {
	rest, ok := bytes.CutPrefix(key, c.prefix)
	if !ok {
		return string(key)
	}
	if i := bytes.IndexByte(rest, '/'); i >= 0 {
		rest = rest[:i+1]
	}
	return string(rest)
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
