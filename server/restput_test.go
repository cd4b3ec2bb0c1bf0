package server_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/sandbox"
)

// TestRESTPutProviderBodyAsDocumented: the body the README shows for PUT
// /v1/admin/providers/{name} registers a provider whose name is the path's,
// the secret is write-only in the answer, and the provider is then called
// as the body says (client_id and secret in Basic and in the form).
func TestRESTPutProviderBodyAsDocumented(t *testing.T) {
	e := newEnv(t)
	in := e.start(nil)
	// As in the README, with the sandbox's token URL and credentials.
	body := `{
  "provider": {
    "token_url": "` + e.url + sandbox.TokenPath + `",
    "client_id": "` + testClientID + `",
    "client_auth_style": "CLIENT_AUTH_STYLE_BASIC_AND_POST",
    "default_scopes": ["public"],
    "grant_types": ["GRANT_TYPE_CLIENT_CREDENTIALS"]
  },
  "client_secret": "` + testClientSecret + `"
}`
	code, raw := restDo(t, http.DefaultClient, http.MethodPut, in.baseURL+"/v1/admin/providers/hound",
		http.Header{"Authorization": {"Bearer " + testAdminKey}}, []byte(body))
	if code != http.StatusOK || !strings.Contains(string(raw), `"name":"hound"`) || !strings.Contains(string(raw), `"set":true`) || strings.Contains(string(raw), testClientSecret) {
		t.Fatalf("PUT /v1/admin/providers/hound = %d %s, want 200 with the provider named hound, its secret set and not shown", code, raw)
	}
	if _, err := in.tokens.GetToken(context.Background(), &tokenbrokerv1.GetTokenRequest{Provider: "hound"}); err != nil {
		t.Fatalf("GetToken of the provider put over REST: %v", err)
	}
	reqs := e.provider.Requests()
	if len(reqs) != 1 {
		t.Fatalf("provider saw %d token requests, want 1", len(reqs))
	}
	got := reqs[0]
	user, pass, basic := (&http.Request{Header: got.Header}).BasicAuth()
	if !basic || user != testClientID || pass != testClientSecret || got.Form.Get("client_id") != testClientID ||
		got.Form.Get("client_secret") != testClientSecret || got.Form.Get("scope") != "public" || got.Form.Get("grant_type") != "client_credentials" {
		t.Errorf("provider saw header %v form %v, want Basic and form credentials, scope public, client_credentials", got.Header, got.Form)
	}
}
