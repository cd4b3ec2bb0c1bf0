package oauth_test

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/broker/oauth"
	"github.com/tokenbroker/tokenbroker/internal/fakes"
)

// TestTLSClientAuth: the client certificate is presented on the TLS
// connection to the token, introspection and revocation endpoints,
// client_id goes in the body and nothing else authenticates; a
// certificate-bound token comes back as it was sent.
func TestTLSClientAuth(t *testing.T) {
	cert := fakes.NewClientCertificate(t, "tokenbroker")
	other := fakes.NewClientCertificate(t, "someone-else")
	srv := fakes.NewMTLS(t, "mtls-client", cert.Leaf)
	c := &oauth.Client{HTTPClient: srv.Client()}
	ctx := context.Background()
	auth := oauth.TLSClientAuth{ClientID: "mtls-client", Certificate: cert.Pair}

	tok, err := c.Token(ctx, oauth.Request{TokenURL: srv.URL + "/token", Auth: auth, Params: url.Values{"grant_type": {"client_credentials"}}})
	if err != nil || tok.AccessToken != "bound-"+cert.Thumbprint()[:12] || tok.TokenType != "Bearer" {
		t.Fatalf("Token = %+v, %v; want the certificate-bound token as sent", tok, err)
	}
	in, err := c.Introspect(ctx, oauth.Request{TokenURL: srv.URL + "/introspect", Auth: auth}, tok.AccessToken)
	if err != nil || !in.Active {
		t.Fatalf("Introspect = %+v, %v; want active", in, err)
	}
	if err := c.Revoke(ctx, oauth.Request{TokenURL: srv.URL + "/revoke", Auth: auth}, tok.AccessToken); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	for _, r := range srv.Requests() {
		if r.Peer == nil || !r.Peer.Equal(cert.Leaf) {
			t.Errorf("%s: presented certificate %v, want %s", r.Path, r.Peer, cert.Leaf.Subject)
		}
		if r.Form.Get("client_id") != "mtls-client" || r.Form.Has("client_secret") || r.Form.Has("client_assertion") || r.Authorization != "" {
			t.Errorf("%s: form %v, Authorization %q; want client_id alone", r.Path, r.Form, r.Authorization)
		}
	}
	if n := len(srv.Requests()); n != 3 {
		t.Errorf("the server got %d requests, want 3", n)
	}

	// Another certificate is refused by the server; the same base client
	// with it presents that one, not the cached first.
	_, err = c.Token(ctx, oauth.Request{TokenURL: srv.URL + "/token", Auth: oauth.TLSClientAuth{ClientID: "mtls-client", Certificate: other.Pair}, Params: url.Values{"grant_type": {"client_credentials"}}})
	var oe *oauth.Error
	if !errors.As(err, &oe) || oe.Code != "invalid_client" {
		t.Errorf("Token with another certificate = %v, want invalid_client", err)
	}
	if last := srv.Requests()[3]; last.Peer == nil || !last.Peer.Equal(other.Leaf) {
		t.Errorf("the second certificate was not the one presented: %v", last.Peer)
	}

	tests := []struct {
		name string
		c    *oauth.Client
		url  string
		auth oauth.TLSClientAuth
		want string
	}{
		{name: "plain http", c: &oauth.Client{}, url: "http://127.0.0.1:1/token", auth: auth, want: "not https"},
		{name: "no certificate", c: c, url: srv.URL + "/token", auth: oauth.TLSClientAuth{ClientID: "mtls-client"}, want: "no certificate"},
		{name: "a transport that takes no certificate", c: &oauth.Client{HTTPClient: &http.Client{Transport: roundTripper(nil)}}, url: srv.URL + "/token", auth: auth, want: "not an *http.Transport"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.c.Token(ctx, oauth.Request{TokenURL: tt.url, Auth: tt.auth, Params: url.Values{"grant_type": {"client_credentials"}}})
			if !errors.Is(err, oauth.ErrClientCertificate) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Token = %v, want ErrClientCertificate saying %q", err, tt.want)
			}
		})
	}
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
