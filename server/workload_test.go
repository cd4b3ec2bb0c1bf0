package server_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/broker/policy"
	"github.com/tokenbroker/tokenbroker/broker/workload"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/fakes"
)

// The workload tests' audience, service account and its identity at the
// broker (the issuer's identity prefix, then "sub").
const (
	workloadAudience = "tokenbroker"
	workloadSA       = "system:serviceaccount:apps:billing"
	workloadPrefix   = "k8s:"
	workloadIdentity = workloadPrefix + workloadSA
)

// workloadEnv is a broker whose JWT callers come from a fake issuer found
// by discovery over https; workloadIdentity may get sandbox tokens only.
type workloadEnv struct {
	issuer *fakes.WorkloadIssuer
	in     *instance
	logs   *observer.ObservedLogs
}

func newWorkloadEnv(t *testing.T) *workloadEnv {
	t.Helper()
	iss := fakes.NewWorkloadIssuer(t)
	core, logs := observer.New(zapcore.DebugLevel)
	log := zap.New(core)
	v, err := workload.New([]workload.Issuer{{
		Issuer: iss.URL(), Discovery: true, CAFile: iss.CAFile,
		Audiences: []string{workloadAudience}, IdentityPrefix: workloadPrefix,
	}}, workload.Options{Logger: log, MinRefreshInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t)
	in := e.startWith(options{log: log, workload: v, rules: []policy.Rule{
		{Identities: []string{workloadIdentity}, Providers: []string{"sandbox"}, Actions: []policy.Action{policy.Token}},
	}})
	e.register(in, "sandbox")
	e.register(in, "other")
	return &workloadEnv{issuer: iss, in: in, logs: logs}
}

// getToken asks for a token of provider with token as bearer, over gRPC
// and over REST, and returns both codes.
func (w *workloadEnv) getToken(t *testing.T, provider, token string) (codes.Code, int) {
	t.Helper()
	tb, _, _ := w.in.clientAs(t, nil, token)
	_, err := tb.GetToken(context.Background(), &tokenbrokerv1.GetTokenRequest{Provider: provider})
	code, _ := restDo(t, http.DefaultClient, http.MethodPost, w.in.baseURL+"/v1/providers/"+provider+"/token",
		http.Header{"Authorization": {"Bearer " + token}}, []byte(`{}`))
	return status.Code(err), code
}

func TestWorkloadTokenAuthenticatesAndPolicyApplies(t *testing.T) {
	w := newWorkloadEnv(t)
	tok := w.issuer.Sign(w.issuer.Claims(workloadSA, workloadAudience))
	tests := []struct {
		name     string
		give     string
		wantGRPC codes.Code
		wantHTTP int
	}{
		{"allowed provider", "sandbox", codes.OK, http.StatusOK},
		{"provider the policy does not allow", "other", codes.PermissionDenied, http.StatusForbidden},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gotGRPC, gotHTTP := w.getToken(t, tt.give, tok)
			if gotGRPC != tt.wantGRPC || gotHTTP != tt.wantHTTP {
				t.Errorf("GetToken(%s) with a valid service-account token: gRPC %v, REST %d; want %v, %d", tt.give, gotGRPC, gotHTTP, tt.wantGRPC, tt.wantHTTP)
			}
			if n := w.issuer.KeyFetches(); n != 1 {
				t.Errorf("the issuer's keys were fetched %d times, want once, then cached", n)
			}
		})
	}
	denied := w.logs.FilterMessage("permission denied").FilterField(zap.String("caller", workloadIdentity))
	if denied.Len() == 0 {
		t.Errorf("no permission-denied log line names caller %q", workloadIdentity)
	}
}

