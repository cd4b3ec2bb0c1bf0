package app

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fuzzConfigSeeds are configuration files to start from: the shapes the
// README and the tests use, and the ones a YAML parser finds hard. The
// committed corpus in testdata/fuzz/FuzzDecodeConfig holds more.
var fuzzConfigSeeds = []string{
	"",
	"# only a comment\n",
	"grpc_addr: 127.0.0.1:9090\nhttp_addr: 127.0.0.1:8080\ndata_dir: /var/lib/tokenbroker\n" +
		"seal:\n  key_file: /etc/tokenbroker/master.key\n" +
		"auth:\n  api_keys:\n    - {id: abcdefghijkl, identity: admin, sha256: " + strings.Repeat("ab", 32) + "}\n" +
		"  policy:\n    - {identities: [admin], actions: [token, introspect, admin]}\n" +
		"providers:\n  - name: mediahound\n    token_url: https://api.mediahound.com/1.3/security/oauth/token\n" +
		"    client_id: MyClientId\n    client_secret: MyClientSecret-0123456789\n    client_auth_style: basic+post\n",
	"providers:\n  - {name: mh, preset: mediahound, client_id: c, client_secret_env: MH_SECRET}\n" +
		"  - {name: oidc, preset: oidc, base_url: 'https://issuer.example.com', client_id: c, client_secret_file: /run/secret}\n",
	"etcd: {endpoints: [https://etcd-1:2379, https://etcd-2:2379], prefix: /tb/, dial_timeout: 3s}\nlog: {level: debug, format: console}\n",
	"tls: {cert_file: /tls/server.crt, key_file: /tls/server.key, client_ca_file: /tls/ca.crt}\n",
	"a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n",
	"grpc_addr: x\n---\ngrpc_addr: y\n",
	"providers: [{name: x, client_secret: s, client_secret_env: E, client_secret_file: f}]\n",
	"default_min_ttl: -1s\nshutdown_timeout: 99999999999h\n",
	"{grpc_addr: [1, 2]}\n",
	"\xef\xbb\xbfgrpc_addr: ':0'\n",
	"providers:\n  - name: p\n    token_url: http://user:pass@127.0.0.1/token\n    client_id: c\n    client_secret: s3cret-in-url-check\n    token_params: {client_secret: x, grant_type: y}\n",
}

// FuzzDecodeConfig: no configuration file makes decoding or validation
// panic or hang; a file that validates converts every provider and builds
// its policy; and no validation error quotes a provider's client secret.
func FuzzDecodeConfig(f *testing.F) {
	for _, s := range fuzzConfigSeeds {
		f.Add(s)
	}
	// client_secret_file is read at validation: every path the fuzzer
	// writes is replaced by a real, small file, so that /dev/zero and the
	// like are not read.
	secretFile := filepath.Join(f.TempDir(), "client-secret")
	if err := os.WriteFile(secretFile, []byte("from-a-file\n"), 0o600); err != nil {
		f.Fatal(err)
	}
	env := envMap(map[string]string{"MH_SECRET": "from-the-environment"})
	f.Fuzz(func(t *testing.T, data string) {
		cfg := DefaultConfig()
		if DecodeConfig(strings.NewReader(data), &cfg) != nil {
			return
		}
		for i := range cfg.Providers {
			if cfg.Providers[i].ClientSecretFile != "" {
				cfg.Providers[i].ClientSecretFile = secretFile
			}
		}
		err := cfg.Validate(env)
		_ = cfg.ValidateForReseal()
		if err == nil {
			for i, pc := range cfg.Providers {
				if _, _, perr := pc.provider(env); perr != nil {
					t.Fatalf("Validate accepted providers[%d] that provider() rejects: %v", i, perr)
				}
			}
			if _, perr := cfg.Auth.policy(); perr != nil {
				t.Fatalf("Validate accepted a policy that policy() rejects: %v", perr)
			}
			return
		}
		// A secret in an error would land in the log of a failed start.
		// What the error says with every secret replaced tells which text
		// came from elsewhere.
		masked := cfg
		masked.Providers = append([]ProviderConfig(nil), cfg.Providers...)
		for i := range masked.Providers {
			if masked.Providers[i].ClientSecret != "" {
				masked.Providers[i].ClientSecret = "\x00masked"
			}
		}
		maskedErr := ""
		if merr := masked.Validate(env); merr != nil {
			maskedErr = merr.Error()
		}
		for i, pc := range cfg.Providers {
			if s := pc.ClientSecret; len(s) >= 4 && strings.Contains(err.Error(), s) && !strings.Contains(maskedErr, s) {
				t.Fatalf("Validate error quotes providers[%d].client_secret: %v", i, err)
			}
		}
	})
}
