package interop_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Clients registered in server.mjs, both with clientSecret.
const (
	basicClient  = "broker-basic" // client_secret_basic
	postClient   = "broker-post"  // client_secret_post
	clientSecret = "interop-secret-7c1d"
)

// serverOptions configures one authorization server.
type serverOptions struct {
	// RedirectURI is the broker's callback, registered for both clients.
	RedirectURI string
	// AccessTokenTTL is the lifetime of authorization-code and refresh
	// access tokens; the server's default (an hour) when zero.
	AccessTokenTTL time.Duration
	// RefreshTokens is server.mjs's REFRESH_TOKENS: "offline_access" (the
	// default) or "client".
	RefreshTokens string
	// BrokerJWKSURI is the broker's jwks_uri, for the private_key_jwt
	// client broker-pkj (registered only when set).
	BrokerJWKSURI string
	// Env holds more of server.mjs's environment (DEVICE_INTERVAL, the
	// MTLS_ variables).
	Env map[string]string
}

// authServer is a running oidc-provider (server.mjs).
type authServer struct {
	Issuer string
	http   *http.Client
}

// startAuthServer starts `node server.mjs` on 127.0.0.1 and stops it (its
// whole process group) when the test ends. It fails the test, rather than
// skipping it, when Node.js or the server's packages are missing.
func startAuthServer(t *testing.T, opts serverOptions) *authServer {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("interop: Node.js is not installed (%v); install Node.js (22 LTS or later; 20 works), then run npm ci --prefix interop", err)
	}
	if _, err := os.Stat(filepath.Join("node_modules", "oidc-provider", "package.json")); err != nil {
		t.Fatalf("interop: the authorization server's packages are missing (%v): run npm ci --prefix interop", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, node, "server.mjs")
	cmd.Env = append(os.Environ(), "PORT=0", "CLIENT_SECRET="+clientSecret, "REDIRECT_URI="+opts.RedirectURI)
	if opts.RefreshTokens != "" {
		cmd.Env = append(cmd.Env, "REFRESH_TOKENS="+opts.RefreshTokens)
	}
	if opts.BrokerJWKSURI != "" {
		cmd.Env = append(cmd.Env, "BROKER_JWKS_URI="+opts.BrokerJWKSURI)
	}
	if opts.AccessTokenTTL > 0 {
		cmd.Env = append(cmd.Env, "ACCESS_TOKEN_TTL="+strconv.Itoa(int(opts.AccessTokenTTL/time.Second)))
	}
	for k, v := range opts.Env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	stdout := &firstLine{line: make(chan string, 1)}
	stderr := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.WaitDelay = 5 * time.Second
	ownProcessGroup(cmd)
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("interop: start %s server.mjs: %v", node, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cancel()
		<-exited
		if t.Failed() {
			t.Logf("authorization server stderr:\n%s", stderr.String())
		}
	})

	var issuer string
	select {
	case issuer = <-stdout.line:
	case err := <-exited:
		exited <- err // for the cleanup
		t.Fatalf("interop: the authorization server exited before it listened (%v); if its packages are missing, run npm ci --prefix interop", err)
	case <-time.After(20 * time.Second):
		t.Fatal("interop: the authorization server printed no issuer within 20s")
	}
	if u, err := url.Parse(issuer); err != nil || u.Scheme != "http" || u.Hostname() != "127.0.0.1" {
		t.Fatalf("interop: the authorization server printed %q, want its issuer URL http://127.0.0.1:<port>", issuer)
	}
	return &authServer{Issuer: issuer, http: &http.Client{Timeout: 10 * time.Second}}
}

// firstLine is the server's stdout: it hands the first line over and keeps
// the rest.
type firstLine struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	sent bool
	line chan string
}

func (w *firstLine) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if !w.sent {
		if line, _, ok := strings.Cut(w.buf.String(), "\n"); ok {
			w.sent = true
			w.line <- strings.TrimSpace(line)
		}
	}
	return len(p), nil
}

