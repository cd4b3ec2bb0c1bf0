package seal_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/broker/seal"
)

// fixedKey returns a key whose secret is derived from its id, so that fuzz
// failures reproduce.
func fixedKey(id string) seal.Key {
	sum := sha256.Sum256([]byte("fuzz " + id))
	return seal.Key{ID: id, Secret: sum[:]}
}

// golden values, sealed once by Seal with fixedKey keys. Opening them pins
// the format and the key derivation; FuzzOpen uses them as the only values
// allowed to open (fuzz workers are separate processes, so values sealed at
// run time, under random nonces, could not be shared with them).
var golden = []struct {
	aad       string
	sealed    string // hex
	plaintext string
	keyID     string
}{
	{
		aad:       "/tokenbroker/secrets/github",
		sealed:    "01026b32c2a61b117dc8e8711f4c4ee287c125bb60451e1c6174d57ac1c7050fd6592aebd29c7ed26bfc7c7818",
		plaintext: "client-secret",
		keyID:     "k2",
	},
	{
		aad:       "",
		sealed:    "01026b329deb07fa849ade69ead1b022d476b8b7ad672280464ae9e0a0a63adb",
		plaintext: "",
		keyID:     "k2",
	},
	{
		aad:       "/tokenbroker/tokens/github/alice",
		sealed:    "01026b311652a052ebfed9bc6f4ab1cac2120dde77a3cda272708dfe93b1c5d5169a2c023fd306851d43bc23a2",
		plaintext: "refresh-token",
		keyID:     "k1",
	},
	{
		aad:       "/tokenbroker/tokens/gitlab/bob",
		sealed:    "011030313233343536373839616263646566ad5381ca5b1791cb66bb21ed7787567469180dcb4fb3be62b6864a890144af605f805c62d4a0eeea",
		plaintext: "access-token",
		keyID:     "0123456789abcdef",
	},
}

