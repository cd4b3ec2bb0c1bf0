package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

func (c *cli) apiKeysCommand() *cobra.Command {
	return group("apikeys", "Issue, list and retire API keys",
		`API keys authenticate callers as an identity; the broker's policy says what
the identity may do. The broker keeps only a hash: a key is printed once, when
it is created. 'tokenbroker apikeys create --offline' prints a static key for
the config file instead, without a running broker: the first admin's key.`,
		c.apiKeysCreateCommand(), c.apiKeysListCommand(), c.apiKeysRetireCommand())
}

func (c *cli) apiKeysCreateCommand() *cobra.Command {
	var req tokenbrokerv1.CreateApiKeyRequest
	var offline bool
	cmd := &cobra.Command{
		Use:   "create --identity ID [--offline]",
		Short: "Issue an API key and print it, once",
		Long: `Issue an API key bound to an identity. The key alone goes to stdout (-o json:
the key and its description), so that KEY=$(tokenbroker apikeys create ...)
works; it is never shown again.

With --offline, no broker is called: it prints a new key and the auth.api_keys
entry that declares it as a static key in the config file (its id and the
SHA-256 of its secret). That is how the first admin gets in; static keys change
with the file (SIGHUP reloads it) and cannot be retired through the API.`,
		Args: cobra.NoArgs,
		RunE: c.run(func(ctx context.Context, cmd *cobra.Command, _ []string) error {
			if offline {
				if cmd.Flags().Changed("description") || c.output == outputJSON {
					return usageErrorf("apikeys create --offline: --description and -o json apply to keys the broker issues")
				}
				return c.createStaticKey(req.Identity)
			}
			admin, err := c.admin(cmd)
			if err != nil {
				return err
			}
			resp, err := admin.CreateApiKey(ctx, &req)
			if err != nil {
				return err
			}
			if c.output == outputJSON {
				return c.printJSON(resp)
			}
			fmt.Fprintf(c.stderr, "API key %s for identity %q; it is shown only now:\n", resp.GetApiKey().GetId(), resp.GetApiKey().GetIdentity())
			_, err = fmt.Fprintln(c.stdout, resp.GetKey())
			return err
		}),
	}
	cmd.Flags().StringVar(&req.Identity, "identity", "", `the caller identity the key authenticates as, e.g. "spiffe://corp/svc-a" (required)`)
	cmd.Flags().StringVar(&req.Description, "description", "", "what the key is for")
	cmd.Flags().BoolVar(&offline, "offline", false, "call no broker: print a static key and its config-file entry")
	_ = cmd.MarkFlagRequired("identity") // the flag exists
	return cmd
}

func (c *cli) apiKeysListCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List API keys, without the keys",
		Args:  cobra.NoArgs,
		RunE: c.run(func(ctx context.Context, cmd *cobra.Command, _ []string) error {
			admin, err := c.admin(cmd)
			if err != nil {
				return err
			}
			resp, err := admin.ListApiKeys(ctx, &tokenbrokerv1.ListApiKeysRequest{})
			if err != nil {
				return err
			}
			if c.output == outputJSON {
				return c.printJSON(resp)
			}
			rows := [][]string{{"ID", "IDENTITY", "DESCRIPTION", "CREATED", "RETIRED"}}
			for _, k := range resp.GetApiKeys() {
				rows = append(rows, []string{k.GetId(), k.GetIdentity(), cell(oneLine(k.GetDescription())), timeCell(k.GetCreateTime()), timeCell(k.GetRetireTime())})
			}
			return c.table(rows)
		}),
	}
}

func (c *cli) apiKeysRetireCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "retire ID",
		Short: "Make an API key unusable at once, on every replica",
		Args:  exactArgs("ID"),
		RunE: c.run(func(ctx context.Context, cmd *cobra.Command, args []string) error {
			admin, err := c.admin(cmd)
			if err != nil {
				return err
			}
			resp, err := admin.RetireApiKey(ctx, &tokenbrokerv1.RetireApiKeyRequest{Id: args[0]})
			if err != nil {
				return err
			}
			return c.printDone(resp, "API key %s retired", args[0])
		}),
	}
}
