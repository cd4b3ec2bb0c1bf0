// Package embedetcd starts a single-member etcd inside the process, the
// broker's default store when no external cluster is configured.
//
// The member has no authentication of its own: whoever can reach it can
// write any record. It therefore listens on no TCP port, only on unix
// sockets in a directory of the data directory that only the owner may
// enter (SocketDir, mode 0700).
package embedetcd

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/fileutil"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Config configures an embedded etcd member.
type Config struct {
	// Dir is the data directory; it is created when missing and reused on the
	// next start, so the store survives restarts.
	Dir string
	// Logger receives etcd's own logs; nil discards them.
	Logger *zap.Logger
	// Fast shortens the raft tick and election timeout; for tests.
	Fast bool
	// NoFsync skips fsync; only for throwaway test stores.
	NoFsync bool
	// ReadyTimeout bounds the wait for the member to be ready; default 30s.
	ReadyTimeout time.Duration
}

// singleMemberCatchUpEntries is the raft log kept in memory after a
// snapshot.
const singleMemberCatchUpEntries = 100

// SocketDir is the directory of the data directory that holds the member's
// sockets, "client" and "peer", and the lock that keeps a second member off
// the data directory.
const SocketDir = "sock"

// maxSocketPath is the longest unix socket path that binds on every system:
// sun_path holds 108 bytes on Linux and 104 on the BSDs and macOS, the
// terminating NUL included.
const maxSocketPath = 103

// ErrInUse is returned by Start when another member, in this process or
// another, runs on the data directory.
var ErrInUse = errors.New("embedded etcd: the data directory is in use by another member")

// Server is a running embedded etcd member.
type Server struct {
	etcd     *embed.Etcd
	quiet    *atomic.Bool
	endpoint string
	lock     *fileutil.LockedFile
	linkDir  string // holds a short link to the socket directory; "" without one
}

// Start starts the member with its sockets in SocketDir of the data
// directory and waits until it serves. It returns ErrInUse when another
// member runs on the data directory, an error when the data directory cannot
// be used or the member is not ready within the timeout; cancelling ctx
// abandons the wait and stops the member. A socket file left behind by a
// member that was killed is replaced.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: data dir: %w", err)
	}
	sockDir := filepath.Join(dir, SocketDir)
	if err := os.MkdirAll(sockDir, 0o700); err != nil {
		return nil, fmt.Errorf("embedded etcd: %w", err)
	}
	// MkdirAll leaves the mode of a directory that exists alone.
	if err := os.Chmod(sockDir, 0o700); err != nil {
		return nil, fmt.Errorf("embedded etcd: %w", err)
	}
	// etcd removes whatever file is at a socket's path before it binds (a
	// socket left by a killed member must not stop the start), and it binds
	// before it waits for the data directory's own lock: without this lock a
	// second member would take the sockets of the one that runs.
	lockPath := filepath.Join(sockDir, "lock")
	lock, err := fileutil.TryLockFile(lockPath, os.O_WRONLY|os.O_CREATE, 0o600)
	if errors.Is(err, fileutil.ErrLocked) {
		holder := ""
		if pid, err := os.ReadFile(lockPath); err == nil && len(pid) > 0 && len(pid) < 16 {
			holder = " (process " + strings.TrimSpace(string(pid)) + ")"
		}
		return nil, fmt.Errorf("%w: %s%s", ErrInUse, dir, holder)
	}
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: %w", err)
	}
	// Who holds it, for the message of the next one that tries.
	if err := lock.Truncate(0); err == nil {
		_, _ = lock.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	// A process that does not take the lock above (an etcd started by hand
	// on the directory, an older broker) would make etcd wait for its
	// database without end, deaf to ctx.
	if db := filepath.Join(dir, "member", "snap", "db"); dbLocked(db) {
		lock.Close()
		return nil, fmt.Errorf("%w: %s (another process holds %s)", ErrInUse, dir, db)
	}
	s := &Server{lock: lock, quiet: new(atomic.Bool)}
	bindDir, err := s.bindDir(sockDir)
	if err != nil {
		s.release()
		return nil, err
	}
	if err := s.start(ctx, cfg, dir, bindDir); err != nil {
		s.release()
		return nil, err
	}
	return s, nil
}

