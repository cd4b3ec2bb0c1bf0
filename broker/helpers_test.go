package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/tokenbroker/tokenbroker/broker/oauth"
	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
	"github.com/tokenbroker/tokenbroker/internal/testkeys"
	"github.com/tokenbroker/tokenbroker/sandbox"
)

// t0 is when every test's clock starts.
var t0 = time.Date(2031, time.March, 14, 9, 26, 53, 0, time.UTC)

// fakeClock is the broker's Config.Now in tests: time moves only when a test
// says so.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *fakeClock { return &fakeClock{now: t0} }

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

// brokerOption adjusts what newTestBroker builds.
type brokerOption func(*brokerSetup)

type brokerSetup struct {
	cfg     Config
	counter *etcdtest.Counter
}

// withCounter counts the etcd requests of the broker's own client. The
// broker's periodic background work (the hot-token report and the leader's
// read of it, the device-authorization scan: a request each a second) is
// slowed to once an hour, so that what a test counts after settle is what
// the calls it makes send.
func withCounter(c *etcdtest.Counter) brokerOption {
	return func(s *brokerSetup) {
		s.counter = c
		s.cfg.Refresh.ReportInterval = time.Hour
		s.cfg.DeviceScanInterval = time.Hour
	}
}

// withClock makes c the broker's clock.
func withClock(c *fakeClock) brokerOption {
	return func(s *brokerSetup) { s.cfg.Now = c.Now }
}

// withPrefix sets the broker's etcd prefix.
func withPrefix(p string) brokerOption {
	return func(s *brokerSetup) { s.cfg.Prefix = p }
}

// withOAuth sets the token-endpoint client.
func withOAuth(c *oauth.Client) brokerOption {
	return func(s *brokerSetup) { s.cfg.OAuth = c }
}

// newTestBroker builds a Broker on its own client of e and closes it when the
// test ends, before the client and etcd are closed.
func newTestBroker(t testing.TB, e *etcdtest.Etcd, opts ...brokerOption) *Broker {
	t.Helper()
	s := brokerSetup{cfg: Config{
		Logger:        zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)),
		StoreTimeout:  5 * time.Second,
		FetchTimeout:  15 * time.Second,
		DefaultMinTTL: time.Minute,
		Keyring:       testkeys.Keyring(),
		CooldownBase:  time.Nanosecond,
		// Tests of forced refreshes want each to reach the provider;
		// coalescing has tests of its own.
		MinForcedRefreshInterval: -1,
	}}
	for _, o := range opts {
		o(&s)
	}
	s.cfg.Client = e.Client(t, s.counter)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := New(ctx, s.cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("close broker: %v", err)
		}
	})
	return b
}

// etcdKeys returns every key under prefix with its value, read directly
// from etcd with a client of the test's own.
func etcdKeys(t *testing.T, cli *clientv3.Client, prefix string) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatalf("read %s from etcd: %v", prefix, err)
	}
	out := make(map[string]string, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		out[string(kv.Key)] = string(kv.Value)
	}
	return out
}

// eventually polls cond until it holds, failing the test after 10s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// settle waits until c stops moving: the streams a client opens in the
// background (watch, lease keepalive) are counted once, when they open, and
// a test that counts the requests of the hot path must not count those.
func settle(t *testing.T, c *etcdtest.Counter) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	last := c.Load()
	for {
		time.Sleep(150 * time.Millisecond)
		n := c.Load()
		if n == last {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd client still sends requests after 10s (%d so far)", n)
		}
		last = n
	}
}

// inMemory returns the record of key in b's memory, or nil.
func inMemory(b *Broker, key TokenKey) *TokenRecord {
	return b.cached(key.id())
}

// seenRequest is what a fake provider received.
type seenRequest struct {
	Method string
	Path   string
	Header http.Header
	Form   url.Values
}

// fakeProvider is an httptest token endpoint that records every request
// before answer handles it; answer finds the body in r.PostForm.
type fakeProvider struct {
	*httptest.Server
	path string

	mu   sync.Mutex
	reqs []seenRequest
}

func newFakeProvider(t testing.TB, path string, answer http.HandlerFunc) *fakeProvider {
	t.Helper()
	p := &fakeProvider{path: path}
	p.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("provider: read request body: %v", err)
		}
		form, err := url.ParseQuery(string(body))
		if err != nil {
			t.Errorf("provider: request body is not form-encoded: %v", err)
		}
		r.PostForm = form
		p.mu.Lock()
		p.reqs = append(p.reqs, seenRequest{Method: r.Method, Path: r.URL.Path, Header: r.Header.Clone(), Form: form})
		p.mu.Unlock()
		answer(w, r)
	}))
	t.Cleanup(p.Close)
	return p
}

// TokenURL is where the broker must post.
func (p *fakeProvider) TokenURL() string { return p.URL + p.path }

func (p *fakeProvider) requests() []seenRequest {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]seenRequest(nil), p.reqs...)
}

func (p *fakeProvider) calls() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.reqs)
}

// writeJSON answers status with body as application/json.
func writeJSON(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}

