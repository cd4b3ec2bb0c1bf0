// Package seal seals the values the broker keeps in etcd — provider client
// secrets, passwords, refresh tokens and access tokens — with AES-256-GCM,
// under a master key that can be rotated.
//
// # Sealed value
//
// A sealed value is, byte by byte:
//
//	+---------+--------+----------------+-------------+------------------------+
//	| version | id len | key id         | nonce       | GCM ciphertext and tag |
//	| 1 byte  | 1 byte | 1–16 bytes     | 12 bytes    | len(plaintext)+16      |
//	+---------+--------+----------------+-------------+------------------------+
//
// The version is 1. The key id names the master key that sealed the value, so
// that a keyring holding several keys knows which one opens it. The nonce is
// 96 random bits from crypto/rand.
//
// The additional data given to GCM is
//
//	"tokenbroker/seal/v1\x00" + key id + "\x00" + etcd key
//
// so a record copied to another etcd key does not open, nor does a record
// whose key id was rewritten to name another key, nor one whose version byte
// was changed. Every byte of a sealed value is therefore authenticated: the
// header through the additional data, the nonce and ciphertext by GCM itself.
//
// # Keys
//
// A master key is 32 bytes. The AES-256 key that actually encrypts is derived
// from it with HKDF-SHA256 (no salt, info "tokenbroker seal v1"), so the raw
// master secret is never used as a cipher key and a future format can derive
// an independent key from the same master secret.
//
// With random 96-bit nonces, NIST SP 800-38D §8.3 bounds one key to 2^32
// seals to keep the chance of a nonce collision below 2^-32. The broker seals
// a value per secret or token write — orders of magnitude below that bound
// over the life of a key; rotating the key resets the count.
//
// # Rotation
//
// A Keyring seals with its primary key and opens with any of its keys. To
// rotate, generate a key, make it the first line of the key file (the
// primary) and keep the old keys after it; restart; then re-seal every
// record for which NeedsReseal reports true (Reseal does the open and seal).
// When no record needs re-sealing, the old keys can be dropped from the file.
//
// # Key file
//
// One key per line, "<id>:<base64 of 32 bytes>" (standard or URL alphabet,
// padded or not). Blank lines and lines starting with '#' are ignored. The
// first key is the primary, the rest are older keys. The same format, with
// keys separated by ',' or newlines, is accepted from an environment
// variable.
//
// # Errors
//
// No error this package returns and no value it formats carries key
// material or plaintext: Key and Keyring print ids only, and errors about a
// key file name a line number, never its content.
package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Sentinel errors. Open returns one of the first three, wrapped; Seal
// returns an error only if the system's random source fails.
var (
	// ErrUnknownKey: the value names a key id that is not in the keyring.
	ErrUnknownKey = errors.New("seal: sealed with an unknown key")
	// ErrOpen: the value is well formed and names a known key, but does not
	// authenticate — wrong key, wrong etcd key, or tampered with.
	ErrOpen = errors.New("seal: cannot open (wrong key, wrong etcd key, or tampered)")
	// ErrFormat: the bytes are not a sealed value (too short, unknown
	// version, malformed key id).
	ErrFormat = errors.New("seal: not a sealed value")
)

const (
	// version is the first byte of every sealed value.
	version = 1
	// KeySize is the length of a master key secret in bytes.
	KeySize = 32
	// MaxIDLen is the longest key id.
	MaxIDLen = 16

	nonceSize = 12
	tagSize   = 16
	// minSealed is the length of the shortest possible sealed value: a
	// one-character key id and an empty plaintext.
	minSealed = 2 + 1 + nonceSize + tagSize

	aadPrefix = "tokenbroker/seal/v1\x00"
	hkdfInfo  = "tokenbroker seal v1"
	// fingerprintInfo derives the key of Fingerprint.
	fingerprintInfo = "tokenbroker fingerprint v1"
	// fingerprintLen is the number of bytes of the HMAC a fingerprint shows.
	fingerprintLen = 16
	redacted       = "<redacted>"
	keyGoType      = "seal.Key"
	ringGoType     = "seal.Keyring"
)

