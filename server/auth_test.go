package server_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/broker/policy"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/sandbox"
	"github.com/tokenbroker/tokenbroker/server"
)

// Identities of the authorization tests and their rules.
const (
	svcAllowed = "svc-allowed" // token and introspect on sandbox
	svcOther   = "svc-other"   // token and introspect on another provider only
	opsAdmin   = "ops"         // admin only
)

var matrixRules = []policy.Rule{
	{Identities: []string{svcAllowed}, Providers: []string{"sandbox"}, Actions: []policy.Action{policy.Token, policy.Introspect}},
	{Identities: []string{svcOther}, Providers: []string{"other"}, Actions: []policy.Action{policy.Token, policy.Introspect}},
	{Identities: []string{opsAdmin}, Actions: []policy.Action{policy.Admin}},
}

// badKey is well-formed but was never issued.
var badKey = "tbk_aaaaaaaaaaaa_" + strings.Repeat("A", 43)

// createKey issues a key for identity through the admin API.
func createKey(t testing.TB, in *instance, identity string) (id, key string) {
	t.Helper()
	resp, err := in.admin.CreateApiKey(context.Background(), &tokenbrokerv1.CreateApiKeyRequest{Identity: identity, Description: "test key for " + identity})
	if err != nil {
		t.Fatalf("CreateApiKey(%s): %v", identity, err)
	}
	if resp.GetKey() == "" || resp.GetApiKey().GetIdentity() != identity {
		t.Fatalf("CreateApiKey(%s) = %v, want a key bound to the identity", identity, resp.GetApiKey())
	}
	return resp.GetApiKey().GetId(), resp.GetKey()
}

// rpcCase is one RPC, called over gRPC and over REST.
type rpcCase struct {
	method string // full method name
	action policy.Action
	// adminWant is the code an admin caller gets; authorized for: any
	// code but Unauthenticated, PermissionDenied and ResourceExhausted (the
	// grants RPCs, whose answers depend on the grants implementation).
	adminWant codes.Code
	grpc      func(ctx context.Context, tb tokenbrokerv1.TokenBrokerServiceClient, ad tokenbrokerv1.AdminServiceClient) error
	restVerb  string
	restPath  string
	restBody  string
}

const authorized codes.Code = 1 << 31

