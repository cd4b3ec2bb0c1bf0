package server

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// The gRPC metrics count as go-grpc-middleware's provider does, under its
// names: every series of a registered method exists at zero before the
// first call; a unary call is started, receives and sends one message, and
// is handled with its code (a context error as the gRPC server reports it).
func TestGRPCMetricsCountLikeTheProvider(t *testing.T) {
	m := newGRPCMetrics([]float64{.001, 1})
	s := grpc.NewServer()
	tokenbrokerv1.RegisterTokenBrokerServiceServer(s, tokenbrokerv1.UnimplementedTokenBrokerServiceServer{})
	m.InitializeMetrics(s)
	const svc, method = "tokenbroker.v1.TokenBrokerService", "GetToken"
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range families {
		if f.GetName() == "grpc_server_handled_total" {
			n = len(f.GetMetric())
		}
	}
	if n != 3*17 {
		t.Errorf("grpc_server_handled_total has %d series before any call, want %d (3 methods × 17 codes)", n, 3*17)
	}

	info := &grpc.UnaryServerInfo{FullMethod: "/" + svc + "/" + method}
	for _, err := range []error{nil, nil, status.Error(codes.NotFound, "no"), context.DeadlineExceeded} {
		m.beginUnary(info.FullMethod).endUnary(err, time.Now())
	}
	tests := []struct {
		name string
		got  float64
		want float64
	}{
		{"started", value(t, m.started.WithLabelValues("unary", svc, method)), 4},
		{"received", value(t, m.received.WithLabelValues("unary", svc, method)), 4},
		{"sent", value(t, m.sent.WithLabelValues("unary", svc, method)), 4},
		{"handled OK", value(t, m.handled.WithLabelValues("unary", svc, method, "OK")), 2},
		{"handled NotFound", value(t, m.handled.WithLabelValues("unary", svc, method, "NotFound")), 1},
		{"handled DeadlineExceeded", value(t, m.handled.WithLabelValues("unary", svc, method, "DeadlineExceeded")), 1},
		{"handled Unknown", value(t, m.handled.WithLabelValues("unary", svc, method, "Unknown")), 0},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s = %v, want %v", tt.name, tt.got, tt.want)
		}
	}

	// A method not registered is counted too, under its own labels.
	start := time.Now()
	m.method("/other.v1.Other/Call", "unary").done(nil, start)
	m.method("/other.v1.Other/Call", "unary").done(nil, start)
	if got := value(t, m.handled.WithLabelValues("unary", "other.v1.Other", "Call", "OK")); got != 2 {
		t.Errorf("handled of an unregistered method = %v, want 2", got)
	}
}

func value(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var d dto.Metric
	if err := c.Write(&d); err != nil {
		t.Fatal(err)
	}
	return d.GetCounter().GetValue()
}
