//go:build unix

package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/app"
)

// The binary the process tests run, built once per test process.
var shared struct {
	once sync.Once
	dir  string
	bin  string
	err  error
	out  []byte
}

// sharedBinary builds the command once for every test that runs it as a
// process; removeSharedBinary (from TestMain) deletes it.
func sharedBinary(t *testing.T) string {
	t.Helper()
	shared.once.Do(func() {
		if shared.dir, shared.err = os.MkdirTemp("", "tokenbroker-bin-"); shared.err != nil {
			return
		}
		shared.bin = filepath.Join(shared.dir, "tokenbroker")
		cmd := exec.Command("go", "build", "-o", shared.bin, "./cmd/tokenbroker")
		cmd.Dir = filepath.Join("..", "..") // the module root
		shared.out, shared.err = cmd.CombinedOutput()
	})
	if shared.err != nil {
		t.Fatalf("go build ./cmd/tokenbroker: %v\n%s", shared.err, shared.out)
	}
	return shared.bin
}

func removeSharedBinary() {
	if shared.dir != "" {
		os.RemoveAll(shared.dir)
	}
}

// process is a command run in its own process group, stopped (SIGKILL)
// when the test ends if it still runs.
type process struct {
	cmd            *exec.Cmd
	stdout, stderr syncBuffer
	exited         chan struct{}
	err            error // once exited is closed
}

func startProcess(t *testing.T, env []string, bin string, args ...string) *process {
	t.Helper()
	p := &process{cmd: exec.Command(bin, args...), exited: make(chan struct{})}
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.exited
		}
	})
	return p
}

// signal sends sig to the process alone (not its group: what a shell's
// kill does).
func (p *process) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil && !strings.Contains(err.Error(), "process already finished") {
		t.Fatal(err)
	}
}

// wait waits up to d for the process to exit and reports whether it did.
func (p *process) wait(d time.Duration) bool {
	select {
	case <-p.exited:
		return true
	case <-time.After(d):
		return false
	}
}

// waitFor waits up to d for stderr to contain s, or the process to exit.
func (p *process) waitFor(t *testing.T, s string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !strings.Contains(p.stderr.String(), s) {
		select {
		case <-p.exited:
			t.Fatalf("the process exited (%v) before logging %q; stderr:\n%s", p.err, s, p.stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("the process did not log %q within %s; stderr:\n%s", s, d, p.stderr.String())
		}
	}
}

// serveConfig writes the configuration of a serve on free loopback ports
// over the embedded etcd in dataDir.
func serveConfig(t *testing.T, dataDir string) string {
	return writeConfig(t, fmt.Sprintf("grpc_addr: 127.0.0.1:0\nhttp_addr: 127.0.0.1:0\nmetrics_addr: 127.0.0.1:0\ndata_dir: %s\nshutdown_timeout: 5s\n%s",
		dataDir, testKeyYAML("svc", "token")))
}

// serveReady is what serve logs once it serves.
const serveReady = `"msg":"serving"`

// TestSecondServeOnADataDirInUse starts two `tokenbroker serve` processes on
// one data directory: the second fails within seconds, saying which
// directory is in use and by which process, and the first goes on serving
// and stops on SIGTERM.
func TestSecondServeOnADataDirInUse(t *testing.T) {
	t.Parallel()
	bin := sharedBinary(t)
	dataDir := t.TempDir()
	path := serveConfig(t, dataDir)
	env := cliEnv(map[string]string{app.MasterKeyEnv: masterKeyValue})

	first := startProcess(t, env, bin, "serve", "--config", path)
	first.waitFor(t, serveReady, 60*time.Second)

	began := time.Now()
	second := startProcess(t, env, bin, "serve", "--config", path)
	if !second.wait(10 * time.Second) {
		t.Fatalf("the second serve on %s still runs after 10s; stderr:\n%s", dataDir, second.stderr.String())
	}
	took := time.Since(began)
	t.Logf("the second serve exited after %s with %v", took, second.err)
	if code := second.cmd.ProcessState.ExitCode(); code != exitFailure {
		t.Errorf("the second serve exited with code %d, want %d", code, exitFailure)
	}
	msg := second.stderr.String()
	for _, want := range []string{dataDir, fmt.Sprintf("process %d", first.cmd.Process.Pid), "in use"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the second serve's stderr does not mention %q:\n%s", want, msg)
		}
	}

	select {
	case <-first.exited:
		t.Fatalf("the first serve exited (%v) when the second started; stderr:\n%s", first.err, first.stderr.String())
	default:
	}
	first.signal(t, syscall.SIGTERM)
	if !first.wait(20 * time.Second) {
		t.Fatalf("the first serve did not stop within 20s of SIGTERM; stderr:\n%s", first.stderr.String())
	}
	if first.err != nil {
		t.Errorf("the first serve exited with %v after SIGTERM, want success; stderr:\n%s", first.err, first.stderr.String())
	}
}

// TestServeHonoursSignalsDuringStartUp sends SIGINT or SIGTERM to `tokenbroker
// serve` at moments spread over its start-up (config read, embedded etcd
// start, store, servers) and after: each time the process exits within
// seconds, with success.
func TestServeHonoursSignalsDuringStartUp(t *testing.T) {
	t.Parallel()
	bin := sharedBinary(t)
	env := cliEnv(map[string]string{app.MasterKeyEnv: masterKeyValue})
	tests := []struct {
		sig   syscall.Signal
		after time.Duration
	}{
		{syscall.SIGTERM, 0},
		{syscall.SIGINT, 30 * time.Millisecond},
		{syscall.SIGTERM, 100 * time.Millisecond},
		{syscall.SIGINT, 250 * time.Millisecond},
		{syscall.SIGTERM, 500 * time.Millisecond},
		{syscall.SIGINT, time.Second},
		{syscall.SIGTERM, 2 * time.Second},
	}
	for _, tt := range tests {
		dataDir := t.TempDir()
		p := startProcess(t, env, bin, "serve", "--config", serveConfig(t, dataDir))
		time.Sleep(tt.after)
		p.signal(t, tt.sig)
		sent := time.Now()
		if !p.wait(15 * time.Second) {
			t.Fatalf("%s %s after the start: serve still runs 15s later; stderr:\n%s", tt.sig, tt.after, p.stderr.String())
		}
		state := "before serving"
		if strings.Contains(p.stderr.String(), serveReady) {
			state = "while serving"
		}
		t.Logf("%s %s after the start (%s): exited after %s with %v", tt.sig, tt.after, state, time.Since(sent).Round(time.Millisecond), p.err)
		// Before the runtime installs its handler (the first milliseconds),
		// the signal's default action ends the process: honoured too.
		ws, _ := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
		if p.err != nil && !(ws.Signaled() && ws.Signal() == tt.sig) {
			t.Errorf("%s %s after the start: serve exited with %v, want success; stderr:\n%s", tt.sig, tt.after, p.err, p.stderr.String())
		}
	}
}
