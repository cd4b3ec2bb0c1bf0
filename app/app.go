// Package app wires the token broker: from its Config, the file an
// operator writes, to the store (an embedded etcd or an external cluster),
// the broker and its gRPC, REST and metrics servers, started and shut down
// together. The tokenbroker command, the benchmark and the end-to-end tests
// all run the broker through it; signals are the caller's to handle.
package app

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/apikey"
	"github.com/tokenbroker/tokenbroker/broker/oauth"
	"github.com/tokenbroker/tokenbroker/internal/embedetcd"
	"github.com/tokenbroker/tokenbroker/server"
)

// App is the running broker: its store (embedded or external etcd), the
// broker, and the servers. End-to-end tests run the real wiring through it.
type App struct {
	callbackURL string
	cfg         Config
	log         *zap.Logger
	etcd        *embedetcd.Server // nil with external endpoints
	client      *clientv3.Client
	broker      *broker.Broker
	keys        *apikey.Store
	server      *server.Server
	tracer      *sdktrace.TracerProvider // nil unless tracing.enabled
}

// errNoAuth is what Start says when no caller could ever authenticate.
var errNoAuth = errors.New("no authentication configured: no API key in auth.api_keys or in etcd, no auth.jwt_issuers and no tls.client_ca_file, " +
	"so every call would be refused; declare a bootstrap admin key (`tokenbroker apikeys create --offline --identity admin` prints one " +
	"with its config snippet) and a policy rule for it, or set tls.client_ca_file; " +
	"--insecure-no-auth lets every caller in without credentials, for a trusted development network only")

