package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/tokenbroker/tokenbroker/broker/apikey"
)

// createStaticKey prints a new API key and the auth.api_keys entry that
// declares it: a static key, for bootstrap admins. It needs no running
// broker; the key is printed once and never stored.
func (c *cli) createStaticKey(identity string) error {
	if err := apikey.ValidateIdentity(identity); err != nil {
		return usageErrorf("--identity: %v", err)
	}
	id, key, sum, err := apikey.Generate()
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(c.stdout, `%s

# The key above authenticates as %q; it is shown only now.
# Declare it in the config file, and allow the identity in the policy:
auth:
  api_keys:
    - id: %s
      identity: %q
      sha256: %s
`, key, identity, id, identity, sum)
	return err
}

// legacyAPIKeyCommand is `apikey new`, the former spelling of `apikeys
// create --offline`, kept for scripts and hidden from help.
func (c *cli) legacyAPIKeyCommand() *cobra.Command {
	var identity string
	newCmd := &cobra.Command{
		Use:    "new --identity NAME",
		Short:  "Deprecated: use 'tokenbroker apikeys create --offline'",
		Long:   `Deprecated spelling of 'tokenbroker apikeys create --offline --identity NAME'.`,
		Args:   noArgs,
		Hidden: true,
		RunE: func(*cobra.Command, []string) error {
			fmt.Fprintln(c.stderr, "tokenbroker: 'apikey new' is deprecated; use 'tokenbroker apikeys create --offline'")
			return c.createStaticKey(identity)
		},
	}
	newCmd.Flags().StringVar(&identity, "identity", "", "the caller identity the key authenticates as (required)")
	cmd := group("apikey", "Deprecated: use 'tokenbroker apikeys'", `Deprecated spelling of 'tokenbroker apikeys'.`, newCmd)
	cmd.Hidden = true
	return cmd
}
