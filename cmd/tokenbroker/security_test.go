package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/tokenbroker/tokenbroker/app"
	"github.com/tokenbroker/tokenbroker/broker/seal"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/testkeys"
)

// TestAPIKeyCreateOffline: `apikeys create --offline` (and its former
// spelling `apikey new`) prints a key and the config snippet that declares
// it, with no broker to call.
func TestAPIKeyCreateOffline(t *testing.T) {
	for _, args := range [][]string{
		{"apikeys", "create", "--offline", "--identity", "first-admin"},
		{"apikeys", "create", "--identity", "first-admin", "--offline", "--addr", "127.0.0.1:1"}, // no broker there: none is called
		{"apikey", "new", "--identity", "first-admin"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) { testAPIKeyCreateOffline(t, args) })
	}
}

func testAPIKeyCreateOffline(t *testing.T, args []string) {
	var stdout, stderr syncBuffer
	if err := run(t.Context(), args, &stdout, &stderr, envMap(nil)); err != nil {
		t.Fatalf("%q = %v; stderr %s", args, err, stderr.String())
	}
	if wantDeprecation := args[0] == "apikey"; strings.Contains(stderr.String(), "deprecated; use 'tokenbroker apikeys create --offline'") != wantDeprecation {
		t.Errorf("%q: stderr %q, want a deprecation notice: %v", args, stderr.String(), wantDeprecation)
	}
	key, snippet, _ := strings.Cut(stdout.String(), "\n")
	m := regexp.MustCompile(`^tbk_([a-z2-7]{12})_([A-Za-z0-9_-]{43})$`).FindStringSubmatch(key)
	if m == nil {
		t.Fatalf("first line %q, want the key", key)
	}
	// The snippet is configuration as it is: decoded strictly, it declares
	// the key by its id and the hash of its secret part.
	cfg := app.DefaultConfig()
	if err := app.DecodeConfig(strings.NewReader(snippet), &cfg); err != nil {
		t.Fatalf("the printed snippet does not decode: %v\n%s", err, snippet)
	}
	sum := sha256.Sum256([]byte(m[2]))
	want := app.APIKeyConfig{ID: m[1], Identity: "first-admin", SHA256: hex.EncodeToString(sum[:])}
	if len(cfg.Auth.APIKeys) != 1 || cfg.Auth.APIKeys[0] != want {
		t.Errorf("snippet declares %+v, want %+v", cfg.Auth.APIKeys, want)
	}
	if err := cfg.Validate(envMap(nil)); err != nil {
		t.Errorf("config with the snippet: Validate = %v", err)
	}
	if strings.Contains(snippet, m[2]) {
		t.Errorf("the snippet holds the key's secret part")
	}
}

func TestAPIKeyCommandErrors(t *testing.T) {
	tests := []struct {
		name string
		give []string
		want string
	}{
		{"no subcommand", []string{"apikey"}, "apikey: missing subcommand (new)"},
		{"unknown subcommand", []string{"apikey", "list"}, `unknown command "list" for "tokenbroker apikey"`},
		{"no identity", []string{"apikeys", "create", "--offline"}, `required flag(s) "identity" not set`},
		{"no identity, former spelling", []string{"apikey", "new"}, "identity is empty"},
		{"bad identity", []string{"apikeys", "create", "--offline", "--identity", "two\nlines"}, "control characters"},
		{"description", []string{"apikeys", "create", "--offline", "--identity", "a", "--description", "d"}, "--description and -o json apply to keys the broker issues"},
		{"bad flag", []string{"apikeys", "create", "--offline", "--nope"}, "unknown flag: --nope"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr syncBuffer
			err := run(t.Context(), tt.give, &stdout, &stderr, envMap(nil))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("run(%q) = %v, want an error containing %q", tt.give, err, tt.want)
			}
			if strings.Contains(stdout.String(), "tbk_") {
				t.Errorf("run(%q) printed a key: %s", tt.give, stdout.String())
			}
		})
	}
}

