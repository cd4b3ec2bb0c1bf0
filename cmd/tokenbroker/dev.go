package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"github.com/tokenbroker/tokenbroker/app"
	"github.com/tokenbroker/tokenbroker/broker/apikey"
	"github.com/tokenbroker/tokenbroker/broker/seal"
	"github.com/tokenbroker/tokenbroker/sandbox"
)

// devEnv is the sandbox provider that `tokenbroker dev` runs beside the
// broker, on loopback. Its listener is bound first (the broker's config
// needs its URL); the provider itself is made once the broker listens (it
// needs the broker's callback URL).
type devEnv struct {
	provider atomic.Pointer[sandbox.Server]
	http     *http.Server
	lis      net.Listener
	done     chan struct{}
}

// listenSandbox binds a free loopback port and serves the sandbox there
// once setProvider is called (503 until then).
func listenSandbox() (*devEnv, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("sandbox listener: %w", err)
	}
	d := &devEnv{lis: lis, done: make(chan struct{})}
	d.http = &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if sb := d.provider.Load(); sb != nil {
			sb.ServeHTTP(w, r)
			return
		}
		http.Error(w, "sandbox starting", http.StatusServiceUnavailable)
	})}
	go func() {
		defer close(d.done)
		_ = d.http.Serve(lis) // returns ErrServerClosed after Close
	}()
	return d, nil
}

// devUser is the sandbox's resource owner, for the password and consent flows.
const devUser, devPassword = "alice", "wonderland"

// setProvider makes the sandbox serve every grant: client credentials,
// password, authorization code with PKCE back to callback, and refresh
// tokens that rotate (as MediaHaven's do).
func (d *devEnv) setProvider(clientID, clientSecret, callback string) error {
	sb, err := sandbox.New(sandbox.Config{
		Clients:             map[string]string{clientID: clientSecret},
		Users:               map[string]string{devUser: devPassword},
		RedirectURIs:        map[string][]string{clientID: {callback}},
		RefreshTokens:       true,
		RotateRefreshTokens: true,
		RequirePKCE:         true,
		MaxRecorded:         1000,
	})
	if err != nil {
		return err
	}
	d.provider.Store(sb)
	return nil
}

// baseURL is the sandbox's URL.
func (d *devEnv) baseURL() string { return "http://" + d.lis.Addr().String() }

// Close stops the sandbox and waits for it.
func (d *devEnv) Close() {
	d.http.Close()
	<-d.done
}

// devIdentity is the identity of the API key `tokenbroker dev` prints.
const devIdentity = "dev"

// devConfig is the configuration `tokenbroker dev` runs: loopback
// listeners, a throwaway data directory, the sandbox provider, and the dev
// API key (by its id and hash) whose caller may do everything.
func devConfig(dataDir, sandboxURL, clientID, clientSecret, keyID, keySHA256 string) app.Config {
	cfg := app.DefaultConfig()
	cfg.Auth.APIKeys = []app.APIKeyConfig{{ID: keyID, Identity: devIdentity, SHA256: keySHA256}}
	cfg.Auth.Policy = []app.PolicyRule{{Identities: []string{devIdentity}, Actions: []string{"token", "introspect", "admin"}}}
	cfg.GRPCAddr = "127.0.0.1:9090"
	cfg.HTTPAddr = "127.0.0.1:8080"
	cfg.DataDir = dataDir
	cfg.Log.Format = "console"
	cfg.Providers = []app.ProviderConfig{{
		Name:             "sandbox",
		TokenURL:         sandboxURL + sandbox.TokenPath,
		AuthorizeURL:     sandboxURL + sandbox.AuthorizePath,
		IntrospectionURL: sandboxURL + sandbox.IntrospectPath,
		RevocationURL:    sandboxURL + sandbox.RevokePath,
		ClientID:         clientID,
		ClientSecret:     clientSecret,
		ClientAuthStyle:  "basic",
		GrantTypes:       []string{"client_credentials", "password", "authorization_code", "refresh_token"},
		PKCE:             true,
	}}
	return cfg
}

