package client_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"path"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/apikey"
	"github.com/tokenbroker/tokenbroker/broker/oauth"
	"github.com/tokenbroker/tokenbroker/broker/policy"
	"github.com/tokenbroker/tokenbroker/broker/workload"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
	"github.com/tokenbroker/tokenbroker/internal/fakes"
	"github.com/tokenbroker/tokenbroker/internal/testkeys"
	"github.com/tokenbroker/tokenbroker/sandbox"
	"github.com/tokenbroker/tokenbroker/server"
)

const (
	testClientID     = "client-5c21"
	testClientSecret = "s3cr3t-client-secret-4e8a0b"

	// testIdentity may do everything; the env's conn authenticates as it.
	testIdentity = "test-caller"
	// otherIdentity may get tokens of provider "other" only.
	otherIdentity = "other-caller"
)

// env is a real broker end to end: embedded etcd, a sandbox provider
// registered as "sandbox", a broker with its gRPC server on 127.0.0.1:0
// guarded by API keys and a policy, a gRPC connection that authenticates
// as testIdentity and records its calls, and a provider API (api) that
// accepts the tokens the sandbox considers valid.
type env struct {
	provider *sandbox.Server
	tokenURL string
	conn     *grpc.ClientConn
	calls    *recorder
	admin    tokenbrokerv1.AdminServiceClient
	api      *testAPI
	grpcAddr string
	key      string // API key of testIdentity
	otherKey string // API key of otherIdentity
	// issuer issues workload tokens the broker accepts (audience
	// workloadAudience): the service account workloadSA may do everything,
	// otherSA get tokens of provider "other" only.
	issuer *fakes.WorkloadIssuer
}

const (
	workloadAudience = "tokenbroker"
	workloadSA       = "system:serviceaccount:apps:billing"
	otherSA          = "system:serviceaccount:apps:other-service"
)

func newEnv(t *testing.T) *env {
	t.Helper()
	sb, err := sandbox.New(sandbox.Config{Clients: map[string]string{testClientID: testClientSecret}})
	if err != nil {
		t.Fatal(err)
	}
	providerSrv := httptest.NewServer(sb)
	t.Cleanup(providerSrv.Close)

	etcd := etcdtest.Start(t)
	b, err := broker.New(context.Background(), broker.Config{
		Client:  etcd.Client(t, nil),
		OAuth:   &oauth.Client{Timeout: 2 * time.Second, MaxResponseBytes: 64 << 10},
		Keyring: testkeys.Keyring(),
		// One attempt and no cool-down, so that a provider failure is the
		// answer at once; no background refresh, so that provider calls
		// are the tests' alone.
		ProviderAttempts: 1,
		CooldownBase:     time.Nanosecond,
		Refresh:          broker.RefreshConfig{Disabled: true},
		// Every forced refresh reaches the provider; the broker's tests
		// cover coalescing.
		MinForcedRefreshInterval: -1,
	})
	if err != nil {
		t.Fatalf("broker.New: %v", err)
	}
	t.Cleanup(func() { b.Close() })

	keys, err := apikey.NewStore(context.Background(), etcd.Client(t, nil), broker.DefaultPrefix, testkeys.Keyring(), nil)
	if err != nil {
		t.Fatalf("apikey.NewStore: %v", err)
	}
	t.Cleanup(func() { keys.Close() })
	id, key, sum := generateKey(t)
	otherID, otherKey, otherSum := generateKey(t)
	if err := keys.SetStatic([]apikey.StaticKey{
		{ID: id, Identity: testIdentity, SHA256: sum},
		{ID: otherID, Identity: otherIdentity, SHA256: otherSum},
	}); err != nil {
		t.Fatal(err)
	}
	pol, err := policy.New([]policy.Rule{
		{Identities: []string{testIdentity}, Actions: policy.Actions},
		{Identities: []string{otherIdentity}, Providers: []string{"other"}, Actions: []policy.Action{policy.Token}},
		{Identities: []string{workloadSA}, Actions: policy.Actions},
		{Identities: []string{otherSA}, Providers: []string{"other"}, Actions: []policy.Action{policy.Token}},
	})
	if err != nil {
		t.Fatal(err)
	}
	issuer := fakes.NewWorkloadIssuer(t)
	jwts, err := workload.New([]workload.Issuer{{Issuer: issuer.URL(), Discovery: true, CAFile: issuer.CAFile, Audiences: []string{workloadAudience}}}, workload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{
		GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Broker: b,
		Auth: server.AuthConfig{Keys: keys, Workload: jwts, Policy: pol},
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

	calls := &recorder{}
	conn := dial(t, srv.GRPCAddr(), key, grpc.WithChainUnaryInterceptor(calls.intercept))
	e := &env{
		provider: sb,
		tokenURL: providerSrv.URL + sandbox.TokenPath,
		conn:     conn,
		calls:    calls,
		admin:    tokenbrokerv1.NewAdminServiceClient(conn),
		api:      newTestAPI(t, sb),
		grpcAddr: srv.GRPCAddr(),
		key:      key,
		otherKey: otherKey,
		issuer:   issuer,
	}
	e.register(t, "sandbox", testClientSecret)
	return e
}

func generateKey(t *testing.T) (id, key, sum string) {
	t.Helper()
	id, key, sum, err := apikey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return id, key, sum
}

// dial connects to the broker at addr with API key key.
func dial(t *testing.T, addr, key string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	opts = append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(bearer(key)),
	}, opts...)
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// register registers the sandbox as provider name, authenticating with
// secret.
func (e *env) register(t *testing.T, name, secret string) {
	t.Helper()
	_, err := e.admin.PutProvider(context.Background(), &tokenbrokerv1.PutProviderRequest{
		Provider: &tokenbrokerv1.Provider{
			Name:            name,
			TokenUrl:        e.tokenURL,
			ClientId:        testClientID,
			ClientAuthStyle: tokenbrokerv1.ClientAuthStyle_CLIENT_AUTH_STYLE_BASIC,
		},
		ClientSecret: secret,
	})
	if err != nil {
		t.Fatalf("PutProvider(%s): %v", name, err)
	}
}

// recorder records the TokenBrokerService calls of a connection.
type recorder struct {
	mu    sync.Mutex
	calls []rpc
}

// rpc is one recorded call.
type rpc struct {
	method string // GetToken, Refresh, ...
	stale  string // a Refresh's stale_access_token
}

func (r *recorder) intercept(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	c := rpc{method: path.Base(method)}
	if rr, ok := req.(*tokenbrokerv1.RefreshRequest); ok {
		c.stale = rr.GetStaleAccessToken()
	}
	r.mu.Lock()
	r.calls = append(r.calls, c)
	r.mu.Unlock()
	return invoker(ctx, method, req, reply, cc, opts...)
}

// count returns how many calls of method were made.
func (r *recorder) count(method string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, c := range r.calls {
		if c.method == method {
			n++
		}
	}
	return n
}

// refreshes returns the stale tokens of the Refresh calls, in order.
func (r *recorder) refreshes() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, c := range r.calls {
		if c.method == "Refresh" {
			out = append(out, c.stale)
		}
	}
	return out
}

