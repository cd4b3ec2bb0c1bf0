package client_test

import (
	"bytes"
	"context"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tokenbroker/tokenbroker/client"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

func TestTokenSourceCachesLocally(t *testing.T) {
	e := newEnv(t)
	ts := client.NewTokenSource(e.conn, "sandbox")

	// Cold: 20 callers at once share one GetToken.
	const callers = 20
	got := make([]string, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() {
			tok, err := ts.Token()
			if err != nil {
				t.Errorf("caller %d: Token: %v", i, err)
				return
			}
			got[i] = tok.AccessToken
		})
	}
	wg.Wait()
	for i, tok := range got {
		if tok != got[0] {
			t.Fatalf("caller %d got token %q, caller 0 %q: want one token", i, tok, got[0])
		}
	}
	if n := e.calls.count("GetToken"); n != 1 {
		t.Errorf("GetToken calls for %d cold callers = %d, want 1", callers, n)
	}

	tok, err := ts.Token()
	if err != nil {
		t.Fatal(err)
	}
	if tok.AccessToken != got[0] || tok.TokenType != "Bearer" || !tok.Valid() {
		t.Errorf("cached Token = %q %q valid=%v, want %q Bearer valid", tok.AccessToken, tok.TokenType, tok.Valid(), got[0])
	}
	if left := time.Until(tok.Expiry); left < 59*time.Minute || left > time.Hour {
		t.Errorf("token expires in %v, want the sandbox's 1h", left)
	}
	if n := e.calls.count("GetToken"); n != 1 {
		t.Errorf("GetToken calls after a cache hit = %d, want 1", n)
	}
	if n := e.provider.TokenCalls(); n != 1 {
		t.Errorf("provider token calls = %d, want 1", n)
	}
}

