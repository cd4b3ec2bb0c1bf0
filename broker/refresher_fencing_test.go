package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
	"github.com/tokenbroker/tokenbroker/sandbox"
)

// fencing is the stage of acceptance 4: replicas on a shared fake clock,
// callers keeping one client-credentials token hot, and a record of every
// token etcd ever stored for it.
type fencing struct {
	rs    []*fleetReplica
	f     *sandboxFront
	clock *fakeClock
	cli   *clientv3.Client // the test's own
	id    string
	first *TokenRecord

	mu     sync.Mutex
	stored []string // access tokens written to etcd, in order
}

func newFencing(t *testing.T, replicas int) *fencing {
	t.Helper()
	e := etcdtest.Start(t)
	s := &fencing{clock: newClock()}
	s.f = newSandboxFront(t, sandbox.Config{Now: s.clock.Now})
	cfg := fleetConfig()
	cfg.Now = s.clock.Now
	cfg.Refresh = RefreshConfig{Tick: 50 * time.Millisecond, ReportInterval: 100 * time.Millisecond}
	for i := range replicas {
		s.rs = append(s.rs, newFleetReplica(t, e.Endpoint, fmt.Sprintf("fence-%d", i), cfg))
	}
	s.cli = e.Client(t, nil)
	putProvider(t, s.rs[0].Broker, sandboxProvider("orders", s.f.TokenURL()), sandboxClientSecret)
	key, err := NewTokenKey("orders", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	s.id = key.id()
	s.first = getToken(t, s.rs[0].Broker, "orders")

	// Record every write of the token, from its first one on.
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	tkey := s.rs[0].prefix + tokensPrefix + s.id
	watch := s.cli.Watch(ctx, tkey, clientv3.WithRev(s.first.Revision))
	wg.Go(func() {
		for resp := range watch {
			for _, ev := range resp.Events {
				rec, err := s.rs[0].decodeToken(tkey, ev.Kv.Value, ev.Kv.ModRevision)
				if err != nil {
					t.Errorf("decode stored token: %v", err)
					continue
				}
				s.mu.Lock()
				s.stored = append(s.stored, rec.AccessToken)
				s.mu.Unlock()
			}
		}
	})
	// Callers keep the token hot on every replica.
	wg.Go(func() {
		for ctx.Err() == nil {
			for _, r := range s.rs {
				if _, err := r.GetToken(context.Background(), TokenRequest{Provider: "orders"}); err != nil && !r.killed.Load() {
					t.Errorf("GetToken on %s: %v", r.name, err)
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
	return s
}

// heldRefresh makes the token due and returns the leader whose background
// refresh is now held at the provider.
func (s *fencing) heldRefresh(t *testing.T) (*fleetReplica, *heldRequest) {
	t.Helper()
	h := s.f.holdNext()
	// A third of the hour remains: due for the leader, still fresh for
	// callers (min_ttl 1 minute).
	s.clock.Advance(40 * time.Minute)
	select {
	case <-h.arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("no background refresh reached the provider")
	}
	l := leaderAmong(s.rs, 0)
	if l == nil {
		t.Fatal("a refresh is in flight but no single replica leads")
	}
	return l, h
}

// loseLease revokes r's session lease, as etcd does when r's keepalives stop
// reaching it; r itself keeps running.
func (s *fencing) loseLease(t *testing.T, r *fleetReplica) {
	t.Helper()
	sess, err := r.session(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.cli.Revoke(context.Background(), sess.Lease()); err != nil {
		t.Fatalf("revoke the session lease of %s: %v", r.name, err)
	}
}

// heldAnswer returns the access token the held request got from the provider.
func heldAnswer(t *testing.T, h *heldRequest) string {
	t.Helper()
	select {
	case <-h.answered:
	case <-time.After(10 * time.Second):
		t.Fatal("the held request got no answer")
	}
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal(h.answer, &tok); err != nil || tok.AccessToken == "" {
		t.Fatalf("the held request was answered %s (%v), want a token", h.answer, err)
	}
	return tok.AccessToken
}

// storedToken is the token record in etcd now.
func (s *fencing) storedToken(t *testing.T) *TokenRecord {
	t.Helper()
	rec, err := s.rs[0].readToken(context.Background(), s.id)
	if err != nil || rec == nil {
		t.Fatalf("read the stored token: %v, %v", rec, err)
	}
	return rec
}

// settled waits until l has finished with the grant (its fenced write
// committed or was refused) and every replica holds what etcd holds.
func (s *fencing) settled(t *testing.T, l *fleetReplica) *TokenRecord {
	t.Helper()
	// The provider's own identity is locked per token key.
	pollFor(t, l.name+" done with the token's lock", 10*time.Second, func() bool {
		v, ok := l.local.Load(s.id)
		return ok && len(v.(chan struct{})) == 0
	})
	var want *TokenRecord
	pollFor(t, "every replica holding the stored token", 10*time.Second, func() bool {
		want = s.storedToken(t)
		for _, r := range s.rs {
			if got := r.cached(s.id); got == nil || got.AccessToken != want.AccessToken {
				return false
			}
		}
		return true
	})
	return want
}

// checkDiscarded fails the test when the late token reached etcd, a
// replica's memory or the introspection index.
func (s *fencing) checkDiscarded(t *testing.T, lateToken string) {
	t.Helper()
	s.mu.Lock()
	stored := append([]string(nil), s.stored...)
	s.mu.Unlock()
	for _, tok := range stored {
		if tok == lateToken {
			t.Errorf("etcd stored the deposed leader's late token; writes %v, want it discarded", stored)
		}
	}
	for _, r := range s.rs {
		if got := r.cached(s.id); got != nil && got.AccessToken == lateToken {
			t.Errorf("%s serves the deposed leader's late token", r.name)
		}
	}
	if got, err := s.rs[0].Introspect(context.Background(), lateToken); err != nil || got.Active {
		t.Errorf("Introspect of the deposed leader's late token = %+v, %v; want inactive", got, err)
	}
}

// TestRefresherFencesDeposedLeader is acceptance 4: a leader's background
// refresh is in flight when its session lease is lost (revoked from
// outside: the leader keeps running, as after a network partition or a
// long pause); the provider answers it afterwards; its write of that late
// token is refused by the fence, and the token written since survives.
func TestRefresherFencesDeposedLeader(t *testing.T) {
	t.Parallel()
	t.Run("a new leader refreshed meanwhile", func(t *testing.T) {
		s := newFencing(t, 3)
		old, h := s.heldRefresh(t)
		s.loseLease(t, old)
		var newer *TokenRecord
		pollFor(t, "the new leader's token in etcd", 10*time.Second, func() bool {
			newer = s.storedToken(t)
			return newer.AccessToken != s.first.AccessToken
		})
		// Until its keepalive tells it, the deposed leader still believes it
		// leads (the fence is what makes that harmless); then only the new
		// leader does.
		pollFor(t, "a single leader, not "+old.name, 10*time.Second, func() bool {
			l := leaderAmong(s.rs, 0)
			return l != nil && l != old
		})

		h.Release()
		lateToken := heldAnswer(t, h)
		got := s.settled(t, old)

		if got.AccessToken != newer.AccessToken || got.Generation != newer.Generation {
			t.Errorf("etcd holds %q (generation %d), want the new leader's %q (generation %d)",
				got.AccessToken, got.Generation, newer.AccessToken, newer.Generation)
		}
		s.checkDiscarded(t, lateToken)
	})

	t.Run("no other replica", func(t *testing.T) {
		s := newFencing(t, 1)
		old, h := s.heldRefresh(t)
		s.loseLease(t, old)

		h.Release()
		lateToken := heldAnswer(t, h)
		// The replica's next refresh, under a new session, writes the token
		// that survives.
		var newer *TokenRecord
		pollFor(t, "a token newer than the first in etcd", 10*time.Second, func() bool {
			newer = s.storedToken(t)
			return newer.Generation > s.first.Generation
		})
		got := s.settled(t, old)

		if got.AccessToken == lateToken || got.AccessToken != newer.AccessToken {
			t.Errorf("etcd holds %q, want %q written under the new session, not the late %q", got.AccessToken, newer.AccessToken, lateToken)
		}
		s.checkDiscarded(t, lateToken)
		if calls := s.f.sb.TokenCalls(); calls != 3 {
			t.Errorf("the provider got %d calls, want 3: the first token, the late one, the one under the new session", calls)
		}
	})
}