func matrixRPCs(providerURL, token string) []rpcCase {
	tokenJSON, _ := json.Marshal(map[string]string{"token": token})
	newProvider := &tokenbrokerv1.Provider{Name: "matrix", TokenUrl: providerURL + sandbox.TokenPath, ClientId: testClientID}
	newProviderJSON := fmt.Sprintf(`{"provider":{"name":"matrix","token_url":%q,"client_id":%q}}`, providerURL+sandbox.TokenPath, testClientID)
	return []rpcCase{
		{
			method: tokenbrokerv1.TokenBrokerService_GetToken_FullMethodName, action: policy.Token,
			grpc: func(ctx context.Context, tb tokenbrokerv1.TokenBrokerServiceClient, _ tokenbrokerv1.AdminServiceClient) error {
				_, err := tb.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: "sandbox"})
				return err
			},
			restVerb: http.MethodPost, restPath: "/v1/providers/sandbox/token", restBody: `{}`,
		},
		{
			method: tokenbrokerv1.TokenBrokerService_Refresh_FullMethodName, action: policy.Token,
			grpc: func(ctx context.Context, tb tokenbrokerv1.TokenBrokerServiceClient, _ tokenbrokerv1.AdminServiceClient) error {
				_, err := tb.Refresh(ctx, &tokenbrokerv1.RefreshRequest{Provider: "sandbox", StaleAccessToken: "not-the-current-one"})
				return err
			},
			restVerb: http.MethodPost, restPath: "/v1/providers/sandbox/token:refresh", restBody: `{"stale_access_token":"not-the-current-one"}`,
		},
		{
			method: tokenbrokerv1.TokenBrokerService_Introspect_FullMethodName, action: policy.Introspect,
			grpc: func(ctx context.Context, tb tokenbrokerv1.TokenBrokerServiceClient, _ tokenbrokerv1.AdminServiceClient) error {
				_, err := tb.Introspect(ctx, &tokenbrokerv1.IntrospectRequest{Token: token})
				return err
			},
			restVerb: http.MethodPost, restPath: "/v1/introspect", restBody: string(tokenJSON),
		},
		{
			method: tokenbrokerv1.AdminService_PutProvider_FullMethodName, action: policy.Admin, adminWant: codes.OK,
			grpc: func(ctx context.Context, _ tokenbrokerv1.TokenBrokerServiceClient, ad tokenbrokerv1.AdminServiceClient) error {
				_, err := ad.PutProvider(ctx, &tokenbrokerv1.PutProviderRequest{Provider: newProvider})
				return err
			},
			restVerb: http.MethodPut, restPath: "/v1/admin/providers/matrix", restBody: newProviderJSON,
		},
		{
			method: tokenbrokerv1.AdminService_GetProvider_FullMethodName, action: policy.Admin, adminWant: codes.OK,
			grpc: func(ctx context.Context, _ tokenbrokerv1.TokenBrokerServiceClient, ad tokenbrokerv1.AdminServiceClient) error {
				_, err := ad.GetProvider(ctx, &tokenbrokerv1.GetProviderRequest{Name: "sandbox"})
				return err
			},
			restVerb: http.MethodGet, restPath: "/v1/admin/providers/sandbox",
		},
		{
			method: tokenbrokerv1.AdminService_ListProviders_FullMethodName, action: policy.Admin, adminWant: codes.OK,
			grpc: func(ctx context.Context, _ tokenbrokerv1.TokenBrokerServiceClient, ad tokenbrokerv1.AdminServiceClient) error {
				_, err := ad.ListProviders(ctx, &tokenbrokerv1.ListProvidersRequest{})
				return err
			},
			restVerb: http.MethodGet, restPath: "/v1/admin/providers",
		},
		{
			method: tokenbrokerv1.AdminService_DeleteProvider_FullMethodName, action: policy.Admin, adminWant: codes.NotFound,
			grpc: func(ctx context.Context, _ tokenbrokerv1.TokenBrokerServiceClient, ad tokenbrokerv1.AdminServiceClient) error {
				_, err := ad.DeleteProvider(ctx, &tokenbrokerv1.DeleteProviderRequest{Name: "absent"})
				return err
			},
			restVerb: http.MethodDelete, restPath: "/v1/admin/providers/absent",
		},
		{
			method: tokenbrokerv1.AdminService_RotateClientSecret_FullMethodName, action: policy.Admin, adminWant: codes.NotFound,
			grpc: func(ctx context.Context, _ tokenbrokerv1.TokenBrokerServiceClient, ad tokenbrokerv1.AdminServiceClient) error {
				_, err := ad.RotateClientSecret(ctx, &tokenbrokerv1.RotateClientSecretRequest{Provider: "absent", ClientSecret: "matrix-rotated-secret-1"})
				return err
			},
			restVerb: http.MethodPost, restPath: "/v1/admin/providers/absent:rotateClientSecret", restBody: `{"client_secret":"matrix-rotated-secret-1"}`,
		},
		{
			method: tokenbrokerv1.AdminService_RotateClientKey_FullMethodName, action: policy.Admin, adminWant: codes.NotFound,
			grpc: func(ctx context.Context, _ tokenbrokerv1.TokenBrokerServiceClient, ad tokenbrokerv1.AdminServiceClient) error {
				_, err := ad.RotateClientKey(ctx, &tokenbrokerv1.RotateClientKeyRequest{Provider: "absent", Algorithm: "EdDSA"})
				return err
			},
			restVerb: http.MethodPost, restPath: "/v1/admin/providers/absent:rotateClientKey", restBody: `{"algorithm":"EdDSA"}`,
		},
		{
			method: tokenbrokerv1.AdminService_PutAccount_FullMethodName, action: policy.Admin, adminWant: authorized,
			grpc: func(ctx context.Context, _ tokenbrokerv1.TokenBrokerServiceClient, ad tokenbrokerv1.AdminServiceClient) error {
				_, err := ad.PutAccount(ctx, &tokenbrokerv1.PutAccountRequest{Provider: "sandbox", Account: "matrix", GrantType: tokenbrokerv1.GrantType_GRANT_TYPE_PASSWORD, Username: "u", Password: "matrix-password-1"})
				return err
			},
			restVerb: http.MethodPut, restPath: "/v1/admin/providers/sandbox/accounts/matrix", restBody: `{"grant_type":"GRANT_TYPE_PASSWORD","username":"u","password":"matrix-password-1"}`,
		},
		{
			method: tokenbrokerv1.AdminService_StartAuthorization_FullMethodName, action: policy.Admin, adminWant: authorized,
			grpc: func(ctx context.Context, _ tokenbrokerv1.TokenBrokerServiceClient, ad tokenbrokerv1.AdminServiceClient) error {
				_, err := ad.StartAuthorization(ctx, &tokenbrokerv1.StartAuthorizationRequest{Provider: "sandbox", Account: "matrix"})
				return err
			},
			restVerb: http.MethodPost, restPath: "/v1/admin/providers/sandbox/accounts/matrix:authorize", restBody: `{}`,
		},
		{
			method: tokenbrokerv1.AdminService_ListGrants_FullMethodName, action: policy.Admin, adminWant: authorized,
			grpc: func(ctx context.Context, _ tokenbrokerv1.TokenBrokerServiceClient, ad tokenbrokerv1.AdminServiceClient) error {
				_, err := ad.ListGrants(ctx, &tokenbrokerv1.ListGrantsRequest{})
				return err
			},
			restVerb: http.MethodGet, restPath: "/v1/admin/grants",
		},
		{
			method: tokenbrokerv1.AdminService_RevokeGrant_FullMethodName, action: policy.Admin, adminWant: authorized,
			grpc: func(ctx context.Context, _ tokenbrokerv1.TokenBrokerServiceClient, ad tokenbrokerv1.AdminServiceClient) error {
				_, err := ad.RevokeGrant(ctx, &tokenbrokerv1.RevokeGrantRequest{Provider: "sandbox", Account: "absent"})
				return err
			},
			restVerb: http.MethodDelete, restPath: "/v1/admin/providers/sandbox/accounts/absent",
		},
		{
			method: tokenbrokerv1.AdminService_CreateApiKey_FullMethodName, action: policy.Admin, adminWant: codes.OK,
			grpc: func(ctx context.Context, _ tokenbrokerv1.TokenBrokerServiceClient, ad tokenbrokerv1.AdminServiceClient) error {
				_, err := ad.CreateApiKey(ctx, &tokenbrokerv1.CreateApiKeyRequest{Identity: "matrix-created"})
				return err
			},
			restVerb: http.MethodPost, restPath: "/v1/admin/apikeys", restBody: `{"identity":"matrix-created"}`,
		},
		{
			method: tokenbrokerv1.AdminService_ListApiKeys_FullMethodName, action: policy.Admin, adminWant: codes.OK,
			grpc: func(ctx context.Context, _ tokenbrokerv1.TokenBrokerServiceClient, ad tokenbrokerv1.AdminServiceClient) error {
				_, err := ad.ListApiKeys(ctx, &tokenbrokerv1.ListApiKeysRequest{})
				return err
			},
			restVerb: http.MethodGet, restPath: "/v1/admin/apikeys",
		},
		{
			method: tokenbrokerv1.AdminService_RetireApiKey_FullMethodName, action: policy.Admin, adminWant: codes.NotFound,
			grpc: func(ctx context.Context, _ tokenbrokerv1.TokenBrokerServiceClient, ad tokenbrokerv1.AdminServiceClient) error {
				_, err := ad.RetireApiKey(ctx, &tokenbrokerv1.RetireApiKeyRequest{Id: "zzzzzzzzzzzz"})
				return err
			},
			restVerb: http.MethodDelete, restPath: "/v1/admin/apikeys/zzzzzzzzzzzz",
		},
		{
			method: tokenbrokerv1.AdminService_ListEvents_FullMethodName, action: policy.Admin, adminWant: codes.OK,
			grpc: func(ctx context.Context, _ tokenbrokerv1.TokenBrokerServiceClient, ad tokenbrokerv1.AdminServiceClient) error {
				_, err := ad.ListEvents(ctx, &tokenbrokerv1.ListEventsRequest{})
				return err
			},
			restVerb: http.MethodGet, restPath: "/v1/admin/events",
		},
		{
			// A stream: gRPC only. The events of the test's own changes
			// are there to receive.
			method: tokenbrokerv1.AdminService_WatchEvents_FullMethodName, action: policy.Admin, adminWant: codes.OK,
			grpc: func(ctx context.Context, _ tokenbrokerv1.TokenBrokerServiceClient, ad tokenbrokerv1.AdminServiceClient) error {
				stream, err := ad.WatchEvents(ctx, &tokenbrokerv1.WatchEventsRequest{})
				if err != nil {
					return err
				}
				_, err = stream.Recv()
				return err
			},
		},
		{
			method: tokenbrokerv1.AdminService_PutWebhook_FullMethodName, action: policy.Admin, adminWant: codes.OK,
			grpc: func(ctx context.Context, _ tokenbrokerv1.TokenBrokerServiceClient, ad tokenbrokerv1.AdminServiceClient) error {
				_, err := ad.PutWebhook(ctx, &tokenbrokerv1.PutWebhookRequest{Webhook: &tokenbrokerv1.Webhook{Id: "matrix", Url: "https://hooks.example.com/matrix"}})
				return err
			},
			restVerb: http.MethodPut, restPath: "/v1/admin/webhooks/matrix", restBody: `{"webhook":{"url":"https://hooks.example.com/matrix"}}`,
		},
		{
			method: tokenbrokerv1.AdminService_GetWebhook_FullMethodName, action: policy.Admin, adminWant: codes.NotFound,
			grpc: func(ctx context.Context, _ tokenbrokerv1.TokenBrokerServiceClient, ad tokenbrokerv1.AdminServiceClient) error {
				_, err := ad.GetWebhook(ctx, &tokenbrokerv1.GetWebhookRequest{Id: "nowhere"})
				return err
			},
			restVerb: http.MethodGet, restPath: "/v1/admin/webhooks/nowhere",
		},
		{
			method: tokenbrokerv1.AdminService_ListWebhooks_FullMethodName, action: policy.Admin, adminWant: codes.OK,
			grpc: func(ctx context.Context, _ tokenbrokerv1.TokenBrokerServiceClient, ad tokenbrokerv1.AdminServiceClient) error {
				_, err := ad.ListWebhooks(ctx, &tokenbrokerv1.ListWebhooksRequest{})
				return err
			},
			restVerb: http.MethodGet, restPath: "/v1/admin/webhooks",
		},
		{
			method: tokenbrokerv1.AdminService_DeleteWebhook_FullMethodName, action: policy.Admin, adminWant: codes.NotFound,
			grpc: func(ctx context.Context, _ tokenbrokerv1.TokenBrokerServiceClient, ad tokenbrokerv1.AdminServiceClient) error {
				_, err := ad.DeleteWebhook(ctx, &tokenbrokerv1.DeleteWebhookRequest{Id: "nowhere"})
				return err
			},
			restVerb: http.MethodDelete, restPath: "/v1/admin/webhooks/nowhere",
		},
		{
			method: tokenbrokerv1.AdminService_ListWebhookDeliveries_FullMethodName, action: policy.Admin, adminWant: codes.OK,
			grpc: func(ctx context.Context, _ tokenbrokerv1.TokenBrokerServiceClient, ad tokenbrokerv1.AdminServiceClient) error {
				_, err := ad.ListWebhookDeliveries(ctx, &tokenbrokerv1.ListWebhookDeliveriesRequest{Id: "nowhere"})
				return err
			},
			restVerb: http.MethodGet, restPath: "/v1/admin/webhooks/nowhere/deliveries",
		},
		{
			method: tokenbrokerv1.AdminService_RedeliverWebhook_FullMethodName, action: policy.Admin, adminWant: codes.NotFound,
			grpc: func(ctx context.Context, _ tokenbrokerv1.TokenBrokerServiceClient, ad tokenbrokerv1.AdminServiceClient) error {
				_, err := ad.RedeliverWebhook(ctx, &tokenbrokerv1.RedeliverWebhookRequest{Id: "nowhere", EventId: "0000000000000000deadbeef"})
				return err
			},
			restVerb: http.MethodPost, restPath: "/v1/admin/webhooks/nowhere/deliveries/0000000000000000deadbeef:redeliver", restBody: `{}`,
		},
	}
}

