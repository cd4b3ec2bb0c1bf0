package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tokenbroker/tokenbroker/app"
	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/event"
	"github.com/tokenbroker/tokenbroker/broker/oauth"
	"github.com/tokenbroker/tokenbroker/broker/seal"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
	"github.com/tokenbroker/tokenbroker/sandbox"
)

// generateKeyLine runs `keys generate --id id` and returns the key-file
// line it printed.
func generateKeyLine(t *testing.T, id string) string {
	t.Helper()
	var stdout, stderr syncBuffer
	if err := run(t.Context(), []string{"keys", "generate", "--id", id}, &stdout, &stderr, envMap(nil)); err != nil {
		t.Fatalf("keys generate --id %s = %v; stderr %s", id, err, stderr.String())
	}
	return strings.TrimSuffix(stdout.String(), "\n")
}

func TestKeysGenerate(t *testing.T) {
	first, second := generateKeyLine(t, "k2"), generateKeyLine(t, "k2")
	if !regexp.MustCompile(`^k2:[A-Za-z0-9+/]{43}=$`).MatchString(first) {
		t.Fatalf("keys generate printed %q, want one line \"k2:<base64 of 32 bytes>\"", first)
	}
	kr, err := seal.ParseKeyFile([]byte(first + "\n"))
	if err != nil || kr.PrimaryID() != "k2" {
		t.Fatalf("the printed line does not parse as a key file with key k2: %v", err)
	}
	if first == second {
		t.Errorf("two keys generated alike: the secret is not random")
	}
	// The line is a key file's first line, and the old key follows it.
	old := generateKeyLine(t, "k1")
	kr, err = seal.ParseKeyFile([]byte(first + "\n" + old + "\n"))
	if err != nil || strings.Join(kr.IDs(), ",") != "k2,k1" {
		t.Errorf("rotated key file = %v, %v; want primary k2 then k1", kr, err)
	}
}

func TestKeysCommandErrors(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "master.key")
	if err := os.WriteFile(keyFile, []byte(generateKeyLine(t, "k1")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	writeConfig := func(name, yaml string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	noKey := writeConfig("nokey.yaml", "data_dir: "+filepath.Join(dir, "data")+"\n")
	noData := writeConfig("nodata.yaml", "data_dir: "+filepath.Join(dir, "empty")+"\nseal:\n  key_file: "+keyFile+"\n")
	unknownField := writeConfig("unknown.yaml", "seal:\n  key_files: x\n")
	tests := []struct {
		name string
		give []string
		env  map[string]string
		want string
	}{
		{"no subcommand", []string{"keys"}, nil, "keys: missing subcommand (create-kek, generate, reseal)"},
		{"unknown subcommand", []string{"keys", "rotate"}, nil, `unknown command "rotate" for "tokenbroker keys"`},
		{"generate without id", []string{"keys", "generate"}, nil, "key id must be 1–16 characters"},
		{"generate bad id", []string{"keys", "generate", "--id", "Upper"}, nil, "key id must be of [a-z0-9-]"},
		{"generate extra argument", []string{"keys", "generate", "--id", "k", "more"}, nil, `unexpected argument "more"`},
		{"reseal without master key", []string{"keys", "reseal", "--config", noKey}, nil, "no master key: set seal.key_file"},
		{"reseal with two master keys", []string{"keys", "reseal", "--config", noData}, map[string]string{app.MasterKeyEnv: "k9:" + strings.Repeat("A", 43) + "="}, "seal.key_file and $TOKENBROKER_MASTER_KEY are both set"},
		{"reseal without etcd data", []string{"keys", "reseal", "--config", noData}, nil, "holds no etcd data"},
		{"reseal missing config", []string{"keys", "reseal", "--config", filepath.Join(dir, "missing.yaml")}, nil, "no such file"},
		{"reseal unknown config field", []string{"keys", "reseal", "--config", unknownField}, nil, `seal: unknown field "key_files" (did you mean "key_file"?)`},
		{"reseal bad flag", []string{"keys", "reseal", "--nope"}, nil, "nope"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr syncBuffer
			err := run(t.Context(), tt.give, &stdout, &stderr, envMap(tt.env))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("run(%q) = %v, want an error containing %q", tt.give, err, tt.want)
			}
		})
	}
}

// sealedKeyIDs reads every record under prefix and returns the key id of
// each sealed value, by etcd key and field.
func sealedKeyIDs(t *testing.T, cli *clientv3.Client, prefix string) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	kr, err := seal.NewKeyring(seal.Key{ID: "reader", Secret: []byte(strings.Repeat("r", seal.KeySize))})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, kv := range resp.Kvs {
		var obj map[string]json.RawMessage
		if json.Unmarshal(kv.Value, &obj) != nil {
			continue
		}
		for name, raw := range obj {
			var v []byte
			if !strings.HasSuffix(name, "_sealed") || json.Unmarshal(raw, &v) != nil || len(v) == 0 {
				continue
			}
			id, err := kr.KeyID(v)
			if err != nil {
				t.Fatalf("%s %s: %v", kv.Key, name, err)
			}
			out[string(kv.Key)+"#"+name] = id
		}
	}
	return out
}

