package server

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"go.uber.org/zap"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// tokenStub answers GetToken as told and records what it was asked.
type tokenStub struct {
	tokenbrokerv1.UnimplementedTokenBrokerServiceServer
	mu     sync.Mutex
	asked  []*tokenbrokerv1.GetTokenRequest
	routed []bool // whether the gateway's router matched the call
	answer func(*tokenbrokerv1.GetTokenRequest) (*tokenbrokerv1.GetTokenResponse, error)
}

func (s *tokenStub) GetToken(ctx context.Context, req *tokenbrokerv1.GetTokenRequest) (*tokenbrokerv1.GetTokenResponse, error) {
	_, viaGateway := runtime.HTTPPathPattern(ctx)
	s.mu.Lock()
	s.asked = append(s.asked, proto.Clone(req).(*tokenbrokerv1.GetTokenRequest))
	s.routed = append(s.routed, viaGateway)
	s.mu.Unlock()
	return s.answer(req)
}

func (s *tokenStub) take() ([]*tokenbrokerv1.GetTokenRequest, []bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	asked, routed := s.asked, s.routed
	s.asked, s.routed = nil, nil
	return asked, routed
}

// TestRESTGetTokenMatchesGateway: REST GetToken served by restGetToken
// answers exactly as the gateway does (status, headers, body, and the
// request the service receives) for answers and for every kind of error.
func TestRESTGetTokenMatchesGateway(t *testing.T) {
	stub := &tokenStub{answer: func(req *tokenbrokerv1.GetTokenRequest) (*tokenbrokerv1.GetTokenResponse, error) {
		switch req.GetProvider() {
		case "missing":
			return nil, status.Error(codes.NotFound, `provider "missing" is not registered`)
		case "failing":
			st, _ := status.New(codes.FailedPrecondition, "reauthorization required").WithDetails(&errdetails.ErrorInfo{Reason: "invalid_grant", Domain: "provider.failing"})
			return nil, st.Err()
		case "panicking":
			panic("boom")
		}
		t0 := time.Date(2031, 3, 14, 9, 26, 53, 0, time.UTC)
		return &tokenbrokerv1.GetTokenResponse{Token: &tokenbrokerv1.Token{
			AccessToken: "at-" + req.GetProvider(), TokenType: "Bearer", ExpiresIn: 3600, Scope: strings.Join(req.GetScopes(), " "),
			ExpiresAt: timestamppb.New(t0.Add(time.Hour)), IssuedAt: timestamppb.New(t0), Provider: req.GetProvider(), Account: req.GetAccount(),
		}}, nil
	}}
	g := newGuard(AuthConfig{InsecureNoAuth: true, RateLimit: RateLimit{RPS: 1e9, Burst: 1e9}}, zap.NewNop(), zap.NewNop())
	chain := unaryChain(zap.NewNop(), g, nil)
	admin := tokenbrokerv1.UnimplementedAdminServiceServer{}
	gw, getToken, err := newGateway(context.Background(), stub, admin, chain)
	if err != nil {
		t.Fatal(err)
	}
	fast := newRouteMux() // as server.New mounts them
	mountGateway(fast, gw, getToken)
	mux, _, err := newGatewayMux(context.Background(), stub, admin, chain)
	if err != nil {
		t.Fatal(err)
	}
	gateway := withBodyLimit(withRESTCredentials(mux))

	tests := []struct {
		name    string
		path    string
		body    string
		headers map[string]string
		// gatewayOnly: the request goes to the gateway even with the
		// fast route.
		gatewayOnly bool
	}{
		{name: "answer", path: "/v1/providers/sandbox/token", body: `{"scopes":["read","write"],"account":"alice","min_ttl":"90s"}`},
		{name: "empty body", path: "/v1/providers/sandbox/token"},
		{name: "empty object", path: "/v1/providers/sandbox/token", body: `{}`},
		{name: "provider in the body too", path: "/v1/providers/sandbox/token", body: `{"provider":"other"}`},
		{name: "malformed JSON", path: "/v1/providers/sandbox/token", body: `{"scopes":`},
		{name: "unknown field", path: "/v1/providers/sandbox/token", body: `{"nope":1}`},
		{name: "wrong type", path: "/v1/providers/sandbox/token", body: `{"scopes":"read"}`},
		{name: "HTML", path: "/v1/providers/sandbox/token", body: `<html>`},
		{name: "the answer again", path: "/v1/providers/sandbox/token", body: `{"scopes":["read","write"],"account":"alice","min_ttl":"90s"}`},
		{name: "same token, other account", path: "/v1/providers/sandbox/token", body: `{"scopes":["read","write"],"account":"bob"}`},
		{name: "two JSON values", path: "/v1/providers/sandbox/token", body: `{"scopes":["read"]} {"scopes":["write"]}`},
		{name: "a field twice", path: "/v1/providers/sandbox/token", body: `{"scopes":["read"],"scopes":["write"]}`},
		{name: "whitespace around", path: "/v1/providers/sandbox/token", body: " \n\t{\"scopes\":[\"read\"]}\r\n "},
		{name: "invalid UTF-8", path: "/v1/providers/sandbox/token", body: "{\"scopes\":[\"\xff\"]}"},
		{name: "JSON null", path: "/v1/providers/sandbox/token", body: `null`},
		{name: "body over the size limit", path: "/v1/providers/sandbox/token", body: `{"scopes":["` + strings.Repeat("a", MaxRequestBytes) + `"]}`},
		{name: "not found", path: "/v1/providers/missing/token"},
		{name: "error with details", path: "/v1/providers/failing/token"},
		{name: "panic", path: "/v1/providers/panicking/token"},
		{name: "bad credentials", path: "/v1/providers/sandbox/token", headers: map[string]string{"Authorization": "Bearer not-a-key"}},
		{name: "two credentials", path: "/v1/providers/sandbox/token", headers: map[string]string{"Authorization": "Basic eDp5"}},
		{name: "trailers accepted", path: "/v1/providers/sandbox/token", headers: map[string]string{"TE": "trailers"}},
		{name: "other content type", path: "/v1/providers/sandbox/token", body: `{}`, headers: map[string]string{"Content-Type": "text/plain", "Accept": "application/xml"}},
		{name: "grpc timeout", path: "/v1/providers/sandbox/token", headers: map[string]string{"Grpc-Timeout": "1S"}, gatewayOnly: true},
		{name: "escaped path", path: "/v1/providers/sand%62ox/token", gatewayOnly: true},
		{name: "method override", path: "/v1/providers/sandbox/token", headers: map[string]string{"X-HTTP-Method-Override": "POST"}, gatewayOnly: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			do := func(h http.Handler) (*httptest.ResponseRecorder, []*tokenbrokerv1.GetTokenRequest, []bool) {
				r := httptest.NewRequest(http.MethodPost, tt.path, strings.NewReader(tt.body))
				for k, v := range tt.headers {
					r.Header.Set(k, v)
				}
				w := httptest.NewRecorder()
				h.ServeHTTP(w, r)
				asked, routed := stub.take()
				return w, asked, routed
			}
			want, wantAsked, _ := do(gateway)
			got, gotAsked, routed := do(fast)
			for _, viaGateway := range routed {
				if viaGateway != tt.gatewayOnly {
					t.Errorf("served through the gateway's router: %t, want %t", viaGateway, tt.gatewayOnly)
				}
			}
			if got.Code != want.Code || got.Body.String() != want.Body.String() {
				t.Errorf("answer %d %s, want the gateway's %d %s", got.Code, got.Body, want.Code, want.Body)
			}
			for _, h := range []string{"Content-Type", "Content-Length", "Transfer-Encoding", "Trailer"} {
				if got.Header().Get(h) != want.Header().Get(h) {
					t.Errorf("header %s = %q, want the gateway's %q", h, got.Header().Get(h), want.Header().Get(h))
				}
			}
			if len(gotAsked) != len(wantAsked) || (len(gotAsked) == 1 && !proto.Equal(gotAsked[0], wantAsked[0])) {
				t.Errorf("the service was asked %v, want %v as through the gateway", gotAsked, wantAsked)
			}
		})
	}
}

