package workload_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/workload"
	"github.com/tokenbroker/tokenbroker/internal/fakes"
)

var sentinels = []error{
	workload.ErrMalformed, workload.ErrUnknownIssuer, workload.ErrAlgorithm, workload.ErrUnknownKey,
	workload.ErrSignature, workload.ErrClaims, workload.ErrKeysUnavailable,
}

// FuzzVerify feeds tokens to a verifier whose issuer's keys are in a file:
// it never panics, accepts nothing but what the issuer signed, refuses
// with one of the package's errors, and never quotes the token.
func FuzzVerify(f *testing.F) {
	iss := fakes.NewWorkloadIssuer(f)
	jwks := filepath.Join(f.TempDir(), "jwks.json")
	if err := os.WriteFile(jwks, iss.JWKS(), 0o600); err != nil {
		f.Fatal(err)
	}
	const sa = "system:serviceaccount:apps:billing"
	v, err := workload.New([]workload.Issuer{{Issuer: iss.URL(), JWKSFile: jwks, Audiences: []string{"tokenbroker"}, IdentityPrefix: "k8s:"}},
		workload.Options{MinRefreshInterval: time.Hour})
	if err != nil {
		f.Fatal(err)
	}
	claims := iss.Claims(sa, "tokenbroker")
	claims["exp"] = time.Now().Add(time.Hour).Unix()
	good := iss.Sign(claims)
	f.Add(good)
	parts := strings.Split(good, ".")
	f.Add(parts[0] + "." + parts[1] + ".")
	f.Add("eyJhbGciOiJub25lIn0." + parts[1] + ".")
	f.Add(parts[0] + ".e30." + parts[2])
	f.Add("a.b.c")
	f.Add("..")
	f.Fuzz(func(t *testing.T, token string) {
		id, err := v.Verify(context.Background(), token)
		if err == nil {
			if id.Name != "k8s:"+sa || id.Issuer != iss.URL() {
				t.Fatalf("accepted as %+v, want only the issuer's own service account", id)
			}
			return
		}
		known := false
		for _, s := range sentinels {
			known = known || errors.Is(err, s)
		}
		if !known {
			t.Fatalf("Verify error %q wraps none of the package's errors", err)
		}
		if len(token) >= 16 && strings.Contains(err.Error(), token) {
			t.Fatalf("Verify error quotes the token: %q", err)
		}
	})
}
