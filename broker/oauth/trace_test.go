package oauth_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenbroker/tokenbroker/broker/oauth"
)

// tracedClient returns a client whose spans go to the returned recorder.
func tracedClient(t *testing.T) (*oauth.Client, *tracetest.SpanRecorder, trace.Tracer) {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return &oauth.Client{Timeout: 200 * time.Millisecond, MaxResponseBytes: 1000, Tracer: tp.Tracer(oauth.TracerName)},
		rec, tp.Tracer("test")
}

// spanText renders everything a span exports but its ids and times: name,
// kind, attributes, events, links and status.
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

// attrs returns a span's attributes by key.
func attrs(s sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
	out := map[attribute.Key]attribute.Value{}
	for _, a := range s.Attributes() {
		out[a.Key] = a.Value
	}
	return out
}

func TestTracingRecordsEachEndpointCall(t *testing.T) {
	p := newProvider(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/token":
			replyJSON(w, 200, `{"access_token":"at-1","token_type":"Bearer","expires_in":3600}`)
		case "/revoke":
			w.WriteHeader(200)
		case "/introspect":
			replyJSON(w, 200, `{"active":true}`)
		}
	})
	c, rec, parentTracer := tracedClient(t)
	ctx, parent := parentTracer.Start(context.Background(), "parent")
	req := func(path string, params url.Values) oauth.Request {
		return oauth.Request{TokenURL: p.URL + path, ClientID: "id", ClientSecret: "secret", AuthStyle: oauth.AuthBasic, Params: params}
	}
	if _, err := c.Token(ctx, req("/token", url.Values{"grant_type": {"client_credentials"}})); err != nil {
		t.Fatalf("Token: %v", err)
	}
	if err := c.Revoke(ctx, req("/revoke", nil), "at-1"); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	if _, err := c.Introspect(ctx, req("/introspect", nil), "at-1"); err != nil {
		t.Fatalf("Introspect: %v", err)
	}
	parent.End()

	spans := rec.Ended()
	if len(spans) != 4 {
		t.Fatalf("ended spans = %d, want 4 (three calls and the parent):\n%s", len(spans), spanText(spans))
	}
	for i, want := range []string{oauth.SpanToken, oauth.SpanRevoke, oauth.SpanIntrospect} {
		s := spans[i]
		if s.Name() != want {
			t.Errorf("span %d is %q, want %q", i, s.Name(), want)
		}
		if s.SpanKind() != trace.SpanKindClient {
			t.Errorf("%s kind = %v, want client", s.Name(), s.SpanKind())
		}
		if s.Parent().SpanID() != parent.SpanContext().SpanID() || s.SpanContext().TraceID() != parent.SpanContext().TraceID() {
			t.Errorf("%s is not a child of the caller's span", s.Name())
		}
		if s.Status().Code != codes.Unset {
			t.Errorf("%s status = %v %q, want unset", s.Name(), s.Status().Code, s.Status().Description)
		}
		a := attrs(s)
		for key, want := range map[attribute.Key]string{
			"http.request.method":       "POST",
			"server.address":            "127.0.0.1",
			"http.response.status_code": "200",
		} {
			if got := a[key].String(); got != want {
				t.Errorf("%s %s = %q, want %q", s.Name(), key, got, want)
			}
		}
		if _, ok := a["error.type"]; ok {
			t.Errorf("%s has error.type %q after a success", s.Name(), a["error.type"].String())
		}
	}
	if got := attrs(spans[0])[oauth.AttrGrantType].String(); got != "client_credentials" {
		t.Errorf("oauth.token %s = %q, want client_credentials", oauth.AttrGrantType, got)
	}
}

