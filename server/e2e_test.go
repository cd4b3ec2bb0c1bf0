package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/sandbox"
	"github.com/tokenbroker/tokenbroker/server"
)

func TestGetTokenColdFetchThenHitsFromMemory(t *testing.T) {
	e := newEnv(t)
	in := e.startWith(options{quiet: true})
	e.register(in, "sandbox")
	ctx := context.Background()

	first, err := in.tokens.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: "sandbox"})
	if err != nil {
		t.Fatalf("cold GetToken: %v", err)
	}
	tok := first.GetToken()
	if tok.GetAccessToken() == "" || tok.GetTokenType() != "Bearer" || tok.GetExpiresIn() <= 0 || tok.GetExpiresAt() == nil {
		t.Fatalf("cold GetToken = %v, want a bearer token with expiry", tok)
	}
	if got := e.provider.TokenCalls(); got != 1 {
		t.Fatalf("provider calls after cold fetch = %d, want 1", got)
	}
	// What the provider received: HTTP Basic client authentication and the grant.
	req := e.provider.Requests()[0]
	if user, pass, ok := (&http.Request{Header: req.Header}).BasicAuth(); !ok || user != testClientID || pass != testClientSecret {
		t.Errorf("provider saw Basic auth %q/%v, want the client's credentials", user, ok)
	}
	if got := req.Form.Get("grant_type"); got != "client_credentials" {
		t.Errorf("provider saw grant_type %q, want client_credentials", got)
	}

	settle(t, in.requests)
	etcdBefore := in.requests.Load()
	for i := range 100 {
		got, err := in.tokens.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: "sandbox"})
		if err != nil {
			t.Fatalf("hit %d: %v", i, err)
		}
		if got.GetToken().GetAccessToken() != tok.GetAccessToken() {
			t.Fatalf("hit %d returned another token", i)
		}
	}
	code, body, _ := restCall(t, http.MethodPost, in.baseURL+"/v1/providers/sandbox/token", map[string]any{})
	if code != http.StatusOK || body["access_token"] != tok.GetAccessToken() {
		t.Fatalf("REST hit = %d %v, want 200 with the cached token", code, body)
	}
	if got := in.requests.Load() - etcdBefore; got != 0 {
		t.Errorf("etcd requests during 101 cache hits = %d, want 0", got)
	}
	if got := e.provider.TokenCalls(); got != 1 {
		t.Errorf("provider calls after cache hits = %d, want 1", got)
	}
}

func TestRESTTokenResponseLooksLikeOAuth2(t *testing.T) {
	e := newEnv(t)
	in := e.start(nil)
	e.register(in, "sandbox")

	code, body, raw := restCall(t, http.MethodPost, in.baseURL+"/v1/providers/sandbox/token",
		map[string]any{"scopes": []string{"write", "read", "write"}, "min_ttl": "30s"})
	if code != http.StatusOK {
		t.Fatalf("status %d: %s", code, raw)
	}
	for _, field := range []string{"access_token", "token_type", "expires_in", "scope", "expires_at"} {
		if _, ok := body[field]; !ok {
			t.Errorf("response lacks %q: %s", field, raw)
		}
	}
	if _, ok := body["expires_in"].(float64); !ok {
		t.Errorf("expires_in = %#v, want a JSON number", body["expires_in"])
	}
	if body["scope"] != "read write" {
		t.Errorf("scope = %v, want %q", body["scope"], "read write")
	}
	if got := e.provider.Requests()[0].Form.Get("scope"); got != "read write" {
		t.Errorf("provider saw scope %q, want the normalized %q", got, "read write")
	}
}

