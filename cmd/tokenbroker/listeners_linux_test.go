//go:build linux

package main

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/app"
)

// TestServeListensOnlyOnConfiguredPorts runs `tokenbroker serve` with the
// embedded etcd as a subprocess and lists the TCP sockets it listens on: only
// the configured gRPC, HTTP and metrics addresses, nothing for etcd, whose sockets are
// unix sockets in a directory of the data directory only the owner can enter.
func TestServeListensOnlyOnConfiguredPorts(t *testing.T) {
	t.Parallel()
	bin := buildTokenbroker(t, t.TempDir())
	dataDir := t.TempDir()
	path := writeConfig(t, fmt.Sprintf("grpc_addr: 127.0.0.1:0\nhttp_addr: 127.0.0.1:0\nmetrics_addr: 127.0.0.1:0\ndata_dir: %s\nshutdown_timeout: 5s\n%s",
		dataDir, testKeyYAML("svc", "token")))

	var stderr syncBuffer
	cmd := exec.Command(bin, "serve", "--config", path)
	cmd.Env = cliEnv(map[string]string{app.MasterKeyEnv: masterKeyValue})
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
			t.Errorf("tokenbroker serve did not stop within 20s of SIGTERM; stderr:\n%s", stderr.String())
		}
	})

	var grpcAddr, httpAddr, metricsAddr string
	deadline := time.After(30 * time.Second)
	for grpcAddr == "" || httpAddr == "" || metricsAddr == "" {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("tokenbroker serve exited (%v) before logging its addresses; stderr:\n%s", err, stderr.String())
		case <-deadline:
			t.Fatalf("tokenbroker serve logged no addresses within 30s; stderr:\n%s", stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if m := grpcAddrLog.FindStringSubmatch(stderr.String()); m != nil {
			grpcAddr = m[1]
		}
		if m := httpAddrLog.FindStringSubmatch(stderr.String()); m != nil {
			httpAddr = m[1]
		}
		if m := metricsAddrLog.FindStringSubmatch(stderr.String()); m != nil {
			metricsAddr = m[1]
		}
	}

	tcp, unix := listeners(t, cmd.Process.Pid)
	t.Logf("tokenbroker serve listens on TCP %v and on unix sockets %v", tcp, unix)
	want := []string{grpcAddr, httpAddr, metricsAddr}
	slices.Sort(want)
	if !slices.Equal(tcp, want) {
		t.Errorf("tokenbroker serve listens on TCP %v, want only the configured %v", tcp, want)
	}
	sockDir := filepath.Join(dataDir, "sock")
	if want := []string{filepath.Join(sockDir, "client"), filepath.Join(sockDir, "peer")}; !slices.Equal(unix, want) {
		t.Errorf("tokenbroker serve listens on unix sockets %v, want the embedded etcd's %v", unix, want)
	}

	info, err := os.Stat(sockDir)
	if err != nil {
		t.Fatalf("the embedded etcd's socket directory: %v", err)
	}
	if perm := info.Mode().Perm(); perm != 0o700 {
		t.Errorf("%s has mode %v, want drwx------", sockDir, info.Mode())
	}
	for _, name := range []string{"client", "peer"} {
		p := filepath.Join(sockDir, name)
		info, err := os.Lstat(p)
		if err != nil {
			t.Errorf("the embedded etcd's %s socket: %v", name, err)
			continue
		}
		if info.Mode().Type() != fs.ModeSocket {
			t.Errorf("%s is %v, want a unix socket", p, info.Mode())
		}
	}
}

// listeners returns the sorted addresses of the TCP sockets and the paths of
// the unix sockets that process pid listens on. /proc/<pid>/net/* list every
// socket of the process's network namespace, so only the inodes among its
// file descriptors count.
func listeners(t *testing.T, pid int) (tcp, unix []string) {
	t.Helper()
	fdDir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, err := os.ReadDir(fdDir)
	if err != nil {
		t.Fatal(err)
	}
	inodes := make(map[string]bool)
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		if inode, ok := strings.CutPrefix(target, "socket:["); ok {
			inodes[strings.TrimSuffix(inode, "]")] = true
		}
	}
	for _, table := range []string{"tcp", "tcp6"} {
		// sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...
		for _, f := range procNet(t, pid, table) {
			if len(f) >= 10 && f[3] == "0A" && inodes[f[9]] { // 0A: TCP_LISTEN
				tcp = append(tcp, procNetAddr(t, f[1]))
			}
		}
	}
	// Num RefCount Protocol Flags Type St Inode Path
	for _, f := range procNet(t, pid, "unix") {
		if len(f) >= 8 && f[3] == "00010000" && inodes[f[6]] { // __SO_ACCEPTCON: listening
			unix = append(unix, f[7])
		}
	}
	slices.Sort(tcp)
	slices.Sort(unix)
	return tcp, unix
}

// procNet returns the fields of each line of /proc/<pid>/net/<table> but the
// header.
func procNet(t *testing.T, pid int, table string) [][]string {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, table))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	rows := make([][]string, 0, len(lines))
	for _, line := range lines[1:] {
		rows = append(rows, strings.Fields(line))
	}
	return rows
}

// procNetAddr decodes an address of /proc/net/tcp or tcp6, "0100007F:1F90":
// the IP as 32-bit words in host byte order, the port in hex.
func procNetAddr(t *testing.T, s string) string {
	t.Helper()
	ipHex, portHex, ok := strings.Cut(s, ":")
	raw, err := hex.DecodeString(ipHex)
	if !ok || err != nil || (len(raw) != 4 && len(raw) != 16) {
		t.Fatalf("unexpected address %q in /proc/net/tcp", s)
	}
	for i := 0; i < len(raw); i += 4 {
		binary.NativeEndian.PutUint32(raw[i:], binary.BigEndian.Uint32(raw[i:]))
	}
	port, err := strconv.ParseUint(portHex, 16, 16)
	if err != nil {
		t.Fatalf("unexpected port in address %q in /proc/net/tcp", s)
	}
	ip, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(ip.Unmap(), uint16(port)).String()
}
