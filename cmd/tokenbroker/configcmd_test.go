package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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
		name  string
		give  string
		want  []string // in the error; none: valid
		wantO string
	}{
		{name: "valid", give: "grpc_addr: 127.0.0.1:9999\nproviders:\n  - name: hound\n    preset: mediahound\n    client_id: id\n    client_secret: s\n", wantO: "ok"},
		{name: "every problem at once", give: "log:\n  level: loud\netcd:\n  prefix: nope\nproviders:\n  - name: Bad Name\n    client_id: x\n",
			want: []string{"log.level", "etcd.prefix", "provider name", "token_url is required"}},
		{name: "unknown field", give: "grpc_adr: x\n", want: []string{"grpc_adr"}},
		{name: "revocation set", give: "providers:\n  - name: haven\n    preset: mediahaven\n    base_url: https://haven.example.com\n    client_id: id\n    refresh_revokes_access_token: false\n", wantO: "ok"},
		{name: "revocation not a bool", give: "providers:\n  - name: haven\n    token_url: https://haven.example.com/t\n    client_id: id\n    refresh_revokes_access_token: sometimes\n",
			want: []string{"sometimes", "bool"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut syncBuffer
			err := run(t.Context(), []string{"config", "validate", write(tt.name+".yaml", tt.give)}, &out, &errOut, envMap(nil))
			if len(tt.want) == 0 {
				if err != nil || !strings.Contains(out.String(), tt.wantO) {
					t.Errorf("config validate = %v, stdout %q; want ok", err, out.String())
				}
				return
			}
			if err == nil {
				t.Fatalf("config validate = nil, want an error mentioning %v", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("config validate error = %q, want it to mention %q", err, w)
				}
			}
		})
	}
}