// tokenJSON is a token response with the given fields.
func tokenJSON(fields map[string]any) string {
	b, err := json.Marshal(fields)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// MediaHound's client registration in the seed document (001), whose HTTP
// Basic header the document spells out.
const (
	mediaHoundClientID     = "MyClientId"
	mediaHoundClientSecret = "MyClientSecret"
	mediaHoundTokenPath    = "/1.3/security/oauth/token"
)

// newMediaHound is MediaHound's token endpoint as seed 001 describes it:
// client_credentials only; the client authenticates with HTTP Basic AND
// repeats client_id and client_secret in the form; the answer is
// {"access_token", "token_type": "bearer", "expires_in": <number>, "scope":
// <the application's default scopes>}; no refresh token. A request missing
// either form of authentication is 401 invalid_client. delay, when not zero,
// holds every answer back that long, to widen race windows.
func newMediaHound(t testing.TB, delay time.Duration) *fakeProvider {
	t.Helper()
	var mu sync.Mutex
	issued := 0
	return newFakeProvider(t, mediaHoundTokenPath, func(w http.ResponseWriter, r *http.Request) {
		if delay > 0 {
			time.Sleep(delay)
		}
		id, secret, basic := r.BasicAuth()
		switch {
		case r.Method != http.MethodPost || r.URL.Path != mediaHoundTokenPath:
			writeJSON(w, http.StatusNotFound, `{"error":"not_found"}`)
		case !basic || id != mediaHoundClientID || secret != mediaHoundClientSecret,
			r.PostForm.Get("client_id") != mediaHoundClientID,
			r.PostForm.Get("client_secret") != mediaHoundClientSecret:
			writeJSON(w, http.StatusUnauthorized, `{"error":"invalid_client","error_description":"Bad client credentials"}`)
		case r.PostForm.Get("grant_type") != "client_credentials":
			writeJSON(w, http.StatusBadRequest, `{"error":"unsupported_grant_type"}`)
		default:
			mu.Lock()
			issued++
			n := issued
			mu.Unlock()
			writeJSON(w, http.StatusOK, tokenJSON(map[string]any{
				"access_token": fmt.Sprintf("mh-token-%d", n), "token_type": "bearer",
				"expires_in": 86400, "scope": "public",
			}))
		}
	})
}

// mediaHoundProvider is MediaHound's registration with the broker.
func mediaHoundProvider(p *fakeProvider) Provider {
	return Provider{
		Name:          "mediahound",
		TokenURL:      p.TokenURL(),
		ClientID:      mediaHoundClientID,
		ClientAuth:    oauth.AuthBasicAndPost,
		DefaultScopes: []string{"public", "search"},
	}
}

// Credentials of the sandbox provider.
const (
	sandboxClientID     = "svc-orders"
	sandboxClientSecret = "s3cret-orders-4e1f"
)

// newSandbox serves a sandbox OAuth2 server that knows one client.
func newSandbox(t *testing.T, clock *fakeClock) (*sandbox.Server, string) {
	t.Helper()
	cfg := sandbox.Config{Clients: map[string]string{sandboxClientID: sandboxClientSecret}}
	if clock != nil {
		cfg.Now = clock.Now
	}
	sb, err := sandbox.New(cfg)
	if err != nil {
		t.Fatalf("sandbox.New: %v", err)
	}
	ts := httptest.NewServer(sb)
	t.Cleanup(ts.Close)
	return sb, ts.URL + sandbox.TokenPath
}

// sandboxProvider is the registration of a sandbox at tokenURL.
func sandboxProvider(name, tokenURL string) Provider {
	return Provider{Name: name, TokenURL: tokenURL, ClientID: sandboxClientID, ClientAuth: oauth.AuthBasic}
}

// putProvider registers p with secret through b.
func putProvider(t testing.TB, b *Broker, p Provider, secret string) *Provider {
	t.Helper()
	got, err := b.PutProvider(context.Background(), p, secret)
	if err != nil {
		t.Fatalf("PutProvider(%s): %v", p.Name, err)
	}
	return got
}

// getToken asks b for the default-scope token of provider and fails the
// test on an error.
func getToken(t *testing.T, b *Broker, provider string) *TokenRecord {
	t.Helper()
	rec, err := b.GetToken(context.Background(), TokenRequest{Provider: provider})
	if err != nil {
		t.Fatalf("GetToken(%s): %v", provider, err)
	}
	return rec
}

// ptr returns a pointer to v.
func ptr[T any](v T) *T { return &v }

// writeTokenRecords writes n token records of provider p with b's encoder,
// 100 to a transaction, straight to etcd (as another replica's fetches
// would): the record of key i holds access token token-<i>, issued at t0
// and expiring an hour later. It returns the keys in order.
func writeTokenRecords(t testing.TB, b *Broker, cli *clientv3.Client, n int) []TokenKey {
	t.Helper()
	keys := make([]TokenKey, n)
	var ops []clientv3.Op
	for i := range n {
		keys[i] = TokenKey{Provider: "p", Scope: fmt.Sprintf("s%04d", i)}
		tkey := DefaultPrefix + tokensPrefix + keys[i].id()
		val, err := b.encodeToken(tkey, &TokenRecord{Key: keys[i], AccessToken: fmt.Sprintf("token-%04d", i), IssuedAt: t0, ExpiresAt: t0.Add(time.Hour)}, "", "")
		if err != nil {
			t.Fatal(err)
		}
		ops = append(ops, clientv3.OpPut(tkey, string(val)))
		if len(ops) == 100 || i == n-1 {
			if _, err := cli.Txn(context.Background()).Then(ops...).Commit(); err != nil {
				t.Fatal(err)
			}
			ops = nil
		}
	}
	return keys
}