func TestTracingClassifiesFailures(t *testing.T) {
	tests := []struct {
		name       string
		answer     http.HandlerFunc // nil: nothing listens
		wantClass  string
		wantCode   string // oauth.error; "" when absent
		wantStatus string // http.response.status_code; "" when absent
	}{
		{name: "invalid_client", answer: func(w http.ResponseWriter, r *http.Request) {
			replyJSON(w, 401, `{"error":"invalid_client","error_description":"Client authentication failed"}`)
		}, wantClass: "invalid_client", wantCode: "invalid_client", wantStatus: "401"},
		{name: "invalid_grant in a 200", answer: func(w http.ResponseWriter, r *http.Request) {
			replyJSON(w, 200, `{"error":"invalid_grant"}`)
		}, wantClass: "invalid_grant", wantCode: "invalid_grant", wantStatus: "200"},
		{name: "unregistered code", answer: func(w http.ResponseWriter, r *http.Request) {
			replyJSON(w, 400, `{"error":"Tenant suspended, call support"}`)
		}, wantClass: "other", wantCode: "other", wantStatus: "400"},
		{name: "502 without a code", answer: func(w http.ResponseWriter, r *http.Request) {
			reply(w, 502, "text/html", "<html>bad gateway</html>")
		}, wantClass: "502", wantStatus: "502"},
		{name: "not a token", answer: func(w http.ResponseWriter, r *http.Request) {
			reply(w, 200, "text/html", "<html>login</html>")
		}, wantClass: "bad_response", wantStatus: "200"},
		{name: "too large", answer: func(w http.ResponseWriter, r *http.Request) {
			replyJSON(w, 200, `{"access_token":"`+strings.Repeat("x", 2000)+`"}`)
		}, wantClass: "response_too_large"},
		{name: "too slow", answer: func(w http.ResponseWriter, r *http.Request) {
			<-r.Context().Done()
		}, wantClass: "transport"},
		{name: "connection refused", wantClass: "transport"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, rec, _ := tracedClient(t)
			tokenURL := closedURL(t)
			if tt.answer != nil {
				tokenURL = newProvider(t, tt.answer).URL
			}
			_, err := c.Token(t.Context(), oauth.Request{TokenURL: tokenURL, ClientID: "id", ClientSecret: "secret",
				AuthStyle: oauth.AuthBasic, Params: url.Values{"grant_type": {"client_credentials"}}})
			if err == nil {
				t.Fatal("Token() succeeded, want an error")
			}
			spans := rec.Ended()
			if len(spans) != 1 {
				t.Fatalf("ended spans = %d, want 1", len(spans))
			}
			s := spans[0]
			if s.Status().Code != codes.Error || s.Status().Description != tt.wantClass {
				t.Errorf("status = %v %q, want Error %q", s.Status().Code, s.Status().Description, tt.wantClass)
			}
			a := attrs(s)
			for key, want := range map[attribute.Key]string{
				"error.type":                tt.wantClass,
				oauth.AttrErrorCode:         tt.wantCode,
				"http.response.status_code": tt.wantStatus,
			} {
				got, ok := a[key]
				switch {
				case want == "" && ok:
					t.Errorf("%s = %q, want it absent", key, got.String())
				case want != "" && got.String() != want:
					t.Errorf("%s = %q, want %q", key, got.String(), want)
				}
			}
		})
	}
}

// closedURL is the URL of a server that no longer listens.
func closedURL(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(http.NotFoundHandler())
	srv.Close()
	return srv.URL
}

// TestSpansKeepSecrets runs the failures of TestErrorsKeepSecrets, and a
// success, with tracing on: no span carries the secret, a token, the form,
// the URL's query or the provider's error_description.
func TestSpansKeepSecrets(t *testing.T) {
	const (
		secret      = "SEKRET-c1ient-9f3a"
		refresh     = "REFRESH-tok-77b1"
		password    = "PASSWORD-u5er-e02c"
		access      = "ACCESS-tok-41d9"
		query       = "QUERY-tenant-5a0e"
		description = "Description-from-provider"
	)
	everything := secret + " " + refresh + " " + password + " " + access

	tests := []struct {
		name   string
		answer http.HandlerFunc // nil: nothing listens
	}{
		{name: "success", answer: func(w http.ResponseWriter, r *http.Request) {
			replyJSON(w, 200, `{"access_token":"`+access+`","refresh_token":"`+refresh+`","expires_in":60}`)
		}},
		{name: "401 echoing the secret", answer: func(w http.ResponseWriter, r *http.Request) {
			replyJSON(w, 401, `{"error":"invalid_client","error_description":"`+description+` `+secret+`"}`)
		}},
		{name: "400 echoing the refresh token in every field", answer: func(w http.ResponseWriter, r *http.Request) {
			replyJSON(w, 400, `{"error":"`+refresh+`","error_description":"`+refresh+`","error_uri":"https://x/`+refresh+`"}`)
		}},
		{name: "400 echoing the form", answer: func(w http.ResponseWriter, r *http.Request) {
			replyJSON(w, 400, fmt.Sprintf(`{"error":"invalid_request","error_description":%q}`, r.PostForm.Encode()))
		}},
		{name: "502 html", answer: func(w http.ResponseWriter, r *http.Request) {
			reply(w, 502, "text/html", "<html>"+everything+"</html>")
		}},
		{name: "200 error with tokens", answer: func(w http.ResponseWriter, r *http.Request) {
			replyJSON(w, 200, `{"error":"invalid_grant","error_description":"`+description+` `+password+`","access_token":"`+access+`"}`)
		}},
		{name: "200 bad expires_in", answer: func(w http.ResponseWriter, r *http.Request) {
			replyJSON(w, 200, `{"access_token":"`+access+`","refresh_token":"`+refresh+`","expires_in":"`+secret+`"}`)
		}},
		{name: "200 not json", answer: func(w http.ResponseWriter, r *http.Request) {
			reply(w, 200, "application/json", `{"access_token":"`+access+`" `+secret)
		}},
		{name: "too large", answer: func(w http.ResponseWriter, r *http.Request) {
			replyJSON(w, 200, `{"access_token":"`+access+strings.Repeat("x", 2000)+`"}`)
		}},
		{name: "connection refused"},
	}
	leaks := []string{secret, refresh, password, access, query, description, "<html", "/token", "Basic "}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, rec, _ := tracedClient(t)
			tokenURL := closedURL(t)
			if tt.answer != nil {
				tokenURL = newProvider(t, tt.answer).URL
			}
			r := oauth.Request{
				TokenURL:     tokenURL + "/token?tenant=" + query,
				ClientID:     "id",
				ClientSecret: secret,
				AuthStyle:    oauth.AuthBasicAndPost,
				Params:       url.Values{"grant_type": {"password"}, "username": {"ann"}, "password": {password}, "refresh_token": {refresh}},
			}
			_, _ = c.Token(t.Context(), r)
			_ = c.Revoke(t.Context(), r, access)
			_, _ = c.Introspect(t.Context(), r, access)
			spans := rec.Ended()
			if len(spans) != 3 {
				t.Fatalf("ended spans = %d, want 3", len(spans))
			}
			text := spanText(spans)
			for _, leak := range leaks {
				if strings.Contains(text, leak) {
					t.Errorf("spans carry %q:\n%s", leak, text)
				}
			}
		})
	}
}