func goldenKeyring(t testing.TB) *seal.Keyring {
	t.Helper()
	kr, err := seal.NewKeyring(fixedKey("k2"), fixedKey("k1"), fixedKey("0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	return kr
}

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestGolden(t *testing.T) {
	kr := goldenKeyring(t)
	for _, tt := range golden {
		t.Run(tt.keyID+" "+tt.aad, func(t *testing.T) {
			give := mustHex(t, tt.sealed)
			got, err := kr.Open(tt.aad, give)
			if err != nil || string(got) != tt.plaintext {
				t.Errorf("Open: got %q, %v; want %q, nil", got, err, tt.plaintext)
			}
			if id, err := kr.KeyID(give); err != nil || id != tt.keyID {
				t.Errorf("KeyID: got %q, %v; want %q, nil", id, err, tt.keyID)
			}
			if !derivedOpens(fixedKey(tt.keyID).Secret, give, tt.aad) {
				t.Errorf("the independent implementation of the documented format does not open it")
			}
		})
	}
}

// FuzzOpen feeds arbitrary bytes and etcd keys to Open, KeyID, NeedsReseal
// and Reseal. None may panic, and Open may succeed only on a golden value,
// which Seal produced, under its own etcd key.
func FuzzOpen(f *testing.F) {
	kr := goldenKeyring(f)
	type record struct{ aad, sealed string }
	produced := make(map[record]string)
	for _, g := range golden {
		sealed := mustHex(f, g.sealed)
		produced[record{g.aad, string(sealed)}] = g.plaintext
		f.Add(sealed, g.aad)
		f.Add(sealed, g.aad+"/")
		f.Add(sealed[:len(sealed)-1], g.aad)
		f.Add(append(bytes.Clone(sealed), 0), g.aad)
	}
	f.Add([]byte{}, "")
	f.Add([]byte{1}, "x")
	f.Add([]byte{1, 2, 'k', '1'}, "x")
	f.Add([]byte{1, 16}, "x")
	f.Add([]byte{1, 255, 'k'}, "x")
	f.Add(bytes.Repeat([]byte{1}, 64), "x")

	f.Fuzz(func(t *testing.T, sealed []byte, aad string) {
		got, err := kr.Open(aad, sealed)
		want, ok := produced[record{aad, string(sealed)}]
		switch {
		case err == nil && !ok:
			t.Fatalf("Open succeeded on a value Seal did not produce for this etcd key: %d bytes, plaintext %d bytes", len(sealed), len(got))
		case err == nil && string(got) != want:
			t.Fatalf("Open: got %q, want %q", got, want)
		case err != nil && ok:
			t.Fatalf("Open of a value Seal produced: %v", err)
		case err != nil && !errIsOneOf(err, seal.ErrFormat, seal.ErrUnknownKey, seal.ErrOpen):
			t.Fatalf("Open: got error %v, want ErrFormat, ErrUnknownKey or ErrOpen", err)
		}

		id, idErr := kr.KeyID(sealed)
		if idErr != nil && !errors.Is(idErr, seal.ErrFormat) {
			t.Fatalf("KeyID: got error %v, want nil or ErrFormat", idErr)
		}
		if wantReseal := idErr != nil || id != kr.PrimaryID(); kr.NeedsReseal(sealed) != wantReseal {
			t.Fatalf("NeedsReseal: got %v, want %v (KeyID %q, %v)", !wantReseal, wantReseal, id, idErr)
		}
		if errors.Is(err, seal.ErrFormat) != errors.Is(idErr, seal.ErrFormat) {
			t.Fatalf("Open and KeyID disagree on the format: Open %v, KeyID %v", err, idErr)
		}

		resealed, rerr := kr.Reseal(aad, sealed)
		if (rerr == nil) != (err == nil) {
			t.Fatalf("Reseal and Open disagree: Reseal %v, Open %v", rerr, err)
		}
		if rerr == nil {
			if again, err := kr.Open(aad, resealed); err != nil || !bytes.Equal(again, got) || kr.NeedsReseal(resealed) {
				t.Fatalf("Open(Reseal): got %q, %v, NeedsReseal %v; want %q, nil, false", again, err, kr.NeedsReseal(resealed), got)
			}
		}
	})
}

// FuzzParseKeyFile feeds arbitrary text to ParseKeyFile and ParseKeyEnv.
// Neither may panic, and no error may repeat key material from the input.
func FuzzParseKeyFile(f *testing.F) {
	f.Add("k1:" + std(secretA) + "\n")
	f.Add("# keys\n\nk2:" + rawURL(secretB) + "\r\nk1:" + rawStd(secretA) + "\n")
	f.Add("k1:" + std(secretA) + ",k1:" + std(secretB))
	f.Add(std(secretA) + ":k1")
	f.Add("k1:" + std(secretA[:31]))
	f.Add("k1:" + std(secretA) + "==")
	f.Add(":")
	f.Add("")

	f.Fuzz(func(t *testing.T, input string) {
		for name, parse := range map[string]func(string) (*seal.Keyring, error){
			"ParseKeyFile": func(s string) (*seal.Keyring, error) { return seal.ParseKeyFile([]byte(s)) },
			"ParseKeyEnv":  seal.ParseKeyEnv,
		} {
			kr, err := parse(input)
			if err != nil {
				assertErrorHidesInput(t, err, input)
				continue
			}
			sealed, err := kr.Seal("/k", []byte("v"))
			if err != nil {
				t.Fatalf("%s: Seal with the parsed keyring: %v", name, err)
			}
			if got, err := kr.Open("/k", sealed); err != nil || string(got) != "v" {
				t.Fatalf("%s: Open with the parsed keyring: got %q, %v", name, got, err)
			}
		}
	})
}

// FuzzVerifyRecord: VerifyRecord never panics, and accepts only records
// whose members (other than sealed values, which authenticate themselves)
// are those that were signed: rewriting, adding or dropping a member is
// never accepted.
func FuzzVerifyRecord(f *testing.F) {
	const key = "/tokenbroker/apikeys/abcdefghijkl"
	kr, err := seal.NewKeyring(fixedKey("k1"))
	if err != nil {
		f.Fatal(err)
	}
	signedRec, err := kr.SignRecord(key, []byte(`{"identity":"svc","sha256":"00ff","create_time":"2031-03-14T09:26:53Z","password_sealed":"AQJrMQ=="}`))
	if err != nil {
		f.Fatal(err)
	}
	want := membersOf(f, signedRec)
	f.Add(signedRec)
	f.Add(bytes.Replace(signedRec, []byte(`"svc"`), []byte(`"admin"`), 1))
	f.Add([]byte(`{"identity":"admin","sha256":"00ff"}`))
	f.Add([]byte(`{"record_sealed":null}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := kr.VerifyRecord(key, data); err != nil {
			if !errors.Is(err, seal.ErrRecord) {
				t.Fatalf("VerifyRecord = %v, want an error wrapping ErrRecord", err)
			}
			return
		}
		if got := membersOf(t, data); !reflect.DeepEqual(got, want) {
			t.Fatalf("VerifyRecord accepted members %v, signed were %v", got, want)
		}
	})
}

// membersOf decodes a record's members, leaving out the tag and the
// values of sealed members (their presence is kept).
func membersOf(t testing.TB, rec []byte) map[string]any {
	t.Helper()
	var obj map[string]any
	if err := json.Unmarshal(rec, &obj); err != nil {
		t.Fatalf("an accepted record does not decode: %v", err)
	}
	delete(obj, seal.RecordField)
	for name, v := range obj {
		if strings.HasSuffix(name, "_sealed") {
			obj[name] = v != nil && v != ""
		}
	}
	return obj
}
