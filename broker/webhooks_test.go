package broker

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/event"
	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
)

// receiver is a webhook endpoint that verifies each delivery as a Standard
// Webhooks receiver does, from the specification: the HMAC-SHA256 of
// "{webhook-id}.{webhook-timestamp}.{body}" keyed with the base64 bytes
// after whsec_, compared in constant time with each v1 signature; the
// timestamp within five minutes. answer decides the status of attempt n
// (counting from 1).
type receiver struct {
	*httptest.Server
	t      *testing.T
	secret string

	mu       sync.Mutex
	attempts int
	answer   func(n int) int
	got      []event.Event // verified deliveries answered 2xx, in arrival order
	ids      []string      // their webhook-id headers
	at       []time.Time   // when each arrived
	hold     chan struct{} // when set, the next delivery waits for it to close
	held     chan struct{} // closed when a delivery is held
	// processHeld: a held delivery is processed (counted as received)
	// before it waits, as by a receiver that acts and then answers; the
	// sender may be gone by the time the answer is written.
	processHeld bool
}

func newReceiver(t *testing.T, secret string) *receiver {
	r := &receiver{t: t, secret: secret, answer: func(int) int { return http.StatusNoContent }}
	r.Server = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.Close)
	return r
}

func (r *receiver) verify(req *http.Request, body []byte) error {
	id, ts := req.Header.Get("webhook-id"), req.Header.Get("webhook-timestamp")
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return fmt.Errorf("webhook-timestamp %q is not Unix seconds", ts)
	}
	if d := time.Since(time.Unix(sec, 0)); d > 5*time.Minute || d < -5*time.Minute {
		return fmt.Errorf("webhook-timestamp %s is %s off", ts, d)
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(r.secret, "whsec_"))
	if err != nil {
		return err
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id + "." + ts + "." + string(body)))
	want := mac.Sum(nil)
	for _, s := range strings.Fields(req.Header.Get("webhook-signature")) {
		v, sig, ok := strings.Cut(s, ",")
		got, err := base64.StdEncoding.DecodeString(sig)
		if ok && v == "v1" && err == nil && hmac.Equal(got, want) {
			return nil
		}
	}
	return fmt.Errorf("no valid v1 signature in %q", req.Header.Get("webhook-signature"))
}

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	if err := r.verify(req, body); err != nil {
		r.t.Errorf("receiver: %v", err)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	arrived := time.Now()
	r.mu.Lock()
	hold, held, processFirst := r.hold, r.held, r.processHeld
	r.hold = nil
	r.mu.Unlock()
	code := 0
	if hold != nil && processFirst {
		code = r.process(req, body, arrived)
	}
	if hold != nil {
		close(held)
		select {
		case <-hold:
		case <-req.Context().Done():
			return // the sender gave up
		}
	}
	if code == 0 {
		code = r.process(req, body, arrived)
	}
	w.WriteHeader(code)
}

// process counts an attempt and, when it is answered 2xx, the event; it
// returns the answer's status.
func (r *receiver) process(req *http.Request, body []byte, arrived time.Time) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.attempts++
	code := r.answer(r.attempts)
	if code/100 == 2 {
		var e event.Event
		if err := json.Unmarshal(body, &e); err != nil {
			r.t.Errorf("receiver: body is not an event: %v", err)
		}
		if e.ID != req.Header.Get("webhook-id") {
			r.t.Errorf("receiver: webhook-id %q, body id %q", req.Header.Get("webhook-id"), e.ID)
		}
		r.got = append(r.got, e)
		r.ids = append(r.ids, e.ID)
		r.at = append(r.at, arrived)
	}
	return code
}

func (r *receiver) received() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.ids)
}

// fastWebhooks makes delivery quick enough for tests.
func fastWebhooks(schedule ...time.Duration) brokerOption {
	return func(s *brokerSetup) {
		s.cfg.Webhooks = WebhookConfig{Schedule: schedule, Poll: 20 * time.Millisecond, Timeout: 2 * time.Second,
			BreakerThreshold: 1000}
	}
}

// makeEvents records n provider.changed events, one per new provider.
func makeEvents(t *testing.T, b *Broker, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		putProvider(t, b, sandboxProvider(fmt.Sprintf("p%03d", i), "http://127.0.0.1:1/token"), "s")
	}
}

