package broker

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"

	"github.com/tokenbroker/tokenbroker/internal/embedetcd"
	"github.com/tokenbroker/tokenbroker/internal/testkeys"
	"github.com/tokenbroker/tokenbroker/sandbox"
)

// Helpers of the acceptance tests of the leader-elected refresher (issue 4):
// brokers that share one etcd the way replicas do, each with its own etcd
// client so that one can be killed without the others noticing; a front
// for the sandbox provider that can hold or slow its answers; and an etcd
// member that can be stopped and started again on the same data directory.
//
// The long acceptance scenarios run a short version by default and the
// full one with TOKENBROKER_LONG=1, e.g.
//
//	TOKENBROKER_LONG=1 go test -race -count=1 -run 'TestRefresher' -v ./broker/

// longScenarios reports whether TOKENBROKER_LONG=1 asks for the full scenarios.
func longScenarios() bool { return os.Getenv("TOKENBROKER_LONG") == "1" }

// shortOrLong returns short, or long when TOKENBROKER_LONG=1, and logs which.
func shortOrLong[T any](t *testing.T, what string, short, long T) T {
	t.Helper()
	if longScenarios() {
		t.Logf("%s: %v (long version, TOKENBROKER_LONG=1)", what, long)
		return long
	}
	t.Logf("%s: %v (short version; TOKENBROKER_LONG=1 runs %v)", what, short, long)
	return short
}

// fleetConfig is the Config of a replica in these tests: short etcd
// timeouts, a 2-second session TTL so that a dead replica's leadership and
// locks lapse quickly, and the test keyring so that replicas open each
// other's records.
func fleetConfig() Config {
	return Config{
		StoreTimeout:  2 * time.Second,
		FetchTimeout:  10 * time.Second,
		DefaultMinTTL: time.Minute,
		SessionTTL:    2,
		Keyring:       testkeys.Keyring(),
		CooldownBase:  time.Millisecond,
	}
}

// fleetReplica is one broker instance with an etcd client of its own.
type fleetReplica struct {
	*Broker
	name   string
	cli    *clientv3.Client
	killed atomic.Bool
	dead   chan struct{} // closed when a killed replica has stopped
}

// newFleetReplica starts a broker named name on a new client of endpoint;
// it is closed (unless killed) and its client closed when the test ends.
func newFleetReplica(t *testing.T, endpoint, name string, cfg Config) *fleetReplica {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("etcd client of %s: %v", name, err)
	}
	cfg.Client = cli
	cfg.Replica = name
	log := zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel))
	if cfg.Logger != nil { // the test's own core, e.g. an observer, sees the logs too
		log = zap.New(zapcore.NewTee(log.Core(), cfg.Logger.Core()))
	}
	cfg.Logger = log.With(zap.String("replica", name))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := New(ctx, cfg)
	if err != nil {
		cli.Close()
		t.Fatalf("New(%s): %v", name, err)
	}
	r := &fleetReplica{Broker: b, name: name, cli: cli, dead: make(chan struct{})}
	t.Cleanup(func() {
		if r.killed.Load() {
			<-r.dead
			return
		}
		if err := b.Close(); err != nil {
			t.Errorf("close %s: %v", name, err)
		}
		cli.Close()
	})
	return r
}

// kill stops r the way a crash does, as far as etcd and the provider can
// tell: its etcd client goes away first (no resign, no lease revocation:
// its leadership and locks lapse only with the session TTL), then its
// in-flight work is abandoned (Close cancels its requests to the provider
// at once). kill returns at once; what is left of r winds down in the
// background (its Close fails or times out: etcd is gone for it) and the
// test's cleanup waits for it.
func (r *fleetReplica) kill() {
	r.killed.Store(true)
	r.cli.Close()
	go func() {
		defer close(r.dead)
		_ = r.Close()
	}()
}

// leads reports whether r leads shard.
func (r *fleetReplica) leads(shard int) bool {
	return slices.Contains(r.LeadingShards(), shard)
}

