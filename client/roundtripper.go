package client

import (
	"io"
	"net/http"
)

// maxDrain is how much of a 401's body is read before it is closed, so that
// the connection can carry the retry.
const maxDrain = 4 << 10

// NewTransport returns an http.RoundTripper that sends each request through
// base (http.DefaultTransport when nil) with "Authorization: Bearer <token>"
// from ts, on a clone of the request: the caller's request is not changed.
//
// When the provider's API answers 401 Unauthorized, the transport calls
// ts.Refresh with the token it sent, once, and sends the request again,
// once, with the new token, returning whatever that answer is. It does so
// only when the request can be sent again: it has no body, or GetBody (which
// http.NewRequest sets for bytes, strings and their readers). Otherwise,
// and when the broker hands back the very token that was refused, the 401
// is returned as it came.
//
// When no token can be had, before the request or for the retry, RoundTrip
// returns the broker's gRPC status error (see TokenSource.TokenContext),
// which http.Client wraps in a *url.Error; status.Code finds it through the
// wrapping. FailedPrecondition then means the grant needs a person to
// authorize it again. The request's context bounds the broker calls too.
func NewTransport(ts *TokenSource, base http.RoundTripper) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return &transport{ts: ts, base: base}
}

type transport struct {
	ts   *TokenSource
	base http.RoundTripper
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	tok, err := t.ts.TokenContext(ctx)
	if err != nil {
		// A RoundTripper closes the body, also on errors; past this point
		// base does.
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, err
	}
	first := req.Clone(ctx)
	tok.SetAuthHeader(first)
	resp, err := t.base.RoundTrip(first)
	if err != nil || resp.StatusCode != http.StatusUnauthorized || !replayable(req) {
		return resp, err
	}

	fresh, err := t.ts.Refresh(ctx, tok.AccessToken)
	if err != nil {
		discard(resp)
		return nil, err
	}
	if fresh.AccessToken == tok.AccessToken {
		return resp, nil
	}
	retry := req.Clone(ctx)
	if req.GetBody != nil && req.Body != nil && req.Body != http.NoBody {
		body, err := req.GetBody()
		if err != nil {
			discard(resp)
			return nil, err
		}
		retry.Body = body
	}
	discard(resp)
	fresh.SetAuthHeader(retry)
	return t.base.RoundTrip(retry)
}

// replayable reports whether req can be sent a second time.
func replayable(req *http.Request) bool {
	return req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
}

// discard reads a little of resp's body, so that its connection can be
// reused, and closes it.
func discard(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxDrain))
	resp.Body.Close()
}