func TestExpiringTokenIsReplaced(t *testing.T) {
	e := newEnv(t)
	in := e.start(nil)
	e.register(in, "sandbox")
	ctx := context.Background()

	first, err := in.tokens.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: "sandbox"})
	if err != nil {
		t.Fatal(err)
	}
	// The sandbox issues 1h tokens; with the default min_ttl of 60s, a token
	// with less than a minute left is no longer handed out.
	e.clock.Advance(time.Hour - 30*time.Second)
	second, err := in.tokens.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: "sandbox"})
	if err != nil {
		t.Fatal(err)
	}
	if second.GetToken().GetAccessToken() == first.GetToken().GetAccessToken() {
		t.Fatalf("GetToken near expiry returned the old token")
	}
	if got := e.provider.TokenCalls(); got != 2 {
		t.Fatalf("provider calls = %d, want 2", got)
	}
	if got := second.GetToken().GetExpiresIn(); got < 3500 {
		t.Errorf("new token expires_in = %d, want about 3600", got)
	}
	// A caller that needs the token for longer than what is left forces a
	// new one too; one that needs less is served from memory.
	e.clock.Advance(10 * time.Minute)
	if _, err := in.tokens.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: "sandbox", MinTtl: durationpb.New(30 * time.Minute)}); err != nil {
		t.Fatal(err)
	}
	if got := e.provider.TokenCalls(); got != 2 {
		t.Errorf("provider calls after a min_ttl the token meets = %d, want 2", got)
	}
	if _, err := in.tokens.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: "sandbox", MinTtl: durationpb.New(55 * time.Minute)}); err != nil {
		t.Fatal(err)
	}
	// 55m is capped at half the 1h lifetime, which the 50m left still meets.
	if got := e.provider.TokenCalls(); got != 2 {
		t.Errorf("provider calls after min_ttl above half the lifetime = %d, want 2", got)
	}
}

func TestConcurrentCallersOnColdKeyMakeOneProviderCall(t *testing.T) {
	e := newEnv(t)
	in := e.start(nil)
	e.register(in, "sandbox")
	const callers = 200
	tokens := hammer(t, callers, func(ctx context.Context, i int) (string, error) {
		resp, err := in.tokens.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: "sandbox", Scopes: []string{"herd"}})
		return resp.GetToken().GetAccessToken(), err
	})
	if len(tokens) != 1 {
		t.Errorf("%d callers got %d distinct tokens, want 1", callers, len(tokens))
	}
	if got := e.provider.TokenCalls(); got != 1 {
		t.Errorf("provider calls = %d, want 1", got)
	}
}

func TestTwoReplicasSharingEtcdMakeOneProviderCall(t *testing.T) {
	e := newEnv(t)
	a, b := e.start(nil), e.start(nil)
	e.register(a, "sandbox")
	replicas := []*instance{a, b}
	tokens := hammer(t, 200, func(ctx context.Context, i int) (string, error) {
		in := replicas[i%2]
		if i%4 < 2 { // half of each replica's callers come over REST
			code, body, raw := restCall(t, http.MethodPost, in.baseURL+"/v1/providers/sandbox/token", map[string]any{})
			if code != http.StatusOK {
				return "", fmt.Errorf("REST status %d: %s", code, raw)
			}
			return body["access_token"].(string), nil
		}
		resp, err := in.tokens.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: "sandbox"})
		return resp.GetToken().GetAccessToken(), err
	})
	if len(tokens) != 1 {
		t.Errorf("callers got %d distinct tokens, want 1", len(tokens))
	}
	if got := e.provider.TokenCalls(); got != 1 {
		t.Errorf("provider calls = %d, want 1", got)
	}
}

// hammer runs n concurrent calls and returns the set of tokens they got.
func hammer(t *testing.T, n int, call func(ctx context.Context, i int) (string, error)) map[string]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var (
		mu     sync.Mutex
		tokens = map[string]int{}
		wg     sync.WaitGroup
		start  = make(chan struct{})
	)
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			<-start
			tok, err := call(ctx, i)
			if err != nil {
				errs <- err
				return
			}
			mu.Lock()
			tokens[tok]++
			mu.Unlock()
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("call failed: %v", err)
	}
	return tokens
}

