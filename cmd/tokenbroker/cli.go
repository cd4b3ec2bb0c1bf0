package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// Exit codes of the admin commands. Scripts rely on them: keep them stable.
const (
	exitOK          = 0
	exitFailure     = 1 // anything not below
	exitUsage       = 2 // bad flag or argument; a request the broker found invalid
	exitNotFound    = 3 // NotFound
	exitDenied      = 4 // Unauthenticated, PermissionDenied
	exitRefused     = 5 // FailedPrecondition: the provider refused, reauthorization required
	exitUnavailable = 6 // Unavailable, DeadlineExceeded, ResourceExhausted
)

// cliHelpFooter ends every admin command's help.
const cliHelpFooter = `
Environment:
  TOKENBROKER_ADDR       the broker's gRPC address (--addr)
  TOKENBROKER_API_KEY    the API key sent as "authorization: Bearer <key>"; --api-key-env names another variable.
                         A key is never accepted as a flag: it would show in shell history and ps.
  TOKENBROKER_TLS        "true" to use TLS with the system's roots (--tls)
  TOKENBROKER_CA_FILE    PEM file of the CAs that sign the broker's certificate (--ca-file; implies TLS)
  TOKENBROKER_CERT_FILE  client certificate for mutual TLS (--cert-file; implies TLS)
  TOKENBROKER_KEY_FILE   client certificate's key (--key-file)

Exit codes:
  0  success
  1  any other error
  2  usage error: a bad flag or argument, or a request the broker found invalid (InvalidArgument)
  3  not found: no such provider, account or API key (NotFound)
  4  not allowed: missing or invalid credentials, or no permission (Unauthenticated, PermissionDenied)
  5  refused: the provider refused the broker's credentials or grant, or the grant
     needs reauthorization (FailedPrecondition)
  6  unavailable: the broker or the provider cannot be reached in time, or rate-limits;
     trying again later may work (Unavailable, DeadlineExceeded, ResourceExhausted)
Errors are one line on stderr: "tokenbroker: <message>".
`

// runCLI runs the admin commands (provider, account, grant, token,
// apikeys) against a running broker over gRPC, reading secrets from
// os.Stdin. It returns nil on success; on failure it prints the error and
// exits the process with the command's exit code, because main's error
// path knows only exit code 2 and scripts tell failures apart by the code.
// runAdminCLI is the same without the exit, for callers that must go on.
func runCLI(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	if code := runAdminCLI(ctx, args, os.Stdin, stdout, stderr, getenv); code != exitOK {
		return exitStatus(code) // the message is on stderr already
	}
	return nil
}

// exitStatus is an error that carries the process's exit code and whose
// message was printed already.
type exitStatus int

func (c exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(c)) }

// runAdminCLI runs one admin command, args[0] being the command group
// ("provider", ...), and returns its exit code. Errors are printed to
// stderr as one line; output goes to stdout. Cancelling ctx cancels the
// call in flight (exit code 1).
func runAdminCLI(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	c := &cli{stdin: stdin, stdout: stdout, stderr: stderr, getenv: getenv}
	defer c.close()
	root := c.rootCommand()
	root.SetArgs(append([]string{}, args...))
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	var ee *exitError
	if !errors.As(err, &ee) {
		// cobra's own errors: unknown flag or command, wrong number of
		// arguments, a required flag missing.
		ee = &exitError{code: exitUsage, err: err}
	}
	msg := ee.Error()
	if ee.code == exitUsage && cmd != nil {
		msg += fmt.Sprintf(" (see '%s --help')", cmd.CommandPath())
	}
	fmt.Fprintln(stderr, "tokenbroker:", oneLine(msg))
	return ee.code
}

// exitError is an error with the exit code it ends the command with.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usageErrorf is an error in how the command was called: exit code 2.
func usageErrorf(format string, args ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, args...)}
}

// exitCode maps a gRPC status code to the command's exit code.
func exitCode(code codes.Code) int {
	switch code {
	case codes.OK:
		return exitOK
	case codes.InvalidArgument:
		return exitUsage
	case codes.NotFound:
		return exitNotFound
	case codes.Unauthenticated, codes.PermissionDenied:
		return exitDenied
	case codes.FailedPrecondition:
		return exitRefused
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted:
		return exitUnavailable
	}
	return exitFailure
}