// testAPI is a provider's API: it accepts any method and path, asks the
// sandbox's protected resource whether the bearer token is valid, and
// answers 401 (with the sandbox's challenge) when it is not, else 200 with
// the request body echoed.
type testAPI struct {
	url      string
	provider *sandbox.Server

	mu        sync.Mutex
	seen      []seen
	rejectAll bool          // answer 401 whatever the token
	hold      int           // hold this many 401s until they are all there
	arrived   int           // 401s held so far
	release   chan struct{} // closed when arrived reaches hold
}

// seen is one request the API answered.
type seen struct {
	token  string
	status int
	body   string
}

func newTestAPI(t *testing.T, provider *sandbox.Server) *testAPI {
	t.Helper()
	a := &testAPI{provider: provider}
	srv := httptest.NewServer(a)
	t.Cleanup(srv.Close)
	a.url = srv.URL
	return a
}

func (a *testAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	probe := httptest.NewRequest(http.MethodGet, sandbox.WhoamiPath, nil)
	probe.Header.Set("Authorization", r.Header.Get("Authorization"))
	check := httptest.NewRecorder()
	a.provider.ServeHTTP(check, probe)

	a.mu.Lock()
	status := check.Code
	if a.rejectAll {
		status = http.StatusUnauthorized
	}
	_, token, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	a.seen = append(a.seen, seen{token: token, status: status, body: string(body)})
	var release chan struct{}
	if status == http.StatusUnauthorized && a.release != nil {
		release = a.release
		a.arrived++
		if a.arrived == a.hold {
			close(a.release)
			a.release = nil
		}
	}
	a.mu.Unlock()

	if release != nil {
		select {
		case <-release:
		case <-time.After(5 * time.Second): // the test reports the shortfall
		case <-r.Context().Done():
		}
	}
	if status != http.StatusOK {
		w.Header().Set("WWW-Authenticate", check.Header().Get("WWW-Authenticate"))
		w.WriteHeader(status)
		return
	}
	w.Write(body)
}

// holdRejections makes the next n 401 answers wait until all n requests
// have arrived, so that n callers see the 401 at the same moment.
func (a *testAPI) holdRejections(n int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.hold, a.arrived, a.release = n, 0, make(chan struct{})
}

// setRejectAll makes the API refuse every token (true) or only invalid ones.
func (a *testAPI) setRejectAll(v bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.rejectAll = v
}

// requests returns what the API has answered so far and forgets it.
func (a *testAPI) requests() []seen {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := a.seen
	a.seen = nil
	return out
}