// TestMatrixCoversEveryRPC fails when an RPC is added without a row in the
// authorization matrix.
func TestMatrixCoversEveryRPC(t *testing.T) {
	var want []string
	for _, sd := range []grpc.ServiceDesc{tokenbrokerv1.TokenBrokerService_ServiceDesc, tokenbrokerv1.AdminService_ServiceDesc} {
		for _, m := range sd.Methods {
			want = append(want, "/"+sd.ServiceName+"/"+m.MethodName)
		}
		for _, st := range sd.Streams {
			want = append(want, "/"+sd.ServiceName+"/"+st.StreamName)
		}
	}
	var got []string
	for _, r := range matrixRPCs("", "") {
		got = append(got, r.method)
	}
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("matrix covers %v,\nwant every RPC %v", got, want)
	}
}

// expected is the code caller gets from r: credentials first, then the
// policy (matrixRules), then what the handler answers.
func expected(r rpcCase, caller string) codes.Code {
	switch caller {
	case "no credentials", "bad key", "retired key":
		return codes.Unauthenticated
	case "admin":
		if r.action == policy.Admin {
			return r.adminWant
		}
		return codes.PermissionDenied
	case "allowed":
		if r.action == policy.Admin {
			return codes.PermissionDenied
		}
		return codes.OK
	case "other provider only":
		if r.action == policy.Introspect { // let in, but shown nothing (TestIntrospectRevealsOnlyAllowedProviders)
			return codes.OK
		}
		return codes.PermissionDenied
	}
	panic("unknown caller " + caller)
}

