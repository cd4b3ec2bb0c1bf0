package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tokenbroker/tokenbroker/app"
	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/seal"
	"github.com/tokenbroker/tokenbroker/broker/seal/pkcs11"
	"github.com/tokenbroker/tokenbroker/internal/embedetcd"
)

func (c *cli) keysCommand() *cobra.Command {
	return group("keys", "Generate master keys and re-seal the store under the primary one",
		`The master keys seal every secret and token before they reach etcd. Rotating
the master key:
  1. 'tokenbroker keys generate --id k2' prints the new key. Make it the FIRST
     line of the key file (seal.key_file, or $TOKENBROKER_MASTER_KEY) and keep
     the old key on the lines after it.
  2. Restart every broker: they seal with the new key and still open what
     the old one sealed.
  3. 'tokenbroker keys reseal --config FILE' re-seals every record under the
     new key. With the embedded etcd (no etcd.endpoints), stop the broker
     first: etcd locks its data directory. With an external etcd it may run
     while the brokers serve.
  4. When reseal reports 0 failed, remove the old key from the key file and
     restart the brokers.`,
		c.keysGenerateCommand(), c.keysCreateKEKCommand(), c.keysResealCommand())
}

// configFlag adds --config to cmd and returns the path it names: with
// fromEnv, $TOKENBROKER_CONFIG when the flag is not given.
func (c *cli) configFlag(cmd *cobra.Command, usage string, fromEnv bool) func() string {
	var path string
	cmd.Flags().StringVar(&path, "config", "", usage)
	return func() string {
		if fromEnv && !cmd.Flags().Changed("config") {
			return c.getenv("TOKENBROKER_CONFIG")
		}
		return path
	}
}

func (c *cli) keysGenerateCommand() *cobra.Command {
	var id string
	cmd := &cobra.Command{
		Use:   "generate --id ID [--config FILE]",
		Short: "Print a new master key as a key-file line",
		Long: `Print a new master key as a key-file line, "<id>:<base64 of 32 random bytes>",
alone on stdout, so that it can be redirected into a file. With seal.pkcs11 in
the config file, the key is printed wrapped by the token's key-encryption key.`,
		Args: noArgs,
	}
	cmd.Flags().StringVar(&id, "id", "", "the new key's id: 1–16 characters of [a-z0-9-], unlike every key in the key file (required)")
	configPath := c.configFlag(cmd, "config file: with seal.pkcs11 set, the key is printed wrapped by the token's key", false)
	cmd.RunE = failing(func(*cobra.Command, []string) error { return c.keysGenerate(id, configPath()) })
	return cmd
}

func (c *cli) keysCreateKEKCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "create-kek --config FILE",
		Short: "Create the key-encryption key in the PKCS#11 token seal.pkcs11 names",
		Long: `Create the AES-256 key-encryption key in the PKCS#11 token that the config
file's seal.pkcs11 section names (binaries built with -tags pkcs11). Then
'tokenbroker keys generate --id k1 --config FILE' prints master keys wrapped by it.`,
		Args: noArgs,
	}
	configPath := c.configFlag(cmd, "config file with seal.pkcs11 ($TOKENBROKER_CONFIG)", true)
	cmd.RunE = failing(func(*cobra.Command, []string) error { return c.keysCreateKEK(configPath()) })
	return cmd
}

func (c *cli) keysResealCommand() *cobra.Command {
	var o resealOptions
	cmd := &cobra.Command{
		Use:   "reseal [--config FILE]",
		Short: "Re-seal every stored secret and token under the primary master key",
		Long: `Re-seal every stored secret and token under the primary master key (the first
of the key file) and print how many records were scanned, re-sealed and failed.
With the embedded etcd, stop the broker first: it holds the data directory.
It exits non-zero when any record is left under an older key.`,
		Args: noArgs,
	}
	configPath := c.configFlag(cmd, "YAML config file of the brokers ($TOKENBROKER_CONFIG)", true)
	cmd.Flags().StringVar(&o.dataDir, "data-dir", "", "embedded etcd data directory (default tokenbroker-data; $TOKENBROKER_DATA_DIR)")
	cmd.Flags().StringVar(&o.endpoints, "etcd-endpoints", "", "comma-separated endpoints of an external etcd ($TOKENBROKER_ETCD_ENDPOINTS)")
	cmd.Flags().BoolVar(&o.signUntagged, "sign-untagged", false, "also tag providers, grants, pending authorizations and API keys stored by a version that did not tag records, "+
		"trusting what they hold: once, after such an upgrade, while no one else can write to etcd")
	cmd.RunE = failing(func(cmd *cobra.Command, _ []string) error {
		o.config = configPath()
		return c.keysReseal(cmd.Context(), o)
	})
	return cmd
}

// resealOptions are the flags of keys reseal.
type resealOptions struct {
	config, dataDir, endpoints string
	signUntagged               bool
}

// keysGenerate prints a new master key on stdout, alone, so that it can
// be redirected into a file; the advice on where it goes is on stderr.
func (c *cli) keysGenerate(id, configPath string) error {
	stdout, stderr, getenv := c.stdout, c.stderr, c.getenv
	k, err := seal.GenerateKey(id)
	if err != nil {
		return fmt.Errorf("keys generate: --id: %w", err)
	}
	defer clear(k.Secret)
	line := seal.FormatKey(k)
	if configPath != "" {
		cfg, err := app.ReadConfig(configPath, getenv)
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

// keysReseal re-seals the store the configuration names with its master
// keyring and prints the counts. It fails when any record is left under an
// older key.
func (c *cli) keysReseal(ctx context.Context, o resealOptions) error {
	stdout, stderr, getenv := c.stdout, c.stderr, c.getenv
	cfg, err := app.ReadConfig(o.config, getenv)
	if err != nil {
		return fmt.Errorf("keys reseal: %w", err)
	}
	if o.dataDir != "" {
		cfg.DataDir = o.dataDir
	}
	if o.endpoints != "" {
		cfg.Etcd.Endpoints = app.SplitList(o.endpoints)
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
	if o.signUntagged {
		opts = append(opts, broker.SignUntagged())
	}
	stats, err := broker.Reseal(ctx, cli, cfg.Etcd.Prefix, keyring, opts...)
	fmt.Fprintf(stdout, "%d records with sealed values scanned, %d re-sealed, %d failed\n", stats.Scanned, stats.Resealed, stats.Failed)
	if o.signUntagged {
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

// keysCreateKEK creates the key-encryption key in the PKCS#11 token the
// configuration names.
func (c *cli) keysCreateKEK(configPath string) error {
	stdout, getenv := c.stdout, c.getenv
	cfg, err := app.ReadConfig(configPath, getenv)
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
