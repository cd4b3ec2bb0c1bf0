package app

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

const configWebhookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" // 24 bytes

func TestValidateWebhooks(t *testing.T) {
	good := WebhookConfig{ID: "oncall", URL: "https://hooks.example.com/tb", SecretEnv: "HOOK_SECRET"}
	with := func(f func(*WebhookConfig)) []WebhookConfig {
		w := good
		f(&w)
		return []WebhookConfig{w}
	}
	env := envMap(map[string]string{"HOOK_SECRET": configWebhookSecret, "BAD_SECRET": "not-a-whsec-secret-value"})
	tests := []struct {
		name string
		give func(*Config)
		want string // "" for valid
	}{
		{name: "valid", give: func(c *Config) { c.Webhooks = []WebhookConfig{good} }},
		{name: "secret file", give: func(c *Config) {
			path := filepath.Join(t.TempDir(), "secret")
			if err := os.WriteFile(path, []byte(configWebhookSecret+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			c.Webhooks = with(func(w *WebhookConfig) { w.SecretEnv, w.SecretFile = "", path })
		}},
		{name: "no secret", give: func(c *Config) { c.Webhooks = with(func(w *WebhookConfig) { w.SecretEnv = "" }) },
			want: "webhooks[0]: set one of secret_env and secret_file"},
		{name: "two secret sources", give: func(c *Config) { c.Webhooks = with(func(w *WebhookConfig) { w.SecretFile = "/x" }) },
			want: "webhooks[0]: set one of secret_env and secret_file"},
		{name: "empty secret env", give: func(c *Config) { c.Webhooks = with(func(w *WebhookConfig) { w.SecretEnv = "UNSET_SECRET" }) },
			want: "secret_env: $UNSET_SECRET is empty"},
		{name: "secret not whsec_", give: func(c *Config) { c.Webhooks = with(func(w *WebhookConfig) { w.SecretEnv = "BAD_SECRET" }) },
			want: "webhook secret must start with whsec_"},
		{name: "plain http elsewhere", give: func(c *Config) { c.Webhooks = with(func(w *WebhookConfig) { w.URL = "http://hooks.example.com/tb" }) },
			want: "url: scheme must be https"},
		{name: "plain http loopback without the dev flag", give: func(c *Config) { c.Webhooks = with(func(w *WebhookConfig) { w.URL = "http://127.0.0.1:9/tb" }) },
			want: "plain http is refused"},
		{name: "unknown event type", give: func(c *Config) {
			c.Webhooks = with(func(w *WebhookConfig) { w.EventTypes = []string{"grant.exploded"} })
		}, want: `unknown event type "grant.exploded"`},
		{name: "declared twice", give: func(c *Config) { c.Webhooks = []WebhookConfig{good, good} }, want: `webhooks[1]: "oncall" is declared twice`},
		{name: "schedule", give: func(c *Config) { c.Events.WebhookDelivery.Schedule = []time.Duration{time.Second, 0} },
			want: "events.webhook_delivery.schedule[1] 0s must be above 0"},
		{name: "schedule too long", give: func(c *Config) { c.Events.WebhookDelivery.Schedule = []time.Duration{8 * 24 * time.Hour} },
			want: "adds up to 192h0m0s, at most 168h0m0s"},
		{name: "retention", give: func(c *Config) { c.Events.Retention = -1 }, want: "events.retention -1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tt.give(&cfg)
			err := cfg.Validate(env)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Validate() = %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("Validate() = %v, want an error containing %q", err, tt.want)
			case err != nil && strings.Contains(err.Error(), "MfKQ9r8GKYqrTwjU"):
				t.Errorf("Validate() quotes the secret: %v", err)
			}
		})
	}
}

// The events and webhooks sections decode from YAML as documented.
func TestDecodeWebhooksSection(t *testing.T) {
	const doc = `
events:
  retention: 5000
  max_age: 72h
  watch_buffer: 64
  webhook_delivery:
    schedule: [1s, 1m, 1h]
    timeout: 5s
    breaker_threshold: 20
    breaker_pause: 10m
webhooks:
  - id: oncall
    url: https://hooks.example.com/tokenbroker
    event_types: [grant.reauthorization_required, grant.recovered]
    providers: [mediahaven]
    secret_env: ONCALL_WEBHOOK_SECRET
`
	cfg := DefaultConfig()
	if err := DecodeConfig(strings.NewReader(doc), &cfg); err != nil {
		t.Fatal(err)
	}
	want := WebhookConfig{ID: "oncall", URL: "https://hooks.example.com/tokenbroker", EventTypes: []string{"grant.reauthorization_required", "grant.recovered"},
		Providers: []string{"mediahaven"}, SecretEnv: "ONCALL_WEBHOOK_SECRET"}
	if len(cfg.Webhooks) != 1 || !equalYAML(t, cfg.Webhooks[0], want) {
		t.Errorf("webhooks = %+v, want %+v", cfg.Webhooks, want)
	}
	d := cfg.Events.WebhookDelivery
	if cfg.Events.Retention != 5000 || cfg.Events.MaxAge != 72*time.Hour || cfg.Events.WatchBuffer != 64 ||
		len(d.Schedule) != 3 || d.Schedule[2] != time.Hour || d.Timeout != 5*time.Second || d.BreakerThreshold != 20 || d.BreakerPause != 10*time.Minute {
		t.Errorf("events = %+v", cfg.Events)
	}
	if err := cfg.Validate(envMap(map[string]string{"ONCALL_WEBHOOK_SECRET": configWebhookSecret})); err != nil {
		t.Errorf("Validate() = %v, want nil", err)
	}
}

func equalYAML(t *testing.T, a, b any) bool {
	t.Helper()
	x, err := yaml.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := yaml.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return string(x) == string(y)
}
