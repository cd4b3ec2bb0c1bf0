package seal_test

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/broker/seal"
)

// Secrets whose standard base64 contains '+' and '/', so that the standard
// and URL alphabets differ.
var (
	secretA = bytes.Repeat([]byte{0xfb, 0xff, 0xbf, 0x01}, 8) // "+/+/AfvB…"
	secretB = bytes.Repeat([]byte{0x3e, 0xff, 0xe0, 0x02}, 8)
	secretC = bytes.Repeat([]byte{0x11, 0x22, 0x33, 0x44}, 8)
)

func std(b []byte) string    { return base64.StdEncoding.EncodeToString(b) }
func rawStd(b []byte) string { return base64.RawStdEncoding.EncodeToString(b) }
func url(b []byte) string    { return base64.URLEncoding.EncodeToString(b) }
func rawURL(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// base64Runs returns every run of 20 or more base64 characters (either
// alphabet, with padding) in s: anything that could be key material.
func base64Runs(s string) []string {
	return regexp.MustCompile(`[A-Za-z0-9+/_=-]{20,}`).FindAllString(s, -1)
}

// assertErrorHidesInput fails if err's text contains key material from input.
func assertErrorHidesInput(t *testing.T, err error, input string) {
	t.Helper()
	if err == nil {
		return
	}
	for _, run := range base64Runs(input) {
		if strings.Contains(err.Error(), run) {
			t.Errorf("error %q contains key material %.8q… from the input", err, run)
		}
	}
}

// sameKeys checks that kr holds exactly want, primary first, by sealing
// with each want key and opening with kr.
func sameKeys(t *testing.T, kr *seal.Keyring, want ...seal.Key) {
	t.Helper()
	if got, wantIDs := kr.IDs(), idsOf(want); fmt.Sprint(got) != fmt.Sprint(wantIDs) {
		t.Fatalf("IDs: got %v, want %v", got, wantIDs)
	}
	for _, k := range want {
		sealed := mustSeal(t, newKeyring(t, k), etcdKey, []byte("x"))
		if got, err := kr.Open(etcdKey, sealed); err != nil || string(got) != "x" {
			t.Errorf("key %q: opening a value sealed with the expected secret: got %q, %v; want %q, nil", k.ID, got, err, "x")
		}
	}
}

func idsOf(keys []seal.Key) []string {
	var ids []string
	for _, k := range keys {
		ids = append(ids, k.ID)
	}
	return ids
}

func TestParseKeyFile(t *testing.T) {
	a := seal.Key{ID: "k1", Secret: secretA}
	b := seal.Key{ID: "k2", Secret: secretB}
	c := seal.Key{ID: "2025-old", Secret: secretC}
	tests := []struct {
		name string
		give string
		want []seal.Key
	}{
		{name: "std padded", give: "k1:" + std(secretA) + "\n", want: []seal.Key{a}},
		{name: "std unpadded", give: "k1:" + rawStd(secretA), want: []seal.Key{a}},
		{name: "url padded", give: "k1:" + url(secretA), want: []seal.Key{a}},
		{name: "url unpadded", give: "k1:" + rawURL(secretA), want: []seal.Key{a}},
		{
			name: "comments, blank lines, rotation order",
			give: "# tokenbroker master keys\n\n# primary since 2026-02\nk2:" + std(secretB) + "\n\n  # old\nk1:" + rawURL(secretA) + "\n2025-old:" + rawStd(secretC) + "\n\n",
			want: []seal.Key{b, a, c},
		},
		{name: "CRLF", give: "# keys\r\nk2:" + std(secretB) + "\r\nk1:" + std(secretA) + "\r\n", want: []seal.Key{b, a}},
		{name: "white space around parts", give: "  k1 : " + std(secretA) + " \t\n", want: []seal.Key{a}},
		{name: "no final newline", give: "k2:" + url(secretB) + "\nk1:" + std(secretA), want: []seal.Key{b, a}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kr, err := seal.ParseKeyFile([]byte(tt.give))
			if err != nil {
				t.Fatalf("ParseKeyFile: got error %v, want none", err)
			}
			if got := kr.PrimaryID(); got != tt.want[0].ID {
				t.Errorf("PrimaryID: got %q, want %q", got, tt.want[0].ID)
			}
			sameKeys(t, kr, tt.want...)
		})
	}
}

