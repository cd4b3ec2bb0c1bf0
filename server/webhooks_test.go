package server_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// Webhooks over the API: the generated secret is in the PutWebhook answer
// once and in no later answer, log or REST body; the subscription is seen
// with the secret's fingerprint only; deliveries list over REST; an http
// URL to another host is the caller's 400.
func TestWebhooksOverTheAPI(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	e := newEnv(t)
	in := e.startWith(options{log: zap.New(core)})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	put, err := in.admin.PutWebhook(ctx, &tokenbrokerv1.PutWebhookRequest{Webhook: &tokenbrokerv1.Webhook{
		Id: "ops", Url: "https://hooks.example.com/ops", EventTypes: []string{"grant.reauthorization_required"},
	}})
	if err != nil {
		t.Fatalf("PutWebhook: %v", err)
	}
	secret := put.GetGeneratedSecret()
	if !strings.HasPrefix(secret, "whsec_") || !put.GetWebhook().GetSecret().GetSet() || put.GetWebhook().GetSecret().GetFingerprint() == "" {
		t.Fatalf("PutWebhook answer = %v, want a generated whsec_ secret, shown as set with a fingerprint", put)
	}
	again, err := in.admin.PutWebhook(ctx, &tokenbrokerv1.PutWebhookRequest{Webhook: &tokenbrokerv1.Webhook{Id: "ops", Url: "https://hooks.example.com/ops2"}})
	if err != nil || again.GetGeneratedSecret() != "" || again.GetWebhook().GetSecret().GetFingerprint() != put.GetWebhook().GetSecret().GetFingerprint() {
		t.Fatalf("PutWebhook update = %v, %v; want the secret kept and none generated", again, err)
	}
	got, err := in.admin.GetWebhook(ctx, &tokenbrokerv1.GetWebhookRequest{Id: "ops"})
	if err != nil || got.GetWebhook().GetUrl() != "https://hooks.example.com/ops2" {
		t.Fatalf("GetWebhook = %v, %v", got, err)
	}
	var bodies [][]byte
	for _, path := range []string{"/v1/admin/webhooks", "/v1/admin/webhooks/ops", "/v1/admin/webhooks/ops/deliveries"} {
		code, _, raw := restCall(t, http.MethodGet, in.baseURL+path, nil)
		if code != http.StatusOK {
			t.Errorf("GET %s = %d %s, want 200", path, code, raw)
		}
		bodies = append(bodies, []byte(raw))
	}
	bodies = append(bodies, []byte(got.String()))
	for _, entry := range logs.All() {
		bodies = append(bodies, []byte(fmt.Sprint(entry.Message, entry.ContextMap())))
	}
	key := strings.TrimPrefix(secret, "whsec_")
	for _, b := range bodies {
		if bytes.Contains(b, []byte(key)) {
			t.Errorf("the signing secret appears after the PutWebhook answer: %s", b)
		}
	}
	code, _, raw := restCall(t, http.MethodPut, in.baseURL+"/v1/admin/webhooks/plain", map[string]any{"webhook": map[string]any{"url": "http://hooks.example.com/x"}})
	if code != http.StatusBadRequest {
		t.Errorf("PUT a webhook with plain http to another host = %d %s, want 400", code, raw)
	}
}
