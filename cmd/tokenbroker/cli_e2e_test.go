//go:build unix

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/fakes"
	"github.com/tokenbroker/tokenbroker/internal/testkeys"
	"github.com/tokenbroker/tokenbroker/sandbox"
)

// What `tokenbroker dev` prints: the sandbox's URL (the gRPC address and
// the key are in devExport's line, dev_test.go).
var devSandboxURL = regexp.MustCompile(`sandbox OAuth2 provider at (\S+)`)

// devProcess is `tokenbroker dev` run as a subprocess.
type devProcess struct {
	bin        string // the tokenbroker binary
	addr       string // gRPC address
	key        string // the dev API key
	sandboxURL string
}

// buildTokenbroker builds the command into dir and returns the binary.
func buildTokenbroker(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "tokenbroker")
	cmd := exec.CommandContext(t.Context(), "go", "build", "-o", bin, "./cmd/tokenbroker")
	cmd.Dir = filepath.Join("..", "..") // the module root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/tokenbroker: %v\n%s", err, out)
	}
	return bin
}

// startDev runs `tokenbroker dev` on free loopback ports in its own
// process group, and stops the group when the test ends.
func startDev(t *testing.T, bin string) *devProcess {
	t.Helper()
	var stdout, stderr syncBuffer
	cmd := exec.Command(bin, "dev", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--log-level", "warn")
	cmd.Env = cliEnv(nil)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		// SIGINT lets dev remove its data directory; SIGKILL if it hangs.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGINT)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
			t.Errorf("tokenbroker dev did not stop within 20s of SIGINT; stderr:\n%s", stderr.String())
		}
	})

	deadline := time.After(30 * time.Second)
	for {
		out := stdout.String()
		export, sb := devExport.FindStringSubmatch(out), devSandboxURL.FindStringSubmatch(out)
		if export != nil && sb != nil {
			return &devProcess{bin: bin, addr: export[1], key: export[2], sandboxURL: sb[1]}
		}
		select {
		case err := <-exited:
			exited <- err // for the cleanup
			t.Fatalf("tokenbroker dev exited (%v) before printing its key and addresses; stdout:\n%s\nstderr:\n%s", err, out, stderr.String())
		case <-deadline:
			t.Fatalf("tokenbroker dev printed no key and addresses within 30s; stdout:\n%s\nstderr:\n%s", out, stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// cliEnv is this process's environment without TOKENBROKER_ variables,
// plus set (an empty value leaves the variable out).
func cliEnv(set map[string]string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TOKENBROKER_") {
			env = append(env, kv)
		}
	}
	for k, v := range set {
		if v != "" {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// cliResult is what a CLI subprocess did.
type cliResult struct {
	stdout, stderr string
	code           int
}

// cli runs the CLI against dev with stdin and the environment of an admin
// (TOKENBROKER_ADDR and TOKENBROKER_API_KEY) overlaid by env.
func (d *devProcess) cli(t *testing.T, stdin string, env map[string]string, args ...string) cliResult {
	t.Helper()
	set := map[string]string{"TOKENBROKER_ADDR": d.addr, "TOKENBROKER_API_KEY": d.key}
	for k, v := range env {
		set[k] = v
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.bin, args...)
	cmd.Env = cliEnv(set)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		t.Fatalf("tokenbroker %q: %v", args, err)
	}
	return cliResult{stdout: stdout.String(), stderr: stderr.String(), code: cmd.ProcessState.ExitCode()}
}

// TestCLIAgainstDev runs the admin CLI as a subprocess against
// `tokenbroker dev`, as an admin would from a shell, and asserts on its
// output and exit codes.
func TestCLIAgainstDev(t *testing.T) {
	t.Parallel()
	dev := startDev(t, buildTokenbroker(t, t.TempDir()))

	// token get prints the token alone, so that $(tokenbroker token get p)
	// works; -o json prints the whole token (the same one: cached).
	got := dev.cli(t, "", nil, "token", "get", "sandbox")
	if got.code != 0 || !regexp.MustCompile(`^[A-Za-z0-9._~+/=-]+\n$`).MatchString(got.stdout) {
		t.Fatalf("token get sandbox: exit %d, stdout %q, stderr %q; want 0 and a token alone on a line", got.code, got.stdout, got.stderr)
	}
	token := strings.TrimSuffix(got.stdout, "\n")
	got = dev.cli(t, "", nil, "token", "get", "sandbox", "-o", "json")
	var asJSON struct {
		AccessToken string `json:"access_token"`
		TokenType   string `json:"token_type"`
		Provider    string `json:"provider"`
		ExpiresAt   string `json:"expires_at"`
	}
	if err := json.Unmarshal([]byte(got.stdout), &asJSON); err != nil || got.code != 0 {
		t.Fatalf("token get sandbox -o json: exit %d, %v: %s", got.code, err, got.stdout)
	}
	if asJSON.AccessToken != token || asJSON.TokenType != "Bearer" || asJSON.Provider != "sandbox" || asJSON.ExpiresAt == "" {
		t.Errorf("token get sandbox -o json = %+v, want access_token %q, token_type Bearer, provider sandbox, expires_at", asJSON, token)
	}

	// The sandbox's client secret is dev's secret. "second" is registered
	// with the sandbox's token URL and a wrong one.
	const wrongSecret = "not-the-sandbox-secret-4711"
	clientKeyPEM, _ := testkeys.NewClientKeyPEM()
	clientKeyBody := strings.Split(clientKeyPEM, "\n")[2] // a line of the key's base64
	saKey, _, saPrivate := testkeys.NewServiceAccountKey("kid-cli", "https://oauth2.googleapis.com/token")
	saFile := filepath.Join(t.TempDir(), "sa.json")
	if err := os.WriteFile(saFile, saKey, 0o600); err != nil {
		t.Fatal(err)
	}
	tokenURL := dev.sandboxURL + sandbox.TokenPath
	steps := []struct {
		name       string
		give       []string
		stdin      string
		env        map[string]string
		wantCode   int
		wantStdout string // regexp
		wantStderr string // substring
	}{
		{
			name: "put a provider",
			give: []string{"provider", "put", "second", "--token-url", tokenURL, "--client-id", "sandbox-client", "--client-secret-env", "SECOND_SECRET", "--auth-style", "basic+post", "--scope", "read,write", "--grant", "client_credentials"},
			env:  map[string]string{"SECOND_SECRET": wrongSecret}, wantStdout: `(?m)^NAME\s+second\n[\s\S]*^CLIENT SECRET\s+set \(\w+\)\n[\s\S]*^AUTH STYLE\s+basic\+post\n[\s\S]*^SCOPES\s+read,write\n`,
		},
		{name: "list providers", give: []string{"provider", "list"}, wantStdout: `(?m)^NAME\s+TOKEN URL\s.*\n(?:.*\n)*second\s+` + regexp.QuoteMeta(tokenURL) + `\s+sandbox-client\s+basic\+post\s+client_credentials\s+set `},
		{name: "get a provider as JSON", give: []string{"provider", "get", "second", "-o", "json"}, wantStdout: `"token_url": "` + regexp.QuoteMeta(tokenURL) + `"[\s\S]*"client_secret": \{\s*"set": true`},
		{name: "a wrong secret is refused", give: []string{"token", "get", "second"}, wantCode: exitRefused, wantStderr: "invalid_client"},
		{name: "rotating to a wrong secret is refused", give: []string{"provider", "rotate-secret", "sandbox", "--client-secret-stdin"}, stdin: wrongSecret + "\n", wantCode: exitRefused, wantStderr: "provider sandbox: oauth: token endpoint answered 401: invalid_client"},
		{name: "the old secret still works", give: []string{"token", "refresh", "sandbox"}, wantStdout: `^[A-Za-z0-9._~+/=-]+\n$`},
		{name: "rotate without validation", give: []string{"provider", "rotate-secret", "second", "--client-secret-env", "NEW", "--skip-validation", "--overlap", "1m"}, env: map[string]string{"NEW": wrongSecret + "-2"}, wantStdout: `(?m)^NAME\s+second$`},
		{name: "put a password account", give: []string{"account", "put", "sandbox", "alice-pw", "--grant", "password", "--username", "alice", "--password-stdin"}, stdin: "wonderland\n", wantStdout: `(?m)^sandbox\s+alice-pw\s+password\s`},
		{name: "get the account's token", give: []string{"token", "get", "sandbox", "--account", "alice-pw", "--min-ttl", "5m"}, wantStdout: `^[A-Za-z0-9._~+/=-]+\n$`},
		{name: "list grants", give: []string{"grant", "list"}, wantStdout: `(?m)^PROVIDER\s+ACCOUNT\s+GRANT\s+HEALTH\s.*\n(?:.*\n)*sandbox\s+alice-pw\s+password\s+ok\s`},
		{name: "list a provider's grants as JSON", give: []string{"grant", "list", "--provider", "sandbox", "-o", "json"}, wantStdout: `"account": "alice-pw"[\s\S]*"health": "GRANT_HEALTH_OK"`},
		{name: "authorize", give: []string{"grant", "authorize", "sandbox", "alice"}, wantStdout: `^` + regexp.QuoteMeta(dev.sandboxURL+sandbox.AuthorizePath) + `\?\S*state=\S+\n$`, wantStderr: "Open this URL in a browser"},
		{name: "revoke a grant", give: []string{"grant", "revoke", "sandbox", "alice-pw"}, wantStdout: `^grant sandbox/alice-pw revoked\n$`},
		{name: "a revoked grant is gone", give: []string{"grant", "revoke", "sandbox", "alice-pw"}, wantCode: exitNotFound, wantStderr: `account "alice-pw" of provider "sandbox"`},
		{name: "a revoked grant has no tokens", give: []string{"token", "get", "sandbox", "--account", "alice-pw"}, wantCode: exitNotFound, wantStderr: `"alice-pw"`},
		{name: "list events", give: []string{"events", "list", "--provider", "sandbox"}, wantStdout: `(?m)^ID\s+TIME\s+TYPE\s+PROVIDER\s+ACCOUNT\s+HEALTH\s+DETAIL\n(?:.*\n)*\S+\s+\S+\s+grant\.revoked\s+sandbox\s+alice-pw\s+ok→-`},
		{name: "an unknown event type", give: []string{"events", "list", "--type", "grant.exploded"}, wantCode: exitUsage, wantStderr: "unknown event type"},
		{name: "introspect an unknown token", give: []string{"token", "introspect", "--token-stdin", "-o", "json"}, stdin: "no-such-token\n", wantStdout: `^\{\s*\}\n$`},
		{
			name:  "put a provider on private_key_jwt with an imported key",
			give:  []string{"provider", "put", "pkj", "--token-url", tokenURL, "--client-id", "pkj-client", "--auth-style", "private_key_jwt", "--client-key-stdin", "--client-assertion-audience", dev.sandboxURL},
			stdin: clientKeyPEM, wantStdout: `(?m)^AUTH STYLE\s+private_key_jwt\n^CLIENT KEYS\s+\S+ ES256\n^ASSERTION AUDIENCE\s+` + regexp.QuoteMeta(dev.sandboxURL) + `\n`,
		},
		{name: "put it again without a key keeps it", give: []string{"provider", "put", "pkj", "--token-url", tokenURL, "--client-id", "pkj-client", "--auth-style", "private_key_jwt", "-o", "json"}, wantStdout: `"client_auth_style": "CLIENT_AUTH_STYLE_PRIVATE_KEY_JWT"[\s\S]*"client_keys": \[\s*\{\s*"key_id": "\S+",\s*"algorithm": "ES256"`},
		{name: "rotate the client key", give: []string{"provider", "rotate-key", "pkj", "--algorithm", "EdDSA", "--overlap", "1h"}, wantStdout: `(?m)^CLIENT KEYS\s+\S+ EdDSA,\S+ ES256 \(until \S+\)\n`},
		{name: "a key that is not one", give: []string{"provider", "rotate-key", "pkj", "--client-key-stdin"}, stdin: "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n", wantCode: exitUsage, wantStderr: "client key: the PEM private key does not parse"},
		{
			name:       "put a Google service account",
			give:       []string{"provider", "put", "gsa", "--preset", "google-service-account", "--service-account-key-file", saFile, "--scope", "https://www.googleapis.com/auth/cloud-platform"},
			wantStdout: `(?m)^TOKEN URL\s+https://oauth2\.googleapis\.com/token\n[\s\S]*^AUTH STYLE\s+none\n^CLIENT KEYS\s+kid-cli RS256\n[\s\S]*^JWT BEARER\s+iss=reporter@demo-project\.iam\.gserviceaccount\.com sub=- aud=https://oauth2\.googleapis\.com/token scope claim\n[\s\S]*^GRANTS\s+jwt_bearer\n`,
		},
		{name: "a jwt_bearer account acts for a user", give: []string{"account", "put", "gsa", "alice", "--grant", "jwt-bearer", "--username", "alice@example.com"}, wantStdout: `(?m)^gsa\s+alice\s+jwt_bearer\s`},
		{name: "bad flag", give: []string{"provider", "put", "x", "--bogus"}, wantCode: exitUsage, wantStderr: "tokenbroker: unknown flag: --bogus (see 'tokenbroker provider put --help')"},
		{name: "a secret as a flag", give: []string{"provider", "rotate-secret", "sandbox", "--client-secret", wrongSecret}, wantCode: exitUsage, wantStderr: "unknown flag: --client-secret"},
		{name: "unknown provider", give: []string{"token", "get", "nope"}, wantCode: exitNotFound, wantStderr: `tokenbroker: broker: not found: provider "nope"`},
		{name: "no API key", give: []string{"provider", "list"}, env: map[string]string{"TOKENBROKER_API_KEY": ""}, wantCode: exitDenied, wantStderr: "missing or invalid credentials (no API key given"},
		{name: "a wrong API key", give: []string{"provider", "list"}, env: map[string]string{"TOKENBROKER_API_KEY": "tbk_nope_nope"}, wantCode: exitDenied, wantStderr: "tokenbroker: missing or invalid credentials\n"},
		{name: "no broker", give: []string{"provider", "list", "--addr", "127.0.0.1:1"}, wantCode: exitUnavailable, wantStderr: "cannot reach the broker at 127.0.0.1:1"},
		{name: "delete a provider", give: []string{"provider", "delete", "second"}, wantStdout: `^provider "second" deleted\n$`},
		{name: "a deleted provider is gone", give: []string{"provider", "get", "second"}, wantCode: exitNotFound, wantStderr: `provider "second"`},
	}
	for _, tt := range steps {
		got := dev.cli(t, tt.stdin, tt.env, tt.give...)
		if got.code != tt.wantCode {
			t.Errorf("%s: tokenbroker %q: exit code %d, want %d; stderr %q", tt.name, tt.give, got.code, tt.wantCode, got.stderr)
		}
		if !regexp.MustCompile(tt.wantStdout).MatchString(got.stdout) {
			t.Errorf("%s: tokenbroker %q: stdout does not match %q:\n%s", tt.name, tt.give, tt.wantStdout, got.stdout)
		}
		if !strings.Contains(got.stderr, tt.wantStderr) {
			t.Errorf("%s: tokenbroker %q: stderr = %q, want it to contain %q", tt.name, tt.give, got.stderr, tt.wantStderr)
		}
		// A failure is one line "tokenbroker: <message>"; success prints no error.
		if wantLines := min(tt.wantCode, 1); strings.Count(got.stderr, "tokenbroker: ") != wantLines || (wantLines == 1 && strings.Count(got.stderr, "\n") != 1) {
			t.Errorf("%s: tokenbroker %q: stderr = %q, want %d error line(s)", tt.name, tt.give, got.stderr, wantLines)
		}
		if strings.Contains(got.stdout+got.stderr, wrongSecret) || strings.Contains(got.stdout+got.stderr, clientKeyBody) || strings.Contains(got.stdout+got.stderr, saPrivate[0]) {
			t.Errorf("%s: tokenbroker %q printed a client secret:\n%s%s", tt.name, tt.give, got.stdout, got.stderr)
		}
	}

	t.Run("introspect a token", func(t *testing.T) {
		tok := strings.TrimSpace(dev.cli(t, "", nil, "token", "get", "sandbox").stdout)
		got := dev.cli(t, tok+"\n", nil, "token", "introspect", "--token-stdin")
		if got.code != 0 || !regexp.MustCompile(`(?m)^ACTIVE\s+true\n[\s\S]*^PROVIDER\s+sandbox\n`).MatchString(got.stdout) {
			t.Errorf("token introspect: exit %d, stdout:\n%s\nstderr %q; want 0, active, provider sandbox", got.code, got.stdout, got.stderr)
		}
	})

	t.Run("device authorization", func(t *testing.T) {
		tests := []struct {
			name       string
			script     []string // the provider's answers before consent
			wantCode   int
			wantStdout string // regexp, after the user code's line
			wantStderr string
		}{
			{name: "consent", wantStdout: `(?m)^tv-consent\s+kiosk\s+device_code\s+ok\s`, wantStderr: "Authorized."},
			{name: "refused", script: []string{"access_denied"}, wantCode: exitRefused, wantStderr: "tokenbroker: device authorization: provider tv-refused: oauth: token endpoint answered 400: access_denied\n"},
		}
		for _, tt := range tests {
			f := fakes.NewDevice(t, 1, tt.script...)
			provider := "tv-" + tt.name
			put := dev.cli(t, "", map[string]string{"S": fakes.DeviceClientSecret}, "provider", "put", provider, "--token-url", f.URL+"/token",
				"--device-authorization-url", f.URL+"/device", "--client-id", fakes.DeviceClientID, "--client-secret-env", "S",
				"--auth-style", "post", "--grant", "device_code", "--grant", "refresh_token", "--scope", "api")
			if put.code != 0 || !regexp.MustCompile(`(?m)^DEVICE AUTHORIZATION URL\s+`+regexp.QuoteMeta(f.URL+"/device")+`\n`).MatchString(put.stdout) {
				t.Fatalf("%s: provider put: exit %d, stdout:\n%s\nstderr %q", tt.name, put.code, put.stdout, put.stderr)
			}
			done := make(chan struct{})
			var wg sync.WaitGroup
			wg.Go(func() { // the person consents once the CLI waits
				for len(f.Polls()) < 2 {
					select {
					case <-done:
						return
					case <-time.After(50 * time.Millisecond):
					}
				}
				f.Approve()
			})
			start := time.Now()
			got := dev.cli(t, "", nil, "grant", "authorize", provider, "kiosk", "--device")
			close(done)
			wg.Wait()
			t.Logf("%s: grant authorize --device took %v (%d polls)", tt.name, time.Since(start), len(f.Polls()))
			code, rest, _ := strings.Cut(got.stdout, "\n")
			if got.code != tt.wantCode || code != fakes.DeviceUserCode || !regexp.MustCompile(tt.wantStdout).MatchString(rest) {
				t.Errorf("%s: grant authorize --device: exit %d, stdout:\n%s\nwant exit %d, the user code %s, then %q", tt.name, got.code, got.stdout, tt.wantCode, fakes.DeviceUserCode, tt.wantStdout)
			}
			if !strings.Contains(got.stderr, f.URL+"/activate") || !strings.Contains(got.stderr, tt.wantStderr) {
				t.Errorf("%s: grant authorize --device: stderr %q, want the verification URI and %q", tt.name, got.stderr, tt.wantStderr)
			}
		}
		if got := dev.cli(t, "", nil, "token", "get", "tv-consent", "--account", "kiosk"); got.code != 0 || got.stdout != "device-at-3\n" {
			t.Errorf("token get of the consented account: exit %d, stdout %q, stderr %q; want the token of the consent", got.code, got.stdout, got.stderr)
		}
	})

	t.Run("client certificate and token exchange", func(t *testing.T) {
		dir := t.TempDir()
		cert := fakes.NewClientCertificate(t, "tokenbroker-cli")
		certFile, keyFile := filepath.Join(dir, "client.pem"), filepath.Join(dir, "client.key")
		for f, data := range map[string][]byte{certFile: cert.CertPEM, keyFile: cert.KeyPEM} {
			if err := os.WriteFile(f, data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		got := dev.cli(t, "", nil, "provider", "put", "pki", "--token-url", "https://127.0.0.1:1/token", "--client-id", "pki-client",
			"--auth-style", "tls_client_auth", "--client-certificate-file", certFile, "--client-certificate-key-file", keyFile)
		if got.code != 0 || !regexp.MustCompile(`(?m)^AUTH STYLE\s+tls_client_auth\n[\s\S]*^CLIENT CERTIFICATE\s+CN=tokenbroker-cli \(expires \S+\)\n^CERTIFICATE KEY\s+set \(\w+\)\n`).MatchString(got.stdout) {
			t.Errorf("provider put pki: exit %d, stdout:\n%s\nstderr %q; want tls_client_auth with the certificate and its key set", got.code, got.stdout, got.stderr)
		}
		if keyPart := cert.PrivatePart(t); strings.Contains(got.stdout+got.stderr, keyPart[:12]) {
			t.Error("provider put printed the certificate's private key")
		}

		var (
			mu       sync.Mutex
			subjects []string
		)
		sts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_ = r.ParseForm()
			mu.Lock()
			defer mu.Unlock()
			subjects = append(subjects, r.PostForm.Get("subject_token")+" "+r.PostForm.Get("audience"))
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"access_token":"exchanged-by-sts","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer","expires_in":300}`)
		}))
		defer sts.Close()
		got = dev.cli(t, "", nil, "provider", "put", "sts", "--token-url", sts.URL+"/token", "--client-id", "sts-client",
			"--grant", "token_exchange", "--subject-provider", "sandbox", "--audience", "orders")
		if got.code != 0 || !regexp.MustCompile(`(?m)^TOKEN EXCHANGE\s+subject from provider sandbox; audience orders; resource -\n`).MatchString(got.stdout) {
			t.Errorf("provider put sts: exit %d, stdout:\n%s\nstderr %q", got.code, got.stdout, got.stderr)
		}
		subject := strings.TrimSpace(dev.cli(t, "", nil, "token", "get", "sandbox").stdout)
		if got = dev.cli(t, "", nil, "token", "get", "sts"); got.code != 0 || got.stdout != "exchanged-by-sts\n" {
			t.Errorf("token get sts: exit %d, stdout %q, stderr %q; want the exchanged token", got.code, got.stdout, got.stderr)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(subjects) != 1 || subjects[0] != subject+" orders" {
			t.Errorf("the STS received subject tokens %q, want the sandbox's token for orders", subjects)
		}
	})

	t.Run("API keys", func(t *testing.T) {
		// A key for an identity the policy allows nothing: denied (4);
		// once retired, unknown (4 too).
		created := dev.cli(t, "", nil, "apikeys", "create", "--identity", "ci", "--description", "ci runner", "-o", "json")
		var resp struct {
			Key    string `json:"key"`
			APIKey struct {
				ID       string `json:"id"`
				Identity string `json:"identity"`
			} `json:"api_key"`
		}
		if err := json.Unmarshal([]byte(created.stdout), &resp); err != nil || created.code != 0 || resp.Key == "" || resp.APIKey.Identity != "ci" {
			t.Fatalf("apikeys create: exit %d, %v, stdout %q stderr %q; want a key for ci", created.code, err, created.stdout, created.stderr)
		}
		list := dev.cli(t, "", nil, "apikeys", "list")
		if list.code != 0 || !regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(resp.APIKey.ID)+`\s+ci\s+ci runner\s`).MatchString(list.stdout) || strings.Contains(list.stdout, resp.Key) {
			t.Errorf("apikeys list: exit %d, stdout:\n%s\nwant a row for %s without the key", list.code, list.stdout, resp.APIKey.ID)
		}
		asCI := map[string]string{"TOKENBROKER_API_KEY": "", "CI_KEY": resp.Key}
		if got := dev.cli(t, "", asCI, "provider", "list", "--api-key-env", "CI_KEY"); got.code != exitDenied || !strings.Contains(got.stderr, "permission denied: ci may not call") {
			t.Errorf("provider list as ci: exit %d, stderr %q; want %d and permission denied", got.code, got.stderr, exitDenied)
		}
		if got := dev.cli(t, "", nil, "apikeys", "retire", resp.APIKey.ID); got.code != 0 || got.stdout != "API key "+resp.APIKey.ID+" retired\n" {
			t.Errorf("apikeys retire: exit %d, stdout %q, stderr %q", got.code, got.stdout, got.stderr)
		}
		if got := dev.cli(t, "", asCI, "provider", "list", "--api-key-env", "CI_KEY"); got.code != exitDenied || !strings.Contains(got.stderr, "missing or invalid credentials") {
			t.Errorf("provider list with a retired key: exit %d, stderr %q; want %d and invalid credentials", got.code, got.stderr, exitDenied)
		}
	})
}
