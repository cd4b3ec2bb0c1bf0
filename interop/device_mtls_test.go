package interop_test

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/oauth"
	"github.com/tokenbroker/tokenbroker/internal/fakes"
)

const deviceClient = "broker-device" // server.mjs: the device flow's client

// TestDeviceFlow onboards an account through oidc-provider's device
// authorization grant (RFC 8628): the broker asks for a user code, a person
// enters it at the server's verification page, signs in and consents, and
// the broker, polling at the interval the server named, stores the grant;
// its refresh token then works at the server.
func TestDeviceFlow(t *testing.T) {
	s := startAuthServer(t, serverOptions{RedirectURI: "http://127.0.0.1:9/unused", Env: map[string]string{"DEVICE_INTERVAL": "1"}})
	b := newBroker(t, "")
	ctx := context.Background()
	d := s.discovery(t)
	if _, err := b.PutProvider(ctx, broker.Provider{
		Name: "oidc-device", TokenURL: str(t, d, "token_endpoint"), DeviceAuthorizationURL: str(t, d, "device_authorization_endpoint"),
		IntrospectionURL: str(t, d, "introspection_endpoint"), RevocationURL: str(t, d, "revocation_endpoint"),
		ClientID: deviceClient, ClientAuth: oauth.AuthPost, DefaultScopes: []string{"openid", "offline_access", "api"},
		GrantTypes: []broker.GrantType{broker.GrantDeviceCode, broker.GrantRefreshToken},
	}, clientSecret); err != nil {
		t.Fatalf("PutProvider: %v", err)
	}
	a, err := b.StartDeviceAuthorization(ctx, "oidc-device", "tv", nil)
	if err != nil {
		t.Fatalf("StartDeviceAuthorization: %v", err)
	}
	if a.UserCode == "" || !strings.HasPrefix(a.VerificationURI, s.Issuer) || !strings.Contains(a.VerificationURIComplete, "user_code=") || a.Interval != time.Second {
		t.Fatalf("StartDeviceAuthorization = %+v, want the server's user code and verification URIs, interval 1s", a)
	}
	time.Sleep(2500 * time.Millisecond) // the broker polls while the person is on their way

	br := newBrowser(t, "dave")
	p := br.do(t, http.MethodGet, a.VerificationURIComplete, nil)
	forms := 0
	for ; forms < 6 && formTag.MatchString(p.Body); forms++ {
		action, form := br.fill(t, p)
		p = br.do(t, http.MethodPost, action, form)
	}
	if p.Status != http.StatusOK || !strings.Contains(p.Body, "Sign-in Success") {
		t.Fatalf("after %d forms the person sees %d at %s:\n%s", forms, p.Status, p.URL, p.Body)
	}

	var g *broker.Grant
	deadline := time.Now().Add(10 * time.Second)
	for g == nil || g.Health != broker.HealthOK {
		if time.Now().After(deadline) {
			t.Fatalf("grant after consent: %+v, want ok within 10s", g)
		}
		time.Sleep(100 * time.Millisecond)
		gs, err := b.ListGrants(ctx, "oidc-device")
		if err != nil || len(gs) != 1 {
			t.Fatalf("ListGrants = %v, %v", gs, err)
		}
		g = gs[0]
	}
	if g.Type != broker.GrantDeviceCode || g.RefreshToken == "" {
		t.Errorf("grant = %s, refresh token %v; want a device_code grant holding a refresh token", g.Type, g.RefreshToken != "")
	}
	first, err := b.GetToken(ctx, broker.TokenRequest{Provider: "oidc-device", Account: "tv"})
	if err != nil {
		t.Fatalf("GetToken after consent: %v", err)
	}
	if !s.activeAtServer(t, basicClient, first.AccessToken) {
		t.Error("the server says the token of the consent is not active")
	}
	next, err := b.Refresh(ctx, broker.TokenRequest{Provider: "oidc-device", Account: "tv"}, first.AccessToken)
	if err != nil || next.AccessToken == first.AccessToken {
		t.Fatalf("Refresh = %v, %v; want a new token through the refresh token", next, err)
	}

	polls := s.matching(t, tokenRequests(oauth.DeviceCodeGrantType, deviceClient))
	if len(polls) < 2 || polls[len(polls)-1].Status != http.StatusOK {
		t.Fatalf("device polls = %v, want authorization_pending answers, then a token", polls)
	}
	for i, r := range polls {
		if r.Auth != "post" || r.DeviceCode == "" {
			t.Errorf("poll %d: auth %q, device code sent %v; want client_secret_post and the device code", i+1, r.Auth, r.DeviceCode != "")
		}
		if i < len(polls)-1 && r.Error != oauth.CodeAuthorizationPending {
			t.Errorf("poll %d answered %d %q, want authorization_pending", i+1, r.Status, r.Error)
		}
		if i > 0 {
			if gap := time.Duration(r.At-polls[i-1].At) * time.Millisecond; gap < time.Second {
				t.Errorf("polls %d and %d are %v apart, want at least the server's 1s interval", i, i+1, gap)
			}
		}
	}
	refreshes := s.matching(t, tokenRequests("refresh_token", deviceClient))
	if len(refreshes) != 1 || refreshes[0].Status != http.StatusOK || refreshes[0].RefreshToken != digest(g.RefreshToken) {
		t.Errorf("refresh requests = %v, want one with the refresh token the device grant stored", refreshes)
	}
	t.Logf("device flow: %d polls (%d forms for the person), then a refresh", len(polls), forms)
}

