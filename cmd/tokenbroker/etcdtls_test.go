package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/app"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

// TestExternalEtcdOverMutualTLS runs the broker against an etcd that
// serves TLS and requires client certificates: with the CA and a client
// certificate it serves tokens; without the client certificate it does not
// start; a CA file without certificates is a clear error.
func TestExternalEtcdOverMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca, caKey := newCA(t)
	writePEM(t, dir, "ca.pem", "CERTIFICATE", ca.Raw)
	issue(t, dir, "server", ca, caKey, func(c *x509.Certificate) {
		c.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
		c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	})
	issue(t, dir, "client", ca, caKey, func(c *x509.Certificate) {
		c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	})

	ec := embed.NewConfig()
	ec.Dir = filepath.Join(dir, "etcd")
	ec.TickMs, ec.ElectionMs = 10, 100
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	client := url.URL{Scheme: "https", Host: "127.0.0.1:0"}
	peer := url.URL{Scheme: "http", Host: "127.0.0.1:0"}
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	ec.InitialCluster = ec.Name + "=" + peer.String()
	ec.ClientTLSInfo = transport.TLSInfo{
		CertFile: filepath.Join(dir, "server.pem"), KeyFile: filepath.Join(dir, "server-key.pem"),
		TrustedCAFile: filepath.Join(dir, "ca.pem"), ClientCertAuth: true,
	}
	e, err := embed.StartEtcd(ec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(20 * time.Second):
		t.Fatal("etcd not ready")
	}
	endpoint := "https://" + e.Clients[0].Addr().String()

	fake := startFake(t)
	cfg := appConfig(fake.url, t.TempDir())
	cfg.Etcd.Endpoints = []string{endpoint}
	cfg.Etcd.DialTimeout = 2 * time.Second
	cfg.Etcd.TLS = app.EtcdTLSConfig{CAFile: filepath.Join(dir, "ca.pem"), CertFile: filepath.Join(dir, "client.pem"), KeyFile: filepath.Join(dir, "client-key.pem")}
	inst, _ := startApp(t, cfg)
	grpcGetToken(t, inst.GRPCAddr(), providerName)

	tests := []struct {
		name string
		give app.EtcdTLSConfig
		want string
	}{
		{"no client certificate", app.EtcdTLSConfig{CAFile: filepath.Join(dir, "ca.pem")}, ""},
		{"CA file without a certificate", app.EtcdTLSConfig{CAFile: filepath.Join(dir, "client-key.pem")}, "holds no PEM certificate"},
		{"key without certificate", app.EtcdTLSConfig{CAFile: filepath.Join(dir, "ca.pem"), KeyFile: filepath.Join(dir, "client-key.pem")}, "go together"},
		{"key not matching", app.EtcdTLSConfig{CAFile: filepath.Join(dir, "ca.pem"), CertFile: filepath.Join(dir, "client.pem"), KeyFile: filepath.Join(dir, "server-key.pem")}, "client certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bad := cfg
			bad.Etcd.TLS = tt.give
			bad.DataDir = t.TempDir()
			bad.Etcd.DialTimeout = time.Second
			inst, err := app.Start(t.Context(), bad, zaptest.NewLogger(t))
			if err == nil {
				inst.Close()
				t.Fatalf("app.Start with %s = nil error, want one", tt.name)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("app.Start error = %q, want it to mention %q", err, tt.want)
			}
		})
	}
}

func newCA(t *testing.T) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test etcd CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return ca, key
}

func issue(t *testing.T, dir, name string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, shape func(*x509.Certificate)) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature}
	shape(tmpl)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, dir, name+".pem", "CERTIFICATE", der)
	writePEM(t, dir, name+"-key.pem", "EC PRIVATE KEY", kder)
}
