package seal_test

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/tokenbroker/tokenbroker/broker/seal"
)

const etcdKey = "/tokenbroker/secrets/github/client-secret"

// newKey returns a fresh random key with the given id.
func newKey(t testing.TB, id string) seal.Key {
	t.Helper()
	k, err := seal.GenerateKey(id)
	if err != nil {
		t.Fatalf("GenerateKey(%q): %v", id, err)
	}
	return k
}

func newKeyring(t testing.TB, primary seal.Key, older ...seal.Key) *seal.Keyring {
	t.Helper()
	kr, err := seal.NewKeyring(primary, older...)
	if err != nil {
		t.Fatalf("NewKeyring: %v", err)
	}
	return kr
}

func mustSeal(t testing.TB, kr *seal.Keyring, aad string, plaintext []byte) []byte {
	t.Helper()
	sealed, err := kr.Seal(aad, plaintext)
	if err != nil {
		t.Fatalf("Seal(%q): %v", aad, err)
	}
	return sealed
}

// errIsOneOf reports whether err matches one of targets.
func errIsOneOf(err error, targets ...error) bool {
	for _, target := range targets {
		if errors.Is(err, target) {
			return true
		}
	}
	return false
}

func TestSealOpenRoundTrip(t *testing.T) {
	tests := []struct {
		name  string
		id    string
		aad   string
		give  []byte
		short bool // too short for a containment check
	}{
		{name: "empty", id: "k1", aad: etcdKey, give: []byte{}, short: true},
		{name: "nil", id: "k1", aad: etcdKey, give: nil, short: true},
		{name: "one byte", id: "a", aad: etcdKey, give: []byte{0}, short: true},
		{name: "client secret", id: "k1", aad: etcdKey, give: []byte("s3cr3t-client-secret-value")},
		{name: "refresh token", id: "2026-01", aad: "/tokenbroker/tokens/github/alice", give: []byte("1//0gLrefresh-token-abcdefghijklmnop")},
		{name: "binary", id: "0123456789abcdef", aad: etcdKey, give: bytes.Repeat([]byte{0, 0xff, 0x80, 0x7f}, 64)},
		{name: "utf-8", id: "k-2", aad: "/tokenbroker/é/ключ", give: []byte("пароль — パスワード — contraseña")},
		{name: "empty etcd key", id: "k1", aad: "", give: []byte("value with an empty aad")},
		{name: "one MiB", id: "k1", aad: etcdKey, give: bytes.Repeat([]byte("tokenbroker-"), 1<<20/12)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kr := newKeyring(t, newKey(t, tt.id))
			sealed := mustSeal(t, kr, tt.aad, tt.give)
			again := mustSeal(t, kr, tt.aad, tt.give)

			got, err := kr.Open(tt.aad, sealed)
			if err != nil {
				t.Fatalf("Open: got error %v, want none", err)
			}
			if !bytes.Equal(got, tt.give) {
				t.Errorf("Open: got %d bytes %.32q, want %d bytes %.32q", len(got), got, len(tt.give), tt.give)
			}
			if got == nil {
				t.Errorf("Open: got nil plaintext, want a non-nil (possibly empty) slice")
			}
			if wantLen := len(tt.give) + 2 + len(tt.id) + 12 + 16; len(sealed) != wantLen {
				t.Errorf("len(sealed): got %d, want %d", len(sealed), wantLen)
			}
			if bytes.Equal(sealed, again) {
				t.Errorf("two seals of the same value are identical, want distinct (random nonce)")
			}
			if !tt.short && bytes.Contains(sealed, tt.give[:16]) {
				t.Errorf("sealed value contains the plaintext")
			}
			if id, err := kr.KeyID(sealed); err != nil || id != tt.id {
				t.Errorf("KeyID: got %q, %v; want %q, nil", id, err, tt.id)
			}
			if kr.NeedsReseal(sealed) {
				t.Errorf("NeedsReseal: got true for a value sealed with the primary, want false")
			}
		})
	}
}

