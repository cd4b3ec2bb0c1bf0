package server

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/apikey"
	"github.com/tokenbroker/tokenbroker/broker/policy"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
	"github.com/tokenbroker/tokenbroker/internal/testkeys"
)

// The REST gateway calls the services in-process; this shows that its calls
// pass through the same interceptor chain as gRPC calls.
func TestRESTAndGRPCCallsShareTheInterceptorChain(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	log := zap.New(core)
	etcd := etcdtest.Start(t)
	b, err := broker.New(context.Background(), broker.Config{Client: etcd.Client(t, nil)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	keys, err := apikey.NewStore(context.Background(), etcd.Client(t, nil), broker.DefaultPrefix, testkeys.Keyring(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { keys.Close() })
	id, key, sum, err := apikey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	if err := keys.SetStatic([]apikey.StaticKey{{ID: id, Identity: "chain-test", SHA256: sum}}); err != nil {
		t.Fatal(err)
	}
	pol, err := policy.New([]policy.Rule{{Identities: []string{"chain-test"}, Actions: policy.Actions}})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Broker: b, Logger: log,
		Auth: AuthConfig{Keys: keys, Policy: pol}})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})

	req, err := http.NewRequest(http.MethodPost, "http://"+srv.HTTPAddr()+"/v1/providers/unknown/token", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("REST status = %d, want 404", resp.StatusCode)
	}
	conn, err := grpc.NewClient(srv.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+key)
	_, err = tokenbrokerv1.NewTokenBrokerServiceClient(conn).GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: "unknown"})
	if status.Code(err) != codes.NotFound {
		t.Errorf("gRPC code = %v, want NotFound", status.Code(err))
	}

	calls := logs.FilterMessage("call").FilterField(zap.String("method", tokenbrokerv1.TokenBrokerService_GetToken_FullMethodName)).All()
	if len(calls) != 2 {
		t.Fatalf("logged %d GetToken calls, want 2 (one REST, one gRPC): %v", len(calls), logs.All())
	}
	for _, c := range calls {
		if c.ContextMap()["code"] != "NotFound" {
			t.Errorf("logged call %v, want code NotFound", c.ContextMap())
		}
		if c.ContextMap()["caller"] != "chain-test" {
			t.Errorf("logged call %v, want caller chain-test", c.ContextMap())
		}
	}
}

func TestRecoverTurnsPanicIntoInternalWithoutLeaking(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	log := zap.New(core)
	chain := unaryChain(log, newGuard(AuthConfig{InsecureNoAuth: true}, log, log), nil)
	const secret = "panic-secret-4d2f9a8b77"
	_, err := chain(context.Background(), &tokenbrokerv1.GetTokenRequest{Provider: "p"},
		&grpc.UnaryServerInfo{FullMethod: tokenbrokerv1.TokenBrokerService_GetToken_FullMethodName},
		func(context.Context, any) (any, error) {
			panic("boom " + secret)
		})
	if st := status.Convert(err); st.Code() != codes.Internal || strings.Contains(st.Message(), secret) {
		t.Errorf("error = %v, want Internal without the panic value", err)
	}
	if logs.FilterMessage("panic in handler").Len() != 1 {
		t.Errorf("panic was not logged: %v", logs.All())
	}
	for _, e := range logs.All() {
		for k, v := range e.ContextMap() {
			if s, ok := v.(string); ok && strings.Contains(s, secret) {
				t.Errorf("log field %s of %q holds the panic value", k, e.Message)
			}
		}
	}
}

func TestToStatusTable(t *testing.T) {
	tests := []struct {
		give error
		want codes.Code
	}{
		{context.Canceled, codes.Canceled},
		{context.DeadlineExceeded, codes.DeadlineExceeded},
		{broker.ErrNotFound, codes.NotFound},
		{broker.ErrInvalidArgument, codes.InvalidArgument},
		{broker.ErrStoreUnavailable, codes.Unavailable},
		{broker.ErrLockLost, codes.Aborted},
		{status.Error(codes.PermissionDenied, "no"), codes.PermissionDenied},
		{errSomethingElse, codes.Internal},
	}
	for _, tt := range tests {
		if got := status.Code(toStatus(zap.NewNop(), tt.give)); got != tt.want {
			t.Errorf("toStatus(%v) = %v, want %v", tt.give, got, tt.want)
		}
	}
	if msg := status.Convert(toStatus(zap.NewNop(), errSomethingElse)).Message(); msg != "internal error" {
		t.Errorf("unknown error message = %q, want a generic one", msg)
	}
}

var errSomethingElse = &customError{"disk on fire"}

type customError struct{ s string }

func (e *customError) Error() string { return e.s }
