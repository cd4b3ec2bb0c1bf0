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
	"time"

	"github.com/tokenbroker/tokenbroker/broker/apikey"
	"github.com/tokenbroker/tokenbroker/broker/seal"
	"github.com/tokenbroker/tokenbroker/sandbox"
)

// devEnv is the sandbox provider that `tokenbroker dev` runs beside the
// broker, on loopback.
type devEnv struct {
	provider *sandbox.Server
	http     *http.Server
	lis      net.Listener
	done     chan struct{}
}

// startSandbox serves a sandbox OAuth2 server on a free loopback port.
func startSandbox(clientID, clientSecret string) (*devEnv, error) {
	sb, err := sandbox.New(sandbox.Config{Clients: map[string]string{clientID: clientSecret}, MaxRecorded: 1000})
	if err != nil {
		return nil, err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("sandbox listener: %w", err)
	}
	d := &devEnv{provider: sb, lis: lis, done: make(chan struct{}),
		http: &http.Server{Handler: sb, ReadHeaderTimeout: 5 * time.Second}}
	go func() {
		defer close(d.done)
		_ = d.http.Serve(lis) // returns ErrServerClosed after Close
	}()
	return d, nil
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
func devConfig(dataDir, sandboxURL, clientID, clientSecret, keyID, keySHA256 string) Config {
	cfg := defaultConfig()
	cfg.Auth.APIKeys = []APIKeyConfig{{ID: keyID, Identity: devIdentity, SHA256: keySHA256}}
	cfg.Auth.Policy = []PolicyRule{{Identities: []string{devIdentity}, Actions: []string{"token", "introspect", "admin"}}}
	cfg.GRPCAddr = "127.0.0.1:9090"
	cfg.HTTPAddr = "127.0.0.1:8080"
	cfg.DataDir = dataDir
	cfg.Log.Format = "console"
	cfg.Providers = []ProviderConfig{{
		Name:            "sandbox",
		TokenURL:        sandboxURL + sandbox.TokenPath,
		ClientID:        clientID,
		ClientSecret:    clientSecret,
		ClientAuthStyle: "basic",
	}}
	return cfg
}

func runDev(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	fs.SetOutput(stderr)
	grpcAddr := fs.String("grpc-addr", "127.0.0.1:9090", "gRPC listen address (port 0 picks one)")
	httpAddr := fs.String("http-addr", "127.0.0.1:8080", "REST listen address (port 0 picks one)")
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
	env, err := startSandbox(clientID, base64.RawURLEncoding.EncodeToString(secret))
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
	cfg.GRPCAddr, cfg.HTTPAddr, cfg.Log.Level = *grpcAddr, *httpAddr, *logLevel
	cfg.keyring = keyring
	if err := cfg.Validate(os.Getenv); err != nil {
		return err
	}
	log, err := newLogger(cfg.Log, stderr)
	if err != nil {
		return err
	}
	defer log.Sync() //nolint:errcheck // nothing to do about a failed flush
	app, err := StartApp(ctx, cfg, log)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, `tokenbroker dev is running: embedded etcd in %s, sandbox OAuth2 provider at %s
  REST: http://%s   gRPC: %s   OpenAPI: http://%s/openapi.json

Your dev API key (identity %q, allowed everything, admin included; it lasts as long as this run):
  %s

Get a token from the sandbox provider:
  curl -s -X POST -H "Authorization: Bearer %s" http://%s/v1/providers/sandbox/token
  grpcurl -plaintext -H 'authorization: Bearer %s' -d '{"provider":"sandbox"}' %s tokenbroker.v1.TokenBrokerService/GetToken

Ctrl-C stops it and deletes the data directory.
`, dataDir, env.baseURL(), app.HTTPAddr(), app.GRPCAddr(), app.HTTPAddr(), devIdentity, key, key, app.HTTPAddr(), key, app.GRPCAddr())
	err = app.Wait(ctx)
	return errors.Join(err, app.Close())
}
