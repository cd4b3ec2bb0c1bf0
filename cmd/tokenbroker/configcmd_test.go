package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/app"
)

func TestConfigValidate(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name       string
		give       string
		env        map[string]string // default: a master key
		want       []string          // on stderr; none: valid
		wantO      string
		wantStderr string
	}{
		{name: "valid", give: "grpc_addr: 127.0.0.1:9999\n" + testKeyYAML("admin", "admin") + "providers:\n  - name: hound\n    preset: mediahound\n    client_id: id\n    client_secret: s\n", wantO: "ok"},
		{name: "every problem at once", give: "log:\n  level: loud\netcd:\n  prefix: nope\nproviders:\n  - name: Bad Name\n    client_id: x\n",
			want: []string{"log.level", "etcd.prefix", "provider name", "token_url is required"}},
		{name: "unknown field", give: "grpc_adr: x\n", want: []string{`:1: unknown field "grpc_adr" (did you mean "grpc_addr"?)`}},
		{name: "deprecated name", give: testKeyYAML("admin", "admin") + "providers:\n  - name: hound\n    preset: mediahound\n    client_id: id\n    redirect_url: https://tb.example/cb\n", wantO: "ok",
			wantStderr: "warning: line 10: providers[0].redirect_url is deprecated: write redirect_uri"},
		{name: "what serve refuses", give: "tls:\n  cert_file: /nonexistent/c.pem\n  key_file: /nonexistent/k.pem\n", env: map[string]string{}, want: []string{"tls:", "/nonexistent/c.pem", "auth is empty", "no master key"}},
		{name: "secret env unset", give: testKeyYAML("admin", "admin") + "providers:\n  - name: hound\n    preset: mediahound\n    client_id: id\n    client_secret_env: TB_UNSET\n", want: []string{":10: providers[0].client_secret_env: $TB_UNSET is empty"}},
		{name: "revocation set", give: testKeyYAML("admin", "admin") + "providers:\n  - name: haven\n    preset: mediahaven\n    base_url: https://haven.example.com\n    client_id: id\n    refresh_revokes_access_token: false\n", wantO: "ok"},
		{name: "revocation not a bool", give: "providers:\n  - name: haven\n    token_url: https://haven.example.com/t\n    client_id: id\n    refresh_revokes_access_token: sometimes\n",
			want: []string{"sometimes", "bool"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut syncBuffer
			env := tt.env
			if env == nil {
				env = map[string]string{app.MasterKeyEnv: masterKeyValue}
			}
			err := run(t.Context(), []string{"config", "validate", write(tt.name+".yaml", tt.give)}, &out, &errOut, envMap(env))
			if len(tt.want) == 0 {
				if err != nil || !strings.Contains(out.String(), tt.wantO) || !strings.Contains(errOut.String(), tt.wantStderr) {
					t.Errorf("config validate = %v, stdout %q, stderr %q; want ok and %q", err, out.String(), errOut.String(), tt.wantStderr)
				}
				return
			}
			if err == nil {
				t.Fatalf("config validate = nil, want an error mentioning %v", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(errOut.String(), w) {
					t.Errorf("config validate stderr = %q, want it to mention %q", errOut.String(), w)
				}
			}
		})
	}
}
