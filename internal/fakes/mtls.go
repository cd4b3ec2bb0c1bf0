package fakes

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"
)

// ClientCertificate is an ECDSA certificate with its key.
type ClientCertificate struct {
	CertPEM, KeyPEM []byte
	Pair            tls.Certificate
	Leaf            *x509.Certificate
}

// NewClientCertificate makes a self-signed client certificate for cn,
// valid for a day.
func NewClientCertificate(t testing.TB, cn string) ClientCertificate {
	t.Helper()
	return issue(t, cn, nil, nil)
}

// CA issues certificates: servers' and clients'.
type CA struct {
	Cert    *x509.Certificate
	CertPEM []byte
	key     *ecdsa.PrivateKey
}

// NewCA makes a CA valid for a day.
func NewCA(t testing.TB) *CA {
	t.Helper()
	c := issue(t, "test CA", nil, nil, func(tmpl *x509.Certificate) {
		tmpl.IsCA, tmpl.BasicConstraintsValid, tmpl.KeyUsage, tmpl.ExtKeyUsage = true, true, x509.KeyUsageCertSign, nil
	})
	return &CA{Cert: c.Leaf, CertPEM: c.CertPEM, key: c.Pair.PrivateKey.(*ecdsa.PrivateKey)}
}

// Client issues a client certificate for cn.
func (ca *CA) Client(t testing.TB, cn string) ClientCertificate {
	t.Helper()
	return issue(t, cn, ca.Cert, ca.key)
}

// Server issues a server certificate for the IP address ip.
func (ca *CA) Server(t testing.TB, ip string) ClientCertificate {
	t.Helper()
	return issue(t, ip, ca.Cert, ca.key, func(tmpl *x509.Certificate) {
		tmpl.ExtKeyUsage, tmpl.IPAddresses = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, []net.IP{net.ParseIP(ip)}
	})
}

// issue makes a certificate for cn with a new ECDSA key, signed by
// parent's key (self-signed when parent is nil), valid for a day; a client
// certificate unless adjust says otherwise.
func issue(t testing.TB, cn string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, adjust ...func(*x509.Certificate)) ClientCertificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	for _, f := range adjust {
		f(tmpl)
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	c := ClientCertificate{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk}),
	}
	if c.Pair, err = tls.X509KeyPair(c.CertPEM, c.KeyPEM); err != nil {
		t.Fatal(err)
	}
	if c.Leaf, err = x509.ParseCertificate(der); err != nil {
		t.Fatal(err)
	}
	return c
}

// Thumbprint is the certificate's x5t#S256 (RFC 8705 §3.1).
func (c ClientCertificate) Thumbprint() string {
	sum := sha256.Sum256(c.Leaf.Raw)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// MTLSRequest is what MTLS received.
type MTLSRequest struct {
	Path          string
	Form          url.Values
	Authorization string
	// Peer is the client certificate presented on the connection; nil
	// when none was.
	Peer *x509.Certificate
}

// MTLS is an RFC 8705 authorization server over TLS: it asks every client
// for a certificate (any, self-signed included) and authenticates the
// client by it. /token answers client_credentials with a
// certificate-bound token (token_type Bearer, the certificate's
// thumbprint in cnf of the introspection answer), /introspect and
// /revoke accept the same client. A request without a certificate, or
// with another than the registered one, gets invalid_client.
type MTLS struct {
	*httptest.Server
	clientID string
	want     *x509.Certificate

	mu   sync.Mutex
	reqs []MTLSRequest
}

// NewMTLS starts an MTLS server that knows clientID by the certificate
// want, and stops it when the test ends. Its Client() trusts it.
func NewMTLS(t testing.TB, clientID string, want *x509.Certificate) *MTLS {
	t.Helper()
	f := &MTLS{clientID: clientID, want: want}
	f.Server = httptest.NewUnstartedServer(http.HandlerFunc(f.serve))
	f.Server.TLS = &tls.Config{ClientAuth: tls.RequestClientCert, MinVersion: tls.VersionTLS12}
	f.StartTLS()
	t.Cleanup(f.Close)
	return f
}

func (f *MTLS) serve(w http.ResponseWriter, r *http.Request) {
	_ = r.ParseForm()
	req := MTLSRequest{Path: r.URL.Path, Form: r.PostForm, Authorization: r.Header.Get("Authorization")}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		req.Peer = r.TLS.PeerCertificates[0]
	}
	f.mu.Lock()
	f.reqs = append(f.reqs, req)
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	if req.Peer == nil || !req.Peer.Equal(f.want) || r.PostForm.Get("client_id") != f.clientID {
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"error":"invalid_client","error_description":"no registered client certificate"}`))
		return
	}
	sum := sha256.Sum256(req.Peer.Raw)
	thumb := base64.RawURLEncoding.EncodeToString(sum[:])
	switch r.URL.Path {
	case "/token":
		_ = json.NewEncoder(w).Encode(map[string]any{"access_token": "bound-" + thumb[:12], "token_type": "Bearer", "expires_in": 600})
	case "/introspect":
		_ = json.NewEncoder(w).Encode(map[string]any{"active": true, "client_id": f.clientID, "cnf": map[string]string{"x5t#S256": thumb}})
	case "/revoke":
	default:
		http.NotFound(w, r)
	}
}

// Requests returns what the server received so far.
func (f *MTLS) Requests() []MTLSRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]MTLSRequest(nil), f.reqs...)
}

// PrivatePart is the text of KeyPEM that encodes the private scalar
// alone, for leak tests: the rest of the PEM (the algorithm, the public
// key) is in the certificate too.
func (c ClientCertificate) PrivatePart(t testing.TB) string {
	t.Helper()
	priv, ok := c.Pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		t.Fatalf("the key is a %T", c.Pair.PrivateKey)
	}
	k, err := priv.ECDH()
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(c.KeyPEM)
	off := bytes.Index(block.Bytes, k.Bytes())
	if off < 0 {
		t.Fatal("the private scalar is not in the key's DER")
	}
	// The base64 characters that encode only bytes of the scalar.
	start, end := (off+2)/3*4, (off+len(k.Bytes()))/3*4
	return base64.StdEncoding.EncodeToString(block.Bytes)[start:end]
}
