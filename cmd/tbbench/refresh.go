package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokenbroker/tokenbroker/broker"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/sandbox"
)

// The background refresh figure: n hot tokens whose provider issues them
// for a short lifetime, on replicas that share the refresh shards by
// election. The tokens are written to etcd as the broker writes them (see
// the memory figure), issued so that their planned refreshes are spread
// evenly over one refresh period from a moment just after the set-up; every
// token is then asked for once, on one replica in turn, which makes it hot
// for the refresher's idle time (10 minutes). From then on the leaders
// refresh each token every period: n/period refreshes a second are asked
// of the fleet. The benchmark counts the provider's token requests and
// etcd's revisions, and watches the token records: a refresh is the record
// of a token replaced by one issued later, and its lag is the time the new
// record reached etcd past the old one's planned refresh.

// refreshLead is how long before a token's expiry the refresher starts its
// refresh with the broker's defaults (RefreshConfig.due in
// broker/refresher.go: a third of the lifetime, at least 2s, and at least
// two ticks of 250ms before the default min_ttl of 60s, or half the
// lifetime, is reached).
func refreshLead(life time.Duration) time.Duration {
	lead := max(life/3, min(2*time.Second, life/2))
	return max(lead, min(60*time.Second, life/2)+2*250*time.Millisecond)
}

// refreshResult is the background refresh figure.
type refreshResult struct {
	tokens, replicas, shards int
	lifetime, period         time.Duration
	window                   time.Duration
	providerCalls            int
	refreshes                int   // observed in etcd during the window
	writes                   int64 // etcd revisions during the window
	lags                     []time.Duration
	overdue                  int // tokens more than 1s past their planned refresh at the end
	leading                  []int
	cpu                      []namedCPU
	setup                    time.Duration
}

type namedCPU struct {
	name  string
	cores float64
}

func (r *refreshResult) asked() float64 { return float64(r.tokens) / r.period.Seconds() }
func (r *refreshResult) perSecond(v float64) float64 {
	return v / r.window.Seconds()
}

// seenToken is what the watch of the token records keeps of each.
type seenToken struct{ issued, expires time.Time }