// statusMessage is the one-line text of a broker's status: its message,
// plus the provider's OAuth2 error from an ErrorInfo detail when the
// message does not carry it already.
func statusMessage(st *status.Status) string {
	msg := st.Message()
	if msg == "" {
		msg = st.Code().String()
	}
	for _, d := range st.Details() {
		info, ok := d.(*errdetails.ErrorInfo)
		if !ok {
			continue
		}
		oauthErr, desc := info.GetMetadata()["error"], info.GetMetadata()["error_description"]
		var extra []string
		if oauthErr != "" && !strings.Contains(msg, oauthErr) {
			extra = append(extra, oauthErr)
		}
		if desc != "" && !strings.Contains(msg, desc) {
			extra = append(extra, desc)
		}
		if len(extra) > 0 {
			msg += " (provider error: " + strings.Join(extra, ": ") + ")"
		}
	}
	return msg
}

// commandName is the command's path without the program's name: "provider put".
func commandName(cmd *cobra.Command) string {
	return strings.TrimPrefix(cmd.CommandPath(), cmd.Root().Name()+" ")
}

// oneLine joins the lines of s, so that an error is one line on stderr.
func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " ")), " ")
}

// cli holds the settings and the connection of one admin command.
type cli struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string

	// Global flags.
	addr      string
	apiKeyEnv string
	useTLS    bool
	caFile    string
	certFile  string
	keyFile   string
	timeout   time.Duration
	output    string

	noAPIKey bool // no key was sent: Unauthenticated gets a hint
	conn     *grpc.ClientConn
}

const (
	outputTable = "table"
	outputJSON  = "json"
)

// rootCommand builds the command tree.
func (c *cli) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "tokenbroker",
		Short: "Administer a running token broker over gRPC",
		Long: `The admin commands talk to a running broker over gRPC with an API key (or a
client certificate) whose identity the broker's policy allows.`,
		SilenceErrors:     true,
		SilenceUsage:      true,
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return c.resolveSettings(cmd)
		},
	}
	root.SetHelpTemplate(root.HelpTemplate() + cliHelpFooter)
	f := root.PersistentFlags()
	f.StringVar(&c.addr, "addr", "127.0.0.1:9090", "the broker's gRPC address ($TOKENBROKER_ADDR)")
	f.StringVar(&c.apiKeyEnv, "api-key-env", "TOKENBROKER_API_KEY", "the environment variable holding the API key")
	f.BoolVar(&c.useTLS, "tls", false, "connect with TLS, verifying the broker with the system's roots ($TOKENBROKER_TLS)")
	f.StringVar(&c.caFile, "ca-file", "", "PEM file of the CAs that sign the broker's certificate; implies --tls ($TOKENBROKER_CA_FILE)")
	f.StringVar(&c.certFile, "cert-file", "", "client certificate (PEM) for mutual TLS; implies --tls ($TOKENBROKER_CERT_FILE)")
	f.StringVar(&c.keyFile, "key-file", "", "the client certificate's key (PEM) ($TOKENBROKER_KEY_FILE)")
	f.DurationVar(&c.timeout, "timeout", 10*time.Second, "how long to wait for the broker's answer")
	f.StringVarP(&c.output, "output", "o", outputTable, "output format: table or json (protobuf JSON with the proto field names)")

	root.AddCommand(c.providerCommand(), c.accountCommand(), c.grantCommand(), c.tokenCommand(), c.apiKeysCommand(), c.eventsCommand(), c.webhooksCommand())
	return root
}

// group is a command that only holds subcommands: called alone or with an
// unknown subcommand it is a usage error (cobra would print help and
// succeed).
func group(use, short, long string, subs ...*cobra.Command) *cobra.Command {
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Long:  long,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			names := make([]string, 0, len(cmd.Commands()))
			for _, sub := range cmd.Commands() {
				names = append(names, sub.Name())
			}
			return usageErrorf("%s: missing subcommand (%s)", commandName(cmd), strings.Join(names, ", "))
		},
	}
	cmd.AddCommand(subs...)
	return cmd
}