func TestSealDoesNotAliasPlaintext(t *testing.T) {
	kr := newKeyring(t, newKey(t, "k1"))
	give := []byte("a secret that the caller will clear")
	want := bytes.Clone(give)
	sealed := mustSeal(t, kr, etcdKey, give)
	clear(give)
	got, err := kr.Open(etcdKey, sealed)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("Open after clearing the input: got %q, %v; want %q, nil", got, err, want)
	}
}

func TestOpenUnderAnotherEtcdKey(t *testing.T) {
	tests := []struct {
		name string
		give string // etcd key sealed under
		open string // etcd key opened under
	}{
		{name: "other account", give: "/tokenbroker/tokens/github/alice", open: "/tokenbroker/tokens/github/bob"},
		{name: "other provider", give: "/tokenbroker/secrets/github", open: "/tokenbroker/secrets/gitlab"},
		{name: "trailing slash", give: "/tokenbroker/secrets/github", open: "/tokenbroker/secrets/github/"},
		{name: "prefix", give: "/tokenbroker/secrets/github", open: "/tokenbroker/secrets/git"},
		{name: "trailing NUL", give: "/tokenbroker/secrets/github", open: "/tokenbroker/secrets/github\x00"},
		{name: "case", give: "/tokenbroker/secrets/github", open: "/tokenbroker/secrets/GitHub"},
		{name: "empty to non-empty", give: "", open: "/"},
		{name: "non-empty to empty", give: "/", open: ""},
	}
	kr := newKeyring(t, newKey(t, "k1"))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sealed := mustSeal(t, kr, tt.give, []byte("refresh-token"))
			got, err := kr.Open(tt.open, sealed)
			if !errors.Is(err, seal.ErrOpen) {
				t.Errorf("Open(%q) of a value sealed under %q: got %q, %v; want ErrOpen", tt.open, tt.give, got, err)
			}
		})
	}
}

func TestOpenFlippedByte(t *testing.T) {
	plaintext := []byte("a refresh token of some length")
	for _, id := range []string{"k1", "0123456789abcdef"} {
		kr := newKeyring(t, newKey(t, id))
		sealed := mustSeal(t, kr, etcdKey, plaintext)
		type test struct {
			index int
			mask  byte
		}
		var tests []test
		for i := range sealed {
			for _, mask := range []byte{0x01, 0x02, 0x10, 0x80, 0xff} {
				tests = append(tests, test{i, mask})
			}
		}
		for _, tt := range tests {
			give := bytes.Clone(sealed)
			give[tt.index] ^= tt.mask
			got, err := kr.Open(etcdKey, give)
			// A flip inside the key id may turn it into another well-formed
			// id, which this keyring does not hold: ErrUnknownKey.
			if !errIsOneOf(err, seal.ErrOpen, seal.ErrFormat, seal.ErrUnknownKey) {
				t.Errorf("id %q, byte %d ^ %#02x: got %q, %v; want ErrOpen, ErrFormat or ErrUnknownKey", id, tt.index, tt.mask, got, err)
			}
		}
	}
}

func TestOpenTruncatedOrExtended(t *testing.T) {
	kr := newKeyring(t, newKey(t, "k1"))
	sealed := mustSeal(t, kr, etcdKey, []byte("a refresh token"))
	minLen := 2 + len("k1") + 12 + 16 // shortest value with this id
	type test struct {
		name string
		give []byte
		want error
	}
	tests := []test{
		{name: "nil", give: nil, want: seal.ErrFormat},
		{name: "one byte appended", give: append(bytes.Clone(sealed), 0), want: seal.ErrOpen},
		{name: "tag duplicated", give: append(bytes.Clone(sealed), sealed[len(sealed)-16:]...), want: seal.ErrOpen},
	}
	// Shorter than a header, nonce and tag: not a sealed value. Longer: the
	// format has no length field, so a truncated ciphertext is caught by GCM.
	for n := 0; n < len(sealed); n++ {
		want := seal.ErrOpen
		if n < minLen {
			want = seal.ErrFormat
		}
		tests = append(tests, test{name: fmt.Sprintf("first %d bytes", n), give: sealed[:n:n], want: want})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := kr.Open(etcdKey, tt.give)
			if !errors.Is(err, tt.want) {
				t.Errorf("Open: got %q, %v; want %v", got, err, tt.want)
			}
		})
	}
}

