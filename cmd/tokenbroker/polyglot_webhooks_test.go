package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/sandbox"
)

// TestNodeWebhookReceiver runs examples/node/webhook-receiver.mjs, the
// README's receiver, as written: subscribed to a running broker, it prints
// each event once, in order; it refuses a forged delivery and prints a
// replayed one (same webhook-id) only once.
func TestNodeWebhookReceiver(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node is not installed: the README's Node receiver needs it (%v)", err)
	}
	script, err := filepath.Abs(filepath.Join("..", "..", "examples", "node", "webhook-receiver.mjs"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, script)
	cmd.Env = append(os.Environ(), "WEBHOOK_SECRET="+configWebhookSecret, "PORT=0")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	listening := bufio.NewScanner(stderr)
	if !listening.Scan() || !strings.HasPrefix(listening.Text(), "listening on ") {
		t.Fatalf("the receiver did not say where it listens: %q %v", listening.Text(), listening.Err())
	}
	url := strings.TrimPrefix(listening.Text(), "listening on ")
	lines := make(chan string)
	go func() { // ends when the receiver's stdout closes
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	next := func() string {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("the receiver exited")
			}
			return l
		case <-time.After(15 * time.Second):
			t.Fatal("the receiver printed no event within 15s")
		}
		return ""
	}

	fake := startFake(t)
	app, _ := startApp(t, appConfig(fake.url, t.TempDir()))
	b := app.Broker()
	if _, _, err := b.PutWebhook(ctx, broker.Webhook{ID: "node", URL: url}, configWebhookSecret); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"second", "third"} {
		p := broker.Provider{Name: name, TokenURL: fake.url + sandbox.TokenPath, ClientID: fakeClientID}
		if _, err := b.PutProvider(ctx, p, fakeClientSecret); err != nil {
			t.Fatal(err)
		}
	}
	var first map[string]any
	for _, name := range []string{"second", "third"} {
		line := next()
		var e map[string]any
		if err := json.Unmarshal([]byte(line), &e); err != nil || e["type"] != "provider.changed" || e["provider"] != name {
			t.Fatalf("the receiver printed %q, want provider.changed of %s", line, name)
		}
		if first == nil {
			first = e
		}
	}

	// A delivery signed with another key is refused; the replay of one
	// it got, signed right, is answered 2xx and not printed again.
	body, _ := json.Marshal(first)
	id := first["id"].(string)
	post := func(secret string) int {
		ts := strconv.FormatInt(time.Now().Unix(), 10)
		key, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
		mac := hmac.New(sha256.New, key)
		mac.Write([]byte(id + "." + ts + "." + string(body)))
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		req.Header.Set("webhook-id", id)
		req.Header.Set("webhook-timestamp", ts)
		req.Header.Set("webhook-signature", "v1,"+base64.StdEncoding.EncodeToString(mac.Sum(nil)))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post("whsec_" + base64.StdEncoding.EncodeToString([]byte("another-key-of-24-bytes!"))); code != http.StatusUnauthorized {
		t.Errorf("a forged delivery was answered %d, want 401", code)
	}
	if code := post(configWebhookSecret); code != http.StatusNoContent {
		t.Errorf("a replayed delivery was answered %d, want 204", code)
	}
	p := broker.Provider{Name: "fourth", TokenURL: fake.url + sandbox.TokenPath, ClientID: fakeClientID}
	if _, err := b.PutProvider(ctx, p, fakeClientSecret); err != nil {
		t.Fatal(err)
	}
	if line := next(); !strings.Contains(line, `"provider":"fourth"`) {
		t.Errorf("after the replay the receiver printed %q, want the next event (fourth) and no repeat", line)
	}
}

// The README shows the receiver as it is in examples/node, whole.
func TestReadmeShowsTheNodeReceiver(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	script, err := os.ReadFile(filepath.Join("..", "..", "examples", "node", "webhook-receiver.mjs"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(readme, []byte("```js\n"+string(script)+"```\n")) {
		t.Error("README.md does not show examples/node/webhook-receiver.mjs as it is: copy the file into its js block")
	}
}