// resolveSettings applies the environment to the global flags not given
// and checks them.
func (c *cli) resolveSettings(cmd *cobra.Command) error {
	flags := cmd.Flags()
	fromEnv := func(name, env string, dst *string) {
		if v := c.getenv(env); !flags.Changed(name) && v != "" {
			*dst = v
		}
	}
	fromEnv("addr", "TOKENBROKER_ADDR", &c.addr)
	fromEnv("ca-file", "TOKENBROKER_CA_FILE", &c.caFile)
	fromEnv("cert-file", "TOKENBROKER_CERT_FILE", &c.certFile)
	fromEnv("key-file", "TOKENBROKER_KEY_FILE", &c.keyFile)
	if v := c.getenv("TOKENBROKER_TLS"); !flags.Changed("tls") && v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return usageErrorf("$TOKENBROKER_TLS=%q: want true or false", v)
		}
		c.useTLS = b
	}
	switch {
	case c.output != outputTable && c.output != outputJSON:
		return usageErrorf("--output %q: want table or json", c.output)
	case c.addr == "":
		return usageErrorf("--addr is empty")
	case c.timeout <= 0:
		return usageErrorf("--timeout %s: want a positive duration", c.timeout)
	case (c.certFile == "") != (c.keyFile == ""):
		return usageErrorf("--cert-file and --key-file go together")
	case c.apiKeyEnv == "":
		return usageErrorf("--api-key-env is empty")
	}
	return nil
}

// dial connects to the broker (lazily: errors of the connection show in
// the first call). The API key comes from the environment variable
// --api-key-env names; an explicitly named variable must be set.
func (c *cli) dial(cmd *cobra.Command) (*grpc.ClientConn, error) {
	if c.conn != nil {
		return c.conn, nil
	}
	transport := insecure.NewCredentials()
	if c.useTLS || c.caFile != "" || c.certFile != "" {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if c.caFile != "" {
			pem, err := os.ReadFile(c.caFile)
			if err != nil {
				return nil, usageErrorf("--ca-file: %v", err)
			}
			cfg.RootCAs = x509.NewCertPool()
			if !cfg.RootCAs.AppendCertsFromPEM(pem) {
				return nil, usageErrorf("--ca-file %s: no PEM certificate in it", c.caFile)
			}
		}
		if c.certFile != "" {
			cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
			if err != nil {
				return nil, usageErrorf("--cert-file %s and --key-file %s: %v", c.certFile, c.keyFile, err)
			}
			cfg.Certificates = []tls.Certificate{cert}
		}
		transport = credentials.NewTLS(cfg)
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(transport)}
	key := c.getenv(c.apiKeyEnv)
	switch {
	case key != "":
		opts = append(opts, grpc.WithPerRPCCredentials(apiKeyCredentials(key)))
	case cmd.Flags().Changed("api-key-env"):
		return nil, usageErrorf("--api-key-env: $%s is empty or not set", c.apiKeyEnv)
	default:
		c.noAPIKey = true
	}
	conn, err := grpc.NewClient(c.addr, opts...)
	if err != nil {
		return nil, usageErrorf("--addr %q: %v", c.addr, err)
	}
	c.conn = conn
	return conn, nil
}

func (c *cli) close() {
	if c.conn != nil {
		c.conn.Close()
	}
}

// admin and broker return the service clients, connecting first.
func (c *cli) admin(cmd *cobra.Command) (tokenbrokerv1.AdminServiceClient, error) {
	conn, err := c.dial(cmd)
	if err != nil {
		return nil, err
	}
	return tokenbrokerv1.NewAdminServiceClient(conn), nil
}

func (c *cli) broker(cmd *cobra.Command) (tokenbrokerv1.TokenBrokerServiceClient, error) {
	conn, err := c.dial(cmd)
	if err != nil {
		return nil, err
	}
	return tokenbrokerv1.NewTokenBrokerServiceClient(conn), nil
}

// apiKeyCredentials sends the API key as a bearer token on every call.
type apiKeyCredentials string

func (k apiKeyCredentials) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(k)}, nil
}

// RequireTransportSecurity is false: a broker on loopback, or behind a
// sidecar that terminates TLS, is reached without TLS.
func (apiKeyCredentials) RequireTransportSecurity() bool { return false }