func codeMatches(got, want codes.Code) bool {
	if want == authorized {
		return got != codes.Unauthenticated && got != codes.PermissionDenied && got != codes.ResourceExhausted
	}
	return got == want
}

func httpMatches(got int, want codes.Code) bool {
	if want == authorized {
		return got != http.StatusUnauthorized && got != http.StatusForbidden && got != http.StatusTooManyRequests
	}
	return got == runtime.HTTPStatusFromCode(want)
}

func TestAuthorizationMatrix(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	e := newEnv(t)
	in := e.startWith(options{log: zap.New(core), rules: matrixRules})
	e.register(in, "sandbox")
	got, err := in.tokens.GetToken(context.Background(), &tokenbrokerv1.GetTokenRequest{Provider: "sandbox"})
	if err != nil {
		t.Fatal(err)
	}
	_, allowedKey := createKey(t, in, svcAllowed)
	_, otherKey := createKey(t, in, svcOther)
	_, adminKey := createKey(t, in, opsAdmin)
	retiredID, retiredKey := createKey(t, in, svcAllowed)
	if _, err := in.admin.RetireApiKey(context.Background(), &tokenbrokerv1.RetireApiKeyRequest{Id: retiredID}); err != nil {
		t.Fatal(err)
	}
	callers := []struct{ name, key string }{
		{"no credentials", ""},
		{"bad key", badKey},
		{"retired key", retiredKey},
		{"allowed", allowedKey},
		{"other provider only", otherKey},
		{"admin", adminKey},
	}
	rpcs := matrixRPCs(e.url, got.GetToken().GetAccessToken())
	restClient := &http.Client{}
	for _, c := range callers {
		tb, ad, _ := in.clientAs(t, nil, c.key)
		for _, r := range rpcs {
			want := expected(r, c.name)
			name := r.method[strings.LastIndex(r.method, "/")+1:]
			t.Run(c.name+"/gRPC/"+name, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				err := r.grpc(ctx, tb, ad)
				if got := status.Code(err); !codeMatches(got, want) {
					t.Errorf("%s as %s = %v (%v), want %v", r.method, c.name, got, err, want)
				}
			})
			if r.restPath == "" {
				continue // a gRPC stream
			}
			t.Run(c.name+"/REST/"+name, func(t *testing.T) {
				header := http.Header{}
				if c.key != "" {
					header.Set("Authorization", "Bearer "+c.key)
				}
				var body []byte
				if r.restBody != "" {
					body = []byte(r.restBody)
				}
				code, raw := restDo(t, restClient, r.restVerb, in.baseURL+r.restPath, header, body)
				if !httpMatches(code, want) {
					t.Errorf("%s %s as %s = %d %s, want the HTTP status of %v", r.restVerb, r.restPath, c.name, code, raw, want)
				}
			})
		}
	}

	// Denials are logged with who, what and which provider, never a key.
	denied := logs.FilterMessage("permission denied").FilterField(zap.String("caller", svcOther)).
		FilterField(zap.String("method", tokenbrokerv1.TokenBrokerService_GetToken_FullMethodName)).
		FilterField(zap.String("provider", "sandbox")).All()
	if len(denied) != 2 {
		t.Errorf("logged %d denials of svc-other's GetToken for sandbox, want 2 (gRPC and REST)", len(denied))
	}
	if logs.FilterMessage("unauthenticated call").Len() == 0 {
		t.Errorf("no unauthenticated call was logged")
	}
	assertNoSecretsLogged(t, logs, allowedKey, otherKey, adminKey, retiredKey, badKey, testAdminKey)
	if s := in.server.AuthStats(); s.Unauthenticated == 0 || s.PermissionDenied == 0 {
		t.Errorf("AuthStats = %+v, want unauthenticated and denied calls counted", s)
	}
}

// assertNoSecretsLogged fails when a log entry holds a secret or a prefix
// of one longer than 8 characters (the key's "tbk_" and 5 characters of its
// id; ids alone are public and may be logged).
func assertNoSecretsLogged(t *testing.T, logs *observer.ObservedLogs, secrets ...string) {
	t.Helper()
	for _, entry := range logs.All() {
		text := entry.Message + " " + fmt.Sprint(entry.ContextMap())
		for _, s := range secrets {
			if strings.Contains(text, s[:9]) {
				t.Errorf("log entry %q %v holds a secret", entry.Message, entry.ContextMap())
			}
			if secretPart := strings.TrimPrefix(s, "tbk_"); secretPart != s && strings.Contains(text, secretPart[13:22]) {
				t.Errorf("log entry %q %v holds a key's secret part", entry.Message, entry.ContextMap())
			}
		}
	}
}

