package server_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
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

// GET /v1/admin/events:watch streams newline-delimited JSON through the
// same checks as every REST call: no key is 401 before any byte streams,
// and an admin sees the events of changes as they happen.
func TestWatchEventsOverREST(t *testing.T) {
	e := newEnv(t)
	in := e.start(zaptest.NewLogger(t))
	if code, raw := restDo(t, http.DefaultClient, http.MethodGet, in.baseURL+"/v1/admin/events:watch", http.Header{}, nil); code != http.StatusUnauthorized {
		t.Errorf("GET /v1/admin/events:watch without a key = %d %s, want 401", code, raw)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, in.baseURL+"/v1/admin/events:watch?types=provider.changed", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testAdminKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("GET /v1/admin/events:watch = %d %s, want 200 application/x-ndjson", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	lines := bufio.NewScanner(resp.Body)
	for _, name := range []string{"first", "second"} {
		e.register(in, name)
		if !lines.Scan() {
			t.Fatalf("the stream ended before the event of %s: %v", name, lines.Err())
		}
		var got struct {
			Result struct {
				Event struct{ Type, Provider string } `json:"event"`
			} `json:"result"`
		}
		if err := json.Unmarshal(lines.Bytes(), &got); err != nil || got.Result.Event.Provider != name || got.Result.Event.Type != "provider.changed" {
			t.Errorf("streamed line %s (%v), want provider.changed of %s", lines.Bytes(), err, name)
		}
	}
}

// A gRPC watcher that stops reading: the broker goes on recording while
// the stream's flow-control window and the watch's buffer fill; once the
// watcher reads again it gets what was sent and buffered, then ABORTED
// naming the id to resume after; resumed there, it gets every later event
// once, in order.
func TestWatchEventsSlowConsumerOverGRPC(t *testing.T) {
	e := newEnv(t)
	in := e.startWith(options{log: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)), eventBuffer: 8, quiet: true})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// A fixed 64 KiB window: no growth with the measured bandwidth.
	conn, err := grpc.NewClient(in.grpcAddr, append(in.dialOptions(nil, testAdminKey),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))...)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := tokenbrokerv1.NewAdminServiceClient(conn).WatchEvents(ctx, &tokenbrokerv1.WatchEventsRequest{Types: []string{"provider.changed"}})
	if err != nil {
		t.Fatal(err)
	}
	// Names of 63 characters: each event is some 170 bytes on the wire,
	// and n of them far more than the stream's window and the server's
	// write quota (64 KiB each) hold.
	name := func(i int) string { return fmt.Sprintf("p%04d-%s", i, strings.Repeat("x", 57)) }
	e.register(in, name(0))
	first, err := stream.Recv() // the watch is open
	if err != nil {
		t.Fatal(err)
	}
	const n = 1500
	start := time.Now()
	for i := 1; i < n; i++ {
		e.register(in, name(i))
	}
	t.Logf("%d changes recorded in %v while the watcher did not read", n-1, time.Since(start))
	got := []string{first.GetEvent().GetProvider()}
	last := first.GetEvent().GetId()
	for {
		resp, err := stream.Recv()
		if err != nil {
			if status.Code(err) != codes.Aborted || !strings.Contains(status.Convert(err).Message(), "resume after event "+last) {
				t.Fatalf("the slow watch ended with %v after %d events, want ABORTED naming the last id %s", err, len(got), last)
			}
			break
		}
		got = append(got, resp.GetEvent().GetProvider())
		last = resp.GetEvent().GetId()
		if len(got) == n {
			t.Fatalf("the slow watcher got all %d events: it never fell behind (raise n)", n)
		}
	}
	t.Logf("the slow watcher got %d events before the stream ended", len(got))
	resumed, err := in.admin.WatchEvents(ctx, &tokenbrokerv1.WatchEventsRequest{Types: []string{"provider.changed"}, AfterId: last})
	if err != nil {
		t.Fatal(err)
	}
	for len(got) < n {
		resp, err := resumed.Recv()
		if err != nil {
			t.Fatalf("resumed watch: %v after %d events in all", err, len(got))
		}
		got = append(got, resp.GetEvent().GetProvider())
	}
	for i, p := range got {
		if want := name(i); p != want {
			t.Fatalf("event %d is of %s, want %s: every event once, in order", i, p, want)
		}
	}
}
