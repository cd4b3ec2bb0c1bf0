package oauth

import (
	"context"
	"encoding/json"
	"errors"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Revoke asks a revocation endpoint (RFC 7009) to revoke token; r.TokenURL
// is the revocation URL and r.Params may carry token_type_hint. The token
// is added to the form. A 2xx answer is success (also for a token the
// provider did not know); otherwise the errors are those of Token.
func (c *Client) Revoke(ctx context.Context, r Request, token string) error {
	ctx, span := c.startSpan(ctx, SpanRevoke, r)
	r.Params = withParam(r.Params, "token", token)
	resp, err := c.post(ctx, r)
	if err != nil {
		span.end(0, err)
		return err
	}
	if resp.status >= 200 && resp.status <= 299 {
		span.end(resp.status, nil)
		return nil
	}
	f, _ := decodeBody(resp.contentType, resp.body)
	e := newError(resp.status, f, resp.secrets)
	e.RetryAfter = resp.retryAfter
	span.end(resp.status, e)
	return e
}

// Introspection is an RFC 7662 introspection answer.
type Introspection struct {
	Active    bool
	Scope     string
	ClientID  string
	Username  string
	TokenType string
	Subject   string
	Audience  string
	Issuer    string
	ExpiresAt time.Time // zero when absent
	IssuedAt  time.Time // zero when absent
}

// Introspect asks an introspection endpoint (RFC 7662) about token;
// r.TokenURL is the introspection URL (MediaHaven: HTTP Basic client
// authentication, token as a POST parameter). Errors are those of Token; an
// answer without a boolean "active" is ErrBadResponse.
func (c *Client) Introspect(ctx context.Context, r Request, token string) (*Introspection, error) {
	ctx, span := c.startSpan(ctx, SpanIntrospect, r)
	r.Params = withParam(r.Params, "token", token)
	resp, err := c.post(ctx, r)
	if err != nil {
		span.end(0, err)
		return nil, err
	}
	in, err := introspection(resp)
	span.end(resp.status, err)
	return in, err
}

// decodeAnswer returns the fields of a 2xx answer; a non-2xx one is an
// *Error.
func decodeAnswer(resp *answer) (fields, error) {
	f, err := decodeBody(resp.contentType, resp.body)
	if resp.status < 200 || resp.status > 299 {
		e := newError(resp.status, f, resp.secrets)
		e.RetryAfter = resp.retryAfter
		return nil, e
	}
	return f, err
}

// introspection reads an introspection endpoint's answer.
func introspection(resp *answer) (*Introspection, error) {
	f, err := decodeAnswer(resp)
	if err != nil {
		return nil, err
	}
	var active bool
	raw, ok := f["active"]
	if !ok || json.Unmarshal(raw, &active) != nil {
		// Some servers answer "true" as a string in form-encoded bodies.
		if s, err := f.string("active"); err == nil && (s == "true" || s == "false") {
			active = s == "true"
		} else {
			return nil, badResponse("active is missing or not a boolean")
		}
	}
	in := &Introspection{Active: active}
	if !active {
		return in, nil
	}
	for _, s := range []struct {
		key string
		dst *string
	}{
		{"scope", &in.Scope}, {"client_id", &in.ClientID}, {"username", &in.Username},
		{"token_type", &in.TokenType}, {"sub", &in.Subject}, {"iss", &in.Issuer},
	} {
		v, err := f.string(s.key)
		if err != nil {
			return nil, badResponse(s.key + " is not a string")
		}
		*s.dst = sanitize(v, resp.secrets)
	}
	if aud, err := f.string("aud"); err == nil {
		in.Audience = aud
	} else if list := []string(nil); json.Unmarshal(f["aud"], &list) == nil {
		in.Audience = strings.Join(list, " ")
	}
	for _, t := range []struct {
		key string
		dst *time.Time
	}{{"exp", &in.ExpiresAt}, {"iat", &in.IssuedAt}} {
		raw, ok := f[t.key]
		if !ok || isNull(raw) {
			continue
		}
		secs, err := parseUnixSeconds(raw)
		if err != nil {
			return nil, badResponse(t.key + " is not a time in seconds")
		}
		*t.dst = time.Unix(secs, 0)
	}
	return in, nil
}

func withParam(v url.Values, k, val string) url.Values {
	out := make(url.Values, len(v)+1)
	for key, vals := range v {
		out[key] = vals
	}
	out.Set(k, val)
	return out
}

// parseUnixSeconds reads a JSON number, or a string holding one, of
// non-negative seconds since the epoch.
func parseUnixSeconds(raw json.RawMessage) (int64, error) {
	num := strings.TrimSpace(string(raw))
	if strings.HasPrefix(num, `"`) {
		if err := json.Unmarshal(raw, &num); err != nil {
			return 0, err
		}
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 || f > 1<<40 || f != f {
		return 0, errors.New("not a time")
	}
	return int64(f), nil
}