var resealCounts = regexp.MustCompile(`(\d+) records with sealed values scanned, (\d+) re-sealed, (\d+) failed`)

// resealOutput runs `keys reseal` with args and returns the counts it
// printed, its output and its error.
func resealOutput(t *testing.T, args []string, env map[string]string) (scanned, resealed, failed int, out string, err error) {
	t.Helper()
	var stdout, stderr syncBuffer
	err = run(t.Context(), append([]string{"keys", "reseal"}, args...), &stdout, &stderr, envMap(env))
	out = stdout.String() + stderr.String()
	m := resealCounts.FindStringSubmatch(stdout.String())
	if m == nil {
		t.Fatalf("keys reseal %q printed no counts (error %v):\n%s", args, err, out)
	}
	scanned, _ = strconv.Atoi(m[1])
	resealed, _ = strconv.Atoi(m[2])
	failed, _ = strconv.Atoi(m[3])
	return scanned, resealed, failed, out, err
}

// recordsOf returns the etcd keys of sealed values keyed "<key>#<field>".
func recordsOf(sealed map[string]string) map[string]bool {
	out := map[string]bool{}
	for name := range sealed {
		k, _, _ := strings.Cut(name, "#")
		out[k] = true
	}
	return out
}

// The rotation procedure of the README, end to end on the embedded store:
// new key first in the key file, restart, keys reseal, drop the old key.
func TestKeysResealRotatesTheMasterKey(t *testing.T) {
	fake := startFake(t)
	dir := t.TempDir()
	dataDir, keyFile := filepath.Join(dir, "data"), filepath.Join(dir, "master.key")
	oldLine, newLine := generateKeyLine(t, "k1"), generateKeyLine(t, "k2")
	writeKeys := func(lines ...string) {
		t.Helper()
		if err := os.WriteFile(keyFile, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg := appConfig(fake.url, dataDir)
	cfg.Keyring = nil
	cfg.Seal.KeyFile = keyFile

	writeKeys(oldLine)
	inst, closeApp := startApp(t, cfg)
	tok := grpcGetToken(t, inst.GRPCAddr(), providerName)
	before := sealedKeyIDs(t, inst.Client(), cfg.Etcd.Prefix)
	if len(before) < 2 {
		t.Fatalf("sealed values in etcd: %v, want at least the client secret and the access token", before)
	}
	for name, id := range before {
		if id != "k1" {
			t.Fatalf("%s sealed with %q before the rotation, want k1", name, id)
		}
	}
	// Restart with the new key first: the old records still open.
	if err := closeApp(); err != nil {
		t.Fatal(err)
	}
	writeKeys(newLine, oldLine)
	inst, closeApp = startApp(t, cfg)
	if got := grpcGetToken(t, inst.GRPCAddr(), providerName); got.GetAccessToken() != tok.GetAccessToken() {
		t.Fatalf("GetToken after the restart with k2,k1 returned another token; want the stored one")
	}
	// Providers from the config file were registered again, under k2; the
	// token is still under k1.
	mid := sealedKeyIDs(t, inst.Client(), cfg.Etcd.Prefix)
	stale := map[string]bool{}
	for name, id := range mid {
		if id == "k1" {
			k, _, _ := strings.Cut(name, "#")
			stale[k] = true
		}
	}
	if len(stale) == 0 {
		t.Fatalf("no record under k1 after the restart: %v", mid)
	}
	configFile := filepath.Join(dir, "tokenbroker.yaml")
	if err := os.WriteFile(configFile, []byte("data_dir: "+dataDir+"\nseal:\n  key_file: "+keyFile+"\nlog:\n  level: warn\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The embedded etcd's data directory is the broker's while it runs:
	// reseal says so at once and leaves the broker's store alone.
	var busyOut syncBuffer
	if err := run(t.Context(), []string{"keys", "reseal", "--config", configFile}, &busyOut, &busyOut, envMap(nil)); err == nil || !strings.Contains(err.Error(), "a running broker holds its data directory") {
		t.Fatalf("keys reseal while the broker runs = %v, want an error saying a running broker holds the data directory\n%s", err, busyOut.String())
	}
	if got := grpcGetToken(t, inst.GRPCAddr(), providerName); got.GetAccessToken() != tok.GetAccessToken() {
		t.Fatalf("GetToken after a refused reseal returned another token; want the stored one")
	}
	if err := closeApp(); err != nil {
		t.Fatal(err)
	}

	scanned, resealed, failed, out, err := resealOutput(t, []string{"--config", configFile}, nil)
	if err != nil || scanned != len(recordsOf(mid)) || resealed != len(stale) || failed != 0 {
		t.Fatalf("keys reseal = %d scanned, %d re-sealed, %d failed, %v; want %d scanned, %d re-sealed\n%s",
			scanned, resealed, failed, err, len(recordsOf(mid)), len(stale), out)
	}
	if !strings.Contains(out, `under key "k2"`) || !strings.Contains(out, "drop it from the key file") {
		t.Errorf("keys reseal output %q, want it to name the primary key and say the old key can go", out)
	}
	_, oldSecret, _ := strings.Cut(oldLine, ":")
	_, newSecret, _ := strings.Cut(newLine, ":")
	for _, s := range []string{oldSecret[:12], newSecret[:12], fakeClientSecret, tok.GetAccessToken()} {
		if strings.Contains(out, s) {
			t.Errorf("keys reseal output holds a key, secret or token:\n%s", out)
		}
	}
	again, _, _, _, err := resealOutput(t, []string{"--config", configFile}, nil)
	if err != nil || again != scanned {
		t.Errorf("second keys reseal: %d scanned, %v; want %d and no error", again, err, scanned)
	}

	// Drop the old key: everything opens with k2 alone.
	writeKeys(newLine)
	inst, _ = startApp(t, cfg)
	for name, id := range sealedKeyIDs(t, inst.Client(), cfg.Etcd.Prefix) {
		if id != "k2" {
			t.Errorf("%s sealed with %q after keys reseal, want k2", name, id)
		}
	}
	calls := fake.TokenCalls()
	if got := grpcGetToken(t, inst.GRPCAddr(), providerName); got.GetAccessToken() != tok.GetAccessToken() {
		t.Errorf("GetToken with k2 alone returned another token; want the stored one, re-sealed")
	}
	if fake.TokenCalls() != calls {
		t.Errorf("GetToken with k2 alone called the provider; want the stored token")
	}
	// The re-sealed client secret still authenticates at the provider.
	conn, err := grpc.NewClient(inst.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(bearer(testKey)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Naming the stored token as stale: a forced refresh this soon after
	// the token was obtained would be coalesced into it.
	refreshed, err := tokenbrokerv1.NewTokenBrokerServiceClient(conn).Refresh(t.Context(), &tokenbrokerv1.RefreshRequest{Provider: providerName, StaleAccessToken: tok.GetAccessToken()})
	if err != nil || refreshed.GetToken().GetAccessToken() == tok.GetAccessToken() {
		t.Fatalf("Refresh with k2 alone = %v; want a new token from the provider", err)
	}
	last := fake.Requests()[len(fake.Requests())-1]
	if last.Form.Get("client_secret") != fakeClientSecret {
		t.Errorf("provider saw client_secret %v, want the re-sealed secret", last.Form.Get("client_secret") == fakeClientSecret)
	}
}

// Against an external etcd, with the master key in the environment: a
// record sealed with a key the keyring no longer holds fails the command,
// which names the record and never its value.
func TestKeysResealReportsRecordsUnderAMissingKey(t *testing.T) {
	e := etcdtest.Start(t)
	gone, err := seal.GenerateKey("gone")
	if err != nil {
		t.Fatal(err)
	}
	goneRing, err := seal.NewKeyring(gone)
	if err != nil {
		t.Fatal(err)
	}
	b, err := broker.New(t.Context(), broker.Config{Client: e.Client(t, nil), Keyring: goneRing, Refresh: broker.RefreshConfig{Disabled: true}})
	if err != nil {
		t.Fatal(err)
	}
	secret := "lost-secret-5d2f9a0c7e"
	if _, err := b.PutProvider(t.Context(), broker.Provider{Name: "lost", TokenURL: "https://auth.example.com" + sandbox.TokenPath,
		ClientID: "c", ClientAuth: oauth.AuthBasic}, secret); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	// The event the put recorded is re-sealed like any record; this test
	// counts the provider only.
	if _, err := e.Client(t, nil).Delete(t.Context(), broker.DefaultPrefix+event.Prefix, clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{app.MasterKeyEnv: generateKeyLine(t, "k2")}
	scanned, resealed, failed, out, err := resealOutput(t, []string{"--etcd-endpoints", e.Endpoint}, env)
	if err == nil || !strings.Contains(err.Error(), "re-seal incomplete") || !strings.Contains(err.Error(), "keep the old keys") {
		t.Errorf("keys reseal = %v, want an incomplete re-seal telling to keep the old keys", err)
	}
	if scanned != 1 || resealed != 0 || failed != 1 {
		t.Errorf("keys reseal counted %d scanned, %d re-sealed, %d failed; want 1, 0, 1", scanned, resealed, failed)
	}
	if !strings.Contains(out, "failed: /tokenbroker/providers/lost: field client_secret: seal: sealed with an unknown key") {
		t.Errorf("keys reseal output does not name the failed record and its cause:\n%s", out)
	}
	if strings.Contains(out, secret[:10]) {
		t.Errorf("keys reseal output holds the secret:\n%s", out)
	}
}