func TestBadRequests(t *testing.T) {
	e := newEnv(t)
	in := e.start(nil)
	e.register(in, "sandbox")
	tests := []struct {
		name string
		give *tokenbrokerv1.GetTokenRequest
		want codes.Code
	}{
		{"unknown provider", &tokenbrokerv1.GetTokenRequest{Provider: "nope"}, codes.NotFound},
		{"empty provider", &tokenbrokerv1.GetTokenRequest{}, codes.InvalidArgument},
		{"uppercase provider", &tokenbrokerv1.GetTokenRequest{Provider: "Sandbox"}, codes.InvalidArgument},
		{"slash in provider", &tokenbrokerv1.GetTokenRequest{Provider: "a/b"}, codes.InvalidArgument},
		{"overlong provider", &tokenbrokerv1.GetTokenRequest{Provider: strings.Repeat("a", 64)}, codes.InvalidArgument},
		{"unknown account", &tokenbrokerv1.GetTokenRequest{Provider: "sandbox", Account: "alice"}, codes.NotFound},
		{"account with slash", &tokenbrokerv1.GetTokenRequest{Provider: "sandbox", Account: "a/b"}, codes.InvalidArgument},
		{"empty scope", &tokenbrokerv1.GetTokenRequest{Provider: "sandbox", Scopes: []string{""}}, codes.InvalidArgument},
		{"scope with quote", &tokenbrokerv1.GetTokenRequest{Provider: "sandbox", Scopes: []string{`a"b`}}, codes.InvalidArgument},
		{"negative min_ttl", &tokenbrokerv1.GetTokenRequest{Provider: "sandbox", MinTtl: durationpb.New(-time.Second)}, codes.InvalidArgument},
		{"huge min_ttl", &tokenbrokerv1.GetTokenRequest{Provider: "sandbox", MinTtl: durationpb.New(48 * time.Hour)}, codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := in.tokens.GetToken(context.Background(), tt.give)
			if got := status.Code(err); got != tt.want {
				t.Errorf("GetToken(%v) code = %v (%v), want %v", tt.give, got, err, tt.want)
			}
		})
	}
	if got := e.provider.TokenCalls(); got != 0 {
		t.Errorf("provider calls after bad requests = %d, want 0", got)
	}
	// The REST gateway answers malformed JSON and unknown fields with 400
	// and a message that says the body is at fault, on the fast GetToken
	// path as on the gateway's routes.
	for _, url := range []string{in.baseURL + "/v1/providers/sandbox/token", in.baseURL + "/v1/providers/sandbox/token:refresh", in.baseURL + "/v1/introspect"} {
		for _, body := range []string{`{"scopes": "notalist"}`, `{"bogus": 1}`, `{`, `[]`} {
			code, raw := restDo(t, http.DefaultClient, http.MethodPost, url, http.Header{"Authorization": {"Bearer " + testAdminKey}}, []byte(body))
			var answer struct{ Message string }
			_ = json.Unmarshal(raw, &answer)
			if code != http.StatusBadRequest || !strings.HasPrefix(answer.Message, "request body is not a valid JSON tokenbroker.v1.") {
				t.Errorf("POST %s with body %s = %d %s, want 400 saying the request body is not valid", url, body, code, raw)
			}
		}
	}
}

