package seal_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/broker/seal"
)

const recordKey = "/tokenbroker/providers/acme"

// signed returns a provider-like record signed for recordKey by kr.
func signed(t *testing.T, kr *seal.Keyring) []byte {
	t.Helper()
	secret, err := kr.Seal(recordKey+"#client_secret", []byte("s3cret"))
	if err != nil {
		t.Fatal(err)
	}
	rec, err := json.Marshal(map[string]any{
		"name": "acme", "token_url": "https://acme.example/token", "client_id": "broker",
		"client_secret_sealed": secret, "grant_types": []string{"client_credentials"},
	})
	if err != nil {
		t.Fatal(err)
	}
	out, err := kr.SignRecord(recordKey, rec)
	if err != nil {
		t.Fatalf("SignRecord: %v", err)
	}
	return out
}

// edit decodes rec, applies f to its members and encodes it again.
func edit(t *testing.T, rec []byte, f func(map[string]json.RawMessage)) []byte {
	t.Helper()
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(rec, &obj); err != nil {
		t.Fatal(err)
	}
	f(obj)
	out, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestVerifyRecord(t *testing.T) {
	kr := newKeyring(t, newKey(t, "k1"))
	other := newKeyring(t, newKey(t, "k9"))
	good := signed(t, kr)
	unsigned := edit(t, good, func(o map[string]json.RawMessage) { delete(o, seal.RecordField) })
	tests := []struct {
		name    string
		give    []byte
		key     string
		keys    *seal.Keyring
		wantErr bool
	}{
		{name: "as signed", give: good, key: recordKey, keys: kr},
		{name: "members reordered with spaces", give: []byte(strings.Replace(string(edit(t, good, func(map[string]json.RawMessage) {})), ",", ", ", 1)), key: recordKey, keys: kr},
		{name: "no tag (a record written without the master key)", give: unsigned, key: recordKey, keys: kr, wantErr: true},
		{name: "token_url changed", give: edit(t, good, func(o map[string]json.RawMessage) {
			o["token_url"] = json.RawMessage(`"https://attacker.example/token"`)
		}), key: recordKey, keys: kr, wantErr: true},
		{name: "a member added", give: edit(t, good, func(o map[string]json.RawMessage) {
			o["Token_URL"] = json.RawMessage(`"https://attacker.example/token"`)
		}), key: recordKey, keys: kr, wantErr: true},
		{name: "a sealed member removed", give: edit(t, good, func(o map[string]json.RawMessage) {
			delete(o, "client_secret_sealed")
		}), key: recordKey, keys: kr, wantErr: true},
		{name: "copied to another etcd key", give: good, key: "/tokenbroker/providers/evil", keys: kr, wantErr: true},
		{name: "signed under another master key", give: signed(t, other), key: recordKey, keys: kr, wantErr: true},
		{name: "tag is not a sealed value", give: edit(t, good, func(o map[string]json.RawMessage) {
			o[seal.RecordField] = json.RawMessage(`"bm90IGEgdGFn"`)
		}), key: recordKey, keys: kr, wantErr: true},
		{name: "not a JSON object", give: []byte(`["name"]`), key: recordKey, keys: kr, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.keys.VerifyRecord(tt.key, tt.give)
			if (err != nil) != tt.wantErr {
				t.Fatalf("VerifyRecord = %v, want error %v", err, tt.wantErr)
			}
			if err != nil && !errors.Is(err, seal.ErrRecord) {
				t.Errorf("VerifyRecord = %v, want it to wrap ErrRecord", err)
			}
		})
	}
}

// A master-key rotation re-seals every "_sealed" member, the tag included,
// with the same additional data; the record still verifies under the new
// keyring, and no longer under the old key alone once re-sealed.
func TestRecordSurvivesReseal(t *testing.T) {
	old := newKey(t, "old")
	before := newKeyring(t, old)
	rec := signed(t, before)
	after := newKeyring(t, newKey(t, "new"), old)
	rec = edit(t, rec, func(o map[string]json.RawMessage) {
		for name, field := range map[string]string{seal.RecordField: "record", "client_secret_sealed": "client_secret"} {
			var sealed []byte
			if err := json.Unmarshal(o[name], &sealed); err != nil {
				t.Fatal(err)
			}
			out, err := after.Reseal(recordKey+"#"+field, sealed)
			if err != nil {
				t.Fatalf("Reseal %s: %v", name, err)
			}
			o[name], _ = json.Marshal(out)
		}
	})
	if err := after.VerifyRecord(recordKey, rec); err != nil {
		t.Errorf("after the re-seal: VerifyRecord = %v, want nil", err)
	}
	if err := before.VerifyRecord(recordKey, rec); !errors.Is(err, seal.ErrRecord) {
		t.Errorf("after the re-seal, with the old key only: VerifyRecord = %v, want ErrRecord", err)
	}
}

// The fingerprint of a secret is keyed: without the master key, knowing
// the fingerprint and the scheme does not let anyone test guesses.
func TestFingerprintIsKeyed(t *testing.T) {
	const secret = "hunter2"
	ka := newKey(t, "a")
	a, b := newKeyring(t, ka), newKeyring(t, newKey(t, "b"))
	fp := a.Fingerprint(secret)
	unkeyed := sha256.Sum256([]byte("tokenbroker fingerprint\x00" + secret))
	plain := sha256.Sum256([]byte(secret))
	tests := []struct {
		name string
		ok   bool
	}{
		{name: "32 hex digits (128 bits)", ok: len(fp) == 32 && isHex(fp)},
		{name: "stable for one master key (every replica agrees)", ok: newKeyring(t, seal.Key{ID: "a", Secret: append([]byte(nil), ka.Secret...)}).Fingerprint(secret) == fp},
		{name: "differs under another master key", ok: b.Fingerprint(secret) != fp},
		{name: "differs for another secret", ok: a.Fingerprint(secret+"!") != fp},
		{name: "not an unkeyed digest of the secret", ok: !strings.HasPrefix(hex.EncodeToString(unkeyed[:]), fp[:8]) && !strings.HasPrefix(hex.EncodeToString(plain[:]), fp[:8])},
		{name: "empty for no secret", ok: a.Fingerprint("") == ""},
	}
	for _, tt := range tests {
		if !tt.ok {
			t.Errorf("Fingerprint: want %s; got %q", tt.name, fp)
		}
	}
}

func isHex(s string) bool {
	_, err := hex.DecodeString(s)
	return err == nil
}
