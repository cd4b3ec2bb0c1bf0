package main

import (
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tokenbroker/tokenbroker/app"
	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/seal"
	"github.com/tokenbroker/tokenbroker/broker/seal/pkcs11"
	"github.com/tokenbroker/tokenbroker/internal/embedetcd"
)

const keysUsage = `usage: tokenbroker keys <subcommand> [flags]

subcommands:
  generate --id ID [--config FILE]
                          print a new master key as a key-file line, "<id>:<base64>";
                          with seal.pkcs11 in FILE, the key wrapped by the token's key
  create-kek --config FILE
                          create the key-encryption key in the PKCS#11 token seal.pkcs11 names
  reseal [--config FILE]  re-seal every stored secret and token under the primary master key

Rotating the master key:
  1. tokenbroker keys generate --id k2 prints the new key. Make it the FIRST
     line of the key file (seal.key_file, or $TOKENBROKER_MASTER_KEY) and keep
     the old key on the lines after it.
  2. Restart every broker: they seal with the new key and still open what
     the old one sealed.
  3. tokenbroker keys reseal --config FILE re-seals every record under the
     new key. With the embedded etcd (no etcd.endpoints), stop the broker
     first: etcd locks its data directory. With an external etcd it may run
     while the brokers serve.
  4. When reseal reports 0 failed, remove the old key from the key file and
     restart the brokers.
`

// runKeys runs `tokenbroker keys`.
func runKeys(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, keysUsage)
		return errors.New("keys: no subcommand given")
	}
	switch args[0] {
	case "generate":
		return runKeysGenerate(args[1:], stdout, stderr, getenv)
	case "create-kek":
		return runKeysCreateKEK(args[1:], stdout, stderr, getenv)
	case "reseal":
		return runKeysReseal(ctx, args[1:], stdout, stderr, getenv)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, keysUsage)
		return nil
	}
	fmt.Fprint(stderr, keysUsage)
	return fmt.Errorf("keys: unknown subcommand %q", args[0])
}

// runKeysGenerate prints a new master key on stdout, alone, so that it can
// be redirected into a file; the advice on where it goes is on stderr.
func runKeysGenerate(args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	fs := flag.NewFlagSet("keys generate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	id := fs.String("id", "", "the new key's id: 1–16 characters of [a-z0-9-], unlike every key in the key file (required)")
	configPath := fs.String("config", "", "config file: with seal.pkcs11 set, the key is printed wrapped by the token's key")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("keys generate: unexpected argument %q", fs.Arg(0))
	}
	k, err := seal.GenerateKey(*id)
	if err != nil {
		return fmt.Errorf("keys generate: --id: %w", err)
	}
	defer clear(k.Secret)
	line := seal.FormatKey(k)
	if *configPath != "" {
		cfg, err := app.ReadConfig(*configPath, getenv)
		if err != nil {
			return fmt.Errorf("keys generate: %w", err)
		}
		if cfg.Seal.PKCS11 != nil {
			if line, err = wrapKey(cfg, getenv, k); err != nil {
				return fmt.Errorf("keys generate: %w", err)
			}
		}
	}
	if _, err := fmt.Fprintln(stdout, line); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "# New master key %q. To rotate, make it the first line of the key file, keep the old keys after it,\n"+
		"# restart the brokers, run `tokenbroker keys reseal`, then drop the old keys.\n", k.ID)
	return nil
}

// embeddedStartTimeout bounds the start of the embedded etcd: etcd waits for
// its data directory's lock forever.
const embeddedStartTimeout = 20 * time.Second