func TestProviderFailures(t *testing.T) {
	tests := []struct {
		name     string
		give     sandbox.Failure
		want     codes.Code
		wantHTTP int
		reason   string // ErrorInfo reason, "" for none
		fault    string // ErrorInfo metadata "fault"
		retry    time.Duration
	}{
		// The provider refuses the broker's own registration: the broker's
		// fault, 502 over REST, not a 4xx that blames the caller.
		{
			name: "invalid_client",
			give: sandbox.Failure{Status: 401, Body: `{"error":"invalid_client","error_description":"Client authentication failed"}`},
			want: codes.FailedPrecondition, wantHTTP: http.StatusBadGateway, reason: "INVALID_CLIENT", fault: "broker",
		},
		{
			name: "unauthorized_client",
			give: sandbox.Failure{Status: 400, Body: `{"error":"unauthorized_client"}`},
			want: codes.FailedPrecondition, wantHTTP: http.StatusBadGateway, reason: "UNAUTHORIZED_CLIENT", fault: "broker",
		},
		{
			name: "unsupported_grant_type",
			give: sandbox.Failure{Status: 400, Body: `{"error":"unsupported_grant_type"}`},
			want: codes.FailedPrecondition, wantHTTP: http.StatusBadGateway, reason: "UNSUPPORTED_GRANT_TYPE", fault: "broker",
		},
		{
			name: "invalid_request",
			give: sandbox.Failure{Status: 400, Body: `{"error":"invalid_request"}`},
			want: codes.FailedPrecondition, wantHTTP: http.StatusBadGateway, reason: "INVALID_REQUEST", fault: "broker",
		},
		{
			name: "403 HTML page",
			give: sandbox.Failure{Status: 403, ContentType: "text/html", Body: "<html><body>Forbidden</body></html>"},
			want: codes.FailedPrecondition, wantHTTP: http.StatusBadGateway, reason: "PROVIDER_ERROR", fault: "broker",
		},
		{
			name: "invalid_grant",
			give: sandbox.Failure{Status: 400, Body: `{"error":"invalid_grant"}`},
			want: codes.FailedPrecondition, wantHTTP: http.StatusBadRequest, reason: "INVALID_GRANT",
		},
		{
			name: "invalid_scope",
			give: sandbox.Failure{Status: 400, Body: `{"error":"invalid_scope"}`},
			want: codes.InvalidArgument, wantHTTP: http.StatusBadRequest, reason: "INVALID_SCOPE",
		},
		{
			name: "HTML 502",
			give: sandbox.Failure{Status: 502, ContentType: "text/html", Body: "<html><body><h1>502 Bad Gateway</h1></body></html>"},
			want: codes.Unavailable, wantHTTP: http.StatusServiceUnavailable, reason: "PROVIDER_ERROR",
		},
		{
			name: "rate limited",
			give: sandbox.Failure{Status: 429, Body: `{"error":"slow_down"}`},
			want: codes.ResourceExhausted, wantHTTP: http.StatusTooManyRequests, reason: "SLOW_DOWN",
		},
		{
			name: "200 without access_token",
			give: sandbox.Failure{Status: 200, Body: `{"token_type":"bearer","expires_in":3600}`},
			want: codes.Unavailable, wantHTTP: http.StatusServiceUnavailable,
		},
		{
			name: "expires_in not a number",
			give: sandbox.Failure{Status: 200, Body: `{"access_token":"abc","expires_in":"soon"}`},
			want: codes.Unavailable, wantHTTP: http.StatusServiceUnavailable,
		},
		{
			name: "body over the size limit",
			give: sandbox.Failure{Status: 200, Body: `{"access_token":"` + strings.Repeat("a", 100<<10) + `"}`},
			want: codes.Unavailable, wantHTTP: http.StatusServiceUnavailable,
		},
		{
			name: "timeout",
			give: sandbox.Failure{Status: 200, Body: `{"access_token":"late"}`, Delay: 5 * time.Second},
			want: codes.Unavailable, wantHTTP: http.StatusServiceUnavailable,
		},
	}
	e := newEnv(t)
	in := e.start(nil)
	e.register(in, "sandbox")
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e.provider.SetFailure(&tt.give)
			defer e.provider.SetFailure(nil)
			scope := fmt.Sprintf("s%d", i) // a cold key per case
			_, err := in.tokens.GetToken(context.Background(), &tokenbrokerv1.GetTokenRequest{Provider: "sandbox", Scopes: []string{scope}})
			st := status.Convert(err)
			if st.Code() != tt.want {
				t.Fatalf("code = %v (%v), want %v", st.Code(), err, tt.want)
			}
			if strings.Contains(st.Message(), testClientSecret) || strings.Contains(st.Message(), "<html>") {
				t.Errorf("message leaks the secret or the provider's page: %q", st.Message())
			}
			var info *errdetails.ErrorInfo
			for _, d := range st.Details() {
				if v, ok := d.(*errdetails.ErrorInfo); ok {
					info = v
				}
			}
			if tt.reason != "" && (info == nil || info.GetReason() != tt.reason || info.GetMetadata()["provider"] != "sandbox") {
				t.Errorf("ErrorInfo = %v, want reason %s for provider sandbox", info, tt.reason)
			}
			if got := info.GetMetadata()["fault"]; got != tt.fault {
				t.Errorf("ErrorInfo fault = %q, want %q", got, tt.fault)
			}
			if tt.name == "invalid_client" && info.GetMetadata()["error_description"] != "Client authentication failed" {
				t.Errorf("error_description = %q, want the provider's", info.GetMetadata()["error_description"])
			}
			code, body, raw := restCall(t, http.MethodPost, in.baseURL+"/v1/providers/sandbox/token", map[string]any{"scopes": []string{scope}})
			if code != tt.wantHTTP || body["code"] != float64(tt.want) {
				t.Errorf("REST = %d %s, want HTTP %d with code %d", code, raw, tt.wantHTTP, tt.want)
			}
			if tt.reason != "" && !strings.Contains(raw, `"reason":"`+tt.reason+`"`) {
				t.Errorf("REST answer %s lacks the ErrorInfo reason %s", raw, tt.reason)
			}

			// Nothing was cached from the failure: once the provider
			// recovers, the next call fetches.
			e.provider.SetFailure(nil)
			before := e.provider.TokenCalls()
			if _, err := in.tokens.GetToken(context.Background(), &tokenbrokerv1.GetTokenRequest{Provider: "sandbox", Scopes: []string{scope}}); err != nil {
				t.Fatalf("after recovery: %v", err)
			}
			if got := e.provider.TokenCalls() - before; got != 1 {
				t.Errorf("provider calls after recovery = %d, want 1", got)
			}
		})
	}
}

