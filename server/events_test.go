package server_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"go.uber.org/zap/zaptest"
)

// Events over the API: a gRPC watcher started before a change receives
// its event; REST lists the same events and pages after an id; an unknown
// type is the caller's InvalidArgument (400).
func TestEventsOverTheAPI(t *testing.T) {
	e := newEnv(t)
	in := e.start(zaptest.NewLogger(t))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := in.admin.WatchEvents(ctx, &tokenbrokerv1.WatchEventsRequest{Types: []string{"provider.changed"}})
	if err != nil {
		t.Fatal(err)
	}
	e.register(in, "watched")
	got, err := stream.Recv()
	if err != nil {
		t.Fatalf("WatchEvents: %v", err)
	}
	if ev := got.GetEvent(); ev.GetType() != "provider.changed" || ev.GetProvider() != "watched" || ev.GetDetail() != "created" {
		t.Errorf("watched event = %v, want provider.changed of watched, created", ev)
	}
	e.register(in, "second")

	code, body, raw := restCall(t, http.MethodGet, in.baseURL+"/v1/admin/events?types=provider.changed", nil)
	events, _ := body["events"].([]any)
	if code != http.StatusOK || len(events) != 2 {
		t.Fatalf("GET /v1/admin/events = %d %s, want 200 with 2 events", code, raw)
	}
	first := events[0].(map[string]any)["id"].(string)
	code, body, raw = restCall(t, http.MethodGet, in.baseURL+"/v1/admin/events?types=provider.changed&after_id="+first, nil)
	if events, _ := body["events"].([]any); code != http.StatusOK || len(events) != 1 || events[0].(map[string]any)["provider"] != "second" {
		t.Errorf("GET /v1/admin/events after the first = %d %s, want the second only", code, raw)
	}
	if code, _, raw := restCall(t, http.MethodGet, in.baseURL+"/v1/admin/events?types=grant.exploded", nil); code != http.StatusBadRequest {
		t.Errorf("GET /v1/admin/events?types=grant.exploded = %d %s, want 400", code, raw)
	}
}
