// Command tokenbroker runs the token broker.
//
//	tokenbroker serve [--config FILE] [flags]   run the broker
//	tokenbroker dev [flags]                     run it with a sandbox provider, for a first try
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

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "tokenbroker:", err)
		}
		os.Exit(2)
	}
}

const usage = `usage: tokenbroker <command> [flags]

commands:
  serve   run the broker (embedded etcd unless --etcd-endpoints is set)
  dev     run the broker with a built-in sandbox OAuth2 provider, for a first try

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
	dataDir := fs.String("data-dir", "", "embedded etcd data directory (default tokenbroker-data; $TOKENBROKER_DATA_DIR)")
	endpoints := fs.String("etcd-endpoints", "", "comma-separated endpoints of an external etcd; none starts an embedded one ($TOKENBROKER_ETCD_ENDPOINTS)")
	logLevel := fs.String("log-level", "", "debug, info, warn or error ($TOKENBROKER_LOG_LEVEL)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg := defaultConfig()
	if *configPath != "" {
		f, err := os.Open(*configPath)
		if err != nil {
			return err
		}
		err = decodeConfig(f, &cfg)
		f.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", *configPath, err)
		}
	}
	applyEnv(&cfg, getenv)
	for dst, v := range map[*string]string{&cfg.GRPCAddr: *grpcAddr, &cfg.HTTPAddr: *httpAddr, &cfg.DataDir: *dataDir, &cfg.Log.Level: *logLevel} {
		if v != "" {
			*dst = v
		}
	}
	if *endpoints != "" {
		cfg.Etcd.Endpoints = splitList(*endpoints)
	}
	cfg.getenv = getenv
	if err := cfg.Validate(getenv); err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
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
	err = app.Wait(ctx)
	log.Info("shutting down")
	return errors.Join(err, app.Close())
}

func newLogger(cfg LogConfig, w io.Writer) (*zap.Logger, error) {
	level, err := zapcore.ParseLevel(cfg.Level)
	if err != nil {
		return nil, err
	}
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	var enc zapcore.Encoder
	if cfg.Format == "console" {
		encCfg.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(encCfg)
	} else {
		enc = zapcore.NewJSONEncoder(encCfg)
	}
	return zap.New(zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(w)), level), zap.ErrorOutput(zapcore.AddSync(w))), nil
}
