package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/app"
	"github.com/tokenbroker/tokenbroker/broker"
)

const configWebhookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" // 24 bytes

// hookReceiver answers 500 to the first failures deliveries, then 204;
// it keeps the event ids of the deliveries whose signature verifies (the
// Standard Webhooks scheme: HMAC-SHA256 of "id.timestamp.body" keyed with
// the bytes after whsec_).
type hookReceiver struct {
	*httptest.Server
	failures int

	mu       sync.Mutex
	secret   string
	attempts int
	got      []string
	bad      int
}

func newHookReceiver(t *testing.T, secret string, failures int) *hookReceiver {
	r := &hookReceiver{secret: secret, failures: failures}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		defer r.mu.Unlock()
		key, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(r.secret, "whsec_"))
		mac := hmac.New(sha256.New, key)
		mac.Write([]byte(req.Header.Get("webhook-id") + "." + req.Header.Get("webhook-timestamp") + "." + string(body)))
		want := "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
		if !hmac.Equal([]byte(req.Header.Get("webhook-signature")), []byte(want)) {
			r.bad++
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if r.attempts++; r.attempts <= r.failures {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		var e struct{ ID, Type string }
		_ = json.Unmarshal(body, &e)
		r.got = append(r.got, e.Type)
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *hookReceiver) received() (types []string, attempts, bad int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.got...), r.attempts, r.bad
}

// A subscription declared in the file is registered at start with its
// secret from the environment, sealed and shown nowhere; the retry
// schedule of the file applies: a receiver that answers 500 three times
// gets the event on the fourth attempt. A restart with the same file
// leaves the subscription and its delivery state alone.
func TestAppWebhooksFromConfig(t *testing.T) {
	fake := startFake(t)
	r := newHookReceiver(t, configWebhookSecret, 3)
	cfg := appConfig(fake.url, t.TempDir())
	cfg.Getenv = func(k string) string { return map[string]string{"ONCALL_SECRET": configWebhookSecret}[k] }
	cfg.Events.WebhookDelivery.Schedule = []time.Duration{50 * time.Millisecond, 50 * time.Millisecond, 50 * time.Millisecond, 50 * time.Millisecond}
	cfg.Webhooks = []app.WebhookConfig{{ID: "oncall", URL: r.URL, EventTypes: []string{"provider.changed"}, SecretEnv: "ONCALL_SECRET"}}
	cfg.Providers = nil // registered after the subscription, below
	if err := cfg.Validate(cfg.Getenv); err != nil {
		t.Fatal(err)
	}
	app, closeApp := startApp(t, cfg)
	ctx := context.Background()
	w, err := app.Broker().GetWebhook(ctx, "oncall")
	if err != nil || w.URL != r.URL || w.Secret != configWebhookSecret {
		t.Fatalf("GetWebhook(oncall) = %v, %v; want the declared subscription with its secret", w, err)
	}
	cfg.Providers = appConfig(fake.url, "").Providers
	if err := app.ApplyProviders(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		types, attempts, bad := r.received()
		if len(types) == 1 {
			if types[0] != "provider.changed" || attempts != 4 || bad != 0 {
				t.Errorf("receiver got %v after %d attempts (%d badly signed), want provider.changed on attempt 4", types, attempts, bad)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no delivery after 15s: %v, %d attempts, %d badly signed", types, attempts, bad)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var ds []broker.WebhookDelivery
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		ds, err = app.Broker().ListWebhookDeliveries(ctx, "oncall")
		if err == nil && len(ds) == 1 && ds[0].Status == broker.DeliveryDelivered {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("deliveries = %+v, %v; want one delivered", ds, err)
		}
	}
	if ds[0].Attempts != 4 || ds[0].LastHTTPStatus != http.StatusNoContent {
		t.Errorf("delivery %+v, want delivered on attempt 4 with 204", ds[0])
	}
	resp, err := http.Get("http://" + app.MetricsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, line := range []string{
		`tokenbroker_events_total{type="provider.changed"} 1`,
		`tokenbroker_webhook_deliveries_total{outcome="failed",webhook="oncall"} 3`,
		`tokenbroker_webhook_deliveries_total{outcome="succeeded",webhook="oncall"} 1`,
		`tokenbroker_webhook_delivery_lag_seconds_count{webhook="oncall"} 1`,
	} {
		if !strings.Contains(string(metrics), "\n"+line+"\n") {
			t.Errorf("/metrics has no line %s:\n%s", line, regexp.MustCompile(`(?m)^tokenbroker_(events|webhook).*$`).FindAll(metrics, -1))
		}
	}
	before, _ := app.Broker().GetWebhook(ctx, "oncall")
	if err := closeApp(); err != nil {
		t.Fatal(err)
	}

	app, _ = startApp(t, cfg) // same data directory, same file
	after, err := app.Broker().GetWebhook(ctx, "oncall")
	if err != nil || !after.UpdateTime.Equal(before.UpdateTime) || after.Status.LastEventID != before.Status.LastEventID {
		t.Errorf("after a restart: %+v, %v; want the subscription untouched (updated %s, cursor %s)", after, err, before.UpdateTime, before.Status.LastEventID)
	}
}
