package app

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/oauth"
)

// envMap is a getenv backed by a map.
func envMap(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestDefaultConfigIsValid(t *testing.T) {
	cfg := DefaultConfig()
	if err := cfg.Validate(os.Getenv); err != nil {
		t.Fatalf("DefaultConfig().Validate() = %v, want nil", err)
	}
}

func TestDecodeConfigKeepsDefaultsOnEmptyFile(t *testing.T) {
	tests := []struct {
		name string
		give string
	}{
		{name: "empty", give: ""},
		{name: "blank lines", give: "\n  \n\t\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			if err := DecodeConfig(strings.NewReader(tt.give), &cfg); err != nil {
				t.Fatalf("DecodeConfig(%q) = %v, want nil", tt.give, err)
			}
			if want := DefaultConfig(); !reflect.DeepEqual(cfg, want) {
				t.Errorf("DecodeConfig(%q) got %+v, want the defaults %+v", tt.give, cfg, want)
			}
		})
	}
}

func TestDecodeConfigRejectsUnknownFields(t *testing.T) {
	tests := []struct {
		name string
		give string
		want string // the unknown field, named in the error
	}{
		{name: "top level", give: "grpc_adr: \":1\"\n", want: "grpc_adr"},
		{name: "in etcd", give: "etcd:\n  endpoint: [\"a:1\"]\n", want: "endpoint"},
		{name: "in log", give: "log:\n  lvl: debug\n", want: "lvl"},
		{name: "in a provider", give: "providers:\n  - name: a\n    clientid: x\n", want: "clientid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			err := DecodeConfig(strings.NewReader(tt.give), &cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("DecodeConfig(%q) = %v, want an error naming %q", tt.give, err, tt.want)
			}
		})
	}
}

func TestDecodeConfigRejectsMalformedValues(t *testing.T) {
	tests := []struct {
		name string
		give string
	}{
		{name: "not yaml", give: "grpc_addr: [\n"},
		{name: "duration without unit", give: "shutdown_timeout: 90\n"},
		{name: "bad duration", give: "default_min_ttl: soon\n"},
		{name: "list for a string", give: "data_dir: [a, b]\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			if err := DecodeConfig(strings.NewReader(tt.give), &cfg); err == nil {
				t.Fatalf("DecodeConfig(%q) = nil, want an error", tt.give)
			}
		})
	}
}

func TestDecodeConfigOverlaysDefaults(t *testing.T) {
	give := `
grpc_addr: 127.0.0.1:7000
data_dir: /var/lib/tb
default_min_ttl: 90s
shutdown_timeout: 2m30s
etcd:
  endpoints: ["10.0.0.1:2379", "10.0.0.2:2379"]
  prefix: /tb/
  dial_timeout: 1500ms
log:
  level: debug
providers:
  - name: mediahound
    token_url: https://auth.example.com/oauth2/token
    grant_token_urls:
      password: https://auth.example.com/oauth2/password
    client_id: svc
    client_secret_env: MH_SECRET
    client_auth_style: basic+post
    default_scopes: [read, write]
    token_params:
      audience: api
    grant_types: [client_credentials, password]
    default_token_lifetime: 30m
`
	want := DefaultConfig()
	want.GRPCAddr = "127.0.0.1:7000"
	want.DataDir = "/var/lib/tb"
	want.DefaultMinTTL = 90 * time.Second
	want.ShutdownTimeout = 150 * time.Second
	want.Etcd = EtcdConfig{Endpoints: []string{"10.0.0.1:2379", "10.0.0.2:2379"}, Prefix: "/tb/", DialTimeout: 1500 * time.Millisecond, RequestTimeout: time.Second}
	want.Log = LogConfig{Level: "debug", Format: "json"} // format keeps its default
	want.Providers = []ProviderConfig{{
		Name:                 "mediahound",
		TokenURL:             "https://auth.example.com/oauth2/token",
		GrantTokenURLs:       map[string]string{"password": "https://auth.example.com/oauth2/password"},
		ClientID:             "svc",
		ClientSecretEnv:      "MH_SECRET",
		ClientAuthStyle:      "basic+post",
		DefaultScopes:        []string{"read", "write"},
		TokenParams:          map[string]string{"audience": "api"},
		GrantTypes:           []string{"client_credentials", "password"},
		DefaultTokenLifetime: 30 * time.Minute,
	}}

	cfg := DefaultConfig()
	if err := DecodeConfig(strings.NewReader(give), &cfg); err != nil {
		t.Fatalf("DecodeConfig = %v, want nil", err)
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("DecodeConfig got\n%+v\nwant\n%+v", cfg, want)
	}
}

