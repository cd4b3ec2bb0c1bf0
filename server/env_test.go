package server_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/apikey"
	"github.com/tokenbroker/tokenbroker/broker/oauth"
	"github.com/tokenbroker/tokenbroker/broker/policy"
	"github.com/tokenbroker/tokenbroker/broker/workload"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
	"github.com/tokenbroker/tokenbroker/internal/testkeys"
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
	// tracing traces the servers and provider calls of the replicas
	// startSealed starts; nil traces nothing.
	tracing trace.TracerProvider
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

// testAdminIdentity is the identity of testAdminKey, a static API key every
// instance accepts and whose caller may do everything; the clients of an
// instance authenticate with it.
const testAdminIdentity = "test-admin"

var testAdminKeyID, testAdminKey, testAdminKeySHA = mustGenerateKey()

func mustGenerateKey() (id, key, sum string) {
	id, key, sum, err := apikey.Generate()
	if err != nil {
		panic(err)
	}
	return id, key, sum
}

// testAdminRule lets testAdminIdentity do everything.
var testAdminRule = policy.Rule{Identities: []string{testAdminIdentity}, Actions: policy.Actions}

// bearer is gRPC per-call credentials: an API key in the authorization
// metadata.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return false }

// instance is one broker replica with its servers and clients.
type instance struct {
	broker   *broker.Broker
	server   *server.Server
	keys     *apikey.Store
	requests *etcdtest.Counter // etcd requests of this replica
	conn     *grpc.ClientConn
	tokens   tokenbrokerv1.TokenBrokerServiceClient
	admin    tokenbrokerv1.AdminServiceClient
	baseURL  string
	grpcAddr string
	// metricsURL is the metrics listener's http://host:port.
	metricsURL string
}

// options vary an instance: its logger, policy rules besides
// testAdminRule, rate limit and TLS.
type options struct {
	log       *zap.Logger
	rules     []policy.Rule
	rateLimit server.RateLimit
	// unauthLimit limits failed authentications per remote address;
	// when zero, 1000 a second: the tests that count on Unauthenticated
	// answers make dozens of failed calls from 127.0.0.1.
	unauthLimit server.RateLimit
	tls         *tls.Config
	// clientTLS is the clients' TLS configuration when tls is set.
	clientTLS *tls.Config
	insecure  bool
	// quiet turns the background refresher off, so that a test can count
	// the etcd requests of calls alone.
	quiet bool
	// transport, when set, carries the broker's requests to providers
	// (say, one that trusts a fake's test certificate).
	transport http.RoundTripper
	// tracing, when set, traces the servers and the provider calls.
	tracing trace.TracerProvider
	// workload, when set, verifies JWT callers.
	workload *workload.Verifier
	// metrics, when set, instruments the servers.
	metrics *server.Metrics
	// eventBuffer, when set, is the broker's EventWatchBuffer, with a
	// grace period of 100ms.
	eventBuffer int
}

func (e *env) start(log *zap.Logger) *instance {
	e.t.Helper()
	return e.startWith(options{log: log})
}

func (e *env) startWith(o options) *instance {
	t := e.t
	t.Helper()
	log := o.log
	if log == nil {
		log = zap.NewNop()
	}
	in := &instance{requests: &etcdtest.Counter{}}
	cli := e.etcd.Client(t, in.requests)
	var observer broker.Observer
	if o.metrics != nil {
		observer = o.metrics
	}
	b, err := broker.New(context.Background(), broker.Config{
		Client:   cli,
		Observer: observer,
		OAuth:    withTracer(oauthClient(o.transport), o.tracing),
		Logger:   log,
		Now:      e.clock.Now,
		// Replicas of one test share the master key; failures are retried
		// at once, as each case of a test expects.
		Keyring:      testkeys.Keyring(),
		CooldownBase: time.Nanosecond,
		Refresh:      broker.RefreshConfig{Disabled: o.quiet},
		// Every forced refresh reaches the provider (the clock stands
		// still); the broker's tests cover coalescing.
		MinForcedRefreshInterval: -1,
		EventWatchBuffer:         o.eventBuffer,
		EventWatchGrace:          100 * time.Millisecond,
	})
	if err != nil {
		t.Fatalf("broker.New: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	// The key store has a client of its own: its watch opens
	// asynchronously and would show in the broker's request count. That
	// authentication makes no etcd request is tested in package apikey.
	keys, err := apikey.NewStore(context.Background(), e.etcd.Client(t, nil), broker.DefaultPrefix, testkeys.Keyring(), log)
	if err != nil {
		t.Fatalf("apikey.NewStore: %v", err)
	}
	t.Cleanup(func() { keys.Close() })
	if err := keys.SetStatic([]apikey.StaticKey{{ID: testAdminKeyID, Identity: testAdminIdentity, SHA256: testAdminKeySHA}}); err != nil {
		t.Fatal(err)
	}
	pol, err := policy.New(append([]policy.Rule{testAdminRule}, o.rules...))
	if err != nil {
		t.Fatal(err)
	}
	if o.unauthLimit == (server.RateLimit{}) {
		o.unauthLimit = server.RateLimit{RPS: 1000, Burst: 1000}
	}
	srv, err := server.New(server.Config{
		GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0", Broker: b, Logger: log, TLS: o.tls,
		Metrics:        o.metrics,
		Auth:           server.AuthConfig{Keys: keys, Workload: o.workload, Policy: pol, RateLimit: o.rateLimit, UnauthenticatedRateLimit: o.unauthLimit, InsecureNoAuth: o.insecure},
		TracerProvider: o.tracing,
	})
	if err != nil {
		t.Fatalf("server.New: %v", err)
	}
	srv.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	conn, err := grpc.NewClient(srv.GRPCAddr(), in.dialOptions(o.clientTLS, testAdminKey)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	in.broker, in.server, in.keys, in.conn = b, srv, keys, conn
	in.tokens = tokenbrokerv1.NewTokenBrokerServiceClient(conn)
	in.admin = tokenbrokerv1.NewAdminServiceClient(conn)
	in.baseURL = "http://" + srv.HTTPAddr()
	if o.tls != nil {
		in.baseURL = "https://" + srv.HTTPAddr()
	}
	in.grpcAddr = srv.GRPCAddr()
	in.metricsURL = "http://" + srv.MetricsAddr()
	return in
}

// dialOptions are the options of a client with clientTLS (plain text when
// nil) and key (none when empty).
func (in *instance) dialOptions(clientTLS *tls.Config, key string) []grpc.DialOption {
	creds := insecure.NewCredentials()
	if clientTLS != nil {
		creds = credentials.NewTLS(clientTLS)
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(creds)}
	if key != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearer(key)))
	}
	return opts
}