// allEventIDs lists the ids of every event kept, oldest first.
func allEventIDs(t *testing.T, b *Broker) []string {
	t.Helper()
	evs, _, err := b.ListEvents(context.Background(), "", 0, EventFilter{})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range evs {
		ids = append(ids, e.ID)
	}
	return ids
}

func putWebhook(t *testing.T, b *Broker, w Webhook) string {
	t.Helper()
	_, secret, err := b.PutWebhook(context.Background(), w, "")
	if err != nil {
		t.Fatalf("PutWebhook: %v", err)
	}
	if !strings.HasPrefix(secret, WebhookSecretPrefix) {
		t.Fatalf("generated secret has not the whsec_ form")
	}
	return secret
}

// A healthy receiver gets every event recorded after the subscription,
// each once, in the order recorded, with a signature it verifies.
func TestWebhookDeliversEveryEventOnceInOrder(t *testing.T) {
	e := etcdtest.Start(t)
	b := newTestBroker(t, e, fastWebhooks(10*time.Millisecond))
	makeEvents(t, b, 0, 3) // before the subscription: not delivered
	before := len(allEventIDs(t, b))
	r := newReceiver(t, "")
	r.secret = putWebhook(t, b, Webhook{ID: "ops", URL: r.URL})
	makeEvents(t, b, 3, 20)
	want := allEventIDs(t, b)[before:]
	eventually(t, "20 deliveries", func() bool { return len(r.received()) >= len(want) })
	time.Sleep(100 * time.Millisecond) // room for a duplicate to show
	if got := r.received(); !slices.Equal(got, want) {
		t.Fatalf("receiver got %d events %v, want each of %d once in order %v", len(got), got, len(want), want)
	}
	w, err := b.GetWebhook(context.Background(), "ops")
	if err != nil {
		t.Fatal(err)
	}
	if w.Status.LastEventID != want[len(want)-1] {
		t.Errorf("cursor at %q, want the last event %q", w.Status.LastEventID, want[len(want)-1])
	}
}

// The filters select what is delivered.
func TestWebhookFiltersByTypeAndProvider(t *testing.T) {
	e := etcdtest.Start(t)
	b := newTestBroker(t, e, fastWebhooks(10*time.Millisecond))
	r := newReceiver(t, "")
	r.secret = putWebhook(t, b, Webhook{ID: "p2", URL: r.URL, EventTypes: []event.Type{event.ProviderChanged}, Providers: []string{"p002"}})
	makeEvents(t, b, 0, 4)
	eventually(t, "the event of p002", func() bool { return len(r.received()) == 1 })
	time.Sleep(100 * time.Millisecond)
	if r.got[0].Provider != "p002" || len(r.received()) != 1 {
		t.Fatalf("receiver got %v, want only the event of p002", r.got)
	}
}