// run wraps a command's work: it bounds it with --timeout and turns its
// error into an exitError with the matching exit code.
func (c *cli) run(fn func(ctx context.Context, cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return c.call(fn, true)
}

// stream is run for a command that follows a stream until interrupted: no
// --timeout, and an interruption ends it successfully.
func (c *cli) stream(fn func(ctx context.Context, cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return c.call(fn, false)
}

func (c *cli) call(fn func(ctx context.Context, cmd *cobra.Command, args []string) error, bounded bool) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		ctx, cancel := context.WithCancel(cmd.Context())
		if bounded {
			ctx, cancel = context.WithTimeout(cmd.Context(), c.timeout)
		}
		defer cancel()
		err := fn(ctx, cmd, args)
		if err == nil || (!bounded && cmd.Context().Err() != nil) {
			return nil
		}
		var ee *exitError
		if errors.As(err, &ee) {
			return err
		}
		st, ok := status.FromError(err)
		if !ok {
			return &exitError{code: exitFailure, err: err}
		}
		msg := statusMessage(st)
		if st.Code() == codes.Unauthenticated && c.noAPIKey {
			msg += " (no API key given: set TOKENBROKER_API_KEY, or name the variable with --api-key-env)"
		}
		switch {
		case st.Code() == codes.DeadlineExceeded && ctx.Err() != nil:
			msg = fmt.Sprintf("no answer from the broker at %s within %s (--timeout)", c.addr, c.timeout)
		case st.Code() == codes.Unavailable && strings.HasPrefix(msg, "connection error"):
			msg = fmt.Sprintf("cannot reach the broker at %s: %s", c.addr, msg)
		}
		return &exitError{code: exitCode(st.Code()), err: errors.New(msg)}
	}
}

// printJSON prints m as protobuf JSON with the proto field names,
// indented. protojson varies its whitespace on purpose; json.Indent makes
// it stable for scripts that diff the output.
func (c *cli) printJSON(m proto.Message) error {
	b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		return err
	}
	var out bytes.Buffer
	if err := json.Indent(&out, b, "", "  "); err != nil {
		return err
	}
	out.WriteByte('\n')
	_, err = out.WriteTo(c.stdout)
	return err
}

// table writes aligned columns; each row is tab-separated cells.
func (c *cli) table(rows [][]string) error {
	tw := tabwriter.NewWriter(c.stdout, 0, 8, 2, ' ', 0)
	for _, row := range rows {
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	return tw.Flush()
}

// readSecret reads a secret from stdin (when fromStdin) or from the
// environment variable env; exactly one of them is given (cobra checks).
// A trailing newline from stdin is dropped. what names the secret in errors.
func (c *cli) readSecret(what string, fromStdin bool, env string) (string, error) {
	if fromStdin {
		b, err := io.ReadAll(io.LimitReader(c.stdin, 64<<10))
		if err != nil {
			return "", fmt.Errorf("read %s from stdin: %w", what, err)
		}
		s := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
		if s == "" {
			return "", usageErrorf("%s: stdin is empty", what)
		}
		return s, nil
	}
	s := c.getenv(env)
	if s == "" {
		return "", usageErrorf("%s: $%s is empty or not set", what, env)
	}
	return s, nil
}

// Formatting of table cells.

func cell(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func timeCell(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return "-"
	}
	return ts.AsTime().Local().Format(time.RFC3339)
}

func durationCell(d *durationpb.Duration) string {
	if d == nil {
		return "-"
	}
	return d.AsDuration().String()
}

func listCell(items []string) string {
	if len(items) == 0 {
		return "-"
	}
	return strings.Join(items, ",")
}

// enumCell is an enum value's name without its prefix, lowercase:
// GRANT_HEALTH_REAUTHORIZATION_REQUIRED is "reauthorization_required".
func enumCell(name, prefix string) string {
	name = strings.TrimPrefix(name, prefix)
	if name == "UNSPECIFIED" {
		return "-"
	}
	return strings.ToLower(name)
}

func secretCell(info *tokenbrokerv1.SecretInfo) string {
	if !info.GetSet() {
		return "not set"
	}
	s := "set"
	if fp := info.GetFingerprint(); fp != "" {
		s += " (" + fp + ")"
	}
	return s
}

// durationFlag returns a flag's duration as a protobuf Duration, or nil
// when the flag was not given.
func durationFlag(cmd *cobra.Command, name string, d time.Duration) (*durationpb.Duration, error) {
	if !cmd.Flags().Changed(name) {
		return nil, nil
	}
	if d < 0 {
		return nil, usageErrorf("--%s %s: want a duration of 0 or more", name, d)
	}
	return durationpb.New(d), nil
}
