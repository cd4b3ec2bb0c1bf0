package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// The miss path: GetToken of a key the broker has never seen, one call at a
// time, beside the same token request sent to the provider directly (the
// bare provider latency) and a GetToken of the cached token (the hit), in
// turn, so that the three meet the same machine. What the broker adds to a
// miss is the first minus the second: its etcd reads, the grant's lock, the
// fenced write of the token and its release, and the gRPC call.

// missResult is the miss-path figure.
type missResult struct {
	n                    int
	miss, provider, hit  []time.Duration // sorted
	errors               int
	etcd                 map[string]int64 // requests of the misses, background ones left out
	providerCallsPerMiss float64
}

func pct(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	return d[min(int(q*float64(len(d))), len(d)-1)]
}

func (b *bench) missPhase(ctx context.Context) error {
	n := b.opts.misses
	b.progress("miss path: %d GetToken calls of keys not cached, each beside a bare provider call…", n)
	t, err := dialGRPC(b.broker.ready.GRPC, 1, b.keys)
	if err != nil {
		return err
	}
	defer t.close()
	client := tokenbrokerv1.NewTokenBrokerServiceClient(t.conns[0])
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}, Timeout: 10 * time.Second}
	defer hc.CloseIdleConnections()
	direct := func(scope string) error {
		form := url.Values{"grant_type": {"client_credentials"}, "scope": {scope}}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, b.sbURL, strings.NewReader(form.Encode()))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Accept", "application/json")
		req.SetBasicAuth(url.QueryEscape(b.clientID), url.QueryEscape(b.clientSecret))
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("provider: %s", resp.Status)
		}
		return nil
	}
	// One of each first, unmeasured: connections and code paths warm.
	if err := direct("miss.warm.direct"); err != nil {
		return err
	}
	if _, err := client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: benchProvider, Scopes: []string{"miss.warm"}}); err != nil {
		return fmt.Errorf("miss path: %w", err)
	}
	var before, after map[string]int64
	if err := b.broker.call(ctx, http.MethodGet, "/etcd", &before); err != nil {
		return err
	}
	calls := b.sb.TokenCalls()
	r := &missResult{n: n}
	for i := range n {
		t0 := time.Now()
		if err := direct(fmt.Sprintf("miss.direct.%d", i)); err != nil {
			r.errors++
		}
		t1 := time.Now()
		_, err := client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: benchProvider, Scopes: []string{fmt.Sprintf("miss.%d", i)}})
		if err != nil {
			r.errors++
		}
		t2 := time.Now()
		if _, err := client.GetToken(ctx, b.req); err != nil {
			r.errors++
		}
		t3 := time.Now()
		r.provider, r.miss, r.hit = append(r.provider, t1.Sub(t0)), append(r.miss, t2.Sub(t1)), append(r.hit, t3.Sub(t2))
	}
	if err := b.broker.call(ctx, http.MethodGet, "/etcd", &after); err != nil {
		return err
	}
	r.providerCallsPerMiss = float64(b.sb.TokenCalls()-calls-n) / float64(n)
	r.etcd = etcdDelta(before, after)
	maps.DeleteFunc(r.etcd, func(k string, _ int64) bool { return background(k) })
	for _, d := range [][]time.Duration{r.miss, r.provider, r.hit} {
		slices.Sort(d)
	}
	b.res.miss = r
	b.progress("miss path: miss p50 %s p99 %s; provider p50 %s p99 %s", fmtDur(pct(r.miss, 0.5)), fmtDur(pct(r.miss, 0.99)), fmtDur(pct(r.provider, 0.5)), fmtDur(pct(r.provider, 0.99)))
	if r.errors > 0 {
		return fmt.Errorf("miss path: %d of %d calls failed", r.errors, 3*n)
	}
	return nil
}
