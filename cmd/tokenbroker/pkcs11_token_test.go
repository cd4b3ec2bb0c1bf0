//go:build pkcs11

package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/app"
	"github.com/tokenbroker/tokenbroker/internal/softhsm"
)

// The master key from a PKCS#11 token, end to end: the KEK is created in
// the token, a master key is generated wrapped by it into the key file,
// and a broker started on that configuration seals a provider's secret
// that a broker started again opens. The key file holds no usable key.
func TestMasterKeyFromPKCS11Token(t *testing.T) {
	tok := softhsm.Token(t, "tokenbroker")
	env := map[string]string{"TB_PIN": tok.PIN, "SOFTHSM2_CONF": os.Getenv("SOFTHSM2_CONF")}
	getenv := func(k string) string { return env[k] }
	keyFile := filepath.Join(t.TempDir(), "master.keys")
	path := writeConfig(t, `
seal:
  key_file: `+keyFile+`
  pkcs11:
    module: `+tok.Module+`
    token_label: `+tok.TokenLabel+`
    key_label: `+tok.KeyLabel+`
    pin_env: TB_PIN
`)
	var out, errOut bytes.Buffer
	if err := run(t.Context(), []string{"keys", "create-kek", "--config", path}, &out, &errOut, getenv); err != nil {
		t.Fatalf("keys create-kek: %v\n%s", err, errOut.String())
	}
	out.Reset()
	if err := run(t.Context(), []string{"keys", "generate", "--id", "k1", "--config", path}, &out, &errOut, getenv); err != nil {
		t.Fatalf("keys generate: %v\n%s", err, errOut.String())
	}
	line := strings.TrimSpace(out.String())
	if !strings.HasPrefix(line, "k1:") || len(line) < 60 {
		t.Fatalf("keys generate printed %q, want a wrapped key line", line)
	}
	if err := os.WriteFile(keyFile, []byte(line+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	fake := startFake(t)
	dataDir := t.TempDir()
	start := func() (*app.App, func() error) {
		cfg, err := app.ReadConfig(path, getenv)
		if err != nil {
			t.Fatal(err)
		}
		base := appConfig(fake.url, dataDir)
		base.Seal, base.Keyring, base.Getenv = cfg.Seal, nil, getenv
		return startApp(t, base)
	}
	inst, stop := start()
	p, err := inst.Broker().GetProvider(t.Context(), providerName)
	if err != nil || p.ClientSecret != fakeClientSecret {
		t.Fatalf("GetProvider under the token's master key: %v", err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	again, _ := start()
	if p, err := again.Broker().GetProvider(t.Context(), providerName); err != nil || p.ClientSecret != fakeClientSecret {
		t.Fatalf("GetProvider after a restart: %v; want the secret sealed before to open", err)
	}
	// The plain key file is refused as a key: it holds only the wrapped key.
	cfg, _ := app.ReadConfig(path, getenv)
	cfg.Seal.PKCS11 = nil
	cfg.Getenv = getenv
	if _, err := cfg.MasterKeyring(nil); err == nil {
		t.Errorf("the key file read without the token opened as a master key; want it refused")
	}
}
