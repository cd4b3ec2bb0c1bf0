package server

import (
	"context"
	"net/http"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc/filters"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
)

// Tracing is off unless Config.TracerProvider is set: then, and only then,
// the functions below install a gRPC stats handler, wrap the REST handler
// and name the gateway's routes. Nothing reads the global TracerProvider or
// propagator, so a library that sets them turns nothing on here. Metrics
// stay with Metrics (Prometheus); the instrumentation's own go to a no-op
// MeterProvider.

// traceContext reads (and would write) W3C trace context, so that a
// caller's trace continues into the broker. Baggage is not read.
var traceContext = propagation.TraceContext{}

// grpcTracing returns the server options that give every gRPC call but
// health checks a server span; none when tp is nil. The span carries the
// method and the status code, never metadata or messages.
func grpcTracing(tp trace.TracerProvider) []grpc.ServerOption {
	if tp == nil {
		return nil
	}
	return []grpc.ServerOption{grpc.StatsHandler(otelgrpc.NewServerHandler(
		otelgrpc.WithTracerProvider(tp),
		otelgrpc.WithPropagators(traceContext),
		otelgrpc.WithMeterProvider(metricnoop.NewMeterProvider()),
		otelgrpc.WithFilter(filters.Not(filters.HealthCheck())),
	))}
}

// restRouteKey holds, in a traced REST request's context, a *string the
// gateway sets to the route it matched.
type restRouteKey struct{}

// gatewayTracing returns the gateway options that name a traced request's
// span after the route it matched ("POST /v1/providers/{provider}/token");
// none when tp is nil.
func gatewayTracing(tp trace.TracerProvider) []runtime.ServeMuxOption {
	if tp == nil {
		return nil
	}
	return []runtime.ServeMuxOption{runtime.WithMiddlewares(func(next runtime.HandlerFunc) runtime.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request, params map[string]string) {
			if pat, ok := runtime.HTTPPattern(r.Context()); ok {
				if holder, ok := r.Context().Value(restRouteKey{}).(*string); ok {
					// "/v1/providers/{provider=*}/token" as written in
					// the API: "/v1/providers/{provider}/token".
					*holder = strings.ReplaceAll(pat.String(), "=*}", "}")
				}
			}
			next(w, r, params)
		}
	})}
}

// httpTracing wraps the REST listener's handler so that every request to
// the gateway (/v1/...) and to the introspection endpoint gets a server
// span; next itself when tp is nil. Health and readiness are not traced,
// nor is anything on the metrics listener. The span carries the method, the route,
// the path and the status, never the query, the body or a header's value
// but User-Agent.
func httpTracing(tp trace.TracerProvider, next http.Handler) http.Handler {
	if tp == nil {
		return next
	}
	routed := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(w, r)
		if route := restRoute(r); route != "" {
			trace.SpanFromContext(r.Context()).SetAttributes(semconv.HTTPRoute(route))
		}
	})
	traced := otelhttp.NewHandler(routed, "tokenbroker",
		otelhttp.WithTracerProvider(tp),
		otelhttp.WithPropagators(traceContext),
		otelhttp.WithMeterProvider(metricnoop.NewMeterProvider()),
		otelhttp.WithFilter(func(r *http.Request) bool {
			return strings.HasPrefix(r.URL.Path, "/v1/") || r.URL.Path == IntrospectPath
		}),
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string {
			if route := restRoute(r); route != "" {
				return r.Method + " " + route
			}
			return r.Method
		}),
	)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		traced.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), restRouteKey{}, new(string))))
	})
}

// restRoute is the route r matched: the gateway's pattern, else the path
// of the listener's own pattern; "" before routing.
func restRoute(r *http.Request) string {
	if holder, ok := r.Context().Value(restRouteKey{}).(*string); ok && *holder != "" {
		return *holder
	}
	if _, path, ok := strings.Cut(r.Pattern, " "); ok {
		return path
	}
	return r.Pattern
}
