//go:build unix

package main

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/sandbox"
)

// The webhooks commands against `tokenbroker dev`, as an admin runs them:
// create prints the generated secret alone, once; the receiver verifies
// the signature of the delivery of the next change with it; list, get and
// deliveries show the subscription and its delivery without the secret;
// redeliver refuses what is not a dead letter; delete removes it.
func TestCLIWebhooks(t *testing.T) {
	t.Parallel()
	dev := startDev(t, buildTokenbroker(t, t.TempDir()))
	r := newHookReceiver(t, "", 0)

	created := dev.cli(t, "", nil, "webhooks", "create", "oncall", "--url", r.URL, "--type", "provider.changed")
	secret := strings.TrimSuffix(created.stdout, "\n")
	if created.code != 0 || !regexp.MustCompile(`^whsec_[A-Za-z0-9+/=]+$`).MatchString(secret) || !strings.Contains(created.stderr, "shown only now") {
		t.Fatalf("webhooks create: exit %d, stdout %q, stderr %q; want 0 and the secret alone", created.code, created.stdout, created.stderr)
	}
	r.mu.Lock()
	r.secret = secret
	r.mu.Unlock()
	tokenURL := dev.sandboxURL + sandbox.TokenPath
	if got := dev.cli(t, "", map[string]string{"S": "whatever-secret"}, "provider", "put", "hooked", "--token-url", tokenURL, "--client-id", "c", "--client-secret-env", "S"); got.code != 0 {
		t.Fatalf("provider put: exit %d, stderr %q", got.code, got.stderr)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		types, _, bad := r.received()
		if len(types) == 1 && types[0] == "provider.changed" {
			break
		}
		if bad > 0 || time.Now().After(deadline) {
			t.Fatalf("receiver got %v (%d badly signed), want the provider.changed event, signed with the printed secret", types, bad)
		}
		time.Sleep(20 * time.Millisecond)
	}

	key := strings.TrimPrefix(secret, "whsec_")
	steps := []struct {
		name       string
		give       []string
		wantCode   int
		wantStdout string // regexp
		wantStderr string // substring
	}{
		{name: "list", give: []string{"webhooks", "list"}, wantStdout: `(?m)^ID\s+URL\s+EVENT TYPES\s+PROVIDERS\s+SECRET\s+UPDATED\n^oncall\s+` + regexp.QuoteMeta(r.URL) + `\s+provider\.changed\s+all\s+set \(\w+\)\s`},
		{name: "get", give: []string{"webhooks", "get", "oncall"}, wantStdout: `(?m)^URL\s+` + regexp.QuoteMeta(r.URL) + `\n[\s\S]*^SECRET\s+set \(\w+\)\n^LAST EVENT\s+[0-9a-f]{24}\n^FAILURES\s+0\n`},
		{name: "get as JSON", give: []string{"webhooks", "get", "oncall", "-o", "json"}, wantStdout: `"secret": \{\s*"set": true`},
		{name: "deliveries", give: []string{"webhooks", "deliveries", "oncall"}, wantStdout: `(?m)^EVENT\s+TYPE\s+STATUS\s+ATTEMPTS\s+HTTP\s.*\n^[0-9a-f]{24}\s+provider\.changed\s+delivered\s+1\s+204\s+-\s`},
		{name: "redeliver what was delivered", give: []string{"webhooks", "redeliver", "oncall", "0123456789abcdef01234567"}, wantCode: exitNotFound, wantStderr: "no delivery of event 0123456789abcdef01234567"},
		{name: "a malformed event id", give: []string{"webhooks", "redeliver", "oncall", "nope"}, wantCode: exitUsage, wantStderr: `event id "nope" is malformed`},
		{name: "plain http elsewhere", give: []string{"webhooks", "create", "x", "--url", "http://hooks.example.com/x"}, wantCode: exitUsage, wantStderr: "scheme must be https"},
		{name: "a secret as a flag", give: []string{"webhooks", "create", "x", "--url", r.URL, "--secret", secret}, wantCode: exitUsage, wantStderr: "unknown flag: --secret"},
		{name: "replace keeps the secret", give: []string{"webhooks", "create", "oncall", "--url", r.URL}, wantStdout: `(?m)^EVENT TYPES\s+all\n`},
		{name: "delete", give: []string{"webhooks", "delete", "oncall"}, wantStdout: `^webhook "oncall" deleted\n$`},
		{name: "a deleted webhook is gone", give: []string{"webhooks", "get", "oncall"}, wantCode: exitNotFound, wantStderr: `webhook "oncall"`},
	}
	for _, tt := range steps {
		got := dev.cli(t, "", nil, tt.give...)
		if got.code != tt.wantCode {
			t.Errorf("%s: tokenbroker %q: exit code %d, want %d; stderr %q", tt.name, tt.give, got.code, tt.wantCode, got.stderr)
		}
		if !regexp.MustCompile(tt.wantStdout).MatchString(got.stdout) {
			t.Errorf("%s: tokenbroker %q: stdout does not match %q:\n%s", tt.name, tt.give, tt.wantStdout, got.stdout)
		}
		if !strings.Contains(got.stderr, tt.wantStderr) {
			t.Errorf("%s: tokenbroker %q: stderr = %q, want it to contain %q", tt.name, tt.give, got.stderr, tt.wantStderr)
		}
		if strings.Contains(got.stdout+got.stderr, key) {
			t.Errorf("%s: tokenbroker %q printed the signing secret:\n%s%s", tt.name, tt.give, got.stdout, got.stderr)
		}
	}
}