func TestMalformed(t *testing.T) {
	kr := newKeyring(t, newKey(t, "k1"))
	body := make([]byte, 12+16) // nonce and tag
	header := func(b ...byte) []byte { return append(b, body...) }
	tests := []struct {
		name    string
		give    []byte
		want    error
		primary bool // the header names the primary key
	}{
		{name: "empty", give: []byte{}, want: seal.ErrFormat},
		{name: "version 0", give: header(0, 2, 'k', '1'), want: seal.ErrFormat},
		{name: "version 2", give: header(2, 2, 'k', '1'), want: seal.ErrFormat},
		{name: "version 0xff", give: header(0xff, 2, 'k', '1'), want: seal.ErrFormat},
		{name: "id length 0", give: header(1, 0, 'k', '1'), want: seal.ErrFormat},
		{name: "id length 17", give: header(1, 17, 'k', '1'), want: seal.ErrFormat},
		{name: "id length 255", give: header(1, 255, 'k', '1'), want: seal.ErrFormat},
		{name: "id length past the end", give: append([]byte{1, 16}, make([]byte, 30)...), want: seal.ErrFormat},
		{name: "upper-case id", give: header(1, 2, 'K', '1'), want: seal.ErrFormat},
		{name: "id with NUL", give: header(1, 2, 'k', 0), want: seal.ErrFormat},
		{name: "id with underscore", give: header(1, 2, 'k', '_'), want: seal.ErrFormat},
		{name: "id with colon", give: header(1, 2, 'k', ':'), want: seal.ErrFormat},
		{name: "unknown id", give: header(1, 2, 'k', '9'), want: seal.ErrUnknownKey},
		{name: "known id, zero nonce and tag", give: header(1, 2, 'k', '1'), want: seal.ErrOpen, primary: true},
		{name: "text", give: []byte("this is not a sealed value, just some text"), want: seal.ErrFormat},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := kr.Open(etcdKey, tt.give)
			if !errors.Is(err, tt.want) {
				t.Errorf("Open: got %q, %v; want %v", got, err, tt.want)
			}
			_, idErr := kr.KeyID(tt.give)
			if wantFormat := errors.Is(tt.want, seal.ErrFormat); wantFormat != errors.Is(idErr, seal.ErrFormat) {
				t.Errorf("KeyID: got error %v, want ErrFormat: %v", idErr, wantFormat)
			}
			if got := kr.NeedsReseal(tt.give); got == tt.primary {
				t.Errorf("NeedsReseal: got %v, want %v", got, !tt.primary)
			}
		})
	}
}