// clientAs returns gRPC clients of the instance that authenticate with key
// (none when empty) over clientTLS (plain text when nil).
func (in *instance) clientAs(t testing.TB, clientTLS *tls.Config, key string) (tokenbrokerv1.TokenBrokerServiceClient, tokenbrokerv1.AdminServiceClient, *grpc.ClientConn) {
	t.Helper()
	conn, err := grpc.NewClient(in.grpcAddr, in.dialOptions(clientTLS, key)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return tokenbrokerv1.NewTokenBrokerServiceClient(conn), tokenbrokerv1.NewAdminServiceClient(conn), conn
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

// restCall sends a JSON request to the gateway as the test admin and
// decodes the JSON answer.
func restCall(t testing.TB, method, url string, body any) (int, map[string]any, string) {
	t.Helper()
	var raw []byte
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		raw = b
	}
	header := http.Header{"Authorization": {"Bearer " + testAdminKey}}
	code, rawResp := restDo(t, http.DefaultClient, method, url, header, raw)
	var out map[string]any
	if err := json.Unmarshal(rawResp, &out); err != nil {
		t.Fatalf("%s %s: answer is not JSON: %v: %q", method, url, err, rawResp)
	}
	return code, out, string(rawResp)
}

// restDo sends a request with header (Content-Type: application/json
// unless header says otherwise) and returns the status and the body.
func restDo(t testing.TB, client *http.Client, method, url string, header http.Header, body []byte) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, vs := range header {
		req.Header.Del(k)
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, raw
}

// postToken posts an empty GetToken request for provider with key and
// returns the status and the Retry-After header.
func postToken(t testing.TB, baseURL, provider, key string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, baseURL+"/v1/providers/"+provider+"/token", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("Retry-After")
}

// postAsAdmin posts a raw body to the gateway as the test admin.
func postAsAdmin(t testing.TB, url, body string) int {
	t.Helper()
	code, _ := restDo(t, http.DefaultClient, http.MethodPost, url, http.Header{"Authorization": {"Bearer " + testAdminKey}}, []byte(body))
	return code
}

// settle waits until c stops counting for a moment: the etcd client opens
// its watch and lease streams in the background after start.
func settle(t testing.TB, c *etcdtest.Counter) {
	t.Helper()
	last := c.Load()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		time.Sleep(200 * time.Millisecond)
		n := c.Load()
		if n == last {
			return
		}
		last = n
	}
	t.Fatalf("etcd client still sends requests after 10s (%d so far)", last)
}

// withTracer makes c trace its calls through tp; c as it is when tp is nil.
func withTracer(c *oauth.Client, tp trace.TracerProvider) *oauth.Client {
	if tp != nil {
		c.Tracer = tp.Tracer(oauth.TracerName)
	}
	return c
}

// oauthClient is the broker's token-endpoint client of the tests: short
// timeouts, a small response limit, rt as transport when set.
func oauthClient(rt http.RoundTripper) *oauth.Client {
	c := &oauth.Client{Timeout: 2 * time.Second, MaxResponseBytes: 64 << 10}
	if rt != nil {
		c.HTTPClient = &http.Client{
			Transport:     rt,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	return c
}
