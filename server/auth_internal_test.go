package server

import (
	"context"
	"testing"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/broker/policy"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// Every RPC of both services has a requirement; TokenBrokerService's are
// token or introspect, AdminService's admin.
func TestEveryMethodHasARequirement(t *testing.T) {
	tests := []struct {
		desc grpc.ServiceDesc
		want []policy.Action
	}{
		{tokenbrokerv1.TokenBrokerService_ServiceDesc, []policy.Action{policy.Token, policy.Introspect}},
		{tokenbrokerv1.AdminService_ServiceDesc, []policy.Action{policy.Admin}},
	}
	for _, tt := range tests {
		for _, m := range tt.desc.Methods {
			method := "/" + tt.desc.ServiceName + "/" + m.MethodName
			r, ok := requirementOf(method)
			if !ok || r.scope == scopeAuthenticated || !containsAction(tt.want, r.action) {
				t.Errorf("requirement of %s = %+v, %v; want one of %v", method, r, ok, tt.want)
			}
		}
	}
}

func containsAction(as []policy.Action, a policy.Action) bool {
	for _, x := range as {
		if x == a {
			return true
		}
	}
	return false
}

func TestGuardCallerAndExemptions(t *testing.T) {
	chain := unaryChain(zap.NewNop(), newGuard(AuthConfig{InsecureNoAuth: true}, zap.NewNop(), zap.NewNop()), nil)
	tests := []struct {
		name       string
		method     string
		wantCode   codes.Code
		wantCaller bool
	}{
		{"health is exempt and has no caller", "/grpc.health.v1.Health/Check", codes.OK, false},
		{"known method", tokenbrokerv1.TokenBrokerService_GetToken_FullMethodName, codes.OK, true},
		{"unknown method is denied", "/tokenbroker.v1.TokenBrokerService/Mint", codes.PermissionDenied, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got Caller
			var ok bool
			_, err := chain(context.Background(), &tokenbrokerv1.GetTokenRequest{Provider: "p"}, &grpc.UnaryServerInfo{FullMethod: tt.method},
				func(ctx context.Context, _ any) (any, error) {
					got, ok = CallerFrom(ctx)
					return nil, nil
				})
			if status.Code(err) != tt.wantCode {
				t.Fatalf("code = %v, want %v", status.Code(err), tt.wantCode)
			}
			if ok != tt.wantCaller || (ok && (got.Identity != AnonymousIdentity || got.Via != ViaNone)) {
				t.Errorf("CallerFrom = %+v, %v; want caller %v as %s", got, ok, tt.wantCaller, AnonymousIdentity)
			}
		})
	}
	if _, ok := CallerFrom(context.Background()); ok {
		t.Errorf("CallerFrom(a bare context) = ok, want none")
	}
}

func TestBearer(t *testing.T) {
	tests := []struct {
		give string
		want string
		ok   bool
	}{
		{"Bearer abc", "abc", true},
		{"bearer abc", "abc", true},
		{"BEARER  abc ", "abc", true},
		{"Basic abc", "", false},
		{"Bearer", "", false},
		{"Bearer ", "", false},
		{"abc", "", false},
	}
	for _, tt := range tests {
		if got, ok := bearer(tt.give); got != tt.want || ok != tt.ok {
			t.Errorf("bearer(%q) = %q, %v; want %q, %v", tt.give, got, ok, tt.want, tt.ok)
		}
	}
}
