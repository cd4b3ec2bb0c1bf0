package app

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.uber.org/zap"
)

// TracingConfig turns on OpenTelemetry tracing: a server span per gRPC call
// and REST request, and a client span per call to a provider's token,
// revocation or introspection endpoint, exported over OTLP/gRPC. Off by
// default; read at start only.
type TracingConfig struct {
	Enabled bool `yaml:"enabled"`
	// OTLPEndpoint is the collector's OTLP/gRPC address, host:port. When
	// empty, or when $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or
	// $OTEL_EXPORTER_OTLP_ENDPOINT is set, the exporter's defaults apply:
	// those variables, else localhost:4317.
	OTLPEndpoint string `yaml:"otlp_endpoint"`
	// Insecure sends spans to OTLPEndpoint in plain text; TLS otherwise.
	// Ignored, like OTLPEndpoint, when the environment names the endpoint.
	Insecure bool `yaml:"insecure"`
	// SampleRatio is the share of traces started here that are recorded,
	// 0 to 1; a caller's sampling decision is kept.
	SampleRatio float64 `yaml:"sample_ratio"`
	// ServiceName is the service.name of the spans; $OTEL_SERVICE_NAME
	// overrides it.
	ServiceName string `yaml:"service_name"`
}

// Environment variables that name the collector; when one is set, it
// configures the connection instead of the file.
var otlpEndpointEnv = []string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"}

// tracingShutdownTimeout bounds the flush of buffered spans at shutdown.
const tracingShutdownTimeout = 5 * time.Second

// validate reports every problem of the tracing section, enabled or not.
func (t TracingConfig) validate() []error {
	var errs []error
	if t.OTLPEndpoint != "" {
		host, port, err := net.SplitHostPort(t.OTLPEndpoint)
		n, perr := strconv.Atoi(port)
		if err != nil || host == "" || perr != nil || n < 1 || n > 65535 {
			errs = append(errs, fmt.Errorf("tracing.otlp_endpoint %q is not host:port (no scheme, no path)", t.OTLPEndpoint))
		}
	}
	if math.IsNaN(t.SampleRatio) || t.SampleRatio < 0 || t.SampleRatio > 1 {
		errs = append(errs, fmt.Errorf("tracing.sample_ratio %v is not between 0 and 1", t.SampleRatio))
	}
	if t.ServiceName == "" {
		errs = append(errs, errors.New("tracing.service_name is empty"))
	}
	return errs
}

// newTracerProvider returns the TracerProvider of cfg: spans sampled
// parent-based at cfg.SampleRatio, batched to an OTLP/gRPC exporter that
// honours the OTEL_EXPORTER_OTLP_* variables. The exporter connects
// lazily, so a collector that is down does not stop the broker; failed
// exports are logged. Shutdown flushes it.
func newTracerProvider(ctx context.Context, cfg TracingConfig, getenv func(string) string, log *zap.Logger) (*sdktrace.TracerProvider, error) {
	log = log.Named("tracing")
	var opts []otlptracegrpc.Option
	fromEnv := ""
	for _, name := range otlpEndpointEnv {
		if getenv(name) != "" {
			fromEnv = name
			break
		}
	}
	if fromEnv == "" && cfg.OTLPEndpoint != "" {
		opts = append(opts, otlptracegrpc.WithEndpoint(cfg.OTLPEndpoint))
		if cfg.Insecure {
			opts = append(opts, otlptracegrpc.WithInsecure())
		}
	}
	exp, err := otlptracegrpc.New(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("tracing: OTLP exporter: %w", err)
	}
	res, err := resource.New(ctx,
		resource.WithTelemetrySDK(),
		resource.WithAttributes(semconv.ServiceName(cfg.ServiceName)),
		resource.WithFromEnv(), // OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
	)
	if err != nil {
		// A malformed $OTEL_RESOURCE_ATTRIBUTES: what could be read is used.
		log.Warn("resource attributes from the environment", zap.Error(err))
	}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(loggedExporter{SpanExporter: exp, log: log}),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(cfg.SampleRatio))),
		sdktrace.WithResource(res),
	)
	fields := []zap.Field{zap.Float64("sample_ratio", cfg.SampleRatio)}
	switch {
	case fromEnv != "":
		fields = append(fields, zap.String("endpoint_from", "$"+fromEnv))
	case cfg.OTLPEndpoint != "":
		fields = append(fields, zap.String("otlp_endpoint", cfg.OTLPEndpoint), zap.Bool("insecure", cfg.Insecure))
	default:
		fields = append(fields, zap.String("endpoint_from", "exporter default"))
	}
	log.Info("tracing on", fields...)
	return tp, nil
}

// loggedExporter logs failed exports instead of handing them to the
// global OpenTelemetry error handler, which would print them on stderr
// out of the broker's log.
type loggedExporter struct {
	sdktrace.SpanExporter
	log *zap.Logger
}

// ExportSpans exports spans; a failure is logged and the spans dropped.
func (e loggedExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	if err := e.SpanExporter.ExportSpans(ctx, spans); err != nil {
		e.log.Warn("span export failed; spans dropped", zap.Int("spans", len(spans)), zap.Error(err))
	}
	return nil
}
