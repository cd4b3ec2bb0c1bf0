package broker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/oauth"
	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
	"github.com/tokenbroker/tokenbroker/sandbox"
)

// isProviderStatus matches a provider's error answer with HTTP status code.
func isProviderStatus(code int) func(error) bool {
	return func(err error) bool {
		var oe *oauth.Error
		return errors.As(err, &oe) && oe.StatusCode == code
	}
}

// faultRow is one provider fault of TestRefresherProviderFaults.
type faultRow struct {
	name        string
	failure     sandbox.Failure
	retryAfter  string        // Retry-After header of the answers, seconds
	attempts    int           // Config.ProviderAttempts
	perRound    int           // provider calls of one failed fetch
	cooldown    time.Duration // Config.CooldownBase
	wantErr     func(error) bool
	wantErrText string

	rs      []*fleetReplica
	f       *sandboxFront
	valid   *TokenRecord
	calls   int       // token requests before the fault
	failing time.Time // when the fault started

	mu               sync.Mutex
	missing, cooling int
	wrong, unserved  []string
}

// TestRefresherProviderFaults is acceptance 5. For each fault, three
// replicas (their own etcd prefix, configuration and provider) serve a
// token V that is valid and in the leader's refresh window when the
// provider starts failing; the faults run at once. For 2 s callers on
// every replica keep asking for V within its freshness (the hot path), for
// V with a min_ttl it cannot meet (they reach the provider), and for a
// token M never obtained.
// V keeps being served to both kinds of V callers; M's callers get the
// documented error (or ErrProviderCoolingDown wrapping it); and the
// provider sees, from each replica, rounds of at most ProviderAttempts
// calls, and the grant's cooldown between rounds, doubling after each
// failed round; an answer with Retry-After ends its round, and the
// cooldown lasts at least that long. The cooldown is the fleet's (stored
// with the grant): the provider's budget is replicas × attempts per
// cooldown window at most.
//
// A provider that hangs is TestRefresherProviderHangs.
func TestRefresherProviderFaults(t *testing.T) {
	t.Parallel()
	const (
		replicas   = 3
		perReplica = 2 // callers of each kind per replica
		duration   = 2 * time.Second
	)
	tests := []*faultRow{
		{
			name:     "500 server_error",
			failure:  sandbox.Failure{Status: http.StatusInternalServerError, Body: `{"error":"server_error"}`},
			attempts: 3, perRound: 3, cooldown: 300 * time.Millisecond,
			wantErr: isProviderStatus(500), wantErrText: "a *oauth.Error with status 500 (Unavailable)",
		},
		{
			name:       "429 with Retry-After",
			failure:    sandbox.Failure{Status: http.StatusTooManyRequests, ContentType: "text/plain", Body: "slow down"},
			retryAfter: "1",
			// A Retry-After ends the round at its first call; callers are
			// told how long the fleet leaves the provider alone.
			attempts: 2, perRound: 1, cooldown: 3 * time.Second,
			wantErr: func(err error) bool {
				var oe *oauth.Error
				return errors.As(err, &oe) && oe.StatusCode == 429 && oe.RetryAfter >= time.Second && oe.RetryAfter <= 3*time.Second
			},
			wantErrText: "a *oauth.Error with status 429 and RetryAfter between 1s and the 3s cooldown (ResourceExhausted)",
		},
		{
			name:     "garbage",
			failure:  sandbox.Failure{Status: http.StatusOK, ContentType: "text/html", Body: "<html><body>Service Temporarily Unavailable</body></html>"},
			attempts: 3, perRound: 1, cooldown: 300 * time.Millisecond, // a malformed answer is not retried
			wantErr:     func(err error) bool { return errors.Is(err, oauth.ErrBadResponse) },
			wantErrText: "an error wrapping oauth.ErrBadResponse (Unavailable)",
		},
	}
	e := etcdtest.Start(t)
	clock := newClock()
	for i, tt := range tests {
		cfg := fleetConfig()
		cfg.Prefix = fmt.Sprintf("/faults-%d/", i)
		cfg.Now = clock.Now // token time; cooldowns run on the wall clock
		cfg.ProviderAttempts = tt.attempts
		cfg.ProviderBackoff = 10 * time.Millisecond
		cfg.CooldownBase = tt.cooldown
		for j := range replicas {
			cfg.OAuth = &oauth.Client{UserAgent: fmt.Sprintf("faults-%d-%d", i, j)} // tells the provider who calls
			tt.rs = append(tt.rs, newFleetReplica(t, e.Endpoint, fmt.Sprintf("faults-%d-%d", i, j), cfg))
		}
		tt.f = newSandboxFront(t, sandbox.Config{}) // the provider's clock is real: request times are real
		putProvider(t, tt.rs[0].Broker, sandboxProvider("orders", tt.f.TokenURL()), sandboxClientSecret)
		var err error
		if tt.valid, err = tt.rs[0].GetToken(context.Background(), TokenRequest{Provider: "orders", Scopes: []string{"read"}}); err != nil {
			t.Fatalf("%s: GetToken before the fault: %v", tt.name, err)
		}
		tt.calls = tt.f.sb.TokenCalls()
		tt.f.retryAfter.Store(&tt.retryAfter)
	}
	for _, tt := range tests {
		tt.f.sb.SetFailure(&tt.failure)
		tt.failing = time.Now()
	}
	// 50 minutes on: every V is in the leader's refresh window and still
	// fresh for callers asking for a minute.
	clock.Advance(50 * time.Minute)

	ask := func(tt *faultRow, r *fleetReplica, req TokenRequest) {
		rec, err := r.GetToken(context.Background(), req)
		tt.mu.Lock()
		defer tt.mu.Unlock()
		switch {
		case err != nil:
			tt.unserved = append(tt.unserved, fmt.Sprintf("%s, min_ttl %v: %v", r.name, req.MinTTL, err))
		case rec.AccessToken != tt.valid.AccessToken:
			tt.unserved = append(tt.unserved, fmt.Sprintf("%s, min_ttl %v: got %q", r.name, req.MinTTL, rec.AccessToken))
		}
	}
	askMissing := func(tt *faultRow, r *fleetReplica) {
		_, err := r.GetToken(context.Background(), TokenRequest{Provider: "orders", Scopes: []string{"write"}})
		tt.mu.Lock()
		defer tt.mu.Unlock()
		tt.missing++
		if errors.Is(err, ErrProviderCoolingDown) {
			tt.cooling++
		}
		if err == nil || !tt.wantErr(err) {
			tt.wrong = append(tt.wrong, fmt.Sprintf("%s: %v", r.name, err))
		}
	}
	ctx, stop := context.WithTimeout(context.Background(), duration)
	defer stop()
	var wg sync.WaitGroup
	loop := func(call func()) {
		wg.Go(func() {
			for ctx.Err() == nil {
				call()
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
	for _, tt := range tests {
		for _, r := range tt.rs {
			for range perReplica {
				loop(func() { ask(tt, r, TokenRequest{Provider: "orders", Scopes: []string{"read"}, MinTTL: time.Minute}) })
				loop(func() {
					ask(tt, r, TokenRequest{Provider: "orders", Scopes: []string{"read"}, MinTTL: 30 * time.Minute})
				})
				loop(func() { askMissing(tt, r) })
			}
		}
	}
	wg.Wait()

	for _, tt := range tests {
		for _, u := range tt.unserved {
			t.Errorf("%s: a caller of the still-valid token was not served it: %s", tt.name, u)
		}
		for _, w := range tt.wrong {
			t.Errorf("%s: a caller without a token got %s; want %s", tt.name, w, tt.wantErrText)
		}

		// What the provider saw, replica by replica and token key (the
		// provider's own identity is locked per key): rounds of perRound
		// calls, Retry-After apart, and the cooldown between rounds,
		// doubling.
		retryAfter, _ := time.ParseDuration(tt.retryAfter + "s")
		byReplica := map[string][]time.Time{}
		for _, r := range tt.f.sb.Requests()[tt.calls:] {
			ua := r.Header.Get("User-Agent") + " scope " + r.Form.Get("scope")
			byReplica[ua] = append(byReplica[ua], r.Time)
		}
		rounds := 0
		for ua, times := range byReplica {
			for i := 1; i < len(times); i++ {
				gap, round := times[i].Sub(times[i-1]), i/tt.perRound
				want := retryAfter // within a round (no Retry-After is retried within one)
				if i%tt.perRound == 0 {
					want = tt.cooldown << (round - 1) // between rounds
				}
				if gap < want {
					t.Errorf("%s: %s: call %d came %v after the previous one, want at least %v", tt.name, ua, i+1, gap, want)
				}
			}
			rounds += (len(times) + tt.perRound - 1) / tt.perRound
		}
		// Round k (from 0) of a replica starts at least cooldown·(2^k − 1)
		// after its first failure.
		elapsed := time.Since(tt.failing)
		calls := tt.f.sb.TokenCalls() - tt.calls
		windows := 1
		for tt.cooldown*time.Duration(1<<windows-1) < elapsed {
			windows++
		}
		budget := replicas * tt.attempts * windows
		t.Logf("%s: %d provider calls in %v, %d rounds (budget %d: %d replicas × %d attempts × %d cooldown windows); %d of %d callers without a token were told the grant cools down",
			tt.name, calls, elapsed.Round(time.Millisecond), rounds, budget, replicas, tt.attempts, windows, tt.cooling, tt.missing)
		if calls > budget {
			t.Errorf("%s: the provider got %d calls in %v, want at most %d", tt.name, calls, elapsed, budget)
		}
		if calls == 0 {
			t.Errorf("%s: the provider got no call, want the broker to try", tt.name)
		}
	}
}

// TestRefresherProviderHangs: a provider that does not answer costs a
// caller FetchTimeout, not more, and an error wrapping ErrProviderTimeout
// (Unavailable); the request is not repeated within the fetch; a token
// still valid keeps being served from memory meanwhile.
func TestRefresherProviderHangs(t *testing.T) {
	t.Parallel()
	const fetchTimeout = time.Second
	e := etcdtest.Start(t)
	f := newSandboxFront(t, sandbox.Config{})
	cfg := fleetConfig()
	cfg.FetchTimeout = fetchTimeout
	cfg.ProviderBackoff = 10 * time.Millisecond
	r := newFleetReplica(t, e.Endpoint, "hang-0", cfg)
	putProvider(t, r.Broker, sandboxProvider("orders", f.TokenURL()), sandboxClientSecret)
	valid, err := r.GetToken(context.Background(), TokenRequest{Provider: "orders", Scopes: []string{"read"}})
	if err != nil {
		t.Fatalf("GetToken before the fault: %v", err)
	}
	f.sb.SetFailure(&sandbox.Failure{Delay: time.Hour})
	calls0 := f.sb.TokenCalls()

	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var served, unserved int
	wg.Go(func() {
		for ctx.Err() == nil {
			rec, err := r.GetToken(context.Background(), TokenRequest{Provider: "orders", Scopes: []string{"read"}})
			if err != nil || rec.AccessToken != valid.AccessToken {
				unserved++
			} else {
				served++
			}
			time.Sleep(time.Millisecond)
		}
	})
	start := time.Now()
	_, err = r.GetToken(context.Background(), TokenRequest{Provider: "orders", Scopes: []string{"write"}})
	took := time.Since(start)
	stop()
	wg.Wait()

	t.Logf("a call that needed the hanging provider failed after %v (FetchTimeout %v); %d calls for the valid token served from memory meanwhile", took, fetchTimeout, served)
	if !errors.Is(err, ErrProviderTimeout) {
		t.Errorf("GetToken from a hanging provider: error %v, want one wrapping ErrProviderTimeout", err)
	}
	if took > fetchTimeout+time.Second {
		t.Errorf("GetToken from a hanging provider took %v, want about FetchTimeout %v", took, fetchTimeout)
	}
	if calls := f.sb.TokenCalls() - calls0; calls != 1 {
		t.Errorf("the hanging provider got %d calls, want 1", calls)
	}
	if unserved != 0 || served == 0 {
		t.Errorf("callers of the valid token: %d served, %d not; want all served", served, unserved)
	}
}
