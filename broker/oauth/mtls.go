package oauth

import (
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync"
)

// ConnectionAuthenticator is a ClientAuthenticator that also authenticates
// on the connection itself (mutual TLS): the requests it authenticates go
// through the HTTP client it derives from the one the Client uses.
type ConnectionAuthenticator interface {
	ClientAuthenticator
	// HTTPClient returns the client to send the request with, derived
	// from base. Its errors carry no credential.
	HTTPClient(base *http.Client) (*http.Client, error)
}

// ErrClientCertificate means a client certificate cannot be presented: no
// certificate or key, an endpoint that is not https, or an HTTP client
// whose transport cannot take one.
var ErrClientCertificate = errors.New("oauth: cannot present the client certificate")

// TLSClientAuth authenticates with a client certificate on the TLS
// connection (RFC 8705 §2: tls_client_auth, the provider checking the
// certificate's subject against its PKI, or self_signed_tls_client_auth,
// the provider checking it against the client's registered keys; both are
// presented alike). client_id goes in the form body. Access tokens the
// provider binds to the certificate (RFC 8705 §3) are kept and served as
// they come: the broker does not use them itself.
type TLSClientAuth struct {
	ClientID string
	// Certificate is the client's certificate chain with its private key.
	Certificate tls.Certificate
}

// Authenticate puts client_id in the form. An endpoint that is not https
// is an error wrapping ErrClientCertificate: the certificate would not be
// sent.
func (a TLSClientAuth) Authenticate(endpoint string, form url.Values, _ http.Header) error {
	if len(a.Certificate.Certificate) == 0 || a.Certificate.PrivateKey == nil {
		return fmt.Errorf("%w: no certificate and key", ErrClientCertificate)
	}
	if u, err := url.Parse(endpoint); err != nil || u.Scheme != "https" {
		return fmt.Errorf("%w: the endpoint is not https", ErrClientCertificate)
	}
	form.Set("client_id", a.ClientID)
	return nil
}

// Secrets returns nothing: the private key never leaves the process.
func (a TLSClientAuth) Secrets() []string { return nil }

// tlsClients holds one HTTP client per base client and certificate, so
// that connections that presented a certificate are reused.
var tlsClients sync.Map // tlsClientKey → *http.Client

type tlsClientKey struct {
	base *http.Client
	leaf [sha256.Size]byte
}

// HTTPClient returns base with a transport that presents a.Certificate:
// a clone of base's *http.Transport (its roots, proxy and timeouts kept).
// A base whose transport is not an *http.Transport is an error wrapping
// ErrClientCertificate.
func (a TLSClientAuth) HTTPClient(base *http.Client) (*http.Client, error) {
	if len(a.Certificate.Certificate) == 0 {
		return nil, fmt.Errorf("%w: no certificate", ErrClientCertificate)
	}
	key := tlsClientKey{base: base, leaf: sha256.Sum256(a.Certificate.Certificate[0])}
	if c, ok := tlsClients.Load(key); ok {
		return c.(*http.Client), nil
	}
	rt := base.Transport
	if rt == nil {
		rt = http.DefaultTransport
	}
	t, ok := rt.(*http.Transport)
	if !ok {
		return nil, fmt.Errorf("%w: the HTTP client's transport is a %T, not an *http.Transport", ErrClientCertificate, rt)
	}
	t = t.Clone()
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if t.TLSClientConfig != nil {
		cfg = t.TLSClientConfig.Clone()
	}
	cert := a.Certificate
	cfg.Certificates = nil
	// Presented whatever CA names the server lists: a self-signed
	// certificate is signed by none of them.
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
	t.TLSClientConfig = cfg
	c := *base
	c.Transport = t
	v, _ := tlsClients.LoadOrStore(key, &c)
	return v.(*http.Client), nil
}
