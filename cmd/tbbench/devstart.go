package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// devStart is one start of `tokenbroker dev`: from exec to its banner on
// stdout, and to the first GetToken that succeeded (the first token is a
// miss: the provider is called).
type devStart struct {
	Banner     time.Duration
	FirstToken time.Duration
}

var (
	devKeyRE  = regexp.MustCompile(`tbk_[a-z2-7]{12}_[A-Za-z0-9_-]{43}`)
	devGRPCRE = regexp.MustCompile(`gRPC: (\S+)`)
)

// buildTokenbroker builds cmd/tokenbroker of the module in the working
// directory into dir.
func buildTokenbroker(ctx context.Context, dir string) (string, error) {
	out := filepath.Join(dir, "tokenbroker")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "github.com/tokenbroker/tokenbroker/cmd/tokenbroker")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/tokenbroker: %v: %s", err, strings.TrimSpace(string(b)))
	}
	return out, nil
}

// measureDevStart starts `bin dev` on free ports, reads the API key and the
// gRPC address from its banner, and calls GetToken until one succeeds.
func measureDevStart(ctx context.Context, bin string) (devStart, error) {
	var r devStart
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.Command(bin, "dev", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0")
	logs := newLogTail(20)
	cmd.Stderr = logs
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return r, err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return r, err
	}
	defer func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}()
	var key, addr string
	sc := bufio.NewScanner(stdout)
	for (key == "" || addr == "") && sc.Scan() {
		line := sc.Text()
		if m := devGRPCRE.FindStringSubmatch(line); m != nil && addr == "" {
			addr = m[1]
		}
		if k := devKeyRE.FindString(line); k != "" && key == "" {
			key = k
		}
	}
	if key == "" || addr == "" {
		return r, fmt.Errorf("tokenbroker dev printed no API key and gRPC address; its log:\n%s", logs.String())
	}
	r.Banner = time.Since(start)
	go func() { // keep the pipe drained
		for sc.Scan() {
		}
	}()
	t, err := dialGRPC(addr, 1, []string{key})
	if err != nil {
		return r, err
	}
	defer t.close()
	client := tokenbrokerv1.NewTokenBrokerServiceClient(t.conns[0])
	for {
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := client.GetToken(cctx, &tokenbrokerv1.GetTokenRequest{Provider: "sandbox"})
		ccancel()
		if err == nil && resp.GetToken().GetAccessToken() != "" {
			r.FirstToken = time.Since(start)
			return r, nil
		}
		if ctx.Err() != nil {
			return r, fmt.Errorf("no token from tokenbroker dev after 30s: %v; its log:\n%s", err, logs.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}
