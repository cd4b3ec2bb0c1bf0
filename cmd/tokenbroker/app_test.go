package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tokenbroker/tokenbroker/app"
	"github.com/tokenbroker/tokenbroker/broker/apikey"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/testkeys"
	"github.com/tokenbroker/tokenbroker/sandbox"
)

const (
	fakeClientID     = "mh-client-41c2"
	fakeClientSecret = "mh-s3cret-8e0d7f2a19b4"
	providerName     = "mediahound"
)

// fakeProvider is a sandbox OAuth2 server on an httptest server.
type fakeProvider struct {
	*sandbox.Server
	url string
}

func startFake(t *testing.T) *fakeProvider {
	t.Helper()
	sb, err := sandbox.New(sandbox.Config{Clients: map[string]string{fakeClientID: fakeClientSecret}})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(sb)
	t.Cleanup(ts.Close)
	return &fakeProvider{Server: sb, url: ts.URL}
}

// testIdentity is the identity of testKey, a static API key of every app.App
// the tests start, allowed everything.
const testIdentity = "test-caller"

var testKeyID, testKey, testKeySHA256 = func() (string, string, string) {
	id, key, sum, err := apikey.Generate()
	if err != nil {
		panic(err)
	}
	return id, key, sum
}()

// bearer is gRPC per-call credentials: an API key in the authorization
// metadata.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return false }

// appConfig is the configuration of an app.App on 127.0.0.1:0 with its data in
// dataDir, the fake registered as "mediahound", a master key, and testKey.
func appConfig(fakeURL, dataDir string) app.Config {
	cfg := app.DefaultConfig()
	cfg.GRPCAddr = "127.0.0.1:0"
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.MetricsAddr = "127.0.0.1:0"
	cfg.DataDir = dataDir
	cfg.ShutdownTimeout = 5 * time.Second
	cfg.Keyring = testkeys.Keyring()
	cfg.InsecureHTTPLoopback = true // the fake provider is plain http on loopback
	cfg.Auth.APIKeys = []app.APIKeyConfig{{ID: testKeyID, Identity: testIdentity, SHA256: testKeySHA256}}
	cfg.Auth.Policy = []app.PolicyRule{{Identities: []string{testIdentity}, Actions: []string{"token", "introspect", "admin"}}}
	cfg.Providers = []app.ProviderConfig{{
		Name:            providerName,
		TokenURL:        fakeURL + sandbox.TokenPath,
		ClientID:        fakeClientID,
		ClientSecret:    fakeClientSecret,
		ClientAuthStyle: "basic+post",
	}}
	return cfg
}

// startApp starts an app.App and returns it with a Close that runs once; the
// test's cleanup calls it too.
func startApp(t *testing.T, cfg app.Config) (*app.App, func() error) {
	t.Helper()
	inst, err := app.Start(t.Context(), cfg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatalf("app.Start: %v", err)
	}
	var once sync.Once
	var closeErr error
	closeApp := func() error {
		once.Do(func() { closeErr = inst.Close() })
		return closeErr
	}
	t.Cleanup(func() {
		if err := closeApp(); err != nil {
			t.Errorf("App.Close: %v, want nil", err)
		}
	})
	return inst, closeApp
}

// grpcGetToken asks the app.App at addr for a token of provider over gRPC.
func grpcGetToken(t *testing.T, addr, provider string) *tokenbrokerv1.Token {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(bearer(testKey)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	resp, err := tokenbrokerv1.NewTokenBrokerServiceClient(conn).GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: provider})
	if err != nil {
		t.Fatalf("GetToken(%s): %v", provider, err)
	}
	if resp.GetToken().GetAccessToken() == "" {
		t.Fatalf("GetToken(%s) = %v, want an access token", provider, resp)
	}
	return resp.GetToken()
}

// httpCall sends a request with a fresh client, authenticated with key
// unless it is empty, and returns the status and the body.
func httpCall(t *testing.T, method, url, key, contentType string, body []byte) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", method, url, err)
	}
	return resp.StatusCode, raw
}

// decodeJSON decodes a JSON object or fails the test.
func decodeJSON(t *testing.T, what string, raw []byte) map[string]any {
	t.Helper()
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("%s: the answer is not a JSON object: %v: %q", what, err, raw)
	}
	return out
}

