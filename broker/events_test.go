package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/event"
	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
	"github.com/tokenbroker/tokenbroker/sandbox"
)

// The lifecycle of a provider and a grant, as the events record it: each
// change once, in order, with the grant's health before and after, and no
// secret anywhere.
func TestEventsRecordTheLifecycle(t *testing.T) {
	e := etcdtest.Start(t)
	sb, tokenURL := newSandbox(t, nil)
	b := newTestBroker(t, e)
	ctx := context.Background()
	p := sandboxProvider("sb", tokenURL)
	putProvider(t, b, p, sandboxClientSecret)
	putProvider(t, b, p, "") // unchanged: no event
	getToken(t, b, "sb")
	sb.SetFailure(&sandbox.Failure{Status: http.StatusInternalServerError, Body: `{"error":"server_error"}`})
	other := TokenRequest{Provider: "sb", Scopes: []string{"other"}} // a token not held yet
	if _, err := b.GetToken(ctx, other); err == nil {
		t.Fatal("GetToken while the provider fails = nil, want its error")
	}
	sb.SetFailure(nil)
	if _, err := b.GetToken(ctx, other); err != nil {
		t.Fatalf("GetToken after the provider recovered: %v", err)
	}
	if _, err := b.RotateClientSecret(ctx, "sb", "rotated-secret-9", false, 0); err != nil {
		t.Fatal(err)
	}
	if err := b.RevokeGrant(ctx, "sb", ""); err != nil {
		t.Fatal(err)
	}

	got, _, err := b.ListEvents(ctx, "", 0, EventFilter{})
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		typ           event.Type
		before, after GrantHealth
	}{
		{event.ProviderChanged, "", ""},
		{event.GrantFailing, HealthOK, HealthFailing},
		{event.GrantRecovered, HealthFailing, HealthOK},
		{event.ProviderSecretRotated, "", ""},
		{event.GrantRevoked, HealthOK, ""},
	}
	if len(got) != len(want) {
		t.Fatalf("events %v, want %d", types(got), len(want))
	}
	for i, w := range want {
		g := got[i]
		if g.Type != w.typ || g.HealthBefore != string(w.before) || g.HealthAfter != string(w.after) || g.Provider != "sb" {
			t.Errorf("event %d = %s %s→%s of %q, want %s %s→%s of sb", i, g.Type, g.HealthBefore, g.HealthAfter, g.Provider, w.typ, w.before, w.after)
		}
		if i > 0 && g.ID <= got[i-1].ID {
			t.Errorf("event %d has id %s, not after %s", i, g.ID, got[i-1].ID)
		}
		raw, _ := json.Marshal(g)
		for _, secret := range []string{sandboxClientSecret, "rotated-secret-9"} {
			if strings.Contains(string(raw), secret) {
				t.Errorf("event %s carries a secret: %s", g.Type, raw)
			}
		}
	}
	if failing := got[1]; !strings.Contains(failing.Detail, "500") {
		t.Errorf("grant.failing detail %q, want the provider's error", failing.Detail)
	}

	// Filters, and a page after an id.
	only, _, err := b.ListEvents(ctx, got[0].ID, 0, EventFilter{Types: []event.Type{event.GrantRecovered, event.GrantRevoked}})
	if err != nil || len(only) != 2 || only[0].Type != event.GrantRecovered {
		t.Errorf("ListEvents(after the first, recovered|revoked) = %v, %v; want those two", types(only), err)
	}
	if _, _, err := b.ListEvents(ctx, "not-an-id", 0, EventFilter{}); err == nil {
		t.Error("ListEvents(after a malformed id) = nil, want InvalidArgument")
	}
}

func types(es []event.Event) []event.Type {
	var out []event.Type
	for _, e := range es {
		out = append(out, e.Type)
	}
	return out
}

// A watcher on one replica gets the events of changes made on another as
// they are recorded; one that reconnects with the id of the last event it
// got misses none and sees none twice.
func TestWatchEventsResumes(t *testing.T) {
	e := etcdtest.Start(t)
	a, b := newTestBroker(t, e), newTestBroker(t, e)
	_, tokenURL := newSandbox(t, nil)
	putProvider(t, a, sandboxProvider("one", tokenURL), sandboxClientSecret)

	watch := func(after string, n int) []event.Event {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var mu sync.Mutex
		var got []event.Event
		errDone := errorString("enough")
		err := b.WatchEvents(ctx, after, EventFilter{}, func(ev event.Event) error {
			mu.Lock()
			defer mu.Unlock()
			got = append(got, ev)
			if len(got) == n {
				return errDone
			}
			return nil
		})
		if err != errDone {
			t.Fatalf("WatchEvents: %v after %d events, want %d", err, len(got), n)
		}
		return got
	}
	go func() {
		time.Sleep(200 * time.Millisecond)
		putProvider(t, a, sandboxProvider("two", tokenURL), sandboxClientSecret)
	}()
	first := watch("", 2) // "one" from the store, "two" from the watch
	if first[0].Provider != "one" || first[1].Provider != "two" {
		t.Fatalf("first watch got %v %s,%s; want one, two", types(first), first[0].Provider, first[1].Provider)
	}
	putProvider(t, a, sandboxProvider("three", tokenURL), sandboxClientSecret)
	again := watch(first[1].ID, 1)
	if again[0].Provider != "three" {
		t.Errorf("resumed watch got %s, want three (and nothing seen before)", again[0].Provider)
	}
}

