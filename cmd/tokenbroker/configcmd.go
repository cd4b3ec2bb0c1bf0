package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/tokenbroker/tokenbroker/app"
)

// runConfig runs `tokenbroker config validate FILE`: it decodes the file
// strictly, applies the TOKENBROKER_* environment as serve would, and
// reports every problem at once. It exits 0 and prints "ok" when the file
// is valid; it starts nothing and contacts nothing.
func runConfig(args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	if len(args) != 2 || args[0] != "validate" {
		fmt.Fprintln(stderr, "usage: tokenbroker config validate FILE")
		return errors.New("config: want 'validate FILE'")
	}
	cfg, err := app.ReadConfig(args[1], getenv)
	if err != nil {
		return err
	}
	if err := cfg.Validate(getenv); err != nil {
		return fmt.Errorf("%s is invalid:\n%w", args[1], err)
	}
	fmt.Fprintf(stdout, "%s: ok\n", args[1])
	return nil
}