func TestApplyEnv(t *testing.T) {
	tests := []struct {
		name string
		give map[string]string
		want func(*Config)
	}{
		{name: "nothing set", give: nil, want: func(*Config) {}},
		{name: "empty values are ignored", give: map[string]string{"TOKENBROKER_GRPC_ADDR": "", "TOKENBROKER_ETCD_ENDPOINTS": ""}, want: func(*Config) {}},
		{name: "grpc addr", give: map[string]string{"TOKENBROKER_GRPC_ADDR": "127.0.0.1:1"}, want: func(c *Config) { c.GRPCAddr = "127.0.0.1:1" }},
		{name: "http addr", give: map[string]string{"TOKENBROKER_HTTP_ADDR": "127.0.0.1:2"}, want: func(c *Config) { c.HTTPAddr = "127.0.0.1:2" }},
		{name: "metrics addr", give: map[string]string{"TOKENBROKER_METRICS_ADDR": "0.0.0.0:9464"}, want: func(c *Config) { c.MetricsAddr = "0.0.0.0:9464" }},
		{name: "data dir", give: map[string]string{"TOKENBROKER_DATA_DIR": "/d"}, want: func(c *Config) { c.DataDir = "/d" }},
		{name: "log level", give: map[string]string{"TOKENBROKER_LOG_LEVEL": "debug"}, want: func(c *Config) { c.Log.Level = "debug" }},
		{name: "log format", give: map[string]string{"TOKENBROKER_LOG_FORMAT": "console"}, want: func(c *Config) { c.Log.Format = "console" }},
		{name: "etcd prefix", give: map[string]string{"TOKENBROKER_ETCD_PREFIX": "/p/"}, want: func(c *Config) { c.Etcd.Prefix = "/p/" }},
		{
			name: "etcd endpoints are split and trimmed",
			give: map[string]string{"TOKENBROKER_ETCD_ENDPOINTS": " a:1, ,b:2 ,"},
			want: func(c *Config) { c.Etcd.Endpoints = []string{"a:1", "b:2"} },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The file said something else for every field the environment may set.
			file := DefaultConfig()
			file.GRPCAddr, file.HTTPAddr, file.DataDir = "file:1", "file:2", "file-dir"
			file.Log = LogConfig{Level: "error", Format: "json"}
			file.Etcd.Prefix, file.Etcd.Endpoints = "/file/", []string{"file:2379"}

			want := file
			tt.want(&want)

			got := file
			applyEnv(&got, envMap(tt.give))
			if !reflect.DeepEqual(got, want) {
				t.Errorf("applyEnv(%v) got %+v, want %+v", tt.give, got, want)
			}
		})
	}
}

