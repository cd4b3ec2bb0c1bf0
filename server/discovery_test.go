package server_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// TestDiscoveryNotFoundIsInvalidArgument: a preset whose issuer serves no
// metadata is the admin's mistake, answered InvalidArgument with the URLs
// tried, over gRPC and REST; an issuer that fails is Unavailable.
func TestDiscoveryNotFoundIsInvalidArgument(t *testing.T) {
	e := newEnv(t)
	in := e.start(nil)
	var status503 atomic.Bool
	issuer := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if status503.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		http.NotFound(w, r)
	}))
	t.Cleanup(issuer.Close)
	put := func() error {
		_, err := in.admin.PutProvider(context.Background(), &tokenbrokerv1.PutProviderRequest{Provider: &tokenbrokerv1.Provider{
			Name: "disc", ClientId: "c", Preset: "oidc", BaseUrl: issuer.URL + "/realm"}})
		return err
	}
	err := put()
	want := issuer.URL + "/realm/.well-known/openid-configuration and " + issuer.URL + "/.well-known/oauth-authorization-server/realm answered 404"
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), want) {
		t.Errorf("PutProvider(oidc at an issuer without metadata) = %v, want InvalidArgument saying %q", err, want)
	}
	code, raw := restDo(t, http.DefaultClient, http.MethodPut, in.baseURL+"/v1/admin/providers/disc",
		http.Header{"Authorization": {"Bearer " + testAdminKey}}, []byte(`{"provider":{"client_id":"c","preset":"oauth","base_url":"`+issuer.URL+`"}}`))
	if code != http.StatusBadRequest || !strings.Contains(string(raw), issuer.URL+"/.well-known/oauth-authorization-server and") {
		t.Errorf("REST PutProvider(oauth at an issuer without metadata) = %d %s, want 400 naming the URLs", code, raw)
	}
	status503.Store(true)
	if err := put(); status.Code(err) != codes.Unavailable || strings.Contains(err.Error(), "malformed token response") {
		t.Errorf("PutProvider(oidc at a failing issuer) = %v, want Unavailable, and no token response named", err)
	}
}
