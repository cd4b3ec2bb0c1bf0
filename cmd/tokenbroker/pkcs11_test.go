//go:build !pkcs11

package main

import (
	"bytes"
	"errors"
	"testing"

	"github.com/tokenbroker/tokenbroker/app"
	"github.com/tokenbroker/tokenbroker/broker/seal/pkcs11"
)

// A binary built without the pkcs11 tag refuses a configuration that asks
// for a PKCS#11 token, saying how to get one that supports it.
func TestPKCS11NeedsTheBuildTag(t *testing.T) {
	getenv := func(k string) string { return map[string]string{"PIN": "1234"}[k] }
	path := writeConfig(t, `
seal:
  key_file: /nonexistent/master.keys
  pkcs11: {module: /usr/lib/softhsm/libsofthsm2.so, token_label: t, key_label: k, pin_env: PIN}
`)
	cfg, err := app.ReadConfig(path, getenv)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Getenv = getenv
	if _, err := cfg.MasterKeyring(nil); !errors.Is(err, pkcs11.ErrNotBuilt) {
		t.Errorf("the master key with seal.pkcs11 in a build without it: %v, want ErrNotBuilt", err)
	}
	var out, errOut bytes.Buffer
	if err := run(t.Context(), []string{"keys", "create-kek", "--config", path}, &out, &errOut, getenv); !errors.Is(err, pkcs11.ErrNotBuilt) {
		t.Errorf("keys create-kek in a build without PKCS#11 = %v, want ErrNotBuilt", err)
	}
}
