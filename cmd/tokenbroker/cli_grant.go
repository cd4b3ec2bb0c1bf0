package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

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
		Use:   "put PROVIDER ACCOUNT --grant password|authorization_code|device_code|jwt_bearer",
		Short: "Create or replace an account",
		Long: `Create or replace an account under a provider. A password account needs
--username and, when created or changed, the password from stdin or an
environment variable (never a flag); without one the stored password is kept.
An authorization_code or device_code account waits for consent: 'tokenbroker
grant authorize' (with --device for device_code). A jwt_bearer account's
--username is the subject its assertions claim (a user the provider's client
acts for).`,
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
	f.StringVar(&grant, "grant", "", "the account's grant: password, authorization_code, device_code or jwt_bearer (required)")
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
	var (
		scopes []string
		device bool
		noWait bool
	)
	cmd := &cobra.Command{
		Use:   "authorize PROVIDER ACCOUNT",
		Short: "Start a consent flow and print the URL to open",
		Long: `Start the browser consent flow of an authorization_code account (created when
missing) and print the provider's authorize URL. The person who opens it and
consents completes the grant through the broker's callback.

With --device, start the device authorization grant (RFC 8628) of a
device_code account (created when missing) instead: print the user code on
stdout and where to enter it on stderr, and wait until the person has
consented (exit 0), refused or let the code expire (exit 5). The broker
polls the provider itself; --no-wait returns at once.`,
		Example: `  tokenbroker grant authorize acme reports
  tokenbroker grant authorize tv living-room --device`,
		Args: exactArgs("PROVIDER", "ACCOUNT"),
		RunE: c.stream(func(ctx context.Context, cmd *cobra.Command, args []string) error {
			admin, err := c.admin(cmd)
			if err != nil {
				return err
			}
			req := &tokenbrokerv1.StartAuthorizationRequest{Provider: args[0], Account: args[1], Scopes: scopes}
			if device {
				req.Flow = tokenbrokerv1.AuthorizationFlow_AUTHORIZATION_FLOW_DEVICE_CODE
			}
			sctx, cancel := context.WithTimeout(ctx, c.timeout)
			resp, err := admin.StartAuthorization(sctx, req)
			cancel()
			if err != nil {
				return err
			}
			if device {
				return c.awaitDeviceConsent(ctx, admin, args[0], args[1], resp, noWait)
			}
			if c.output == outputJSON {
				return c.printJSON(resp)
			}
			fmt.Fprintf(c.stderr, "Open this URL in a browser and consent before %s:\n", timeCell(resp.GetExpireTime()))
			_, err = fmt.Fprintln(c.stdout, resp.GetAuthorizeUrl())
			return err
		}),
	}
	f := cmd.Flags()
	f.StringSliceVar(&scopes, "scope", nil, "scope to ask consent for, repeatable (default: the account's or the provider's)")
	f.BoolVar(&device, "device", false, "use the device authorization grant: print a user code to enter at the provider, and wait for consent")
	f.BoolVar(&noWait, "no-wait", false, "with --device, return once the code is printed")
	return cmd
}

// awaitDeviceConsent prints a started device authorization and, unless
// noWait, waits until the account's grant shows the outcome: a new token
// (consent), or a device authorization error (refused, expired).
func (c *cli) awaitDeviceConsent(ctx context.Context, admin tokenbrokerv1.AdminServiceClient, provider, account string, resp *tokenbrokerv1.StartAuthorizationResponse, noWait bool) error {
	if c.output == outputJSON {
		if err := c.printJSON(resp); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(c.stderr, "On any device, open %s and enter this code before %s:\n", resp.GetVerificationUri(), timeCell(resp.GetExpireTime()))
		if _, err := fmt.Fprintln(c.stdout, resp.GetUserCode()); err != nil {
			return err
		}
		if u := resp.GetVerificationUriComplete(); u != "" {
			fmt.Fprintf(c.stderr, "or open %s\n", u)
		}
	}
	if noWait {
		return nil
	}
	before, err := c.grantOf(ctx, admin, provider, account)
	if err != nil {
		return err
	}
	fmt.Fprintln(c.stderr, "Waiting for consent (the broker polls the provider; interrupting stops only this wait)...")
	interval := max(resp.GetInterval().AsDuration(), time.Second)
	deadline := resp.GetExpireTime().AsTime().Add(interval + 5*time.Second)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
		g, err := c.grantOf(ctx, admin, provider, account)
		if err != nil {
			return err
		}
		switch {
		case g == nil:
			return &exitError{code: exitNotFound, err: fmt.Errorf("account %q of provider %q was removed while waiting", account, provider)}
		case g.GetHealth() == tokenbrokerv1.GrantHealth_GRANT_HEALTH_OK && !g.GetLastRefreshTime().AsTime().Equal(before.GetLastRefreshTime().AsTime()):
			fmt.Fprintln(c.stderr, "Authorized.")
			if c.output == outputJSON {
				return c.printJSON(g)
			}
			return c.printGrants([]*tokenbrokerv1.Grant{g})
		case strings.HasPrefix(g.GetLastError(), "device authorization") && !g.GetUpdateTime().AsTime().Equal(before.GetUpdateTime().AsTime()):
			return &exitError{code: exitRefused, err: errors.New(g.GetLastError())}
		case time.Now().After(deadline):
			return &exitError{code: exitRefused, err: fmt.Errorf("the user code expired at %s without consent", timeCell(resp.GetExpireTime()))}
		}
	}
}

// grantOf returns the grant of account under provider, nil when there is
// none.
func (c *cli) grantOf(ctx context.Context, admin tokenbrokerv1.AdminServiceClient, provider, account string) (*tokenbrokerv1.Grant, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	resp, err := admin.ListGrants(ctx, &tokenbrokerv1.ListGrantsRequest{Provider: provider})
	if err != nil {
		return nil, err
	}
	for _, g := range resp.GetGrants() {
		if g.GetAccount() == account {
			return g, nil
		}
	}
	return nil, nil
}