func TestParseKeyFileErrors(t *testing.T) {
	zero := make([]byte, 32)
	tests := []struct {
		name string
		give string
		want string // the error contains this
	}{
		{name: "empty", give: "", want: "seal: key file has no key"},
		{name: "only comments", give: "# nothing here\n\n#k1:" + std(secretA) + "\n", want: "key file has no key"},
		{name: "no id", give: "# keys\n" + std(secretA) + "\n", want: "key file line 2: want \"<id>:<base64 of 32 bytes>\", found no ':'"},
		{name: "secret and id swapped", give: std(secretA) + ":k1\n", want: "line 1: key id must be 1–16 characters"},
		{name: "empty id", give: ":" + std(secretA), want: "line 1: key id must be 1–16 characters, got 0"},
		{name: "upper-case id", give: "K1:" + std(secretA), want: "line 1: key id must be of [a-z0-9-]"},
		{name: "17-char id", give: "abcdefghijklmnopq:" + std(secretA), want: "line 1: key id must be 1–16 characters, got 17"},
		{name: "31 bytes", give: "k1:" + std(secretA[:31]), want: `line 1: key "k1": secret decodes to 31 bytes, want 32`},
		{name: "33 bytes", give: "k1:" + std(secretA) + "\nk2:" + std(append(bytes.Clone(secretB), 7)), want: `line 2: key "k2": secret decodes to 33 bytes, want 32`},
		{name: "64 bytes", give: "k1:" + rawURL(append(bytes.Clone(secretA), secretB...)), want: "secret decodes to 64 bytes, want 32"},
		{name: "empty secret", give: "k1:", want: "secret decodes to 0 bytes, want 32"},
		{name: "hex secret", give: "k1:" + fmt.Sprintf("%x", secretC), want: "secret decodes to 48 bytes, want 32"},
		{name: "invalid character", give: "k1:" + rawStd(secretA)[:42] + "!", want: "line 1: key \"k1\": secret is not valid base64"},
		{name: "mixed alphabets", give: "k1:" + strings.Replace(rawStd(secretA), "/", "_", 1), want: "secret is not valid base64"},
		{name: "too much padding", give: "k1:" + std(secretA) + "==", want: "secret is not valid base64"},
		{name: "padding on raw length", give: "k1:" + rawStd(secretA)[:41] + "==", want: "secret is not valid base64"},
		{name: "non-canonical last character", give: "k1:" + rawStd(secretA)[:42] + "B", want: "secret is not valid base64"},
		{name: "space inside secret", give: "k1:" + rawStd(secretA)[:20] + " " + rawStd(secretA)[20:], want: "secret is not valid base64"},
		{name: "duplicate id", give: "k1:" + std(secretA) + "\n# comment\nk1:" + std(secretB), want: `line 3: duplicate key id "k1"`},
		{name: "same secret twice", give: "k2:" + std(secretA) + "\nk1:" + std(secretA), want: `line 2: key "k1" has the same secret as key "k2"`},
		{name: "zero secret", give: "dev:" + std(zero), want: `line 1: key "dev": secret is all zeros`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kr, err := seal.ParseKeyFile([]byte(tt.give))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("ParseKeyFile: got %v, %v; want an error containing %q", kr, err, tt.want)
			}
			assertErrorHidesInput(t, err, tt.give)
			assertNoSecret(t, "ParseKeyFile error", err.Error(),
				seal.Key{ID: "a", Secret: secretA}, seal.Key{ID: "b", Secret: secretB}, seal.Key{ID: "c", Secret: secretC})
		})
	}
}

