// Command tokenbroker runs the token broker and administers it.
//
//	tokenbroker serve [--config FILE] [flags]   run the broker; SIGHUP reloads the config's auth section
//	tokenbroker dev [flags]                     run it with a sandbox provider, for a first try
//	tokenbroker provider|account|grant|token|apikeys|events ...
//	                                            administer a running broker over gRPC
//	tokenbroker keys|config|version|completion  offline tools
//
// `tokenbroker --help` lists every command; each has its own --help.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func main() {
	os.Exit(mainExit())
}

// mainExit runs the command line of the process and returns its exit code.
// The first SIGINT or SIGTERM cancels the command's context, whatever it is
// doing (a start-up in progress included); a second one kills the process
// at once.
func mainExit() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// The default action again once the first signal arrived: a second
	// one ends the process.
	defer context.AfterFunc(ctx, stop)()
	return runAdminCLI(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv)
}

// run runs one command line with stdin os.Stdin and returns the command's
// error, not printed.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	_, err := execute(ctx, args, os.Stdin, stdout, stderr, getenv)
	return err
}

// runAdminCLI runs one command line and returns its exit code; an error is
// printed to stderr as one line, "tokenbroker: <message>", followed for a
// usage error by where to find the command's help. Cancelling ctx cancels
// the command (a call in flight, a start-up, a running server).
func runAdminCLI(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	cmd, err := execute(ctx, args, stdin, stdout, stderr, getenv)
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

// execute runs args through the command tree and returns the command that
// ran (or failed to parse) and its error.
func execute(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) (*cobra.Command, error) {
	c := &cli{stdin: stdin, stdout: stdout, stderr: stderr, getenv: getenv}
	defer c.close()
	root := c.rootCommand()
	root.SetArgs(append([]string{}, args...))
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	return root.ExecuteContextC(ctx)
}

// rootHelp ends the root command's help: what every command shares.
const rootHelp = `
Environment (admin commands):
  TOKENBROKER_ADDR       the broker's gRPC address (--addr)
  TOKENBROKER_API_KEY    the API key sent as "authorization: Bearer <key>"; --api-key-env names another variable.
                         A key is never accepted as a flag: it would show in shell history and ps.
  TOKENBROKER_TLS        "true" to use TLS with the system's roots (--tls)
  TOKENBROKER_CA_FILE    PEM file of the CAs that sign the broker's certificate (--ca-file; implies TLS)
  TOKENBROKER_CERT_FILE  client certificate for mutual TLS (--cert-file; implies TLS)
  TOKENBROKER_KEY_FILE   client certificate's key (--key-file)

Environment (serve, keys, config):
  TOKENBROKER_CONFIG     the config file (--config)
  TOKENBROKER_MASTER_KEY the master key lines, comma-separated, when seal.key_file is not set
  TOKENBROKER_GRPC_ADDR, TOKENBROKER_HTTP_ADDR, TOKENBROKER_METRICS_ADDR, TOKENBROKER_DATA_DIR,
  TOKENBROKER_LOG_LEVEL, TOKENBROKER_LOG_FORMAT, TOKENBROKER_ETCD_ENDPOINTS, TOKENBROKER_ETCD_PREFIX
                         override the config file; flags override them

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

// subHelp ends every other command's help.
const subHelp = `
Run 'tokenbroker --help' for the environment variables and the exit codes.
`

// adminAnnotation marks the command groups that call a running broker: the
// connection flags apply to them alone.
const adminAnnotation = "tokenbroker/admin"

// rootCommand builds the command tree.
func (c *cli) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "tokenbroker",
		Short: "An OAuth2 token broker: run it, and administer it",
		Long: `tokenbroker centralizes OAuth2 provider credentials: services ask it for an
access token over gRPC or REST instead of each holding a client secret.

'tokenbroker serve' runs the broker; 'tokenbroker dev' runs it with a sandbox
provider for a first try. The admin commands (provider, account, grant, token,
apikeys, events, webhooks) talk to a running broker over gRPC with an API key (or a client
certificate) whose identity the broker's policy allows.`,
		Args:              cobra.NoArgs,
		SilenceErrors:     true,
		SilenceUsage:      true,
		PersistentPreRunE: c.checkFlags,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return usageErrorf("no command given")
		},
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return &exitError{code: exitUsage, err: err}
	})
	root.SetHelpTemplate(`{{with (or .Long .Short)}}{{. | trimTrailingWhitespaces}}

{{end}}{{if or .Runnable .HasSubCommands}}{{.UsageString}}{{end}}{{if .HasParent}}` + subHelp + `{{else}}` + rootHelp + `{{end}}`)
	root.SetUsageTemplate(strings.Replace(root.UsageTemplate(), "{{if .HasAvailableInheritedFlags}}", "{{if and .HasAvailableInheritedFlags (isAdminCommand .)}}", 1))
	root.AddGroup(&cobra.Group{ID: groupRun, Title: "Run the broker:"},
		&cobra.Group{ID: groupAdmin, Title: "Administer a running broker (over gRPC):"},
		&cobra.Group{ID: groupTools, Title: "Tools:"})
	root.SetHelpCommandGroupID(groupTools)
	root.SetCompletionCommandGroupID(groupTools)
	f := root.PersistentFlags()
	f.StringVar(&c.addr, "addr", "127.0.0.1:9090", "admin commands: the broker's gRPC address ($TOKENBROKER_ADDR)")
	f.StringVar(&c.apiKeyEnv, "api-key-env", "TOKENBROKER_API_KEY", "admin commands: the environment variable holding the API key")
	f.BoolVar(&c.useTLS, "tls", false, "admin commands: connect with TLS, verifying the broker with the system's roots ($TOKENBROKER_TLS)")
	f.StringVar(&c.caFile, "ca-file", "", "admin commands: PEM file of the CAs that sign the broker's certificate; implies --tls ($TOKENBROKER_CA_FILE)")
	f.StringVar(&c.certFile, "cert-file", "", "admin commands: client certificate (PEM) for mutual TLS; implies --tls ($TOKENBROKER_CERT_FILE)")
	f.StringVar(&c.keyFile, "key-file", "", "admin commands: the client certificate's key (PEM) ($TOKENBROKER_KEY_FILE)")
	f.DurationVar(&c.timeout, "timeout", defaultTimeout, "admin commands: how long to wait for the broker's answer")
	f.StringVarP(&c.output, "output", "o", outputTable, "admin commands: output format, table or json (protobuf JSON with the proto field names)")

	add := func(group string, cmds ...*cobra.Command) {
		for _, cmd := range cmds {
			cmd.GroupID = group
			if group == groupAdmin {
				cmd.Annotations = map[string]string{adminAnnotation: "true"}
			}
			root.AddCommand(cmd)
		}
	}
	add(groupRun, c.serveCommand(), c.devCommand())
	add(groupAdmin, c.adminCommands()...)
	add(groupTools, c.keysCommand(), c.configCommand(), c.versionCommand(), c.legacyAPIKeyCommand())
	return root
}

