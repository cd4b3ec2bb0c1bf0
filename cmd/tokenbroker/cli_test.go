package main

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestCLIUsageErrors runs admin commands in-process that must fail before
// any call to a broker: exit code 2 and one line on stderr that says what
// is wrong.
func TestCLIUsageErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		give  []string
		env   map[string]string
		stdin string
		want  string // in the stderr line
	}{
		{name: "group alone", give: []string{"provider"}, want: "provider: missing subcommand (delete, get, list, put, rotate-key, rotate-secret)"},
		{name: "unknown subcommand", give: []string{"grant", "lst"}, want: `unknown command "lst" for "tokenbroker grant"`},
		{name: "unknown flag", give: []string{"provider", "put", "p", "--bogus"}, want: "unknown flag: --bogus"},
		{name: "secret as a flag", give: []string{"provider", "put", "p", "--client-secret", "s3cret"}, want: "unknown flag: --client-secret"},
		{name: "password as a flag", give: []string{"account", "put", "p", "a", "--grant", "password", "--password", "pw"}, want: "unknown flag: --password"},
		{name: "api key as a flag", give: []string{"provider", "list", "--api-key", "k"}, want: "unknown flag: --api-key"},
		{name: "two secret sources", give: []string{"provider", "put", "p", "--client-secret-stdin", "--client-secret-env", "S"}, env: map[string]string{"S": "x"}, want: "[client-secret-stdin client-secret-env] are set none of the others can be"},
		{name: "bad auth style", give: []string{"provider", "put", "p", "--auth-style", "digest"}, want: `--auth-style "digest": want basic, post, basic+post, private_key_jwt, none, tls_client_auth or self_signed_tls_client_auth`},
		{name: "bad grant", give: []string{"provider", "put", "p", "--grant", "implicit"}, want: `--grant "implicit": want one of authorization_code, client_credentials, device_code, jwt_bearer, password, refresh_token, token_exchange`},
		{name: "secret env unset", give: []string{"provider", "put", "p", "--client-secret-env", "NOT_SET"}, want: "client secret: $NOT_SET is empty or not set"},
		{name: "secret stdin empty", give: []string{"provider", "put", "p", "--client-secret-stdin"}, stdin: "\n", want: "client secret: stdin is empty"},
		{name: "rotate without a secret", give: []string{"provider", "rotate-secret", "p"}, want: "at least one of the flags in the group [client-secret-stdin client-secret-env] is required"},
		{name: "negative overlap", give: []string{"provider", "rotate-secret", "p", "--client-secret-env", "S", "--overlap", "-1m"}, env: map[string]string{"S": "x"}, want: "--overlap -1m0s"},
		{name: "missing name", give: []string{"provider", "get"}, want: "provider get: missing NAME"},
		{name: "extra argument", give: []string{"provider", "get", "a", "b"}, want: `provider get: unexpected argument "b" (want NAME)`},
		{name: "missing account", give: []string{"grant", "revoke", "p"}, want: "grant revoke: missing ACCOUNT"},
		{name: "missing accounts", give: []string{"grant", "authorize"}, want: "grant authorize: missing PROVIDER and ACCOUNT"},
		{name: "account without grant", give: []string{"account", "put", "p", "a"}, want: `required flag(s) "grant" not set`},
		{name: "introspect without token", give: []string{"token", "introspect"}, want: "token introspect: missing TOKEN (or --token-stdin)"},
		{name: "introspect with two tokens", give: []string{"token", "introspect", "t", "--token-stdin"}, want: "not both"},
		{name: "negative min ttl", give: []string{"token", "get", "p", "--min-ttl", "-1s"}, want: "--min-ttl -1s"},
		{name: "apikey without identity", give: []string{"apikeys", "create"}, want: `required flag(s) "identity" not set`},
		{name: "bad output", give: []string{"provider", "list", "-o", "yaml"}, want: `--output "yaml": want table or json`},
		{name: "flag without value", give: []string{"provider", "list", "--output"}, want: "flag needs an argument"},
		{name: "zero timeout", give: []string{"provider", "list", "--timeout", "0s"}, want: "--timeout 0s"},
		{name: "api key env unset", give: []string{"provider", "list", "--api-key-env", "NOT_SET"}, want: "--api-key-env: $NOT_SET is empty or not set"},
		{name: "cert without key", give: []string{"provider", "list", "--cert-file", "c.pem"}, want: "--cert-file and --key-file go together"},
		{name: "missing CA file", give: []string{"provider", "list", "--ca-file", "/nonexistent/ca.pem"}, want: "--ca-file: open /nonexistent/ca.pem"},
		{name: "bad TLS env", give: []string{"provider", "list"}, env: map[string]string{"TOKENBROKER_TLS": "maybe"}, want: `$TOKENBROKER_TLS="maybe": want true or false`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr syncBuffer
			code := runAdminCLI(context.Background(), tt.give, strings.NewReader(tt.stdin), &stdout, &stderr, envMap(tt.env))
			if code != exitUsage {
				t.Errorf("%q: exit code %d, want %d; stderr %q", tt.give, code, exitUsage, stderr.String())
			}
			if got := stderr.String(); !strings.HasPrefix(got, "tokenbroker: ") || strings.Count(got, "\n") != 1 || !strings.Contains(got, tt.want) {
				t.Errorf("%q: stderr = %q, want one line \"tokenbroker: ...\" containing %q", tt.give, got, tt.want)
			}
			if !strings.Contains(stderr.String(), "--help')") {
				t.Errorf("%q: stderr = %q, want it to point at the command's --help", tt.give, stderr.String())
			}
			if stdout.String() != "" {
				t.Errorf("%q: stdout = %q, want nothing", tt.give, stdout.String())
			}
		})
	}
}

