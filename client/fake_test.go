package client_test

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// fakeAPIKey is the API key fakeBroker accepts.
const fakeAPIKey = "tbk_example_key"

// fakeBroker is a stand-in for the broker, for the examples and for tests
// of the client's own mechanics: it issues "token-1", "token-2", ... valid
// for an hour, and honours Refresh's stale_access_token as the broker does.
type fakeBroker struct {
	tokenbrokerv1.UnimplementedTokenBrokerServiceServer

	mu      sync.Mutex
	issued  int
	current *tokenbrokerv1.Token
	// next, when set, is the answer to the next call instead.
	next *tokenbrokerv1.Token
	// stall makes this many of the next calls wait until release is
	// closed or their context ends; stalled receives once each such call
	// has started.
	stall   int
	stalled chan struct{}
	release chan struct{}
	calls   int // calls answered or stalled
	// refreshErr, when set, is the answer to every Refresh.
	refreshErr error
}

// startFakeBroker serves a fakeBroker on 127.0.0.1:0 and returns it, its
// address and a function that stops it.
func startFakeBroker() (*fakeBroker, string, func()) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	fb := &fakeBroker{stalled: make(chan struct{}, 16)}
	srv := grpc.NewServer(grpc.UnaryInterceptor(fakeAuth))
	tokenbrokerv1.RegisterTokenBrokerServiceServer(srv, fb)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(lis)
	}()
	return fb, lis.Addr().String(), func() {
		srv.Stop()
		<-done
	}
}

// fakeAuth lets in callers that send fakeAPIKey.
func fakeAuth(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if auth := md.Get("authorization"); len(auth) != 1 || auth[0] != "Bearer "+fakeAPIKey {
		return nil, status.Error(codes.Unauthenticated, "fake broker: missing or wrong API key")
	}
	return handler(ctx, req)
}

func (fb *fakeBroker) GetToken(ctx context.Context, req *tokenbrokerv1.GetTokenRequest) (*tokenbrokerv1.GetTokenResponse, error) {
	tok, err := fb.answer(ctx, req.GetProvider(), func() bool { return fb.current == nil })
	return &tokenbrokerv1.GetTokenResponse{Token: tok}, err
}

func (fb *fakeBroker) Refresh(ctx context.Context, req *tokenbrokerv1.RefreshRequest) (*tokenbrokerv1.RefreshResponse, error) {
	fb.mu.Lock()
	err := fb.refreshErr
	fb.mu.Unlock()
	if err != nil {
		return nil, err
	}
	tok, err := fb.answer(ctx, req.GetProvider(), func() bool {
		return fb.current == nil || req.GetStaleAccessToken() == "" || req.GetStaleAccessToken() == fb.current.GetAccessToken()
	})
	return &tokenbrokerv1.RefreshResponse{Token: tok}, err
}

// answer returns the current token, or a new one when renew says so.
func (fb *fakeBroker) answer(ctx context.Context, provider string, renew func() bool) (*tokenbrokerv1.Token, error) {
	fb.mu.Lock()
	fb.calls++
	stall := fb.stall > 0
	if stall {
		fb.stall--
	}
	release := fb.release
	fb.mu.Unlock()
	if stall {
		fb.stalled <- struct{}{}
		select {
		case <-release:
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	if provider != "sandbox" {
		return nil, status.Errorf(codes.NotFound, "fake broker: unknown provider %q", provider)
	}
	fb.mu.Lock()
	defer fb.mu.Unlock()
	if fb.next != nil {
		fb.current, fb.next = fb.next, nil
		return proto.Clone(fb.current).(*tokenbrokerv1.Token), nil
	}
	if renew() {
		fb.issued++
		now := time.Now()
		fb.current = &tokenbrokerv1.Token{
			AccessToken: fmt.Sprintf("token-%d", fb.issued),
			TokenType:   "Bearer",
			ExpiresIn:   3600,
			ExpiresAt:   timestamppb.New(now.Add(time.Hour)),
			IssuedAt:    timestamppb.New(now),
			Provider:    provider,
		}
	}
	return proto.Clone(fb.current).(*tokenbrokerv1.Token), nil
}

// setNext makes tok the answer to the next call.
func (fb *fakeBroker) setNext(tok *tokenbrokerv1.Token) {
	fb.mu.Lock()
	defer fb.mu.Unlock()
	fb.next = tok
}

// stallNext makes the next n calls wait until the returned function is
// called or their context ends.
func (fb *fakeBroker) stallNext(n int) (release func()) {
	fb.mu.Lock()
	defer fb.mu.Unlock()
	ch := make(chan struct{})
	fb.stall, fb.release = n, ch
	return sync.OnceFunc(func() { close(ch) })
}

// callCount returns the number of calls received.
func (fb *fakeBroker) callCount() int {
	fb.mu.Lock()
	defer fb.mu.Unlock()
	return fb.calls
}

// failRefresh makes every Refresh answer err.
func (fb *fakeBroker) failRefresh(err error) {
	fb.mu.Lock()
	defer fb.mu.Unlock()
	fb.refreshErr = err
}
