package oauth

import (
	"context"
	"time"
)

// SpanDeviceAuthorization is the span name of a device authorization
// request (RFC 8628 §3.1).
const SpanDeviceAuthorization = "oauth.device_authorization"

// DeviceCodeGrantType is the grant_type of the device access token request
// (RFC 8628 §3.4).
const DeviceCodeGrantType = "urn:ietf:params:oauth:grant-type:device_code"

// DefaultDeviceInterval is the polling interval when the device
// authorization response names none (RFC 8628 §3.2).
const DefaultDeviceInterval = 5 * time.Second

// SlowDownIncrement is what a slow_down answer adds to the polling
// interval, for this and every later request (RFC 8628 §3.5).
const SlowDownIncrement = 5 * time.Second

// The device access token request's error codes (RFC 8628 §3.5).
const (
	CodeAuthorizationPending = "authorization_pending"
	CodeSlowDown             = "slow_down"
	CodeAccessDenied         = "access_denied"
	CodeExpiredToken         = "expired_token"
)

const (
	maxDeviceInterval  = 10 * time.Minute
	maxDeviceExpiresIn = 24 * time.Hour
	maxUserCodeLen     = 64
	maxDeviceURILen    = 2048
)

// DeviceAuthorization is a device authorization response (RFC 8628 §3.2).
type DeviceAuthorization struct {
	// DeviceCode is a credential: it is never logged or returned to admins.
	DeviceCode              string
	UserCode                string
	VerificationURI         string
	VerificationURIComplete string // "" when absent
	ExpiresIn               time.Duration
	// Interval between polls of the token endpoint; DefaultDeviceInterval
	// when the response has none.
	Interval time.Duration
}

// DeviceAuthorization posts r (client authentication and r.Params, which
// carry the scope) to the device authorization endpoint r.TokenURL. Errors
// are those of Token; an answer without device_code, user_code,
// verification_uri or a positive expires_in is ErrBadResponse.
func (c *Client) DeviceAuthorization(ctx context.Context, r Request) (*DeviceAuthorization, error) {
	ctx, span := c.startSpan(ctx, SpanDeviceAuthorization, r)
	resp, err := c.post(ctx, r)
	if err != nil {
		span.end(0, err)
		return nil, err
	}
	d, err := parseDeviceAuthorization(resp)
	span.end(resp.status, err)
	return d, err
}

func parseDeviceAuthorization(resp *answer) (*DeviceAuthorization, error) {
	f, err := decodeAnswer(resp)
	if err != nil {
		return nil, err
	}
	if code, _ := f.string("error"); code != "" {
		return nil, newError(resp.status, f, resp.secrets)
	}
	var d DeviceAuthorization
	for _, s := range []struct {
		key string
		dst *string
		max int
	}{
		{"device_code", &d.DeviceCode, 4096}, {"user_code", &d.UserCode, maxUserCodeLen},
		{"verification_uri", &d.VerificationURI, maxDeviceURILen},
		{"verification_uri_complete", &d.VerificationURIComplete, maxDeviceURILen},
	} {
		v, err := f.string(s.key)
		if err != nil || len(v) > s.max || !isVSChars(v) {
			return nil, badResponse(s.key + " is not a short printable string")
		}
		*s.dst = v
	}
	// Some servers (Google) name it verification_url.
	if d.VerificationURI == "" {
		if v, err := f.string("verification_url"); err == nil && len(v) <= maxDeviceURILen && isVSChars(v) {
			d.VerificationURI = v
		}
	}
	switch {
	case d.DeviceCode == "":
		return nil, badResponse("device_code is missing")
	case d.UserCode == "":
		return nil, badResponse("user_code is missing")
	case d.VerificationURI == "":
		return nil, badResponse("verification_uri is missing")
	}
	if d.ExpiresIn, err = parseExpiresIn(f["expires_in"]); err != nil || d.ExpiresIn <= 0 {
		return nil, badResponse("expires_in is missing or not a positive number")
	}
	d.ExpiresIn = min(d.ExpiresIn, maxDeviceExpiresIn)
	interval, err := parseExpiresIn(f["interval"])
	if err != nil {
		return nil, badResponse("interval is not a number of seconds")
	}
	d.Interval = DefaultDeviceInterval
	if interval > 0 {
		d.Interval = min(max(interval.Round(time.Second), time.Second), maxDeviceInterval)
	}
	return &d, nil
}