// TestMutualTLSClientAuth gets client_credentials tokens from
// oidc-provider's https listener with each RFC 8705 method: the broker
// presents the provider's client certificate (one a CA issued, one
// self-signed), the server binds the token to it, and the broker serves
// and introspects that token as it came.
func TestMutualTLSClientAuth(t *testing.T) {
	ca := fakes.NewCA(t)
	server, pki := ca.Server(t, "127.0.0.1"), ca.Client(t, "broker-tls")
	self := fakes.NewClientCertificate(t, "broker-self-signed")
	s := startAuthServer(t, serverOptions{RedirectURI: "http://127.0.0.1:9/unused", Env: map[string]string{
		"MTLS_SERVER_CERT": string(server.CertPEM), "MTLS_SERVER_KEY": string(server.KeyPEM), "MTLS_CA": string(ca.CertPEM),
		"MTLS_SUBJECT_DN": "CN=broker-tls", "MTLS_SELF_SIGNED": string(self.CertPEM),
	}})
	mtlsURL := s.mtlsURL(t)
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	trusting := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}}
	b := newBroker(t, "", func(c *broker.Config) { c.OAuth = &oauth.Client{HTTPClient: trusting} })
	d := s.discovery(t)
	at := func(key string) string { // an endpoint of the discovery document, at the https listener
		u, err := url.Parse(str(t, d, key))
		if err != nil {
			t.Fatal(err)
		}
		return mtlsURL + u.Path
	}

	tests := []struct {
		clientID        string
		style           oauth.AuthStyle
		certPEM, keyPEM []byte
		leaf            []byte
	}{
		{clientID: "broker-tls", style: oauth.AuthTLSClientAuth, certPEM: pki.CertPEM, keyPEM: pki.KeyPEM, leaf: pki.Leaf.Raw},
		{clientID: "broker-self-signed", style: oauth.AuthSelfSignedTLSClientAuth, certPEM: self.CertPEM, keyPEM: self.KeyPEM, leaf: self.Leaf.Raw},
	}
	for _, tt := range tests {
		t.Run(tt.style.String(), func(t *testing.T) {
			ctx := context.Background()
			name := "oidc-" + strings.ReplaceAll(tt.style.String(), "_", "-")
			if _, err := b.PutProvider(ctx, broker.Provider{
				Name: name, TokenURL: at("token_endpoint"), IntrospectionURL: at("introspection_endpoint"), RevocationURL: at("revocation_endpoint"),
				ClientID: tt.clientID, ClientAuth: tt.style, DefaultScopes: []string{"api"},
				ClientCertificate: string(tt.certPEM), ClientCertificateKey: string(tt.keyPEM),
			}, ""); err != nil {
				t.Fatalf("PutProvider: %v", err)
			}
			rec, err := b.GetToken(ctx, broker.TokenRequest{Provider: name})
			if err != nil {
				t.Fatalf("GetToken: %v", err)
			}
			in, err := b.Introspect(ctx, rec.AccessToken)
			if err != nil || !in.Active || in.ClientID != tt.clientID {
				t.Errorf("Introspect = %+v, %v; want active, of %s", in, err, tt.clientID)
			}
			sum := sha256.Sum256(tt.leaf)
			thumb := base64.RawURLEncoding.EncodeToString(sum[:])
			seen := s.matching(t, endpointRequests("token", tt.clientID))
			seen = append(seen, s.matching(t, endpointRequests("introspection", tt.clientID))...)
			if len(seen) != 2 {
				t.Fatalf("the server saw %v, want one token and one introspection request of %s", seen, tt.clientID)
			}
			for _, r := range seen {
				if r.Status != http.StatusOK || r.Auth != "tls" || r.ClientCert != thumb {
					t.Errorf("%s: status %d, auth %q, certificate %q; want 200 authenticated by the certificate %s alone", r.Endpoint, r.Status, r.Auth, r.ClientCert, thumb)
				}
			}
			if seen[1].Token != digest(rec.AccessToken) {
				t.Error("the broker introspected another token than it served")
			}
			// The token is bound to the certificate (RFC 8705 §3): the
			// server says so to a client presenting it.
			if cnf := s.introspectWithCertificate(t, mtlsURL, at("introspection_endpoint"), tt.clientID, tt.certPEM, tt.keyPEM, roots, rec.AccessToken); cnf != thumb {
				t.Errorf("the server's cnf x5t#S256 = %q, want the certificate's %q: the token is not bound to it", cnf, thumb)
			}
		})
	}
	t.Run("a certificate the CA did not issue", func(t *testing.T) {
		ctx := context.Background()
		if _, err := b.PutProvider(ctx, broker.Provider{
			Name: "oidc-untrusted", TokenURL: at("token_endpoint"), ClientID: "broker-tls", ClientAuth: oauth.AuthTLSClientAuth,
			ClientCertificate: string(self.CertPEM), ClientCertificateKey: string(self.KeyPEM),
		}, ""); err != nil {
			t.Fatalf("PutProvider: %v", err)
		}
		_, err := b.GetToken(ctx, broker.TokenRequest{Provider: "oidc-untrusted"})
		var oe *oauth.Error
		if !errors.As(err, &oe) || oe.Code != "invalid_client" {
			t.Errorf("GetToken with a self-signed certificate for broker-tls = %v, want invalid_client", err)
		}
	})
}