// runKeysReseal re-seals the store the configuration names with its master
// keyring and prints the counts. It fails when any record is left under an
// older key.
func runKeysReseal(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	fs := flag.NewFlagSet("keys reseal", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", getenv("TOKENBROKER_CONFIG"), "YAML config file of the brokers ($TOKENBROKER_CONFIG)")
	dataDir := fs.String("data-dir", "", "embedded etcd data directory (default tokenbroker-data; $TOKENBROKER_DATA_DIR)")
	endpoints := fs.String("etcd-endpoints", "", "comma-separated endpoints of an external etcd ($TOKENBROKER_ETCD_ENDPOINTS)")
	signUntagged := fs.Bool("sign-untagged", false, "also tag providers, grants, pending authorizations and API keys stored by a version that did not tag records, "+
		"trusting what they hold: once, after such an upgrade, while no one else can write to etcd")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("keys reseal: unexpected argument %q", fs.Arg(0))
	}
	cfg, err := app.ReadConfig(*configPath, getenv)
	if err != nil {
		return fmt.Errorf("keys reseal: %w", err)
	}
	if *dataDir != "" {
		cfg.DataDir = *dataDir
	}
	if *endpoints != "" {
		cfg.Etcd.Endpoints = app.SplitList(*endpoints)
	}
	cfg.Getenv = getenv
	if err := cfg.ValidateForReseal(); err != nil {
		return fmt.Errorf("keys reseal: %w", err)
	}
	log, err := app.NewLogger(cfg.Log, stderr)
	if err != nil {
		return fmt.Errorf("keys reseal: %w", err)
	}
	defer log.Sync() //nolint:errcheck // nothing to do about a failed flush
	keyring, err := cfg.MasterKeyring(log)
	if err != nil {
		return fmt.Errorf("keys reseal: %w", err)
	}

	cli, closeStore, err := openStore(ctx, cfg, log)
	if err != nil {
		return fmt.Errorf("keys reseal: %w", err)
	}
	defer closeStore()
	fmt.Fprintf(stdout, "re-sealing %s under key %q (keyring: %s)\n", cfg.Etcd.Prefix, keyring.PrimaryID(), strings.Join(keyring.IDs(), ", "))
	var opts []broker.ResealOption
	if *signUntagged {
		opts = append(opts, broker.SignUntagged())
	}
	stats, err := broker.Reseal(ctx, cli, cfg.Etcd.Prefix, keyring, opts...)
	fmt.Fprintf(stdout, "%d records with sealed values scanned, %d re-sealed, %d failed\n", stats.Scanned, stats.Resealed, stats.Failed)
	if *signUntagged {
		fmt.Fprintf(stdout, "%d untagged records tagged\n", stats.Signed)
	}
	for _, f := range stats.Failures {
		fmt.Fprintf(stderr, "failed: %v\n", f)
	}
	if err != nil {
		return fmt.Errorf("keys reseal: %w; keep the old keys in the key file", err)
	}
	if older := keyring.IDs()[1:]; len(older) > 0 {
		fmt.Fprintf(stdout, "no record needs %s any more: drop it from the key file and restart the brokers\n", strings.Join(older, ", "))
	}
	return nil
}

// openStore connects to the configuration's etcd: the external cluster, or
// the embedded member in the data directory, which must exist already.
func openStore(ctx context.Context, cfg app.Config, log *zap.Logger) (*clientv3.Client, func(), error) {
	endpoints := cfg.Etcd.Endpoints
	var srv *embedetcd.Server
	if len(endpoints) == 0 {
		if _, err := os.Stat(filepath.Join(cfg.DataDir, "member")); err != nil {
			return nil, nil, fmt.Errorf("data dir %s holds no etcd data (%v); set --data-dir or etcd.endpoints to the brokers' store", cfg.DataDir, err)
		}
		var err error
		if srv, err = startEmbedded(ctx, cfg.DataDir, log); err != nil {
			return nil, nil, err
		}
		endpoints = []string{srv.Endpoint()}
	}
	ccfg, err := app.EtcdClientConfig(cfg.Etcd, endpoints, log)
	if err != nil {
		if srv != nil {
			srv.Close()
		}
		return nil, nil, err
	}
	cli, err := clientv3.New(ccfg)
	if err != nil {
		if srv != nil {
			srv.Close()
		}
		return nil, nil, fmt.Errorf("etcd client: %w", err)
	}
	return cli, func() {
		cli.Close()
		if srv != nil {
			srv.Close()
		}
	}, nil
}

