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
	goleak.VerifyTestMain(m)
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
		{name: "no args", give: nil, wantErr: "no command given", wantStderr: "usage: tokenbroker"},
		{name: "unknown command", give: []string{"start"}, wantErr: `unknown command "start"`, wantStderr: "usage: tokenbroker"},
		{name: "help", give: []string{"help"}, wantStdout: "usage: tokenbroker <command>"},
		{name: "-h", give: []string{"-h"}, wantStdout: "usage: tokenbroker <command>"},
		{name: "--help", give: []string{"--help"}, wantStdout: "commands:"},
		{name: "serve -h", give: []string{"serve", "-h"}, wantErr: "help requested", wantStderr: "-grpc-addr"},
		{name: "dev -h", give: []string{"dev", "-h"}, wantErr: "help requested", wantStderr: "-http-addr"},
		{name: "dev bad flag", give: []string{"dev", "--nope"}, wantErr: "nope"},
		{name: "dev bad log level", give: []string{"dev", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--log-level", "loud"}, wantErr: `log.level "loud"`},
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
