package server_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/sandbox"
	"github.com/tokenbroker/tokenbroker/server"
)

// TestRESTStatusesSayWhatWentWrong: a body over the limit is 413 on every
// REST route, a method a path does not serve is 405 with an Allow header,
// and a malformed body is still 400.
func TestRESTStatusesSayWhatWentWrong(t *testing.T) {
	e := newEnv(t)
	in := e.start(nil)
	e.register(in, "sandbox")
	admin := http.Header{"Authorization": {"Bearer " + testAdminKey}}
	huge := `{"scopes":["` + strings.Repeat("a", server.MaxRequestBytes) + `"]}`
	hugeProvider := `{"provider":{"name":"big","token_url":"https://example.com/t","client_id":"` + strings.Repeat("c", server.MaxRequestBytes) + `"}}`
	tests := []struct {
		name        string
		method, url string
		header      http.Header
		body        string
		want        int
		wantAllow   string
	}{
		{"huge GetToken body", http.MethodPost, "/v1/providers/sandbox/token", admin, huge, http.StatusRequestEntityTooLarge, ""},
		{"huge GetToken body, escaped path", http.MethodPost, "/v1/providers/sand%62ox/token", admin, huge, http.StatusRequestEntityTooLarge, ""},
		{"huge PutProvider body", http.MethodPut, "/v1/admin/providers/big", admin, hugeProvider, http.StatusRequestEntityTooLarge, ""},
		{"huge Refresh body", http.MethodPost, "/v1/providers/sandbox/token:refresh", admin, huge, http.StatusRequestEntityTooLarge, ""},
		{"huge introspection form", http.MethodPost, server.IntrospectPath, http.Header{"Authorization": admin["Authorization"], "Content-Type": {"application/x-www-form-urlencoded"}},
			"token=" + url.QueryEscape(strings.Repeat("t", server.MaxRequestBytes)), http.StatusRequestEntityTooLarge, ""},
		{"malformed body", http.MethodPost, "/v1/providers/sandbox/token", admin, `{`, http.StatusBadRequest, ""},
		{"GET of GetToken", http.MethodGet, "/v1/providers/sandbox/token", admin, "", http.StatusMethodNotAllowed, "POST"},
		{"DELETE of ListProviders", http.MethodDelete, "/v1/admin/providers", admin, "", http.StatusMethodNotAllowed, "GET"},
		{"PATCH of a provider", http.MethodPatch, "/v1/admin/providers/sandbox", admin, "{}", http.StatusMethodNotAllowed, "DELETE, GET, PUT"},
		{"GET of Introspect", http.MethodGet, "/v1/introspect", nil, "", http.StatusMethodNotAllowed, "POST"},
		{"unknown path", http.MethodGet, "/v1/nothing/here", admin, "", http.StatusNotFound, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(tt.method, in.baseURL+tt.url, strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/json")
			for k, v := range tt.header {
				req.Header[k] = v
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Errorf("%s %s = %d, want %d", tt.method, tt.url, resp.StatusCode, tt.want)
			}
			if got := resp.Header.Get("Allow"); got != tt.wantAllow {
				t.Errorf("%s %s Allow = %q, want %q", tt.method, tt.url, got, tt.wantAllow)
			}
		})
	}
}

// TestUnparsableGRPCRequestIsInvalidArgument sends GetToken and
// PutProvider a message whose first field, a string, is not UTF-8: the
// answer is InvalidArgument, not Internal.
func TestUnparsableGRPCRequestIsInvalidArgument(t *testing.T) {
	e := newEnv(t)
	in := e.start(nil)
	bad := wrapperspb.Bytes([]byte{0xff, 0xfe, 0xfd})
	for _, method := range []string{tokenbrokerv1.TokenBrokerService_GetToken_FullMethodName, tokenbrokerv1.AdminService_PutProvider_FullMethodName} {
		err := in.conn.Invoke(context.Background(), method, bad, new(wrapperspb.BytesValue))
		if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "is not a valid tokenbroker.v1.") {
			t.Errorf("%s with a message that does not parse = %v, want InvalidArgument naming the request type", method, err)
		}
	}
	if got := e.provider.TokenCalls(); got != 0 {
		t.Errorf("provider token calls = %d, want 0", got)
	}
	// Credentials are checked first.
	_, _, anonymous := in.clientAs(t, nil, "")
	if err := anonymous.Invoke(context.Background(), tokenbrokerv1.AdminService_PutProvider_FullMethodName, bad, new(wrapperspb.BytesValue)); status.Code(err) != codes.Unauthenticated {
		t.Errorf("PutProvider with a message that does not parse and no credentials = %v, want Unauthenticated", err)
	}
}

// TestOversizedInputIsNotEchoed: a 100 KB provider name, a provider with
// 900 KB of token_params and a REST body with a 100 KB unknown field are
// refused with errors of at most a few KB, and nothing is stored.
func TestOversizedInputIsNotEchoed(t *testing.T) {
	e := newEnv(t)
	in := e.start(nil)
	ctx := context.Background()
	params := make(map[string]string)
	for i := range 900 {
		params[fmt.Sprintf("p%d", i)] = strings.Repeat("v", 1000)
	}
	tests := []struct {
		name string
		give *tokenbrokerv1.Provider
	}{
		{"100 KB name", &tokenbrokerv1.Provider{Name: strings.Repeat("N", 100<<10), TokenUrl: e.url + sandbox.TokenPath, ClientId: testClientID}},
		{"900 KB of token_params", &tokenbrokerv1.Provider{Name: "big", TokenUrl: e.url + sandbox.TokenPath, ClientId: testClientID, TokenParams: params}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := in.admin.PutProvider(ctx, &tokenbrokerv1.PutProviderRequest{Provider: tt.give})
			if st := status.Convert(err); st.Code() != codes.InvalidArgument || len(st.Message()) > 4<<10 {
				t.Errorf("PutProvider = %v with a message of %d bytes: %.200s; want InvalidArgument of at most 4 KB", st.Code(), len(st.Message()), st.Message())
			}
		})
	}
	if _, err := in.admin.GetProvider(ctx, &tokenbrokerv1.GetProviderRequest{Name: "big"}); status.Code(err) != codes.NotFound {
		t.Errorf("GetProvider(big) after a refused put = %v, want NotFound", err)
	}
	code, raw := restDo(t, http.DefaultClient, http.MethodPost, in.baseURL+"/v1/admin/apikeys",
		http.Header{"Authorization": {"Bearer " + testAdminKey}}, []byte(`{"`+strings.Repeat("x", 100<<10)+`": 1}`))
	if code != http.StatusBadRequest || len(raw) > 2<<10 {
		t.Errorf("REST body with a 100 KB unknown field = %d with %d bytes, want 400 of at most 2 KB", code, len(raw))
	}
}
