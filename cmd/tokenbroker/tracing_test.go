package main

import (
	"context"
	"math"
	"net"
	"os"
	"strings"
	"sync"
	"testing"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/tokenbroker/tokenbroker/app"
	"github.com/tokenbroker/tokenbroker/broker/oauth"
)

func TestTracingIsOffByDefault(t *testing.T) {
	cfg := app.DefaultConfig()
	if cfg.Tracing.Enabled {
		t.Error("tracing.enabled is true by default, want false")
	}
	if cfg.Tracing.SampleRatio != 1 || cfg.Tracing.ServiceName != "tokenbroker" {
		t.Errorf("tracing defaults = %+v, want sample_ratio 1 and service_name tokenbroker", cfg.Tracing)
	}
}

func TestDecodeConfigTracingSection(t *testing.T) {
	cfg := app.DefaultConfig()
	give := "tracing:\n  enabled: true\n  otlp_endpoint: otel-collector.monitoring:4317\n  insecure: true\n  sample_ratio: 0.25\n"
	if err := app.DecodeConfig(strings.NewReader(give), &cfg); err != nil {
		t.Fatalf("app.DecodeConfig: %v", err)
	}
	want := app.TracingConfig{Enabled: true, OTLPEndpoint: "otel-collector.monitoring:4317", Insecure: true, SampleRatio: 0.25, ServiceName: "tokenbroker"}
	if cfg.Tracing != want {
		t.Errorf("tracing = %+v, want %+v", cfg.Tracing, want)
	}
	if err := cfg.Validate(os.Getenv); err != nil {
		t.Errorf("Validate() = %v, want nil", err)
	}
	if err := app.DecodeConfig(strings.NewReader("tracing:\n  endpoint: x:1\n"), &cfg); err == nil || !strings.Contains(err.Error(), "endpoint") {
		t.Errorf("app.DecodeConfig(an unknown tracing field) = %v, want an error naming it", err)
	}
}

func TestValidateTracing(t *testing.T) {
	tests := []struct {
		name string
		give func(*app.TracingConfig)
		want string // "" for valid
	}{
		{name: "enabled with the exporter's default endpoint", give: func(c *app.TracingConfig) { c.Enabled = true }},
		{name: "ratio 0", give: func(c *app.TracingConfig) { c.SampleRatio = 0 }},
		{name: "ipv6 endpoint", give: func(c *app.TracingConfig) { c.OTLPEndpoint = "[::1]:4317" }},
		{name: "ratio above 1", give: func(c *app.TracingConfig) { c.SampleRatio = 1.5 }, want: "tracing.sample_ratio 1.5 is not between 0 and 1"},
		{name: "negative ratio", give: func(c *app.TracingConfig) { c.SampleRatio = -0.1 }, want: "tracing.sample_ratio -0.1"},
		{name: "NaN ratio", give: func(c *app.TracingConfig) { c.SampleRatio = math.NaN() }, want: "tracing.sample_ratio NaN"},
		{name: "endpoint with a scheme", give: func(c *app.TracingConfig) { c.OTLPEndpoint = "http://collector:4317" }, want: `tracing.otlp_endpoint "http://collector:4317" is not host:port`},
		{name: "endpoint without a port", give: func(c *app.TracingConfig) { c.OTLPEndpoint = "collector" }, want: `tracing.otlp_endpoint "collector"`},
		{name: "endpoint with a bad port", give: func(c *app.TracingConfig) { c.OTLPEndpoint = "collector:70000" }, want: `tracing.otlp_endpoint "collector:70000"`},
		{name: "endpoint without a host", give: func(c *app.TracingConfig) { c.OTLPEndpoint = ":4317" }, want: `tracing.otlp_endpoint ":4317"`},
		{name: "no service name", give: func(c *app.TracingConfig) { c.ServiceName = "" }, want: "tracing.service_name is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := app.DefaultConfig()
			tt.give(&cfg.Tracing)
			err := cfg.Validate(os.Getenv)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Validate() = %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("Validate() = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestValidateReportsEveryTracingProblemAtOnce(t *testing.T) {
	cfg := app.DefaultConfig()
	cfg.Log.Level = "loud"
	cfg.Tracing = app.TracingConfig{Enabled: true, OTLPEndpoint: "https://collector", SampleRatio: 2}
	err := cfg.Validate(os.Getenv)
	if err == nil {
		t.Fatal("Validate() = nil, want an error")
	}
	for _, want := range []string{`log.level "loud"`, "tracing.otlp_endpoint", "tracing.sample_ratio 2", "tracing.service_name is empty"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %q, want it to contain %q", err, want)
		}
	}
}

// collector is a fake OTLP/gRPC trace collector on 127.0.0.1.
type collector struct {
	coltracepb.UnimplementedTraceServiceServer
	addr string
	mu   sync.Mutex
	got  []*coltracepb.ExportTraceServiceRequest
}

func startCollector(t *testing.T) *collector {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &collector{addr: lis.Addr().String()}
	srv := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(srv, c)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return c
}

func (c *collector) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.got = append(c.got, req)
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

// received returns the service names and span names received, and all of
// it as JSON.
func (c *collector) received(t *testing.T) (services, spans map[string]int, text string) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	services, spans = map[string]int{}, map[string]int{}
	var b strings.Builder
	for _, req := range c.got {
		raw, err := protojson.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		b.Write(raw)
		for _, rs := range req.GetResourceSpans() {
			for _, a := range rs.GetResource().GetAttributes() {
				if a.GetKey() == "service.name" {
					services[a.GetValue().GetStringValue()]++
				}
			}
			for _, ss := range rs.GetScopeSpans() {
				for _, s := range ss.GetSpans() {
					spans[s.GetName()]++
				}
			}
		}
	}
	return services, spans, b.String()
}

// TestAppExportsSpansToTheCollector: with tracing on, the inst's calls and
// provider requests reach the collector by the time Close returns, under
// the configured service name, and without the secrets of the call.
func TestAppExportsSpansToTheCollector(t *testing.T) {
	t.Parallel()
	col := startCollector(t)
	fake := startFake(t)
	cfg := appConfig(fake.url, t.TempDir())
	cfg.Getenv = envMap(nil) // no OTEL_EXPORTER_OTLP_* endpoint from this machine
	cfg.Tracing = app.TracingConfig{Enabled: true, OTLPEndpoint: col.addr, Insecure: true, SampleRatio: 1, ServiceName: "tokenbroker-test"}
	inst, closeApp := startApp(t, cfg)
	tok := grpcGetToken(t, inst.GRPCAddr(), providerName)
	if err := closeApp(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	services, spans, text := col.received(t)
	if services["tokenbroker-test"] == 0 || len(services) != 1 {
		t.Errorf("service names = %v, want tokenbroker-test alone", services)
	}
	for _, want := range []string{"tokenbroker.v1.TokenBrokerService/GetToken", oauth.SpanToken} {
		if spans[want] == 0 {
			t.Errorf("no %q span reached the collector (spans: %v)", want, spans)
		}
	}
	for _, secret := range []string{fakeClientSecret, tok.GetAccessToken(), strings.TrimPrefix(testKey, "tbk_"+testKeyID+"_")} {
		if strings.Contains(text, secret) {
			t.Errorf("exported spans carry a secret %q", secret)
		}
	}
}