func runDev(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	fs.SetOutput(stderr)
	grpcAddr := fs.String("grpc-addr", "127.0.0.1:9090", "gRPC listen address (port 0 picks one)")
	httpAddr := fs.String("http-addr", "127.0.0.1:8080", "REST listen address (port 0 picks one)")
	metricsAddr := fs.String("metrics-addr", app.DefaultMetricsAddr, "listen address of /metrics and /openapi.json (port 0 picks one)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	dataDir, err := os.MkdirTemp("", "tokenbroker-dev-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dataDir)

	secret := make([]byte, 24)
	if _, err := rand.Read(secret); err != nil {
		return err
	}
	const clientID = "sandbox-client"
	env, err := listenSandbox()
	if err != nil {
		return err
	}
	defer env.Close()

	// A throwaway master key and dev API key: the data directory goes away
	// with them.
	master, err := seal.GenerateKey("dev")
	if err != nil {
		return err
	}
	keyring, err := seal.NewKeyring(master)
	clear(master.Secret)
	if err != nil {
		return err
	}
	keyID, key, keySHA256, err := apikey.Generate()
	if err != nil {
		return err
	}

	cfg := devConfig(dataDir, env.baseURL(), clientID, base64.RawURLEncoding.EncodeToString(secret), keyID, keySHA256)
	cfg.GRPCAddr, cfg.HTTPAddr, cfg.MetricsAddr, cfg.Log.Level = *grpcAddr, *httpAddr, *metricsAddr, *logLevel
	cfg.Keyring = keyring
	cfg.InsecureHTTPLoopback = true // the sandbox is plain http on loopback
	if err := cfg.Validate(os.Getenv); err != nil {
		return err
	}
	log, err := app.NewLogger(cfg.Log, stderr)
	if err != nil {
		return err
	}
	defer log.Sync() //nolint:errcheck // nothing to do about a failed flush
	inst, err := app.Start(ctx, cfg, log)
	if err != nil {
		return err
	}
	if err := env.setProvider(clientID, base64.RawURLEncoding.EncodeToString(secret), inst.CallbackURL()); err != nil {
		return errors.Join(err, inst.Close())
	}
	fmt.Fprintf(stdout, `tokenbroker dev is running: embedded etcd in %[1]s, sandbox OAuth2 provider at %[2]s
  REST: http://%[3]s   gRPC: %[4]s   Metrics: http://%[9]s/metrics   OpenAPI: http://%[9]s/openapi.json

Your dev API key (identity %[5]q, allowed everything, admin included; it lasts as long as this run):
  %[6]s

Get a token from the sandbox provider:
  curl -s -X POST -H "Authorization: Bearer %[6]s" http://%[3]s/v1/providers/sandbox/token
  grpcurl -plaintext -H 'authorization: Bearer %[6]s' -d '{"provider":"sandbox"}' %[4]s tokenbroker.v1.TokenBrokerService/GetToken

The sandbox serves every grant. A password account (user %[7]s, password %[8]s):
  curl -s -X PUT -H "Authorization: Bearer %[6]s" http://%[3]s/v1/admin/providers/sandbox/accounts/alice-pw -d '{"grant_type":"GRANT_TYPE_PASSWORD","username":"%[7]s","password":"%[8]s"}'
  curl -s -X POST -H "Authorization: Bearer %[6]s" http://%[3]s/v1/providers/sandbox/token -d '{"account":"alice-pw"}'
A consent (authorization code with PKCE): open the authorize_url this prints, sign in as %[7]s / %[8]s,
and the broker's callback page confirms; refresh tokens rotate on every refresh:
  curl -s -X POST -H "Authorization: Bearer %[6]s" http://%[3]s/v1/admin/providers/sandbox/accounts/alice:authorize -d '{}'
  curl -s -X POST -H "Authorization: Bearer %[6]s" http://%[3]s/v1/providers/sandbox/token -d '{"account":"alice"}'
  curl -s -H "Authorization: Bearer %[6]s" http://%[3]s/v1/admin/grants

Ctrl-C stops it and deletes the data directory.
`, dataDir, env.baseURL(), inst.HTTPAddr(), inst.GRPCAddr(), devIdentity, key, devUser, devPassword, inst.MetricsAddr())
	err = inst.Wait(ctx)
	return errors.Join(err, inst.Close())
}
