//go:build pkcs11

package pkcs11_test

import (
	"bytes"
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/broker/seal"
	"github.com/tokenbroker/tokenbroker/broker/seal/pkcs11"
	"github.com/tokenbroker/tokenbroker/internal/softhsm"
)

// A master key wrapped by the token's KEK opens into the same keyring as
// the plain key: what one seals, the other opens.
func TestWrappedKeyFileOpensThroughTheToken(t *testing.T) {
	cfg := softhsm.Token(t, "tokenbroker")
	if err := pkcs11.CreateKEK(cfg); err != nil {
		t.Fatalf("CreateKEK: %v", err)
	}
	if err := pkcs11.CreateKEK(cfg); err == nil {
		t.Errorf("CreateKEK a second time = nil, want an error: the key exists")
	}
	h, err := pkcs11.Open(cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer h.Close()
	plain, err := seal.GenerateKey("k1")
	if err != nil {
		t.Fatal(err)
	}
	wrapped, err := h.Wrap("k1", plain.Secret)
	if err != nil {
		t.Fatalf("Wrap: %v", err)
	}
	if bytes.Contains(wrapped, plain.Secret) {
		t.Fatal("the wrapped key contains the key")
	}
	file := filepath.Join(t.TempDir(), "master.keys")
	line := "k1:" + base64.StdEncoding.EncodeToString(wrapped) + "\n"
	if err := os.WriteFile(file, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	kr, err := seal.LoadWrappedKeyFile(file, h)
	if err != nil {
		t.Fatalf("LoadWrappedKeyFile: %v", err)
	}
	direct, err := seal.NewKeyring(plain)
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := kr.Seal("/tokenbroker/providers/p#client_secret", []byte("s3cret"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := direct.Open("/tokenbroker/providers/p#client_secret", sealed); err != nil || string(got) != "s3cret" {
		t.Errorf("the plain key opens what the unwrapped one sealed: %q, %v; want s3cret", got, err)
	}

	// Bound to its id: the same wrapped key under another id does not open.
	if _, err := seal.ParseWrappedKeyEnv("k2:"+base64.StdEncoding.EncodeToString(wrapped), h); err == nil {
		t.Errorf("a wrapped key moved to another id opened")
	}
	// Tampered.
	bad := bytes.Clone(wrapped)
	bad[len(bad)-1] ^= 1
	if _, err := seal.ParseWrappedKeyEnv("k1:"+base64.StdEncoding.EncodeToString(bad), h); err == nil {
		t.Errorf("a tampered wrapped key opened")
	}
}

// Open fails, naming what is wrong and never the PIN, on a wrong PIN, an
// unknown token or key, and a missing module.
func TestOpenRefusesWhatIsWrong(t *testing.T) {
	good := softhsm.Token(t, "tokenbroker")
	if err := pkcs11.CreateKEK(good); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		edit func(*pkcs11.Config)
		want string
	}{
		{name: "wrong PIN", edit: func(c *pkcs11.Config) { c.PIN = "000000" }, want: "log in"},
		{name: "unknown token", edit: func(c *pkcs11.Config) { c.TokenLabel = "nope" }, want: `no token labelled "nope"`},
		{name: "unknown key", edit: func(c *pkcs11.Config) { c.KeyLabel = "nope" }, want: `no AES key labelled "nope"`},
		{name: "missing module", edit: func(c *pkcs11.Config) { c.Module = "/nonexistent/libp11.so" }, want: "cannot load module"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good
			tt.edit(&cfg)
			h, err := pkcs11.Open(cfg)
			if err == nil {
				h.Close()
				t.Fatalf("Open = nil, want an error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), good.PIN) {
				t.Errorf("Open = %v, want an error containing %q and not the PIN", err, tt.want)
			}
		})
	}
}

func TestSoftHSMIsInstalled(t *testing.T) {
	if _, err := exec.LookPath("softhsm2-util"); err != nil {
		t.Fatalf("softhsm2-util is missing: install SoftHSM (Debian: apt-get install softhsm2) to run the PKCS#11 tests")
	}
}