// Start starts everything cfg describes and registers its providers.
// It fails before starting anything when the master key or the TLS files
// are unusable, and before serving when no caller could authenticate. On
// error, whatever was started is stopped again.
func Start(ctx context.Context, cfg Config, log *zap.Logger) (_ *App, err error) {
	a := &App{cfg: cfg, log: log}
	defer func() {
		if err != nil {
			a.Close()
		}
	}()
	keyring, err := cfg.MasterKeyring(log)
	if err != nil {
		return nil, err
	}
	var tlsConfig *tls.Config
	if cfg.TLS.files().Enabled() {
		if tlsConfig, err = server.LoadTLS(cfg.TLS.files(), time.Now()); err != nil {
			return nil, err
		}
	}
	if cfg.InsecureNoAuth && (len(cfg.Auth.APIKeys) > 0 || len(cfg.Auth.JWTIssuers) > 0 || cfg.TLS.ClientCAFile != "") {
		return nil, errors.New("--insecure-no-auth conflicts with auth.api_keys, auth.jwt_issuers and tls.client_ca_file: authentication is configured; drop the flag")
	}
	pol, err := cfg.Auth.policy()
	if err != nil {
		return nil, err
	}
	jwts, err := cfg.Auth.verifier(cfg.InsecureHTTPLoopback, log)
	if err != nil {
		return nil, err
	}
	endpoints := cfg.Etcd.Endpoints
	if len(endpoints) == 0 {
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			return nil, fmt.Errorf("data dir: %w", err)
		}
		a.etcd, err = embedetcd.Start(ctx, embedetcd.Config{Dir: cfg.DataDir, Logger: log.Named("etcd").WithOptions(zap.IncreaseLevel(zap.ErrorLevel))})
		if err != nil {
			return nil, err
		}
		endpoints = []string{a.etcd.Endpoint()}
		log.Info("embedded etcd started", zap.String("data_dir", cfg.DataDir), zap.String("endpoint", a.etcd.Endpoint()))
	}
	ccfg, err := EtcdClientConfig(cfg.Etcd, endpoints, log)
	if err != nil {
		return nil, err
	}
	ccfg.DialOptions = append(ccfg.DialOptions, cfg.EtcdDialOptions...)
	a.client, err = clientv3.New(ccfg)
	if err != nil {
		return nil, fmt.Errorf("etcd client: %w", err)
	}
	a.keys, err = apikey.NewStore(ctx, a.client, cfg.Etcd.Prefix, keyring, log)
	if err != nil {
		return nil, err
	}
	if err := a.keys.SetStatic(cfg.Auth.staticKeys()); err != nil {
		return nil, fmt.Errorf("auth.api_keys: %w", err)
	}
	switch {
	case cfg.InsecureNoAuth:
		log.Warn("INSECURE: authentication is off (--insecure-no-auth): callers without credentials are let in " +
			"as \"" + server.AnonymousIdentity + "\" and every caller may do everything; use this on a trusted development network only")
	case cfg.TLS.ClientCAFile == "" && jwts == nil && !a.keys.Usable():
		return nil, errNoAuth
	case pol.Len() == 0:
		log.Warn("auth.policy has no rule: every call but health checks will be refused")
	}
	// Tracing off installs nothing: no tracer reaches the broker or the
	// servers.
	var tp trace.TracerProvider
	var oauthClient *oauth.Client
	if cfg.Tracing.Enabled {
		if a.tracer, err = newTracerProvider(ctx, cfg.Tracing, cfg.env(), log); err != nil {
			return nil, err
		}
		tp = a.tracer
		oauthClient = &oauth.Client{Tracer: tp.Tracer(oauth.TracerName)}
	}
	metrics := server.NewMetrics()
	a.broker, err = broker.New(ctx, broker.Config{
		Client:        a.client,
		Prefix:        cfg.Etcd.Prefix,
		OAuth:         oauthClient,
		DefaultMinTTL: cfg.DefaultMinTTL,
		StoreTimeout:  cfg.Etcd.RequestTimeout,
		SessionTTL:    int(cfg.Refresher.SessionTTL / time.Second),
		Refresh:       broker.RefreshConfig{Shards: cfg.Refresher.Shards},
		// 0 in the file turns coalescing off; the broker's zero is its
		// default.
		MinForcedRefreshInterval: cmp.Or(cfg.MinForcedRefreshInterval, -1),
		Keyring:                  keyring,
		Logger:                   log,
		Observer:                 metrics,
		RequireHTTPS:             !cfg.InsecureHTTPLoopback,
		EventRetention:           cfg.Events.Retention,
		EventMaxAge:              cfg.Events.MaxAge,
		EventWatchBuffer:         cfg.Events.WatchBuffer,
		Webhooks:                 cfg.Events.WebhookDelivery.brokerConfig(),
	})
	if err != nil {
		return nil, err
	}
	if err := a.ApplyProviders(ctx, cfg); err != nil {
		return nil, err
	}
	if err := a.ApplyWebhooks(ctx, cfg); err != nil {
		return nil, err
	}
	metrics.WatchGrants(a.broker)
	a.server, err = server.New(server.Config{
		GRPCAddr: cfg.GRPCAddr, HTTPAddr: cfg.HTTPAddr, MetricsAddr: cfg.MetricsAddr, Broker: a.broker, Logger: log, TLS: tlsConfig, Metrics: metrics,
		Auth: server.AuthConfig{Keys: a.keys, Workload: jwts, Policy: pol, RateLimit: cfg.Auth.RateLimit.limit(),
			UnauthenticatedRateLimit: cfg.Auth.UnauthenticatedRateLimit.limit(), InsecureNoAuth: cfg.InsecureNoAuth},
		TracerProvider: tp,
	})
	if err != nil {
		return nil, err
	}
	public := strings.TrimRight(cfg.PublicURL, "/")
	if public == "" {
		public = "http://" + loopbackIfUnspecified(a.server.HTTPAddr())
	}
	a.callbackURL = public + server.CallbackPath
	a.broker.SetCallbackURL(a.callbackURL)
	a.server.Start()
	return a, nil
}

// CallbackURL is where providers send a person back after consent.
func (a *App) CallbackURL() string { return a.callbackURL }

// Broker returns the app's broker.
func (a *App) Broker() *broker.Broker { return a.broker }

// Client returns the app's etcd client.
func (a *App) Client() *clientv3.Client { return a.client }

// EtcdEndpoints are the endpoints of the store: the embedded etcd's, or
// the external cluster's.
func (a *App) EtcdEndpoints() []string { return a.client.Endpoints() }