// The groups of the root's commands.
const (
	groupRun   = "run"
	groupAdmin = "admin"
	groupTools = "tools"
)

func init() {
	// The usage of a command that is not an admin command leaves out the
	// connection flags, which it refuses.
	cobra.AddTemplateFunc("isAdminCommand", isAdmin)
}

// adminCommands are the command groups that call a running broker.
func (c *cli) adminCommands() []*cobra.Command {
	return []*cobra.Command{c.providerCommand(), c.accountCommand(), c.grantCommand(), c.tokenCommand(), c.apiKeysCommand(), c.eventsCommand(), c.webhooksCommand()}
}

// isAdmin reports whether cmd belongs to an admin command group.
func isAdmin(cmd *cobra.Command) bool {
	for ; cmd != nil; cmd = cmd.Parent() {
		if cmd.Annotations[adminAnnotation] != "" {
			return true
		}
	}
	return false
}

// connectionFlags are the root's flags that only admin commands use.
var connectionFlags = []string{"addr", "api-key-env", "tls", "ca-file", "cert-file", "key-file", "timeout", "output"}

// checkFlags runs before every command: an admin command resolves its
// connection settings; any other command refuses them, rather than ignore
// them.
func (c *cli) checkFlags(cmd *cobra.Command, _ []string) error {
	if isAdmin(cmd) {
		return c.resolveSettings(cmd)
	}
	var given []string
	cmd.Flags().Visit(func(f *pflag.Flag) {
		for _, name := range connectionFlags {
			if f.Name == name {
				given = append(given, "--"+name)
			}
		}
	})
	if len(given) > 0 {
		return usageErrorf("%s: %s applies to the admin commands only", commandName(cmd), strings.Join(given, ", "))
	}
	return nil
}

// failing wraps the work of a command that is not an admin command: its
// errors end the process with exit code 1, not as usage errors.
func failing(fn func(cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		err := fn(cmd, args)
		var ee *exitError
		if err == nil || errors.As(err, &ee) {
			return err
		}
		return &exitError{code: exitFailure, err: err}
	}
}
