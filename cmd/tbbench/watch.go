package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/tokenbroker/tokenbroker/app"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// Watch propagation: replicas on one etcd; an admin creates an API key on
// the first, and the others are asked, every 200µs each, for the cached
// token with the new key until they accept it. The time counts from the
// admin's answer (the key is committed to etcd) to each replica's first
// acceptance: etcd's watch delivering the change and the replica's key
// store applying it.

// watchResult is the watch propagation figure.
type watchResult struct {
	replicas, changes int
	admin             []time.Duration // the admin call itself, sorted
	each              []time.Duration // every other replica for every change, sorted
	all               []time.Duration // the last of the others for every change, sorted
}

const watchPoll = 200 * time.Microsecond

func (b *bench) watchPhase(ctx context.Context) error {
	o := b.opts
	if o.watchReplicas < 2 {
		return fmt.Errorf("-watch-replicas must be at least 2")
	}
	b.progress("watch propagation: %d admin changes on one of %d replicas…", o.watchChanges, o.watchReplicas)
	cfg := brokerConfig(b.sbURL, b.clientID, b.clientSecret, b.static)
	cfg.Auth.Policy = append(cfg.Auth.Policy, app.PolicyRule{Identities: []string{"bench-0"}, Actions: []string{"admin"}})
	// The other replicas refuse the new key until it arrives: these
	// refusals are the measurement, not an attack to slow down.
	cfg.Auth.UnauthenticatedRateLimit = app.RateLimitConfig{RPS: 1e9, Burst: 1_000_000}
	f, err := b.startFleet(ctx, o.watchReplicas, cfg)
	if err != nil {
		return fmt.Errorf("watch propagation: %w", err)
	}
	defer f.stop()
	// Connections without credentials: every call names its key.
	var conns []*grpc.ClientConn
	defer func() {
		for _, cc := range conns {
			cc.Close()
		}
	}()
	var clients []tokenbrokerv1.TokenBrokerServiceClient
	for _, r := range f.replicas {
		cc, err := grpc.NewClient(r.ready.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		conns = append(conns, cc)
		clients = append(clients, tokenbrokerv1.NewTokenBrokerServiceClient(cc))
	}
	withKey := func(key string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
	}
	// The token cached on every replica first (the provider is called
	// once, the others read it from etcd).
	for i, c := range clients {
		if _, err := c.GetToken(withKey(b.keys[0]), b.req); err != nil {
			return fmt.Errorf("watch propagation: replica %d: %w", i, err)
		}
	}
	admin := tokenbrokerv1.NewAdminServiceClient(conns[0])
	r := &watchResult{replicas: o.watchReplicas, changes: o.watchChanges}
	for k := range o.watchChanges {
		t0 := time.Now()
		resp, err := admin.CreateApiKey(withKey(b.keys[0]), &tokenbrokerv1.CreateApiKeyRequest{Identity: fmt.Sprintf("bench-watch-%d", k)})
		if err != nil {
			return fmt.Errorf("watch propagation: create an API key: %w", err)
		}
		done := time.Now()
		r.admin = append(r.admin, done.Sub(t0))
		kctx := withKey(resp.GetKey())
		lat := make([]time.Duration, len(clients)-1)
		var wg sync.WaitGroup
		var failed error
		var mu sync.Mutex
		for j, c := range clients[1:] {
			wg.Go(func() {
				for deadline := done.Add(30 * time.Second); ; {
					_, err := c.GetToken(kctx, b.req)
					if err == nil {
						lat[j] = time.Since(done)
						return
					}
					if time.Now().After(deadline) {
						mu.Lock()
						failed = fmt.Errorf("replica %d does not accept a new key after 30s: %w", j+1, err)
						mu.Unlock()
						return
					}
					time.Sleep(watchPoll)
				}
			})
		}
		wg.Wait()
		if failed != nil {
			return fmt.Errorf("watch propagation: %w", failed)
		}
		r.each = append(r.each, lat...)
		r.all = append(r.all, slices.Max(lat))
	}
	for _, d := range [][]time.Duration{r.admin, r.each, r.all} {
		slices.Sort(d)
	}
	b.res.watch = r
	b.progress("watch propagation: each replica p50 %s p99 %s; all %d others p50 %s p99 %s",
		fmtDur(pct(r.each, 0.5)), fmtDur(pct(r.each, 0.99)), len(clients)-1, fmtDur(pct(r.all, 0.5)), fmtDur(pct(r.all, 0.99)))
	return nil
}
