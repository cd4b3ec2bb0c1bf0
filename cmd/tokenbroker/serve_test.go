package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// envMap is a getenv backed by a map.
func envMap(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// writeConfig writes a config file and returns its path.
func writeConfig(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tokenbroker.yaml")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestRunServeRejectsBadConfig runs `serve` with configurations that must
// fail before anything starts: none of them names a usable listen address,
// so a start would be noticed as an error of another kind or a hang.
func TestRunServeRejectsBadConfig(t *testing.T) {
	unknownField := writeConfig(t, "grpc_addr: 127.0.0.1:0\nhttp_addr: 127.0.0.1:0\nmetrics_addr: 127.0.0.1:0\nlisten: everywhere\n")
	invalid := writeConfig(t, "grpc_addr: 127.0.0.1:0\nhttp_addr: 127.0.0.1:0\nmetrics_addr: 127.0.0.1:0\nlog:\n  level: loud\netcd:\n  prefix: nope\nproviders:\n  - name: a\n    client_id: x\n")
	missing := filepath.Join(t.TempDir(), "missing.yaml")

	tests := []struct {
		name string
		give []string
		env  map[string]string
		want []string
	}{
		{name: "unknown field", give: []string{"serve", "--config", unknownField}, want: []string{unknownField, "listen"}},
		{name: "invalid values", give: []string{"serve", "--config", invalid}, want: []string{"invalid configuration", `log.level "loud"`, "etcd.prefix", "token_url is required"}},
		{name: "config from the environment", give: []string{"serve"}, env: map[string]string{"TOKENBROKER_CONFIG": unknownField}, want: []string{"listen"}},
		{name: "missing file", give: []string{"serve", "--config", missing}, want: []string{missing}},
		{name: "unknown flag", give: []string{"serve", "--bogus"}, want: []string{"bogus"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr syncBuffer
			ctx, cancel := context.WithCancel(t.Context())
			cancel() // a run that got as far as serving would return at once
			err := run(ctx, tt.give, &stdout, &stderr, envMap(tt.env))
			if err == nil {
				t.Fatalf("run(%q) = nil, want an error", tt.give)
			}
			for _, want := range tt.want {
				if !strings.Contains(err.Error(), want) && !strings.Contains(stderr.String(), want) {
					t.Errorf("run(%q) = %q (stderr %q), want it to mention %q", tt.give, err, stderr.String(), want)
				}
			}
		})
	}
}

// TestRunServePrecedence checks flag > environment > file on the log level,
// with a configuration that stays invalid otherwise so that nothing starts.
func TestRunServePrecedence(t *testing.T) {
	path := writeConfig(t, "grpc_addr: 127.0.0.1:0\nhttp_addr: 127.0.0.1:0\nmetrics_addr: 127.0.0.1:0\nlog:\n  level: from-file\netcd:\n  prefix: nope\n")
	tests := []struct {
		name string
		give []string
		env  map[string]string
		want string
	}{
		{name: "file", give: []string{"serve", "--config", path}, want: `log.level "from-file"`},
		{name: "env over file", give: []string{"serve", "--config", path}, env: map[string]string{"TOKENBROKER_LOG_LEVEL": "from-env"}, want: `log.level "from-env"`},
		{name: "flag over env", give: []string{"serve", "--config", path, "--log-level", "from-flag"}, env: map[string]string{"TOKENBROKER_LOG_LEVEL": "from-env"}, want: `log.level "from-flag"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr syncBuffer
			ctx, cancel := context.WithCancel(t.Context())
			cancel()
			err := run(ctx, tt.give, &stdout, &stderr, envMap(tt.env))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("run(%q) with env %v = %v, want an error containing %q", tt.give, tt.env, err, tt.want)
			}
		})
	}
}

func TestRunServeUsesGivenGetenvForSecrets(t *testing.T) {
	path := writeConfig(t, "etcd:\n  prefix: nope\nproviders:\n  - name: a\n    client_id: x\n    token_url: https://a.example/t\n    client_secret_env: TB_TEST_ONLY_IN_GETENV\n")
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	err := run(ctx, []string{"serve", "--config", path}, new(syncBuffer), new(syncBuffer), envMap(map[string]string{"TB_TEST_ONLY_IN_GETENV": "s3cret"}))
	if err == nil || strings.Contains(err.Error(), "TB_TEST_ONLY_IN_GETENV") || !strings.Contains(err.Error(), "etcd.prefix") {
		t.Errorf("run(serve) = %v, want only the etcd.prefix problem", err)
	}
}
