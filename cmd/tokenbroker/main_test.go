package main

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a test leaves a goroutine behind.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(int) { removeSharedBinary() }))
}

// syncBuffer is a bytes.Buffer safe for one writer and concurrent readers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestRunCommands(t *testing.T) {
	tests := []struct {
		name       string
		give       []string
		wantErr    string // "" for success
		wantStdout string
		wantStderr string
	}{
		{name: "no args", give: nil, wantErr: "no command given"},
		{name: "unknown command", give: []string{"start"}, wantErr: `unknown command "start" for "tokenbroker"`},
		{name: "help", give: []string{"help"}, wantStdout: "Administer a running broker"},
		{name: "-h", give: []string{"-h"}, wantStdout: "Usage:\n  tokenbroker [flags]"},
		{name: "--help", give: []string{"--help"}, wantStdout: "Exit codes:"},
		{name: "serve -h", give: []string{"serve", "-h"}, wantStdout: "--grpc-addr"},
		{name: "dev -h", give: []string{"dev", "-h"}, wantStdout: "--dev-api-key"},
		{name: "serve --help after a flag", give: []string{"serve", "--config", "/nonexistent", "--help"}, wantStdout: "--grpc-addr"},
		{name: "dev bad flag", give: []string{"dev", "--nope"}, wantErr: "unknown flag: --nope"},
		{name: "dev bad log level", give: []string{"dev", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--log-level", "loud"}, wantErr: `log.level "loud"`},
		{name: "dev bad key", give: []string{"dev", "--dev-api-key", "hunter2"}, wantErr: "--dev-api-key: apikey: invalid argument: not an API key"},
		{name: "a connection flag on serve", give: []string{"serve", "--addr", "x:1"}, wantErr: "serve: --addr applies to the admin commands only"},
		{name: "a connection flag before serve", give: []string{"-o", "json", "serve"}, wantErr: "serve: --output applies to the admin commands only"},
		{name: "a global flag before the command", give: []string{"--timeout", "0s", "provider", "list"}, wantErr: "--timeout 0s: want a positive duration"},
		{name: "group alone", give: []string{"keys"}, wantErr: "keys: missing subcommand (create-kek, generate, reseal)"},
		{name: "version", give: []string{"version"}, wantStdout: "tokenbroker "},
		{name: "version with an argument", give: []string{"version", "now"}, wantErr: `version: unexpected argument "now"`},
		{name: "completion bash", give: []string{"completion", "bash"}, wantStdout: "bash completion V2 for tokenbroker"},
		{name: "completion zsh", give: []string{"completion", "zsh"}, wantStdout: "#compdef tokenbroker"},
		{name: "completion fish", give: []string{"completion", "fish"}, wantStdout: "fish completion for tokenbroker"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr syncBuffer
			ctx, cancel := context.WithCancel(context.Background())
			cancel() // nothing here may get as far as serving
			err := run(ctx, tt.give, &stdout, &stderr, envMap(nil))
			gotErr := ""
			if err != nil {
				gotErr = err.Error()
			}
			if (tt.wantErr == "") != (err == nil) || !strings.Contains(gotErr, tt.wantErr) {
				t.Errorf("run(%q) = %v, want error containing %q", tt.give, err, tt.wantErr)
			}
			if !strings.Contains(stdout.String(), tt.wantStdout) {
				t.Errorf("run(%q) stdout = %q, want it to contain %q", tt.give, stdout.String(), tt.wantStdout)
			}
			if !strings.Contains(stderr.String(), tt.wantStderr) {
				t.Errorf("run(%q) stderr = %q, want it to contain %q", tt.give, stderr.String(), tt.wantStderr)
			}
		})
	}
}
