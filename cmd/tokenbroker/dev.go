package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

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

func (c *cli) devCommand() *cobra.Command {
	var f devFlags
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run the broker with a built-in sandbox OAuth2 provider, for a first try",
		Long: `Run the broker on loopback with an embedded etcd in a temporary directory, a
built-in sandbox OAuth2 provider registered as "sandbox" (every grant: client
credentials, password, authorization code with PKCE, rotating refresh tokens),
a throwaway master key and a dev API key allowed everything. It prints the
commands to try, in the order to run them, starting with the export of
TOKENBROKER_ADDR and TOKENBROKER_API_KEY. Ctrl-C stops it and deletes the data
directory.

The dev API key is new on every start unless --dev-api-key (or
$TOKENBROKER_DEV_API_KEY) gives one, e.g. the one a previous run printed, so
that the exported key keeps working across restarts. Never use dev for
anything but trying the broker out.`,
		Args: noArgs,
		RunE: failing(func(cmd *cobra.Command, _ []string) error {
			if !cmd.Flags().Changed("dev-api-key") {
				f.apiKey = c.getenv("TOKENBROKER_DEV_API_KEY")
			}
			return c.runDev(cmd.Context(), f)
		}),
	}
	fs := cmd.Flags()
	fs.StringVar(&f.grpcAddr, "grpc-addr", "127.0.0.1:9090", "gRPC listen address (port 0 picks one)")
	fs.StringVar(&f.httpAddr, "http-addr", "127.0.0.1:8080", "REST listen address (port 0 picks one)")
	fs.StringVar(&f.metricsAddr, "metrics-addr", app.DefaultMetricsAddr, "listen address of /metrics and /openapi.json (port 0 picks one)")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&f.apiKey, "dev-api-key", "", "the dev API key to accept, tbk_…, instead of a new one: keeps an exported key valid across restarts ($TOKENBROKER_DEV_API_KEY)")
	return cmd
}

// devFlags are the flags of dev.
type devFlags struct {
	grpcAddr, httpAddr, metricsAddr, logLevel string
	apiKey                                    string
}

// devAPIKey is the key given, or a new one.
func devAPIKey(given string) (id, key, sum string, err error) {
	if given == "" {
		return apikey.Generate()
	}
	id, sum, err = apikey.Parse(given)
	if err != nil {
		return "", "", "", fmt.Errorf("--dev-api-key: %w", err)
	}
	return id, given, sum, nil
}

func (c *cli) runDev(ctx context.Context, f devFlags) (err error) {
	keyID, key, keySHA256, err := devAPIKey(f.apiKey)
	if err != nil {
		return err
	}
	dataDir, err := os.MkdirTemp("", "tokenbroker-dev-")
	if err != nil {
		return err
	}
	defer func() {
		if rmErr := os.RemoveAll(dataDir); rmErr != nil {
			err = errors.Join(err, rmErr)
		} else if err == nil {
			fmt.Fprintf(c.stdout, "\ntokenbroker dev stopped; its data directory %s is deleted.\n", dataDir)
		}
	}()

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

	// A throwaway master key: the data directory goes away with it.
	master, err := seal.GenerateKey("dev")
	if err != nil {
		return err
	}
	keyring, err := seal.NewKeyring(master)
	clear(master.Secret)
	if err != nil {
		return err
	}

	cfg := devConfig(dataDir, env.baseURL(), clientID, base64.RawURLEncoding.EncodeToString(secret), keyID, keySHA256)
	cfg.GRPCAddr, cfg.HTTPAddr, cfg.MetricsAddr, cfg.Log.Level = f.grpcAddr, f.httpAddr, f.metricsAddr, f.logLevel
	cfg.Keyring = keyring
	cfg.InsecureHTTPLoopback = true // the sandbox is plain http on loopback
	if err := cfg.Validate(os.Getenv); err != nil {
		return err
	}
	log, err := app.NewLogger(cfg.Log, c.stderr)
	if err != nil {
		return err
	}
	defer log.Sync() //nolint:errcheck // nothing to do about a failed flush
	inst, err := app.Start(ctx, cfg, log)
	if err != nil {
		if ctx.Err() != nil {
			return nil // interrupted while starting
		}
		return err
	}
	if err := env.setProvider(clientID, base64.RawURLEncoding.EncodeToString(secret), inst.CallbackURL()); err != nil {
		return errors.Join(err, inst.Close())
	}
	printDevBanner(c.stdout, devBanner{
		dataDir: dataDir, sandboxURL: env.baseURL(), httpAddr: inst.HTTPAddr(), grpcAddr: inst.GRPCAddr(),
		metricsAddr: inst.MetricsAddr(), key: key, keyGiven: f.apiKey != "", cli: cliName(),
	})
	err = inst.Wait(ctx)
	fmt.Fprintln(c.stdout, "\ntokenbroker dev: stopping (draining calls in flight)")
	return errors.Join(err, inst.Close())
}

