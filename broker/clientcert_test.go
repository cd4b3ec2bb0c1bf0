package broker

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/broker/oauth"
	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
	"github.com/tokenbroker/tokenbroker/internal/fakes"
)

// TestTLSClientAuthProvider: a provider on tls_client_auth gets tokens,
// introspects and revokes with its client certificate presented on the
// connection; the key is sealed in etcd and kept by a put without one;
// a put without a usable pair is refused without quoting the key.
func TestTLSClientAuthProvider(t *testing.T) {
	e := etcdtest.Start(t)
	cert := fakes.NewClientCertificate(t, "tokenbroker")
	other := fakes.NewClientCertificate(t, "other")
	srv := fakes.NewMTLS(t, "mtls-client", cert.Leaf)
	b := newTestBroker(t, e, withOAuth(&oauth.Client{HTTPClient: srv.Client()}))
	ctx := context.Background()
	p := Provider{
		Name: "pki", TokenURL: srv.URL + "/token", IntrospectionURL: srv.URL + "/introspect", RevocationURL: srv.URL + "/revoke",
		ClientID: "mtls-client", ClientAuth: oauth.AuthTLSClientAuth, DefaultScopes: []string{"api"},
		ClientCertificate: string(cert.CertPEM), ClientCertificateKey: string(cert.KeyPEM),
	}
	stored, err := b.PutProvider(ctx, p, "")
	if err != nil {
		t.Fatalf("PutProvider: %v", err)
	}
	if stored.CertificateUpdateTime.IsZero() {
		t.Error("CertificateUpdateTime is not set")
	}
	for k, v := range etcdKeys(t, e.Client(t, nil), b.prefix+providersPrefix) {
		if strings.Contains(v, strings.TrimSpace(string(cert.KeyPEM[30:80]))) {
			t.Errorf("%s holds the client certificate's key in the clear", k)
		}
	}
	// A put that brings no pair keeps the stored one.
	p.ClientCertificate, p.ClientCertificateKey = "", ""
	if _, err := b.PutProvider(ctx, p, ""); err != nil {
		t.Fatalf("PutProvider without the pair: %v", err)
	}
	rec, err := b.GetToken(ctx, TokenRequest{Provider: "pki"})
	if err != nil || !strings.HasPrefix(rec.AccessToken, "bound-") {
		t.Fatalf("GetToken = %v, %v; want the certificate-bound token", rec, err)
	}
	in, err := b.Introspect(ctx, rec.AccessToken)
	if err != nil || !in.Active {
		t.Fatalf("Introspect = %+v, %v; want active", in, err)
	}
	if err := b.RevokeGrant(ctx, "pki", ""); err != nil {
		t.Fatalf("RevokeGrant: %v", err)
	}
	reqs := srv.Requests()
	paths := map[string]int{}
	for _, r := range reqs {
		paths[r.Path]++
		if r.Peer == nil || !r.Peer.Equal(cert.Leaf) || r.Form.Get("client_id") != "mtls-client" || r.Form.Has("client_secret") || r.Authorization != "" {
			t.Errorf("%s: certificate %v, form %v, Authorization %q; want the client certificate and client_id alone", r.Path, r.Peer, r.Form, r.Authorization)
		}
	}
	if paths["/token"] != 1 || paths["/introspect"] != 1 || paths["/revoke"] != 1 {
		t.Errorf("the provider got %v, want one request at each endpoint", paths)
	}

	tests := []struct {
		name      string
		cert, key string
		want      string
	}{
		{name: "a certificate with another's key", cert: string(cert.CertPEM), key: string(other.KeyPEM), want: "private key does not match public key"},
		{name: "a key that is no PEM", cert: string(cert.CertPEM), key: "not a key " + string(other.KeyPEM[40:60]), want: "client_certificate_key is not a PEM private key"},
		{name: "no certificate", cert: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", key: string(cert.KeyPEM), want: "client_certificate: a certificate does not parse"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bad := p
			bad.Name, bad.ClientCertificate, bad.ClientCertificateKey = "pki-bad", tt.cert, tt.key
			_, err := b.PutProvider(ctx, bad, "")
			if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("PutProvider = %v, want InvalidArgument saying %q", err, tt.want)
			}
			if strings.Contains(err.Error(), string(other.KeyPEM[40:60])) || strings.Contains(err.Error(), string(cert.KeyPEM[40:60])) {
				t.Errorf("error %q quotes the key", err)
			}
		})
	}
	none := p
	none.Name = "pki-none"
	if _, err := b.PutProvider(ctx, none, ""); !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "needs client_certificate and client_certificate_key") {
		t.Errorf("PutProvider on tls_client_auth without a pair = %v, want InvalidArgument", err)
	}
}
