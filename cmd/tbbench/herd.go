package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/apikey"
	"github.com/tokenbroker/tokenbroker/broker/oauth"
	"github.com/tokenbroker/tokenbroker/broker/policy"
	"github.com/tokenbroker/tokenbroker/broker/seal"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/embedetcd"
	"github.com/tokenbroker/tokenbroker/sandbox"
	"github.com/tokenbroker/tokenbroker/server"
)

// The herd: several broker instances on one etcd, each with its own etcd
// client, gRPC server, API key store and background refresher, as replicas
// of one deployment run; many callers released at once on one token key.

// settableClock is the instances' shared clock, moved forward to reach a
// token's expiry without waiting an hour.
type settableClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *settableClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *settableClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// herdRound is one herd: how many provider calls it caused for its key and
// how long the callers waited.
type herdRound struct {
	Kind          string // "cold" or "expiry"
	Callers       int
	ProviderCalls int
	Errors        int
	P50, Max      time.Duration
}

type herdEnv struct {
	etcd     *embedetcd.Server
	dir      string
	sandbox  *sandbox.Server
	sbServer *http.Server
	clock    *settableClock
	closers  []func()
	targets  []tokenbrokerv1.TokenBrokerServiceClient
}

func (h *herdEnv) close() {
	for i := len(h.closers) - 1; i >= 0; i-- {
		h.closers[i]()
	}
}