type errorString string

func (e errorString) Error() string { return string(e) }

// The leader keeps a bounded number of events: the oldest go.
func TestEventRetention(t *testing.T) {
	e := etcdtest.Start(t)
	b := newTestBroker(t, e)
	b.eventRetention = 3
	_, tokenURL := newSandbox(t, nil)
	for _, name := range []string{"p1", "p2", "p3", "p4", "p5"} {
		putProvider(t, b, sandboxProvider(name, tokenURL), sandboxClientSecret)
	}
	b.compactEvents(context.Background())
	got, _, err := b.ListEvents(context.Background(), "", 0, EventFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].Provider != "p3" || got[2].Provider != "p5" {
		t.Errorf("after compaction to 3: %d events from %v, want p3..p5", len(got), got)
	}
	b.eventMaxAge = time.Nanosecond
	b.compactEvents(context.Background())
	if got, _, _ := b.ListEvents(context.Background(), "", 0, EventFilter{}); len(got) != 0 {
		t.Errorf("after compaction by age: %d events left, want 0", len(got))
	}
}

// A watcher that stops reading does not hold the broker back: changes go
// on being recorded while it is stuck, it gets what its bounded buffer
// held, then ErrSlowConsumer naming where to resume; resumed from the last
// id it got, it receives every later event once, in order.
func TestWatchEventsSlowConsumer(t *testing.T) {
	e := etcdtest.Start(t)
	const buffer = 4
	b := newTestBroker(t, e, func(s *brokerSetup) { s.cfg.EventWatchBuffer, s.cfg.EventWatchGrace = buffer, 50*time.Millisecond })
	_, tokenURL := newSandbox(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	stuck, release := make(chan struct{}), make(chan struct{})
	var got []event.Event
	watchErr := make(chan error, 1)
	go func() {
		watchErr <- b.WatchEvents(ctx, "", EventFilter{}, func(ev event.Event) error {
			got = append(got, ev)
			if len(got) == 1 {
				close(stuck)
				<-release // the consumer stops reading
			}
			return nil
		})
	}()
	const n = 40
	time.Sleep(100 * time.Millisecond) // the watch is open
	start := time.Now()
	for i := range n {
		putProvider(t, b, sandboxProvider(fmt.Sprintf("p%02d", i), tokenURL), sandboxClientSecret)
		if i == 0 {
			<-stuck
		}
	}
	t.Logf("%d changes recorded in %s while the watcher was stuck", n, time.Since(start))
	close(release)
	var err error
	select {
	case err = <-watchErr:
	case <-ctx.Done():
		t.Fatal("WatchEvents of a stuck consumer did not end")
	}
	if !errors.Is(err, ErrSlowConsumer) {
		t.Fatalf("WatchEvents of a stuck consumer = %v, want ErrSlowConsumer", err)
	}
	last := got[len(got)-1].ID
	if !strings.Contains(err.Error(), last) {
		t.Errorf("error %q does not name the last event sent, %s", err, last)
	}
	if len(got) > 1+buffer+1 || len(got) < 2 {
		t.Errorf("stuck consumer got %d events, want the first, then at most the %d buffered", len(got), buffer)
	}

	// Resumed from the last id it got: the rest, each once.
	var rest []event.Event
	done := errorString("all")
	err = b.WatchEvents(ctx, last, EventFilter{}, func(ev event.Event) error {
		rest = append(rest, ev)
		if len(got)+len(rest) == n {
			return done
		}
		return nil
	})
	if err != done {
		t.Fatalf("resumed WatchEvents: %v after %d events, want %d in all", err, len(got)+len(rest), n)
	}
	all := append(got, rest...)
	for i, ev := range all {
		if want := fmt.Sprintf("p%02d", i); ev.Provider != want {
			t.Fatalf("event %d is of %s, want %s: every event once, in order (got %d before the error, %d after)", i, ev.Provider, want, len(got), len(rest))
		}
	}
}
