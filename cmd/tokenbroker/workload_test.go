package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/app"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/fakes"
)

func TestValidateJWTIssuers(t *testing.T) {
	good := app.JWTIssuerConfig{Issuer: "https://oidc.cluster.example", Discovery: true, Audiences: []string{"tokenbroker"}}
	tests := []struct {
		name string
		give func(*app.JWTIssuerConfig)
		want string
	}{
		{name: "no key source", give: func(j *app.JWTIssuerConfig) { j.Discovery = false }, want: "auth.jwt_issuers[0]: set exactly one of jwks_url, jwks_file and discovery"},
		{name: "two key sources", give: func(j *app.JWTIssuerConfig) { j.JWKSFile = "/etc/jwks.json" }, want: "auth.jwt_issuers[0]: set exactly one of"},
		{name: "no audience", give: func(j *app.JWTIssuerConfig) { j.Audiences = nil }, want: "auth.jwt_issuers[0]: audiences: at least one is required"},
		{name: "alg none", give: func(j *app.JWTIssuerConfig) { j.Algorithms = []string{"none"} }, want: `auth.jwt_issuers[0]: algorithms[0] "none" is not one of`},
		{name: "HMAC", give: func(j *app.JWTIssuerConfig) { j.Algorithms = []string{"RS256", "HS256"} }, want: `auth.jwt_issuers[0]: algorithms[1] "HS256"`},
		{name: "clock skew", give: func(j *app.JWTIssuerConfig) { j.ClockSkew = time.Hour }, want: "auth.jwt_issuers[0]: clock_skew 1h0m0s must be between 0 and 5m0s"},
		{name: "plain http JWKS", give: func(j *app.JWTIssuerConfig) { j.Discovery, j.JWKSURL = false, "http://oidc.cluster.example/keys" }, want: "auth.jwt_issuers[0]: jwks_url:"},
		{name: "plain http loopback JWKS without the flag", give: func(j *app.JWTIssuerConfig) { j.Discovery, j.JWKSURL = false, "http://127.0.0.1:8443/keys" }, want: "must use https"},
		{name: "plain http discovery", give: func(j *app.JWTIssuerConfig) { j.Issuer = "http://oidc.cluster.example" }, want: "auth.jwt_issuers[0]: discovery: issuer:"},
		{name: "trust domain with scheme", give: func(j *app.JWTIssuerConfig) { j.TrustDomain = "spiffe://prod.example" }, want: "trust_domain"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := app.DefaultConfig()
			j := good
			tt.give(&j)
			cfg.Auth.JWTIssuers = []app.JWTIssuerConfig{j}
			err := cfg.Validate(os.Getenv)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate() = %v, want an error containing %q", err, tt.want)
			}
		})
	}

	t.Run("declared twice", func(t *testing.T) {
		cfg := app.DefaultConfig()
		cfg.Auth.JWTIssuers = []app.JWTIssuerConfig{good, good}
		if err := cfg.Validate(os.Getenv); err == nil || !strings.Contains(err.Error(), "auth.jwt_issuers[1]: issuer") {
			t.Errorf("Validate() = %v, want auth.jwt_issuers[1] declared twice", err)
		}
	})
	t.Run("valid", func(t *testing.T) {
		loop := good
		loop.Discovery, loop.JWKSURL = false, "http://127.0.0.1:8443/keys"
		cfg := app.DefaultConfig()
		cfg.InsecureHTTPLoopback = true
		cfg.Auth.JWTIssuers = []app.JWTIssuerConfig{good, {Issuer: "https://spire.example", JWKSFile: "/etc/bundle.jwks", Audiences: []string{"tb"}, TrustDomain: "prod.example"}}
		loop.Issuer = "http://127.0.0.1:8443"
		cfg.Auth.JWTIssuers = append(cfg.Auth.JWTIssuers, loop)
		if err := cfg.Validate(os.Getenv); err != nil {
			t.Errorf("Validate() = %v, want nil (https discovery, a JWKS file, plain http loopback with the flag)", err)
		}
	})
}

// TestJWTIssuerFromConfigReloadsAndRereadsItsFile: an app.App whose config
// trusts a cluster through a JWKS file (air-gapped) lets the cluster's
// service account in; a rotated key written to the file is read; a reload
// without the issuer turns the tokens away and one with it lets them back.
func TestJWTIssuerFromConfigReloadsAndRereadsItsFile(t *testing.T) {
	iss := fakes.NewWorkloadIssuer(t)
	jwks := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(jwks, iss.JWKS(), 0o600); err != nil {
		t.Fatal(err)
	}
	const sa = "system:serviceaccount:apps:billing"
	cfg := appConfig(startFake(t).url, t.TempDir())
	cfg.Auth.JWTIssuers = []app.JWTIssuerConfig{{Issuer: iss.URL(), JWKSFile: jwks, Audiences: []string{"tokenbroker"}}}
	cfg.Auth.Policy = append(cfg.Auth.Policy, app.PolicyRule{Identities: []string{sa}, Providers: []string{providerName}, Actions: []string{"token"}})
	if err := cfg.Validate(os.Getenv); err != nil {
		t.Fatal(err)
	}
	inst, _ := startApp(t, cfg)

	getToken := func(tok string) codes.Code {
		t.Helper()
		conn, err := grpc.NewClient(inst.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(bearer(tok)))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		_, err = tokenbrokerv1.NewTokenBrokerServiceClient(conn).GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: providerName})
		return status.Code(err)
	}
	if got := getToken(iss.Sign(iss.Claims(sa, "tokenbroker"))); got != codes.OK {
		t.Fatalf("GetToken with the service account's token = %v, want OK", got)
	}

	iss.Rotate(false)
	if err := os.WriteFile(jwks, iss.JWKS(), 0o600); err != nil {
		t.Fatal(err)
	}
	rotated := iss.Sign(iss.Claims(sa, "tokenbroker"))
	if got := getToken(rotated); got != codes.OK {
		t.Fatalf("GetToken with a token of the key rotated into the file = %v, want OK", got)
	}

	without := cfg.Auth
	without.JWTIssuers = nil
	if err := inst.ReloadAuth(without); err != nil {
		t.Fatal(err)
	}
	if got := getToken(rotated); got != codes.Unauthenticated {
		t.Errorf("after a reload without the issuer, GetToken = %v, want Unauthenticated", got)
	}
	bad := cfg.Auth
	bad.JWTIssuers = []app.JWTIssuerConfig{{Issuer: iss.URL(), JWKSFile: jwks}} // no audience
	if err := inst.ReloadAuth(bad); err == nil || !strings.Contains(err.Error(), "auth.jwt_issuers[0]: audiences") {
		t.Errorf("ReloadAuth without audiences = %v, want an error naming auth.jwt_issuers[0]: audiences", err)
	}
	if err := inst.ReloadAuth(cfg.Auth); err != nil {
		t.Fatal(err)
	}
	if got := getToken(rotated); got != codes.OK {
		t.Errorf("after a reload with the issuer back, GetToken = %v, want OK", got)
	}
}
