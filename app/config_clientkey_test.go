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

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/oauth"
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