// devBanner is what `tokenbroker dev` tells a newcomer.
type devBanner struct {
	dataDir, sandboxURL, httpAddr, grpcAddr, metricsAddr string
	key                                                  string
	keyGiven                                             bool
	cli                                                  string // how to call this binary from a shell
}

// devSteps opens and closes the commands of the banner, which work when
// run in their order.
const (
	devStepsBegin = "In another terminal, run these in order (copy them as they are):"
	devStepsEnd   = "Ctrl-C stops the broker and deletes the data directory."
)

func printDevBanner(w io.Writer, b devBanner) {
	lasts := "it lasts as long as this run; --dev-api-key " + b.key + " keeps it across restarts"
	if b.keyGiven {
		lasts = "given with --dev-api-key: it stays the same across restarts"
	}
	metrics := "none"
	if b.metricsAddr != "" {
		metrics = "http://" + b.metricsAddr + "/metrics   OpenAPI: http://" + b.metricsAddr + "/openapi.json"
	}
	fmt.Fprintf(w, `tokenbroker dev is running: embedded etcd in %[1]s, sandbox OAuth2 provider at %[2]s
  REST: http://%[3]s   gRPC: %[4]s   Metrics: %[5]s

Your dev API key (identity %[6]q, allowed everything, admin included; %[7]s):
  %[8]s

%[9]s

  export TOKENBROKER_ADDR=%[4]s TOKENBROKER_API_KEY=%[8]s

  # A token from the sandbox provider (client credentials), over gRPC with the CLI and over REST:
  %[10]s token get sandbox
  curl -s -X POST -H "Authorization: Bearer $TOKENBROKER_API_KEY" http://%[3]s/v1/providers/sandbox/token

  # A password account (user %[11]s, password %[12]s) and its token:
  printf %%s %[12]s | %[10]s account put sandbox alice-pw --grant password --username %[11]s --password-stdin
  %[10]s token get sandbox --account alice-pw

  # A consent (authorization code with PKCE): open $URL in a browser and sign in as %[11]s / %[12]s,
  # or let curl sign in for you; the broker's callback page confirms. Refresh tokens rotate.
  URL=$(%[10]s grant authorize sandbox alice)
  curl -s -L -u %[11]s:%[12]s "$URL"
  %[10]s token get sandbox --account alice
  %[10]s grant list

%[13]s
`, b.dataDir, b.sandboxURL, b.httpAddr, b.grpcAddr, metrics, devIdentity, lasts, b.key, devStepsBegin, b.cli, devUser, devPassword, devStepsEnd)
}

// cliName is how a shell reaches the running binary: "tokenbroker" when
// that is the one on $PATH, else its absolute path (`go run` builds it in a
// temporary directory, which lives as long as the command).
func cliName() string {
	exe, err := os.Executable()
	if err != nil {
		return "tokenbroker"
	}
	if onPath, err := exec.LookPath("tokenbroker"); err == nil {
		a, errA := os.Stat(onPath)
		b, errB := os.Stat(exe)
		if errA == nil && errB == nil && os.SameFile(a, b) {
			return "tokenbroker"
		}
	}
	return shellQuote(exe)
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
