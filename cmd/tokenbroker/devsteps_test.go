//go:build unix

package main

import (
	"context"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// devSteps is the script `tokenbroker dev` prints: the lines between
// devStepsBegin and devStepsEnd, as printed.
func devSteps(t *testing.T, stdout string) string {
	t.Helper()
	_, rest, ok := strings.Cut(stdout, devStepsBegin)
	steps, _, ok2 := strings.Cut(rest, devStepsEnd)
	if !ok || !ok2 {
		t.Fatalf("dev printed no steps between %q and %q:\n%s", devStepsBegin, devStepsEnd, stdout)
	}
	return steps
}

// startDevProcess runs `tokenbroker dev` on free ports and waits for its
// steps.
func startDevProcess(t *testing.T, bin string, extra ...string) *process {
	t.Helper()
	args := append([]string{"dev", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--log-level", "warn"}, extra...)
	p := startProcess(t, cliEnv(nil), bin, args...)
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(p.stdout.String(), devStepsEnd) {
		select {
		case <-p.exited:
			t.Fatalf("tokenbroker dev exited (%v) before printing its steps; stdout:\n%s\nstderr:\n%s", p.err, p.stdout.String(), p.stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("tokenbroker dev printed no steps within 60s; stdout:\n%s\nstderr:\n%s", p.stdout.String(), p.stderr.String())
		}
	}
	return p
}

// stopDev interrupts dev as Ctrl-C does and checks that it stops cleanly:
// exit 0, the shutdown line last on stdout, no error in its log.
func stopDev(t *testing.T, p *process) {
	t.Helper()
	p.signal(t, syscall.SIGINT)
	if !p.wait(30 * time.Second) {
		t.Fatalf("tokenbroker dev did not stop within 30s of SIGINT; stderr:\n%s", p.stderr.String())
	}
	if p.err != nil {
		t.Errorf("tokenbroker dev exited with %v after SIGINT, want success; stderr:\n%s", p.err, p.stderr.String())
	}
	if !regexp.MustCompile(`\ntokenbroker dev stopped; its data directory \S+ is deleted\.\n$`).MatchString(p.stdout.String()) {
		t.Errorf("dev's stdout does not end with the shutdown line:\n%s", lastLines(p.stdout.String(), 4))
	}
	if s := p.stderr.String(); strings.Contains(s, "ERROR") || strings.Contains(s, "panic") {
		t.Errorf("dev logged errors while stopping:\n%s", s)
	}
}

// TestDevStepsWorkInTheOrderPrinted runs `tokenbroker dev` as a process and
// the commands it prints, as printed and in their order, in bash (set -e:
// the first failing command fails the script), from the export of the
// address and key to the consent flow's token. Then it restarts dev with
// the printed key as --dev-api-key: the exported key works again.
func TestDevStepsWorkInTheOrderPrinted(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatalf("curl is needed to run what dev prints: %v", err)
	}
	bin := sharedBinary(t)
	dev := startDevProcess(t, bin)
	steps := devSteps(t, dev.stdout.String())
	export := devExport.FindStringSubmatch(steps)
	if export == nil || !strings.HasPrefix(strings.TrimSpace(steps), "export TOKENBROKER_ADDR=") {
		t.Fatalf("the steps do not begin with the export of TOKENBROKER_ADDR and TOKENBROKER_API_KEY:\n%s", steps)
	}
	key := export[2]
	if !strings.Contains(steps, bin+" token get sandbox") {
		t.Errorf("the steps do not call this binary by its path (it is not on $PATH):\n%s", steps)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	script := exec.CommandContext(ctx, "bash", "-e", "-u", "-o", "pipefail", "-c", steps)
	script.Env = cliEnv(nil)
	out, err := script.CombinedOutput()
	t.Logf("the printed steps:\n%s\ntheir output:\n%s", steps, out)
	if err != nil {
		t.Fatalf("the printed steps failed: %v", err)
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^[A-Za-z0-9._~+/=-]{16,}$`),                    // token get sandbox
		regexp.MustCompile(`"access_token":"[^"]+"`),                           // curl
		regexp.MustCompile(`(?m)^sandbox\s+alice-pw\s+password\s`),             // account put
		regexp.MustCompile(`<h1 class="ok">Authorization complete</h1>`),       // the consent's callback page
		regexp.MustCompile(`(?m)^sandbox\s+alice\s+authorization_code\s+ok\s`), // grant list
		regexp.MustCompile(`(?m)^sandbox\s+alice-pw\s+password\s+ok\s`),        // grant list
	} {
		if !want.Match(out) {
			t.Errorf("the steps' output does not match %s", want)
		}
	}
	stopDev(t, dev)

	// The same key across a restart.
	again := startDevProcess(t, bin, "--dev-api-key", key)
	export2 := devExport.FindStringSubmatch(again.stdout.String())
	if export2 == nil || export2[2] != key {
		t.Fatalf("dev --dev-api-key %s exports %v, want the same key", key, export2)
	}
	got := (&devProcess{bin: bin, addr: export2[1], key: key}).cli(t, "", nil, "token", "get", "sandbox")
	if got.code != 0 {
		t.Errorf("token get sandbox with the key of the first run, after a restart: exit %d, stderr %q", got.code, got.stderr)
	}
	stopDev(t, again)
}