func TestRefreshWithStaleToken(t *testing.T) {
	e := newEnv(t)
	in := e.start(nil)
	e.register(in, "sandbox")
	ctx := context.Background()
	first, err := in.tokens.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: "sandbox"})
	if err != nil {
		t.Fatal(err)
	}
	stale := first.GetToken().GetAccessToken()

	// Many callers saw a 401 with the same token at once: one provider call.
	tokens := hammer(t, 50, func(ctx context.Context, i int) (string, error) {
		resp, err := in.tokens.Refresh(ctx, &tokenbrokerv1.RefreshRequest{Provider: "sandbox", StaleAccessToken: stale})
		return resp.GetToken().GetAccessToken(), err
	})
	if len(tokens) != 1 || tokens[stale] != 0 {
		t.Fatalf("refresh callers got tokens %v, want one new token", tokens)
	}
	if got := e.provider.TokenCalls(); got != 2 {
		t.Errorf("provider calls = %d, want 2 (the first fetch and one refresh)", got)
	}
	// A caller still holding the old token gets the current one, no call.
	again, err := in.tokens.Refresh(ctx, &tokenbrokerv1.RefreshRequest{Provider: "sandbox", StaleAccessToken: stale})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := tokens[again.GetToken().GetAccessToken()]; !ok {
		t.Errorf("late refresh returned another token")
	}
	// Over REST, without a stale token: always a new token.
	code, body, raw := restCall(t, http.MethodPost, in.baseURL+"/v1/providers/sandbox/token:refresh", map[string]any{})
	if code != http.StatusOK || body["access_token"] == again.GetToken().GetAccessToken() {
		t.Errorf("REST refresh = %d %s, want a new token", code, raw)
	}
	if got := e.provider.TokenCalls(); got != 3 {
		t.Errorf("provider calls = %d, want 3", got)
	}
}

