package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/tokenbroker/tokenbroker/app"
)

func (c *cli) configCommand() *cobra.Command {
	return group("config", "Check configuration files", `Check a configuration file of 'tokenbroker serve' without starting anything.
deploy/config.reference.yaml documents every field.`,
		c.configValidateCommand())
}

func (c *cli) configValidateCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "validate FILE",
		Short: "Report every problem of a config file at once, as serve would meet them",
		Long: `Decode the file strictly, apply the TOKENBROKER_* environment as serve would, and
report every problem at once, one per line: "FILE:LINE: field.path: what is wrong".
An unknown field gets the nearest known name; a bad value, the format expected.
Beyond the values it checks what serve would refuse at start: the master key
(seal.key_file, $TOKENBROKER_MASTER_KEY or the PKCS#11 token), the TLS files,
the JWT issuers' settings, that some caller can authenticate, the listen
addresses and the data directory. It prints "FILE: ok" and exits 0 when serve
would start with the file; it starts nothing and contacts no network service.
Deprecated field names are warnings on stderr.`,
		Args: exactArgs("FILE"),
		RunE: failing(func(_ *cobra.Command, args []string) error {
			path := args[0]
			cfg, err := app.ReadConfig(path, c.getenv)
			if err == nil {
				for _, d := range cfg.Deprecations {
					fmt.Fprintf(c.stderr, "%s: warning: %s\n", path, d)
				}
				err = cfg.Check(c.getenv)
			}
			var problems app.Problems
			if !errors.As(err, &problems) {
				if err != nil {
					return err
				}
				fmt.Fprintf(c.stdout, "%s: ok\n", path)
				return nil
			}
			var lines map[string]int
			if data, err := os.ReadFile(path); err == nil {
				lines = app.ConfigLines(data)
			}
			for _, p := range problems.Locate(lines) {
				fmt.Fprintln(c.stderr, p.In(path))
			}
			return fmt.Errorf("%s: %d problem(s)", path, len(problems))
		}),
	}
}
