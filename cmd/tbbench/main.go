// Command tbbench measures tokenbroker against the ceilings of its own
// stack on the machine it runs on, in one run: gRPC and REST GetToken of a
// cached token against echo servers on the same stack (alternating rounds
// at several concurrencies), the etcd requests of the hit path, memory
// with 100k cached tokens, the provider calls of a thundering herd on
// several instances, and the start of `tokenbroker dev`.
//
// Run it from the module's root:
//
//	go run ./cmd/tbbench -markdown bench.md
//
// The servers run in child processes (this executable again), pinned with
// taskset to the first CPU this process may use, and the load generator to
// the second, so that they do not compete for a core; -pin=false lets the
// scheduler place everything.
package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/protobuf/proto"
	"gopkg.in/yaml.v3"

	"github.com/tokenbroker/tokenbroker/app"
	"github.com/tokenbroker/tokenbroker/broker/apikey"
	"github.com/tokenbroker/tokenbroker/broker/seal"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/sandbox"
)

func main() {
	if mode := os.Getenv("TBBENCH_CHILD"); mode != "" {
		os.Exit(runChild(mode))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "tbbench:", err)
		os.Exit(1)
	}
}

// options are the command's flags.
type options struct {
	rounds        int
	warmup        time.Duration
	measure       time.Duration
	concurrency   []int
	conns         int
	scopes        []string
	grpc, rest    bool
	tokens        int
	herdCallers   int
	herdInstances int
	herdRounds    int
	devRuns       int
	tokenbroker   string
	pin           bool
	maxOther      float64
	retries       int
	markdown      string
	profile       string
	quick         bool

	// The figures of scale: the miss path, the restart, background refresh
	// across replicas and the propagation of admin changes.
	misses          int
	restart         bool
	refreshTokens   int
	refreshReplicas int
	refreshShards   int
	refreshLifetime time.Duration
	refreshWindow   time.Duration
	watchChanges    int
	watchReplicas   int
	// brokerMemLimit is the GOMEMLIMIT of the broker process of the load,
	// memory and restart figures; empty for none.
	brokerMemLimit string
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("tbbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&o.rounds, "rounds", 5, "measured rounds per target and concurrency, alternating between targets")
	fs.DurationVar(&o.warmup, "warmup", 250*time.Millisecond, "unmeasured warm-up at the start of every round")
	fs.DurationVar(&o.measure, "duration", time.Second, "measured time of every round")
	conc := fs.String("c", "1,16,64", "concurrencies (callers in flight), comma-separated")
	fs.IntVar(&o.conns, "conns", 0, "gRPC connections per target; 0 is one per 8 callers, at most 4")
	scopes := fs.String("scopes", "read,write", "scopes every GetToken names, comma-separated (empty for none)")
	fs.BoolVar(&o.grpc, "grpc", true, "measure gRPC GetToken against the grpc-go echo")
	fs.BoolVar(&o.rest, "rest", true, "measure REST GetToken against the gateway and net/http echoes")
	fs.IntVar(&o.tokens, "tokens", 100000, "cached tokens for the memory figure; 0 skips it")
	fs.StringVar(&o.brokerMemLimit, "broker-gomemlimit", "", "GOMEMLIMIT of the broker process of the load, memory and restart figures (as a deployment sets it a little under its container's memory limit, e.g. 900MiB); empty: none")
	fs.IntVar(&o.herdCallers, "herd", 1000, "concurrent callers of the herd; 0 skips it")
	fs.IntVar(&o.herdInstances, "herd-instances", 3, "broker instances of the herd, on one etcd")
	fs.IntVar(&o.herdRounds, "herd-rounds", 3, "herds on a cold key, and again at expiry")
	fs.IntVar(&o.devRuns, "dev-runs", 3, "starts of `tokenbroker dev` to time; 0 skips them")
	fs.StringVar(&o.tokenbroker, "tokenbroker", "", "tokenbroker binary for the dev start; empty builds ./cmd/tokenbroker with go build")
	fs.BoolVar(&o.pin, "pin", true, "pin the servers to one CPU and the load generator to another with taskset")
	fs.Float64Var(&o.maxOther, "max-other", 0.25, "a set of alternating rounds during which the rest of the machine kept more than this many cores busy is discarded and run again")
	fs.IntVar(&o.retries, "retries", 6, "noisy sets of rounds discarded and run again, in all; once they are used up, noisy sets are kept")
	fs.StringVar(&o.markdown, "markdown", "", "also write the report as Markdown to this file")
	fs.StringVar(&o.profile, "profile", "", "directory for CPU profiles of every server at the highest concurrency, each taken in one extra, unreported round of at least 3s, and of etcd and one replica over the background refresh figure's window")
	fs.IntVar(&o.misses, "miss", 200, "GetToken calls of keys not cached, each beside a bare provider call, for the miss-path figure; 0 skips it")
	fs.BoolVar(&o.restart, "restart", true, "restart the broker on the memory figure's tokens and time it until it serves them (needs -tokens)")
	fs.IntVar(&o.refreshTokens, "refresh", 12000, "hot tokens with short lifetimes for the background refresh figure; 0 skips it")
	fs.IntVar(&o.refreshReplicas, "refresh-replicas", 3, "broker replicas of the background refresh figure, on one etcd")
	fs.IntVar(&o.refreshShards, "refresh-shards", 12, "refresher.shards of the background refresh figure's replicas")
	fs.DurationVar(&o.refreshLifetime, "refresh-lifetime", 20*time.Second, "lifetime of the provider's tokens in the background refresh figure")
	fs.DurationVar(&o.refreshWindow, "refresh-duration", 20*time.Second, "measured time of the background refresh figure")
	fs.IntVar(&o.watchChanges, "watch", 50, "admin changes (a new API key) whose propagation to the other replicas is timed; 0 skips it")
	fs.IntVar(&o.watchReplicas, "watch-replicas", 5, "replicas of the watch figure: the change is made on one and awaited on the others")
	fs.BoolVar(&o.quick, "quick", false, "check that every part still runs, in seconds: one short round at c=16, few tokens, callers and samples; the figures mean nothing")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if o.quick {
		// Only the flags given explicitly keep their value.
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		quick := map[string]string{
			"rounds": "1", "warmup": "50ms", "duration": "200ms", "c": "16", "retries": "0",
			"tokens": "2000", "herd": "100", "herd-rounds": "1", "dev-runs": "1", "miss": "20",
			"refresh": "300", "refresh-lifetime": "6s", "refresh-duration": "3s", "watch": "5",
		}
		for name, v := range quick {
			if !set[name] {
				if err := fs.Set(name, v); err != nil {
					return nil, err
				}
			}
		}
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	for part := range strings.SplitSeq(*conc, ",") {
		c, err := strconv.Atoi(strings.TrimSpace(part))
		if err != nil || c < 1 {
			return nil, fmt.Errorf("-c: %q is not a positive number", part)
		}
		o.concurrency = append(o.concurrency, c)
	}
	for s := range strings.SplitSeq(*scopes, ",") {
		if s = strings.TrimSpace(s); s != "" {
			o.scopes = append(o.scopes, s)
		}
	}
	if o.rounds < 1 || o.measure <= 0 || o.warmup < 0 {
		return nil, errors.New("-rounds must be at least 1 and -duration positive")
	}
	return o, nil
}

// bench is one run: its options, processes and findings.
type bench struct {
	opts   *options
	log    io.Writer
	keys   []string // API keys of identities bench-0, bench-1, …
	req    *tokenbrokerv1.GetTokenRequest
	body   []byte // the same request as REST JSON
	path   string
	broker *child
	echo   *child
	// serverCPU and loadCPU are the CPUs the servers and the load generator
	// are pinned to; empty when not pinned.
	serverCPU, loadCPU string
	affinity           string
	retriesLeft        int
	res                results

	// What every broker process is configured with: the provider's client,
	// the static API keys, the master key.
	sb           *sandbox.Server
	sbURL        string
	clientID     string
	clientSecret string
	static       []app.APIKeyConfig
	masterLine   string
	keyring      *seal.Keyring
	dataDir      string // the main broker's data directory
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	opts, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	start := time.Now()
	b := &bench{opts: opts, log: stderr, path: "/v1/providers/" + benchProvider + "/token", retriesLeft: opts.retries}
	b.req = &tokenbrokerv1.GetTokenRequest{Provider: benchProvider, Scopes: opts.scopes}
	if b.body, err = json.Marshal(map[string]any{"scopes": opts.scopes}); err != nil {
		return err
	}
	b.res.env = describeEnv(args)
	if opts.pin {
		if err := b.planPinning(); err != nil {
			fmt.Fprintf(stderr, "not pinning: %v\n", err)
		}
	}
	b.res.env.pinning = "none: the scheduler places servers and load generator on any CPU"
	if b.serverCPU != "" {
		b.res.env.pinning = fmt.Sprintf("servers on CPU %s, load generator on CPU %s (taskset)", b.serverCPU, b.loadCPU)
	}
	if err := b.runAll(ctx); err != nil {
		return err
	}
	b.res.runTime = time.Since(start)
	rep := b.res.report(opts)
	fmt.Fprint(stdout, rep.text())
	if opts.markdown != "" {
		if err := os.WriteFile(opts.markdown, []byte(rep.markdown()), 0o644); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "wrote %s\n", opts.markdown)
	}
	return b.res.broken()
}

// broken reports what a run found wrong beyond its figures: tokens not
// served as written, before or after the restart. A figure that misses its
// target is not an error: the report says so.
func (r *results) broken() error {
	var errs []error
	if m := r.mem; m != nil {
		if m.mismatches > 0 || m.introspectMisses > 0 {
			errs = append(errs, fmt.Errorf("memory: %d tokens not served and %d not introspected as written", m.mismatches, m.introspectMisses))
		}
		if x := m.restart; x != nil && (x.mismatches > 0 || x.introspectMisses > 0) {
			errs = append(errs, fmt.Errorf("restart: %d tokens not served and %d not introspected as written", x.mismatches, x.introspectMisses))
		}
	}
	if r.devErr != "" {
		errs = append(errs, fmt.Errorf("dev start: %s", r.devErr))
	}
	return errors.Join(errs...)
}

// planPinning picks the first two CPUs this process may use.
func (b *bench) planPinning() error {
	if _, err := exec.LookPath("taskset"); err != nil {
		return errors.New("taskset is not installed")
	}
	aff, err := affinity(os.Getpid())
	if err != nil {
		return err
	}
	cpus, err := cpuList(aff)
	if err != nil {
		return err
	}
	if len(cpus) < 2 {
		return fmt.Errorf("only CPU %s is available", aff)
	}
	b.affinity, b.serverCPU, b.loadCPU = aff, cpus[0], cpus[1]
	return nil
}

func (b *bench) progress(format string, args ...any) {
	fmt.Fprintf(b.log, format+"\n", args...)
}

func (b *bench) runAll(ctx context.Context) error {
	// The provider, on loopback in this process.
	b.clientID = "bench-client"
	b.clientSecret = rand.Text()
	var err error
	b.sb, err = sandbox.New(sandbox.Config{Clients: map[string]string{b.clientID: b.clientSecret}, MaxRecorded: 1000})
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	sbServer := &http.Server{Handler: b.sb, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = sbServer.Serve(lis) }()
	defer sbServer.Close()
	b.sbURL = "http://" + lis.Addr().String() + sandbox.TokenPath

	// API keys: one identity per gRPC connection (at most 4).
	for i := range 4 {
		id, key, sum, err := apikey.Generate()
		if err != nil {
			return err
		}
		b.keys = append(b.keys, key)
		b.static = append(b.static, app.APIKeyConfig{ID: id, Identity: fmt.Sprintf("bench-%d", i), SHA256: sum})
	}
	master, err := seal.GenerateKey("bench")
	if err != nil {
		return err
	}
	b.masterLine = seal.FormatKey(master)
	if b.keyring, err = seal.ParseKeyEnv(b.masterLine); err != nil {
		return err
	}
	if b.dataDir, err = os.MkdirTemp("", "tbbench-broker-"); err != nil {
		return err
	}
	defer os.RemoveAll(b.dataDir)
	b.progress("starting the broker (embedded etcd, sandbox provider, API keys, policy)…")
	if b.broker, err = b.startBroker(ctx, b.serverCPU, brokerConfig(b.sbURL, b.clientID, b.clientSecret, b.static), b.dataDir); err != nil {
		return err
	}
	defer func() { b.broker.stop() }()

	// The first GetToken is a miss: the broker asks the provider. Its
	// answer is the reply the echo servers imitate.
	warm, err := dialGRPC(b.broker.ready.GRPC, 1, b.keys)
	if err != nil {
		return err
	}
	reply, err := tokenbrokerv1.NewTokenBrokerServiceClient(warm.conns[0]).GetToken(ctx, b.req)
	warm.close()
	if err != nil {
		return fmt.Errorf("first GetToken from the broker: %w", err)
	}
	b.res.providerCallsBefore = b.sb.TokenCalls()
	raw, err := proto.Marshal(reply)
	if err != nil {
		return err
	}
	b.res.grpcReplyBroker = len(raw)
	if b.echo, err = startChild(ctx, "echo", b.serverCPU, []string{"TBBENCH_CHILD=echo", "TBBENCH_REPLY=" + base64.StdEncoding.EncodeToString(raw)}); err != nil {
		return err
	}
	defer b.echo.stop()

	// The load generator on its own CPU, with one P as the servers have.
	procs := runtime.GOMAXPROCS(0)
	unpin := func() error {
		if b.loadCPU == "" {
			return nil
		}
		b.loadCPU = ""
		runtime.GOMAXPROCS(procs)
		return pinSelf(b.affinity)
	}
	if b.loadCPU != "" {
		if err := pinSelf(b.loadCPU); err != nil {
			return err
		}
		runtime.GOMAXPROCS(1)
		defer unpin() //nolint:errcheck // on an error path; the process ends
	}
	if err := b.checkReplies(ctx); err != nil {
		return err
	}
	if b.opts.grpc {
		if err := b.phase(ctx, "grpc", b.grpcPhase); err != nil {
			return err
		}
	}
	if b.opts.rest {
		if err := b.phase(ctx, "rest", b.restPhase); err != nil {
			return err
		}
	}
	b.res.providerCallsDuring = b.sb.TokenCalls() - b.res.providerCallsBefore
	b.echo.stop()
	if err := unpin(); err != nil {
		return err
	}
	// The load phases are over: the broker may now use every CPU, as it
	// would in production.
	if b.serverCPU != "" {
		if err := pin(b.broker.ready.PID, b.affinity); err != nil {
			return err
		}
		if err := b.broker.call(ctx, http.MethodPost, fmt.Sprintf("/procs?n=%d", runtime.NumCPU()), nil); err != nil {
			return err
		}
	}
	if b.opts.misses > 0 {
		if err := b.missPhase(ctx); err != nil {
			return err
		}
	}
	if b.opts.tokens > 0 {
		before := b.sb.TokenCalls()
		if err := b.memoryPhase(ctx); err != nil {
			return err
		}
		b.res.mem.providerCalls = b.sb.TokenCalls() - before
		if b.opts.restart {
			if err := b.restartPhase(ctx); err != nil {
				return err
			}
		}
	}
	b.broker.stop()

	if b.opts.refreshTokens > 0 {
		if err := b.refreshPhase(ctx); err != nil {
			return err
		}
	}
	if b.opts.watchChanges > 0 {
		if err := b.watchPhase(ctx); err != nil {
			return err
		}
	}
	if b.opts.herdCallers > 0 {
		b.progress("herd: %d instances on one etcd, %d callers at once…", b.opts.herdInstances, b.opts.herdCallers)
		h, err := runHerd(ctx, b.opts.herdInstances, b.opts.herdCallers, b.opts.herdRounds)
		b.res.herd = h
		if err != nil {
			return err
		}
	}
	if b.opts.devRuns > 0 {
		b.devPhase(ctx)
	}
	return nil
}

// startBroker starts a broker process with cfg, pinned to cpu unless it is
// empty, on the data directory dir (a temporary one when empty).
func (b *bench) startBroker(ctx context.Context, cpu string, cfg app.Config, dir string) (*child, error) {
	raw, err := yaml.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	env := []string{"TBBENCH_CHILD=broker", brokerConfigEnv + "=" + string(raw), brokerKeyEnv + "=" + b.masterLine}
	if dir != "" {
		env = append(env, dataDirEnv+"="+dir)
		// The broker of the load, memory and restart figures.
		env = append(env, "GOMEMLIMIT="+cmp.Or(b.opts.brokerMemLimit, "off"))
	}
	return startChild(ctx, "broker", cpu, env)
}

// phase runs one load phase and records the broker's etcd requests and
// log lines during it.
func (b *bench) phase(ctx context.Context, name string, f func(context.Context) error) error {
	var before, after map[string]int64
	if err := b.broker.call(ctx, http.MethodGet, "/etcd", &before); err != nil {
		return err
	}
	lines := b.broker.logs.Lines()
	if err := f(ctx); err != nil {
		return err
	}
	if err := b.broker.call(ctx, http.MethodGet, "/etcd", &after); err != nil {
		return err
	}
	b.res.etcd = append(b.res.etcd, etcdDuringLoad{phase: name, counts: etcdDelta(before, after), logLines: b.broker.logs.Lines() - lines})
	return nil
}

// checkReplies makes one call to every target and records the sizes of the
// answers, which should match.
func (b *bench) checkReplies(ctx context.Context) error {
	t, err := dialGRPC(b.echo.ready.GRPC, 1, b.keys)
	if err != nil {
		return err
	}
	resp, err := tokenbrokerv1.NewTokenBrokerServiceClient(t.conns[0]).GetToken(ctx, b.req)
	t.close()
	if err != nil {
		return fmt.Errorf("echo GetToken: %w", err)
	}
	b.res.grpcReplyEcho = proto.Size(resp)
	for _, tg := range b.restTargets() {
		h := newHTTPConn(tg.addr, b.path, "Bearer "+b.keys[0], b.body)
		err := h.do(ctx)
		h.close()
		if err != nil {
			return fmt.Errorf("REST %s: %w", tg.name, err)
		}
		b.res.restReply = append(b.res.restReply, namedSize{tg.name, len(h.lastBody)})
	}
	return nil
}

func (b *bench) spec(c *child) roundSpec {
	return roundSpec{warmup: b.opts.warmup, measure: b.opts.measure, serverPID: c.ready.PID}
}

func (b *bench) connsFor(c int) int {
	if b.opts.conns > 0 {
		return min(b.opts.conns, c)
	}
	return min((c+7)/8, 4)
}

func (b *bench) grpcPhase(ctx context.Context) error {
	for _, c := range b.opts.concurrency {
		n := b.connsFor(c)
		echoT, err := dialGRPC(b.echo.ready.GRPC, n, b.keys)
		if err != nil {
			return err
		}
		brokerT, err := dialGRPC(b.broker.ready.GRPC, n, b.keys)
		if err != nil {
			echoT.close()
			return err
		}
		p := grpcPoint{c: c, conns: n}
		for r := 0; r < b.opts.rounds; {
			e := runRound(ctx, echoT.callers(c, b.req), b.spec(b.echo))
			if err := e.check("gRPC echo"); err != nil {
				return err
			}
			k := runRound(ctx, brokerT.callers(c, b.req), b.spec(b.broker))
			if err := k.check("gRPC broker"); err != nil {
				return err
			}
			noisy := max(e.otherCPU, k.otherCPU) > b.opts.maxOther
			b.progress("gRPC c=%-3d round %d/%d: echo %7.0f/s p99 %-9s broker %7.0f/s p99 %-9s ratio %.2f%s",
				c, r+1, b.opts.rounds, e.rps(), fmtDur(e.p99()), k.rps(), fmtDur(k.p99()), k.rps()/e.rps(), b.noise(noisy, e, k))
			if noisy && b.retriesLeft > 0 {
				b.retriesLeft--
				p.discarded++
				continue
			}
			p.echo, p.broker = append(p.echo, e), append(p.broker, k)
			r++
		}
		if b.opts.profile != "" && c == slicesMax(b.opts.concurrency) {
			b.profileRound(ctx, "grpc-echo", b.echo, echoT.callers(c, b.req))
			b.profileRound(ctx, "grpc-broker", b.broker, brokerT.callers(c, b.req))
		}
		echoT.close()
		brokerT.close()
		b.res.grpc = append(b.res.grpc, p)
	}
	return nil
}

// restTarget is one REST server.
type restTarget struct {
	name string
	addr string
	srv  *child
}

func (b *bench) restTargets() []restTarget {
	return []restTarget{
		{"gateway echo", b.echo.ready.Gateway, b.echo},
		{"broker", b.broker.ready.HTTP, b.broker},
		{"net/http echo", b.echo.ready.HTTP, b.echo},
	}
}

func (b *bench) restPhase(ctx context.Context) error {
	for _, c := range b.opts.concurrency {
		p := restPoint{c: c}
		for r := 0; r < b.opts.rounds; {
			var got [3]*sample
			for i, tg := range b.restTargets() {
				callers, done := restCallers(tg.addr, b.path, b.body, c, b.keys)
				s := runRound(ctx, callers, b.spec(tg.srv))
				done()
				if err := s.check("REST " + tg.name); err != nil {
					return err
				}
				got[i] = s
			}
			noisy := max(got[0].otherCPU, got[1].otherCPU, got[2].otherCPU) > b.opts.maxOther
			b.progress("REST c=%-3d round %d/%d: gateway echo %6.0f/s  broker %6.0f/s  net/http echo %6.0f/s  ratios %.2f %.2f%s",
				c, r+1, b.opts.rounds, got[0].rps(), got[1].rps(), got[2].rps(), got[1].rps()/got[0].rps(), got[1].rps()/got[2].rps(),
				b.noise(noisy, got[:]...))
			if noisy && b.retriesLeft > 0 {
				b.retriesLeft--
				p.discarded++
				continue
			}
			p.gateway, p.broker, p.http = append(p.gateway, got[0]), append(p.broker, got[1]), append(p.http, got[2])
			r++
		}
		if b.opts.profile != "" && c == slicesMax(b.opts.concurrency) {
			for _, tg := range b.restTargets() {
				callers, done := restCallers(tg.addr, b.path, b.body, c, b.keys)
				b.profileRound(ctx, "rest-"+strings.ReplaceAll(strings.ReplaceAll(tg.name, " ", "-"), "/", ""), tg.srv, callers)
				done()
			}
		}
		b.res.rest = append(b.res.rest, p)
	}
	return nil
}

// saveProfile fetches a profile from a child's control listener into the
// profile directory; a failure is reported and otherwise ignored.
func (b *bench) saveProfile(ctx context.Context, c *child, path, name string) {
	err := func() error {
		if err := os.MkdirAll(b.opts.profile, 0o755); err != nil {
			return err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.ready.Control+path, nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", path, resp.Status)
		}
		f, err := os.Create(filepath.Join(b.opts.profile, name))
		if err != nil {
			return err
		}
		_, err = io.Copy(f, resp.Body)
		return errors.Join(err, f.Close())
	}()
	if err != nil {
		b.progress("profile %s: %v", name, err)
		return
	}
	b.progress("profile written to %s", filepath.Join(b.opts.profile, name))
}

// profileRound runs one extra round of callers while the server's CPU
// profile is taken, and writes it to the profile directory.
func (b *bench) profileRound(ctx context.Context, name string, srv *child, callers []caller) {
	secs := max(int(b.opts.measure.Round(time.Second)/time.Second), 3)
	done := make(chan struct{})
	go func() {
		defer close(done)
		sleep(ctx, b.opts.warmup)
		b.saveProfile(ctx, srv, fmt.Sprintf("/debug/pprof/profile?seconds=%d", secs), name+".pprof")
	}()
	spec := b.spec(srv)
	spec.measure = time.Duration(secs)*time.Second + 200*time.Millisecond
	runRound(ctx, callers, spec)
	<-done
}

func (b *bench) devPhase(ctx context.Context) {
	bin := b.opts.tokenbroker
	if bin == "" {
		dir, err := os.MkdirTemp("", "tbbench-dev-")
		if err != nil {
			b.res.devErr = err.Error()
			return
		}
		defer os.RemoveAll(dir)
		b.progress("dev: building ./cmd/tokenbroker…")
		t0 := time.Now()
		if bin, err = buildTokenbroker(ctx, dir); err != nil {
			b.res.devErr = err.Error()
			return
		}
		b.res.devBuild = time.Since(t0)
	}
	for i := range b.opts.devRuns {
		r, err := measureDevStart(ctx, bin)
		if err != nil {
			b.res.devErr = err.Error()
			return
		}
		b.progress("dev: start %d: banner after %s, first token after %s", i+1, fmtDur(r.Banner), fmtDur(r.FirstToken))
		b.res.dev = append(b.res.dev, r)
	}
}

// noise says, for the progress line, how busy the rest of the machine was
// and what becomes of a noisy set of rounds.
func (b *bench) noise(noisy bool, ss ...*sample) string {
	other := 0.0
	for _, s := range ss {
		other = max(other, s.otherCPU)
	}
	switch {
	case !noisy:
		return ""
	case b.retriesLeft > 0:
		return fmt.Sprintf("  [rest of machine busy: %.2f cores; discarded, again]", other)
	default:
		return fmt.Sprintf("  [rest of machine busy: %.2f cores; kept, no retries left]", other)
	}
}

func slicesMax(s []int) int {
	m := s[0]
	for _, v := range s[1:] {
		m = max(m, v)
	}
	return m
}