// startHerd starts etcd (production settings), a sandbox provider and n
// instances; each instance gets conns client connections.
func startHerd(ctx context.Context, n, conns int) (_ *herdEnv, err error) {
	h := &herdEnv{clock: &settableClock{now: time.Now()}}
	defer func() {
		if err != nil {
			h.close()
		}
	}()
	if h.dir, err = os.MkdirTemp("", "tbbench-herd-"); err != nil {
		return nil, err
	}
	h.closers = append(h.closers, func() { os.RemoveAll(h.dir) })
	if h.etcd, err = embedetcd.Start(ctx, embedetcd.Config{Dir: h.dir}); err != nil {
		return nil, err
	}
	h.closers = append(h.closers, h.etcd.Close)

	const clientID, secret = "herd-client", "herd-secret-4f1c9a"
	if h.sandbox, err = sandbox.New(sandbox.Config{Clients: map[string]string{clientID: secret}}); err != nil {
		return nil, err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	h.sbServer = &http.Server{Handler: h.sandbox, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = h.sbServer.Serve(lis) }()
	h.closers = append(h.closers, func() { h.sbServer.Close() })
	tokenURL := "http://" + lis.Addr().String() + sandbox.TokenPath

	master, err := seal.GenerateKey("herd")
	if err != nil {
		return nil, err
	}
	keyring, err := seal.NewKeyring(master)
	if err != nil {
		return nil, err
	}
	keyID, key, keySum, err := apikey.Generate()
	if err != nil {
		return nil, err
	}
	pol, err := policy.New([]policy.Rule{{Identities: []string{"herd"}, Actions: []policy.Action{policy.Token}}})
	if err != nil {
		return nil, err
	}
	for i := range n {
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{h.etcd.Endpoint()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			return nil, err
		}
		h.closers = append(h.closers, func() { cli.Close() })
		keys, err := apikey.NewStore(ctx, cli, broker.DefaultPrefix, keyring, nil)
		if err != nil {
			return nil, err
		}
		h.closers = append(h.closers, func() { keys.Close() })
		if err := keys.SetStatic([]apikey.StaticKey{{ID: keyID, Identity: "herd", SHA256: keySum}}); err != nil {
			return nil, err
		}
		b, err := broker.New(ctx, broker.Config{Client: cli, Keyring: keyring, Now: h.clock.Now, Replica: fmt.Sprintf("herd-%d", i)})
		if err != nil {
			return nil, err
		}
		h.closers = append(h.closers, func() { b.Close() })
		if i == 0 {
			if _, err := b.PutProvider(ctx, broker.Provider{Name: benchProvider, TokenURL: tokenURL, ClientID: clientID, ClientAuth: oauth.AuthBasic}, secret); err != nil {
				return nil, err
			}
		}
		srv, err := server.New(server.Config{GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Broker: b,
			Auth: server.AuthConfig{Keys: keys, Policy: pol, RateLimit: server.RateLimit{RPS: 1e9, Burst: 1e9}}})
		if err != nil {
			return nil, err
		}
		srv.Start()
		h.closers = append(h.closers, func() {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		})
		t, err := dialGRPC(srv.GRPCAddr(), conns, []string{key})
		if err != nil {
			return nil, err
		}
		h.closers = append(h.closers, t.close)
		for _, cc := range t.conns {
			h.targets = append(h.targets, tokenbrokerv1.NewTokenBrokerServiceClient(cc))
		}
	}
	// Every instance must know the provider before the herd: wait for the
	// watch of the others.
	for _, t := range h.targets {
		for {
			_, err := t.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: benchProvider, Scopes: []string{"herd.warmup"}})
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return h, nil
}

// callsFor counts the provider's token requests for scope so far.
func (h *herdEnv) callsFor(scope string) int {
	n := 0
	for _, r := range h.sandbox.Requests() {
		if r.Form.Get("scope") == scope {
			n++
		}
	}
	return n
}

// herd releases callers at once on GetToken(scope), spread over every
// connection of every instance, and counts the provider calls for scope
// from before the release until settle after the last answer.
func (h *herdEnv) herd(ctx context.Context, kind, scope string, callers int, settle time.Duration) herdRound {
	before := h.callsFor(scope)
	req := &tokenbrokerv1.GetTokenRequest{Provider: benchProvider, Scopes: strings.Fields(scope)}
	start := make(chan struct{})
	lat := make([]time.Duration, callers)
	errs := make([]error, callers)
	var wg sync.WaitGroup
	for i := range callers {
		t := h.targets[i%len(h.targets)]
		wg.Go(func() {
			<-start
			t0 := time.Now()
			_, errs[i] = t.GetToken(ctx, req)
			lat[i] = time.Since(t0)
		})
	}
	time.Sleep(50 * time.Millisecond) // let every goroutine reach the gate
	close(start)
	wg.Wait()
	sleep(ctx, settle)
	r := herdRound{Kind: kind, Callers: callers, ProviderCalls: h.callsFor(scope) - before}
	for _, err := range errs {
		if err != nil {
			r.Errors++
		}
	}
	slices.Sort(lat)
	r.P50, r.Max = lat[len(lat)/2], lat[len(lat)-1]
	return r
}

// runHerd runs cold herds (a key never asked for) and expiry herds (the
// shared clock moved to 30s before the token's end, past the default 60s
// min_ttl, with the refresher of every instance on).
func runHerd(ctx context.Context, instances, callers, rounds int) ([]herdRound, error) {
	h, err := startHerd(ctx, instances, 2)
	if err != nil {
		return nil, fmt.Errorf("herd: %w", err)
	}
	defer h.close()
	var out []herdRound
	for i := range rounds {
		out = append(out, h.herd(ctx, "cold", fmt.Sprintf("herd.cold.%d", i), callers, 500*time.Millisecond))
	}
	const scope = "herd.expiry"
	if _, err := h.targets[0].GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: benchProvider, Scopes: []string{scope}}); err != nil {
		return nil, fmt.Errorf("herd: first token: %w", err)
	}
	for range rounds {
		h.clock.advance(sandbox.DefaultTokenLifetime - 30*time.Second)
		out = append(out, h.herd(ctx, "expiry", scope, callers, time.Second))
	}
	for _, r := range out {
		if r.Errors > 0 {
			return out, errors.New("herd: some callers failed")
		}
	}
	return out, nil
}
