package oauth

import (
	"context"
	"errors"
	"net/url"
	"strconv"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// TracerName is the instrumentation scope of the spans of Client; use it
// to get Client.Tracer from a trace.TracerProvider.
const TracerName = "github.com/tokenbroker/tokenbroker/broker/oauth"

// Span names, one per kind of endpoint call.
const (
	SpanToken      = "oauth.token"
	SpanRevoke     = "oauth.revoke"
	SpanIntrospect = "oauth.introspect"
)

// Span attributes of Client besides the OpenTelemetry semantic conventions
// (http.request.method, server.address, http.response.status_code,
// error.type).
const (
	// AttrGrantType is the grant_type of a token request.
	AttrGrantType = attribute.Key("oauth.grant_type")
	// AttrErrorCode is the OAuth2 error code of an error answer, when it
	// is one of the registered codes (invalid_grant, ...); "other" when it
	// is not, absent when the answer carried none.
	AttrErrorCode = attribute.Key("oauth.error")
)

// Error classes of the error.type attribute and of the span status, besides
// the OAuth2 error codes and the HTTP status of an error answer without one.
const (
	errClassTransport   = "transport"
	errClassBadResponse = "bad_response"
	errClassTooLarge    = "response_too_large"
	errClassCanceled    = "canceled"
	errClassDeadline    = "deadline_exceeded"
	errClassRequest     = "invalid_request_config" // the Request itself is unusable
)

// otherValue stands for an error code or grant type that is not recorded
// as it is.
const otherValue = "other"

// registeredCodes are the OAuth2 error codes a span may carry as they are
// (RFC 6749 §4.1.2.1 and §5.2, RFC 6750 §3.1, RFC 7009, RFC 8628, RFC 8707,
// RFC 9449, OpenID Connect Core §3.1.2.6). Any other code is recorded as
// "other": a provider's free text must not reach a trace.
var registeredCodes = map[string]bool{
	"invalid_request": true, "invalid_client": true, "invalid_grant": true,
	"unauthorized_client": true, "unsupported_grant_type": true, "invalid_scope": true,
	"access_denied": true, "unsupported_response_type": true, "server_error": true,
	"temporarily_unavailable": true, "unsupported_token_type": true,
	"invalid_token": true, "insufficient_scope": true,
	"authorization_pending": true, "slow_down": true, "expired_token": true,
	"invalid_target": true, "invalid_dpop_proof": true, "use_dpop_nonce": true,
	"interaction_required": true, "login_required": true, "consent_required": true,
	"account_selection_required": true,
}

// maxGrantTypeLen bounds the grant_type recorded on a span; extension
// grants are URIs, usually well below this.
const maxGrantTypeLen = 128

// callSpan is the span of one endpoint call; its zero value, used when
// Client.Tracer is nil, records nothing.
type callSpan struct{ span trace.Span }

// startSpan starts the client span of a call to r.TokenURL when c traces.
// It records the request method, the endpoint's host (never its path or
// query) and the grant type; nothing of the form, the credentials or the
// answer's body.
func (c *Client) startSpan(ctx context.Context, name string, r Request) (context.Context, callSpan) {
	if c.Tracer == nil {
		return ctx, callSpan{}
	}
	attrs := make([]attribute.KeyValue, 0, 3)
	attrs = append(attrs, semconv.HTTPRequestMethodPost)
	if u, err := url.Parse(r.TokenURL); err == nil && u.Hostname() != "" {
		attrs = append(attrs, semconv.ServerAddress(u.Hostname()))
	}
	if gt := r.Params.Get("grant_type"); gt != "" {
		attrs = append(attrs, AttrGrantType.String(grantTypeAttr(gt)))
	}
	ctx, span := c.Tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
	return ctx, callSpan{span: span}
}

// end records the answer's HTTP status (0: none came) and the class of
// err, and ends the span. The status description is the error class alone:
// an error's text may quote the provider.
func (s callSpan) end(status int, err error) {
	if s.span == nil {
		return
	}
	if status != 0 {
		s.span.SetAttributes(semconv.HTTPResponseStatusCode(status))
	}
	if err != nil {
		class := errorClass(err)
		s.span.SetAttributes(semconv.ErrorTypeKey.String(class))
		var e *Error
		if errors.As(err, &e) && e.Code != "" {
			s.span.SetAttributes(AttrErrorCode.String(codeAttr(e.Code)))
		}
		s.span.SetStatus(codes.Error, class)
	}
	s.span.End()
}

// errorClass names what went wrong with a call, without any of the
// error's text: the OAuth2 error code (or "other"), the HTTP status of an
// error answer without a code, or one of transport, bad_response,
// response_too_large, canceled, deadline_exceeded and
// invalid_request_config.
func errorClass(err error) string {
	var e *Error
	switch {
	case errors.As(err, &e):
		if e.Code != "" {
			return codeAttr(e.Code)
		}
		return strconv.Itoa(e.StatusCode)
	case errors.Is(err, ErrTransport):
		return errClassTransport
	case errors.Is(err, ErrBadResponse):
		return errClassBadResponse
	case errors.Is(err, ErrResponseTooLarge):
		return errClassTooLarge
	case errors.Is(err, context.Canceled):
		return errClassCanceled
	case errors.Is(err, context.DeadlineExceeded):
		return errClassDeadline
	}
	return errClassRequest
}

func codeAttr(code string) string {
	if registeredCodes[code] {
		return code
	}
	return otherValue
}

// grantTypeAttr returns gt when it looks like a grant type (a short run of
// URI characters), "other" when it does not.
func grantTypeAttr(gt string) string {
	if len(gt) > maxGrantTypeLen {
		return otherValue
	}
	for i := 0; i < len(gt); i++ {
		switch ch := gt[i]; {
		case 'a' <= ch && ch <= 'z', 'A' <= ch && ch <= 'Z', '0' <= ch && ch <= '9':
		case ch == '_' || ch == '-' || ch == '.' || ch == ':' || ch == '/':
		default:
			return otherValue
		}
	}
	return gt
}
