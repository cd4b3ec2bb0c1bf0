// Package oauth is the broker's client for OAuth2 token endpoints
// (RFC 6749 §3.2). It posts one grant (§4.4 and its siblings), authenticates
// the client the way the provider wants it (§2.3.1), and turns the answer into
// a Token (§5.1) or an *Error (§5.2).
//
// Every error this package returns is safe to log: it never carries the
// client secret, the request form, a token or a raw response body.
package oauth

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"
)

// AuthStyle says how a client authenticates to a token endpoint.
type AuthStyle int

const (
	AuthBasic        AuthStyle = iota + 1 // HTTP Basic (RFC 6749 §2.3.1: id and secret form-url-encoded, then base64)
	AuthPost                              // client_id and client_secret in the form body
	AuthBasicAndPost                      // both at once (MediaHound requires this)
	// AuthPrivateKeyJWT is a client assertion signed with the client's
	// private key (RFC 7523 §2.2, OpenID Connect Core §9); see
	// PrivateKeyJWT. It takes no secret, so ClientSecret does not
	// implement it.
	AuthPrivateKeyJWT
	// AuthNone sends no client credentials and no client_id: for grants
	// whose assertion identifies the client (the JWT-bearer grant, RFC
	// 7523 §3.1: client authentication is optional). See NoClientAuth.
	AuthNone
	// AuthTLSClientAuth and AuthSelfSignedTLSClientAuth present the
	// client's certificate on the TLS connection (RFC 8705 §2.1 PKI and
	// §2.2 self-signed); see TLSClientAuth.
	AuthTLSClientAuth
	AuthSelfSignedTLSClientAuth

	lastAuthStyle = AuthSelfSignedTLSClientAuth
)

var authStyleNames = [...]string{AuthBasic: "basic", AuthPost: "post", AuthBasicAndPost: "basic+post", AuthPrivateKeyJWT: "private_key_jwt", AuthNone: "none",
	AuthTLSClientAuth: "tls_client_auth", AuthSelfSignedTLSClientAuth: "self_signed_tls_client_auth"}

// String returns "basic", "post", "basic+post", "private_key_jwt", "none",
// "tls_client_auth" or "self_signed_tls_client_auth", and "AuthStyle(N)"
// for anything else.
func (s AuthStyle) String() string {
	if s >= AuthBasic && s <= lastAuthStyle {
		return authStyleNames[s]
	}
	return "AuthStyle(" + strconv.Itoa(int(s)) + ")"
}

// valid reports whether s is a client secret style.
func (s AuthStyle) valid() bool { return s >= AuthBasic && s <= AuthBasicAndPost }

// UsesSecret reports whether s authenticates with the client secret.
func (s AuthStyle) UsesSecret() bool { return s.valid() }

// ParseAuthStyle is the inverse of AuthStyle.String. It returns an error for
// any other string, the empty one included.
func ParseAuthStyle(s string) (AuthStyle, error) {
	for st := AuthBasic; st <= lastAuthStyle; st++ {
		if authStyleNames[st] == s {
			return st, nil
		}
	}
	return 0, fmt.Errorf("oauth: unknown auth style %q (want basic, post, basic+post, private_key_jwt, none, tls_client_auth or self_signed_tls_client_auth)", s)
}

// Request is one call to a token endpoint.
type Request struct {
	TokenURL string
	// Auth authenticates the client. When nil, the client authenticates
	// with ClientID and ClientSecret in AuthStyle (a ClientSecret).
	Auth         ClientAuthenticator
	ClientID     string
	ClientSecret string
	AuthStyle    AuthStyle
	Params       url.Values // grant_type and the grant's parameters (scope, username, refresh_token, extra provider params, ...)
}

// Token is a successful token response.
type Token struct {
	AccessToken  string
	TokenType    string // as sent ("bearer", "Bearer"); "" when absent
	RefreshToken string
	IDToken      string
	Scope        string        // space-separated as sent; "" when absent
	ExpiresIn    time.Duration // 0 when the provider sent no expires_in
	State        string        // echoed state (Mediaflow), "" when absent
}