// Key is a 32-byte AES-256 master key with a short id.
//
// Formatting a Key with any fmt verb, or marshalling it to JSON, shows its
// id and never its secret.
type Key struct {
	ID     string // 1–16 chars of [a-z0-9-]; stored in every sealed record
	Secret []byte // exactly 32 bytes
}

// String returns `seal.Key{ID: "<id>", Secret: <redacted>}`.
func (k Key) String() string {
	return keyGoType + "{ID: " + strconv.Quote(k.ID) + ", Secret: " + redacted + "}"
}

// GoString is String: the %#v form of a Key does not show the secret either.
func (k Key) GoString() string { return k.String() }

// Format implements fmt.Formatter so that every verb (%v, %+v, %#v, %s, %q,
// %x, %d, …) prints the redacted form.
func (k Key) Format(f fmt.State, verb rune) { formatRedacted(f, verb, k.String()) }

// MarshalJSON writes the id and a redacted secret, so a Key logged through a
// JSON encoder does not leak. A Key therefore does not round-trip through
// JSON; use FormatKey and ParseKeyFile to store one.
func (k Key) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		ID     string `json:"id"`
		Secret string `json:"secret"`
	}{k.ID, redacted})
}

func formatRedacted(f fmt.State, verb rune, s string) {
	switch verb {
	case 'q':
		fmt.Fprintf(f, "%q", s)
	default:
		io.WriteString(f, s)
	}
}

// validateID reports whether id is 1–16 characters of [a-z0-9-]. Its error
// never quotes the id: a malformed id may be a pasted secret.
func validateID(id string) error {
	if len(id) == 0 || len(id) > MaxIDLen {
		return fmt.Errorf("key id must be 1–%d characters, got %d", MaxIDLen, len(id))
	}
	for i := 0; i < len(id); i++ {
		if !validIDByte(id[i]) {
			return fmt.Errorf("key id must be of [a-z0-9-], byte %d is not", i+1)
		}
	}
	return nil
}

func validIDByte(c byte) bool {
	return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-'
}

// GenerateKey makes a key with the given id and a secret from crypto/rand,
// for dev mode and `keys generate`.
func GenerateKey(id string) (Key, error) {
	if err := validateID(id); err != nil {
		return Key{}, fmt.Errorf("seal: generate key: %w", err)
	}
	secret := make([]byte, KeySize)
	if _, err := rand.Read(secret); err != nil {
		return Key{}, fmt.Errorf("seal: generate key: %w", err)
	}
	return Key{ID: id, Secret: secret}, nil
}

// keySealer is one key of a Keyring: the AEAD under the derived key and the
// parts of the header and additional data that depend on the key id.
type keySealer struct {
	id     string
	aead   cipher.AEAD
	header []byte // version, id length, id
	aad    string // aadPrefix + id + "\x00"
}

func newKeySealer(k Key) (*keySealer, error) {
	derived, err := hkdf.Key(sha256.New, k.Secret, nil, hkdfInfo, KeySize)
	if err != nil {
		return nil, err
	}
	defer clear(derived)
	block, err := aes.NewCipher(derived)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	header := make([]byte, 0, 2+len(k.ID))
	header = append(header, version, byte(len(k.ID)))
	header = append(header, k.ID...)
	return &keySealer{
		id:     k.ID,
		aead:   aead,
		header: header,
		aad:    aadPrefix + k.ID + "\x00",
	}, nil
}

func (s *keySealer) additionalData(etcdKey string) []byte {
	aad := make([]byte, 0, len(s.aad)+len(etcdKey))
	aad = append(aad, s.aad...)
	return append(aad, etcdKey...)
}

// Keyring seals with its primary key and opens with any of its keys. Safe
// for concurrent use; immutable after NewKeyring. It keeps no copy of the
// master secrets, only the ciphers derived from them.
//
// The zero Keyring has no key and must not be used; call NewKeyring.
type Keyring struct {
	primary *keySealer
	// fingerprintKey is the HMAC key of Fingerprint, derived from the
	// primary key.
	fingerprintKey []byte
	keys           map[string]*keySealer
	ids            []string // primary first, then older keys in the order given
}