func TestWorkloadTokenRefusals(t *testing.T) {
	w := newWorkloadEnv(t)
	good := w.issuer.Claims(workloadSA, workloadAudience)
	with := func(k string, v any) map[string]any {
		c := map[string]any{}
		for k, v := range good {
			c[k] = v
		}
		c[k] = v
		return c
	}
	key, kid := w.issuer.SigningKey()
	stranger, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	valid := w.issuer.Sign(good)
	b64 := func(v any) string {
		raw, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(raw)
	}
	parts := strings.Split(valid, ".")
	tests := []struct {
		name       string
		give       string
		wantReason string // in the log line of the refusal
	}{
		{"expired", w.issuer.Sign(with("exp", time.Now().Add(-10*time.Minute).Unix())), "expired"},
		{"no expiry", w.issuer.Sign(with("exp", nil)), "no expiry"},
		{"expiry too far ahead", w.issuer.Sign(with("exp", time.Now().Add(48*time.Hour).Unix())), "expires more than"},
		{"not valid yet", w.issuer.Sign(with("nbf", time.Now().Add(10*time.Minute).Unix())), "not valid yet"},
		{"wrong audience", w.issuer.Sign(with("aud", []string{"someone-else"})), "audience"},
		{"wrong issuer", w.issuer.Sign(with("iss", "https://issuer.example.com")), "not configured"},
		{"unknown key", fakes.SignJWT(t, jose.ES256, stranger, "not-published", good), "does not publish"},
		{"stranger's key under a published kid", fakes.SignJWT(t, jose.ES256, stranger, kid, good), "signature does not verify"},
		{"alg none", b64(map[string]string{"alg": "none", "typ": "JWT"}) + "." + b64(good) + ".", "algorithm not allowed"},
		{"HS256 keyed with the public key", fakes.SignJWT(t, jose.HS256, pubDER, kid, good), "algorithm not allowed"},
		{"tampered payload", parts[0] + "." + b64(with("sub", "system:serviceaccount:kube-system:admin")) + "." + parts[2], "signature does not verify"},
		{"identity claim not a string", w.issuer.Sign(with("sub", 42)), "claims of the wrong type"},
		{"not a JWT", "a.b.c", "malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := w.logs.Len()
			gotGRPC, gotHTTP := w.getToken(t, "sandbox", tt.give)
			if gotGRPC != codes.Unauthenticated || gotHTTP != http.StatusUnauthorized {
				t.Errorf("GetToken with a token (%s): gRPC %v, REST %d; want Unauthenticated, 401", tt.name, gotGRPC, gotHTTP)
			}
			var reasons []string
			for _, e := range w.logs.All()[before:] {
				if e.Message == "unauthenticated call" {
					reasons = append(reasons, fmt.Sprint(e.ContextMap()["reason"]))
				}
			}
			if len(reasons) != 2 || !strings.Contains(reasons[0], tt.wantReason) || !strings.Contains(reasons[1], tt.wantReason) {
				t.Errorf("refusals logged with reasons %q, want two saying %q", reasons, tt.wantReason)
			}
			for _, e := range w.logs.All() {
				line := fmt.Sprint(e.Message, e.ContextMap())
				if strings.Contains(line, tt.give) || strings.Contains(line, parts[2]) {
					t.Fatalf("a log line carries the token: %q", e.Message)
				}
			}
		})
	}
	// The unknown kids cost at most one more fetch than the first: the
	// limiter allows a burst of two, then one an hour here.
	if n := w.issuer.KeyFetches(); n > 2 {
		t.Errorf("the issuer's keys were fetched %d times for %d refused tokens, want at most 2", n, len(tests))
	}
	if gotGRPC, gotHTTP := w.getToken(t, "sandbox", valid); gotGRPC != codes.OK || gotHTTP != http.StatusOK {
		t.Errorf("after the refusals, the valid token: gRPC %v, REST %d; want OK, 200", gotGRPC, gotHTTP)
	}
}

func TestWorkloadIssuerKeyRotation(t *testing.T) {
	w := newWorkloadEnv(t)
	claims := w.issuer.Claims(workloadSA, workloadAudience)
	old := w.issuer.Sign(claims)
	if gotGRPC, gotHTTP := w.getToken(t, "sandbox", old); gotGRPC != codes.OK || gotHTTP != http.StatusOK {
		t.Fatalf("token of the first key: gRPC %v, REST %d; want OK, 200", gotGRPC, gotHTTP)
	}
	if n := w.issuer.KeyFetches(); n != 1 {
		t.Fatalf("keys fetched %d times for the first token, want 1", n)
	}

	w.issuer.Rotate(false) // the old key is retired at once
	rotated := w.issuer.Sign(claims)
	if gotGRPC, gotHTTP := w.getToken(t, "sandbox", rotated); gotGRPC != codes.OK || gotHTTP != http.StatusOK {
		t.Fatalf("token of the new key: gRPC %v, REST %d; want OK, 200", gotGRPC, gotHTTP)
	}
	if n := w.issuer.KeyFetches(); n != 2 {
		t.Fatalf("keys fetched %d times after the rotation, want 2: the unknown kid refetched once", n)
	}
	if gotGRPC, gotHTTP := w.getToken(t, "sandbox", old); gotGRPC != codes.Unauthenticated || gotHTTP != http.StatusUnauthorized {
		t.Errorf("token of the retired key: gRPC %v, REST %d; want Unauthenticated, 401", gotGRPC, gotHTTP)
	}

	// A storm of unknown kids is bounded: no fetch beyond the limiter's.
	for i := range 20 {
		stranger, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tok := fakes.SignJWT(t, jose.ES256, stranger, fmt.Sprintf("guess-%d", i), claims)
		tb, _, _ := w.in.clientAs(t, nil, tok)
		if _, err := tb.GetToken(context.Background(), &tokenbrokerv1.GetTokenRequest{Provider: "sandbox"}); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("unknown kid %d: %v, want Unauthenticated", i, err)
		}
	}
	if n := w.issuer.KeyFetches(); n != 2 {
		t.Errorf("keys fetched %d times after 20 unknown kids, want still 2 (refresh is rate-limited)", n)
	}
	if gotGRPC, _ := w.getToken(t, "sandbox", rotated); gotGRPC != codes.OK {
		t.Errorf("token of the current key after the storm: %v, want OK", gotGRPC)
	}
}

func TestWorkloadTokenNotAcceptedWithoutIssuers(t *testing.T) {
	iss := fakes.NewWorkloadIssuer(t)
	e := newEnv(t)
	in := e.startWith(options{rules: []policy.Rule{{Identities: []string{"*"}, Actions: policy.Actions}}})
	e.register(in, "sandbox")
	w := &workloadEnv{issuer: iss, in: in}
	tok := iss.Sign(iss.Claims(workloadSA, workloadAudience))
	if gotGRPC, gotHTTP := w.getToken(t, "sandbox", tok); gotGRPC != codes.Unauthenticated || gotHTTP != http.StatusUnauthorized {
		t.Errorf("a JWT on a server with no issuers: gRPC %v, REST %d; want Unauthenticated, 401", gotGRPC, gotHTTP)
	}
	if n := iss.KeyFetches(); n != 0 {
		t.Errorf("keys fetched %d times, want 0", n)
	}
}