// GRPCAddr and HTTPAddr are the bound listener addresses.
func (a *App) GRPCAddr() string { return a.server.GRPCAddr() }

// HTTPAddr is the bound REST listener address.
func (a *App) HTTPAddr() string { return a.server.HTTPAddr() }

// MetricsAddr is the bound metrics listener address; empty without one.
func (a *App) MetricsAddr() string { return a.server.MetricsAddr() }

// Wait blocks until ctx ends (nil) or a listener fails (its error).
func (a *App) Wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case err := <-a.server.Err():
		return err
	}
}

// Err reports a listener that stopped serving on its own.
func (a *App) Err() <-chan error { return a.server.Err() }

// ApplyProviders registers (creates or updates) the providers cfg
// declares. A client secret the file declared before is not applied again,
// so that a secret rotated through the API since is kept; a changed one is.
// It is run at start and on SIGHUP.
func (a *App) ApplyProviders(ctx context.Context, cfg Config) error {
	for _, pc := range cfg.Providers {
		p, secret, err := pc.provider(cfg.env())
		if err != nil {
			return fmt.Errorf("provider %q: %w", pc.Name, err)
		}
		if slices.Contains(broker.DiscoveryPresets, pc.Preset) {
			if err := a.broker.ApplyPreset(ctx, &p, pc.Preset, pc.BaseURL); err != nil {
				return fmt.Errorf("provider %q: %w", pc.Name, err)
			}
		}
		if _, err := a.broker.ApplyConfigProvider(ctx, p, secret); err != nil {
			return fmt.Errorf("register provider %q: %w", pc.Name, err)
		}
		a.log.Info("provider registered from config", zap.String("provider", p.Name))
	}
	return nil
}

// ReloadAuth applies a new auth section: static API keys, JWT issuers,
// policy and rate limits. It changes nothing when the section is invalid.
// Calls already authorized finish under the old policy; the issuers' keys
// are fetched again on first use.
func (a *App) ReloadAuth(auth AuthConfig) error {
	if errs := auth.validate(a.cfg.InsecureHTTPLoopback); len(errs) > 0 {
		return errors.Join(errs...)
	}
	pol, err := auth.policy()
	if err != nil {
		return err
	}
	jwts, err := auth.verifier(a.cfg.InsecureHTTPLoopback, a.log)
	if err != nil {
		return err
	}
	if err := a.keys.SetStatic(auth.staticKeys()); err != nil {
		return err
	}
	a.server.SetWorkloadVerifier(jwts)
	a.server.SetPolicy(pol)
	a.server.SetRateLimit(auth.RateLimit.limit())
	a.server.SetUnauthenticatedRateLimit(auth.UnauthenticatedRateLimit.limit())
	return nil
}

// Close drains in-flight calls for up to the shutdown timeout, then stops
// the broker, flushes the spans (for up to tracingShutdownTimeout; a
// failure is logged, not returned), and stops the etcd client and the
// embedded etcd, in that order.
func (a *App) Close() error {
	var errs []error
	if a.server != nil {
		ctx, cancel := context.WithTimeout(context.Background(), a.cfg.ShutdownTimeout)
		errs = append(errs, a.server.Shutdown(ctx))
		cancel()
	}
	if a.keys != nil {
		errs = append(errs, a.keys.Close())
	}
	if a.broker != nil {
		errs = append(errs, a.broker.Close())
	}
	if a.tracer != nil {
		ctx, cancel := context.WithTimeout(context.Background(), tracingShutdownTimeout)
		if err := a.tracer.Shutdown(ctx); err != nil {
			a.log.Warn("tracing: flush spans at shutdown", zap.Error(err))
		}
		cancel()
	}
	if a.client != nil {
		errs = append(errs, a.client.Close())
	}
	if a.etcd != nil {
		a.etcd.Close()
	}
	return errors.Join(errs...)
}

// loopbackIfUnspecified turns a wildcard listen address (":8080",
// "0.0.0.0:8080") into one a browser on this machine can open.
func loopbackIfUnspecified(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}
