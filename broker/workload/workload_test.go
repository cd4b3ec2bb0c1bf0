package workload_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/tokenbroker/tokenbroker/broker/workload"
	"github.com/tokenbroker/tokenbroker/internal/fakes"
)

// TestKeySetFetchBounds: plain http key sets are refused unless allowed
// for loopback; an oversized key set is refused and not retried past the
// rate limit.
func TestKeySetFetchBounds(t *testing.T) {
	iss := fakes.NewWorkloadIssuer(t)
	var oversized atomic.Bool
	var fetches atomic.Int64
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fetches.Add(1)
		if oversized.Load() {
			_, _ = w.Write([]byte(`{"keys":[` + strings.Repeat(" ", workload.MaxKeySetBytes) + `]}`))
			return
		}
		_, _ = w.Write(iss.JWKS())
	}))
	t.Cleanup(plain.Close)
	cfg := workload.Issuer{Issuer: iss.URL(), JWKSURL: plain.URL, Audiences: []string{"tokenbroker"}}
	if _, err := workload.New([]workload.Issuer{cfg}, workload.Options{}); err == nil || !strings.Contains(err.Error(), "must use https") {
		t.Fatalf("New with a plain http JWKS URL = %v, want refused without AllowHTTPLoopback", err)
	}
	tok := iss.Sign(iss.Claims("spiffe://prod.example/billing", "tokenbroker"))

	v, err := workload.New([]workload.Issuer{cfg}, workload.Options{AllowHTTPLoopback: true})
	if err != nil {
		t.Fatal(err)
	}
	if id, err := v.Verify(context.Background(), tok); err != nil || id.Name != "spiffe://prod.example/billing" {
		t.Fatalf("Verify over plain http loopback with AllowHTTPLoopback = %+v, %v; want the SPIFFE ID", id, err)
	}

	oversized.Store(true)
	v, err = workload.New([]workload.Issuer{cfg}, workload.Options{AllowHTTPLoopback: true})
	if err != nil {
		t.Fatal(err)
	}
	before := fetches.Load()
	if _, err := v.Verify(context.Background(), tok); !errors.Is(err, workload.ErrKeysUnavailable) || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("Verify with an oversized key set = %v, want ErrKeysUnavailable saying it is too large", err)
	}
	for range 4 {
		if _, err := v.Verify(context.Background(), tok); !errors.Is(err, workload.ErrKeysUnavailable) {
			t.Fatalf("Verify with an oversized key set, again = %v, want ErrKeysUnavailable", err)
		}
	}
	if n := fetches.Load() - before; n != 2 {
		t.Errorf("5 verifications fetched the failing key set %d times, want 2 (the limiter's burst)", n)
	}
}

func TestTrustDomain(t *testing.T) {
	iss := fakes.NewWorkloadIssuer(t)
	v, err := workload.New([]workload.Issuer{{Issuer: iss.URL(), Discovery: true, CAFile: iss.CAFile, Audiences: []string{"tb"}, TrustDomain: "prod.example"}}, workload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		give    string
		wantErr error
	}{
		{"spiffe://prod.example/ns/apps/sa/billing", nil},
		{"spiffe://prod.example.evil/ns/apps/sa/billing", workload.ErrClaims},
		{"spiffe://staging.example/ns/apps/sa/billing", workload.ErrClaims},
		{"system:serviceaccount:apps:billing", workload.ErrClaims},
	}
	for _, tt := range tests {
		_, err := v.Verify(context.Background(), iss.Sign(iss.Claims(tt.give, "tb")))
		if !errors.Is(err, tt.wantErr) {
			t.Errorf("Verify(sub %s) = %v, want %v", tt.give, err, tt.wantErr)
		}
	}
}