// leaderAmong returns the replica of rs that leads shard, or nil when none
// does or more than one think they do.
func leaderAmong(rs []*fleetReplica, shard int) *fleetReplica {
	var found *fleetReplica
	for _, r := range rs {
		if r.leads(shard) {
			if found != nil {
				return nil
			}
			found = r
		}
	}
	return found
}

// waitForLeader waits until exactly one of rs leads shard and returns it.
func waitForLeader(t *testing.T, rs []*fleetReplica, shard int) *fleetReplica {
	t.Helper()
	var l *fleetReplica
	eventually(t, fmt.Sprintf("exactly one replica leading shard %d", shard), func() bool {
		l = leaderAmong(rs, shard)
		return l != nil
	})
	return l
}

// sandboxFront is an httptest server in front of a sandbox: it can slow
// every token request down, hold the next ones until the test releases
// them (a held request reaches the sandbox only then; one whose client
// gives up is dropped unseen, as a request lost in the network), and add a
// Retry-After header to the sandbox's answers.
type sandboxFront struct {
	*httptest.Server
	sb *sandbox.Server

	delay      atomic.Int64 // nanoseconds before each token request goes on
	retryAfter atomic.Pointer[string]

	mu    sync.Mutex
	holds []*heldRequest // waiting for a request
	all   []*heldRequest // released when the test ends
}

// heldRequest is one held token request.
type heldRequest struct {
	arrived  chan struct{} // closed when the request arrives
	release  chan struct{} // closed by the test: the request goes on
	answered chan struct{} // closed when the sandbox has answered it
	answer   []byte        // the sandbox's answer, once answered
	// evenIfGone: the sandbox handles the request once released even if
	// its client gave up meanwhile (an answer lost on the way back).
	evenIfGone bool
	once       sync.Once
}

// Release lets the held request go on to the sandbox.
func (h *heldRequest) Release() { h.once.Do(func() { close(h.release) }) }

// newSandboxFront starts a sandbox with cfg (the test client added) behind
// a front.
func newSandboxFront(t *testing.T, cfg sandbox.Config) *sandboxFront {
	t.Helper()
	if cfg.Clients == nil {
		cfg.Clients = map[string]string{sandboxClientID: sandboxClientSecret}
	}
	sb, err := sandbox.New(cfg)
	if err != nil {
		t.Fatalf("sandbox.New: %v", err)
	}
	f := &sandboxFront{sb: sb}
	f.Server = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(func() {
		f.mu.Lock()
		for _, h := range f.all {
			h.Release()
		}
		f.mu.Unlock()
		f.Close()
	})
	return f
}

func (f *sandboxFront) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == sandbox.TokenPath {
		// Read the body first: only then does the server notice a client
		// that gives up (r.Context ends).
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		f.mu.Lock()
		var h *heldRequest
		if len(f.holds) > 0 {
			h, f.holds = f.holds[0], f.holds[1:]
		}
		f.mu.Unlock()
		if h != nil {
			close(h.arrived)
			select {
			case <-h.release:
			case <-r.Context().Done():
				if !h.evenIfGone {
					return
				}
				<-h.release // the provider handles it all the same
			}
			rec := httptest.NewRecorder()
			f.sb.ServeHTTP(rec, r)
			maps.Copy(w.Header(), rec.Header())
			w.WriteHeader(rec.Code)
			_, _ = w.Write(rec.Body.Bytes())
			h.answer = rec.Body.Bytes()
			close(h.answered)
			return
		}
		if d := time.Duration(f.delay.Load()); d > 0 {
			select {
			case <-time.After(d):
			case <-r.Context().Done():
				return
			}
		}
		if ra := f.retryAfter.Load(); ra != nil {
			w.Header().Set("Retry-After", *ra)
		}
	}
	f.sb.ServeHTTP(w, r)
}

