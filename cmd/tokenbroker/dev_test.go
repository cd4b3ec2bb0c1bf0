package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

// What `tokenbroker dev` prints: the export line (the gRPC address and the
// key captured), the curl line of a token (its URL captured) and the data
// directory.
var (
	devExport  = regexp.MustCompile(`(?m)^\s*export TOKENBROKER_ADDR=(\S+) TOKENBROKER_API_KEY=(\S+)\s*$`)
	devCurl    = regexp.MustCompile(`(?m)^\s*curl -s -X POST -H "Authorization: Bearer \$TOKENBROKER_API_KEY" (\S+/token)\s*$`)
	devDataDir = regexp.MustCompile(`embedded etcd in (.+?), `)
)

// TestRunDev runs `tokenbroker dev` as a newcomer would: it waits for the
// printed curl line, runs it twice, and stops the command.
func TestRunDev(t *testing.T) {
	t.Parallel()
	var stdout, stderr syncBuffer
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"dev", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--log-level", "warn"}, &stdout, &stderr, os.Getenv)
	}()
	// A failure below must not leave the command running.
	stopped := false
	stop := func() error {
		cancel()
		select {
		case err := <-done:
			stopped = true
			return err
		case <-time.After(60 * time.Second):
			t.Fatalf("run did not return within a minute of ctx being cancelled; stderr:\n%s", stderr.String())
			return nil
		}
	}
	defer func() {
		if !stopped {
			stop()
		}
	}()

	var url, key string
	deadline := time.After(20 * time.Second)
	for {
		out := stdout.String()
		if m, e := devCurl.FindStringSubmatch(out), devExport.FindStringSubmatch(out); m != nil && e != nil {
			key, url = e[2], m[1]
			break
		}
		select {
		case err := <-done:
			stopped = true
			t.Fatalf("run returned %v before printing the curl line; stdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
		case <-deadline:
			t.Fatalf("no curl line on stdout after 20s; stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	m := devDataDir.FindStringSubmatch(stdout.String())
	if m == nil {
		t.Fatalf("stdout names no data directory (\"embedded etcd in <dir>, \"):\n%s", stdout.String())
	}
	dataDir := m[1]
	if _, err := os.Stat(dataDir); err != nil {
		t.Errorf("the printed data directory %s: %v, want it to exist while dev runs", dataDir, err)
	}

	// Without the key, the broker refuses.
	if status, raw := httpCall(t, "POST", url, "", "", nil); status != 401 {
		t.Errorf("POST %s without the key: status = %d, want 401; body %s", url, status, raw)
	}

	// Exactly what the README says to run: a POST without a body.
	type token struct {
		AccessToken string `json:"access_token"`
		IssuedAt    string `json:"issued_at"`
	}
	var got [2]token
	for i := range got {
		status, raw := httpCall(t, "POST", url, key, "", nil)
		if status != 200 {
			t.Fatalf("POST %s (call %d) status = %d, want 200; body %s", url, i+1, status, raw)
		}
		if err := json.Unmarshal(raw, &got[i]); err != nil {
			t.Fatalf("POST %s (call %d): the answer is not JSON: %v: %s", url, i+1, err, raw)
		}
		if got[i].AccessToken == "" || got[i].IssuedAt == "" {
			t.Fatalf("POST %s (call %d) = %s, want access_token and issued_at", url, i+1, raw)
		}
	}
	if got[1].AccessToken != got[0].AccessToken {
		t.Errorf("second call got access_token %q, want the first one %q (the provider was asked twice)", got[1].AccessToken, got[0].AccessToken)
	}
	if got[1].IssuedAt != got[0].IssuedAt {
		t.Errorf("second call got issued_at %q, want the first one %q (the provider was asked twice)", got[1].IssuedAt, got[0].IssuedAt)
	}

	if err := stop(); err != nil {
		t.Errorf("run returned %v, want nil", err)
	}
	if _, err := os.Stat(dataDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after run returned, stat %s = %v, want it removed", dataDir, err)
	}
	if want := "tokenbroker dev stopped; its data directory " + dataDir + " is deleted.\n"; !strings.HasSuffix(stdout.String(), want) {
		t.Errorf("stdout ends with %q, want the shutdown line %q", lastLines(stdout.String(), 3), want)
	}
	if s := stderr.String(); strings.Contains(s, "panic") {
		t.Errorf("stderr mentions a panic:\n%s", s)
	}
}

// lastLines is the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.SplitAfter(s, "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "")
}
