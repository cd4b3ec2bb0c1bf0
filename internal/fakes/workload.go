package fakes

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// WorkloadIssuer is a workload token issuer (a Kubernetes cluster's service
// account issuer, a SPIFFE JWT-SVID issuer, any OIDC issuer): an https
// server whose issuer identifier is its URL, serving its discovery document
// at /.well-known/openid-configuration and its public keys (ES256) at
// /keys. It signs tokens with its current key; Rotate publishes a new one.
type WorkloadIssuer struct {
	t   testing.TB
	srv *httptest.Server
	// CAFile is a PEM file of the server's certificate, to trust it.
	CAFile string

	mu      sync.Mutex
	keys    []*ecdsa.PrivateKey // published; the last signs
	kids    []string
	fetches atomic.Int64
}

// WorkloadKeysPath is where a WorkloadIssuer serves its JWKS.
const WorkloadKeysPath = "/keys"

// NewWorkloadIssuer starts an issuer with one key; the server closes when
// the test ends.
func NewWorkloadIssuer(t testing.TB) *WorkloadIssuer {
	t.Helper()
	w := &WorkloadIssuer{t: t}
	w.Rotate(false)
	w.srv = httptest.NewTLSServer(http.HandlerFunc(w.serve))
	t.Cleanup(w.srv.Close)
	w.CAFile = filepath.Join(t.TempDir(), "issuer-ca.pem")
	if err := os.WriteFile(w.CAFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: w.srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return w
}

// URL is the issuer identifier, the "iss" of its tokens.
func (w *WorkloadIssuer) URL() string { return w.srv.URL }

// KeyFetches counts the requests for the JWKS.
func (w *WorkloadIssuer) KeyFetches() int64 { return w.fetches.Load() }

// Rotate makes a new signing key; with keepOld the old ones stay
// published, else only the new one is.
func (w *WorkloadIssuer) Rotate(keepOld bool) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		w.t.Fatal(err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if !keepOld {
		w.keys, w.kids = nil, nil
	}
	w.keys = append(w.keys, k)
	w.kids = append(w.kids, fmt.Sprintf("key-%d", time.Now().UnixNano()))
}

// SigningKey is the current key and its id.
func (w *WorkloadIssuer) SigningKey() (*ecdsa.PrivateKey, string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.keys[len(w.keys)-1], w.kids[len(w.kids)-1]
}

// JWKS is the published key set.
func (w *WorkloadIssuer) JWKS() []byte {
	w.mu.Lock()
	set := jose.JSONWebKeySet{}
	for i, k := range w.keys {
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: &k.PublicKey, KeyID: w.kids[i], Algorithm: string(jose.ES256), Use: "sig"})
	}
	w.mu.Unlock()
	raw, err := json.Marshal(set)
	if err != nil {
		w.t.Fatal(err)
	}
	return raw
}

// Claims are a token's usual claims: this issuer, subject sub, audience
// aud, issued now and expiring in ten minutes.
func (w *WorkloadIssuer) Claims(sub, aud string) map[string]any {
	now := time.Now()
	return map[string]any{
		"iss": w.URL(), "sub": sub, "aud": []string{aud},
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(10 * time.Minute).Unix(),
	}
}

// Sign signs claims with the current key.
func (w *WorkloadIssuer) Sign(claims map[string]any) string {
	k, kid := w.SigningKey()
	return SignJWT(w.t, jose.ES256, k, kid, claims)
}

// SignJWT signs claims with key under alg, naming kid (none when empty).
func SignJWT(t testing.TB, alg jose.SignatureAlgorithm, key any, kid string, claims map[string]any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if kid != "" {
		opts = opts.WithHeader(jose.HeaderKey("kid"), kid)
	}
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(sig).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (w *WorkloadIssuer) serve(rw http.ResponseWriter, r *http.Request) {
	rw.Header().Set("Content-Type", "application/json")
	switch r.URL.Path {
	case OIDCDiscoveryPath:
		_ = json.NewEncoder(rw).Encode(map[string]any{
			"issuer": w.URL(), "jwks_uri": w.URL() + WorkloadKeysPath,
			"id_token_signing_alg_values_supported": []string{string(jose.ES256)},
		})
	case WorkloadKeysPath:
		w.fetches.Add(1)
		_, _ = rw.Write(w.JWKS())
	default:
		http.NotFound(rw, r)
	}
}
