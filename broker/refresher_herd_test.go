package broker

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
	"github.com/tokenbroker/tokenbroker/sandbox"
)

// TestRefresherHerd is acceptance 1: three replicas on one etcd, the
// background refresher running, 1000 concurrent callers on one key make
// exactly one provider call when the key is cold, again when the token is
// no longer fresh enough for them, and again when it has expired. The
// replicas and the sandbox share a fake clock that only the test moves.
func TestRefresherHerd(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	clock := newClock()
	f := newSandboxFront(t, sandbox.Config{Now: clock.Now})
	f.delay.Store(int64(50 * time.Millisecond)) // a slow provider widens the race
	cfg := fleetConfig()
	cfg.Now = clock.Now
	var rs []*fleetReplica
	for i := range 3 {
		rs = append(rs, newFleetReplica(t, e.Endpoint, fmt.Sprintf("herd-%d", i), cfg))
	}
	putProvider(t, rs[0].Broker, sandboxProvider("orders", f.TokenURL()), sandboxClientSecret)
	waitForLeader(t, rs, 0)

	const callers = 1000
	lifetime := sandbox.DefaultTokenLifetime
	tests := []struct {
		name    string
		advance time.Duration // moves the shared clock before the herd
	}{
		{name: "cold key"},
		{name: "past the callers' min_ttl", advance: lifetime - 30*time.Second},
		{name: "past expiry", advance: lifetime + time.Second},
	}
	var last string
	for _, tt := range tests {
		clock.Advance(tt.advance)
		before := f.sb.TokenCalls()

		start := make(chan struct{})
		tokens := make([]*TokenRecord, callers)
		errs := make([]error, callers)
		var wg sync.WaitGroup
		for i := range callers {
			wg.Go(func() {
				<-start
				tokens[i], errs[i] = rs[i%len(rs)].GetToken(context.Background(), TokenRequest{Provider: "orders"})
			})
		}
		close(start)
		wg.Wait()

		if got := f.sb.TokenCalls() - before; got != 1 {
			t.Errorf("%s: %d callers on %d replicas made %d provider calls, want 1", tt.name, callers, len(rs), got)
		}
		want := tokens[0]
		for i := range callers {
			if errs[i] != nil || tokens[i] == nil || tokens[i].AccessToken != want.AccessToken {
				t.Fatalf("%s: caller %d got %+v, %v; want the token every caller got, %q", tt.name, i, tokens[i], errs[i], want.AccessToken)
			}
		}
		if !want.Fresh(clock.Now(), cfg.DefaultMinTTL) || want.AccessToken == last {
			t.Errorf("%s: callers got %q expiring %v (previous token %q); want a new token fresh for %v at %v",
				tt.name, want.AccessToken, want.ExpiresAt, last, cfg.DefaultMinTTL, clock.Now())
		}
		last = want.AccessToken
	}
}
