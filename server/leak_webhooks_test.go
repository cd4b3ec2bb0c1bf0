package server_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/tokenbroker/tokenbroker/broker"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/testkeys"
)

// The flows of events and webhooks in the leak tests: subscriptions made
// with a known signing secret (over gRPC) and a generated one (over REST)
// before every other flow, so that they receive every event the flows
// record; at the end a replica that delivers joins, a receiver that fails
// once and one that never recovers (dead letters, redelivered) get every
// event, and the admin reads events, subscriptions and deliveries every
// way there is. What the receivers got is transcript, like an admin
// answer.

// leakWebhookSecret signs the deliveries of "ops": whsec_ and the base64
// of 24 known bytes.
var leakWebhookSecret = "whsec_" + base64.StdEncoding.EncodeToString([]byte("wK4hZ8qN2vB6xR1tY9mL3pS7"))

// hookSink is a webhook receiver that keeps what it was sent; it answers
// 500 to the first failFirst requests, and to every one when failAlways.
type hookSink struct {
	*httptest.Server
	failFirst  int
	failAlways bool

	mu       sync.Mutex
	requests int
	got      []string // each request's headers and body
}

func newHookSink(t *testing.T, failFirst int, failAlways bool) *hookSink {
	s := &hookSink{failFirst: failFirst, failAlways: failAlways}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		s.mu.Lock()
		defer s.mu.Unlock()
		s.requests++
		s.got = append(s.got, fmt.Sprintf("%v %s", req.Header, body))
		if s.failAlways || s.requests <= s.failFirst {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *hookSink) deliveries() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.got...)
}

// webhookSubscribe makes the subscriptions "ops" and "dead".
func (r *flowRun) webhookSubscribe(t *testing.T) {
	t.Helper()
	r.book.add("webhook signing secret", leakWebhookSecret)
	r.hookOK, r.hookDead = newHookSink(t, 1, false), newHookSink(t, 0, true)
	put, err := r.in.admin.PutWebhook(ctxb, &tokenbrokerv1.PutWebhookRequest{
		Webhook: &tokenbrokerv1.Webhook{Id: "ops", Url: r.hookOK.URL}, Secret: leakWebhookSecret})
	if err != nil {
		t.Fatalf("PutWebhook(ops): %v", err)
	}
	r.said.addMsg("PutWebhook(ops)", put)
	code, raw := restDo(t, http.DefaultClient, http.MethodPut, r.in.baseURL+"/v1/admin/webhooks/dead",
		http.Header{"Authorization": {"Bearer " + testAdminKey}}, mustJSON(t, map[string]any{"webhook": map[string]any{"url": r.hookDead.URL}}))
	var generated struct {
		Secret string `json:"generated_secret"`
	}
	if code != http.StatusOK || json.Unmarshal(raw, &generated) != nil || generated.Secret == "" {
		t.Fatalf("REST PutWebhook(dead) = %d %s, want a generated secret", code, raw)
	}
	// The answer that shows the generated secret, once, by design, is not
	// transcript; the secret is a secret from now on.
	r.book.add("generated webhook signing secret", generated.Secret)
	// A put refused for its URL, and one for a malformed secret: the
	// errors do not repeat the secret.
	_, err = r.in.admin.PutWebhook(ctxb, &tokenbrokerv1.PutWebhookRequest{
		Webhook: &tokenbrokerv1.Webhook{Id: "bad", Url: "http://hooks.example.com/x"}, Secret: leakWebhookSecret})
	r.said.addErr("PutWebhook(plain http)", err)
	_, err = r.in.admin.PutWebhook(ctxb, &tokenbrokerv1.PutWebhookRequest{
		Webhook: &tokenbrokerv1.Webhook{Id: "bad", Url: r.hookOK.URL}, Secret: "whsec_" + leakClientSecret + "!"})
	r.said.addErr("PutWebhook(malformed secret)", err)
}