// TestSameTokenComparesEveryField: the render cache tells tokens apart by
// every field of Token, so that a field added to the message cannot be
// served from another token's JSON.
func TestSameTokenComparesEveryField(t *testing.T) {
	t0 := time.Date(2031, 3, 14, 9, 26, 53, 0, time.UTC)
	base := &tokenbrokerv1.Token{AccessToken: "at", TokenType: "Bearer", ExpiresIn: 60, Scope: "read", ExpiresAt: timestamppb.New(t0.Add(time.Minute)),
		IssuedAt: timestamppb.New(t0), IdToken: "idt", Provider: "p", Account: "a"}
	fields := base.ProtoReflect().Descriptor().Fields()
	var names []string
	for i := range fields.Len() {
		names = append(names, string(fields.Get(i).Name()))
	}
	if strings.Join(names, ",") != strings.Join(sameTokenFields, ",") {
		t.Fatalf("Token has fields %v; sameToken compares %v: compare the new ones too", names, sameTokenFields)
	}
	if !sameToken(base, proto.Clone(base).(*tokenbrokerv1.Token)) {
		t.Error("a token and its copy differ")
	}
	for i := range fields.Len() {
		fd := fields.Get(i)
		other := proto.Clone(base).(*tokenbrokerv1.Token)
		m := other.ProtoReflect()
		switch v := m.Get(fd); {
		case fd.Message() != nil:
			ts := v.Message().Interface().(*timestamppb.Timestamp)
			ts.Nanos++
		case fd.Kind() == protoreflect.StringKind:
			m.Set(fd, protoreflect.ValueOfString(v.String()+"x"))
		case fd.Kind() == protoreflect.Int32Kind:
			m.Set(fd, protoreflect.ValueOfInt32(int32(v.Int())+1))
		default:
			t.Fatalf("field %s: kind %s not handled by this test", fd.Name(), fd.Kind())
		}
		if sameToken(base, other) {
			t.Errorf("tokens differing in %s are the same to sameToken", fd.Name())
		}
		if fd.Message() != nil {
			m.Clear(fd)
			if sameToken(base, other) || sameToken(other, base) {
				t.Errorf("a token without %s is the same to sameToken as one with it", fd.Name())
			}
		}
	}
}