func TestValidateReportsEachProblem(t *testing.T) {
	tests := []struct {
		name string
		give func(*Config)
		want string
	}{
		{name: "grpc addr", give: func(c *Config) { c.GRPCAddr = "" }, want: "grpc_addr is empty"},
		{name: "http addr", give: func(c *Config) { c.HTTPAddr = "" }, want: "http_addr is empty"},
		{name: "metrics addr", give: func(c *Config) { c.MetricsAddr = "9464" }, want: `metrics_addr "9464" is not host:port`},
		{name: "data dir", give: func(c *Config) { c.DataDir = "" }, want: "data_dir is empty"},
		{name: "prefix", give: func(c *Config) { c.Etcd.Prefix = "tokenbroker/" }, want: "etcd.prefix must start with '/'"},
		{name: "min ttl", give: func(c *Config) { c.DefaultMinTTL = -time.Second }, want: "default_min_ttl must not be negative"},
		{name: "forced refresh interval", give: func(c *Config) { c.MinForcedRefreshInterval = -time.Second }, want: "min_forced_refresh_interval must not be negative"},
		{name: "session ttl too short", give: func(c *Config) { c.Refresher.SessionTTL = time.Second }, want: "refresher.session_ttl 1s must be whole seconds, at least 2s"},
		{name: "session ttl not whole seconds", give: func(c *Config) { c.Refresher.SessionTTL = 2500 * time.Millisecond }, want: "refresher.session_ttl 2.5s must be whole seconds"},
		{name: "no shard", give: func(c *Config) { c.Refresher.Shards = 0 }, want: "refresher.shards 0 must be between 1 and 256"},
		{name: "etcd request timeout", give: func(c *Config) { c.Etcd.RequestTimeout = time.Millisecond }, want: "etcd.request_timeout 1ms is shorter than 100ms"},
		{name: "log level", give: func(c *Config) { c.Log.Level = "loud" }, want: `log.level "loud"`},
		{name: "log format", give: func(c *Config) { c.Log.Format = "xml" }, want: `log.format "xml"`},
		{name: "auth style", give: func(c *Config) {
			c.Providers = []ProviderConfig{{Name: "a", TokenURL: "https://a.example/t", ClientID: "x", ClientAuthStyle: "digest"}}
		}, want: `client_auth_style "digest"`},
		{name: "token url", give: func(c *Config) {
			c.Providers = []ProviderConfig{{Name: "a", ClientID: "x"}}
		}, want: "providers[0].token_url is required"},
		{name: "provider name", give: func(c *Config) {
			c.Providers = []ProviderConfig{{Name: "Not A Name", TokenURL: "https://a.example/t", ClientID: "x"}}
		}, want: "providers[0]:"},
		{name: "declared twice", give: func(c *Config) {
			p := ProviderConfig{Name: "a", TokenURL: "https://a.example/t", ClientID: "x"}
			c.Providers = []ProviderConfig{p, p}
		}, want: `providers[1]: "a" is declared twice`},
		{name: "two secret sources", give: func(c *Config) {
			c.Providers = []ProviderConfig{{Name: "a", TokenURL: "https://a.example/t", ClientID: "x", ClientSecret: "s", ClientSecretFile: "/nonexistent"}}
		}, want: "set only one of client_secret, client_secret_env and client_secret_file"},
		{name: "missing secret file", give: func(c *Config) {
			c.Providers = []ProviderConfig{{Name: "a", TokenURL: "https://a.example/t", ClientID: "x", ClientSecretFile: filepath.Join(t.TempDir(), "missing")}}
		}, want: "client_secret_file:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tt.give(&cfg)
			err := cfg.Validate(os.Getenv)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate() = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestValidateReportsEveryProblemAtOnce(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Log.Level = "loud"
	cfg.Etcd.Prefix = "tokenbroker/"
	cfg.Providers = []ProviderConfig{
		{Name: "notokenurl", ClientID: "x", ClientSecret: "s"},
		{Name: "twosecrets", TokenURL: "https://a.example/t", ClientID: "x", ClientSecret: "s", ClientSecretEnv: "SOME_VAR"},
	}
	err := cfg.Validate(os.Getenv)
	if err == nil {
		t.Fatal("Validate() = nil, want an error")
	}
	for _, want := range []string{
		`log.level "loud"`,
		"etcd.prefix must start with '/'",
		"providers[0].token_url is required",
		"providers[1]: set only one of client_secret, client_secret_env and client_secret_file",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %q, want it to contain %q", err, want)
		}
	}
}

func TestValidateReadsSecretEnv(t *testing.T) {
	t.Setenv("TOKENBROKER_TEST_SECRET", "from-env")
	cfg := DefaultConfig()
	cfg.Providers = []ProviderConfig{{Name: "a", TokenURL: "https://a.example/t", ClientID: "x", ClientSecretEnv: "TOKENBROKER_TEST_SECRET"}}
	if err := cfg.Validate(os.Getenv); err != nil {
		t.Fatalf("Validate() = %v, want nil", err)
	}
	cfg.Providers[0].ClientSecretEnv = "TOKENBROKER_TEST_SECRET_UNSET"
	if err := cfg.Validate(os.Getenv); err == nil || !strings.Contains(err.Error(), "$TOKENBROKER_TEST_SECRET_UNSET is empty") {
		t.Errorf("Validate() = %v, want an error saying $TOKENBROKER_TEST_SECRET_UNSET is empty", err)
	}
}

func TestProviderSecret(t *testing.T) {
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "secret")
	if err := os.WriteFile(secretFile, []byte("  from-file\n\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := envMap(map[string]string{"MH_SECRET": "from-env"})

	tests := []struct {
		name    string
		give    ProviderConfig
		want    string
		wantErr string
	}{
		{name: "inline", give: ProviderConfig{ClientSecret: "inline"}, want: "inline"},
		{name: "env", give: ProviderConfig{ClientSecretEnv: "MH_SECRET"}, want: "from-env"},
		{name: "file is trimmed", give: ProviderConfig{ClientSecretFile: secretFile}, want: "from-file"},
		{name: "none keeps the stored secret", give: ProviderConfig{}, want: ""},
		{name: "empty env", give: ProviderConfig{ClientSecretEnv: "UNSET"}, wantErr: "client_secret_env: $UNSET is empty"},
		{name: "missing file", give: ProviderConfig{ClientSecretFile: filepath.Join(dir, "missing")}, wantErr: "client_secret_file:"},
		{name: "inline and env", give: ProviderConfig{ClientSecret: "a", ClientSecretEnv: "MH_SECRET"}, wantErr: "set only one of"},
		{name: "env and file", give: ProviderConfig{ClientSecretEnv: "MH_SECRET", ClientSecretFile: secretFile}, wantErr: "set only one of"},
		{name: "all three", give: ProviderConfig{ClientSecret: "a", ClientSecretEnv: "MH_SECRET", ClientSecretFile: secretFile}, wantErr: "set only one of"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.give.Name, tt.give.TokenURL, tt.give.ClientID = "mediahound", "https://auth.example.com/token", "svc"
			_, got, err := tt.give.provider(env)
			gotErr := ""
			if err != nil {
				gotErr = err.Error()
			}
			if got != tt.want || !strings.Contains(gotErr, tt.wantErr) || (tt.wantErr == "") != (err == nil) {
				t.Errorf("provider() secret = %q, err = %v; want %q, err containing %q", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestProviderConversion(t *testing.T) {
	pc := ProviderConfig{
		Name:                      "mediahound",
		TokenURL:                  "https://auth.example.com/oauth2/token",
		GrantTokenURLs:            map[string]string{"password": "https://auth.example.com/oauth2/password"},
		ClientID:                  "svc",
		ClientSecret:              "s3cret",
		ClientAuthStyle:           "basic+post",
		DefaultScopes:             []string{"read"},
		TokenParams:               map[string]string{"audience": "api"},
		GrantTypes:                []string{"client_credentials", "password"},
		DefaultTokenLifetime:      30 * time.Minute,
		RefreshRevokesAccessToken: ptr(false),
	}
	p, secret, err := pc.provider(envMap(nil))
	if err != nil {
		t.Fatalf("provider() = %v, want nil", err)
	}
	if secret != "s3cret" {
		t.Errorf("provider() secret = %q, want %q", secret, "s3cret")
	}
	tests := []struct {
		name string
		give any
		want any
	}{
		{name: "name", give: p.Name, want: "mediahound"},
		{name: "token url", give: p.TokenURL, want: pc.TokenURL},
		{name: "password url", give: p.TokenURLFor("password"), want: "https://auth.example.com/oauth2/password"},
		{name: "client id", give: p.ClientID, want: "svc"},
		{name: "auth", give: p.ClientAuth, want: oauth.AuthBasicAndPost},
		{name: "scopes", give: p.DefaultScopes, want: []string{"read"}},
		{name: "params", give: p.TokenParams, want: map[string]string{"audience": "api"}},
		{name: "allows password", give: p.Allows("password"), want: true},
		{name: "lifetime", give: p.DefaultTokenLifetime, want: 30 * time.Minute},
		{name: "revokes on refresh", give: p.RevokesOnRefresh(), want: false},
		// The secret travels apart from the provider.
		{name: "no secret in provider", give: p.ClientSecret, want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !reflect.DeepEqual(tt.give, tt.want) {
				t.Errorf("got %v, want %v", tt.give, tt.want)
			}
		})
	}

	t.Run("unset revocation is assumed, the mediahaven preset says so", func(t *testing.T) {
		unset, _, err := ProviderConfig{Name: "a", TokenURL: "https://a.example/t", ClientID: "x"}.provider(envMap(nil))
		if err != nil || unset.RefreshRevokesAccessToken != nil || !unset.RevokesOnRefresh() {
			t.Errorf("unset: refresh_revokes_access_token %v, revokes %t, err %v; want nil, true, nil", unset.RefreshRevokesAccessToken, unset.RevokesOnRefresh(), err)
		}
		haven, _, err := ProviderConfig{Name: "h", Preset: "mediahaven", BaseURL: "https://h.example", ClientID: "x"}.provider(envMap(nil))
		if err != nil || haven.RefreshRevokesAccessToken == nil || !*haven.RefreshRevokesAccessToken {
			t.Errorf("mediahaven preset: refresh_revokes_access_token %v, err %v; want true", haven.RefreshRevokesAccessToken, err)
		}
	})
	t.Run("default auth style is basic", func(t *testing.T) {
		p, _, err := ProviderConfig{Name: "a", TokenURL: "https://a.example/t", ClientID: "x"}.provider(envMap(nil))
		if err != nil || p.ClientAuth != oauth.AuthBasic {
			t.Errorf("provider() auth = %v, err = %v; want %v, nil", p.ClientAuth, err, oauth.AuthBasic)
		}
	})
}

func TestValidateBadAuthStyleKeepsOtherProviderProblems(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Providers = []ProviderConfig{{Name: "a", ClientID: "x", ClientAuthStyle: "digest"}}
	err := cfg.Validate(os.Getenv)
	for _, want := range []string{`client_auth_style "digest"`, "token_url is required"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want it to contain %q", err, want)
		}
	}
}

func TestDecodeConfigCommentOnlyFileKeepsDefaults(t *testing.T) {
	cfg := DefaultConfig()
	if err := DecodeConfig(strings.NewReader("# tokenbroker.yaml: nothing set yet\n"), &cfg); err != nil {
		t.Errorf("DecodeConfig(comments only) = %v, want nil", err)
	}
	if cfg.GRPCAddr != DefaultConfig().GRPCAddr {
		t.Errorf("grpc_addr = %q, want the default", cfg.GRPCAddr)
	}
}

func TestDecodeConfigRejectsSecondDocument(t *testing.T) {
	cfg := DefaultConfig()
	if err := DecodeConfig(strings.NewReader("grpc_addr: 127.0.0.1:1\n---\ngrpc_adr: 127.0.0.1:2\n"), &cfg); err == nil {
		t.Errorf("DecodeConfig(two documents) = nil, want an error")
	}
}

// ptr returns a pointer to v.
func ptr[T any](v T) *T { return &v }