// TestIntrospectRevealsOnlyAllowedProviders: a caller that may introspect
// some provider is let in, but learns about a token only when it may
// introspect the token's provider.
func TestIntrospectRevealsOnlyAllowedProviders(t *testing.T) {
	e := newEnv(t)
	in := e.startWith(options{rules: matrixRules})
	e.register(in, "sandbox")
	got, err := in.tokens.GetToken(context.Background(), &tokenbrokerv1.GetTokenRequest{Provider: "sandbox"})
	if err != nil {
		t.Fatal(err)
	}
	token := got.GetToken().GetAccessToken()
	_, allowedKey := createKey(t, in, svcAllowed)
	_, otherKey := createKey(t, in, svcOther)
	tests := []struct {
		name         string
		key          string
		wantActive   bool
		wantProvider string
	}{
		{"allowed for the token's provider", allowedKey, true, "sandbox"},
		{"allowed for another provider only", otherKey, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tb, _, _ := in.clientAs(t, nil, tt.key)
			resp, err := tb.Introspect(context.Background(), &tokenbrokerv1.IntrospectRequest{Token: token})
			if err != nil || resp.GetActive() != tt.wantActive || resp.GetProvider() != tt.wantProvider || (!tt.wantActive && resp.GetScope()+resp.GetClientId() != "") {
				t.Errorf("gRPC Introspect = %v, %v; want active %v, provider %q and nothing else", resp, err, tt.wantActive, tt.wantProvider)
			}
			body, _ := json.Marshal(map[string]string{"token": token})
			code, raw := restDo(t, http.DefaultClient, http.MethodPost, in.baseURL+"/v1/introspect", http.Header{"Authorization": {"Bearer " + tt.key}}, body)
			var out struct {
				Active   bool   `json:"active"`
				Provider string `json:"provider"`
				ClientID string `json:"client_id"`
			}
			if err := json.Unmarshal(raw, &out); err != nil || code != http.StatusOK || out.Active != tt.wantActive || out.Provider != tt.wantProvider {
				t.Errorf("REST introspect = %d %s, want active %v and provider %q", code, raw, tt.wantActive, tt.wantProvider)
			}
		})
	}
}

// TestRESTIgnoresSpoofedHeaders: the gateway maps some headers to gRPC
// metadata; none of them authenticates a REST caller, and neither do
// identity headers a caller writes itself.
func TestRESTIgnoresSpoofedHeaders(t *testing.T) {
	e := newEnv(t)
	in := e.startWith(options{rules: matrixRules})
	e.register(in, "sandbox")
	_, key := createKey(t, in, svcAllowed)
	url := in.baseURL + "/v1/providers/sandbox/token"
	tests := []struct {
		name   string
		header http.Header
		want   int
	}{
		{"Authorization (control)", http.Header{"Authorization": {"Bearer " + key}}, http.StatusOK},
		{"lowercase scheme (control)", http.Header{"Authorization": {"bearer " + key}}, http.StatusOK},
		{"Grpc-Metadata-Authorization", http.Header{"Grpc-Metadata-Authorization": {"Bearer " + key}}, http.StatusUnauthorized},
		{"Grpcgateway-Authorization", http.Header{"Grpcgateway-Authorization": {"Bearer " + key}}, http.StatusUnauthorized},
		{"Grpc-Metadata-Grpcgateway-Authorization", http.Header{"Grpc-Metadata-Grpcgateway-Authorization": {"Bearer " + key}}, http.StatusUnauthorized},
		{"identity headers", http.Header{
			"X-Forwarded-Client-Cert": {"URI=spiffe://corp/" + testAdminIdentity},
			"X-Client-Identity":       {testAdminIdentity},
			"X-Forwarded-User":        {testAdminIdentity},
			"Grpc-Metadata-Identity":  {testAdminIdentity},
		}, http.StatusUnauthorized},
		{"Basic scheme", http.Header{"Authorization": {"Basic " + key}}, http.StatusUnauthorized},
		{"two Authorization values", http.Header{"Authorization": {"Bearer " + key, "Bearer " + badKey}}, http.StatusUnauthorized},
		{"bare key", http.Header{"Authorization": {key}}, http.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, raw := restDo(t, http.DefaultClient, http.MethodPost, url, tt.header, []byte(`{}`))
			if code != tt.want {
				t.Errorf("POST %s with %v = %d %s, want %d", url, tt.header, code, raw, tt.want)
			}
			if code == http.StatusUnauthorized && strings.Contains(string(raw), key) {
				t.Errorf("the answer echoes the key: %s", raw)
			}
		})
	}

	// Over gRPC only "authorization" counts either.
	grpcTests := []struct {
		name string
		md   metadata.MD
		want codes.Code
	}{
		{"authorization (control)", metadata.Pairs("authorization", "Bearer "+key), codes.OK},
		{"grpcgateway-authorization", metadata.Pairs("grpcgateway-authorization", "Bearer "+key), codes.Unauthenticated},
		{"identity metadata", metadata.Pairs("x-forwarded-client-cert", "URI=spiffe://corp/x", "x-client-identity", testAdminIdentity), codes.Unauthenticated},
	}
	tb, _, _ := in.clientAs(t, nil, "")
	for _, tt := range grpcTests {
		ctx := metadata.NewOutgoingContext(context.Background(), tt.md)
		_, err := tb.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: "sandbox"})
		if got := status.Code(err); got != tt.want {
			t.Errorf("gRPC GetToken with %s = %v (%v), want %v", tt.name, got, err, tt.want)
		}
	}
}