// syncBuffer collects the server's stderr.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// seenRequest is what the server's token, introspection or revocation
// endpoint received and answered (server.mjs, /_interop/requests). Tokens
// appear only as digests (see digest).
type seenRequest struct {
	Endpoint      string `json:"endpoint"` // token, introspection, revocation
	Status        int    `json:"status"`
	Error         string `json:"error"`
	Active        *bool  `json:"active"` // introspection answers
	ClientID      string `json:"client_id"`
	Auth          string `json:"auth"` // basic, post, basic+post, private_key_jwt or ""
	GrantType     string `json:"grant_type"`
	Scope         string `json:"scope"`
	CodeVerifier  bool   `json:"code_verifier"`
	RedirectURI   string `json:"redirect_uri"`
	RefreshToken  string `json:"refresh_token"` // digest of the refresh_token parameter
	Token         string `json:"token"`         // digest of the token parameter
	TokenTypeHint string `json:"token_type_hint"`
	// ClientCert is the x5t#S256 of the client certificate presented on
	// the connection (the https listener); "" for none.
	ClientCert string `json:"client_cert"`
	DeviceCode string `json:"device_code"` // digest of the device_code parameter
	At         int64  `json:"at"`          // when it came, in Unix milliseconds
}

// digest is how server.mjs names a token it saw.
func digest(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])[:16]
}

// requests returns what the server's endpoints saw so far, oldest first.
func (s *authServer) requests(t *testing.T) []seenRequest {
	t.Helper()
	resp, err := s.http.Get(s.Issuer + "/_interop/requests")
	if err != nil {
		t.Fatalf("read what the authorization server saw: %v", err)
	}
	defer resp.Body.Close()
	var out []seenRequest
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("decode what the authorization server saw: %v", err)
	}
	return out
}

// matching returns the requests the server saw that keep accepts.
func (s *authServer) matching(t *testing.T, keep func(seenRequest) bool) []seenRequest {
	t.Helper()
	var out []seenRequest
	for _, r := range s.requests(t) {
		if keep(r) {
			out = append(out, r)
		}
	}
	return out
}

// post sends form to one of the server's endpoints as clientID (with its
// registered client authentication), the way the test itself plays the
// provider's operator or an attacker, and returns the status and the
// decoded JSON answer.
func (s *authServer) post(t *testing.T, clientID, path string, form url.Values) (int, map[string]any) {
	t.Helper()
	form = maps.Clone(form)
	if clientID == postClient {
		form.Set("client_id", clientID)
		form.Set("client_secret", clientSecret)
	}
	req, err := http.NewRequest(http.MethodPost, s.Issuer+path, strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if clientID != postClient {
		req.SetBasicAuth(clientID, clientSecret)
	}
	resp, err := s.http.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	var body map[string]any
	if resp.ContentLength != 0 {
		_ = json.NewDecoder(resp.Body).Decode(&body)
	}
	return resp.StatusCode, body
}

// activeAtServer asks the server's own introspection endpoint about token.
func (s *authServer) activeAtServer(t *testing.T, clientID, token string) bool {
	t.Helper()
	status, body := s.post(t, clientID, "/token/introspection", url.Values{"token": {token}})
	if status != http.StatusOK {
		t.Fatalf("introspection at the server answered %d %v", status, body)
	}
	active, ok := body["active"].(bool)
	if !ok {
		t.Fatalf("introspection at the server answered without a boolean active: %v", body)
	}
	return active
}

// revokeAtServer revokes token at the server itself, as the provider's
// operator would, without telling the broker; clientID is the client the
// token was issued to.
func (s *authServer) revokeAtServer(t *testing.T, clientID, token string) {
	t.Helper()
	if status, body := s.post(t, clientID, "/token/revocation", url.Values{"token": {token}}); status != http.StatusOK {
		t.Fatalf("revocation at the server answered %d %v", status, body)
	}
}

// discovery reads the server's discovery document.
func (s *authServer) discovery(t *testing.T) map[string]any {
	t.Helper()
	resp, err := s.http.Get(s.Issuer + "/.well-known/openid-configuration")
	if err != nil {
		t.Fatalf("read discovery: %v", err)
	}
	defer resp.Body.Close()
	var d map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&d); err != nil {
		t.Fatalf("decode discovery: %v", err)
	}
	return d
}

// str returns d[key] as a string, failing the test otherwise.
func str(t *testing.T, d map[string]any, key string) string {
	t.Helper()
	s, ok := d[key].(string)
	if !ok {
		t.Fatalf("discovery %s = %v, want a string", key, d[key])
	}
	return s
}

func (r seenRequest) String() string {
	return fmt.Sprintf("%s %s client=%s auth=%s status=%d error=%s", r.Endpoint, r.GrantType, r.ClientID, r.Auth, r.Status, r.Error)
}
