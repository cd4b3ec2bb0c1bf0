package oauth

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

const (
	maxExpiresIn  = 10 * 365 * 24 * time.Hour
	maxRetryAfter = time.Hour
	maxFieldBytes = 256 // cap on each sanitized *Error field

	// minRedactLen is the shortest secret sanitize looks for: shorter ones
	// would blank out ordinary words without protecting anything.
	minRedactLen = 4
)

// Error is an error answer from the token endpoint: a non-2xx status, with the RFC 6749 §5.2 fields when the body had them.
type Error struct {
	StatusCode  int
	Code        string        // "invalid_client", "invalid_grant", ...; "" when the body carried none (HTML page, empty body)
	Description string        // error_description, sanitized: at most 256 bytes, printable characters only
	URI         string        // error_uri, sanitized likewise
	RetryAfter  time.Duration // from a Retry-After header (seconds or HTTP date), 0 when absent
}

// Error returns the status, the OAuth code and the description, e.g.
// "oauth: token endpoint answered 401: invalid_client: Client authentication
// failed", or "oauth: token endpoint answered 502 Bad Gateway" when the body
// carried no code.
func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "oauth: token endpoint answered %d", e.StatusCode)
	if e.Code != "" {
		b.WriteString(": " + e.Code)
	} else if text := http.StatusText(e.StatusCode); text != "" {
		b.WriteString(" " + text)
	}
	if e.Description != "" {
		b.WriteString(": " + e.Description)
	}
	return b.String()
}

// Temporary reports whether the same request may succeed later: true for
// 408, 429 and 5xx answers and for the codes temporarily_unavailable,
// server_error and slow_down; false for the RFC 6749 §5.2 codes that say the
// request itself is wrong (invalid_client, invalid_grant, ...), whatever the
// status, and for every other 4xx.
func (e *Error) Temporary() bool {
	switch e.Code {
	case "temporarily_unavailable", "server_error", "slow_down":
		return true
	case "invalid_request", "invalid_client", "invalid_grant", "unauthorized_client",
		"unsupported_grant_type", "invalid_scope":
		return false
	}
	return e.StatusCode == http.StatusRequestTimeout || e.StatusCode == http.StatusTooManyRequests ||
		e.StatusCode >= 500
}

// parseResponse turns a token endpoint's answer into a Token or an error as
// described on Client.Token. Occurrences of secrets are redacted from the
// *Error fields.
func parseResponse(status int, contentType string, body []byte, secrets []string) (*Token, error) {
	f, err := decodeBody(contentType, body)
	if status < 200 || status > 299 {
		return nil, newError(status, f, secrets) // f is nil when the body was not understood
	}
	if err != nil {
		return nil, err
	}
	switch code, err := f.string("error"); {
	case err != nil:
		return nil, badResponse("error is not a string")
	case code != "":
		return nil, newError(status, f, secrets)
	}
	return parseToken(f)
}

// fields holds a response body's top-level fields as JSON values; form
// values are turned into JSON strings.
type fields map[string]json.RawMessage

var utf8BOM = []byte("\ufeff")

// decodeBody reads a JSON object (by content type, or whatever body starts
// with "{") or a form-encoded body (application/x-www-form-urlencoded and
// text/plain).
func decodeBody(contentType string, body []byte) (fields, error) {
	body = bytes.TrimPrefix(body, utf8BOM)
	mediaType, _, _ := mime.ParseMediaType(contentType)
	switch {
	case bytes.HasPrefix(bytes.TrimLeft(body, " \t\r\n"), []byte("{")),
		mediaType == "application/json", strings.HasSuffix(mediaType, "+json"):
		var f fields
		if err := json.Unmarshal(body, &f); err != nil {
			return nil, badResponse("body is not a JSON object")
		}
		return f, nil
	case mediaType == "application/x-www-form-urlencoded", mediaType == "text/plain":
		q, err := url.ParseQuery(string(body))
		if err != nil {
			return nil, badResponse("body is not form-encoded")
		}
		f := make(fields, len(q))
		for k, v := range q {
			f[k], _ = json.Marshal(v[0]) // a string always marshals
		}
		return f, nil
	case mediaType != "":
		return nil, badResponse(fmt.Sprintf("unexpected content type %q", mediaType))
	}
	return nil, badResponse("unexpected content type")
}

// string returns the string field key; "" when it is absent or null.
func (f fields) string(key string) (string, error) {
	raw, ok := f[key]
	if !ok || isNull(raw) {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", errors.New("not a string")
	}
	return s, nil
}

func isNull(raw json.RawMessage) bool { return string(bytes.TrimSpace(raw)) == "null" }

func newError(status int, f fields, secrets []string) *Error {
	code, _ := f.string("error")
	desc, _ := f.string("error_description")
	uri, _ := f.string("error_uri")
	return &Error{
		StatusCode:  status,
		Code:        sanitize(code, secrets),
		Description: sanitize(desc, secrets),
		URI:         sanitize(uri, secrets),
	}
}

