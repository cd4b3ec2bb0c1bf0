package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/tokenbroker/tokenbroker/internal/buildinfo"
)

func (c *cli) versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version, the Go version and the source revision of this binary",
		Long: `Print the version of this binary, the Go version it was built with and the
source revision (with "modified" when the tree had uncommitted changes), as
recorded by the Go toolchain. The same labels are on the tokenbroker_build_info
metric of /metrics.`,
		Args: noArgs,
		RunE: failing(func(*cobra.Command, []string) error {
			_, err := fmt.Fprintln(c.stdout, buildinfo.Read())
			return err
		}),
	}
}
