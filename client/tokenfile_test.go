package client_test

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

	"github.com/tokenbroker/tokenbroker/client"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// writeAtomically replaces path the way the kubelet rotates a projected
// token: a new file renamed over the old one.
func writeAtomically(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestTokenFileFollowsRotation: a connection whose credentials are a
// projected token file authenticates with the file's token, and with the
// new token after the file is rotated, without reconnecting.
func TestTokenFileFollowsRotation(t *testing.T) {
	e := newEnv(t)
	path := filepath.Join(t.TempDir(), "token")
	writeAtomically(t, path, e.issuer.Sign(e.issuer.Claims(workloadSA, workloadAudience)))
	creds := &client.TokenFile{Path: path, AllowPlaintext: true, Reread: time.Hour}
	conn, err := grpc.NewClient(e.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	tb := tokenbrokerv1.NewTokenBrokerServiceClient(conn)
	getToken := func() codes.Code {
		_, err := tb.GetToken(context.Background(), &tokenbrokerv1.GetTokenRequest{Provider: "sandbox"})
		return status.Code(err)
	}
	if got := getToken(); got != codes.OK {
		t.Fatalf("GetToken as %s = %v, want OK", workloadSA, got)
	}

	// The rotated file names another service account, one that may not
	// have sandbox tokens: the answer shows which token was sent.
	writeAtomically(t, path, e.issuer.Sign(e.issuer.Claims(otherSA, workloadAudience)))
	if got := getToken(); got != codes.PermissionDenied {
		t.Errorf("GetToken after the file was rotated to %s = %v, want PermissionDenied", otherSA, got)
	}
	writeAtomically(t, path, e.issuer.Sign(e.issuer.Claims(workloadSA, workloadAudience)))
	if got := getToken(); got != codes.OK {
		t.Errorf("GetToken after the file was rotated back = %v, want OK", got)
	}
}

func TestTokenFileRefusesBadFiles(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name    string
		content *string
		want    string
	}{
		{"missing", nil, "no such file"},
		{"empty", ptr(" \n"), "is empty"},
		{"too large", ptr(strings.Repeat("x", client.MaxTokenFileBytes+1)), "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-"))
			if tt.content != nil {
				writeAtomically(t, path, *tt.content)
			}
			_, err := (&client.TokenFile{Path: path}).GetRequestMetadata(context.Background())
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("GetRequestMetadata() = %v, want an error containing %q", err, tt.want)
			}
			if tt.content != nil && err != nil && strings.Contains(err.Error(), "xxxx") {
				t.Errorf("the error quotes the file's content: %.80q", err)
			}
		})
	}
	if !(&client.TokenFile{}).RequireTransportSecurity() {
		t.Error("TokenFile sends its token over plain text connections by default, want transport security required")
	}
}

func ptr(s string) *string { return &s }