// NewKeyring returns a keyring that seals with primary and opens values
// sealed with primary or any of older. It fails if an id is malformed or
// repeated, a secret is not 32 bytes or is all zeros, or two keys share a
// secret (a rotation that changes only the id rotates nothing). The secrets
// are not retained; the caller may clear them afterwards.
func NewKeyring(primary Key, older ...Key) (*Keyring, error) {
	kr, i, err := newKeyring(append([]Key{primary}, older...))
	if err != nil {
		return nil, fmt.Errorf("seal: key %d: %w", i+1, err)
	}
	return kr, nil
}

// newKeyring builds a keyring from keys, the first the primary. On failure it
// returns the index of the offending key and an error that names ids only.
func newKeyring(keys []Key) (*Keyring, int, error) {
	kr := &Keyring{keys: make(map[string]*keySealer, len(keys))}
	for i, k := range keys {
		if err := validateKey(k); err != nil {
			return nil, i, err
		}
		if _, dup := kr.keys[k.ID]; dup {
			return nil, i, fmt.Errorf("duplicate key id %q", k.ID)
		}
		for _, prev := range keys[:i] {
			if subtle.ConstantTimeCompare(prev.Secret, k.Secret) == 1 {
				return nil, i, fmt.Errorf("key %q has the same secret as key %q", k.ID, prev.ID)
			}
		}
		s, err := newKeySealer(k)
		if err != nil {
			return nil, i, fmt.Errorf("key %q: %w", k.ID, err)
		}
		kr.keys[k.ID] = s
		kr.ids = append(kr.ids, k.ID)
	}
	kr.primary = kr.keys[keys[0].ID]
	fp, err := hkdf.Key(sha256.New, keys[0].Secret, nil, fingerprintInfo, KeySize)
	if err != nil {
		return nil, 0, err
	}
	kr.fingerprintKey = fp
	return kr, 0, nil
}

func validateKey(k Key) error {
	if err := validateID(k.ID); err != nil {
		return err
	}
	if len(k.Secret) != KeySize {
		return fmt.Errorf("key %q: secret is %d bytes, want %d", k.ID, len(k.Secret), KeySize)
	}
	var zero [KeySize]byte
	if subtle.ConstantTimeCompare(k.Secret, zero[:]) == 1 {
		return fmt.Errorf("key %q: secret is all zeros", k.ID)
	}
	return nil
}

// PrimaryID returns the id of the key that Seal uses.
func (k *Keyring) PrimaryID() string { return k.primary.id }

// IDs returns the ids of the keyring's keys, the primary first.
func (k *Keyring) IDs() []string { return append([]string(nil), k.ids...) }

// Seal encrypts plaintext under the primary key, binding it to aad, the etcd
// key the value will be stored under. plaintext may be empty. The result is
// len(plaintext) + 2 + len(PrimaryID()) + 28 bytes long and does not alias
// plaintext. Seal fails only if crypto/rand fails.
func (k *Keyring) Seal(aad string, plaintext []byte) ([]byte, error) {
	s := k.primary
	n := len(s.header) + nonceSize
	out := make([]byte, n, n+len(plaintext)+tagSize)
	copy(out, s.header)
	nonce := out[len(s.header):n]
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("seal: nonce: %w", err)
	}
	return s.aead.Seal(out, nonce, plaintext, s.additionalData(aad)), nil
}

// Open decrypts a value sealed by Seal under the same etcd key aad. It
// returns a wrapped ErrFormat if sealed is not a sealed value, ErrUnknownKey
// if it names a key that is not in the keyring, and ErrOpen if it does not
// authenticate (wrong key, wrong etcd key, or tampered with). The returned
// plaintext is a new slice, non-nil even when empty.
func (k *Keyring) Open(aad string, sealed []byte) ([]byte, error) {
	id, nonce, ciphertext, err := parse(sealed)
	if err != nil {
		return nil, err
	}
	s, ok := k.keys[id]
	if !ok {
		return nil, fmt.Errorf("%w: key id %q", ErrUnknownKey, id)
	}
	plaintext, err := s.aead.Open(make([]byte, 0, len(ciphertext)-tagSize), nonce, ciphertext, s.additionalData(aad))
	if err != nil {
		return nil, fmt.Errorf("%w: key id %q", ErrOpen, id)
	}
	return plaintext, nil
}

