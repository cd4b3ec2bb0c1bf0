package broker

import (
	"fmt"
	"strconv"
	"unicode/utf8"
)

// Bounds of what an admin may store, in bytes unless said otherwise. A
// provider record stays well under etcd's request limit with every field
// at its bound.
const (
	MaxURLLen          = 2048
	MaxClientIDLen     = 512
	MaxClientSecretLen = 4096
	MaxUsernameLen     = 512
	MaxPasswordLen     = 4096
	// MaxTokenParams bounds how many token_params a provider has; each key
	// and value are bounded too.
	MaxTokenParams        = 32
	MaxTokenParamKeyLen   = 128
	MaxTokenParamValueLen = 2048
	// MaxGrantTypes bounds the grant_types list (there are 4 grants;
	// repeats are allowed, not without end).
	MaxGrantTypes = 8
)

// quoteMax is how much of a bad input an error quotes.
const quoteMax = 64

// quote is s quoted, as %q would, but of at most its first 64 bytes (cut
// at a rune boundary) followed by "…": an error never echoes a large input
// back.
func quote(s string) string {
	if len(s) <= quoteMax {
		return strconv.Quote(s)
	}
	return strconv.Quote(s[:cutAt(s, quoteMax)]) + "…"
}

// Cut is s when it has at most n bytes, else its first n bytes or fewer
// (cut at a rune boundary) followed by "…".
func Cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:cutAt(s, n)] + "…"
}

// cutAt is the largest rune boundary of s at or before n < len(s).
func cutAt(s string, n int) int {
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return n
}

// tooLong is the error of a field over its bound.
func tooLong(field string, n, limit int) error {
	return fmt.Errorf("%s is %d bytes, longer than %d", field, n, limit)
}