// Client calls token endpoints. The zero value is ready to use; a Client is
// safe for concurrent use as long as its fields are not changed.
type Client struct {
	HTTPClient       *http.Client  // nil: a private client with sane transport defaults
	Timeout          time.Duration // per call, default 10s
	MaxResponseBytes int64         // default 1 MiB
	UserAgent        string        // default "tokenbroker"
	// RequireHTTPS refuses plain http endpoints. Without it, plain http
	// is allowed to loopback addresses only (development and tests); https
	// is required everywhere else in any case.
	RequireHTTPS bool
	// Tracer, when set, records a client span per call (SpanToken,
	// SpanRevoke, SpanIntrospect) as a child of the span in the call's
	// context: the endpoint's host, the grant type, the HTTP status and the
	// error class (an OAuth2 error code such as invalid_grant, transport,
	// bad_response, ...), never the URL's path or query, the form, the
	// credentials, a token or the provider's error_description. No trace
	// context is sent to the provider: requests carry no traceparent
	// header, so trace ids stay inside. Nil records nothing.
	Tracer trace.Tracer
}

var (
	// ErrTransport means the token endpoint could not be reached or did not
	// answer in time: dial errors, resets, TLS failures, Client.Timeout. It
	// is never used for the caller's own context ending.
	ErrTransport = errors.New("oauth: token endpoint unreachable")

	// ErrBadResponse means a 2xx answer was not a usable token: neither JSON
	// nor form-encoded, no access_token, a bad expires_in, and so on. The
	// error says which, never with the offending value.
	ErrBadResponse = errors.New("oauth: malformed token response")

	// ErrResponseTooLarge means the body exceeded Client.MaxResponseBytes,
	// whatever the status.
	ErrResponseTooLarge = errors.New("oauth: token response too large")
)

const (
	defaultTimeout          = 10 * time.Second
	defaultMaxResponseBytes = 1 << 20
	defaultUserAgent        = "tokenbroker"
	drainBytes              = 4 << 10 // read past a body at most this much to keep the connection
)