func TestRotation(t *testing.T) {
	k1, k2 := newKey(t, "k1"), newKey(t, "k2")
	a := newKeyring(t, k1)
	b := newKeyring(t, k2, k1)
	c := newKeyring(t, k2)

	tests := []struct {
		aad  string
		give []byte
	}{
		{aad: "/tokenbroker/secrets/github", give: []byte("client-secret")},
		{aad: "/tokenbroker/tokens/github/alice", give: []byte("refresh-token")},
		{aad: "/tokenbroker/tokens/github/bob", give: []byte{}},
	}
	for _, tt := range tests {
		t.Run(tt.aad, func(t *testing.T) {
			old := mustSeal(t, a, tt.aad, tt.give)

			if got, err := b.Open(tt.aad, old); err != nil || !bytes.Equal(got, tt.give) {
				t.Errorf("B.Open(A's record): got %q, %v; want %q, nil", got, err, tt.give)
			}
			if !b.NeedsReseal(old) {
				t.Errorf("B.NeedsReseal(A's record): got false, want true")
			}
			if a.NeedsReseal(old) {
				t.Errorf("A.NeedsReseal(A's record): got true, want false")
			}
			if got, err := c.Open(tt.aad, old); !errors.Is(err, seal.ErrUnknownKey) {
				t.Errorf("C.Open(A's record): got %q, %v; want ErrUnknownKey", got, err)
			}

			resealed, err := b.Reseal(tt.aad, old)
			if err != nil {
				t.Fatalf("B.Reseal: %v", err)
			}
			if id, err := b.KeyID(resealed); err != nil || id != "k2" {
				t.Errorf("KeyID(resealed): got %q, %v; want %q, nil", id, err, "k2")
			}
			if b.NeedsReseal(resealed) {
				t.Errorf("B.NeedsReseal(resealed): got true, want false")
			}
			if got, err := c.Open(tt.aad, resealed); err != nil || !bytes.Equal(got, tt.give) {
				t.Errorf("C.Open(resealed): got %q, %v; want %q, nil", got, err, tt.give)
			}
			if got, err := a.Open(tt.aad, resealed); !errors.Is(err, seal.ErrUnknownKey) {
				t.Errorf("A.Open(resealed): got %q, %v; want ErrUnknownKey", got, err)
			}
			if got, err := b.Reseal("/tokenbroker/elsewhere", old); !errors.Is(err, seal.ErrOpen) {
				t.Errorf("B.Reseal under another etcd key: got %q, %v; want ErrOpen", got, err)
			}
		})
	}
	if got := b.PrimaryID(); got != "k2" {
		t.Errorf("B.PrimaryID: got %q, want %q", got, "k2")
	}
	if got, want := fmt.Sprint(b.IDs()), "[k2 k1]"; got != want {
		t.Errorf("B.IDs: got %s, want %s", got, want)
	}
}

func TestKeyIDSwap(t *testing.T) {
	tests := []struct {
		name     string
		from, to string
	}{
		{name: "same length", from: "k1", to: "k2"},
		{name: "longer", from: "k1", to: "key-2026-02"},
		{name: "shorter", from: "key-2026-02", to: "k1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			from, to := newKey(t, tt.from), newKey(t, tt.to)
			// Both keys in one keyring; even the same secret under two ids
			// must not open, which only the additional data guarantees.
			kr := newKeyring(t, from, to)
			sealed := mustSeal(t, kr, etcdKey, []byte("refresh-token"))

			rest := sealed[2+len(tt.from):]
			give := append([]byte{1, byte(len(tt.to))}, tt.to...)
			give = append(give, rest...)

			if id, err := kr.KeyID(give); err != nil || id != tt.to {
				t.Fatalf("KeyID of the rewritten record: got %q, %v; want %q, nil", id, err, tt.to)
			}
			if got, err := kr.Open(etcdKey, give); !errors.Is(err, seal.ErrOpen) {
				t.Errorf("Open with the key id rewritten %q -> %q: got %q, %v; want ErrOpen", tt.from, tt.to, got, err)
			}
		})
	}
}