// webhookFlows starts a replica that delivers, waits until both
// subscriptions are through every event, and reads everything back.
func (r *flowRun) webhookFlows(t *testing.T) {
	t.Helper()
	b, err := broker.New(context.Background(), broker.Config{
		Client:  r.env.etcd.Client(t, nil),
		Logger:  r.log.Named("deliverer"),
		Keyring: testkeys.Keyring(),
		Webhooks: broker.WebhookConfig{Schedule: []time.Duration{time.Millisecond, time.Millisecond},
			Poll: 20 * time.Millisecond, BreakerThreshold: 1000},
	})
	if err != nil {
		t.Fatalf("broker.New(deliverer): %v", err)
	}
	stop := r.stop
	r.stop = func() { stop(); b.Close() }
	events, err := r.in.admin.ListEvents(ctxb, &tokenbrokerv1.ListEventsRequest{})
	if err != nil || len(events.GetEvents()) < 10 {
		t.Fatalf("ListEvents = %d events, %v; want the flows' (at least 10)", len(events.GetEvents()), err)
	}
	r.said.addMsg("ListEvents", events)
	last := events.GetEvents()[len(events.GetEvents())-1].GetId()
	for _, id := range []string{"ops", "dead"} {
		deadline := time.Now().Add(20 * time.Second)
		for {
			w, err := r.in.admin.GetWebhook(ctxb, &tokenbrokerv1.GetWebhookRequest{Id: id})
			if err == nil && w.GetWebhook().GetLastEventId() >= last {
				r.said.addMsg("GetWebhook("+id+")", w)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("webhook %s: not through the events after 20s: %v, %v", id, w, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	ds, err := r.in.admin.ListWebhookDeliveries(ctxb, &tokenbrokerv1.ListWebhookDeliveriesRequest{Id: "dead"})
	if err != nil || len(ds.GetDeliveries()) == 0 || ds.GetDeliveries()[0].GetStatus() != tokenbrokerv1.WebhookDeliveryStatus_WEBHOOK_DELIVERY_STATUS_DEAD {
		t.Fatalf("ListWebhookDeliveries(dead) = %v, %v; want dead letters", ds, err)
	}
	r.said.addMsg("ListWebhookDeliveries(dead)", ds)
	_, err = r.in.admin.RedeliverWebhook(ctxb, &tokenbrokerv1.RedeliverWebhookRequest{Id: "dead", EventId: ds.GetDeliveries()[0].GetEventId()})
	r.said.addErr("RedeliverWebhook", err)
	_, err = r.in.admin.RedeliverWebhook(ctxb, &tokenbrokerv1.RedeliverWebhookRequest{Id: "ops", EventId: last})
	r.said.addErr("RedeliverWebhook(delivered)", err)
	for _, path := range []string{"/v1/admin/webhooks", "/v1/admin/webhooks/ops", "/v1/admin/webhooks/dead/deliveries", "/v1/admin/webhooks/ops/deliveries",
		"/v1/admin/events", "/v1/admin/events?types=grant.reauthorization_required&types=grant.failing"} {
		if code, raw := r.rest(t, http.MethodGet, path, testAdminKey, nil); code != http.StatusOK {
			t.Errorf("GET %s = %d %s", path, code, raw)
		}
	}
	list, err := r.in.admin.ListWebhooks(ctxb, &tokenbrokerv1.ListWebhooksRequest{})
	r.said.addErr("ListWebhooks", err)
	r.said.addMsg("ListWebhooks", list)
	// A watch from the start, over gRPC, until it caught up.
	ctx, cancel := context.WithTimeout(ctxb, 10*time.Second)
	defer cancel()
	stream, err := r.in.admin.WatchEvents(ctx, &tokenbrokerv1.WatchEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for n := 0; n < len(events.GetEvents()); n++ {
		got, err := stream.Recv()
		if err != nil {
			t.Fatalf("WatchEvents: %v after %d events", err, n)
		}
		r.said.addMsg("WatchEvents", got)
	}
	types := map[string]int{}
	for _, e := range events.GetEvents() {
		types[e.GetType()]++
	}
	var kinds []string
	for k := range types {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	for _, want := range []string{"grant.reauthorization_required", "grant.failing", "grant.authorized", "provider.secret_rotated", "apikey.created"} {
		if types[want] == 0 {
			t.Errorf("the flows recorded no %s event (recorded %v): the leak test must see one", want, kinds)
		}
	}
	for _, sink := range []*hookSink{r.hookOK, r.hookDead} {
		for _, d := range sink.deliveries() {
			r.said.add("webhook delivery", d)
		}
	}
	if got := len(r.hookOK.deliveries()); got < len(events.GetEvents()) {
		t.Errorf("ops received %d deliveries, want every one of the %d events", got, len(events.GetEvents()))
	}
	r.log.Debug("webhook flows done", zap.Int("events", len(events.GetEvents())))
}
