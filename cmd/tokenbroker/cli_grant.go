package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

func (c *cli) accountCommand() *cobra.Command {
	return group("account", "Register accounts (grants) under a provider",
		`An account is one lineage of tokens under a provider: a resource owner's
password grant, or an authorization-code grant that a person consents to
(see 'tokenbroker grant authorize').`,
		c.accountPutCommand())
}

func (c *cli) accountPutCommand() *cobra.Command {
	var (
		grant         string
		username      string
		passwordStdin bool
		passwordEnv   string
		scopes        []string
	)
	cmd := &cobra.Command{
		Use:   "put PROVIDER ACCOUNT --grant password|authorization_code|jwt_bearer",
		Short: "Create or replace an account",
		Long: `Create or replace an account under a provider. A password account needs
--username and, when created or changed, the password from stdin or an
environment variable (never a flag); without one the stored password is kept.
An authorization_code account waits for consent: 'tokenbroker grant authorize'.
A jwt_bearer account's --username is the subject its assertions claim (a user
the provider's client acts for).`,
		Example: `  printf %s "$PASSWORD" | tokenbroker account put acme reports --grant password --username svc-reports --password-stdin`,
		Args:    exactArgs("PROVIDER", "ACCOUNT"),
		RunE: c.run(func(ctx context.Context, cmd *cobra.Command, args []string) error {
			gt, err := parseGrantType("grant", grant)
			if err != nil {
				return err
			}
			req := &tokenbrokerv1.PutAccountRequest{Provider: args[0], Account: args[1], GrantType: gt, Username: username, Scopes: scopes}
			if passwordStdin || passwordEnv != "" {
				if req.Password, err = c.readSecret("password", passwordStdin, passwordEnv); err != nil {
					return err
				}
			}
			admin, err := c.admin(cmd)
			if err != nil {
				return err
			}
			resp, err := admin.PutAccount(ctx, req)
			if err != nil {
				return err
			}
			if c.output == outputJSON {
				return c.printJSON(resp.GetGrant())
			}
			return c.printGrants([]*tokenbrokerv1.Grant{resp.GetGrant()})
		}),
	}
	f := cmd.Flags()
	f.StringVar(&grant, "grant", "", "the account's grant: password, authorization_code or jwt_bearer (required)")
	f.StringVar(&username, "username", "", "the resource owner's username (password grant), or the assertions' subject (jwt_bearer)")
	f.BoolVar(&passwordStdin, "password-stdin", false, "read the password from stdin")
	f.StringVar(&passwordEnv, "password-env", "", "read the password from this environment variable")
	f.StringSliceVar(&scopes, "scope", nil, "scope of the account's tokens, repeatable or comma-separated (default: the provider's)")
	cmd.MarkFlagsMutuallyExclusive("password-stdin", "password-env")
	_ = cmd.MarkFlagRequired("grant") // the flag exists
	return cmd
}

func (c *cli) grantCommand() *cobra.Command {
	return group("grant", "List, revoke and authorize grants",
		`Grants are the accounts under each provider, with their health: ok,
refreshing, failing, pending (waiting for consent) or reauthorization_required.`,
		c.grantListCommand(), c.grantRevokeCommand(), c.grantAuthorizeCommand())
}

func (c *cli) grantListCommand() *cobra.Command {
	var provider string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List grants with their health",
		Args:  cobra.NoArgs,
		RunE: c.run(func(ctx context.Context, cmd *cobra.Command, _ []string) error {
			admin, err := c.admin(cmd)
			if err != nil {
				return err
			}
			resp, err := admin.ListGrants(ctx, &tokenbrokerv1.ListGrantsRequest{Provider: provider})
			if err != nil {
				return err
			}
			if c.output == outputJSON {
				return c.printJSON(resp)
			}
			return c.printGrants(resp.GetGrants())
		}),
	}
	cmd.Flags().StringVar(&provider, "provider", "", "only this provider's grants")
	return cmd
}

// printGrants prints grants as a table.
func (c *cli) printGrants(gs []*tokenbrokerv1.Grant) error {
	rows := [][]string{{"PROVIDER", "ACCOUNT", "GRANT", "HEALTH", "EXPIRES", "LAST REFRESH", "REFRESHED BY", "LAST ERROR"}}
	for _, g := range gs {
		rows = append(rows, []string{g.GetProvider(), cell(g.GetAccount()), grantTypeCell(g.GetGrantType()),
			enumCell(g.GetHealth().String(), "GRANT_HEALTH_"), timeCell(g.GetExpireTime()), timeCell(g.GetLastRefreshTime()),
			cell(g.GetRefreshedBy()), cell(oneLine(g.GetLastError()))})
	}
	return c.table(rows)
}

func (c *cli) grantRevokeCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "revoke PROVIDER ACCOUNT",
		Short: "Delete an account and revoke its tokens",
		Long: `Delete an account, revoke its tokens at the provider when it has a revocation
endpoint, and drop them from every replica.`,
		Args: exactArgs("PROVIDER", "ACCOUNT"),
		RunE: c.run(func(ctx context.Context, cmd *cobra.Command, args []string) error {
			admin, err := c.admin(cmd)
			if err != nil {
				return err
			}
			resp, err := admin.RevokeGrant(ctx, &tokenbrokerv1.RevokeGrantRequest{Provider: args[0], Account: args[1]})
			if err != nil {
				return err
			}
			return c.printDone(resp, "grant %s/%s revoked", args[0], args[1])
		}),
	}
}

func (c *cli) grantAuthorizeCommand() *cobra.Command {
	var scopes []string
	cmd := &cobra.Command{
		Use:   "authorize PROVIDER ACCOUNT",
		Short: "Start a consent flow and print the URL to open",
		Long: `Start the browser consent flow of an authorization_code account (created when
missing) and print the provider's authorize URL. The person who opens it and
consents completes the grant through the broker's callback.`,
		Args: exactArgs("PROVIDER", "ACCOUNT"),
		RunE: c.run(func(ctx context.Context, cmd *cobra.Command, args []string) error {
			admin, err := c.admin(cmd)
			if err != nil {
				return err
			}
			resp, err := admin.StartAuthorization(ctx, &tokenbrokerv1.StartAuthorizationRequest{Provider: args[0], Account: args[1], Scopes: scopes})
			if err != nil {
				return err
			}
			if c.output == outputJSON {
				return c.printJSON(resp)
			}
			fmt.Fprintf(c.stderr, "Open this URL in a browser and consent before %s:\n", timeCell(resp.GetExpireTime()))
			_, err = fmt.Fprintln(c.stdout, resp.GetAuthorizeUrl())
			return err
		}),
	}
	cmd.Flags().StringSliceVar(&scopes, "scope", nil, "scope to ask consent for, repeatable (default: the account's or the provider's)")
	return cmd
}