// bindDir returns the directory name the sockets are bound and dialled
// through: sockDir itself, or, when that name is too long for a socket
// address (t.TempDir() and deep data directories), a short symbolic link to
// sockDir in a new private temporary directory. Binding through the link
// creates the sockets in sockDir all the same, guarded by its mode; the
// link's directory is removed on Close (a killed member leaves it behind,
// harmless: it only points at the data directory).
func (s *Server) bindDir(sockDir string) (string, error) {
	const longest = "client"
	if len(filepath.Join(sockDir, longest)) <= maxSocketPath {
		return sockDir, nil
	}
	tmp, err := os.MkdirTemp("", "tbetcd-")
	if err != nil {
		return "", fmt.Errorf("embedded etcd: a short name for the socket directory: %w", err)
	}
	s.linkDir = tmp
	link := filepath.Join(tmp, "s")
	if err := os.Symlink(sockDir, link); err != nil {
		return "", fmt.Errorf("embedded etcd: a short name for the socket directory: %w", err)
	}
	if p := filepath.Join(link, longest); len(p) > maxSocketPath {
		return "", fmt.Errorf("embedded etcd: socket path %s is longer than the %d bytes a unix socket address holds; set TMPDIR to a shorter directory", p, maxSocketPath)
	}
	return link, nil
}

// start starts etcd on the sockets in bindDir.
func (s *Server) start(ctx context.Context, cfg Config, dir, bindDir string) error {
	ec := embed.NewConfig()
	ec.Name = "tokenbroker"
	ec.Dir = dir
	client := url.URL{Scheme: "unix", Path: filepath.Join(bindDir, "client")}
	ec.ListenClientUrls = []url.URL{client}
	ec.AdvertiseClientUrls = []url.URL{client}
	// etcd binds a peer URL's host, not its path, and a URL's host cannot
	// hold a "/": the listener gets the socket's path as its host. The
	// advertised peer URL only names the member in the cluster (it has no
	// other peer to dial it) and must equal the one etcd parses from
	// InitialCluster, a list split at "," and "=": it names the socket
	// relative to the data directory, the same wherever the directory is.
	ec.ListenPeerUrls = []url.URL{{Scheme: "unix", Host: filepath.Join(bindDir, "peer")}}
	peer, err := url.Parse("unix:" + SocketDir + "/peer")
	if err != nil {
		return fmt.Errorf("embedded etcd: %w", err)
	}
	ec.AdvertisePeerUrls = []url.URL{*peer}
	ec.InitialCluster = ec.Name + "=" + peer.String()
	ec.ListenMetricsUrls = nil // no metrics listener: the broker serves its own
	ec.AutoCompactionMode = "periodic"
	ec.AutoCompactionRetention = "1h"
	ec.UnsafeNoFsync = cfg.NoFsync
	// A single member has no follower to catch up: the raft log kept in
	// memory after a snapshot can be short (the default, 5000 entries,
	// holds every token record written lately in memory once more).
	ec.SnapshotCatchUpEntries = singleMemberCatchUpEntries
	if cfg.Fast {
		ec.TickMs = 10
		ec.ElectionMs = 100
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	// Stopping the member logs "server closed" and "use of closed network
	// connection" at error level; nothing it says after Close is news.
	quiet := s.quiet
	log = log.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core { return &quietCore{Core: c, quiet: quiet} }))
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(log)

	e, err := embed.StartEtcd(ec)
	if err != nil {
		return fmt.Errorf("embedded etcd: start in %s: %w", dir, err)
	}
	timeout := cfg.ReadyTimeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	select {
	case <-e.Server.ReadyNotify():
		s.etcd = e
		// The form clientv3 dials as an absolute path.
		s.endpoint = "unix://" + client.Path
		return nil
	case err := <-e.Err():
		e.Close()
		return fmt.Errorf("embedded etcd: %w", err)
	case <-time.After(timeout):
		e.Close()
		return fmt.Errorf("embedded etcd: not ready after %s", timeout)
	case <-ctx.Done():
		e.Close()
		return ctx.Err()
	}
}

// Endpoint is the client URL, e.g. "unix:///var/lib/tokenbroker/sock/client".
func (s *Server) Endpoint() string {
	return s.endpoint
}

// Close stops the member and waits until it has stopped.
func (s *Server) Close() {
	s.quiet.Store(true)
	s.etcd.Close()
	s.release()
}

// release removes the short link and lets another member start.
func (s *Server) release() {
	if s.linkDir != "" {
		os.RemoveAll(s.linkDir)
	}
	s.lock.Close()
}

// quietCore drops every entry once quiet is set.
type quietCore struct {
	zapcore.Core
	quiet *atomic.Bool
}

func (c *quietCore) With(fields []zapcore.Field) zapcore.Core {
	return &quietCore{Core: c.Core.With(fields), quiet: c.quiet}
}

func (c *quietCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.quiet.Load() {
		return ce
	}
	return c.Core.Check(e, ce)
}
