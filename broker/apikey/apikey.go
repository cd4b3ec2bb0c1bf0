// Package apikey issues, stores and checks API keys: bearer credentials
// bound to a caller identity. etcd holds only a SHA-256 of each key's secret
// part; every replica keeps the keys in memory, coherent through an etcd
// watch, so checking a key costs no etcd round trip.
//
// A key reads "tbk_<id>_<secret>": id is 12 lowercase base32 characters,
// public (it names the key in listings and logs); secret is 32 random bytes
// in unpadded base64url.
package apikey

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Sentinel errors of the package.
var (
	// ErrUnauthenticated: the key is malformed, unknown or retired. It does
	// not say which.
	ErrUnauthenticated = errors.New("apikey: invalid key")
	// ErrUntrustedRecord: a stored key has no valid tag made with the
	// master key; it is never used.
	ErrUntrustedRecord = errors.New("apikey: stored key failed authentication")
	// ErrNotFound: no key has that id.
	ErrNotFound = errors.New("apikey: not found")
	// ErrInvalidArgument: an identity, description, id or hash is malformed.
	ErrInvalidArgument = errors.New("apikey: invalid argument")
	// ErrStatic: the key is declared in the config file; remove it there.
	ErrStatic = errors.New("apikey: static key from the config file")
	// ErrStoreUnavailable: etcd could not be reached in time.
	ErrStoreUnavailable = errors.New("apikey: store unavailable")
	// ErrConflict: concurrent changes kept winning; the caller may retry.
	ErrConflict = errors.New("apikey: conflicting change")
)

const (
	keyPrefix  = "tbk_"
	idLen      = 12
	secretLen  = 43 // base64url of 32 bytes, unpadded
	keyLen     = len(keyPrefix) + idLen + 1 + secretLen
	idAlphabet = "abcdefghijklmnopqrstuvwxyz234567"

	// MaxIdentity and MaxDescription bound the lengths, in bytes.
	MaxIdentity    = 256
	MaxDescription = 256
)

// Key describes an API key, never with the key itself.
type Key struct {
	ID          string
	Identity    string
	Description string
	CreateTime  time.Time
	// RetireTime is zero while the key is usable.
	RetireTime time.Time
	// Static keys come from the config file; they cannot be retired through
	// the API.
	Static bool
}

// Retired reports whether the key no longer authenticates.
func (k Key) Retired() bool { return !k.RetireTime.IsZero() }

// StaticKey is a key declared in the config file, by its id and the hex
// SHA-256 of its secret part (what `tokenbroker apikeys create --offline` prints), so that
// the first admin can get in.
type StaticKey struct {
	ID       string
	Identity string
	SHA256   string
}

// Generate makes a new key from crypto/rand. It returns the key's id, the
// key to hand to the caller, and the hex SHA-256 of its secret part, which
// is all the broker keeps.
func Generate() (id, key, sha256Hex string, err error) {
	var raw [idLen + 32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", "", "", fmt.Errorf("apikey: generate: %w", err)
	}
	idb := make([]byte, idLen)
	for i := range idb {
		idb[i] = idAlphabet[raw[i]&31]
	}
	secret := base64URL.EncodeToString(raw[idLen:])
	clear(raw[:])
	sum := sha256.Sum256([]byte(secret))
	return string(idb), keyPrefix + string(idb) + "_" + secret, hex.EncodeToString(sum[:]), nil
}

// ParseID returns the id of a well-formed key, and false for anything else.
// The id is public; it is safe to log.
func ParseID(key string) (string, bool) {
	id, _, ok := split(key)
	return id, ok
}

// Parse returns the id of a well-formed key and the hex SHA-256 of its
// secret part: what a static key declaration holds. It fails with
// ErrInvalidArgument for anything else, without quoting the key.
func Parse(key string) (id, sha256Hex string, err error) {
	id, secret, ok := split(key)
	if !ok {
		return "", "", fmt.Errorf("%w: not an API key (tbk_ and 12 characters of [a-z2-7], _ and 43 of base64url)", ErrInvalidArgument)
	}
	sum := sha256.Sum256([]byte(secret))
	return id, hex.EncodeToString(sum[:]), nil
}

// split parses "tbk_<id>_<secret>" by position: the secret's alphabet
// includes '_'.
func split(key string) (id, secret string, ok bool) {
	if len(key) != keyLen || !strings.HasPrefix(key, keyPrefix) || key[len(keyPrefix)+idLen] != '_' {
		return "", "", false
	}
	id = key[len(keyPrefix) : len(keyPrefix)+idLen]
	secret = key[len(keyPrefix)+idLen+1:]
	if !validID(id) {
		return "", "", false
	}
	for i := 0; i < len(secret); i++ {
		c := secret[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return "", "", false
		}
	}
	return id, secret, true
}

func validID(id string) bool {
	if len(id) != idLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		if strings.IndexByte(idAlphabet, id[i]) < 0 {
			return false
		}
	}
	return true
}

// ValidateIdentity checks a caller identity: 1 to MaxIdentity bytes of
// UTF-8 without control characters or surrounding spaces.
func ValidateIdentity(identity string) error {
	switch {
	case identity == "":
		return fmt.Errorf("%w: identity is empty", ErrInvalidArgument)
	case len(identity) > MaxIdentity:
		return fmt.Errorf("%w: identity is longer than %d bytes", ErrInvalidArgument, MaxIdentity)
	case !printable(identity):
		return fmt.Errorf("%w: identity must be UTF-8 without control characters", ErrInvalidArgument)
	case strings.TrimSpace(identity) != identity:
		return fmt.Errorf("%w: identity has surrounding spaces", ErrInvalidArgument)
	}
	return nil
}

func validateDescription(d string) error {
	if len(d) > MaxDescription {
		return fmt.Errorf("%w: description is longer than %d bytes", ErrInvalidArgument, MaxDescription)
	}
	if !printable(d) {
		return fmt.Errorf("%w: description must be UTF-8 without control characters", ErrInvalidArgument)
	}
	return nil
}

func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return false
		}
	}
	return true
}

// validateStatic checks a static key declaration.
func validateStatic(k StaticKey) ([32]byte, error) {
	var sum [32]byte
	if !validID(k.ID) {
		return sum, fmt.Errorf("%w: static key id %q is not %d lowercase base32 characters", ErrInvalidArgument, k.ID, idLen)
	}
	if err := ValidateIdentity(k.Identity); err != nil {
		return sum, fmt.Errorf("static key %s: %w", k.ID, err)
	}
	b, err := hex.DecodeString(k.SHA256)
	if err != nil || len(b) != len(sum) {
		return sum, fmt.Errorf("%w: static key %s: sha256 is not 64 hex digits", ErrInvalidArgument, k.ID)
	}
	copy(sum[:], b)
	return sum, nil
}

// ValidateStatic checks static key declarations: well-formed ids, identities
// and hashes, and no id declared twice. It reports every problem at once.
func ValidateStatic(keys []StaticKey) error {
	var errs []error
	seen := make(map[string]bool, len(keys))
	for _, k := range keys {
		if _, err := validateStatic(k); err != nil {
			errs = append(errs, err)
		}
		if seen[k.ID] {
			errs = append(errs, fmt.Errorf("%w: static key id %q is declared twice", ErrInvalidArgument, k.ID))
		}
		seen[k.ID] = true
	}
	return errors.Join(errs...)
}
