package broker

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/tokenbroker/tokenbroker/broker/oauth"
	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
)

// metadataServer is an authorization server that serves its RFC 8414
// metadata at one path (or none), answers status at every other path, and
// records the paths asked for.
type metadataServer struct {
	*httptest.Server
	mu    sync.Mutex
	paths []string
}

func newMetadataServer(t *testing.T, metaPath, issuerPath string, status int, methods ...string) *metadataServer {
	m := &metadataServer{}
	m.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.mu.Lock()
		m.paths = append(m.paths, r.Method+" "+r.URL.Path+" "+r.Header.Get("Accept"))
		m.mu.Unlock()
		if r.URL.Path != metaPath {
			w.WriteHeader(status)
			return
		}
		base := m.URL
		doc := map[string]any{
			"issuer": base + issuerPath, "token_endpoint": base + "/oauth2/token",
			"introspection_endpoint": base + "/oauth2/introspect", "revocation_endpoint": base + "/oauth2/revoke",
			"device_authorization_endpoint": base + "/oauth2/device",
			"grant_types_supported":         []string{"client_credentials", "urn:ietf:params:oauth:grant-type:device_code"},
		}
		if len(methods) > 0 {
			doc["token_endpoint_auth_methods_supported"] = methods
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(doc)
	}))
	t.Cleanup(m.Close)
	return m
}

func (m *metadataServer) asked() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.paths)
}

// TestRFC8414Discovery: the "oidc" preset falls back to RFC 8414 metadata
// (at /.well-known/oauth-authorization-server, inserted before the
// issuer's path) when there is no OpenID Connect document, the "oauth"
// preset asks RFC 8414 first, and both pick up the token, introspection,
// revocation and device authorization endpoints and the client
// authentication methods. Metadata found nowhere is a configuration error
// that names the URLs tried; a failing issuer is the provider's fault.
func TestRFC8414Discovery(t *testing.T) {
	const accept = " application/json"
	type give struct {
		preset     string
		issuerPath string // the issuer's path under the server's URL
		metaPath   string // where the server serves its metadata; "" for nowhere
		status     int    // the answer at every other path
		methods    []string
	}
	type want struct {
		asked []string
		auth  oauth.AuthStyle
		err   error    // errors.Is; nil for success
		says  []string // in the error, after the server's URL is put for {url}
	}
	tests := []struct {
		name string
		give give
		want want
	}{
		{
			name: "oidc falls back to RFC 8414",
			give: give{preset: "oidc", metaPath: "/.well-known/oauth-authorization-server", status: 404, methods: []string{"private_key_jwt", "tls_client_auth"}},
			want: want{asked: []string{"GET /.well-known/openid-configuration" + accept, "GET /.well-known/oauth-authorization-server" + accept}, auth: oauth.AuthPrivateKeyJWT},
		},
		{
			name: "an issuer with a path",
			give: give{preset: "oidc", issuerPath: "/tenant/a", metaPath: "/.well-known/oauth-authorization-server/tenant/a", status: 404, methods: []string{"client_secret_post"}},
			want: want{asked: []string{"GET /tenant/a/.well-known/openid-configuration" + accept, "GET /.well-known/oauth-authorization-server/tenant/a" + accept}, auth: oauth.AuthPost},
		},
		{
			name: "oauth asks RFC 8414 first",
			give: give{preset: "oauth", metaPath: "/.well-known/oauth-authorization-server", status: 404},
			want: want{asked: []string{"GET /.well-known/oauth-authorization-server" + accept}, auth: oauth.AuthBasic},
		},
		{
			name: "oauth falls back to OpenID Connect",
			give: give{preset: "oauth", metaPath: "/.well-known/openid-configuration", status: 404, methods: []string{"client_secret_basic"}},
			want: want{asked: []string{"GET /.well-known/oauth-authorization-server" + accept, "GET /.well-known/openid-configuration" + accept}, auth: oauth.AuthBasic},
		},
		{
			name: "no metadata anywhere",
			give: give{preset: "oidc", issuerPath: "/nope", status: 404},
			want: want{asked: []string{"GET /nope/.well-known/openid-configuration" + accept, "GET /.well-known/oauth-authorization-server/nope" + accept}, err: ErrInvalidArgument,
				says: []string{"{url}/nope/.well-known/openid-configuration and {url}/.well-known/oauth-authorization-server/nope answered 404", "is base_url the issuer?"}},
		},
		{
			name: "a failing issuer is not asked again and not the caller's fault",
			give: give{preset: "oauth", status: 503},
			want: want{asked: []string{"GET /.well-known/oauth-authorization-server" + accept}, err: oauth.ErrTransport,
				says: []string{"discovery at {url}/.well-known/oauth-authorization-server answered 503"}},
		},
		{
			name: "a refusal is a configuration error",
			give: give{preset: "oidc", status: 403},
			want: want{asked: []string{"GET /.well-known/openid-configuration" + accept}, err: ErrInvalidArgument,
				says: []string{"{url}/.well-known/openid-configuration answered 403, not metadata"}},
		},
	}
	e := etcdtest.Start(t)
	b := newTestBroker(t, e, withBackgroundRefreshOff())
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMetadataServer(t, tt.give.metaPath, tt.give.issuerPath, tt.give.status, tt.give.methods...)
			p := Provider{Name: "meta", ClientID: "c"}
			err := b.ApplyPreset(context.Background(), &p, tt.give.preset, m.URL+tt.give.issuerPath)
			if got := m.asked(); !slices.Equal(got, tt.want.asked) {
				t.Errorf("the issuer was asked %q, want %q", got, tt.want.asked)
			}
			if tt.want.err != nil {
				if !errors.Is(err, tt.want.err) {
					t.Fatalf("ApplyPreset(%s) = %v, want %v", tt.give.preset, err, tt.want.err)
				}
				for _, s := range tt.want.says {
					if s = strings.ReplaceAll(s, "{url}", m.URL); !strings.Contains(err.Error(), s) {
						t.Errorf("ApplyPreset(%s) = %q, want it to say %q", tt.give.preset, err, s)
					}
				}
				if errors.Is(err, oauth.ErrBadResponse) {
					t.Errorf("ApplyPreset(%s) = %v: a discovery failure is no malformed token response", tt.give.preset, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ApplyPreset(%s): %v", tt.give.preset, err)
			}
			want := Provider{TokenURL: m.URL + "/oauth2/token", IntrospectionURL: m.URL + "/oauth2/introspect",
				RevocationURL: m.URL + "/oauth2/revoke", DeviceAuthorizationURL: m.URL + "/oauth2/device", ClientAuth: tt.want.auth}
			if p.TokenURL != want.TokenURL || p.IntrospectionURL != want.IntrospectionURL || p.RevocationURL != want.RevocationURL ||
				p.DeviceAuthorizationURL != want.DeviceAuthorizationURL || p.ClientAuth != want.ClientAuth || !slices.Equal(p.GrantTypes, []GrantType{GrantClientCredentials}) {
				t.Errorf("ApplyPreset(%s) made %+v, want the endpoints, auth and grants of %+v", tt.give.preset, p, want)
			}
		})
	}
}
