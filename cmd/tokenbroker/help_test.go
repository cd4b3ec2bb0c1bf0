//go:build unix

package main

import (
	"bytes"
	"context"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
)

// TestEveryCommandHasHelp walks the command tree, hidden commands included,
// and runs `tokenbroker <command> --help` of each as a process: exit code
// 0, the command's description on stdout, nothing on stderr. Only the root
// help carries the environment and the exit codes; every other points at it.
func TestEveryCommandHasHelp(t *testing.T) {
	t.Parallel()
	bin := sharedBinary(t)
	root := (&cli{stdin: strings.NewReader(""), stdout: io.Discard, stderr: io.Discard, getenv: envMap(nil)}).rootCommand()
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	var cmds []*cobra.Command
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		cmds = append(cmds, c)
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	if len(cmds) < 40 {
		t.Fatalf("the tree holds %d commands, want every command (at least 40)", len(cmds))
	}
	var checked []string
	for _, c := range cmds {
		path := strings.Fields(c.CommandPath())[1:]
		args := append(path, "--help")
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Env = cliEnv(nil)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		cancel()
		name := "tokenbroker " + strings.Join(args, " ")
		checked = append(checked, c.CommandPath())
		if err != nil {
			t.Errorf("%s: %v (exit code %d), want exit 0; stderr %q", name, err, cmd.ProcessState.ExitCode(), stderr.String())
			continue
		}
		description := strings.TrimSpace(c.Long)
		if description == "" {
			description = c.Short
		}
		description, _, _ = strings.Cut(description, "\n")
		out := stdout.String()
		switch {
		case c.Short == "":
			t.Errorf("%s: the command has no short description", name)
		case description == "" || !strings.Contains(out, description):
			t.Errorf("%s: stdout does not describe the command (%q):\n%s", name, description, out)
		case !strings.Contains(out, "Usage:"):
			t.Errorf("%s: stdout has no usage:\n%s", name, out)
		case stderr.Len() > 0:
			t.Errorf("%s: stderr %q, want nothing", name, stderr.String())
		}
		if wantCodes := !c.HasParent(); strings.Contains(out, "Exit codes:") != wantCodes || strings.Contains(out, "Run 'tokenbroker --help' for the environment") == wantCodes {
			t.Errorf("%s: the exit codes are in the help: %v, want %v (the root's alone; the others point at it):\n%s", name, !wantCodes, wantCodes, out)
		}
	}
	t.Logf("checked --help of %d commands: %s", len(checked), strings.Join(checked, ", "))
}

// TestExitCodes: usage errors end with 2 and point at the command's help,
// failures of the work with 1, success with 0.
func TestExitCodes(t *testing.T) {
	t.Parallel()
	missing := "/nonexistent/tokenbroker.yaml"
	tests := []struct {
		give       []string
		want       int
		wantStderr string
	}{
		{give: []string{"version"}, want: exitOK},
		{give: []string{"--output", "json", "version"}, want: exitUsage, wantStderr: "version: --output applies to the admin commands only (see 'tokenbroker version --help')"},
		{give: []string{"serve", "--bogus"}, want: exitUsage, wantStderr: "unknown flag: --bogus (see 'tokenbroker serve --help')"},
		{give: []string{"serve", "extra"}, want: exitUsage, wantStderr: `serve: unexpected argument "extra"`},
		{give: []string{"serve", "--config", missing}, want: exitFailure, wantStderr: missing},
		{give: []string{"config", "validate"}, want: exitUsage, wantStderr: "config validate: missing FILE"},
		{give: []string{"config", "validate", missing}, want: exitFailure, wantStderr: missing},
		{give: []string{"keys", "generate", "--id", "BAD"}, want: exitFailure, wantStderr: "key id"},
		{give: []string{"frobnicate"}, want: exitUsage, wantStderr: `unknown command "frobnicate" for "tokenbroker"`},
	}
	for _, tt := range tests {
		var stdout, stderr syncBuffer
		got := runAdminCLI(t.Context(), tt.give, strings.NewReader(""), &stdout, &stderr, envMap(nil))
		if got != tt.want || !strings.Contains(stderr.String(), tt.wantStderr) || (tt.want != exitOK && strings.Count(stderr.String(), "\n") != 1) {
			t.Errorf("%q: exit code %d, stderr %q; want %d and one line containing %q", tt.give, got, stderr.String(), tt.want, tt.wantStderr)
		}
	}
}