// TestCLIHelp: help succeeds; the root's documents the exit codes and the
// environment, the others point at it.
func TestCLIHelp(t *testing.T) {
	t.Parallel()
	tests := []struct {
		give []string
		want []string
	}{
		{give: []string{"--help"}, want: []string{"Exit codes:", "5  refused", "TOKENBROKER_API_KEY", "TOKENBROKER_MASTER_KEY", "provider", "serve"}},
		{give: []string{"provider", "put", "--help"}, want: []string{"tokenbroker provider put NAME", "--client-secret-stdin", "--client-secret-env", "Run 'tokenbroker --help' for the environment variables and the exit codes."}},
		{give: []string{"token", "-h"}, want: []string{"get", "refresh", "introspect", "$(tokenbroker token get acme)", "Global Flags:"}},
		{give: []string{"grant", "list", "-h"}, want: []string{"--provider", "--output"}},
		{give: []string{"help", "grant", "list"}, want: []string{"--provider", "--output"}},
	}
	for _, tt := range tests {
		var stdout, stderr syncBuffer
		if code := runAdminCLI(context.Background(), tt.give, strings.NewReader(""), &stdout, &stderr, envMap(nil)); code != exitOK {
			t.Errorf("%q: exit code %d, want 0; stderr %q", tt.give, code, stderr.String())
		}
		for _, w := range tt.want {
			if !strings.Contains(stdout.String(), w) {
				t.Errorf("%q: help does not contain %q:\n%s", tt.give, w, stdout.String())
			}
		}
	}
}

func TestCLIExitCode(t *testing.T) {
	tests := []struct {
		give codes.Code
		want int
	}{
		{codes.OK, 0},
		{codes.Unknown, 1},
		{codes.Internal, 1},
		{codes.Aborted, 1},
		{codes.Canceled, 1},
		{codes.InvalidArgument, 2},
		{codes.NotFound, 3},
		{codes.Unauthenticated, 4},
		{codes.PermissionDenied, 4},
		{codes.FailedPrecondition, 5},
		{codes.Unavailable, 6},
		{codes.DeadlineExceeded, 6},
		{codes.ResourceExhausted, 6},
	}
	for _, tt := range tests {
		if got := exitCode(tt.give); got != tt.want {
			t.Errorf("exitCode(%s) = %d, want %d", tt.give, got, tt.want)
		}
	}
}

func TestCLIStatusMessage(t *testing.T) {
	withInfo := func(msg string, md map[string]string) *status.Status {
		st, err := status.New(codes.FailedPrecondition, msg).WithDetails(&errdetails.ErrorInfo{Reason: "X", Domain: "tokenbroker", Metadata: md})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	tests := []struct {
		name string
		give *status.Status
		want string
	}{
		{"plain", status.New(codes.NotFound, `broker: not found: provider "p"`), `broker: not found: provider "p"`},
		{"no message", status.New(codes.Unavailable, ""), "Unavailable"},
		{"error in message already", withInfo("provider p: oauth: token endpoint answered 401: invalid_client", map[string]string{"error": "invalid_client"}), "provider p: oauth: token endpoint answered 401: invalid_client"},
		{"error only in details", withInfo("provider p refused the grant", map[string]string{"error": "invalid_grant", "error_description": "refresh token revoked"}), "provider p refused the grant (provider error: invalid_grant: refresh token revoked)"},
		{"no OAuth2 error", withInfo("provider p: 502", map[string]string{"http_status": "502"}), "provider p: 502"},
	}
	for _, tt := range tests {
		if got := statusMessage(tt.give); got != tt.want {
			t.Errorf("%s: statusMessage = %q, want %q", tt.name, got, tt.want)
		}
	}
}
