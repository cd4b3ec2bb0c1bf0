package main

import (
	"context"
	"fmt"
	"net/http"
	"time"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// The restart figure: the broker of the memory figure is stopped and
// started again on its data directory, as after a deploy or a crash. The
// time counts from the exec of the new process to its first answer from
// memory for the token written last (the sentinel, which no provider can
// fetch): the embedded etcd's start, the read of every token record in
// pages, and the servers' start.

// restartResult is the restart figure.
type restartResult struct {
	tokens int
	// ready is from exec to the process's ready line (app.Start returned);
	// served to the sentinel's token answered.
	ready, served time.Duration
	// startup is app.Start's own time, as the process measured it.
	startup string
	// The check of a sample, as after the memory figure's load, and the
	// etcd requests its GetToken calls made beyond the background ones: 0
	// when every answer came from memory.
	checked, mismatches, introspected, introspectMisses int
	etcdRequests                                        int64
	mem                                                 memInfo
}

func (b *bench) restartPhase(ctx context.Context) error {
	n := b.opts.tokens
	b.progress("restart: stopping the broker and starting it again on its %d tokens…", n)
	b.broker.stop()
	r := &restartResult{tokens: n}
	t0 := time.Now()
	c, err := b.startBroker(ctx, "", brokerConfig(b.sbURL, b.clientID, b.clientSecret, b.static), b.dataDir)
	if err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	r.ready = time.Since(t0)
	b.broker = c
	r.startup = c.ready.Startup
	t, err := dialGRPC(c.ready.GRPC, 1, b.keys)
	if err != nil {
		return err
	}
	defer t.close()
	client := tokenbrokerv1.NewTokenBrokerServiceClient(t.conns[0])
	for deadline := time.Now().Add(5 * time.Minute); ; {
		resp, err := client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: sentinelProvider, Scopes: []string{"done"}})
		if err == nil && resp.GetToken().GetAccessToken() == "sentinel-token" {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("restart: the sentinel is not served 5 minutes after the start (last: %v)", err)
		}
		time.Sleep(time.Millisecond)
	}
	r.served = time.Since(t0)
	var before, after map[string]int64
	if err := c.call(ctx, http.MethodGet, "/etcd", &before); err != nil {
		return err
	}
	r.checked, r.mismatches = checkServed(ctx, client, n)
	if err := c.call(ctx, http.MethodGet, "/etcd", &after); err != nil {
		return err
	}
	r.introspected, r.introspectMisses = checkIntrospected(ctx, client, n)
	for k, v := range etcdDelta(before, after) {
		if !background(k) {
			r.etcdRequests += v
		}
	}
	if err := c.call(ctx, http.MethodGet, "/mem", &r.mem); err != nil {
		return err
	}
	b.res.mem.restart = r
	b.progress("restart: ready after %s, the last token served after %s; RSS %s", fmtDur(r.ready), fmtDur(r.served), mib(r.mem.RSS))
	return nil
}
