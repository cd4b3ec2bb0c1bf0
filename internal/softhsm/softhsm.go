// Package softhsm makes SoftHSM tokens for tests of the PKCS#11 support:
// each test gets a token directory of its own.
package softhsm

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/tokenbroker/tokenbroker/broker/seal/pkcs11"
)

// Module is where Debian's softhsm2 package puts the PKCS#11 library.
const Module = "/usr/lib/softhsm/libsofthsm2.so"

// Token initializes a SoftHSM token labelled label in a directory of the
// test's, points SOFTHSM2_CONF at it for the rest of the test, and returns
// the configuration that reaches it (the KEK label is "tokenbroker-kek";
// the key itself is not created). It fails the test when SoftHSM is not
// installed.
func Token(t testing.TB, label string) pkcs11.Config {
	t.Helper()
	if _, err := os.Stat(Module); err != nil {
		t.Fatalf("SoftHSM is not installed (%v): apt-get install softhsm2", err)
	}
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	if err := os.Mkdir(tokens, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	if err := os.WriteFile(conf, []byte("directories.tokendir = "+tokens+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", conf)
	const pin = "worldsbestpin"
	out, err := exec.Command("softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", "so-pin-1234", "--pin", pin).CombinedOutput()
	if err != nil {
		t.Fatalf("softhsm2-util --init-token: %v\n%s", err, out)
	}
	return pkcs11.Config{Module: Module, TokenLabel: label, PIN: pin, KeyLabel: "tokenbroker-kek"}
}