// TestMutualTLS serves both listeners over TLS with a client CA: a client
// certificate's URI SAN (or CN) is the caller's identity; a caller without
// a certificate needs an API key.
func TestMutualTLS(t *testing.T) {
	ca := newTestCA(t, "test CA")
	foreign := newTestCA(t, "foreign CA")
	serverCert, _ := ca.issue(certSpec{cn: "tokenbroker", server: true})
	serverTLS := &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientCAs: ca.pool, ClientAuth: tls.VerifyClientCertIfGiven, MinVersion: tls.VersionTLS12}
	e := newEnv(t)
	in := e.startWith(options{
		tls:       serverTLS,
		clientTLS: &tls.Config{RootCAs: ca.pool},
		rules: []policy.Rule{{
			Identities: []string{"spiffe://test/svc-allowed", "svc-cn"},
			Providers:  []string{"sandbox"},
			Actions:    []policy.Action{policy.Token},
		}},
	})
	e.register(in, "sandbox")

	clientTLS := func(spec *certSpec, issuer *testCA) *tls.Config {
		cfg := &tls.Config{RootCAs: ca.pool}
		if spec != nil {
			c, _ := issuer.issue(*spec)
			cfg.Certificates = []tls.Certificate{c}
		}
		return cfg
	}
	// Go's client withholds a certificate the server's CAs did not issue;
	// this one sends it anyway.
	forced := clientTLS(nil, nil)
	foreignCert, _ := foreign.issue(certSpec{uris: []string{"spiffe://test/svc-allowed"}})
	forced.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &foreignCert, nil }
	tests := []struct {
		name    string
		tls     *tls.Config
		key     string
		want    codes.Code
		wantErr bool // the handshake fails
	}{
		{"URI SAN", clientTLS(&certSpec{cn: "ignored", uris: []string{"spiffe://test/svc-allowed"}}, ca), "", codes.OK, false},
		{"CN without URI SAN", clientTLS(&certSpec{cn: "svc-cn"}, ca), "", codes.OK, false},
		{"certificate of an identity the policy denies", clientTLS(&certSpec{uris: []string{"spiffe://test/svc-denied"}}, ca), "", codes.PermissionDenied, false},
		{"no certificate, no key", clientTLS(nil, nil), "", codes.Unauthenticated, false},
		{"no certificate, API key", clientTLS(nil, nil), testAdminKey, codes.OK, false},
		{"certificate from another CA, withheld", clientTLS(&certSpec{uris: []string{"spiffe://test/svc-allowed"}}, foreign), "", codes.Unauthenticated, false},
		{"certificate from another CA, sent", forced, "", codes.Unavailable, true},
	}
	for _, tt := range tests {
		t.Run(tt.name+"/gRPC", func(t *testing.T) {
			tb, _, _ := in.clientAs(t, tt.tls, tt.key)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := tb.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: "sandbox"})
			if got := status.Code(err); got != tt.want {
				t.Errorf("GetToken = %v (%v), want %v", got, err, tt.want)
			}
		})
		t.Run(tt.name+"/REST", func(t *testing.T) {
			tr := &http.Transport{TLSClientConfig: tt.tls}
			defer tr.CloseIdleConnections()
			req, err := http.NewRequest(http.MethodPost, in.baseURL+"/v1/providers/sandbox/token", strings.NewReader("{}"))
			if err != nil {
				t.Fatal(err)
			}
			if tt.key != "" {
				req.Header.Set("Authorization", "Bearer "+tt.key)
			}
			resp, err := (&http.Client{Transport: tr}).Do(req)
			if tt.wantErr {
				if err == nil {
					resp.Body.Close()
					t.Errorf("POST with a certificate from another CA = %d, want a failed handshake", resp.StatusCode)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if want := runtime.HTTPStatusFromCode(tt.want); resp.StatusCode != want {
				t.Errorf("POST = %d, want %d", resp.StatusCode, want)
			}
		})
	}
}

func TestAuditLog(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	e := newEnv(t)
	in := e.startWith(options{log: zap.New(core), rules: matrixRules})
	ctx := context.Background()
	const secret = "audit-client-secret-5e1f0c7d"
	_, err := in.admin.PutProvider(ctx, &tokenbrokerv1.PutProviderRequest{
		Provider:     &tokenbrokerv1.Provider{Name: "audited", TokenUrl: e.url + sandbox.TokenPath, ClientId: testClientID},
		ClientSecret: secret,
	})
	if err != nil {
		t.Fatal(err)
	}
	created, err := in.admin.CreateApiKey(ctx, &tokenbrokerv1.CreateApiKeyRequest{Identity: svcAllowed})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := in.admin.ListProviders(ctx, &tokenbrokerv1.ListProvidersRequest{}); err != nil { // read-only: not audited
		t.Fatal(err)
	}
	// A refused change is audited too, with its caller and outcome.
	_, _, svcConn := in.clientAs(t, nil, created.GetKey())
	_, err = tokenbrokerv1.NewAdminServiceClient(svcConn).DeleteProvider(ctx, &tokenbrokerv1.DeleteProviderRequest{Name: "audited"})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("DeleteProvider as %s = %v, want PermissionDenied", svcAllowed, err)
	}
	code, _, raw := restCall(t, http.MethodDelete, in.baseURL+"/v1/admin/apikeys/"+created.GetApiKey().GetId(), nil)
	if code != http.StatusOK {
		t.Fatalf("REST RetireApiKey = %d %s", code, raw)
	}

	audit := logs.Filter(func(e observer.LoggedEntry) bool { return e.LoggerName == server.AuditLoggerName }).All()
	want := []struct {
		method, caller, code string
		fields               map[string]any
	}{
		{tokenbrokerv1.AdminService_PutProvider_FullMethodName, testAdminIdentity, "OK", map[string]any{"provider": "audited", "secret_set": true}},
		{tokenbrokerv1.AdminService_CreateApiKey_FullMethodName, testAdminIdentity, "OK", map[string]any{"key_identity": svcAllowed, "key_id": created.GetApiKey().GetId()}},
		{tokenbrokerv1.AdminService_DeleteProvider_FullMethodName, svcAllowed, "PermissionDenied", map[string]any{"provider": "audited"}},
		{tokenbrokerv1.AdminService_RetireApiKey_FullMethodName, testAdminIdentity, "OK", map[string]any{"key_id": created.GetApiKey().GetId()}},
	}
	if len(audit) != len(want) {
		t.Fatalf("audit has %d events, want %d: %v", len(audit), len(want), audit)
	}
	for i, w := range want {
		got := audit[i].ContextMap()
		if got["method"] != w.method || got["caller"] != w.caller || got["code"] != w.code {
			t.Errorf("audit event %d = %v, want %s by %s with code %s", i, got, w.method, w.caller, w.code)
		}
		if peer, _ := got["peer"].(string); !strings.HasPrefix(peer, "127.0.0.1:") {
			t.Errorf("audit event %d peer = %q, want the caller's address", i, got["peer"])
		}
		if _, ok := got["time"]; !ok {
			t.Errorf("audit event %d has no time", i)
		}
		for k, v := range w.fields {
			if got[k] != v {
				t.Errorf("audit event %d %s = %v, want %v", i, k, got[k], v)
			}
		}
	}
	assertNoSecretsLogged(t, logs, secret, created.GetKey(), testAdminKey)
}