func TestIntrospect(t *testing.T) {
	e := newEnv(t)
	in := e.start(nil)
	e.register(in, "sandbox")
	ctx := context.Background()
	got, err := in.tokens.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: "sandbox", Scopes: []string{"read"}})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := in.tokens.Introspect(ctx, &tokenbrokerv1.IntrospectRequest{Token: got.GetToken().GetAccessToken()})
	if err != nil {
		t.Fatal(err)
	}
	if !resp.GetActive() || resp.GetProvider() != "sandbox" || resp.GetScope() != "read" || resp.GetClientId() != testClientID ||
		resp.GetExp() != got.GetToken().GetExpiresAt().GetSeconds() {
		t.Errorf("Introspect = %v, want active sandbox token with scope read", resp)
	}
	code, body, raw := restCall(t, http.MethodPost, in.baseURL+"/v1/introspect", map[string]any{"token": "never-issued"})
	if code != http.StatusOK || body["active"] != false {
		t.Errorf("REST introspect of an unknown token = %d %s, want active false", code, raw)
	}
	if _, err := in.tokens.Introspect(ctx, &tokenbrokerv1.IntrospectRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("Introspect(empty) = %v, want InvalidArgument", err)
	}
}

func TestAdminNeverReturnsSecrets(t *testing.T) {
	e := newEnv(t)
	in := e.start(nil)
	e.register(in, "sandbox")
	ctx := context.Background()

	got, err := in.admin.GetProvider(ctx, &tokenbrokerv1.GetProviderRequest{Name: "sandbox"})
	if err != nil {
		t.Fatal(err)
	}
	if s := got.GetProvider().GetClientSecret(); !s.GetSet() || len(s.GetFingerprint()) != 32 || s.GetUpdateTime() == nil {
		t.Errorf("client_secret = %v, want set with an 8-digit fingerprint and a time", s)
	}
	for _, path := range []string{"/v1/admin/providers", "/v1/admin/providers/sandbox"} {
		code, _, raw := restCall(t, http.MethodGet, in.baseURL+path, nil)
		if code != http.StatusOK || strings.Contains(raw, testClientSecret) || !strings.Contains(raw, `"client_id":"`+testClientID+`"`) {
			t.Errorf("GET %s = %d %s, want the provider without its secret", path, code, raw)
		}
	}
	// Update over REST without a secret keeps the stored one.
	code, body, raw := restCall(t, http.MethodPut, in.baseURL+"/v1/admin/providers/sandbox", map[string]any{
		"provider": map[string]any{"name": "sandbox", "token_url": e.url + sandbox.TokenPath, "client_id": testClientID, "default_scopes": []string{"read"}},
	})
	if code != http.StatusOK || strings.Contains(raw, testClientSecret) {
		t.Fatalf("PUT = %d %s", code, raw)
	}
	if fp := body["provider"].(map[string]any)["client_secret"].(map[string]any)["fingerprint"]; fp != got.GetProvider().GetClientSecret().GetFingerprint() {
		t.Errorf("fingerprint after update without secret = %v, want unchanged %s", fp, got.GetProvider().GetClientSecret().GetFingerprint())
	}
	if _, err := in.tokens.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: "sandbox"}); err != nil {
		t.Fatalf("GetToken after update: %v", err)
	}
	if _, err := in.admin.PutProvider(ctx, &tokenbrokerv1.PutProviderRequest{Provider: &tokenbrokerv1.Provider{Name: "Bad Name"}}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("PutProvider(invalid) = %v, want InvalidArgument", err)
	}
	if _, err := in.admin.DeleteProvider(ctx, &tokenbrokerv1.DeleteProviderRequest{Name: "sandbox"}); err != nil {
		t.Fatal(err)
	}
	if _, err := in.admin.DeleteProvider(ctx, &tokenbrokerv1.DeleteProviderRequest{Name: "sandbox"}); status.Code(err) != codes.NotFound {
		t.Errorf("second delete = %v, want NotFound", err)
	}
	code, _, _ = restCall(t, http.MethodGet, in.baseURL+"/v1/admin/providers/sandbox", nil)
	if code != http.StatusNotFound {
		t.Errorf("GET deleted provider = %d, want 404", code)
	}
}