// startEmbedded starts the embedded etcd in dir. A running broker that holds
// the data directory is reported at once (embedetcd.ErrInUse); should etcd
// still block on the directory's lock, startEmbedded gives up after
// embeddedStartTimeout. A member that starts after the give-up is closed at
// once.
func startEmbedded(ctx context.Context, dir string, log *zap.Logger) (*embedetcd.Server, error) {
	type started struct {
		srv *embedetcd.Server
		err error
	}
	ch := make(chan started) // unbuffered: after the give-up, nobody takes a late start
	abandon := make(chan struct{})
	go func() {
		srv, err := embedetcd.Start(ctx, embedetcd.Config{Dir: dir, Logger: log.Named("etcd").WithOptions(zap.IncreaseLevel(zap.ErrorLevel))})
		select {
		case ch <- started{srv, err}:
		case <-abandon:
			if srv != nil {
				srv.Close()
			}
		}
	}()
	timer := time.NewTimer(embeddedStartTimeout)
	defer timer.Stop()
	select {
	case s := <-ch:
		if errors.Is(s.err, embedetcd.ErrInUse) {
			return nil, fmt.Errorf("the embedded etcd in %s: a running broker holds its data directory; "+
				"stop it and run keys reseal again (or point etcd.endpoints at an external etcd)", dir)
		}
		return s.srv, s.err
	case <-timer.C:
	case <-ctx.Done():
	}
	close(abandon)
	// The start may have completed meanwhile.
	select {
	case s := <-ch:
		if s.srv != nil {
			s.srv.Close()
		}
	default:
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return nil, fmt.Errorf("the embedded etcd in %s did not start within %s: a running broker holds its data directory; "+
		"stop it and run keys reseal again (or point etcd.endpoints at an external etcd)", dir, embeddedStartTimeout)
}

// wrapKey returns k's key-file line with its secret wrapped by the KEK of
// the token cfg names.
func wrapKey(cfg app.Config, getenv func(string) string, k seal.Key) (string, error) {
	pc, err := cfg.Seal.PKCS11.Config(getenv)
	if err != nil {
		return "", err
	}
	h, err := pkcs11.Open(pc)
	if err != nil {
		return "", err
	}
	defer h.Close()
	wrapped, err := h.Wrap(k.ID, k.Secret)
	if err != nil {
		return "", err
	}
	return k.ID + ":" + base64.StdEncoding.EncodeToString(wrapped), nil
}

// runKeysCreateKEK creates the key-encryption key in the PKCS#11 token the
// configuration names.
func runKeysCreateKEK(args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	fs := flag.NewFlagSet("keys create-kek", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", getenv("TOKENBROKER_CONFIG"), "config file with seal.pkcs11 ($TOKENBROKER_CONFIG)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("keys create-kek: unexpected argument %q", fs.Arg(0))
	}
	cfg, err := app.ReadConfig(*configPath, getenv)
	if err != nil {
		return fmt.Errorf("keys create-kek: %w", err)
	}
	if cfg.Seal.PKCS11 == nil {
		return errors.New("keys create-kek: the configuration has no seal.pkcs11 section")
	}
	pc, err := cfg.Seal.PKCS11.Config(getenv)
	if err != nil {
		return fmt.Errorf("keys create-kek: %w", err)
	}
	if err := pkcs11.CreateKEK(pc); err != nil {
		return fmt.Errorf("keys create-kek: %w", err)
	}
	fmt.Fprintf(stdout, "created AES-256 key %q in token %q; now `tokenbroker keys generate --id k1 --config FILE` prints a wrapped master key\n", pc.KeyLabel, pc.TokenLabel)
	return nil
}
