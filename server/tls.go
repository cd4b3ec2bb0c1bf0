package server

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"
)

// TLSFiles names the PEM files of the listeners' TLS configuration.
type TLSFiles struct {
	// CertFile and KeyFile are the server's certificate (chain) and key.
	CertFile string
	KeyFile  string
	// ClientCAFile, when set, holds the CAs whose client certificates
	// authenticate callers (mutual TLS). A client certificate is verified
	// when given but not required: API-key callers need none.
	ClientCAFile string
}

// Enabled reports whether any file is named.
func (f TLSFiles) Enabled() bool {
	return f.CertFile != "" || f.KeyFile != "" || f.ClientCAFile != ""
}

// LoadTLS reads the files into a TLS configuration for both listeners
// (TLS 1.2 at least). Its errors name the file and the problem: missing or
// unreadable, a key that does not match the certificate, an expired
// certificate, a CA file without a certificate.
func LoadTLS(f TLSFiles, now time.Time) (*tls.Config, error) {
	switch {
	case f.CertFile == "" && f.KeyFile == "":
		return nil, errors.New("tls: cert_file and key_file are required")
	case f.CertFile == "":
		return nil, errors.New("tls: key_file is set but cert_file is not")
	case f.KeyFile == "":
		return nil, errors.New("tls: cert_file is set but key_file is not")
	}
	for _, name := range []struct{ field, path string }{{"cert_file", f.CertFile}, {"key_file", f.KeyFile}} {
		if _, err := os.Stat(name.path); err != nil {
			return nil, fmt.Errorf("tls: %s: %w", name.field, err)
		}
	}
	cert, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
	if err != nil {
		// The standard library's messages say what is wrong ("private key
		// does not match public key", "failed to find any PEM data") and
		// never print key material.
		return nil, fmt.Errorf("tls: cert_file %s and key_file %s: %w", f.CertFile, f.KeyFile, err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("tls: cert_file %s: %w", f.CertFile, err)
		}
	}
	if now.After(cert.Leaf.NotAfter) {
		return nil, fmt.Errorf("tls: cert_file %s: certificate expired at %s", f.CertFile, cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
	}
	if f.ClientCAFile != "" {
		pem, err := os.ReadFile(f.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("tls: client_ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls: client_ca_file %s holds no PEM certificate", f.ClientCAFile)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return cfg, nil
}
