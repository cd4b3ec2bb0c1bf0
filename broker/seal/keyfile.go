package seal

import (
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strings"
)

var (
	base64Std    = base64.StdEncoding
	base64RawStd = base64.RawStdEncoding.Strict()
	base64RawURL = base64.RawURLEncoding.Strict()
)

// ParseKeyFile reads a key file: one key per line,
// "<id>:<base64 (std or url, padded or not) of 32 bytes>"; blank lines and
// lines starting with '#' are ignored; the first key is primary, the rest are
// older keys. Errors name the line number but never print key material.
func ParseKeyFile(data []byte) (*Keyring, error) {
	return parseKeys("key file", "line", strings.Split(string(data), "\n"))
}

// LoadKeyFile reads and parses the key file at path (see ParseKeyFile).
func LoadKeyFile(path string) (*Keyring, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	defer clear(data)
	return parseKeys("key file "+path, "line", strings.Split(string(data), "\n"))
}

// Unwrapper opens master keys that are stored wrapped (encrypted) by a key
// held elsewhere, such as an HSM: envelope encryption. Unwrap returns the
// 32-byte key that wrapped, the entry of key id, holds; its errors must not
// carry key material.
type Unwrapper interface {
	Unwrap(id string, wrapped []byte) ([]byte, error)
}

// LoadWrappedKeyFile reads a key file whose entries hold wrapped keys,
// "<id>:<base64 of the wrapped key>", and opens each with u. Errors name
// the line, never key material.
func LoadWrappedKeyFile(path string, u Unwrapper) (*Keyring, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	return parseEntries("key file "+path, "line", strings.Split(string(data), "\n"), wrappedEntry(u))
}

// ParseWrappedKeyEnv is LoadWrappedKeyFile for an environment variable's
// value, entries separated by ',' or newlines.
func ParseWrappedKeyEnv(value string, u Unwrapper) (*Keyring, error) {
	return parseEntries("key variable", "entry", splitEntries(value), wrappedEntry(u))
}

// wrappedEntry parses "<id>:<base64 of a wrapped key>" and unwraps it.
func wrappedEntry(u Unwrapper) func(string) (Key, error) {
	return func(entry string) (Key, error) {
		id, encoded, ok := strings.Cut(entry, ":")
		if !ok {
			return Key{}, errors.New(`want "<id>:<base64 of a wrapped key>", found no ':'`)
		}
		id, encoded = strings.TrimSpace(id), strings.TrimSpace(encoded)
		if err := validateID(id); err != nil {
			return Key{}, err
		}
		wrapped, err := base64RawStd.DecodeString(strings.TrimRight(encoded, "="))
		if err != nil {
			return Key{}, fmt.Errorf("key %q: wrapped key is not valid base64", id)
		}
		secret, err := u.Unwrap(id, wrapped)
		if err != nil {
			return Key{}, fmt.Errorf("key %q: unwrap: %w", id, err)
		}
		if len(secret) != KeySize {
			clear(secret)
			return Key{}, fmt.Errorf("key %q: unwraps to %d bytes, want %d", id, len(secret), KeySize)
		}
		return Key{ID: id, Secret: secret}, nil
	}
}

// ParseKeyEnv parses the key-file format from an environment variable's
// value, with keys separated by ',' or newlines. Errors name the entry by
// its position, counting from 1.
func ParseKeyEnv(value string) (*Keyring, error) {
	return parseKeys("key variable", "entry", splitEntries(value))
}

// splitEntries splits on ',' and '\n', keeping empty entries so that entry
// numbers in errors match positions in the value.
func splitEntries(value string) []string {
	return strings.Split(strings.ReplaceAll(value, ",", "\n"), "\n")
}

// parseKeys parses key entries; source and unit name them in errors
// ("key file line 3"). Entries are trimmed of surrounding white space
// (so CRLF files work); empty ones and those starting with '#' are skipped.
func parseKeys(source, unit string, entries []string) (*Keyring, error) {
	return parseEntries(source, unit, entries, parseKeyEntry)
}

// parseEntries is parseKeys with parse turning one entry into a key.
func parseEntries(source, unit string, entries []string, parse func(string) (Key, error)) (*Keyring, error) {
	var keys []Key
	var positions []int
	defer func() {
		for _, k := range keys {
			clear(k.Secret)
		}
	}()
	for i, entry := range entries {
		entry = strings.TrimSpace(entry)
		if entry == "" || strings.HasPrefix(entry, "#") {
			continue
		}
		k, err := parse(entry)
		if err != nil {
			return nil, fmt.Errorf("seal: %s %s %d: %w", source, unit, i+1, err)
		}
		keys = append(keys, k)
		positions = append(positions, i+1)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("seal: %s has no key", source)
	}
	kr, bad, err := newKeyring(keys)
	if err != nil {
		return nil, fmt.Errorf("seal: %s %s %d: %w", source, unit, positions[bad], err)
	}
	return kr, nil
}

// parseKeyEntry parses "<id>:<base64>". Its errors never quote the entry.
func parseKeyEntry(entry string) (Key, error) {
	id, encoded, ok := strings.Cut(entry, ":")
	if !ok {
		return Key{}, errors.New(`want "<id>:<base64 of 32 bytes>", found no ':'`)
	}
	id, encoded = strings.TrimSpace(id), strings.TrimSpace(encoded)
	if err := validateID(id); err != nil {
		return Key{}, err
	}
	secret, err := decodeSecret(encoded)
	if err != nil {
		return Key{}, fmt.Errorf("key %q: %w", id, err)
	}
	return Key{ID: id, Secret: secret}, nil
}

// decodeSecret decodes standard or URL-safe base64, padded or not, of
// exactly KeySize bytes. Its errors never include the input, nor the
// decoder's error.
func decodeSecret(encoded string) ([]byte, error) {
	raw := strings.TrimRight(encoded, "=")
	if padded := len(raw) != len(encoded); padded && (len(encoded)%4 != 0 || len(encoded)-len(raw) > 2) {
		return nil, errors.New("secret is not valid base64 (bad padding)")
	}
	secret, err := base64RawStd.DecodeString(raw)
	if err != nil {
		secret, err = base64RawURL.DecodeString(raw)
	}
	if err != nil {
		return nil, errors.New("secret is not valid base64 (standard or URL alphabet)")
	}
	if len(secret) != KeySize {
		clear(secret)
		return nil, fmt.Errorf("secret decodes to %d bytes, want %d", len(secret), KeySize)
	}
	return secret, nil
}
