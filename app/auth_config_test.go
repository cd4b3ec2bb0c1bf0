package app

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestDecodeConfigSecuritySections(t *testing.T) {
	give := `
auth:
  api_keys:
    - id: abcdefghijkl
      identity: first-admin
      sha256: 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
  policy:
    - identities: ["spiffe://corp/billing/*"]
      providers: [stripe]
      accounts: ["", "ops-*"]
      actions: [token, introspect]
    - identities: [first-admin]
      actions: [admin]
  rate_limit: {rps: 50, burst: 100}
  unauthenticated_rate_limit: {rps: 0.5, burst: 5}
tls:
  cert_file: /etc/tb/server.crt
  key_file: /etc/tb/server.key
  client_ca_file: /etc/tb/clients-ca.crt
seal:
  key_file: /etc/tb/master.key
`
	want := DefaultConfig()
	want.Auth = AuthConfig{
		APIKeys: []APIKeyConfig{{ID: "abcdefghijkl", Identity: "first-admin", SHA256: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}},
		Policy: []PolicyRule{
			{Identities: []string{"spiffe://corp/billing/*"}, Providers: []string{"stripe"}, Accounts: []string{"", "ops-*"}, Actions: []string{"token", "introspect"}},
			{Identities: []string{"first-admin"}, Actions: []string{"admin"}},
		},
		RateLimit:                RateLimitConfig{RPS: 50, Burst: 100},
		UnauthenticatedRateLimit: RateLimitConfig{RPS: 0.5, Burst: 5},
	}
	want.TLS = TLSConfig{CertFile: "/etc/tb/server.crt", KeyFile: "/etc/tb/server.key", ClientCAFile: "/etc/tb/clients-ca.crt"}
	want.Seal = SealConfig{KeyFile: "/etc/tb/master.key"}
	cfg := DefaultConfig()
	if err := DecodeConfig(strings.NewReader(give), &cfg); err != nil {
		t.Fatalf("DecodeConfig = %v", err)
	}
	if fmt.Sprintf("%+v", cfg) != fmt.Sprintf("%+v", want) {
		t.Errorf("DecodeConfig got\n%+v\nwant\n%+v", cfg, want)
	}
	if err := cfg.Validate(envMap(nil)); err != nil {
		t.Errorf("Validate = %v, want nil", err)
	}
	p, err := cfg.Auth.policy()
	if err != nil || !p.Allow("spiffe://corp/billing/eu", "token", "stripe", "ops-1") || p.Allow("spiffe://corp/billing/eu", "admin", "", "") {
		t.Errorf("policy from the file = %v, %v; want billing to get stripe tokens and no admin", p, err)
	}

	for _, unknown := range []string{"auth:\n  apikeys: []\n", "auth:\n  policy:\n    - {identity: [a], actions: [token]}\n", "tls:\n  cert: x\n", "seal:\n  keyfile: x\n"} {
		if err := DecodeConfig(strings.NewReader(unknown), new(Config)); err == nil {
			t.Errorf("DecodeConfig(%q) = nil, want an unknown-field error", unknown)
		}
	}
}

// FuzzDecodeAuthConfig: no configuration file makes decoding or the auth
// section's validation panic.
func FuzzDecodeAuthConfig(f *testing.F) {
	f.Add("auth:\n  api_keys:\n    - {id: abcdefghijkl, identity: a, sha256: " + strings.Repeat("0", 64) + "}\n")
	f.Add("auth:\n  policy:\n    - {identities: ['*'], providers: ['a*b*'], actions: [token]}\n  rate_limit: {rps: 1e308, burst: -1}\n")
	f.Add("tls: {cert_file: a}\nseal: {key_file: b}\n")
	f.Fuzz(func(t *testing.T, data string) {
		// A config is small: decoding and validating one must never take
		// long, whatever it holds.
		done := make(chan string, 1)
		go func() {
			cfg := DefaultConfig()
			if DecodeConfig(strings.NewReader(data), &cfg) != nil {
				done <- ""
				return
			}
			if errs := cfg.Auth.validate(false); len(errs) == 0 {
				if _, err := cfg.Auth.policy(); err != nil {
					done <- fmt.Sprintf("validate accepted a policy that policy() rejects: %v", err)
					return
				}
			}
			done <- ""
		}()
		select {
		case msg := <-done:
			if msg != "" {
				t.Error(msg)
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("decoding and validating %d bytes took over 2s", len(data))
		}
	})
}
