//go:build unix

package embedetcd

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"
)

// TestMain fails the package when a stopped member leaves a goroutine behind.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func start(t *testing.T, dir string) *Server {
	t.Helper()
	srv, err := Start(t.Context(), Config{Dir: dir, Fast: true, NoFsync: true})
	if err != nil {
		t.Fatalf("Start(%s): %v", dir, err)
	}
	return srv
}

// roundTrip writes key through the member's endpoint when value is not
// empty, and returns what the member holds for key.
func roundTrip(t *testing.T, srv *Server, key, value string) string {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("client of %s: %v", srv.Endpoint(), err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if value != "" {
		if _, err := cli.Put(ctx, key, value); err != nil {
			t.Fatalf("put %s through %s: %v", key, srv.Endpoint(), err)
		}
	}
	resp, err := cli.Get(ctx, key)
	if err != nil {
		t.Fatalf("get %s through %s: %v", key, srv.Endpoint(), err)
	}
	if len(resp.Kvs) == 0 {
		return ""
	}
	return string(resp.Kvs[0].Value)
}

// checkSockets fails unless the client and peer sockets are in dataDir's
// socket directory and only the owner may enter it.
func checkSockets(t *testing.T, dataDir string) {
	t.Helper()
	sockDir := filepath.Join(dataDir, SocketDir)
	info, err := os.Stat(sockDir)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o700 {
		t.Errorf("%s has mode %v, want drwx------", sockDir, info.Mode())
	}
	for _, name := range []string{"client", "peer"} {
		info, err := os.Lstat(filepath.Join(sockDir, name))
		if err != nil {
			t.Errorf("the %s socket: %v", name, err)
			continue
		}
		if info.Mode().Type() != fs.ModeSocket {
			t.Errorf("%s is %v, want a unix socket", filepath.Join(sockDir, name), info.Mode())
		}
	}
}

func TestStartServesOnUnixSockets(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	srv := start(t, dir)
	defer srv.Close()
	if want := "unix://" + filepath.Join(dir, SocketDir, "client"); srv.Endpoint() != want {
		t.Errorf("Endpoint() = %q, want %q", srv.Endpoint(), want)
	}
	checkSockets(t, dir)
	if got := roundTrip(t, srv, "k", "v"); got != "v" {
		t.Errorf("get k = %q, want v", got)
	}
}

// TestStartDataDirWithSeparators: a data directory whose name holds what
// separates etcd's lists (a test's name with a comma, for one) still works.
func TestStartDataDirWithSeparators(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "a,b=c d")
	srv := start(t, dir)
	defer srv.Close()
	checkSockets(t, dir)
	if got := roundTrip(t, srv, "k", "v"); got != "v" {
		t.Errorf("get k = %q, want v", got)
	}
}

// TestStartLongDataDir starts in a data directory whose socket paths are
// too long for a socket address, twice: the sockets are still in the data
// directory, reached through a short link that Close removes, and the data
// survives the restart.
func TestStartLongDataDir(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), strings.Repeat("d", 60), strings.Repeat("e", 60))
	srv := start(t, dir)
	checkSockets(t, dir)
	if got := roundTrip(t, srv, "k", "v"); got != "v" {
		t.Errorf("get k = %q, want v", got)
	}
	link := strings.TrimPrefix(srv.Endpoint(), "unix://")
	if len(link) > maxSocketPath {
		t.Errorf("Endpoint() = %q, longer than %d bytes", srv.Endpoint(), maxSocketPath)
	}
	srv.Close()
	if _, err := os.Lstat(filepath.Dir(filepath.Dir(link))); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the short link's directory after Close: %v, want it removed", err)
	}

	srv = start(t, dir)
	defer srv.Close()
	if got := roundTrip(t, srv, "k", ""); got != "v" {
		t.Errorf("get k after a restart = %q, want v", got)
	}
}

// TestStartReplacesStaleSockets: the sockets of a member that was killed,
// left in the socket directory, do not stop the next start.
func TestStartReplacesStaleSockets(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	sockDir := filepath.Join(dir, SocketDir)
	if err := os.MkdirAll(sockDir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"client", "peer"} {
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(sockDir, name), Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		l.SetUnlinkOnClose(false) // as a killed process leaves it
		l.Close()
	}
	srv := start(t, dir)
	defer srv.Close()
	checkSockets(t, dir)
	if got := roundTrip(t, srv, "k", "v"); got != "v" {
		t.Errorf("get k = %q, want v", got)
	}
}

// TestStartInUse: a second member on a data directory fails at once and
// leaves the running member's sockets alone.
func TestStartInUse(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	srv := start(t, dir)
	defer srv.Close()
	second, err := Start(t.Context(), Config{Dir: dir, Fast: true, NoFsync: true})
	if !errors.Is(err, ErrInUse) {
		if second != nil {
			second.Close()
		}
		t.Fatalf("second Start on %s: %v, want ErrInUse", dir, err)
	}
	if got := roundTrip(t, srv, "k", "v"); got != "v" {
		t.Errorf("get k from the first member = %q, want v", got)
	}
}

// TestStartTightensSocketDir: a socket directory that exists with a looser
// mode is made private again.
func TestStartTightensSocketDir(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, SocketDir), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(dir, SocketDir), 0o755); err != nil {
		t.Fatal(err)
	}
	srv := start(t, dir)
	defer srv.Close()
	checkSockets(t, dir)
}