func parseToken(f fields) (*Token, error) {
	var t Token
	for _, s := range []struct {
		key string
		dst *string
	}{
		{"access_token", &t.AccessToken},
		{"token_type", &t.TokenType},
		{"refresh_token", &t.RefreshToken},
		{"id_token", &t.IDToken},
		{"scope", &t.Scope},
		{"state", &t.State},
	} {
		v, err := f.string(s.key)
		if err != nil {
			return nil, badResponse(s.key + " is not a string")
		}
		*s.dst = v
	}
	switch {
	case t.AccessToken == "":
		return nil, badResponse("missing access_token")
	case !isVSChars(t.AccessToken):
		return nil, badResponse("access_token has invalid characters")
	case !isVSChars(t.RefreshToken):
		return nil, badResponse("refresh_token has invalid characters")
	}
	d, err := parseExpiresIn(f["expires_in"])
	if err != nil {
		return nil, err
	}
	t.ExpiresIn = d
	return &t, nil
}

// isVSChars reports whether s is made of RFC 6749 Appendix A VSCHARs
// (%x20-7E), as access and refresh tokens must be.
func isVSChars(s string) bool {
	for i := range len(s) {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// parseExpiresIn accepts a JSON number, a string holding one, null, "" or
// nothing (0), between 0 and ten years of seconds.
func parseExpiresIn(raw json.RawMessage) (time.Duration, error) {
	num := string(bytes.TrimSpace(raw))
	if num == "" || num == "null" {
		return 0, nil
	}
	if num[0] == '"' {
		if err := json.Unmarshal(raw, &num); err != nil {
			return 0, badResponse("expires_in is not a number")
		}
		if num == "" {
			return 0, nil
		}
		// The string must hold a JSON number, not one of the other forms
		// strconv accepts ("Inf", "0x1p4", " 1").
		if c := num[0]; (c != '-' && (c < '0' || c > '9')) || !json.Valid([]byte(num)) {
			return 0, badResponse("expires_in is not a number")
		}
	}
	secs, err := strconv.ParseFloat(num, 64)
	switch {
	case err != nil && !errors.Is(err, strconv.ErrRange):
		return 0, badResponse("expires_in is not a number")
	case secs < 0:
		return 0, badResponse("expires_in is negative")
	case secs > maxExpiresIn.Seconds():
		return 0, badResponse("expires_in is out of range")
	}
	return time.Duration(secs * float64(time.Second)), nil
}

// parseRetryAfter reads a Retry-After header (RFC 9110 §10.2.3: seconds or
// an HTTP date) as a wait from now, between 0 and maxRetryAfter.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	var d time.Duration
	if secs, err := strconv.ParseUint(v, 10, 64); err == nil {
		d = time.Duration(min(secs, uint64(maxRetryAfter/time.Second))) * time.Second
	} else if errors.Is(err, strconv.ErrRange) {
		d = maxRetryAfter
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	}
	return min(max(d, 0), maxRetryAfter)
}

// sanitize keeps s's printable characters (whitespace becomes a space),
// redacts every secret of at least minRedactLen bytes, and cuts the result
// to maxFieldBytes.
func sanitize(s string, secrets []string) string {
	s = strings.Map(func(r rune) rune {
		switch {
		case r == utf8.RuneError:
			return -1
		case unicode.IsSpace(r):
			return ' '
		case !unicode.IsPrint(r):
			return -1
		}
		return r
	}, s)
	for _, secret := range secrets {
		if len(secret) >= minRedactLen {
			s = strings.ReplaceAll(s, secret, "[redacted]")
		}
		s = redactParts(s, secret)
	}
	s = strings.TrimSpace(s)
	if len(s) > maxFieldBytes {
		i := maxFieldBytes
		for i > 0 && !utf8.RuneStart(s[i]) {
			i--
		}
		s = s[:i]
	}
	return s
}

func badResponse(reason string) error { return fmt.Errorf("%w: %s", ErrBadResponse, reason) }

// partLen is the shortest run of a secret that is redacted where a provider
// quotes part of it.
const partLen = 8

// redactParts replaces every run of at least partLen bytes that s shares
// with secret.
func redactParts(s, secret string) string {
	if len(secret) < partLen {
		return s
	}
	for i := 0; i+partLen <= len(secret); i++ {
		part := secret[i : i+partLen]
		for {
			j := strings.Index(s, part)
			if j < 0 {
				break
			}
			// Grow the match as far as it goes on.
			end := j + partLen
			for k := i + partLen; end < len(s) && k < len(secret) && s[end] == secret[k]; k++ {
				end++
			}
			s = s[:j] + "[redacted]" + s[end:]
		}
	}
	return s
}
