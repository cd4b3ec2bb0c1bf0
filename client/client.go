package client

import (
	"context"
	"net/http"
	"slices"
	"sync"
	"time"

	"golang.org/x/oauth2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// DefaultEarlyExpiry is how long before its expiry a cached token stops
// being handed out, unless WithEarlyExpiry says otherwise.
const DefaultEarlyExpiry = 30 * time.Second

// DefaultTimeout bounds each broker call made by Token, which has no
// context of its own.
const DefaultTimeout = 30 * time.Second

// Option configures a TokenSource.
type Option func(*TokenSource)

// WithAccount names the account under the provider; without it the token is
// the provider's own client identity (client_credentials).
func WithAccount(account string) Option {
	return func(s *TokenSource) { s.account = account }
}

// WithScopes sets the scopes to request; without it the provider's default
// scopes apply. Order and duplicates do not matter.
func WithScopes(scopes ...string) Option {
	return func(s *TokenSource) { s.scopes = slices.Clone(scopes) }
}

// WithMinTTL asks the broker for tokens that stay valid for at least d; the
// broker's default (60s unless configured otherwise) applies without it.
// Keep it above the early expiry, or every cached token is already too old
// to hand out and each Token call asks the broker.
func WithMinTTL(d time.Duration) Option {
	return func(s *TokenSource) { s.minTTL = d }
}

// WithEarlyExpiry sets how long before its expiry a cached token stops being
// handed out; DefaultEarlyExpiry without it. Zero uses a token until the
// moment it expires.
func WithEarlyExpiry(d time.Duration) Option {
	return func(s *TokenSource) { s.earlyExpiry = max(d, 0) }
}

// WithCallOptions adds options to every call to the broker.
func WithCallOptions(opts ...grpc.CallOption) Option {
	return func(s *TokenSource) { s.callOpts = append(s.callOpts, opts...) }
}

// TokenSource is an oauth2.TokenSource backed by the broker's
// TokenBrokerService. It keeps the last token in memory and hands it out
// until the early expiry before it expires; then the next caller asks the
// broker (GetToken) while concurrent callers wait for that one answer.
// Refresh replaces a token that the provider's API refused. The expiry it
// goes by is the one the broker served: for a provider that revokes access
// tokens on refresh, the moment the broker replaces the token, so a token
// handed out is never one the broker has already had revoked.
//
// A TokenSource is safe for concurrent use. It starts no goroutines and
// holds nothing to close; closing the gRPC connection is the caller's.
type TokenSource struct {
	broker      tokenbrokerv1.TokenBrokerServiceClient
	provider    string
	account     string
	scopes      []string
	minTTL      time.Duration
	earlyExpiry time.Duration
	callOpts    []grpc.CallOption

	mu     sync.Mutex
	tok    *oauth2.Token // the last token the broker handed out; nil before the first
	flight *call         // the broker call in progress, if any
}

var _ oauth2.TokenSource = (*TokenSource)(nil)

// call is one broker call that concurrent callers share.
type call struct {
	refresh bool   // Refresh rather than GetToken
	stale   string // the stale access token of a Refresh
	done    chan struct{}

	// Set before done is closed.
	tok *oauth2.Token
	err error
	// abandoned: the caller that made the call gave up (its context ended),
	// so the error says nothing about the broker and the waiters try again.
	abandoned bool
}

// NewTokenSource returns a TokenSource for provider's tokens served by the
// broker at conn. conn carries the caller's credentials, for example an API
// key as "authorization: Bearer <key>" metadata through
// grpc.WithPerRPCCredentials. No call is made until the first token is
// needed.
func NewTokenSource(conn grpc.ClientConnInterface, provider string, opts ...Option) *TokenSource {
	s := &TokenSource{
		broker:      tokenbrokerv1.NewTokenBrokerServiceClient(conn),
		provider:    provider,
		earlyExpiry: DefaultEarlyExpiry,
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Token returns the cached token while it is valid, else a token from the
// broker's GetToken, with a DefaultTimeout deadline. It implements
// oauth2.TokenSource; see TokenContext for the errors.
func (s *TokenSource) Token() (*oauth2.Token, error) {
	ctx, cancel := context.WithTimeout(context.Background(), DefaultTimeout)
	defer cancel()
	return s.TokenContext(ctx)
}

// TokenContext is Token with a context that bounds the wait. The cached
// token is returned while it is valid; otherwise the broker is asked, once
// for all the callers that need a token at that moment.
//
// The error is the broker's gRPC status error, unwrapped, so that
// status.Code and status.FromError (with its errdetails.ErrorInfo and
// RetryInfo details) work on it: NotFound for an unknown provider or
// account, PermissionDenied when the caller's identity may not have the
// token, FailedPrecondition when the provider refused the grant (for an
// account: a person has to authorize it again), ResourceExhausted when the
// provider rate-limits, Unavailable when neither the provider nor the
// store can be reached. When ctx ends first the error is ctx's, as a status
// with codes.Canceled or codes.DeadlineExceeded; a call another caller
// started goes on for the others.
func (s *TokenSource) TokenContext(ctx context.Context) (*oauth2.Token, error) {
	return s.get(ctx, false, "")
}

// Refresh asks the broker for a new token in place of staleAccessToken, the
// token that the provider's API has just refused (HTTP 401), and caches the
// answer. Callers that hold the same stale token share one broker call; a
// caller whose stale token was already replaced gets the cached token
// without a call. The broker likewise calls the provider only when
// staleAccessToken is still its current token, so however many callers and
// replicas see the 401, the provider is called once.
//
// The broker keeps serving a token that has not expired while the provider
// fails: Refresh then returns staleAccessToken itself, and the transport of
// NewTransport gives the caller the 401. Once no valid token is left, the
// error is the provider's (see TokenContext); FailedPrecondition means the
// grant must be authorized again (for example, its refresh token was
// revoked).
//
// An empty staleAccessToken forces a new token; concurrent forced refreshes
// share one call.
func (s *TokenSource) Refresh(ctx context.Context, staleAccessToken string) (*oauth2.Token, error) {
	return s.get(ctx, true, staleAccessToken)
}

// get returns the cached token when it answers the request (a GetToken
// when refresh is false, else a Refresh of stale), else the answer of the
// call in flight when it is the same request, else the answer of a call it
// makes itself.
func (s *TokenSource) get(ctx context.Context, refresh bool, stale string) (*oauth2.Token, error) {
	for {
		s.mu.Lock()
		// A forced refresh (no stale token) never takes the cached token;
		// a refresh of a stale token takes it once it is another one.
		if s.valid(s.tok) && (!refresh || stale != "" && s.tok.AccessToken != stale) {
			tok := s.tok
			s.mu.Unlock()
			return tok, nil
		}
		if f := s.flight; f != nil {
			s.mu.Unlock()
			tok, again, err := s.wait(ctx, f, refresh, stale)
			if again {
				continue
			}
			return tok, err
		}
		f := s.start(refresh, stale)
		s.mu.Unlock()
		return s.run(ctx, f)
	}
}

// valid reports whether tok may be handed out: it has an access token and
// is farther than the early expiry from its expiry (a zero expiry never
// expires). s.mu is held.
func (s *TokenSource) valid(tok *oauth2.Token) bool {
	if tok == nil || tok.AccessToken == "" {
		return false
	}
	return tok.Expiry.IsZero() || time.Now().Before(tok.Expiry.Add(-s.earlyExpiry))
}

// start registers a new call as the one in flight. s.mu is held.
func (s *TokenSource) start(refresh bool, stale string) *call {
	f := &call{refresh: refresh, stale: stale, done: make(chan struct{})}
	s.flight = f
	return f
}

// run makes the call f with ctx, caches a token it returns and wakes the
// callers waiting for it.
func (s *TokenSource) run(ctx context.Context, f *call) (*oauth2.Token, error) {
	var pb *tokenbrokerv1.Token
	var err error
	if f.refresh {
		var resp *tokenbrokerv1.RefreshResponse
		resp, err = s.broker.Refresh(ctx, &tokenbrokerv1.RefreshRequest{
			Provider: s.provider, Account: s.account, Scopes: s.scopes, StaleAccessToken: f.stale,
		}, s.callOpts...)
		pb = resp.GetToken()
	} else {
		req := &tokenbrokerv1.GetTokenRequest{Provider: s.provider, Account: s.account, Scopes: s.scopes}
		if s.minTTL > 0 {
			req.MinTtl = durationpb.New(s.minTTL)
		}
		var resp *tokenbrokerv1.GetTokenResponse
		resp, err = s.broker.GetToken(ctx, req, s.callOpts...)
		pb = resp.GetToken()
	}
	var tok *oauth2.Token
	if err == nil {
		tok = convert(pb)
	}

	s.mu.Lock()
	if err == nil {
		s.tok = tok
	}
	s.flight = nil
	s.mu.Unlock()
	f.tok, f.err, f.abandoned = tok, err, err != nil && ctx.Err() != nil
	close(f.done)
	return tok, err
}

// wait waits for the call f, made by another caller, or for ctx to end. It
// returns f's answer when f is the call this caller would have made (a
// GetToken for a GetToken, a Refresh of the same stale token for a
// Refresh) or failed, and again=true when the caller should look at the
// cache once more: f was another kind of call that succeeded, or its caller
// gave up.
func (s *TokenSource) wait(ctx context.Context, f *call, refresh bool, stale string) (tok *oauth2.Token, again bool, err error) {
	select {
	case <-f.done:
	case <-ctx.Done():
		return nil, false, contextStatus(ctx)
	}
	switch {
	case f.abandoned:
		return nil, true, nil
	case f.err != nil:
		return nil, false, f.err
	case f.refresh == refresh && f.stale == stale:
		return f.tok, false, nil
	default:
		return nil, true, nil
	}
}

// convert turns the broker's token into an oauth2.Token. The id_token and
// the granted scope, when present, are in its Extra.
func convert(pb *tokenbrokerv1.Token) *oauth2.Token {
	tok := &oauth2.Token{
		AccessToken: pb.GetAccessToken(),
		TokenType:   pb.GetTokenType(),
		ExpiresIn:   int64(pb.GetExpiresIn()),
	}
	switch {
	case pb.GetExpiresAt() != nil:
		tok.Expiry = pb.GetExpiresAt().AsTime()
	case pb.GetExpiresIn() > 0:
		tok.Expiry = time.Now().Add(time.Duration(pb.GetExpiresIn()) * time.Second)
	}
	extra := map[string]any{}
	if id := pb.GetIdToken(); id != "" {
		extra["id_token"] = id
	}
	if scope := pb.GetScope(); scope != "" {
		extra["scope"] = scope
	}
	if len(extra) > 0 {
		tok = tok.WithExtra(extra)
	}
	return tok
}

// NewClient returns an HTTP client that authenticates its requests with
// tokens from ts and, on a 401, refreshes the token once and retries once
// (see NewTransport). Like oauth2.NewClient, it builds on the *http.Client
// in ctx under oauth2.HTTPClient, if any (its transport, redirect policy,
// cookie jar and timeout), else on http.DefaultClient; ctx is not used
// otherwise.
func NewClient(ctx context.Context, ts *TokenSource) *http.Client {
	base := http.DefaultClient
	if c, ok := ctx.Value(oauth2.HTTPClient).(*http.Client); ok && c != nil {
		base = c
	}
	return &http.Client{
		Transport:     NewTransport(ts, base.Transport),
		CheckRedirect: base.CheckRedirect,
		Jar:           base.Jar,
		Timeout:       base.Timeout,
	}
}

// contextStatus is the status error of ctx's end.
func contextStatus(ctx context.Context) error {
	return status.FromContextError(ctx.Err()).Err()
}