func TestParseKeyEnv(t *testing.T) {
	a := seal.Key{ID: "k1", Secret: secretA}
	b := seal.Key{ID: "k2", Secret: secretB}
	tests := []struct {
		name string
		give string
		want []seal.Key
	}{
		{name: "one key", give: "k1:" + std(secretA), want: []seal.Key{a}},
		{name: "comma", give: "k2:" + std(secretB) + ",k1:" + rawURL(secretA), want: []seal.Key{b, a}},
		{name: "comma and space", give: "k2:" + rawStd(secretB) + ", k1:" + url(secretA), want: []seal.Key{b, a}},
		{name: "newline", give: "k2:" + std(secretB) + "\nk1:" + std(secretA) + "\n", want: []seal.Key{b, a}},
		{name: "trailing comma", give: "k1:" + std(secretA) + ",", want: []seal.Key{a}},
		{name: "comment entry", give: "# rotated 2026-02,k2:" + std(secretB) + ",k1:" + std(secretA), want: []seal.Key{b, a}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kr, err := seal.ParseKeyEnv(tt.give)
			if err != nil {
				t.Fatalf("ParseKeyEnv: got error %v, want none", err)
			}
			sameKeys(t, kr, tt.want...)
		})
	}
}

func TestParseKeyEnvErrors(t *testing.T) {
	tests := []struct {
		name string
		give string
		want string
	}{
		{name: "empty", give: "", want: "seal: key variable has no key"},
		{name: "only separators", give: ",\n, ,", want: "key variable has no key"},
		{name: "wrong length", give: "k2:" + std(secretB) + ",,k1:" + std(secretA[:16]), want: `key variable entry 3: key "k1": secret decodes to 16 bytes, want 32`},
		{name: "no id", give: std(secretA), want: "key variable entry 1: want \"<id>:<base64 of 32 bytes>\""},
		{name: "bad id", give: "k2:" + std(secretB) + "\nKEY:" + std(secretA), want: "entry 2: key id must be of [a-z0-9-]"},
		{name: "duplicate id", give: "k1:" + std(secretA) + ",k1:" + std(secretB), want: `entry 2: duplicate key id "k1"`},
		{name: "invalid base64", give: "k1:" + std(secretA)[:30] + "*" + std(secretA)[31:], want: "entry 1: key \"k1\": secret is not valid base64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kr, err := seal.ParseKeyEnv(tt.give)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("ParseKeyEnv: got %v, %v; want an error containing %q", kr, err, tt.want)
			}
			assertErrorHidesInput(t, err, tt.give)
			assertNoSecret(t, "ParseKeyEnv error", err.Error(), seal.Key{ID: "a", Secret: secretA}, seal.Key{ID: "b", Secret: secretB})
		})
	}
}

func TestLoadKeyFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	good := write("good.keys", "# keys\nk2:"+std(secretB)+"\nk1:"+std(secretA)+"\n")
	bad := write("bad.keys", "k2:"+std(secretB)+"\nk1:"+std(secretA[:20])+"\n")
	missing := filepath.Join(dir, "missing.keys")

	kr, err := seal.LoadKeyFile(good)
	if err != nil {
		t.Fatalf("LoadKeyFile(good): got error %v, want none", err)
	}
	sameKeys(t, kr, seal.Key{ID: "k2", Secret: secretB}, seal.Key{ID: "k1", Secret: secretA})

	tests := []struct {
		name string
		give string
		want string
	}{
		{name: "bad line", give: bad, want: "seal: key file " + bad + " line 2: key \"k1\": secret decodes to 20 bytes, want 32"},
		{name: "missing", give: missing, want: missing},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kr, err := seal.LoadKeyFile(tt.give)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("LoadKeyFile: got %v, %v; want an error containing %q", kr, err, tt.want)
			}
			assertNoSecret(t, "LoadKeyFile error", err.Error(), seal.Key{ID: "a", Secret: secretA}, seal.Key{ID: "b", Secret: secretB})
		})
	}
	if _, err := seal.LoadKeyFile(missing); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("LoadKeyFile(missing): got %v, want an error wrapping os.ErrNotExist", err)
	}
}