// TestAppRestartKeepsTokens restarts the app.App on the same data directory: the
// token obtained before the restart is served after it, without a second call
// to the provider, and the registered provider is still there, secret hidden.
func TestAppRestartKeepsTokens(t *testing.T) {
	t.Parallel()
	fake := startFake(t)
	cfg := appConfig(fake.url, t.TempDir())

	first, closeFirst := startApp(t, cfg)
	before := grpcGetToken(t, first.GRPCAddr(), providerName)
	if err := closeFirst(); err != nil {
		t.Errorf("App.Close after a token fetch: %v, want nil", err)
	}

	second, _ := startApp(t, cfg)
	after := grpcGetToken(t, second.GRPCAddr(), providerName)
	if after.GetAccessToken() != before.GetAccessToken() {
		t.Errorf("after the restart GetToken got access token %q, want the one from before %q", after.GetAccessToken(), before.GetAccessToken())
	}
	if !after.GetIssuedAt().AsTime().Equal(before.GetIssuedAt().AsTime()) {
		t.Errorf("after the restart GetToken got issued_at %v, want %v", after.GetIssuedAt().AsTime(), before.GetIssuedAt().AsTime())
	}
	if got := fake.TokenCalls(); got != 1 {
		t.Errorf("provider token calls = %d, want 1", got)
	}

	// What the provider saw: basic+post sends the credentials both ways.
	reqs := fake.Requests()
	if len(reqs) != 1 {
		t.Fatalf("provider recorded %d token requests, want 1", len(reqs))
	}
	user, pass, ok := (&http.Request{Header: reqs[0].Header}).BasicAuth()
	seen := []struct {
		name string
		give any
		want any
	}{
		{name: "basic auth present", give: ok, want: true},
		{name: "basic user", give: user, want: fakeClientID},
		{name: "basic password", give: pass, want: fakeClientSecret},
		{name: "form grant_type", give: reqs[0].Form.Get("grant_type"), want: "client_credentials"},
		{name: "form client_id", give: reqs[0].Form.Get("client_id"), want: fakeClientID},
		{name: "form client_secret", give: reqs[0].Form.Get("client_secret"), want: fakeClientSecret},
	}
	for _, tt := range seen {
		if tt.give != tt.want {
			t.Errorf("provider saw %s = %v, want %v", tt.name, tt.give, tt.want)
		}
	}

	status, raw := httpCall(t, http.MethodGet, "http://"+second.HTTPAddr()+"/v1/admin/providers/"+providerName, testKey, "", nil)
	if status != http.StatusOK {
		t.Fatalf("GET /v1/admin/providers/%s status = %d, want 200; body %s", providerName, status, raw)
	}
	if bytes.Contains(raw, []byte(fakeClientSecret)) {
		t.Errorf("GET /v1/admin/providers/%s body contains the client secret: %s", providerName, raw)
	}
	var got struct {
		Provider struct {
			Name            string `json:"name"`
			TokenURL        string `json:"token_url"`
			ClientID        string `json:"client_id"`
			ClientAuthStyle string `json:"client_auth_style"`
			ClientSecret    *struct {
				Set         bool   `json:"set"`
				Fingerprint string `json:"fingerprint"`
			} `json:"client_secret"`
		} `json:"provider"`
	}
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatalf("GET /v1/admin/providers/%s: the answer is not JSON: %v: %s", providerName, err, raw)
	}
	if got.Provider.ClientSecret == nil {
		t.Fatalf("GET /v1/admin/providers/%s has no client_secret: %s", providerName, raw)
	}
	fields := []struct {
		name string
		give any
		want any
	}{
		{name: "name", give: got.Provider.Name, want: providerName},
		{name: "token_url", give: got.Provider.TokenURL, want: fake.url + sandbox.TokenPath},
		{name: "client_id", give: got.Provider.ClientID, want: fakeClientID},
		{name: "client_auth_style", give: got.Provider.ClientAuthStyle, want: "CLIENT_AUTH_STYLE_BASIC_AND_POST"},
		{name: "client_secret.set", give: got.Provider.ClientSecret.Set, want: true},
		{name: "client_secret.fingerprint", give: got.Provider.ClientSecret.Fingerprint, want: second.Broker().Fingerprint(fakeClientSecret)},
	}
	for _, tt := range fields {
		if tt.give != tt.want {
			t.Errorf("provider %s = %v, want %v (body %s)", tt.name, tt.give, tt.want, raw)
		}
	}
}

