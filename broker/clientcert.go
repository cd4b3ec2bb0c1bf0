package broker

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/oauth"
)

// Client certificates (RFC 8705 mutual TLS client authentication). A
// provider on tls_client_auth or self_signed_tls_client_auth holds a
// certificate chain (public, shown to admins) and its private key (sealed
// in etcd like a client secret, write-only: admins see whether it is set
// and its fingerprint). The pair is presented on the TLS connection to the
// token, introspection, revocation and device authorization endpoints.

// MaxClientCertificateLen bounds a client certificate chain or its key, in
// PEM.
const MaxClientCertificateLen = 64 << 10

// usesClientCertificate reports whether p presents its client certificate
// at any of its endpoints.
func (p *Provider) usesClientCertificate() bool {
	return isTLSAuth(p.ClientAuth) || isTLSAuth(p.IntrospectionAuth)
}

func isTLSAuth(s oauth.AuthStyle) bool {
	return s == oauth.AuthTLSClientAuth || s == oauth.AuthSelfSignedTLSClientAuth
}

// validateClientCertificate checks what p says of its client certificate:
// a PEM chain, a PEM key, and, when both are there, that they belong
// together. That a provider on mutual TLS has both is checked once the
// stored pair is known (PutProvider).
func (p *Provider) validateClientCertificate() []error {
	var errs []error
	if len(p.ClientCertificate) > MaxClientCertificateLen {
		errs = append(errs, tooLong("client_certificate", len(p.ClientCertificate), MaxClientCertificateLen))
	}
	if len(p.ClientCertificateKey) > MaxClientCertificateLen {
		errs = append(errs, tooLong("client_certificate_key", len(p.ClientCertificateKey), MaxClientCertificateLen))
	}
	if len(errs) > 0 {
		return errs
	}
	if p.ClientCertificate != "" {
		if _, err := parseCertificateChain(p.ClientCertificate); err != nil {
			errs = append(errs, fmt.Errorf("client_certificate: %w", err))
		}
	}
	if p.ClientCertificateKey != "" {
		if block, _ := pem.Decode([]byte(p.ClientCertificateKey)); block == nil || !isKeyBlock(block.Type) {
			// Never quoted: it is a private key.
			errs = append(errs, errors.New("client_certificate_key is not a PEM private key"))
		}
	}
	if len(errs) == 0 && p.ClientCertificate != "" && p.ClientCertificateKey != "" {
		if _, err := p.clientCertificate(); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

func isKeyBlock(t string) bool {
	return t == "PRIVATE KEY" || t == "RSA PRIVATE KEY" || t == "EC PRIVATE KEY"
}

// parseCertificateChain reads PEM certificates, the leaf first.
func parseCertificateChain(s string) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	rest := []byte(s)
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("a PEM block of type %s, not CERTIFICATE", quote(block.Type))
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, errors.New("a certificate does not parse")
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificate")
	}
	return out, nil
}

// clientCertificate returns p's certificate with its key. Its errors name
// no part of the key.
func (p *Provider) clientCertificate() (tls.Certificate, error) {
	pair, err := tls.X509KeyPair([]byte(p.ClientCertificate), []byte(p.ClientCertificateKey))
	if err != nil {
		// crypto/tls says what did not match or parse, never the key.
		return tls.Certificate{}, fmt.Errorf("client_certificate and client_certificate_key: %v", err)
	}
	return pair, nil
}

// tlsClientAuth presents p's client certificate.
func tlsClientAuth(p *Provider, _ oauth.AuthStyle, _ string) (oauth.ClientAuthenticator, error) {
	if p.ClientCertificate == "" || p.ClientCertificateKey == "" {
		return nil, invalidf("provider %q: mutual TLS client authentication without a client certificate and key", p.Name)
	}
	pair, err := p.clientCertificate()
	if err != nil {
		return nil, invalidf("provider %q: %v", p.Name, err)
	}
	return oauth.TLSClientAuth{ClientID: p.ClientID, Certificate: pair}, nil
}

// checkClientCertificate checks p as PutProvider is about to store it,
// with the pair it keeps: a provider on mutual TLS needs a certificate
// and its key, and they must belong together. A pair p brings gets
// CertificateUpdateTime now.
func (b *Broker) checkClientCertificate(p *Provider, now time.Time) error {
	if p.usesClientCertificate() && (p.ClientCertificate == "" || p.ClientCertificateKey == "") {
		return invalidf("provider %q: %s needs client_certificate and client_certificate_key", p.Name, p.ClientAuth)
	}
	if p.ClientCertificate == "" && p.ClientCertificateKey == "" {
		return nil
	}
	if p.ClientCertificate == "" || p.ClientCertificateKey == "" {
		return invalidf("provider %q: client_certificate and client_certificate_key go together", p.Name)
	}
	if _, err := p.clientCertificate(); err != nil {
		return invalidf("provider %q: %v", p.Name, err)
	}
	return nil
}
