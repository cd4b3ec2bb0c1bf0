package app

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/oauth"
	"github.com/tokenbroker/tokenbroker/internal/testkeys"
)

func TestProviderConfigPrivateKeyJWT(t *testing.T) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "client.pem")
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	pc := ProviderConfig{Name: "a", TokenURL: "https://a.example/t", ClientID: "x", ClientAuthStyle: "private_key_jwt",
		ClientKeyFile: file, ClientAssertionAudience: "https://a.example"}
	p, _, err := pc.provider(envMap(nil))
	if err != nil {
		t.Fatalf("provider() = %v, want nil", err)
	}
	if p.ClientAuth != oauth.AuthPrivateKeyJWT || len(p.ClientKeys) != 1 || p.ClientKeys[0].Algorithm != broker.KeyES256 || p.AssertionAudience != "https://a.example" {
		t.Errorf("provider() = auth %v, keys %v, aud %q; want private_key_jwt with the ES256 key of the file", p.ClientAuth, p.ClientKeys, p.AssertionAudience)
	}

	pc.ClientKeyAlgorithm = "RS256"
	_, _, err = pc.provider(envMap(nil))
	if err == nil || !strings.Contains(err.Error(), "client_key_file") || strings.Contains(err.Error(), "PRIVATE KEY") {
		t.Errorf("provider() with a P-256 key for RS256 = %v, want a client_key_file error without the key", err)
	}
}

// The JWT-bearer grant from the file: a generic provider with its
// assertion's claims, and a Google service account from its key file,
// whose private key is never quoted in an error.
func TestProviderConfigJWTBearer(t *testing.T) {
	dir := t.TempDir()
	saFile := filepath.Join(dir, "sa.json")
	sa, _, _ := testkeys.NewServiceAccountKey("kid-1", "https://oauth2.googleapis.com/token")
	if err := os.WriteFile(saFile, sa, 0o600); err != nil {
		t.Fatal(err)
	}
	damaged := filepath.Join(dir, "damaged.json")
	if err := os.WriteFile(damaged, []byte(strings.Replace(string(sa), "MII", "MIX", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	var cfg Config
	err := DecodeConfig(strings.NewReader(`
providers:
  - name: corp
    token_url: https://idp.example/oauth2/token
    client_id: tokenbroker
    client_auth_style: none
    grant_types: [jwt-bearer]
    jwt_bearer: {issuer: https://broker.example, subject: svc-reporting, audience: https://idp.example, lifetime: 2m}
  - name: gcp
    preset: google-service-account
    service_account_key_file: `+saFile+`
    default_scopes: [https://www.googleapis.com/auth/cloud-platform]
  - name: gcp-damaged
    preset: google-service-account
    service_account_key_file: `+damaged+`
`), &cfg)
	if err != nil {
		t.Fatalf("DecodeConfig: %v", err)
	}
	corp, _, err := cfg.Providers[0].provider(envMap(nil))
	if err != nil {
		t.Fatalf("provider(corp): %v", err)
	}
	wantJ := broker.JWTBearer{Issuer: "https://broker.example", Subject: "svc-reporting", Audience: "https://idp.example", Lifetime: 2 * time.Minute}
	if corp.ClientAuth != oauth.AuthNone || !corp.Allows(broker.GrantJWTBearer) || corp.JWTBearer != wantJ {
		t.Errorf("provider(corp) = auth %v, grants %v, jwt_bearer %+v; want none, jwt-bearer, %+v", corp.ClientAuth, corp.GrantTypes, corp.JWTBearer, wantJ)
	}
	gcp, _, err := cfg.Providers[1].provider(envMap(nil))
	if err != nil {
		t.Fatalf("provider(gcp): %v", err)
	}
	if gcp.TokenURL != "https://oauth2.googleapis.com/token" || gcp.JWTBearer.Issuer != "reporter@demo-project.iam.gserviceaccount.com" ||
		!gcp.JWTBearer.ScopeClaim || len(gcp.ClientKeys) != 1 || gcp.ClientKeys[0].KeyID != "kid-1" || gcp.ClientAuth != oauth.AuthNone {
		t.Errorf("provider(gcp) = %+v, want Google's token URL, the client_email as issuer, the scope claim and the key kid-1", gcp)
	}
	_, _, err = cfg.Providers[2].provider(envMap(nil))
	if err == nil || !strings.Contains(err.Error(), "service_account_key_file") || strings.Contains(err.Error(), "MIX") {
		t.Errorf("provider(gcp-damaged) = %v, want a service_account_key_file error without the key", err)
	}
}
