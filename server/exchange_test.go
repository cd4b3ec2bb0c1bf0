package server_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// TestTokenExchangeThroughTheAdminAPI registers a token exchange provider
// over REST whose subject token is the sandbox's, gets a token of it over
// gRPC, and checks what the security token service received; a subject
// token file cannot be named through the API.
func TestTokenExchangeThroughTheAdminAPI(t *testing.T) {
	e := newEnv(t)
	in := e.start(nil)
	e.register(in, "sandbox")
	ctx := context.Background()
	var (
		mu    sync.Mutex
		forms []url.Values
	)
	sts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		mu.Lock()
		forms = append(forms, r.PostForm)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = fmt.Fprint(w, `{"access_token":"exchanged","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"N_A","expires_in":300}`)
	}))
	t.Cleanup(sts.Close)

	code, _, raw := restCall(t, http.MethodPut, in.baseURL+"/v1/admin/providers/sts", map[string]any{
		"provider": map[string]any{"name": "sts", "token_url": sts.URL + "/token", "client_id": "sts-client",
			"grant_types":    []string{"GRANT_TYPE_TOKEN_EXCHANGE"},
			"token_exchange": map[string]any{"subject_provider": "sandbox", "audience": []string{"orders"}, "resource": []string{"https://orders.example/"}}},
		"client_secret": "sts-secret",
	})
	if code != http.StatusOK || !strings.Contains(raw, `"token_exchange":{"subject_provider":"sandbox"`) || strings.Contains(raw, "sts-secret") {
		t.Fatalf("PUT sts = %d %s, want the provider with its token exchange, without the secret", code, raw)
	}
	got, err := in.tokens.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: "sts", Scopes: []string{"orders.read"}})
	if err != nil || got.GetToken().GetAccessToken() != "exchanged" {
		t.Fatalf("GetToken(sts) = %v, %v; want the exchanged token", got, err)
	}
	subject, err := in.tokens.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: "sandbox"})
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(forms) != 1 || forms[0].Get("grant_type") != "urn:ietf:params:oauth:grant-type:token-exchange" ||
		forms[0].Get("subject_token") != subject.GetToken().GetAccessToken() || forms[0].Get("audience") != "orders" ||
		forms[0].Get("resource") != "https://orders.example/" || forms[0].Get("scope") != "orders.read" {
		t.Errorf("the STS received %v, want one exchange of the sandbox's token for orders", forms)
	}

	_, err = in.admin.PutProvider(ctx, &tokenbrokerv1.PutProviderRequest{Provider: &tokenbrokerv1.Provider{
		Name: "sts-file", TokenUrl: sts.URL + "/token", ClientId: "sts-client",
		GrantTypes:    []tokenbrokerv1.GrantType{tokenbrokerv1.GrantType_GRANT_TYPE_TOKEN_EXCHANGE},
		TokenExchange: &tokenbrokerv1.TokenExchange{SubjectTokenFile: "/etc/passwd"},
	}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "config file only") {
		t.Errorf("PutProvider naming a subject token file = %v, want InvalidArgument", err)
	}
}
