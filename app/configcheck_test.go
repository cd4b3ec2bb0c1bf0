package app

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/tokenbroker/tokenbroker/broker/seal"
	"github.com/tokenbroker/tokenbroker/internal/testkeys"
)

// TestDecodeConfigReportsEveryProblem: one decode reports every unknown
// field with the nearest known name, and every bad value with the format
// expected, each with its field path and line.
func TestDecodeConfigReportsEveryProblem(t *testing.T) {
	file := `grpc_adr: ":9090"
default_min_ttl: 60
refresher:
  shards: many
providers:
  - name: a
    client_secret_evn: X
    pkce: sometimes
    default_scopes: read
tracing: on
`
	cfg := DefaultConfig()
	err := DecodeConfig(strings.NewReader(file), &cfg)
	var ps Problems
	if !errors.As(err, &ps) {
		t.Fatalf("DecodeConfig = %v, want Problems", err)
	}
	want := []string{
		`line 1: unknown field "grpc_adr" (did you mean "grpc_addr"?)`,
		`line 2: default_min_ttl: "60" is not a duration: a number with a unit, e.g. 60s, 5m or 1h30m`,
		`line 4: refresher.shards: "many" is not a whole number`,
		`line 7: providers[0]: unknown field "client_secret_evn" (did you mean "client_secret_env"?)`,
		`line 8: providers[0].pkce: "sometimes" is not a boolean: true or false`,
		`line 9: providers[0].default_scopes: want a list (- item lines, or [a, b]), not "read"`,
		`line 10: tracing: want a mapping of fields (name: value lines), not "on"`,
	}
	got := strings.Split(ps.Error(), "\n")
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("DecodeConfig problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestNearest(t *testing.T) {
	tests := []struct{ give, want string }{
		{"grpc_adr", "grpc_addr"},
		{"redirect_uri", "redirect_uri"},
		{"clientid", "client_id"},
		{"zzzzzz", ""},
	}
	for _, tt := range tests {
		if got := nearest(tt.give, []string{"grpc_addr", "http_addr", "client_id", "redirect_uri"}); got != tt.want {
			t.Errorf("nearest(%q) = %q, want %q", tt.give, got, tt.want)
		}
	}
}

// TestRedirectURLIsDeprecated: the former name is read as redirect_uri,
// with a warning; both at once is a problem.
func TestRedirectURLIsDeprecated(t *testing.T) {
	cfg := DefaultConfig()
	err := DecodeConfig(strings.NewReader("providers:\n  - name: a\n    redirect_url: https://b.example/cb\n"), &cfg)
	if err != nil || len(cfg.Providers) != 1 || cfg.Providers[0].RedirectURI != "https://b.example/cb" {
		t.Fatalf("DecodeConfig with redirect_url = %v, %+v; want redirect_uri set", err, cfg.Providers)
	}
	if len(cfg.Deprecations) != 1 || !strings.Contains(cfg.Deprecations[0], "line 3: providers[0].redirect_url is deprecated: write redirect_uri") {
		t.Errorf("Deprecations = %q, want the line and the new name", cfg.Deprecations)
	}
	cfg = DefaultConfig()
	err = DecodeConfig(strings.NewReader("providers:\n  - name: a\n    redirect_uri: https://b.example/cb\n    redirect_url: https://c.example/cb\n"), &cfg)
	if err == nil || !strings.Contains(err.Error(), "set only redirect_uri") {
		t.Errorf("DecodeConfig with both names = %v, want a problem", err)
	}
}

// TestValidateProblemsHaveFieldPaths: semantic problems carry the field's
// path, a provider's own included.
func TestValidateProblemsHaveFieldPaths(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Providers = []ProviderConfig{{Name: "a", TokenURL: "https://a.example/t", ClientID: "x", ClientSecretEnv: "TB_UNSET_SECRET"}}
	err := cfg.Validate(envMap(nil))
	var ps Problems
	if !errors.As(err, &ps) || len(ps) != 1 || ps[0].Path != "providers[0].client_secret_env" {
		t.Fatalf("Validate = %#v, want one problem at providers[0].client_secret_env", err)
	}
}

// TestCheckAgreesWithStart: over configurations that serve accepts and
// refuses for reasons of the machine (master key, TLS files, auth, listen
// address, data directory), Check passes exactly when Start starts.
func TestCheckAgreesWithStart(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "master.keys")
	if err := os.WriteFile(keyFile, []byte(seal.FormatKey(testkeys.Primary)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	aFile := filepath.Join(dir, "a-file")
	if err := os.WriteFile(aFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	const key = "auth:\n  api_keys:\n    - {id: abcdefghijkl, identity: admin, sha256: 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef}\n"
	tests := []struct {
		name   string
		give   string
		wantOK bool
	}{
		{"valid", "seal:\n  key_file: " + keyFile + "\n" + key, true},
		{"no master key", key, false},
		{"missing key file", "seal:\n  key_file: " + filepath.Join(dir, "missing.keys") + "\n" + key, false},
		{"TLS files that are no PEM", "seal:\n  key_file: " + keyFile + "\ntls:\n  cert_file: " + notPEM + "\n  key_file: " + notPEM + "\n" + key, false},
		{"nobody can authenticate", "seal:\n  key_file: " + keyFile + "\n", false},
		{"bad listen address", "grpc_addr: nonsense\nseal:\n  key_file: " + keyFile + "\n" + key, false},
		{"data dir under a file", "data_dir: " + filepath.Join(aFile, "data") + "\nseal:\n  key_file: " + keyFile + "\n" + key, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.GRPCAddr, cfg.HTTPAddr, cfg.MetricsAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
			cfg.DataDir = t.TempDir()
			if err := DecodeConfig(strings.NewReader(tt.give), &cfg); err != nil {
				t.Fatal(err)
			}
			cfg.Getenv = envMap(nil)
			checkErr := cfg.Check(envMap(nil))
			var startErr error
			if checkErr == nil || !tt.wantOK {
				a, err := Start(t.Context(), cfg, zaptest.NewLogger(t))
				if err == nil {
					startErr = a.Close()
				} else {
					startErr = err
				}
			}
			t.Logf("Check: %v; Start: %v", checkErr, startErr)
			if (checkErr == nil) != tt.wantOK {
				t.Errorf("Check = %v, want ok %v", checkErr, tt.wantOK)
			}
			if (checkErr == nil) != (startErr == nil) {
				t.Errorf("Check = %v but Start = %v: they disagree", checkErr, startErr)
			}
			if checkErr != nil && !strings.Contains(fmt.Sprint(checkErr), ":") {
				t.Errorf("Check = %v, want it to name the field", checkErr)
			}
		})
	}
}