// TestTracingSendsNoTraceContextToProviders: a provider is a third party;
// the trace id of a call stays inside, even with a global propagator set.
func TestTracingSendsNoTraceContextToProviders(t *testing.T) {
	prev := otel.GetTextMapPropagator()
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	t.Cleanup(func() { otel.SetTextMapPropagator(prev) })

	headers := make(chan http.Header, 1)
	p := newProvider(t, func(w http.ResponseWriter, r *http.Request) {
		headers <- r.Header.Clone()
		replyJSON(w, 200, `{"access_token":"at-1"}`)
	})
	c, rec, parentTracer := tracedClient(t)
	ctx, parent := parentTracer.Start(context.Background(), "parent")
	defer parent.End()
	if _, err := c.Token(ctx, oauth.Request{TokenURL: p.URL, ClientID: "id", ClientSecret: "s", AuthStyle: oauth.AuthBasic,
		Params: url.Values{"grant_type": {"client_credentials"}}}); err != nil {
		t.Fatal(err)
	}
	if len(rec.Ended()) != 1 {
		t.Fatalf("ended spans = %d, want 1", len(rec.Ended()))
	}
	h := <-headers
	for _, name := range []string{"Traceparent", "Tracestate", "Baggage"} {
		if v := h.Get(name); v != "" {
			t.Errorf("provider saw %s: %q, want no trace context", name, v)
		}
	}
}

// TestNoTracerRecordsNothing: without Client.Tracer no span is made, even
// with a global TracerProvider and a caller's span in the context.
func TestNoTracerRecordsNothing(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(tp)
	t.Cleanup(func() { otel.SetTracerProvider(prev) })

	p := newProvider(t, func(w http.ResponseWriter, r *http.Request) {
		replyJSON(w, 401, `{"error":"invalid_client"}`)
	})
	ctx, parent := tp.Tracer("test").Start(context.Background(), "parent")
	c := &oauth.Client{}
	_, err := c.Token(ctx, oauth.Request{TokenURL: p.URL, ClientID: "id", ClientSecret: "s", AuthStyle: oauth.AuthBasic,
		Params: url.Values{"grant_type": {"client_credentials"}}})
	if err == nil {
		t.Fatal("Token() succeeded, want invalid_client")
	}
	parent.End()
	spans := rec.Ended()
	if len(spans) != 1 || spans[0].Name() != "parent" {
		t.Fatalf("spans = %s, want the caller's alone", spanText(spans))
	}
	if got := spans[0].Attributes(); len(got) != 0 {
		t.Errorf("the caller's span got attributes %v, want none", got)
	}
}