func TestTokenSourceEarlyExpiry(t *testing.T) {
	e := newEnv(t)
	// The sandbox's tokens live 1h; each case asks twice in a row.
	tests := []struct {
		name string
		give []client.Option
		want int // GetToken calls
	}{
		{name: "default 30s", want: 1},
		{name: "zero", give: []client.Option{client.WithEarlyExpiry(0)}, want: 1},
		{name: "59m leaves a minute", give: []client.Option{client.WithEarlyExpiry(59 * time.Minute)}, want: 1},
		{name: "1h leaves nothing", give: []client.Option{client.WithEarlyExpiry(time.Hour)}, want: 2},
		{name: "beyond the lifetime", give: []client.Option{client.WithEarlyExpiry(2 * time.Hour)}, want: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := client.NewTokenSource(e.conn, "sandbox", tt.give...)
			before := e.calls.count("GetToken")
			for range 2 {
				if _, err := ts.Token(); err != nil {
					t.Fatal(err)
				}
			}
			if got := e.calls.count("GetToken") - before; got != tt.want {
				t.Errorf("GetToken calls for two Token calls = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestTokenSourceRequestsWhatOptionsSay(t *testing.T) {
	e := newEnv(t)
	var got *tokenbrokerv1.GetTokenRequest
	capture := grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if r, ok := req.(*tokenbrokerv1.GetTokenRequest); ok {
			got = r
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	})
	conn := dial(t, e.grpcAddr, e.key, capture)
	var header metadata.MD
	ts := client.NewTokenSource(conn, "sandbox",
		client.WithScopes("write", "read"), client.WithMinTTL(5*time.Minute),
		client.WithCallOptions(grpc.Header(&header)))
	tok, err := ts.Token()
	if err != nil {
		t.Fatal(err)
	}
	if len(header.Get("content-type")) == 0 {
		t.Errorf("response header %v, want the call option to have captured it", header)
	}
	if got.GetProvider() != "sandbox" || got.GetAccount() != "" || len(got.GetScopes()) != 2 || got.GetMinTtl().AsDuration() != 5*time.Minute {
		t.Errorf("GetToken request = %v, want provider sandbox, scopes [write read], min_ttl 5m", got)
	}
	if scope := tok.Extra("scope"); scope != "read write" {
		t.Errorf("token's scope extra = %v, want the granted %q", scope, "read write")
	}
	if form := e.provider.Requests()[0].Form.Get("scope"); form != "read write" {
		t.Errorf("provider saw scope %q, want %q", form, "read write")
	}
}

func TestTokenSourceErrorsAreBrokerStatuses(t *testing.T) {
	e := newEnv(t)
	e.register(t, "wrong-secret", "not-the-secret")
	other := dial(t, e.grpcAddr, e.otherKey)
	calls := map[string]func(*client.TokenSource) error{
		"Token": func(ts *client.TokenSource) error {
			_, err := ts.Token()
			return err
		},
		"Refresh": func(ts *client.TokenSource) error {
			_, err := ts.Refresh(context.Background(), "stale")
			return err
		},
	}
	tests := []struct {
		name       string
		conn       grpc.ClientConnInterface
		provider   string
		opts       []client.Option
		call       string
		wantCode   codes.Code
		wantReason string // of the ErrorInfo detail, when there is one
	}{
		{name: "unknown provider", conn: e.conn, provider: "nope", call: "Token", wantCode: codes.NotFound},
		{name: "unknown provider on refresh", conn: e.conn, provider: "nope", call: "Refresh", wantCode: codes.NotFound},
		{name: "unknown account", conn: e.conn, provider: "sandbox", opts: []client.Option{client.WithAccount("nobody")}, call: "Token", wantCode: codes.NotFound},
		{name: "provider refuses the client", conn: e.conn, provider: "wrong-secret", call: "Token", wantCode: codes.FailedPrecondition, wantReason: "INVALID_CLIENT"},
		{name: "provider refuses the client on refresh", conn: e.conn, provider: "wrong-secret", call: "Refresh", wantCode: codes.FailedPrecondition, wantReason: "INVALID_CLIENT"},
		{name: "caller not allowed", conn: other, provider: "sandbox", call: "Token", wantCode: codes.PermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := client.NewTokenSource(tt.conn, tt.provider, tt.opts...)
			err := calls[tt.call](ts)
			st, ok := status.FromError(err)
			if !ok || st.Code() != tt.wantCode {
				t.Fatalf("%s error = %v, want a status error with code %v", tt.call, err, tt.wantCode)
			}
			var reason string
			for _, d := range st.Details() {
				if info, ok := d.(*errdetails.ErrorInfo); ok {
					reason = info.GetReason()
				}
			}
			if reason != tt.wantReason {
				t.Errorf("ErrorInfo reason = %q, want %q", reason, tt.wantReason)
			}
		})
	}
}

func TestRefreshReplacesTheCachedToken(t *testing.T) {
	e := newEnv(t)
	ts := client.NewTokenSource(e.conn, "sandbox")
	ctx := context.Background()
	first, err := ts.Token()
	if err != nil {
		t.Fatal(err)
	}

	second, err := ts.Refresh(ctx, first.AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	if second.AccessToken == first.AccessToken {
		t.Fatalf("Refresh returned the stale token")
	}
	cached, err := ts.Token()
	if err != nil {
		t.Fatal(err)
	}
	if cached.AccessToken != second.AccessToken {
		t.Errorf("Token after Refresh = %q, want the refreshed %q", cached.AccessToken, second.AccessToken)
	}
	// A late caller with the same stale token gets the new one, no call.
	late, err := ts.Refresh(ctx, first.AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	if late.AccessToken != second.AccessToken {
		t.Errorf("late Refresh = %q, want the refreshed %q", late.AccessToken, second.AccessToken)
	}
	if got, want := e.calls.refreshes(), []string{first.AccessToken}; !slices.Equal(got, want) {
		t.Errorf("Refresh calls with stale tokens %q, want %q", got, want)
	}
	// No stale token: a new token, always.
	forced, err := ts.Refresh(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if forced.AccessToken == second.AccessToken {
		t.Errorf("forced Refresh returned the current token")
	}
	if n := e.calls.count("GetToken"); n != 1 {
		t.Errorf("GetToken calls = %d, want 1", n)
	}
	if n := e.provider.TokenCalls(); n != 3 {
		t.Errorf("provider token calls = %d, want 3 (fetch, refresh, forced refresh)", n)
	}
}

func TestTokenSourceConvertsTheBrokersToken(t *testing.T) {
	fb, addr, stop := startFakeBroker()
	defer stop()
	conn := dial(t, addr, fakeAPIKey)
	expiry := time.Now().Add(time.Hour).Truncate(time.Second)
	tests := []struct {
		name       string
		give       *tokenbrokerv1.Token
		wantType   string
		wantExpiry func(time.Time) bool
		wantIDTok  any
		wantScope  any
	}{
		{
			name: "everything",
			give: &tokenbrokerv1.Token{AccessToken: "a1", TokenType: "Bearer", ExpiresIn: 3600,
				ExpiresAt: timestamppb.New(expiry), IdToken: "eyJ.id.token", Scope: "openid read"},
			wantType:   "Bearer",
			wantExpiry: func(got time.Time) bool { return got.Equal(expiry) },
			wantIDTok:  "eyJ.id.token",
			wantScope:  "openid read",
		},
		{
			name:       "expires_in only",
			give:       &tokenbrokerv1.Token{AccessToken: "a2", TokenType: "bearer", ExpiresIn: 600},
			wantType:   "Bearer",
			wantExpiry: func(got time.Time) bool { d := time.Until(got); return d > 9*time.Minute && d <= 10*time.Minute },
		},
		{
			name:       "no expiry",
			give:       &tokenbrokerv1.Token{AccessToken: "a3"},
			wantType:   "Bearer",
			wantExpiry: time.Time.IsZero,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fb.setNext(tt.give)
			tok, err := client.NewTokenSource(conn, "sandbox").Token()
			if err != nil {
				t.Fatal(err)
			}
			if tok.AccessToken != tt.give.GetAccessToken() || tok.Type() != tt.wantType {
				t.Errorf("token = %q %q, want %q %q", tok.AccessToken, tok.Type(), tt.give.GetAccessToken(), tt.wantType)
			}
			if !tt.wantExpiry(tok.Expiry) {
				t.Errorf("expiry = %v, not what %v says", tok.Expiry, tt.give)
			}
			if got := tok.Extra("id_token"); got != tt.wantIDTok {
				t.Errorf("Extra(id_token) = %v, want %v", got, tt.wantIDTok)
			}
			if got := tok.Extra("scope"); got != tt.wantScope {
				t.Errorf("Extra(scope) = %v, want %v", got, tt.wantScope)
			}
		})
	}
}

// accessToken is tok's access token, empty for nil.
func accessToken(tok *oauth2.Token) string {
	if tok == nil {
		return ""
	}
	return tok.AccessToken
}

// waitForWaiters waits until n goroutines wait for a call another caller
// of a TokenSource made.
func waitForWaiters(t *testing.T, n int) {
	t.Helper()
	buf := make([]byte, 1<<20)
	for deadline := time.Now().Add(5 * time.Second); ; {
		stacks := buf[:runtime.Stack(buf, true)]
		if got := bytes.Count(stacks, []byte("client.(*TokenSource).wait(")); got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("fewer than %d callers wait after 5s", n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestConcurrentCallersShareOneCall(t *testing.T) {
	token := func(ts *client.TokenSource) (*oauth2.Token, error) { return ts.Token() }
	refresh := func(stale string) func(*client.TokenSource) (*oauth2.Token, error) {
		return func(ts *client.TokenSource) (*oauth2.Token, error) { return ts.Refresh(context.Background(), stale) }
	}
	// first makes a call that stalls; second comes while it does; then
	// the call goes on.
	tests := []struct {
		name          string
		provider      string
		first, second func(*client.TokenSource) (*oauth2.Token, error)
		wantFirst     string
		wantSecond    string
		wantCode      codes.Code // of both
		wantCalls     int
	}{
		{name: "Token waits for GetToken", provider: "sandbox", first: token, second: token,
			wantFirst: "token-1", wantSecond: "token-1", wantCalls: 1},
		{name: "Token shares GetToken's error", provider: "nope", first: token, second: token,
			wantCode: codes.NotFound, wantCalls: 1},
		{name: "Refresh of another token takes GetToken's", provider: "sandbox", first: token, second: refresh("token-0"),
			wantFirst: "token-1", wantSecond: "token-1", wantCalls: 1},
		{name: "Token takes Refresh's", provider: "sandbox", first: refresh(""), second: token,
			wantFirst: "token-1", wantSecond: "token-1", wantCalls: 1},
		{name: "Refresh waits for Refresh of the same token", provider: "sandbox", first: refresh(""), second: refresh(""),
			wantFirst: "token-1", wantSecond: "token-1", wantCalls: 1},
		{name: "Refresh of the token just issued calls again", provider: "sandbox", first: refresh(""), second: refresh("token-1"),
			wantFirst: "token-1", wantSecond: "token-2", wantCalls: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fb, addr, stop := startFakeBroker()
			defer stop()
			ts := client.NewTokenSource(dial(t, addr, fakeAPIKey), tt.provider)
			release := fb.stallNext(1)
			defer release()

			type result struct {
				tok *oauth2.Token
				err error
			}
			first, second := make(chan result, 1), make(chan result, 1)
			go func() {
				tok, err := tt.first(ts)
				first <- result{tok, err}
			}()
			<-fb.stalled
			go func() {
				tok, err := tt.second(ts)
				second <- result{tok, err}
			}()
			waitForWaiters(t, 1)
			release()

			for _, c := range []struct {
				name string
				got  result
				want string
			}{{"first", <-first, tt.wantFirst}, {"second", <-second, tt.wantSecond}} {
				if code := status.Code(c.got.err); code != tt.wantCode || accessToken(c.got.tok) != c.want {
					t.Errorf("%s caller got %v, %v; want %q, code %v", c.name, c.got.tok, c.got.err, c.want, tt.wantCode)
				}
			}
			if got := fb.callCount(); got != tt.wantCalls {
				t.Errorf("broker calls = %d, want %d", got, tt.wantCalls)
			}
		})
	}
}

func TestWaiterGivesUpWhenItsContextEnds(t *testing.T) {
	fb, addr, stop := startFakeBroker()
	defer stop()
	ts := client.NewTokenSource(dial(t, addr, fakeAPIKey), "sandbox")
	release := fb.stallNext(1)
	defer release()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	leader := make(chan error, 1)
	go func() {
		_, err := ts.TokenContext(ctx)
		leader <- err
	}()
	<-fb.stalled

	waitCtx, waitCancel := context.WithCancel(context.Background())
	waiter := make(chan error, 1)
	go func() {
		_, err := ts.TokenContext(waitCtx)
		waiter <- err
	}()
	waitForWaiters(t, 1)
	waitCancel()
	if err := <-waiter; status.Code(err) != codes.Canceled {
		t.Errorf("waiter's error = %v, want Canceled", err)
	}
	// The call goes on for the caller that made it.
	release()
	if err := <-leader; err != nil {
		t.Errorf("first caller's error = %v, want none", err)
	}
}

func TestWaiterCallsAgainWhenTheCallerItWaitedForGivesUp(t *testing.T) {
	fb, addr, stop := startFakeBroker()
	defer stop()
	ts := client.NewTokenSource(dial(t, addr, fakeAPIKey), "sandbox")
	release := fb.stallNext(1)
	defer release()

	ctx, cancel := context.WithCancel(context.Background())
	leader := make(chan error, 1)
	go func() {
		_, err := ts.TokenContext(ctx)
		leader <- err
	}()
	<-fb.stalled
	waiter := make(chan *oauth2.Token, 1)
	go func() {
		tok, err := ts.Token()
		if err != nil {
			t.Errorf("waiter's error = %v, want none", err)
		}
		waiter <- tok
	}()
	waitForWaiters(t, 1)
	cancel()

	if err := <-leader; status.Code(err) != codes.Canceled {
		t.Errorf("first caller's error = %v, want Canceled", err)
	}
	if tok := <-waiter; accessToken(tok) != "token-1" {
		t.Errorf("waiter got %v, want token-1 from a call of its own", tok)
	}
	if got := fb.callCount(); got != 2 {
		t.Errorf("broker calls = %d, want 2 (the abandoned one, the waiter's)", got)
	}
}