// Fingerprint returns a digest of secret that tells whether two secrets
// are the same without revealing either: 32 hex digits of an HMAC-SHA256
// under a key derived from the primary master key ("" for an empty
// secret). Every replica with the same primary key computes the same
// fingerprint; without the master key, a fingerprint does not let anyone
// test guesses of the secret offline. It changes when the primary key is
// rotated.
func (k *Keyring) Fingerprint(secret string) string {
	if secret == "" {
		return ""
	}
	m := hmac.New(sha256.New, k.fingerprintKey)
	m.Write([]byte(secret))
	return hex.EncodeToString(m.Sum(nil)[:fingerprintLen])
}

// KeyID returns the id of the key that sealed the value, without opening it
// and whether or not the keyring holds that key. It returns a wrapped
// ErrFormat if sealed is not a sealed value.
func (k *Keyring) KeyID(sealed []byte) (string, error) {
	id, _, _, err := parse(sealed)
	return id, err
}

// NeedsReseal reports whether sealed was sealed with a key other than the
// primary, or cannot be parsed at all. A true answer does not mean Reseal
// will succeed: the value may name a key the keyring does not hold.
func (k *Keyring) NeedsReseal(sealed []byte) bool {
	id, _, _, err := parse(sealed)
	return err != nil || id != k.primary.id
}

// Reseal opens sealed under aad with whichever key sealed it and seals the
// plaintext again under the primary key. It returns Open's errors. It
// re-seals even a value already under the primary key; callers that move
// records in bulk check NeedsReseal first.
func (k *Keyring) Reseal(aad string, sealed []byte) ([]byte, error) {
	plaintext, err := k.Open(aad, sealed)
	if err != nil {
		return nil, err
	}
	defer clear(plaintext)
	return k.Seal(aad, plaintext)
}

// parse splits a sealed value into its key id, nonce and ciphertext with tag,
// or returns a wrapped ErrFormat. It never indexes past the input.
func parse(sealed []byte) (id string, nonce, ciphertext []byte, err error) {
	if len(sealed) < minSealed {
		return "", nil, nil, fmt.Errorf("%w: %d bytes is too short", ErrFormat, len(sealed))
	}
	if sealed[0] != version {
		return "", nil, nil, fmt.Errorf("%w: unknown version %d", ErrFormat, sealed[0])
	}
	idLen := int(sealed[1])
	if idLen == 0 || idLen > MaxIDLen {
		return "", nil, nil, fmt.Errorf("%w: key id length %d", ErrFormat, idLen)
	}
	rest := sealed[2:]
	if len(rest) < idLen+nonceSize+tagSize {
		return "", nil, nil, fmt.Errorf("%w: %d bytes is too short", ErrFormat, len(sealed))
	}
	for _, c := range rest[:idLen] {
		if !validIDByte(c) {
			return "", nil, nil, fmt.Errorf("%w: malformed key id", ErrFormat)
		}
	}
	id = string(rest[:idLen])
	rest = rest[idLen:]
	return id, rest[:nonceSize:nonceSize], rest[nonceSize:], nil
}

// String returns `seal.Keyring{Primary: "<id>", Older: [<ids>]}`.
func (k Keyring) String() string {
	var b strings.Builder
	b.WriteString(ringGoType + "{Primary: ")
	if k.primary != nil {
		b.WriteString(strconv.Quote(k.primary.id))
	} else {
		b.WriteString(`""`)
	}
	b.WriteString(", Older: [")
	for i, id := range k.ids {
		if i == 0 {
			continue
		}
		if i > 1 {
			b.WriteString(", ")
		}
		b.WriteString(strconv.Quote(id))
	}
	b.WriteString("]}")
	return b.String()
}

// GoString is String.
func (k Keyring) GoString() string { return k.String() }

// Format implements fmt.Formatter: every verb prints the key ids only. (The
// methods have value receivers so that a Keyring and a *Keyring both format
// this way.)
func (k Keyring) Format(f fmt.State, verb rune) { formatRedacted(f, verb, k.String()) }

// FormatKey renders a key as a key-file line, "<id>:<padded standard
// base64>", without a newline. The line contains the secret: write it only
// where the key belongs.
func FormatKey(k Key) string {
	return k.ID + ":" + base64Std.EncodeToString(k.Secret)
}