func TestRateLimitPerCaller(t *testing.T) {
	e := newEnv(t)
	// Bursts of 5 that refill once per 100s: the test admin spends 2
	// (register, create a key).
	in := e.startWith(options{rules: matrixRules, rateLimit: server.RateLimit{RPS: 0.01, Burst: 5}})
	e.register(in, "sandbox")
	_, key := createKey(t, in, svcAllowed)
	tb, _, conn := in.clientAs(t, nil, key)
	ctx := context.Background()
	for i := range 5 {
		if _, err := tb.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: "sandbox"}); err != nil {
			t.Fatalf("call %d within the burst: %v", i+1, err)
		}
	}
	_, err := tb.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: "sandbox"})
	st := status.Convert(err)
	if st.Code() != codes.ResourceExhausted {
		t.Fatalf("call beyond the burst = %v, want ResourceExhausted", err)
	}
	var retry *errdetails.RetryInfo
	for _, d := range st.Details() {
		if r, ok := d.(*errdetails.RetryInfo); ok {
			retry = r
		}
	}
	if retry == nil || retry.GetRetryDelay().AsDuration() <= 0 {
		t.Errorf("ResourceExhausted details = %v, want a RetryInfo with a delay", st.Details())
	}
	code, retryAfter := postToken(t, in.baseURL, "sandbox", key)
	wait := retry.GetRetryDelay().AsDuration()
	if secs, err := strconv.Atoi(retryAfter); code != http.StatusTooManyRequests || err != nil || secs < 1 || secs > int(math.Ceil(wait.Seconds())) {
		t.Errorf("REST call beyond the burst = %d with Retry-After %q, want 429 with at most %s in whole seconds", code, retryAfter, wait)
	}
	// Another caller has its own bucket; health checks are not limited.
	if _, err := in.tokens.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: "sandbox"}); err != nil {
		t.Errorf("the test admin's GetToken = %v, want its own bucket", err)
	}
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("health check of a limited caller = %v, want it exempt", err)
	}
	if got := in.server.AuthStats().RateLimited; got != 2 {
		t.Errorf("AuthStats().RateLimited = %d, want 2", got)
	}
	// A new limit applies at once, with full buckets.
	in.server.SetRateLimit(server.RateLimit{RPS: 100, Burst: 100})
	if _, err := tb.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: "sandbox"}); err != nil {
		t.Errorf("GetToken after SetRateLimit = %v, want OK", err)
	}
}

// TestReflectionNeedsAuthenticationHealthDoesNot covers the streaming
// interceptor.
func TestReflectionNeedsAuthenticationHealthDoesNot(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	e := newEnv(t)
	in := e.startWith(options{log: zap.New(core)})
	_, _, anonymous := in.clientAs(t, nil, "")
	tests := []struct {
		name string
		conn *grpc.ClientConn
		want codes.Code
	}{
		{"anonymous", anonymous, codes.Unauthenticated},
		{"authenticated", in.conn, codes.OK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			stream, err := reflectionpb.NewServerReflectionClient(tt.conn).ServerReflectionInfo(ctx)
			if err != nil {
				t.Fatal(err)
			}
			// A refused stream ends at once: Send then says io.EOF, and
			// Recv says why.
			if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{ListServices: "*"}}); err != nil && err != io.EOF {
				t.Fatal(err)
			}
			resp, err := stream.Recv()
			if got := status.Code(err); got != tt.want {
				t.Fatalf("reflection as %s = %v, want %v", tt.name, err, tt.want)
			}
			if err == nil && len(resp.GetListServicesResponse().GetService()) == 0 {
				t.Errorf("reflection listed no service")
			}
			stream.CloseSend()

			health, err := healthpb.NewHealthClient(tt.conn).Check(ctx, &healthpb.HealthCheckRequest{})
			if err != nil || health.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				t.Errorf("health as %s = %v, %v; want SERVING", tt.name, health, err)
			}
		})
	}
	// Stream calls are logged with their caller once they end.
	deadline := time.Now().Add(5 * time.Second)
	for logs.FilterMessage("call").FilterField(zap.String("caller", testAdminIdentity)).FilterField(zap.String("method", "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")).Len() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no call line with the caller for the reflection stream: %v", logs.All())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestSetPolicyTakesEffectAtOnce(t *testing.T) {
	e := newEnv(t)
	in := e.start(nil)
	e.register(in, "sandbox")
	_, key := createKey(t, in, svcAllowed)
	tb, _, _ := in.clientAs(t, nil, key)
	call := func() codes.Code {
		_, err := tb.GetToken(context.Background(), &tokenbrokerv1.GetTokenRequest{Provider: "sandbox"})
		return status.Code(err)
	}
	if got := call(); got != codes.PermissionDenied {
		t.Fatalf("GetToken without a rule = %v, want PermissionDenied", got)
	}
	p, err := policy.New(matrixRules)
	if err != nil {
		t.Fatal(err)
	}
	in.server.SetPolicy(p)
	if got := call(); got != codes.OK {
		t.Errorf("GetToken after SetPolicy allowed it = %v, want OK", got)
	}
	in.server.SetPolicy(nil)
	if got := call(); got != codes.PermissionDenied {
		t.Errorf("GetToken after SetPolicy(nil) = %v, want PermissionDenied", got)
	}
}