// BenchmarkRESTGetTokenServeHTTP: REST GetToken's handler alone, as
// server.New mounts it (chain with authentication off, a stub service
// answering a fixed token), on a prepared request: the decode, the chain
// and the rendering, without the network and net/http's connection.
func BenchmarkRESTGetTokenServeHTTP(b *testing.B) {
	t0 := time.Now().Truncate(time.Second)
	stub := &tokenStub{answer: func(req *tokenbrokerv1.GetTokenRequest) (*tokenbrokerv1.GetTokenResponse, error) {
		return &tokenbrokerv1.GetTokenResponse{Token: &tokenbrokerv1.Token{
			AccessToken: "Yk3v9Q2mX8rT1uW4zA7cE0gJ5hL6nP8sR2tV4xZ6bD9", TokenType: "Bearer", ExpiresIn: int32(time.Until(t0.Add(time.Hour)) / time.Second),
			Scope: strings.Join(req.GetScopes(), " "), ExpiresAt: timestamppb.New(t0.Add(time.Hour)), IssuedAt: timestamppb.New(t0), Provider: req.GetProvider(),
		}}, nil
	}}
	g := newGuard(AuthConfig{InsecureNoAuth: true, RateLimit: RateLimit{RPS: 1e9, Burst: 1e9}}, zap.NewNop(), zap.NewNop())
	gw, getToken, err := newGateway(context.Background(), stub, tokenbrokerv1.UnimplementedAdminServiceServer{}, unaryChain(zap.NewNop(), g, nil))
	if err != nil {
		b.Fatal(err)
	}
	mux := newRouteMux()
	mountGateway(mux, gw, getToken)
	const body = `{"scopes":["read","write"]}`
	b.ReportAllocs()
	for b.Loop() {
		r := httptest.NewRequest(http.MethodPost, "/v1/providers/sandbox/token", strings.NewReader(body))
		w := httptest.NewRecorder()
		mux.ServeHTTP(w, r)
		if w.Code != http.StatusOK {
			b.Fatalf("status %d: %s", w.Code, w.Body)
		}
		stub.take()
	}
}