func TestNewKeyring(t *testing.T) {
	k1, k2, k3 := newKey(t, "k1"), newKey(t, "k2"), newKey(t, "k3")
	withID := func(k seal.Key, id string) seal.Key { return seal.Key{ID: id, Secret: k.Secret} }
	withSecret := func(k seal.Key, secret []byte) seal.Key { return seal.Key{ID: k.ID, Secret: secret} }
	tests := []struct {
		name    string
		give    []seal.Key
		wantErr string // "" for success
	}{
		{name: "one key", give: []seal.Key{k1}},
		{name: "three keys", give: []seal.Key{k1, k2, k3}},
		{name: "16-char id", give: []seal.Key{withID(k1, "abcdefghij-01234")}},
		{name: "empty id", give: []seal.Key{withID(k1, "")}, wantErr: "key 1: key id must be 1–16 characters"},
		{name: "17-char id", give: []seal.Key{withID(k1, "abcdefghij-012345")}, wantErr: "key 1: key id must be 1–16 characters"},
		{name: "upper-case id", give: []seal.Key{k1, withID(k2, "K2")}, wantErr: "key 2: key id must be of [a-z0-9-]"},
		{name: "id with space", give: []seal.Key{withID(k1, "k 1")}, wantErr: "key id must be of [a-z0-9-]"},
		{name: "id with colon", give: []seal.Key{withID(k1, "k:1")}, wantErr: "key id must be of [a-z0-9-]"},
		{name: "non-ASCII id", give: []seal.Key{withID(k1, "ké")}, wantErr: "key id must be of [a-z0-9-]"},
		{name: "nil secret", give: []seal.Key{withSecret(k1, nil)}, wantErr: "secret is 0 bytes, want 32"},
		{name: "31-byte secret", give: []seal.Key{withSecret(k1, k1.Secret[:31])}, wantErr: "secret is 31 bytes, want 32"},
		{name: "33-byte secret", give: []seal.Key{k1, withSecret(k2, append(bytes.Clone(k2.Secret), 1))}, wantErr: "key 2: key \"k2\": secret is 33 bytes, want 32"},
		{name: "zero secret", give: []seal.Key{withSecret(k1, make([]byte, 32))}, wantErr: "secret is all zeros"},
		{name: "duplicate primary id", give: []seal.Key{k1, withID(k2, "k1")}, wantErr: `key 2: duplicate key id "k1"`},
		{name: "duplicate older id", give: []seal.Key{k1, k2, withID(k3, "k2")}, wantErr: `key 3: duplicate key id "k2"`},
		{name: "same secret, other id", give: []seal.Key{k1, withID(k1, "k9")}, wantErr: `key 2: key "k9" has the same secret as key "k1"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kr, err := seal.NewKeyring(tt.give[0], tt.give[1:]...)
			gotErr := ""
			if err != nil {
				gotErr = err.Error()
			}
			if (tt.wantErr == "") != (err == nil) || !strings.Contains(gotErr, tt.wantErr) {
				t.Fatalf("NewKeyring: got error %q, want one containing %q", gotErr, tt.wantErr)
			}
			assertNoSecret(t, "NewKeyring error", gotErr, tt.give...)
			if err == nil && kr.PrimaryID() != tt.give[0].ID {
				t.Errorf("PrimaryID: got %q, want %q", kr.PrimaryID(), tt.give[0].ID)
			}
		})
	}
}

func TestNewKeyringKeepsNoReferenceToSecret(t *testing.T) {
	k := newKey(t, "k1")
	kr := newKeyring(t, k)
	sealed := mustSeal(t, kr, etcdKey, []byte("x"))
	clear(k.Secret) // the caller wipes its copy
	if got, err := kr.Open(etcdKey, sealed); err != nil || string(got) != "x" {
		t.Fatalf("Open after the caller cleared the secret: got %q, %v; want %q, nil", got, err, "x")
	}
	if again := mustSeal(t, kr, etcdKey, []byte("y")); kr.NeedsReseal(again) {
		t.Fatalf("Seal after the caller cleared the secret: NeedsReseal true, want false")
	}
}

func TestDerivedKeyIsNotRawSecret(t *testing.T) {
	// A value sealed by this package must not open under plain AES-GCM
	// keyed with the raw master secret: the key is derived with HKDF.
	k := newKey(t, "k1")
	kr := newKeyring(t, k)
	sealed := mustSeal(t, kr, etcdKey, []byte("x"))
	if rawOpens(k.Secret, sealed, etcdKey) {
		t.Fatalf("sealed value opens under the raw master secret, want an HKDF-derived key")
	}
	if !derivedOpens(k.Secret, sealed, etcdKey) {
		t.Fatalf("sealed value does not open under the documented derivation and additional data")
	}
}

func TestGenerateKey(t *testing.T) {
	tests := []struct {
		give    string
		wantErr bool
	}{
		{give: "k1"},
		{give: "dev"},
		{give: "2026-02-rotation"},
		{give: "", wantErr: true},
		{give: "Dev", wantErr: true},
		{give: "2026-02-rotation-x", wantErr: true},
		{give: "a/b", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			k, err := seal.GenerateKey(tt.give)
			if (err != nil) != tt.wantErr {
				t.Fatalf("GenerateKey(%q): got error %v, want error: %v", tt.give, err, tt.wantErr)
			}
			if err != nil {
				return
			}
			other := newKey(t, tt.give)
			if k.ID != tt.give || len(k.Secret) != 32 || bytes.Equal(k.Secret, other.Secret) {
				t.Errorf("GenerateKey(%q): got id %q, %d-byte secret, equal to a second key: %v; want the id, 32 bytes, distinct",
					tt.give, k.ID, len(k.Secret), bytes.Equal(k.Secret, other.Secret))
			}
			line := seal.FormatKey(k)
			if want := tt.give + ":" + base64.StdEncoding.EncodeToString(k.Secret); line != want {
				t.Errorf("FormatKey: got a line of %d chars, want %q + ':' + padded std base64", len(line), tt.give)
			}
			kr, err := seal.ParseKeyFile([]byte(line + "\n"))
			if err != nil {
				t.Fatalf("ParseKeyFile(FormatKey(k)): %v", err)
			}
			sealed := mustSeal(t, kr, etcdKey, []byte("x"))
			if got, err := newKeyring(t, k).Open(etcdKey, sealed); err != nil || string(got) != "x" {
				t.Errorf("the parsed key and the generated key differ: Open got %q, %v", got, err)
			}
		})
	}
}

func TestFormattingHidesSecret(t *testing.T) {
	k1, k2 := newKey(t, "k1"), newKey(t, "k2")
	kr := newKeyring(t, k2, k1)
	type holder struct {
		Name string
		Key  seal.Key
	}
	values := []struct {
		name string
		give any
	}{
		{name: "Key", give: k1},
		{name: "*Key", give: &k1},
		{name: "[]Key", give: []seal.Key{k1, k2}},
		{name: "struct with a Key", give: holder{Name: "x", Key: k1}},
		{name: "map of Keys", give: map[string]seal.Key{"a": k1}},
		{name: "*Keyring", give: kr},
		{name: "Keyring", give: *kr},
	}
	verbs := []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%T %v", "%10v", "%-40s"}
	for _, v := range values {
		for _, verb := range verbs {
			t.Run(v.name+" "+verb, func(t *testing.T) {
				got := fmt.Sprintf(verb, v.give)
				assertNoSecret(t, "Sprintf("+verb+")", got, k1, k2)
			})
		}
	}
	t.Run("Sprint and Sprintln", func(t *testing.T) {
		got := fmt.Sprint(k1, kr, &k1) + fmt.Sprintln(k1, kr)
		assertNoSecret(t, "Sprint", got, k1, k2)
	})
	t.Run("JSON", func(t *testing.T) {
		got, err := json.Marshal(holder{Name: "x", Key: k1})
		if err != nil {
			t.Fatalf("json.Marshal: %v", err)
		}
		assertNoSecret(t, "json.Marshal", string(got), k1)
		if want := `{"Name":"x","Key":{"id":"k1","secret":"\u003credacted\u003e"}}`; string(got) != want {
			t.Errorf("json.Marshal: got %s, want %s", got, want)
		}
	})

	exact := []struct {
		verb string
		give any
		want string
	}{
		{verb: "%v", give: k1, want: `seal.Key{ID: "k1", Secret: <redacted>}`},
		{verb: "%+v", give: k1, want: `seal.Key{ID: "k1", Secret: <redacted>}`},
		{verb: "%#v", give: k1, want: `seal.Key{ID: "k1", Secret: <redacted>}`},
		{verb: "%s", give: k1, want: `seal.Key{ID: "k1", Secret: <redacted>}`},
		{verb: "%v", give: &k1, want: `seal.Key{ID: "k1", Secret: <redacted>}`},
		{verb: "%v", give: kr, want: `seal.Keyring{Primary: "k2", Older: ["k1"]}`},
		{verb: "%#v", give: kr, want: `seal.Keyring{Primary: "k2", Older: ["k1"]}`},
		{verb: "%v", give: (*seal.Keyring)(nil), want: `<nil>`},
	}
	for _, tt := range exact {
		t.Run("exact "+tt.verb, func(t *testing.T) {
			if got := fmt.Sprintf(tt.verb, tt.give); got != tt.want {
				t.Errorf("Sprintf(%s): got %s, want %s", tt.verb, got, tt.want)
			}
		})
	}
}

// assertNoSecret fails if s contains any common rendering of a key's secret.
func assertNoSecret(t *testing.T, what, s string, keys ...seal.Key) {
	t.Helper()
	for _, k := range keys {
		if len(k.Secret) < 8 {
			continue
		}
		for _, form := range secretForms(k.Secret) {
			if strings.Contains(s, form) {
				t.Errorf("%s: output contains the secret of key %q (as %.12q…); got %d chars", what, k.ID, form, len(s))
			}
		}
	}
}

// secretForms returns renderings of secret that a leak would show: base64 in
// all four variants and hex (or a long enough prefix of each), and fmt's
// decimal and Go-syntax forms of the bytes.
func secretForms(secret []byte) []string {
	forms := []string{
		base64.StdEncoding.EncodeToString(secret),
		base64.URLEncoding.EncodeToString(secret),
		base64.RawStdEncoding.EncodeToString(secret)[:20],
		base64.RawURLEncoding.EncodeToString(secret)[:20],
		hex.EncodeToString(secret)[:20],
		strings.ToUpper(hex.EncodeToString(secret)[:20]),
		strings.Trim(fmt.Sprint(secret[:6]), "[]"),
		strings.TrimSuffix(strings.TrimPrefix(fmt.Sprintf("%#v", secret[:6]), "[]byte{"), "}"),
		fmt.Sprintf("%q", secret)[:12],
	}
	return forms
}

func TestConcurrentUse(t *testing.T) {
	k1, k2 := newKey(t, "k1"), newKey(t, "k2")
	old := newKeyring(t, k1)
	kr := newKeyring(t, k2, k1)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := range 16 {
		wg.Go(func() {
			for i := range 200 {
				aad := fmt.Sprintf("/tokenbroker/tokens/p/%d/%d", g, i)
				give := []byte(aad)
				sealed, err := old.Seal(aad, give)
				if err == nil {
					sealed, err = kr.Reseal(aad, sealed)
				}
				var got []byte
				if err == nil {
					got, err = kr.Open(aad, sealed)
				}
				if err == nil && !bytes.Equal(got, give) {
					err = fmt.Errorf("got %q, want %q", got, give)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent seal, reseal and open: %v", err)
	}
}

func BenchmarkSeal(b *testing.B) {
	kr := newKeyring(b, newKey(b, "k1"))
	give := bytes.Repeat([]byte("x"), 64)
	b.SetBytes(int64(len(give)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := kr.Seal(etcdKey, give); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkOpen(b *testing.B) {
	kr := newKeyring(b, newKey(b, "k1"))
	give := bytes.Repeat([]byte("x"), 64)
	sealed := mustSeal(b, kr, etcdKey, give)
	b.SetBytes(int64(len(give)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := kr.Open(etcdKey, sealed); err != nil {
			b.Fatal(err)
		}
	}
}