func TestInsecureNoAuthLetsAnonymousCallersIn(t *testing.T) {
	e := newEnv(t)
	srvLog, logs := observer.New(zapcore.DebugLevel)
	in := e.startWith(options{log: zap.New(srvLog), insecure: true})
	e.register(in, "sandbox")
	tb, ad, _ := in.clientAs(t, nil, "")
	ctx := context.Background()
	if _, err := tb.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: "sandbox"}); err != nil {
		t.Errorf("anonymous GetToken = %v, want OK", err)
	}
	if _, err := ad.ListProviders(ctx, &tokenbrokerv1.ListProvidersRequest{}); err != nil {
		t.Errorf("anonymous ListProviders = %v, want OK", err)
	}
	badTB, _, _ := in.clientAs(t, nil, badKey)
	if _, err := badTB.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: "sandbox"}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("GetToken with a bad key = %v, want Unauthenticated: credentials presented are still checked", err)
	}
	if logs.FilterMessage("call").FilterField(zap.String("caller", server.AnonymousIdentity)).Len() == 0 {
		t.Errorf("no call was logged with caller %q", server.AnonymousIdentity)
	}
}

func TestLoadTLS(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, "test CA")
	cert, key := ca.issue(certSpec{cn: "tokenbroker", server: true})
	certFile, keyFile, caFile := ca.writePEM(dir, "server", cert, key)
	otherCert, otherKey := ca.issue(certSpec{cn: "other", server: true})
	_, otherKeyFile, _ := ca.writePEM(dir, "other", otherCert, otherKey)
	expiredCert, expiredKey := ca.issue(certSpec{cn: "old", server: true, notAfter: time.Now().Add(-time.Minute)})
	expiredCertFile, expiredKeyFile, _ := ca.writePEM(dir, "expired", expiredCert, expiredKey)
	garbage := filepath.Join(dir, "garbage.pem")
	write(t, garbage, []byte("not a certificate\n"))
	missing := filepath.Join(dir, "missing.pem")

	good, err := server.LoadTLS(server.TLSFiles{CertFile: certFile, KeyFile: keyFile, ClientCAFile: caFile}, time.Now())
	if err != nil {
		t.Fatalf("LoadTLS(good files) = %v", err)
	}
	if good.ClientAuth != tls.VerifyClientCertIfGiven || good.ClientCAs == nil || good.MinVersion < tls.VersionTLS12 {
		t.Errorf("LoadTLS = ClientAuth %v, MinVersion %x; want VerifyClientCertIfGiven with the CA, TLS 1.2+", good.ClientAuth, good.MinVersion)
	}
	noCA, err := server.LoadTLS(server.TLSFiles{CertFile: certFile, KeyFile: keyFile}, time.Now())
	if err != nil || noCA.ClientAuth != tls.NoClientCert {
		t.Errorf("LoadTLS without a CA = %v, %v; want no client certificates", noCA, err)
	}

	tests := []struct {
		name string
		give server.TLSFiles
		want []string
	}{
		{"missing cert file", server.TLSFiles{CertFile: missing, KeyFile: keyFile}, []string{"cert_file", missing, "no such file"}},
		{"missing key file", server.TLSFiles{CertFile: certFile, KeyFile: missing}, []string{"key_file", missing, "no such file"}},
		{"key of another certificate", server.TLSFiles{CertFile: certFile, KeyFile: otherKeyFile}, []string{"private key does not match public key"}},
		{"cert file is no PEM", server.TLSFiles{CertFile: garbage, KeyFile: keyFile}, []string{garbage}},
		{"expired certificate", server.TLSFiles{CertFile: expiredCertFile, KeyFile: expiredKeyFile}, []string{"expired"}},
		{"CA file is no PEM", server.TLSFiles{CertFile: certFile, KeyFile: keyFile, ClientCAFile: garbage}, []string{"client_ca_file", "no PEM certificate"}},
		{"missing CA file", server.TLSFiles{CertFile: certFile, KeyFile: keyFile, ClientCAFile: missing}, []string{"client_ca_file", "no such file"}},
		{"key without cert", server.TLSFiles{KeyFile: keyFile}, []string{"cert_file is not"}},
		{"cert without key", server.TLSFiles{CertFile: certFile}, []string{"key_file is not"}},
		{"CA without cert and key", server.TLSFiles{ClientCAFile: caFile}, []string{"cert_file and key_file are required"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := server.LoadTLS(tt.give, time.Now())
			if err == nil {
				t.Fatalf("LoadTLS = nil error, want one")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("LoadTLS error = %q, want it to mention %q", err, w)
				}
			}
			if keyPEM, _ := os.ReadFile(keyFile); strings.Contains(err.Error(), string(keyPEM[30:60])) {
				t.Errorf("LoadTLS error prints key material: %q", err)
			}
		})
	}
}
