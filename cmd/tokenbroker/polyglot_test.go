package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestNodeExample runs examples/node/get-token.mjs, the README's non-Go
// example, as written against a running broker: it prints the token the
// broker serves.
func TestNodeExample(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node is not installed: the README's Node example needs it (%v)", err)
	}
	fake := startFake(t)
	inst, _ := startApp(t, appConfig(fake.url, t.TempDir()))
	want := grpcGetToken(t, inst.GRPCAddr(), providerName).GetAccessToken()

	script, err := filepath.Abs(filepath.Join("..", "..", "examples", "node", "get-token.mjs"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(t.Context(), node, script, providerName)
	cmd.Env = append(os.Environ(), "TOKENBROKER_URL=http://"+inst.HTTPAddr(), "TOKENBROKER_API_KEY="+testKey)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("node %s: %v: %s", script, err, errOut.String())
	}
	if got := strings.TrimSpace(out.String()); got != want {
		t.Errorf("the Node example printed %q, want the broker's token", got)
	}

	// A wrong key: a clear message and a failing exit status.
	cmd = exec.CommandContext(t.Context(), node, script, providerName)
	cmd.Env = append(os.Environ(), "TOKENBROKER_URL=http://"+inst.HTTPAddr(), "TOKENBROKER_API_KEY=tbk_wrong")
	errOut.Reset()
	cmd.Stderr = &errOut
	if err := cmd.Run(); err == nil || !strings.Contains(errOut.String(), "401") {
		t.Errorf("the Node example with a wrong key = %v, %q; want exit 1 with the 401", err, errOut.String())
	}
}