// masterKeyValue is $TOKENBROKER_MASTER_KEY for testkeys.Primary.
var masterKeyValue = seal.FormatKey(testkeys.Primary)

// testPKI is a CA, a server certificate for 127.0.0.1, and the PEM files.
type testPKI struct {
	caFile, certFile, keyFile string
	otherKeyFile              string // the key of another certificate
	pool                      *x509.CertPool
	ca                        *x509.Certificate
	caKey                     *ecdsa.PrivateKey
}

func newPKI(t *testing.T) *testPKI {
	t.Helper()
	dir := t.TempDir()
	p := &testPKI{}
	p.caKey = ecKey(t)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &p.caKey.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	if p.ca, err = x509.ParseCertificate(der); err != nil {
		t.Fatal(err)
	}
	p.pool = x509.NewCertPool()
	p.pool.AddCert(p.ca)
	p.caFile = writePEM(t, dir, "ca.crt", "CERTIFICATE", der)

	serverCert := p.issue(t, &x509.Certificate{
		Subject: pkix.Name{CommonName: "tokenbroker"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	p.certFile = writePEM(t, dir, "server.crt", "CERTIFICATE", serverCert.Certificate[0])
	keyDER, err := x509.MarshalECPrivateKey(serverCert.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	p.keyFile = writePEM(t, dir, "server.key", "EC PRIVATE KEY", keyDER)
	otherDER, err := x509.MarshalECPrivateKey(ecKey(t))
	if err != nil {
		t.Fatal(err)
	}
	p.otherKeyFile = writePEM(t, dir, "other.key", "EC PRIVATE KEY", otherDER)
	return p
}

// issue signs tmpl with the CA and returns it with a fresh key.
func (p *testPKI) issue(t *testing.T, tmpl *x509.Certificate) tls.Certificate {
	t.Helper()
	key := ecKey(t)
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	if tmpl.ExtKeyUsage == nil {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func ecKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func writePEM(t *testing.T, dir, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// securityConfig is a config file body on 127.0.0.1:0 with a data dir,
// followed by extra.
func securityConfig(t *testing.T, extra string) string {
	t.Helper()
	return writeConfig(t, fmt.Sprintf("grpc_addr: 127.0.0.1:0\nhttp_addr: 127.0.0.1:0\nmetrics_addr: 127.0.0.1:0\ndata_dir: %s\nshutdown_timeout: 5s\n%s", t.TempDir(), extra))
}

func testKeyYAML(identity string, actions string) string {
	return fmt.Sprintf("auth:\n  api_keys:\n    - {id: %s, identity: %s, sha256: %s}\n  policy:\n    - {identities: [%s], actions: [%s]}\n",
		testKeyID, identity, testKeySHA256, identity, actions)
}

// TestRunServeRefusesUnsafeSetups: serve exits with a clear message, not a
// panic, when it has no master key, no authentication, or unusable TLS.
func TestRunServeRefusesUnsafeSetups(t *testing.T) {
	t.Parallel()
	pki := newPKI(t)
	withKey := map[string]string{app.MasterKeyEnv: masterKeyValue}
	tests := []struct {
		name string
		give string
		args []string
		env  map[string]string
		want []string
	}{
		{name: "no master key", give: testKeyYAML("admin", "admin"), want: []string{"no master key", "seal.key_file", app.MasterKeyEnv, "--insecure-generate-master-key"}},
		{name: "malformed master key", give: testKeyYAML("admin", "admin"), env: map[string]string{app.MasterKeyEnv: "k1:tooshort"}, want: []string{"$" + app.MasterKeyEnv, "entry 1"}},
		{name: "missing master key file", give: testKeyYAML("admin", "admin") + "seal: {key_file: /nonexistent/master.key}\n", want: []string{"/nonexistent/master.key"}},
		{name: "no authentication", give: "", env: withKey, want: []string{"no authentication configured", "auth.api_keys", "tls.client_ca_file", "--insecure-no-auth"}},
		{name: "insecure flag with authentication", give: testKeyYAML("admin", "admin"), args: []string{"--insecure-no-auth"}, env: withKey, want: []string{"--insecure-no-auth conflicts"}},
		{name: "missing cert file", give: fmt.Sprintf("tls: {cert_file: /nonexistent/server.crt, key_file: %s}\n", pki.keyFile) + testKeyYAML("admin", "admin"), env: withKey, want: []string{"tls: cert_file", "/nonexistent/server.crt"}},
		{name: "key of another certificate", give: fmt.Sprintf("tls: {cert_file: %s, key_file: %s}\n", pki.certFile, pki.otherKeyFile) + testKeyYAML("admin", "admin"), env: withKey, want: []string{"private key does not match public key"}},
		{name: "bad client CA", give: fmt.Sprintf("tls: {cert_file: %s, key_file: %s, client_ca_file: %s}\n", pki.certFile, pki.keyFile, pki.keyFile), env: withKey, want: []string{"client_ca_file", "no PEM certificate"}},
		{name: "invalid policy", give: "auth:\n  policy:\n    - {identities: [a], actions: [root]}\n", env: withKey, want: []string{"invalid configuration", `unknown action "root"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := securityConfig(t, tt.give)
			var stdout, stderr syncBuffer
			// A run that got as far as serving would serve until this
			// deadline and return nil.
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			err := run(ctx, append([]string{"serve", "--config", path}, tt.args...), &stdout, &stderr, envMap(tt.env))
			if err == nil {
				t.Fatalf("serve = nil, want an error; stderr:\n%s", stderr.String())
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("serve = %q, want it to mention %q", err, w)
				}
			}
			if strings.Contains(stderr.String(), "panic") {
				t.Errorf("stderr mentions a panic:\n%s", stderr.String())
			}
			if strings.Contains(err.Error()+stderr.String(), strings.SplitN(masterKeyValue, ":", 2)[1][:12]) {
				t.Errorf("output holds master key material")
			}
		})
	}
}

var (
	httpAddrLog    = regexp.MustCompile(`"http_addr":"([^"]+)"`)
	grpcAddrLog    = regexp.MustCompile(`"grpc_addr":"([^"]+)"`)
	metricsAddrLog = regexp.MustCompile(`"metrics_addr":"([^"]+)"`)
)

// serving runs serve in the background until the test ends and returns its
// stderr and REST address once it serves.
func serving(t *testing.T, args []string, env map[string]string) (*syncBuffer, string) {
	t.Helper()
	stderr := new(syncBuffer)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- run(ctx, args, new(syncBuffer), stderr, envMap(env)) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve returned %v, want nil", err)
			}
		case <-time.After(60 * time.Second):
			t.Errorf("serve did not return within a minute of ctx being cancelled")
		}
	})
	deadline := time.After(30 * time.Second)
	for {
		if m := httpAddrLog.FindStringSubmatch(stderr.String()); m != nil && grpcAddrLog.MatchString(stderr.String()) {
			return stderr, m[1]
		}
		select {
		case err := <-done:
			done <- err
			t.Fatalf("serve returned %v before serving; stderr:\n%s", err, stderr.String())
		case <-deadline:
			t.Fatalf("serve did not log its addresses within 30s; stderr:\n%s", stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func TestRunServeInsecureFlags(t *testing.T) {
	t.Parallel()
	path := securityConfig(t, "")
	stderr, addr := serving(t, []string{"serve", "--config", path, "--insecure-no-auth", "--insecure-generate-master-key"}, nil)
	for _, want := range []string{"INSECURE: authentication is off", "INSECURE: using a generated, ephemeral master key"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks the warning %q:\n%s", want, stderr.String())
		}
	}
	if status, raw := httpCall(t, http.MethodGet, "http://"+addr+"/v1/admin/providers", "", "", nil); status != http.StatusOK {
		t.Errorf("anonymous GET /v1/admin/providers = %d %s, want 200", status, raw)
	}
}

// TestRunServeReloadsAuthOnSIGHUP changes the policy in the config file and
// sends SIGHUP: the new policy applies without a restart; a broken file is
// refused and the running policy kept.
func TestRunServeReloadsAuthOnSIGHUP(t *testing.T) {
	t.Parallel()
	path := securityConfig(t, testKeyYAML("svc", "token"))
	stderr, addr := serving(t, []string{"serve", "--config", path}, map[string]string{app.MasterKeyEnv: masterKeyValue})
	url := "http://" + addr + "/v1/admin/providers"
	if status, raw := httpCall(t, http.MethodGet, url, testKey, "", nil); status != http.StatusForbidden {
		t.Fatalf("GET %s before the reload = %d %s, want 403", url, status, raw)
	}
	rewrite := func(body string) {
		t.Helper()
		content := fmt.Sprintf("grpc_addr: 127.0.0.1:0\nhttp_addr: 127.0.0.1:0\nmetrics_addr: 127.0.0.1:0\ndata_dir: %s\nshutdown_timeout: 5s\n%s", t.TempDir(), body)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	rewrite(testKeyYAML("svc", "token, admin"))
	deadline := time.Now().Add(5 * time.Second)
	for {
		status, _ := httpCall(t, http.MethodGet, url, testKey, "", nil)
		if status == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s after SIGHUP = %d, want 200 within 5s; stderr:\n%s", url, status, stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	rewrite("auth:\n  policy:\n    - {identities: [svc], actions: [root]}\n")
	deadline = time.Now().Add(5 * time.Second)
	for !strings.Contains(stderr.String(), "reload failed") {
		if time.Now().After(deadline) {
			t.Fatalf("no \"reload failed\" after SIGHUP with a broken file; stderr:\n%s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if status, raw := httpCall(t, http.MethodGet, url, testKey, "", nil); status != http.StatusOK {
		t.Errorf("GET %s after a failed reload = %d %s, want 200 (the running policy kept)", url, status, raw)
	}
}

// TestAppMutualTLS runs the app.App with TLS on both listeners and a client CA.
func TestAppMutualTLS(t *testing.T) {
	t.Parallel()
	pki := newPKI(t)
	fake := startFake(t)
	cfg := appConfig(fake.url, t.TempDir())
	cfg.TLS = app.TLSConfig{CertFile: pki.certFile, KeyFile: pki.keyFile, ClientCAFile: pki.caFile}
	cfg.Auth.Policy = append(cfg.Auth.Policy, app.PolicyRule{Identities: []string{"spiffe://corp/svc-a"}, Providers: []string{providerName}, Actions: []string{"token"}})
	inst, _ := startApp(t, cfg)

	spiffe, _ := url.Parse("spiffe://corp/svc-a")
	client := pki.issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "svc-a"}, URIs: []*url.URL{spiffe}})
	tests := []struct {
		name  string
		certs []tls.Certificate
		key   string
		want  int
	}{
		{"client certificate", []tls.Certificate{client}, "", http.StatusOK},
		{"no certificate", nil, "", http.StatusUnauthorized},
		{"no certificate, API key", nil, testKey, http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.pool, Certificates: tt.certs}}
			defer tr.CloseIdleConnections()
			req, err := http.NewRequest(http.MethodPost, "https://"+inst.HTTPAddr()+"/v1/providers/"+providerName+"/token", strings.NewReader("{}"))
			if err != nil {
				t.Fatal(err)
			}
			if tt.key != "" {
				req.Header.Set("Authorization", "Bearer "+tt.key)
			}
			resp, err := (&http.Client{Transport: tr}).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Errorf("POST token = %d, want %d", resp.StatusCode, tt.want)
			}
		})
	}
	// gRPC on the other listener, with the client certificate.
	conn, err := grpc.NewClient(inst.GRPCAddr(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pki.pool, Certificates: []tls.Certificate{client}})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	resp, err := tokenbrokerv1.NewTokenBrokerServiceClient(conn).GetToken(t.Context(), &tokenbrokerv1.GetTokenRequest{Provider: providerName})
	if err != nil || resp.GetToken().GetAccessToken() == "" {
		t.Errorf("gRPC GetToken with the client certificate = %v, %v; want a token", resp, err)
	}
}

func TestValidateSecuritySections(t *testing.T) {
	sum := strings.Repeat("ab", 32)
	tests := []struct {
		name string
		give func(*app.Config)
		env  map[string]string
		want string
	}{
		{"api key id", func(c *app.Config) { c.Auth.APIKeys = []app.APIKeyConfig{{ID: "short", Identity: "a", SHA256: sum}} }, nil, `auth.api_keys: apikey: invalid argument: static key id "short"`},
		{"api key hash", func(c *app.Config) {
			c.Auth.APIKeys = []app.APIKeyConfig{{ID: testKeyID, Identity: "a", SHA256: "beef"}}
		}, nil, "sha256 is not 64 hex digits"},
		{"api key identity", func(c *app.Config) { c.Auth.APIKeys = []app.APIKeyConfig{{ID: testKeyID, SHA256: sum}} }, nil, "identity is empty"},
		{"api key twice", func(c *app.Config) {
			c.Auth.APIKeys = []app.APIKeyConfig{{ID: testKeyID, Identity: "a", SHA256: sum}, {ID: testKeyID, Identity: "b", SHA256: sum}}
		}, nil, "declared twice"},
		{"policy action", func(c *app.Config) {
			c.Auth.Policy = []app.PolicyRule{{Identities: []string{"a"}, Actions: []string{"root"}}}
		}, nil, `auth.policy: policy: invalid rule: rule 1: unknown action "root"`},
		{"policy identities", func(c *app.Config) { c.Auth.Policy = []app.PolicyRule{{Actions: []string{"token"}}} }, nil, "rule 1: identities is empty"},
		{"rate limit", func(c *app.Config) { c.Auth.RateLimit = app.RateLimitConfig{} }, nil, "auth.rate_limit"},
		{"rate limit NaN", func(c *app.Config) { c.Auth.RateLimit.RPS = math.NaN() }, nil, "auth.rate_limit: rps must be a number above 0"},
		{"unauthenticated rate limit", func(c *app.Config) { c.Auth.UnauthenticatedRateLimit = app.RateLimitConfig{RPS: 1} }, nil, "auth.unauthenticated_rate_limit: rps must be a number above 0 and burst between 1 and"},
		{"unauthenticated rate limit infinite", func(c *app.Config) { c.Auth.UnauthenticatedRateLimit.RPS = math.Inf(1) }, nil, "auth.unauthenticated_rate_limit"},
		{"cert without key", func(c *app.Config) { c.TLS.CertFile = "/x.crt" }, nil, "tls.cert_file and tls.key_file go together"},
		{"client CA alone", func(c *app.Config) { c.TLS.ClientCAFile = "/ca.crt" }, nil, "tls.client_ca_file needs tls.cert_file and tls.key_file"},
		{"two master keys", func(c *app.Config) { c.Seal.KeyFile = "/m.key" }, map[string]string{app.MasterKeyEnv: masterKeyValue}, "seal.key_file and $TOKENBROKER_MASTER_KEY are both set"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := app.DefaultConfig()
			tt.give(&cfg)
			err := cfg.Validate(envMap(tt.env))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate() = %v, want an error containing %q", err, tt.want)
			}
			if err != nil && strings.Contains(err.Error(), masterKeyValue[3:15]) {
				t.Errorf("Validate() error holds master key material")
			}
		})
	}
}