// holdNext holds the next token request that arrives.
func (f *sandboxFront) holdNext() *heldRequest {
	h := &heldRequest{arrived: make(chan struct{}), release: make(chan struct{}), answered: make(chan struct{})}
	f.mu.Lock()
	f.holds = append(f.holds, h)
	f.all = append(f.all, h)
	f.mu.Unlock()
	return h
}

// TokenURL is the sandbox's token endpoint behind the front.
func (f *sandboxFront) TokenURL() string { return f.URL + sandbox.TokenPath }

// whoami asks the sandbox's protected resource whether it accepts token.
func (f *sandboxFront) whoami(t *testing.T, token string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, f.URL+sandbox.WhoamiPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", sandbox.WhoamiPath, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// grantTypeCounts counts the token requests the sandbox received by
// grant_type.
func grantTypeCounts(sb *sandbox.Server) map[string]int {
	out := map[string]int{}
	for _, r := range sb.Requests() {
		out[r.Form.Get("grant_type")]++
	}
	return out
}

// restartableEtcd is an embedded etcd member that a test can stop and start
// again on the same data directory. Clients follow it across a restart with
// follow.
type restartableEtcd struct {
	t   *testing.T
	dir string

	mu  sync.Mutex
	srv *embedetcd.Server
}

func startRestartableEtcd(t *testing.T) *restartableEtcd {
	t.Helper()
	e := &restartableEtcd{t: t, dir: t.TempDir()}
	e.start()
	t.Cleanup(e.stop)
	return e
}

// start starts the member on its data directory; it must be stopped.
func (e *restartableEtcd) start() {
	e.t.Helper()
	srv, err := embedetcd.Start(context.Background(), embedetcd.Config{Dir: e.dir, Fast: true})
	if err != nil {
		e.t.Fatalf("start embedded etcd in %s: %v", e.dir, err)
	}
	e.mu.Lock()
	e.srv = srv
	e.mu.Unlock()
}

// stop stops the member; stopping a stopped member does nothing.
func (e *restartableEtcd) stop() {
	e.mu.Lock()
	srv := e.srv
	e.srv = nil
	e.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
}

// stopWhileCalled starts stopping the member and returns once cli's
// requests fail, which is at once: the member then serves only the
// streams it had open, for up to its request timeout, before it is gone.
// closed is closed when the member has stopped.
func (e *restartableEtcd) stopWhileCalled(cli *clientv3.Client) (closed <-chan struct{}) {
	e.t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.stop()
	}()
	pollFor(e.t, "etcd to refuse requests", 5*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_, err := cli.Get(ctx, "unreachable?")
		return err != nil
	})
	return done
}

// endpoint is the client URL of the running member.
func (e *restartableEtcd) endpoint() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.srv.Endpoint()
}

// follow points cli at the running member and has it dial at once. The
// client URL may change on every start (a data directory too long for a
// socket address is reached through a new short link); when it does not,
// the client would wait out the backoff its failed dials during the outage
// earned.
func (e *restartableEtcd) follow(cli *clientv3.Client) {
	cli.SetEndpoints(e.endpoint())
	cli.ActiveConnection().ResetConnectBackoff()
}

// latencyLog collects call durations from many goroutines.
type latencyLog struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencyLog) add(d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

// summary returns the count, the 50th and 99th percentiles, the maximum and
// the count above slow.
func (l *latencyLog) summary(slow time.Duration) (n int, p50, p99, maxd time.Duration, slower int) {
	l.mu.Lock()
	d := slices.Clone(l.d)
	l.mu.Unlock()
	if len(d) == 0 {
		return 0, 0, 0, 0, 0
	}
	slices.Sort(d)
	for _, x := range d {
		if x > slow {
			slower++
		}
	}
	return len(d), d[len(d)/2], d[len(d)*99/100], d[len(d)-1], slower
}

// pollFor polls cond every 5ms until it holds or within passes, and returns
// how long it took; it fails the test after within.
func pollFor(t *testing.T, what string, within time.Duration, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("gave up after %v waiting for %s", within, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}
