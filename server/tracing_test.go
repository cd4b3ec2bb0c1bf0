package server_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/metadata"

	"github.com/tokenbroker/tokenbroker/broker/oauth"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/testkeys"
)

const (
	spanGetToken = "tokenbroker.v1.TokenBrokerService/GetToken"
	spanRotate   = "tokenbroker.v1.AdminService/RotateClientSecret"
	spanRESTGet  = "POST /v1/providers/{provider}/token"
)

// newRecorder returns a TracerProvider that samples everything into the
// returned recorder.
func newRecorder(t *testing.T) (*sdktrace.TracerProvider, *tracetest.SpanRecorder) {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return tp, rec
}

// waitSpan returns the first ended span named name for which ok holds
// (nil: any). Servers end their spans after the answer is on its way, so
// a caller may be back before the span is.
func waitSpan(t *testing.T, rec *tracetest.SpanRecorder, name string, ok func(sdktrace.ReadOnlySpan) bool) sdktrace.ReadOnlySpan {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; {
		for _, s := range rec.Ended() {
			if s.Name() == name && (ok == nil || ok(s)) {
				return s
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no ended span %q after 5s; spans:\n%s", name, spanText(rec.Ended()))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// spanText renders everything a span exports but ids and times.
func spanText(spans []sdktrace.ReadOnlySpan) string {
	var b strings.Builder
	for _, s := range spans {
		fmt.Fprintf(&b, "%s kind=%s status=%s %q\n", s.Name(), s.SpanKind(), s.Status().Code, s.Status().Description)
		for _, a := range s.Attributes() {
			fmt.Fprintf(&b, "  %s=%s\n", a.Key, a.Value.String())
		}
		for _, e := range s.Events() {
			fmt.Fprintf(&b, "  event %s\n", e.Name)
			for _, a := range e.Attributes {
				fmt.Fprintf(&b, "    %s=%s\n", a.Key, a.Value.String())
			}
		}
		for _, l := range s.Links() {
			for _, a := range l.Attributes {
				fmt.Fprintf(&b, "  link %s=%s\n", a.Key, a.Value.String())
			}
		}
	}
	return b.String()
}

// spanAttr is the value of a span's attribute key, "" when absent.
func spanAttr(s sdktrace.ReadOnlySpan, key attribute.Key) string {
	for _, a := range s.Attributes() {
		if a.Key == key {
			return a.Value.String()
		}
	}
	return ""
}

// checkAttrs asserts a span's attributes; "" wants the key absent.
func checkAttrs(t *testing.T, s sdktrace.ReadOnlySpan, want map[attribute.Key]string) {
	t.Helper()
	for key, w := range want {
		if got := spanAttr(s, key); got != w {
			t.Errorf("span %s: %s = %q, want %q", s.Name(), key, got, w)
		}
	}
}

// checkChild asserts that child is a direct child of parent.
func checkChild(t *testing.T, child, parent sdktrace.ReadOnlySpan) {
	t.Helper()
	if child.SpanContext().TraceID() != parent.SpanContext().TraceID() {
		t.Errorf("span %s is in trace %s, want its parent %s's trace %s", child.Name(), child.SpanContext().TraceID(), parent.Name(), parent.SpanContext().TraceID())
	}
	if child.Parent().SpanID() != parent.SpanContext().SpanID() {
		t.Errorf("span %s has parent %s, want %s (%s)", child.Name(), child.Parent().SpanID(), parent.SpanContext().SpanID(), parent.Name())
	}
}

// callerTrace is a trace context a caller sends.
const (
	callerTraceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	callerSpanID  = "00f067aa0ba902b7"
	callerParent  = "00-" + callerTraceID + "-" + callerSpanID + "-01"
)

func TestTracingGetTokenOverGRPCAndREST(t *testing.T) {
	tp, rec := newRecorder(t)
	e := newEnv(t)
	in := e.startWith(options{quiet: true, tracing: tp})
	e.register(in, "sandbox")

	if _, err := in.tokens.GetToken(ctxb, &tokenbrokerv1.GetTokenRequest{Provider: "sandbox"}); err != nil {
		t.Fatalf("GetToken: %v", err)
	}
	srv := waitSpan(t, rec, spanGetToken, nil)
	if srv.SpanKind() != trace.SpanKindServer {
		t.Errorf("%s kind = %v, want server", srv.Name(), srv.SpanKind())
	}
	checkAttrs(t, srv, map[attribute.Key]string{"rpc.system.name": "grpc", "rpc.response.status_code": "OK"})
	call := waitSpan(t, rec, oauth.SpanToken, nil)
	if call.SpanKind() != trace.SpanKindClient || call.Status().Code != codes.Unset {
		t.Errorf("%s kind %v status %v, want a client span without error", call.Name(), call.SpanKind(), call.Status().Code)
	}
	checkAttrs(t, call, map[attribute.Key]string{
		"http.request.method": "POST", "server.address": "127.0.0.1", "http.response.status_code": "200",
		oauth.AttrGrantType: "client_credentials", "error.type": "",
	})
	checkChild(t, call, srv) // the miss's provider call is in the caller's trace
	if got := e.provider.TokenCalls(); got != 1 {
		t.Fatalf("provider calls = %d, want 1", got)
	}
	// What the provider saw carries no trace context.
	for _, h := range []string{"Traceparent", "Tracestate"} {
		if v := e.provider.Requests()[0].Header.Get(h); v != "" {
			t.Errorf("provider saw %s %q, want none", h, v)
		}
	}

	code, _, raw := restCall(t, http.MethodPost, in.baseURL+"/v1/providers/sandbox/token", map[string]any{})
	if code != http.StatusOK {
		t.Fatalf("REST GetToken = %d %s", code, raw)
	}
	rest := waitSpan(t, rec, spanRESTGet, nil)
	if rest.SpanKind() != trace.SpanKindServer {
		t.Errorf("%s kind = %v, want server", rest.Name(), rest.SpanKind())
	}
	checkAttrs(t, rest, map[attribute.Key]string{
		"http.request.method": "POST", "http.route": "/v1/providers/{provider}/token",
		"url.path": "/v1/providers/sandbox/token", "http.response.status_code": "200",
	})
	// Health checks and the REST listener's own pages are not traced.
	if code, _ := restDo(t, http.DefaultClient, http.MethodGet, in.baseURL+"/healthz", nil, nil); code != http.StatusOK {
		t.Fatalf("/healthz = %d", code)
	}
	for _, s := range rec.Ended() {
		if strings.Contains(s.Name(), "Health") || strings.Contains(s.Name(), "healthz") {
			t.Errorf("health check traced: %s", s.Name())
		}
	}
}

func TestTracingContinuesTheCallersTrace(t *testing.T) {
	tp, rec := newRecorder(t)
	e := newEnv(t)
	in := e.startWith(options{quiet: true, tracing: tp})
	e.register(in, "sandbox")
	fromCaller := func(s sdktrace.ReadOnlySpan) bool { return s.SpanContext().TraceID().String() == callerTraceID }

	ctx := metadata.AppendToOutgoingContext(ctxb, "traceparent", callerParent)
	if _, err := in.tokens.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: "sandbox"}); err != nil {
		t.Fatalf("GetToken: %v", err)
	}
	code, _ := restDo(t, http.DefaultClient, http.MethodPost, in.baseURL+"/v1/providers/sandbox/token",
		http.Header{"Authorization": {"Bearer " + testAdminKey}, "Traceparent": {callerParent}}, []byte("{}"))
	if code != http.StatusOK {
		t.Fatalf("REST GetToken = %d", code)
	}
	for _, name := range []string{spanGetToken, spanRESTGet} {
		s := waitSpan(t, rec, name, fromCaller)
		if got := s.Parent(); got.SpanID().String() != callerSpanID || !got.IsRemote() {
			t.Errorf("%s parent = %s (remote %v), want the caller's span %s", name, got.SpanID(), got.IsRemote(), callerSpanID)
		}
		if !s.SpanContext().IsSampled() {
			t.Errorf("%s is not sampled, want the caller's sampled flag kept", name)
		}
	}
}

// A provider call made on the caller's behalf (rotating a client secret
// proves the new one against the provider) is a child of the call's span;
// a refusal is an error span with the OAuth2 code and nothing of the
// secret or the provider's description.
func TestTracingProviderCallsAreChildrenOfTheCall(t *testing.T) {
	const wrongSecret = "Wr0ng-rotated-secret-5c2e8a"
	tp, rec := newRecorder(t)
	e := newEnv(t)
	in := e.startWith(options{quiet: true, tracing: tp})
	e.register(in, "sandbox")

	if _, err := in.admin.RotateClientSecret(ctxb, &tokenbrokerv1.RotateClientSecretRequest{Provider: "sandbox", ClientSecret: testClientSecret}); err != nil {
		t.Fatalf("RotateClientSecret(the same secret): %v", err)
	}
	ok := waitSpan(t, rec, spanRotate, nil)
	okCall := waitSpan(t, rec, oauth.SpanToken, func(s sdktrace.ReadOnlySpan) bool { return s.Parent().SpanID() == ok.SpanContext().SpanID() })
	checkChild(t, okCall, ok)
	checkAttrs(t, okCall, map[attribute.Key]string{"http.response.status_code": "200", "error.type": ""})

	_, err := in.admin.RotateClientSecret(ctxb, &tokenbrokerv1.RotateClientSecretRequest{Provider: "sandbox", ClientSecret: wrongSecret})
	if err == nil {
		t.Fatal("RotateClientSecret(an unknown secret) succeeded, want the provider's refusal")
	}
	failed := waitSpan(t, rec, spanRotate, func(s sdktrace.ReadOnlySpan) bool { return s.SpanContext().SpanID() != ok.SpanContext().SpanID() })
	refused := waitSpan(t, rec, oauth.SpanToken, func(s sdktrace.ReadOnlySpan) bool { return s.Status().Code == codes.Error })
	checkChild(t, refused, failed)
	if refused.Status().Description != "invalid_client" {
		t.Errorf("refused call status = %q, want invalid_client", refused.Status().Description)
	}
	checkAttrs(t, refused, map[attribute.Key]string{
		"http.response.status_code": "401", "error.type": "invalid_client", oauth.AttrErrorCode: "invalid_client",
	})
	book := map[string]string{wrongSecret: "rotated secret", testClientSecret: "client secret", leakSecretPart(testAdminKey): "API key"}
	for _, leak := range findLeaks(spanText(rec.Ended()), book) {
		t.Errorf("span leaks %s", leak)
	}
}

// TestTracingOffRecordsNothing: without Config.TracerProvider nothing is
// traced, even with a global TracerProvider set and callers sending trace
// context.
func TestTracingOffRecordsNothing(t *testing.T) {
	tp, rec := newRecorder(t)
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(tp)
	t.Cleanup(func() { otel.SetTracerProvider(prev) })

	e := newEnv(t)
	in := e.startWith(options{quiet: true})
	e.register(in, "sandbox")
	ctx := metadata.AppendToOutgoingContext(ctxb, "traceparent", callerParent)
	if _, err := in.tokens.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: "sandbox"}); err != nil {
		t.Fatalf("GetToken: %v", err)
	}
	code, _ := restDo(t, http.DefaultClient, http.MethodPost, in.baseURL+"/v1/providers/sandbox/token",
		http.Header{"Authorization": {"Bearer " + testAdminKey}, "Traceparent": {callerParent}}, []byte("{}"))
	if code != http.StatusOK {
		t.Fatalf("REST GetToken = %d", code)
	}
	if _, err := in.admin.RotateClientSecret(ctx, &tokenbrokerv1.RotateClientSecretRequest{Provider: "sandbox", ClientSecret: "unknown-secret-0000"}); err == nil {
		t.Fatal("RotateClientSecret(an unknown secret) succeeded, want the provider's refusal")
	}
	time.Sleep(100 * time.Millisecond) // a server span would end about now
	if spans := rec.Ended(); len(spans) != 0 {
		t.Errorf("tracing off recorded %d spans:\n%s", len(spans), spanText(spans))
	}
	if spans := rec.Started(); len(spans) != 0 {
		t.Errorf("tracing off started %d spans", len(spans))
	}
}

// TestNoSecretLeaksIntoSpans runs every flow of the leak test with tracing
// on: no span name, attribute, event, link or status carries a secret.
func TestNoSecretLeaksIntoSpans(t *testing.T) {
	tp, rec := newRecorder(t)
	r := runFlowsTraced(t, tp)
	for name, plain := range openAll(t, r.env, testkeys.Keyring()) {
		r.book.addStored(name, plain)
	}
	r.stop()
	spans := rec.Ended()
	names := map[string]int{}
	for _, s := range spans {
		names[s.Name()]++
	}
	for _, want := range []string{spanGetToken, spanRESTGet, oauth.SpanToken, oauth.SpanRevoke, oauth.SpanIntrospect,
		"GET /v1/oauth/callback", "POST /oauth2/introspect"} {
		if names[want] == 0 {
			t.Errorf("no %q span: the flows must be traced (spans: %v)", want, names)
		}
	}
	for _, leak := range findLeaks(spanText(spans), r.book.all()) {
		t.Errorf("span leaks %s", leak)
	}
}
