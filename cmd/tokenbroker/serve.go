package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/tokenbroker/tokenbroker/app"
)

// serveFlags are the flags of serve: each overrides the file and the
// environment when given.
type serveFlags struct {
	config                                          string
	grpcAddr, httpAddr, metricsAddr, dataDir        string
	endpoints, logLevel                             string
	sessionTTL, minForced                           time.Duration
	shards                                          int
	insecureNoAuth, insecureMasterKey, insecureHTTP bool
}

func (c *cli) serveCommand() *cobra.Command {
	var f serveFlags
	cmd := &cobra.Command{
		Use:   "serve [--config FILE]",
		Short: "Run the broker (embedded etcd unless --etcd-endpoints is set)",
		Long: `Run the broker: the gRPC API, the REST gateway and the metrics listener, over an
embedded single-member etcd in --data-dir, or over an external etcd cluster with
--etcd-endpoints. The configuration is the file, then the TOKENBROKER_*
environment, then the flags. serve needs a master key (seal.key_file or
$TOKENBROKER_MASTER_KEY) and a way for callers to authenticate; 'tokenbroker
config validate FILE' checks a file without starting anything.

SIGHUP re-reads the file and applies its auth section and providers; SIGINT or
SIGTERM, at any moment, drains the calls in flight and stops.`,
		Args: noArgs,
		RunE: failing(func(cmd *cobra.Command, _ []string) error {
			return c.serve(cmd, f)
		}),
	}
	fs := cmd.Flags()
	fs.StringVar(&f.config, "config", "", "YAML config file ($TOKENBROKER_CONFIG)")
	fs.StringVar(&f.grpcAddr, "grpc-addr", "", "gRPC listen address (default :9090; $TOKENBROKER_GRPC_ADDR)")
	fs.StringVar(&f.httpAddr, "http-addr", "", "REST listen address (default :8080; $TOKENBROKER_HTTP_ADDR)")
	fs.StringVar(&f.metricsAddr, "metrics-addr", "", "listen address of /metrics and /openapi.json, served without credentials (default "+app.DefaultMetricsAddr+`; "" serves neither; $TOKENBROKER_METRICS_ADDR)`)
	fs.StringVar(&f.dataDir, "data-dir", "", "embedded etcd data directory (default tokenbroker-data; $TOKENBROKER_DATA_DIR)")
	fs.StringVar(&f.endpoints, "etcd-endpoints", "", "comma-separated endpoints of an external etcd; none starts an embedded one ($TOKENBROKER_ETCD_ENDPOINTS)")
	fs.StringVar(&f.logLevel, "log-level", "", "debug, info, warn or error ($TOKENBROKER_LOG_LEVEL)")
	fs.DurationVar(&f.sessionTTL, "refresher-session-ttl", 0, "lease of a replica's locks and refresh shards: a dead replica's work moves on after this long (default 10s, at least 2s)")
	fs.IntVar(&f.shards, "refresher-shards", 0, "refresh shards, each with its own leader election (default 1)")
	fs.DurationVar(&f.minForced, "min-forced-refresh-interval", 0, "at most one provider call per token key for forced refreshes in this interval, fleet-wide (default 5s; 0 turns it off)")
	fs.BoolVar(&f.insecureNoAuth, "insecure-no-auth", false, "INSECURE: run without any authentication configured; callers without credentials may do everything")
	fs.BoolVar(&f.insecureMasterKey, "insecure-generate-master-key", false, "INSECURE: run without a master key, sealing with a generated one that is lost at exit")
	fs.BoolVar(&f.insecureHTTP, "insecure-http-loopback", false, "INSECURE: allow providers with plain http endpoints on loopback addresses (development); https is required otherwise")
	return cmd
}

// loadServeConfig reads the configuration of serve: file, then environment,
// then the flags given on cmd, and validates it.
func (c *cli) loadServeConfig(cmd *cobra.Command, f serveFlags) (app.Config, error) {
	path := f.config
	if !cmd.Flags().Changed("config") {
		path = c.getenv("TOKENBROKER_CONFIG")
	}
	cfg, err := app.ReadConfig(path, c.getenv)
	if err != nil {
		return cfg, err
	}
	for dst, v := range map[*string]string{&cfg.GRPCAddr: f.grpcAddr, &cfg.HTTPAddr: f.httpAddr, &cfg.DataDir: f.dataDir, &cfg.Log.Level: f.logLevel} {
		if v != "" {
			*dst = v
		}
	}
	changed := cmd.Flags().Changed
	if f.endpoints != "" {
		cfg.Etcd.Endpoints = app.SplitList(f.endpoints)
	}
	if changed("metrics-addr") {
		cfg.MetricsAddr = f.metricsAddr
	}
	if changed("refresher-session-ttl") {
		cfg.Refresher.SessionTTL = f.sessionTTL
	}
	if changed("refresher-shards") {
		cfg.Refresher.Shards = f.shards
	}
	if changed("min-forced-refresh-interval") {
		cfg.MinForcedRefreshInterval = f.minForced
	}
	cfg.Getenv = c.getenv
	cfg.InsecureNoAuth, cfg.InsecureGenerateMasterKey = f.insecureNoAuth, f.insecureMasterKey
	cfg.InsecureHTTPLoopback = f.insecureHTTP
	if err := cfg.Validate(c.getenv); err != nil {
		return cfg, fmt.Errorf("invalid configuration:\n%w", err)
	}
	return cfg, nil
}

// serve runs the broker until the command's context ends (nil) or a
// listener fails.
func (c *cli) serve(cmd *cobra.Command, f serveFlags) error {
	ctx := cmd.Context()
	load := func() (app.Config, error) { return c.loadServeConfig(cmd, f) }
	cfg, err := load()
	if err != nil {
		return err
	}
	log, err := app.NewLogger(cfg.Log, c.stderr)
	if err != nil {
		return err
	}
	defer log.Sync() //nolint:errcheck // nothing to do about a failed flush
	for _, d := range cfg.Deprecations {
		log.Warn("config: " + d)
	}
	// Registered before the broker starts: a SIGHUP from then on reloads
	// instead of killing the process.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	inst, err := app.Start(ctx, cfg, log)
	if err != nil {
		if ctx.Err() != nil {
			log.Info("start-up interrupted")
			return nil
		}
		return err
	}
	err = serveUntilDone(ctx, inst, hup, load, log)
	log.Info("shutting down")
	err = errors.Join(err, inst.Close())
	if err == nil {
		log.Info("stopped")
	}
	return err
}

// serveUntilDone serves until ctx ends (nil) or a listener fails (its
// error). Each signal on reload re-reads the configuration and applies its
// auth section; a configuration that does not load is logged and the
// running one kept.
func serveUntilDone(ctx context.Context, inst *app.App, reload <-chan os.Signal, load func() (app.Config, error), log *zap.Logger) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-inst.Err():
			return err
		case <-reload:
			cfg, err := load()
			if err == nil {
				err = inst.ReloadAuth(cfg.Auth)
			}
			if err != nil {
				log.Error("reload failed; keeping the running auth configuration", zap.Error(err))
				continue
			}
			log.Info("auth configuration reloaded", zap.Int("api_keys", len(cfg.Auth.APIKeys)), zap.Int("policy_rules", len(cfg.Auth.Policy)))
			if err := inst.ApplyProviders(ctx, cfg); err != nil {
				log.Error("reload: applying providers failed", zap.Error(err))
			}
			if err := inst.ApplyWebhooks(ctx, cfg); err != nil {
				log.Error("reload: applying webhooks failed", zap.Error(err))
			}
		}
	}
}