// defaultHTTPClient serves Clients without an HTTPClient. It does not follow
// redirects: a token endpoint that redirects is misconfigured, and following
// a 307 would post the client's credentials to wherever it points. The 3xx
// comes back as an *Error.
var defaultHTTPClient = &http.Client{
	Transport: &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		TLSClientConfig:       &tls.Config{MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:   5 * time.Second,
		MaxIdleConns:          100,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
	},
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// secretParams are the form fields whose values must never show up in an
// error, even when a provider echoes them in error_description.
var secretParams = []string{
	"client_secret", "password", "refresh_token", "code", "code_verifier",
	"assertion", "client_assertion", "subject_token", "actor_token", "device_code",
}

// Token posts r to the token endpoint and returns the parsed token.
//
// The call is bounded by c.Timeout on top of ctx. Token returns
//   - an *Error when the endpoint answers with a non-2xx status, or with a 2xx
//     body that carries an OAuth "error" field;
//   - ErrBadResponse when a 2xx answer is not a usable token;
//   - ErrResponseTooLarge when the body exceeds c.MaxResponseBytes, whatever
//     the status;
//   - ErrTransport when the endpoint cannot be reached or does not answer
//     within c.Timeout;
//   - an error matching ctx.Err() (context.Canceled or
//     context.DeadlineExceeded) when ctx ends first;
//   - a plain error when r itself is unusable (bad TokenURL or AuthStyle, or
//     r.Auth could not authenticate).
//
// Token does not modify r.Params.
func (c *Client) Token(ctx context.Context, r Request) (*Token, error) {
	ctx, span := c.startSpan(ctx, SpanToken, r)
	resp, err := c.post(ctx, r)
	if err != nil {
		span.end(0, err)
		return nil, err
	}
	tok, err := parseResponse(resp.status, resp.contentType, resp.body, resp.secrets)
	if e, ok := err.(*Error); ok {
		e.RetryAfter = resp.retryAfter
	}
	span.end(resp.status, err)
	return tok, err
}

func errInvalidStyle(s AuthStyle) error { return fmt.Errorf("oauth: invalid auth style %v", s) }

// answer is an endpoint's HTTP answer, read within the size limit.
type answer struct {
	status      int
	contentType string
	body        []byte
	retryAfter  time.Duration
	secrets     []string // values that must not appear in errors
}

// post sends r's form to r.TokenURL with client authentication, and reads
// the answer. Its errors are those of Token for transport and size.
func (c *Client) post(ctx context.Context, r Request) (*answer, error) {
	if err := checkTokenURL(r.TokenURL, c.RequireHTTPS); err != nil {
		return nil, err
	}

	form := make(url.Values, len(r.Params)+2)
	for k, v := range r.Params {
		form[k] = slices.Clone(v)
	}
	header := make(http.Header)
	auth := r.authenticator()
	if err := auth.Authenticate(r.TokenURL, form, header); err != nil {
		return nil, err
	}

	callCtx, cancel := context.WithTimeout(ctx, orDefault(c.Timeout, defaultTimeout))
	defer cancel()
	req, err := http.NewRequestWithContext(callCtx, http.MethodPost, r.TokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, errors.New("oauth: invalid token URL")
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", orDefault(c.UserAgent, defaultUserAgent))
	for k, v := range header {
		req.Header[k] = v
	}

	hc := defaultHTTPClient
	if c.HTTPClient != nil {
		hc = c.HTTPClient
	}
	if ca, ok := auth.(ConnectionAuthenticator); ok {
		if hc, err = ca.HTTPClient(hc); err != nil {
			return nil, err
		}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, transportError(ctx, err)
	}
	body, err := readBody(resp, orDefault(c.MaxResponseBytes, defaultMaxResponseBytes))
	if err != nil {
		if errors.Is(err, ErrResponseTooLarge) {
			return nil, err
		}
		return nil, transportError(ctx, err)
	}

	secrets := auth.Secrets()
	for _, k := range secretParams {
		secrets = append(secrets, form[k]...)
	}
	secrets = append(secrets, r.Params["token"]...)
	return &answer{
		status:      resp.StatusCode,
		contentType: resp.Header.Get("Content-Type"),
		body:        body,
		retryAfter:  parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()),
		secrets:     secrets,
	}, nil
}

// checkTokenURL accepts absolute http and https URLs without userinfo. The
// URL is left out of the error: it may carry secrets.
func checkTokenURL(s string, requireHTTPS bool) error {
	u, err := url.Parse(s)
	switch {
	case err != nil, u.Scheme != "http" && u.Scheme != "https", u.Host == "":
		return errors.New("oauth: invalid token URL (want an absolute http or https URL)")
	case u.User != nil:
		return errors.New("oauth: invalid token URL (credentials belong in ClientID and ClientSecret)")
	case u.Scheme == "http" && (requireHTTPS || !IsLoopback(u.Hostname())):
		return errors.New("oauth: token URL must use https (plain http only to a loopback address in development)")
	}
	return nil
}

// IsLoopback reports whether host names this machine: localhost or a
// loopback IP address.
func IsLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// basicAuth builds the RFC 6749 §2.3.1 header: id and secret are
// form-url-encoded before they are joined and base64-encoded.
func basicAuth(id, secret string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(id)+":"+url.QueryEscape(secret)))
}

// readBody reads at most limit bytes of resp's body, then drains a little
// and closes it so the connection can be reused.
func readBody(resp *http.Response, limit int64) ([]byte, error) {
	defer func() {
		_, _ = io.CopyN(io.Discard, resp.Body, drainBytes)
		_ = resp.Body.Close()
	}()
	limit = min(limit, math.MaxInt64-1)
	tooLarge := fmt.Errorf("%w (limit %d bytes)", ErrResponseTooLarge, limit)
	if resp.ContentLength > limit {
		return nil, tooLarge
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(body)) > limit {
		return nil, tooLarge
	}
	return body, nil
}

// transportError classifies a failed exchange: the caller's own context
// passes through as itself, anything else (our per-call timeout included)
// is ErrTransport.
func transportError(ctx context.Context, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return fmt.Errorf("oauth: token request: %w", ctxErr)
	}
	if ue, ok := err.(*url.Error); ok {
		err = &url.Error{Op: ue.Op, URL: redactURL(ue.URL), Err: ue.Err}
	}
	return fmt.Errorf("%w: %v", ErrTransport, err)
}

// redactURL drops userinfo, query and fragment from s.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "token endpoint"
	}
	return (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path, RawPath: u.RawPath}).String()
}

// orDefault returns v, or def when v is the zero value or negative.
func orDefault[T ~int64 | ~string](v, def T) T {
	var zero T
	if v <= zero {
		return def
	}
	return v
}