// TestAppREST drives the REST listener of a running app.App.
func TestAppREST(t *testing.T) {
	t.Parallel()
	fake := startFake(t)
	inst, _ := startApp(t, appConfig(fake.url, t.TempDir()))
	base := "http://" + inst.HTTPAddr()

	t.Run("token", func(t *testing.T) {
		status, raw := httpCall(t, http.MethodPost, base+"/v1/providers/"+providerName+"/token", testKey, "application/json", []byte(`{}`))
		if status != http.StatusOK {
			t.Fatalf("POST token status = %d, want 200; body %s", status, raw)
		}
		tok := decodeJSON(t, "POST token", raw)
		if s, _ := tok["access_token"].(string); s == "" {
			t.Errorf("access_token = %#v, want a non-empty string (body %s)", tok["access_token"], raw)
		}
		if s, _ := tok["token_type"].(string); !strings.EqualFold(s, "bearer") {
			t.Errorf("token_type = %#v, want \"Bearer\" (body %s)", tok["token_type"], raw)
		}
		if n, ok := tok["expires_in"].(float64); !ok || n <= 0 {
			t.Errorf("expires_in = %#v, want a positive JSON number (body %s)", tok["expires_in"], raw)
		}
		s, _ := tok["expires_at"].(string)
		if _, err := time.Parse(time.RFC3339Nano, s); err != nil {
			t.Errorf("expires_at = %#v, want an RFC 3339 time: %v (body %s)", tok["expires_at"], err, raw)
		}
		if got := fake.TokenCalls(); got != 1 {
			t.Errorf("provider token calls = %d, want 1", got)
		}
	})

	t.Run("unknown provider", func(t *testing.T) {
		status, raw := httpCall(t, http.MethodPost, base+"/v1/providers/nosuch/token", testKey, "application/json", []byte(`{}`))
		if status != http.StatusNotFound {
			t.Errorf("POST /v1/providers/nosuch/token status = %d, want 404; body %s", status, raw)
		}
	})

	t.Run("openapi", func(t *testing.T) {
		if status, _ := httpCall(t, http.MethodGet, base+"/openapi.json", "", "", nil); status != http.StatusNotFound {
			t.Errorf("GET /openapi.json on the API port status = %d, want 404 (it is on metrics_addr)", status)
		}
		status, raw := httpCall(t, http.MethodGet, "http://"+inst.MetricsAddr()+"/openapi.json", "", "", nil)
		if status != http.StatusOK {
			t.Fatalf("GET /openapi.json on metrics_addr status = %d, want 200", status)
		}
		doc := decodeJSON(t, "GET /openapi.json", raw)
		if doc["swagger"] != "2.0" {
			t.Errorf("openapi swagger = %#v, want \"2.0\"", doc["swagger"])
		}
		paths, _ := doc["paths"].(map[string]any)
		if _, ok := paths["/v1/providers/{provider}/token"]; !ok {
			t.Errorf("openapi paths have no /v1/providers/{provider}/token; got %d paths", len(paths))
		}
	})

	t.Run("healthz", func(t *testing.T) {
		status, raw := httpCall(t, http.MethodGet, base+"/healthz", "", "", nil)
		if status != http.StatusOK {
			t.Errorf("GET /healthz status = %d, want 200; body %q", status, raw)
		}
	})
}

// TestStartAppAddressInUse starts on an address another listener holds:
// app.Start fails, stops what it started, and a later start on the same data
// directory works.
func TestStartAppAddressInUse(t *testing.T) {
	t.Parallel()
	fake := startFake(t)
	dataDir := t.TempDir()

	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()

	tests := []struct {
		name string
		give func(*app.Config, string)
		want string
	}{
		{name: "grpc", give: func(c *app.Config, addr string) { c.GRPCAddr = addr }, want: "grpc listener"},
		{name: "http", give: func(c *app.Config, addr string) { c.HTTPAddr = addr }, want: "http listener"},
		{name: "metrics", give: func(c *app.Config, addr string) { c.MetricsAddr = addr }, want: "metrics listener"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := appConfig(fake.url, dataDir)
			tt.give(&cfg, taken.Addr().String())
			inst, err := app.Start(t.Context(), cfg, zaptest.NewLogger(t))
			if err == nil {
				inst.Close()
				t.Fatalf("app.Start with %s on %s (in use) = nil error, want one", tt.name, taken.Addr())
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("app.Start error = %q, want it to mention %q", err, tt.want)
			}
		})
	}

	inst, _ := startApp(t, appConfig(fake.url, dataDir))
	grpcGetToken(t, inst.GRPCAddr(), providerName)
}