// mtlsURL is the base URL of server.mjs's https listener.
func (s *authServer) mtlsURL(t *testing.T) string {
	t.Helper()
	resp, err := s.http.Get(s.Issuer + "/_interop/mtls")
	if err != nil {
		t.Fatalf("ask for the https listener: %v", err)
	}
	defer resp.Body.Close()
	var v struct{ URL string }
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil || !strings.HasPrefix(v.URL, "https://127.0.0.1:") {
		t.Fatalf("the https listener is %q (%v), want https://127.0.0.1:<port>", v.URL, err)
	}
	return v.URL
}

// introspectWithCertificate asks the server about token as clientID
// presenting its certificate, and returns the cnf x5t#S256 it answers.
func (s *authServer) introspectWithCertificate(t *testing.T, base, endpoint, clientID string, certPEM, keyPEM []byte, roots *x509.CertPool, token string) string {
	t.Helper()
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: roots, MinVersion: tls.VersionTLS12,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil },
	}}}
	resp, err := c.PostForm(endpoint, url.Values{"token": {token}, "client_id": {clientID}})
	if err != nil {
		t.Fatalf("introspect at %s: %v", base, err)
	}
	defer resp.Body.Close()
	var v struct {
		Active bool              `json:"active"`
		Cnf    map[string]string `json:"cnf"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil || !v.Active {
		t.Fatalf("introspection with the certificate = %d %+v (%v), want active", resp.StatusCode, v, err)
	}
	return v.Cnf["x5t#S256"]
}
