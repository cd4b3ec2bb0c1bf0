package broker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/oauth"
	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
	"github.com/tokenbroker/tokenbroker/sandbox"
)

// A provider answering 429 with Retry-After: 7 for 21 s while callers on
// three replicas ask twice a second for a token none of them has: the
// cooldown that honours the Retry-After is the fleet's, so the provider
// sees one request per Retry-After window, not one per replica.
func TestFleetHonoursRetryAfter(t *testing.T) {
	t.Parallel()
	const (
		retryAfter = 7 * time.Second
		failFor    = 21 * time.Second
		replicas   = 3
	)
	e := etcdtest.Start(t)
	var failUntil atomic.Pointer[time.Time]
	p := newFakeProvider(t, "/token", func(w http.ResponseWriter, _ *http.Request) {
		if until := failUntil.Load(); until != nil && time.Now().Before(*until) {
			w.Header().Set("Retry-After", fmt.Sprint(int(retryAfter.Seconds())))
			writeJSON(w, http.StatusTooManyRequests, `{"error":"slow_down"}`)
			return
		}
		writeJSON(w, http.StatusOK, `{"access_token":"at-1","token_type":"Bearer","expires_in":3600}`)
	})
	cfg := fleetConfig()
	cfg.CooldownBase = time.Second
	var rs []*fleetReplica
	for i := range replicas {
		rs = append(rs, newFleetReplica(t, e.Endpoint, fmt.Sprintf("ra-%d", i), cfg))
	}
	putProvider(t, rs[0].Broker, Provider{Name: "limited", TokenURL: p.URL + "/token", ClientID: "c", ClientAuth: oauth.AuthBasic}, "s")
	start := time.Now()
	until := start.Add(failFor)
	failUntil.Store(&until)

	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		answers  = map[string]int{}
		servedAt time.Time
	)
	for _, r := range rs {
		wg.Go(func() {
			for time.Since(start) < failFor+2*time.Second {
				_, err := r.GetToken(context.Background(), TokenRequest{Provider: "limited"})
				mu.Lock()
				switch {
				case err == nil:
					answers["token"]++
					if servedAt.IsZero() {
						servedAt = time.Now()
					}
				case isResourceExhausted(err):
					answers["429 with Retry-After"]++
				default:
					answers[err.Error()]++
				}
				mu.Unlock()
				time.Sleep(500 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	reqs := p.calls()
	t.Logf("provider requests: %d over %v of 429 Retry-After: %v from %d replicas asking twice a second; first token served %v after the start; answers %v",
		reqs, failFor, retryAfter, replicas, servedAt.Sub(start).Round(time.Millisecond), answers)
	if reqs > 4 {
		t.Errorf("the provider got %d requests, want at most 4 (one per Retry-After window, fleet-wide)", reqs)
	}
	if answers["token"] == 0 {
		t.Errorf("no caller got a token after the provider recovered; answers %v", answers)
	}
	for a := range answers {
		if a != "token" && a != "429 with Retry-After" {
			t.Errorf("a caller got %q, want a token or the provider's 429 with its Retry-After", a)
		}
	}
}

// isResourceExhausted reports whether err is the provider's 429 with a
// Retry-After, as a caller sees it while the fleet cools down.
func isResourceExhausted(err error) bool {
	var oe *oauth.Error
	return errors.As(err, &oe) && oe.StatusCode == http.StatusTooManyRequests && oe.RetryAfter > 0
}

// Forced refreshes (no stale token) are coalesced across the fleet: 50 in
// a row over three replicas within MinForcedRefreshInterval (5 s) cost the
// provider at most two token requests, and every caller gets a valid token.
func TestFleetCoalescesForcedRefreshes(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	f := newSandboxFront(t, sandbox.Config{})
	cfg := fleetConfig()
	cfg.Refresh = RefreshConfig{Disabled: true}
	var rs []*fleetReplica
	for i := range 3 {
		rs = append(rs, newFleetReplica(t, e.Endpoint, fmt.Sprintf("forced-%d", i), cfg))
	}
	putProvider(t, rs[0].Broker, sandboxProvider("orders", f.TokenURL()), sandboxClientSecret)
	before := f.sb.TokenCalls()
	start := time.Now()
	tokens := map[string]bool{}
	for i := range 50 {
		rec, err := rs[i%len(rs)].Refresh(context.Background(), TokenRequest{Provider: "orders"}, "")
		if err != nil {
			t.Fatalf("forced refresh %d on %s: %v", i+1, rs[i%len(rs)].name, err)
		}
		tokens[rec.AccessToken] = true
	}
	took := time.Since(start)
	calls := f.sb.TokenCalls() - before
	t.Logf("50 forced refreshes over 3 replicas in %v: %d provider calls, %d distinct tokens", took.Round(time.Millisecond), calls, len(tokens))
	if took >= DefaultMinForcedRefreshInterval {
		t.Logf("the refreshes took %v, longer than the interval: the bound below allows one call per interval started", took)
	}
	if want := 1 + int(took/DefaultMinForcedRefreshInterval) + 1; calls > want || calls == 0 {
		t.Errorf("the provider got %d token requests for 50 forced refreshes within %v, want 1 to %d", calls, took, want)
	}

	// A refresh naming a stale token is not coalesced: the caller's token
	// was refused, so a new one is obtained at once.
	cur := rs[0].cached(mustKey(t, "orders").id())
	rec, err := rs[1].Refresh(context.Background(), TokenRequest{Provider: "orders"}, cur.AccessToken)
	if err != nil || rec.AccessToken == cur.AccessToken {
		t.Errorf("Refresh with the current token as stale = %v, %v; want a new token", rec, err)
	}
}

func mustKey(t *testing.T, provider string) TokenKey {
	t.Helper()
	k, err := NewTokenKey(provider, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// Client-credentials tokens of different scopes take locks of their own: a
// slow answer for scope "a" does not hold up scope "b" on another replica.
// (An account's grant keeps one lock: a refresh token rotates.)
func TestClientCredentialsScopesDoNotWaitOnEachOther(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	bAnswered := make(chan struct{})
	aArrived := make(chan struct{})
	var once sync.Once
	p := newFakeProvider(t, "/token", func(w http.ResponseWriter, r *http.Request) {
		scope := r.PostForm.Get("scope")
		if scope == "a" {
			once.Do(func() { close(aArrived) })
			select { // a slow answer: until b was answered, at most 20 s
			case <-bAnswered:
			case <-time.After(20 * time.Second):
			}
		}
		writeJSON(w, http.StatusOK, fmt.Sprintf(`{"access_token":"at-%s","token_type":"Bearer","expires_in":3600}`, scope))
	})
	cfg := fleetConfig()
	cfg.FetchTimeout = 30 * time.Second
	r0 := newFleetReplica(t, e.Endpoint, "scopes-0", cfg)
	r1 := newFleetReplica(t, e.Endpoint, "scopes-1", cfg)
	putProvider(t, r0.Broker, Provider{Name: "cc", TokenURL: p.URL + "/token", ClientID: "c", ClientAuth: oauth.AuthBasic}, "s")

	aDone := make(chan error, 1)
	go func() {
		_, err := r0.GetToken(context.Background(), TokenRequest{Provider: "cc", Scopes: []string{"a"}})
		aDone <- err
	}()
	<-aArrived
	start := time.Now()
	rec, err := r1.GetToken(context.Background(), TokenRequest{Provider: "cc", Scopes: []string{"b"}})
	took := time.Since(start)
	select {
	case <-aDone:
		t.Errorf("scope a finished before scope b was answered: b waited for a")
	default:
	}
	close(bAnswered)
	t.Logf("scope b on another replica answered in %v while scope a's answer was held", took.Round(time.Millisecond))
	if err != nil || rec.AccessToken != "at-b" {
		t.Fatalf("GetToken(b) while a is slow: %v, %v; want at-b", rec, err)
	}
	if err := <-aDone; err != nil {
		t.Errorf("GetToken(a): %v", err)
	}
}
