package app

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/oauth"
	"github.com/tokenbroker/tokenbroker/internal/fakes"
)

// TestConfigClientCertificateAndDeviceGrant: a provider declares its
// client certificate and key as files for tls_client_auth, and the device
// grant with its endpoint; a key of another certificate is refused
// without being quoted.
func TestConfigClientCertificateAndDeviceGrant(t *testing.T) {
	dir := t.TempDir()
	cert, other := fakes.NewClientCertificate(t, "tokenbroker"), fakes.NewClientCertificate(t, "other")
	for name, data := range map[string][]byte{"client.pem": cert.CertPEM, "client.key": cert.KeyPEM, "other.key": other.KeyPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	give := `
providers:
  - name: corp
    token_url: https://idp.example.com/token
    device_authorization_url: https://idp.example.com/device
    client_id: tokenbroker
    client_auth_style: tls_client_auth
    client_certificate_file: ` + filepath.Join(dir, "client.pem") + `
    client_certificate_key_file: ` + filepath.Join(dir, "client.key") + `
    grant_types: [device_code, refresh_token]
`
	cfg := decodeOne(t, give)
	p, _, err := cfg.Providers[0].provider(os.Getenv)
	if err != nil {
		t.Fatalf("provider: %v", err)
	}
	if p.ClientAuth != oauth.AuthTLSClientAuth || p.ClientCertificate != string(cert.CertPEM) || p.ClientCertificateKey != string(cert.KeyPEM) ||
		p.DeviceAuthorizationURL != "https://idp.example.com/device" || !p.Allows(broker.GrantDeviceCode) {
		t.Errorf("provider = auth %v, device URL %q, grants %v, certificate set %v, key set %v",
			p.ClientAuth, p.DeviceAuthorizationURL, p.GrantTypes, p.ClientCertificate != "", p.ClientCertificateKey != "")
	}

	cfg.Providers[0].ClientCertificateKeyFile = filepath.Join(dir, "other.key")
	_, _, err = cfg.Providers[0].provider(os.Getenv)
	if err == nil || !strings.Contains(err.Error(), "private key does not match public key") {
		t.Fatalf("provider with another certificate's key = %v, want a mismatch", err)
	}
	if strings.Contains(err.Error(), string(other.KeyPEM[40:70])) {
		t.Errorf("error %q quotes the key", err)
	}
}

// TestConfigTokenExchange: a provider declares a token exchange whose
// subject token is a projected service-account token.
func TestConfigTokenExchange(t *testing.T) {
	give := `
providers:
  - name: sts
    token_url: https://sts.example.com/token
    client_id: tokenbroker
    client_secret: s
    grant_types: [token_exchange]
    token_exchange:
      subject_token_file: /var/run/secrets/tokens/sts
      requested_token_type: urn:ietf:params:oauth:token-type:access_token
      audience: [orders]
      resource: [https://orders.example.com/]
`
	cfg := decodeOne(t, give)
	p, _, err := cfg.Providers[0].provider(os.Getenv)
	if err != nil {
		t.Fatalf("provider: %v", err)
	}
	want := broker.TokenExchange{SubjectTokenFile: "/var/run/secrets/tokens/sts", RequestedTokenType: broker.TokenTypeAccessToken,
		Audience: []string{"orders"}, Resource: []string{"https://orders.example.com/"}}
	if !p.Allows(broker.GrantTokenExchange) || p.TokenExchange == nil || !reflect.DeepEqual(*p.TokenExchange, want) {
		t.Errorf("provider grants %v, token exchange %+v; want token_exchange and %+v", p.GrantTypes, p.TokenExchange, want)
	}
	cfg.Providers[0].TokenExchange.SubjectProvider = "other"
	if _, _, err := cfg.Providers[0].provider(os.Getenv); err == nil || !strings.Contains(err.Error(), "exactly one of subject_provider and subject_token_file") {
		t.Errorf("provider with two subject sources = %v, want an error", err)
	}
}

// decodeOne decodes a config file that declares providers.
func decodeOne(t *testing.T, give string) Config {
	t.Helper()
	cfg := DefaultConfig()
	if err := DecodeConfig(strings.NewReader(give), &cfg); err != nil {
		t.Fatalf("DecodeConfig: %v", err)
	}
	return cfg
}