// A receiver that answers 500 for a while gets the event once it
// recovers, and the later events after it.
func TestWebhookRetriesAfterServerErrors(t *testing.T) {
	e := etcdtest.Start(t)
	b := newTestBroker(t, e, fastWebhooks(10*time.Millisecond, 20*time.Millisecond, 20*time.Millisecond, 20*time.Millisecond, 20*time.Millisecond))
	r := newReceiver(t, "")
	r.answer = func(n int) int {
		if n <= 3 {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	}
	r.secret = putWebhook(t, b, Webhook{ID: "ops", URL: r.URL})
	makeEvents(t, b, 0, 3)
	want := allEventIDs(t, b)
	eventually(t, "3 deliveries", func() bool { return len(r.received()) == 3 })
	if got := r.received(); !slices.Equal(got, want) {
		t.Fatalf("receiver got %v, want %v", got, want)
	}
	ds, err := b.ListWebhookDeliveries(context.Background(), "ops")
	if err != nil {
		t.Fatal(err)
	}
	first := ds[len(ds)-1] // newest first
	if first.EventID != want[0] || first.Status != DeliveryDelivered || first.Attempts != 4 || first.LastHTTPStatus != 200 {
		t.Errorf("first delivery %+v, want delivered on attempt 4 with HTTP 200", first)
	}
}

// A receiver that never recovers ends with a dead letter, visible with its
// attempts and last status; the later events go on; a redelivery delivers
// the dead letter once the receiver is back.
func TestWebhookDeadLetterAndRedeliver(t *testing.T) {
	e := etcdtest.Start(t)
	b := newTestBroker(t, e, fastWebhooks(10*time.Millisecond, 10*time.Millisecond))
	ctx := context.Background()
	r := newReceiver(t, "")
	down := true
	r.answer = func(int) int {
		if down {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	}
	r.secret = putWebhook(t, b, Webhook{ID: "ops", URL: r.URL})
	makeEvents(t, b, 0, 1)
	dead := allEventIDs(t, b)[0]
	var ds []WebhookDelivery
	eventually(t, "a dead letter", func() bool {
		var err error
		ds, err = b.ListWebhookDeliveries(ctx, "ops")
		return err == nil && len(ds) == 1 && ds[0].Status == DeliveryDead
	})
	if d := ds[0]; d.EventID != dead || d.Attempts != 3 || d.LastHTTPStatus != 500 || d.LastError != "HTTP 500" {
		t.Errorf("dead letter %+v, want event %s after 3 attempts, last HTTP 500", d, dead)
	}
	if err := b.RedeliverWebhook(ctx, "ops", allEventIDs(t, b)[0][:20]+"ffff"); !errors.Is(err, ErrNotFound) {
		t.Errorf("RedeliverWebhook of an unknown delivery = %v, want ErrNotFound", err)
	}
	r.mu.Lock()
	down = false
	r.mu.Unlock()
	makeEvents(t, b, 1, 1)
	later := allEventIDs(t, b)[1]
	eventually(t, "the later event", func() bool { return len(r.received()) == 1 })
	if err := b.RedeliverWebhook(ctx, "ops", dead); err != nil {
		t.Fatalf("RedeliverWebhook: %v", err)
	}
	eventually(t, "the dead letter", func() bool { return len(r.received()) == 2 })
	if got := r.received(); !slices.Equal(got, []string{later, dead}) {
		t.Fatalf("receiver got %v, want the later event %s then the redelivered %s", got, later, dead)
	}
	if err := b.RedeliverWebhook(ctx, "ops", dead); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("RedeliverWebhook of a delivered event = %v, want ErrInvalidArgument", err)
	}
}

// After BreakerThreshold consecutive failures the subscription pauses.
func TestWebhookBreakerPauses(t *testing.T) {
	e := etcdtest.Start(t)
	b := newTestBroker(t, e, func(s *brokerSetup) {
		s.cfg.Webhooks = WebhookConfig{Schedule: []time.Duration{time.Millisecond, time.Millisecond, time.Millisecond, time.Millisecond},
			Poll: 20 * time.Millisecond, BreakerThreshold: 2, BreakerPause: time.Hour}
	})
	r := newReceiver(t, "")
	r.answer = func(int) int { return http.StatusServiceUnavailable }
	r.secret = putWebhook(t, b, Webhook{ID: "ops", URL: r.URL})
	makeEvents(t, b, 0, 1)
	var w *Webhook
	eventually(t, "the breaker opens", func() bool {
		var err error
		w, err = b.GetWebhook(context.Background(), "ops")
		return err == nil && !w.Status.PausedUntil.IsZero()
	})
	time.Sleep(200 * time.Millisecond)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.attempts != 2 || w.Status.ConsecutiveFailures != 2 {
		t.Errorf("%d attempts, %d consecutive failures, want the breaker to stop at 2", r.attempts, w.Status.ConsecutiveFailures)
	}
}

// The leader dies while the receiver holds a delivery: the next leader
// delivers that event and every later one; a duplicate has the same
// webhook-id, and no event is missing.
func TestWebhookLeaderFailover(t *testing.T) {
	e := etcdtest.Start(t)
	brokers := []*Broker{
		newTestBroker(t, e, fastWebhooks(10*time.Millisecond), withReplicaName("a")),
		newTestBroker(t, e, fastWebhooks(10*time.Millisecond), withReplicaName("b")),
	}
	var leader, follower *Broker
	eventually(t, "a leader of shard 0", func() bool {
		for i, b := range brokers {
			if slices.Contains(b.LeadingShards(), 0) {
				leader, follower = b, brokers[1-i]
				return true
			}
		}
		return false
	})
	r := newReceiver(t, "")
	r.secret = putWebhook(t, follower, Webhook{ID: "ops", URL: r.URL})
	hold, held := make(chan struct{}), make(chan struct{})
	r.mu.Lock()
	r.hold, r.held = hold, held
	r.mu.Unlock()
	makeEvents(t, follower, 0, 10)
	<-held
	if err := leader.Close(); err != nil { // mid-delivery
		t.Fatal(err)
	}
	close(hold)
	want := allEventIDs(t, follower)
	eventually(t, "every event at the receiver", func() bool {
		got := r.received()
		for _, id := range want {
			if !slices.Contains(got, id) {
				return false
			}
		}
		return true
	})
	got := r.received()
	var order []string
	for _, id := range got {
		if len(order) == 0 || order[len(order)-1] != id {
			order = append(order, id)
		}
	}
	if !slices.Equal(order, want) {
		t.Errorf("receiver got %v, want every event in order (a duplicate only repeating the one before)", got)
	}
	t.Logf("%d events, %d deliveries (%d duplicates)", len(want), len(got), len(got)-len(want))
}

// The URL rule is the providers': https, or plain http to loopback only
// where the broker allows it; the secret has the whsec_ form.
func TestPutWebhookValidates(t *testing.T) {
	e := etcdtest.Start(t)
	b := newTestBroker(t, e)
	strict := newTestBroker(t, e, func(s *brokerSetup) { s.cfg.RequireHTTPS = true })
	good, _ := GenerateWebhookSecret()
	tests := []struct {
		name   string
		b      *Broker
		give   Webhook
		secret string
		ok     bool
	}{
		{"https", strict, Webhook{ID: "a", URL: "https://hooks.example.com/x"}, "", true},
		{"http loopback", b, Webhook{ID: "a", URL: "http://127.0.0.1:9/x"}, good, true},
		{"http loopback, https required", strict, Webhook{ID: "a", URL: "http://127.0.0.1:9/x"}, "", false},
		{"http elsewhere", b, Webhook{ID: "a", URL: "http://hooks.example.com/x"}, "", false},
		{"credentials in the URL", b, Webhook{ID: "a", URL: "https://u:p@hooks.example.com/x"}, "", false},
		{"bad id", b, Webhook{ID: "A b", URL: "https://hooks.example.com/x"}, "", false},
		{"unknown type", b, Webhook{ID: "a", URL: "https://hooks.example.com/x", EventTypes: []event.Type{"nope"}}, "", false},
		{"secret without whsec_", b, Webhook{ID: "a", URL: "https://hooks.example.com/x"}, "plain-secret-value", false},
		{"secret too short", b, Webhook{ID: "a", URL: "https://hooks.example.com/x"}, "whsec_" + base64.StdEncoding.EncodeToString([]byte("short")), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := tt.b.PutWebhook(context.Background(), tt.give, tt.secret)
			if tt.ok != (err == nil) || (err != nil && !errors.Is(err, ErrInvalidArgument)) {
				t.Errorf("PutWebhook = %v, want ok %v (else ErrInvalidArgument)", err, tt.ok)
			}
			if err != nil && tt.secret != "" && strings.Contains(err.Error(), tt.secret) {
				t.Errorf("error carries the secret: %v", err)
			}
		})
	}
}

// The secret is sealed in etcd; an update without one keeps it; Delete
// removes the subscription.
func TestWebhookSecretSealedAndKept(t *testing.T) {
	e := etcdtest.Start(t)
	b := newTestBroker(t, e)
	ctx := context.Background()
	_, secret, err := b.PutWebhook(ctx, Webhook{ID: "ops", URL: "https://hooks.example.com/x"}, "")
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range etcdKeys(t, e.Client(t, nil), DefaultPrefix) {
		if strings.Contains(v, strings.TrimPrefix(secret, WebhookSecretPrefix)) {
			t.Errorf("%s holds the secret in the clear", k)
		}
	}
	w, again, err := b.PutWebhook(ctx, Webhook{ID: "ops", URL: "https://hooks.example.com/y"}, "")
	if err != nil || again != "" || w.Secret != secret {
		t.Fatalf("update without a secret: %v, generated %v, kept %v; want the old secret kept and none generated", err, again != "", w != nil && w.Secret == secret)
	}
	if err := b.DeleteWebhook(ctx, "ops"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.GetWebhook(ctx, "ops"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetWebhook after delete = %v, want ErrNotFound", err)
	}
}
