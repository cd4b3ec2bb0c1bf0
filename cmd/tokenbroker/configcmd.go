package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/tokenbroker/tokenbroker/app"
)

func (c *cli) configCommand() *cobra.Command {
	return group("config", "Check configuration files", `Check a configuration file of 'tokenbroker serve' without starting anything.`,
		c.configValidateCommand())
}

func (c *cli) configValidateCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "validate FILE",
		Short: "Report every problem of a config file at once",
		Long: `Decode the file strictly, apply the TOKENBROKER_* environment as serve would, and
report every problem at once. It prints "FILE: ok" and exits 0 when the file is
valid; it starts nothing and contacts nothing.`,
		Args: exactArgs("FILE"),
		RunE: failing(func(_ *cobra.Command, args []string) error {
			cfg, err := app.ReadConfig(args[0], c.getenv)
			if err != nil {
				return err
			}
			if err := cfg.Validate(c.getenv); err != nil {
				return fmt.Errorf("%s is invalid:\n%w", args[0], err)
			}
			fmt.Fprintf(c.stdout, "%s: ok\n", args[0])
			return nil
		}),
	}
}
