// Package embedetcd starts a single-member etcd inside the process, the
// broker's default store when no external cluster is configured.
package embedetcd

import (
	"context"
	"fmt"
	"net/url"
	"sync/atomic"
	"time"

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

// Server is a running embedded etcd member.
type Server struct {
	etcd  *embed.Etcd
	quiet *atomic.Bool
}

// Start starts the member on loopback ports chosen by the kernel and waits
// until it serves. It returns an error when the data directory cannot be used
// or the member is not ready within the timeout; cancelling ctx abandons the
// wait and stops the member.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	ec := embed.NewConfig()
	ec.Name = "tokenbroker"
	ec.Dir = cfg.Dir
	loopback := url.URL{Scheme: "http", Host: "127.0.0.1:0"}
	ec.ListenClientUrls = []url.URL{loopback}
	ec.AdvertiseClientUrls = []url.URL{loopback}
	// The member talks to no peer; the kernel picks the peer port too.
	peer := loopback
	ec.ListenPeerUrls = []url.URL{peer}
	ec.AdvertisePeerUrls = []url.URL{peer}
	ec.InitialCluster = ec.Name + "=" + peer.String()
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
	quiet := new(atomic.Bool)
	log = log.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core { return &quietCore{Core: c, quiet: quiet} }))
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(log)

	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: start in %s: %w", cfg.Dir, err)
	}
	timeout := cfg.ReadyTimeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	select {
	case <-e.Server.ReadyNotify():
		return &Server{etcd: e, quiet: quiet}, nil
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd: %w", err)
	case <-time.After(timeout):
		e.Close()
		return nil, fmt.Errorf("embedded etcd: not ready after %s", timeout)
	case <-ctx.Done():
		e.Close()
		return nil, ctx.Err()
	}
}

// Endpoint is the client URL, e.g. "http://127.0.0.1:41234".
func (s *Server) Endpoint() string {
	return "http://" + s.etcd.Clients[0].Addr().String()
}

// Close stops the member and waits until it has stopped.
func (s *Server) Close() {
	s.quiet.Store(true)
	s.etcd.Close()
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
