// Command tokenbroker runs the token broker.
//
//	tokenbroker serve [--config FILE] [flags]   run the broker; SIGHUP reloads the config's auth section
//	tokenbroker dev [flags]                     run it with a sandbox provider, for a first try
//	tokenbroker apikey new --identity NAME      print a new API key and its config snippet
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/tokenbroker/tokenbroker/app"
	"go.uber.org/zap"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv); err != nil {
		var code exitStatus
		switch {
		case errors.As(err, &code):
			os.Exit(int(code))
		case !errors.Is(err, flag.ErrHelp):
			fmt.Fprintln(os.Stderr, "tokenbroker:", err)
		}
		os.Exit(2)
	}
}

const usage = `usage: tokenbroker <command> [flags]

commands:
  serve       run the broker (embedded etcd unless --etcd-endpoints is set)
  dev         run the broker with a built-in sandbox OAuth2 provider, for a first try
  apikey new  print a new API key and the auth.api_keys entry that declares it

admin commands, over gRPC to a running broker ($TOKENBROKER_ADDR, $TOKENBROKER_API_KEY):
  provider    put|get|list|delete|rotate-secret providers
  account     put password and authorization-code accounts
  grant       list|revoke|authorize grants
  token       get|refresh|introspect access tokens
  apikeys     create|list|retire API keys
  events      list|watch grant lifecycle events
  webhooks    create|get|list|delete|deliveries|redeliver webhook subscriptions
  keys        generate a master key; reseal every record under the primary key
  config      validate FILE: report every problem of a config file at once

Run 'tokenbroker <command> -h' for the command's flags.
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command given")
	}
	switch args[0] {
	case "serve":
		return runServe(ctx, args[1:], stderr, getenv)
	case "dev":
		return runDev(ctx, args[1:], stdout, stderr)
	case "apikey":
		return runAPIKey(args[1:], stdout, stderr)
	case "provider", "account", "grant", "token", "apikeys", "events", "webhooks":
		return runCLI(ctx, args, stdout, stderr, getenv)
	case "keys":
		return runKeys(ctx, args[1:], stdout, stderr, getenv)
	case "config":
		return runConfig(args[1:], stdout, stderr, getenv)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}

func runServe(ctx context.Context, args []string, stderr io.Writer, getenv func(string) string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", getenv("TOKENBROKER_CONFIG"), "YAML config file ($TOKENBROKER_CONFIG)")
	grpcAddr := fs.String("grpc-addr", "", "gRPC listen address (default :9090; $TOKENBROKER_GRPC_ADDR)")
	httpAddr := fs.String("http-addr", "", "REST listen address (default :8080; $TOKENBROKER_HTTP_ADDR)")
	metricsAddr := fs.String("metrics-addr", "", "listen address of /metrics and /openapi.json, served without credentials (default "+app.DefaultMetricsAddr+`; "" serves neither; $TOKENBROKER_METRICS_ADDR)`)
	dataDir := fs.String("data-dir", "", "embedded etcd data directory (default tokenbroker-data; $TOKENBROKER_DATA_DIR)")
	endpoints := fs.String("etcd-endpoints", "", "comma-separated endpoints of an external etcd; none starts an embedded one ($TOKENBROKER_ETCD_ENDPOINTS)")
	logLevel := fs.String("log-level", "", "debug, info, warn or error ($TOKENBROKER_LOG_LEVEL)")
	sessionTTL := fs.Duration("refresher-session-ttl", 0, "lease of a replica's locks and refresh shards: a dead replica's work moves on after this long (default 10s, at least 2s)")
	shards := fs.Int("refresher-shards", 0, "refresh shards, each with its own leader election (default 1)")
	minForced := fs.Duration("min-forced-refresh-interval", -1, "at most one provider call per token key for forced refreshes in this interval, fleet-wide (default 5s; 0 turns it off)")
	insecureNoAuth := fs.Bool("insecure-no-auth", false, "INSECURE: run without any authentication configured; callers without credentials may do everything")
	insecureMasterKey := fs.Bool("insecure-generate-master-key", false, "INSECURE: run without a master key, sealing with a generated one that is lost at exit")
	insecureHTTP := fs.Bool("insecure-http-loopback", false, "INSECURE: allow providers with plain http endpoints on loopback addresses (development); https is required otherwise")
	if err := fs.Parse(args); err != nil {
		return err
	}
	// load reads the configuration: file, then environment, then flags.
	load := func() (app.Config, error) {
		cfg, err := app.ReadConfig(*configPath, getenv)
		if err != nil {
			return cfg, err
		}
		for dst, v := range map[*string]string{&cfg.GRPCAddr: *grpcAddr, &cfg.HTTPAddr: *httpAddr, &cfg.DataDir: *dataDir, &cfg.Log.Level: *logLevel} {
			if v != "" {
				*dst = v
			}
		}
		if *endpoints != "" {
			cfg.Etcd.Endpoints = app.SplitList(*endpoints)
		}
		if flagSet(fs, "metrics-addr") {
			cfg.MetricsAddr = *metricsAddr
		}
		if *sessionTTL != 0 {
			cfg.Refresher.SessionTTL = *sessionTTL
		}
		if *shards != 0 {
			cfg.Refresher.Shards = *shards
		}
		if *minForced >= 0 {
			cfg.MinForcedRefreshInterval = *minForced
		}
		cfg.Getenv = getenv
		cfg.InsecureNoAuth, cfg.InsecureGenerateMasterKey = *insecureNoAuth, *insecureMasterKey
		cfg.InsecureHTTPLoopback = *insecureHTTP
		if err := cfg.Validate(getenv); err != nil {
			return cfg, fmt.Errorf("invalid configuration:\n%w", err)
		}
		return cfg, nil
	}
	cfg, err := load()
	if err != nil {
		return err
	}
	log, err := app.NewLogger(cfg.Log, stderr)
	if err != nil {
		return err
	}
	defer log.Sync() //nolint:errcheck // nothing to do about a failed flush
	// Registered before the inst starts: a SIGHUP from then on reloads
	// instead of killing the process.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	inst, err := app.Start(ctx, cfg, log)
	if err != nil {
		return err
	}
	err = serveUntilDone(ctx, inst, hup, load, log)
	log.Info("shutting down")
	return errors.Join(err, inst.Close())
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

// flagSet reports whether the command line set flag name, so that an empty
// value can mean "off" rather than "not given".
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}