func (b *bench) refreshPhase(ctx context.Context) error {
	o := b.opts
	n := o.refreshTokens
	life := o.refreshLifetime
	lead := refreshLead(life)
	period := life - lead
	if period <= 0 {
		return fmt.Errorf("-refresh-lifetime %s is too short", life)
	}
	b.progress("background refresh: %d hot tokens of %s lifetime on %d replicas with %d shards…", n, life, o.refreshReplicas, o.refreshShards)
	sb, err := sandbox.New(sandbox.Config{Clients: map[string]string{b.clientID: b.clientSecret}, TokenLifetime: life, MaxRecorded: 100})
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: sb, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(lis) }()
	defer srv.Close()
	cfg := brokerConfig("http://"+lis.Addr().String()+sandbox.TokenPath, b.clientID, b.clientSecret, b.static)
	cfg.Refresher.Shards = o.refreshShards
	setupStart := time.Now()
	f, err := b.startFleet(ctx, o.refreshReplicas, cfg)
	if err != nil {
		return fmt.Errorf("background refresh: %w", err)
	}
	defer f.stop()
	clients, closeClients, err := f.clients(b.keys)
	if err != nil {
		return err
	}
	defer closeClients()

	// Watch the token records from now on.
	rev, err := f.revision(ctx)
	if err != nil {
		return err
	}
	var (
		mu     sync.Mutex
		seen   = map[string]seenToken{}
		events []refreshEvent
	)
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	watching := make(chan struct{})
	go func() {
		defer close(watching)
		for resp := range f.cli.Watch(wctx, broker.DefaultPrefix+"tokens/", clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
			at := time.Now()
			for _, ev := range resp.Events {
				if ev.Type != clientv3.EventTypePut {
					continue
				}
				var st storedToken
				if json.Unmarshal(ev.Kv.Value, &st) != nil {
					continue
				}
				k := string(ev.Kv.Key)
				if !strings.HasPrefix(k, broker.DefaultPrefix+"tokens/"+benchProvider+"/") {
					continue // the sentinel
				}
				mu.Lock()
				prev, ok := seen[k]
				if ok && st.IssuedAt.After(prev.issued) {
					planned := prev.expires.Add(-refreshLead(prev.expires.Sub(prev.issued)))
					events = append(events, refreshEvent{at: at, lag: at.Sub(planned)})
				}
				seen[k] = seenToken{issued: st.IssuedAt, expires: st.ExpiresAt}
				mu.Unlock()
			}
		}
	}()

	// The planned refreshes start after the set-up: writing at about 5k
	// tokens a second, and asking for each once.
	first := time.Now().Add(2*time.Second + time.Duration(n)*time.Second/2000)
	s := &seeder{cli: f.cli, keys: b.keyring, lifetime: life, issued: func(i int) time.Time {
		return first.Add(time.Duration(float64(period)*(float64(i)+0.5)/float64(n)) - period)
	}}
	if err := s.seed(ctx, n); err != nil {
		return fmt.Errorf("background refresh: write tokens: %w", err)
	}
	if err := awaitSentinel(ctx, clients, 2*time.Minute); err != nil {
		return fmt.Errorf("background refresh: %w", err)
	}
	// Every token asked for once, on replica i mod replicas, 16 at a time.
	var next atomic.Int64
	var failed atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				resp, err := clients[i%len(clients)].GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: benchProvider, Scopes: seedScopes(i)})
				if err != nil || resp.GetToken().GetAccessToken() == "" {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if failed.Load() > 0 {
		return fmt.Errorf("background refresh: %d of %d tokens not served", failed.Load(), n)
	}
	r := &refreshResult{tokens: n, replicas: o.refreshReplicas, shards: o.refreshShards, lifetime: life, period: period, window: o.refreshWindow, setup: time.Since(setupStart)}
	if late := time.Until(first); late < 0 {
		b.progress("background refresh: the set-up ended %s after the first planned refresh", fmtDur(-late))
	} else {
		sleep(ctx, late)
	}
	// One more period of warm-up: the reports reach the leaders, and a
	// backlog of the set-up clears if the fleet can clear it.
	sleep(ctx, min(period, 5*time.Second))

	procs := append([]*child{f.etcd}, f.replicas...)
	cpu0 := make([]time.Duration, len(procs))
	for i, p := range procs {
		cpu0[i] = procCPU(p.ready.PID)
	}
	self0 := procCPU(os.Getpid())
	busy0, _ := machineCPU()
	calls0 := sb.TokenCalls()
	rev0, err := f.revision(ctx)
	if err != nil {
		return err
	}
	w0 := time.Now()
	var profiles sync.WaitGroup
	if o.profile != "" {
		// CPU profiles of etcd and the first replica over the window.
		secs := max(int(o.refreshWindow/time.Second), 1)
		for i, p := range procs[:2] {
			name := []string{"refresh-etcd.pprof", "refresh-replica1.pprof"}[i]
			profiles.Go(func() { b.saveProfile(ctx, p, fmt.Sprintf("/debug/pprof/profile?seconds=%d", secs), name) })
		}
	}
	sleep(ctx, o.refreshWindow)
	w1 := time.Now()
	r.window = w1.Sub(w0)
	r.providerCalls = sb.TokenCalls() - calls0
	rev1, err := f.revision(ctx)
	if err != nil {
		return err
	}
	r.writes = rev1 - rev0
	busy1, _ := machineCPU()
	for i, p := range procs {
		name := "etcd"
		if i > 0 {
			name = fmt.Sprintf("replica %d", i)
		}
		r.cpu = append(r.cpu, namedCPU{name, (procCPU(p.ready.PID) - cpu0[i]).Seconds() / r.window.Seconds()})
	}
	r.cpu = append(r.cpu, namedCPU{"benchmark (provider, watch)", (procCPU(os.Getpid()) - self0).Seconds() / r.window.Seconds()},
		namedCPU{"whole machine", (busy1 - busy0).Seconds() / r.window.Seconds()})
	for _, p := range f.replicas {
		var shards []int
		if err := p.call(ctx, http.MethodGet, "/leading", &shards); err == nil {
			r.leading = append(r.leading, len(shards))
		}
	}
	profiles.Wait()
	mu.Lock()
	for _, e := range events {
		if !e.at.Before(w0) && e.at.Before(w1) {
			r.refreshes++
			r.lags = append(r.lags, e.lag)
		}
	}
	for _, t := range seen {
		if t.expires.Add(-refreshLead(t.expires.Sub(t.issued))).Before(w1.Add(-time.Second)) {
			r.overdue++
		}
	}
	mu.Unlock()
	slices.Sort(r.lags)
	b.res.refresh = r
	b.progress("background refresh: %.0f/s asked, %.0f provider calls/s, %.0f refreshes/s seen in etcd, %.0f etcd writes/s, lag p50 %s p99 %s, %d overdue at the end",
		r.asked(), r.perSecond(float64(r.providerCalls)), r.perSecond(float64(r.refreshes)), r.perSecond(float64(r.writes)), fmtDur(pct(r.lags, 0.5)), fmtDur(pct(r.lags, 0.99)), r.overdue)
	stopWatch()
	<-watching
	return nil
}

type refreshEvent struct {
	at  time.Time
	lag time.Duration
}
