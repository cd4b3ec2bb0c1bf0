package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/oauth"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
	"github.com/tokenbroker/tokenbroker/sandbox"
	"github.com/tokenbroker/tokenbroker/server"
)

const (
	testClientID     = "client-7f3a"
	testClientSecret = "s3cr3t-client-secret-9d1b2c7e"
)

// fakeClock is a settable clock for the broker.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// env is one etcd, one sandbox provider "sandbox", and any number of broker
// instances, each with its own etcd client, gRPC server and REST gateway on
// 127.0.0.1:0.
type env struct {
	t        testing.TB
	etcd     *etcdtest.Etcd
	provider *sandbox.Server
	url      string
	clock    *fakeClock
}

func newEnv(t testing.TB) *env {
	t.Helper()
	sb, err := sandbox.New(sandbox.Config{Clients: map[string]string{testClientID: testClientSecret}})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(sb)
	t.Cleanup(ts.Close)
	e := &env{t: t, etcd: etcdtest.Start(t), provider: sb, url: ts.URL,
		clock: &fakeClock{now: time.Now()}}
	return e
}

// instance is one broker replica with its servers and clients.
type instance struct {
	broker   *broker.Broker
	server   *server.Server
	requests *etcdtest.Counter // etcd requests of this replica
	conn     *grpc.ClientConn
	tokens   tokenbrokerv1.TokenBrokerServiceClient
	admin    tokenbrokerv1.AdminServiceClient
	baseURL  string
}

func (e *env) start(log *zap.Logger) *instance {
	t := e.t
	t.Helper()
	if log == nil {
		log = zap.NewNop()
	}
	in := &instance{requests: &etcdtest.Counter{}}
	b, err := broker.New(context.Background(), broker.Config{
		Client: e.etcd.Client(t, in.requests),
		OAuth:  &oauth.Client{Timeout: 2 * time.Second, MaxResponseBytes: 64 << 10},
		Logger: log,
		Now:    e.clock.Now,
	})
	if err != nil {
		t.Fatalf("broker.New: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	srv, err := server.New(server.Config{GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Broker: b, Logger: log})
	if err != nil {
		t.Fatalf("server.New: %v", err)
	}
	srv.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	conn, err := grpc.NewClient(srv.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	in.broker, in.server, in.conn = b, srv, conn
	in.tokens = tokenbrokerv1.NewTokenBrokerServiceClient(conn)
	in.admin = tokenbrokerv1.NewAdminServiceClient(conn)
	in.baseURL = "http://" + srv.HTTPAddr()
	return in
}

// register registers the sandbox as provider name through the admin API.
func (e *env) register(in *instance, name string) {
	e.t.Helper()
	_, err := in.admin.PutProvider(context.Background(), &tokenbrokerv1.PutProviderRequest{
		Provider: &tokenbrokerv1.Provider{
			Name:            name,
			TokenUrl:        e.url + sandbox.TokenPath,
			ClientId:        testClientID,
			ClientAuthStyle: tokenbrokerv1.ClientAuthStyle_CLIENT_AUTH_STYLE_BASIC,
		},
		ClientSecret: testClientSecret,
	})
	if err != nil {
		e.t.Fatalf("PutProvider(%s): %v", name, err)
	}
}

// restCall sends a JSON request to the gateway and decodes the JSON answer.
func restCall(t testing.TB, method, url string, body any) (int, map[string]any, string) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("%s %s: answer is not JSON: %v: %q", method, url, err, raw)
	}
	return resp.StatusCode, out, string(raw)
}
