package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

func (c *cli) tokenCommand() *cobra.Command {
	return group("token", "Get, refresh and introspect access tokens",
		`get and refresh print the access token alone, so that
  curl -H "Authorization: Bearer $(tokenbroker token get acme)" ...
works; -o json prints the whole token.`,
		c.tokenGetCommand(), c.tokenRefreshCommand(), c.tokenIntrospectCommand())
}

func (c *cli) tokenGetCommand() *cobra.Command {
	var (
		account string
		scopes  []string
		minTTL  time.Duration
	)
	cmd := &cobra.Command{
		Use:   "get PROVIDER",
		Short: "Print a valid access token",
		Args:  exactArgs("PROVIDER"),
		RunE: c.run(func(ctx context.Context, cmd *cobra.Command, args []string) error {
			ttl, err := durationFlag(cmd, "min-ttl", minTTL)
			if err != nil {
				return err
			}
			broker, err := c.broker(cmd)
			if err != nil {
				return err
			}
			resp, err := broker.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: args[0], Account: account, Scopes: scopes, MinTtl: ttl})
			if err != nil {
				return err
			}
			return c.printToken(resp.GetToken())
		}),
	}
	f := cmd.Flags()
	f.StringVar(&account, "account", "", "account under the provider (default: the provider's own client identity)")
	f.StringSliceVar(&scopes, "scope", nil, "scope to request, repeatable or comma-separated (default: the provider's)")
	f.DurationVar(&minTTL, "min-ttl", 0, "the token must stay valid at least this long (default: the broker's)")
	return cmd
}

func (c *cli) tokenRefreshCommand() *cobra.Command {
	var (
		account string
		scopes  []string
		stale   string
	)
	cmd := &cobra.Command{
		Use:   "refresh PROVIDER",
		Short: "Force a new access token and print it",
		Long: `Force a new access token. With --stale, the token a provider's API refused,
the broker's current token is returned without a provider call when it is
already a different one.`,
		Args: exactArgs("PROVIDER"),
		RunE: c.run(func(ctx context.Context, cmd *cobra.Command, args []string) error {
			broker, err := c.broker(cmd)
			if err != nil {
				return err
			}
			resp, err := broker.Refresh(ctx, &tokenbrokerv1.RefreshRequest{Provider: args[0], Account: account, Scopes: scopes, StaleAccessToken: stale})
			if err != nil {
				return err
			}
			return c.printToken(resp.GetToken())
		}),
	}
	f := cmd.Flags()
	f.StringVar(&account, "account", "", "account under the provider (default: the provider's own client identity)")
	f.StringSliceVar(&scopes, "scope", nil, "scope to request, repeatable or comma-separated (default: the provider's)")
	f.StringVar(&stale, "stale", "", "the access token found stale")
	return cmd
}

// printToken prints the access token alone, or the whole token in JSON.
func (c *cli) printToken(t *tokenbrokerv1.Token) error {
	if c.output == outputJSON {
		return c.printJSON(t)
	}
	_, err := fmt.Fprintln(c.stdout, t.GetAccessToken())
	return err
}

func (c *cli) tokenIntrospectCommand() *cobra.Command {
	var fromStdin bool
	cmd := &cobra.Command{
		Use:   "introspect (--token-stdin | TOKEN)",
		Short: "Show what the broker knows of an access token",
		Long: `Show the RFC 7662 fields of an access token and the provider and account it
belongs to. An unknown or expired token is not an error: it is active=false.`,
		Args: func(cmd *cobra.Command, args []string) error {
			switch {
			case len(args) > 1:
				return usageErrorf("%s: unexpected argument %q (want one TOKEN)", commandName(cmd), args[1])
			case fromStdin && len(args) == 1:
				return usageErrorf("%s: give the token as an argument or with --token-stdin, not both", commandName(cmd))
			case !fromStdin && len(args) == 0:
				return usageErrorf("%s: missing TOKEN (or --token-stdin)", commandName(cmd))
			}
			return nil
		},
		RunE: c.run(func(ctx context.Context, cmd *cobra.Command, args []string) error {
			var token string
			if fromStdin {
				var err error
				if token, err = c.readSecret("token", true, ""); err != nil {
					return err
				}
			} else {
				token = args[0]
			}
			broker, err := c.broker(cmd)
			if err != nil {
				return err
			}
			resp, err := broker.Introspect(ctx, &tokenbrokerv1.IntrospectRequest{Token: token})
			if err != nil {
				return err
			}
			if c.output == outputJSON {
				return c.printJSON(resp)
			}
			unix := func(s int64) string {
				if s == 0 {
					return "-"
				}
				return time.Unix(s, 0).Local().Format(time.RFC3339)
			}
			return c.table([][]string{
				{"ACTIVE", fmt.Sprint(resp.GetActive())},
				{"PROVIDER", cell(resp.GetProvider())},
				{"ACCOUNT", cell(resp.GetAccount())},
				{"SCOPE", cell(resp.GetScope())},
				{"CLIENT ID", cell(resp.GetClientId())},
				{"TOKEN TYPE", cell(resp.GetTokenType())},
				{"SUBJECT", cell(resp.GetSub())},
				{"USERNAME", cell(resp.GetUsername())},
				{"ISSUED", unix(resp.GetIat())},
				{"EXPIRES", unix(resp.GetExp())},
			})
		}),
	}
	cmd.Flags().BoolVar(&fromStdin, "token-stdin", false, "read the token from stdin")
	return cmd
}
