package main

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/tokenbroker/tokenbroker/broker/apikey"
)

const apikeyUsage = `usage: tokenbroker apikey new --identity NAME

Prints a new API key and the auth.api_keys entry that declares it: a static
key, for bootstrap admins. It needs no running server; the key is printed
once and never stored. Keys for services are better issued with
AdminService.CreateApiKey (POST /v1/admin/apikeys), which can retire them.
`

// runAPIKey runs `tokenbroker apikey`.
func runAPIKey(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "new" {
		fmt.Fprint(stderr, apikeyUsage)
		if len(args) == 0 {
			return errors.New("apikey: no subcommand given")
		}
		return fmt.Errorf("apikey: unknown subcommand %q", args[0])
	}
	fs := flag.NewFlagSet("apikey new", flag.ContinueOnError)
	fs.SetOutput(stderr)
	identity := fs.String("identity", "", "the caller identity the key authenticates as (required)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if err := apikey.ValidateIdentity(*identity); err != nil {
		return fmt.Errorf("apikey new: --identity: %w", err)
	}
	id, key, sum, err := apikey.Generate()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, `%s

# The key above authenticates as %q; it is shown only now.
# Declare it in the config file, and allow the identity in the policy:
auth:
  api_keys:
    - id: %s
      identity: %q
      sha256: %s
`, key, *identity, id, *identity, sum)
	return nil
}