func TestHealthAndOpenAPI(t *testing.T) {
	e := newEnv(t)
	in := e.start(nil)
	// Health checks need no credentials.
	_, _, anonymous := in.clientAs(t, nil, "")
	resp, err := healthpb.NewHealthClient(anonymous).Check(context.Background(), &healthpb.HealthCheckRequest{Service: tokenbrokerv1.TokenBrokerService_ServiceDesc.ServiceName})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health = %v, %v; want SERVING", resp, err)
	}
	code, body, _ := restCall(t, http.MethodGet, in.metricsURL+server.OpenAPIPath, nil)
	paths, _ := body["paths"].(map[string]any)
	if code != http.StatusOK || body["swagger"] != "2.0" || paths["/v1/providers/{provider}/token"] == nil {
		t.Errorf("GET /openapi.json on the metrics listener = %d with paths %v, want the generated document", code, paths)
	}
}

// TestMetricsAreServedOnTheirOwnListener: /metrics, which names providers
// in its labels, and /openapi.json are served on the metrics listener and
// not on the API listener, with or without credentials; with no metrics
// address there is no such listener.
func TestMetricsAreServedOnTheirOwnListener(t *testing.T) {
	e := newEnv(t)
	in := e.startWith(options{metrics: server.NewMetrics()})
	e.register(in, "sandbox")
	if _, err := in.tokens.GetToken(context.Background(), &tokenbrokerv1.GetTokenRequest{Provider: "sandbox"}); err != nil {
		t.Fatal(err)
	}
	code, raw := restDo(t, http.DefaultClient, http.MethodGet, in.metricsURL+server.MetricsPath, nil, nil)
	if code != http.StatusOK || !strings.Contains(string(raw), `provider="sandbox"`) {
		t.Errorf("GET /metrics on the metrics listener = %d, want 200 with the provider's series", code)
	}
	for _, path := range []string{server.MetricsPath, server.OpenAPIPath} {
		for _, header := range []http.Header{nil, {"Authorization": {"Bearer " + testAdminKey}}} {
			if code, raw := restDo(t, http.DefaultClient, http.MethodGet, in.baseURL+path, header, nil); code != http.StatusNotFound || strings.Contains(string(raw), "sandbox") {
				t.Errorf("GET %s on the API listener (authorization %v) = %d %.80s, want 404", path, header != nil, code, raw)
			}
		}
	}

	srv, err := server.New(server.Config{GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Broker: in.broker, Metrics: server.NewMetrics()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	srv.Start()
	if got := srv.MetricsAddr(); got != "" {
		t.Errorf("MetricsAddr() without Config.MetricsAddr = %q, want no listener", got)
	}
}

func TestRFC7662IntrospectionEndpoint(t *testing.T) {
	e := newEnv(t)
	in := e.start(nil)
	e.register(in, "sandbox")
	got, err := in.tokens.GetToken(context.Background(), &tokenbrokerv1.GetTokenRequest{Provider: "sandbox", Scopes: []string{"read"}})
	if err != nil {
		t.Fatal(err)
	}
	post := func(key, token string) (int, map[string]any) {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, in.baseURL+"/oauth2/introspect", strings.NewReader(url.Values{"token": {token}}.Encode()))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			t.Fatalf("answer is not JSON: %v", err)
		}
		return resp.StatusCode, body
	}
	tests := []struct {
		name       string
		key, token string
		wantCode   int
		wantActive any
	}{
		{"issued token", testAdminKey, got.GetToken().GetAccessToken(), http.StatusOK, true},
		{"unknown token", testAdminKey, "never-issued", http.StatusOK, false},
		{"no credentials", "", got.GetToken().GetAccessToken(), http.StatusUnauthorized, nil},
		{"bad key", "tbk_aaaaaaaaaaaa_bad", got.GetToken().GetAccessToken(), http.StatusUnauthorized, nil},
		{"no token", testAdminKey, "", http.StatusBadRequest, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := post(tt.key, tt.token)
			if code != tt.wantCode || body["active"] != tt.wantActive {
				t.Errorf("POST /oauth2/introspect = %d %v, want %d with active %v", code, body, tt.wantCode, tt.wantActive)
			}
		})
	}
	_, body := post(testAdminKey, got.GetToken().GetAccessToken())
	if body["provider"] != "sandbox" || body["scope"] != "read" || body["client_id"] != testClientID || body["exp"] == nil {
		t.Errorf("introspection of an issued token = %v, want provider, scope, client_id and exp", body)
	}
}
