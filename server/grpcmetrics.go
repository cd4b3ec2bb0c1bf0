package server

import (
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// grpcMetrics are the gRPC server's metrics, under the names and labels of
// go-grpc-middleware's Prometheus provider (grpc_server_started_total,
// grpc_server_handled_total, grpc_server_msg_received_total,
// grpc_server_msg_sent_total, grpc_server_handling_seconds), so that its
// dashboards and alerts apply. Unlike the provider, which looks up every
// label set on every call, the handles of every method and code are bound
// once, when the services are registered: a call costs a few atomic adds
// and a histogram observation.
type grpcMetrics struct {
	started, handled, received, sent *prometheus.CounterVec
	seconds                          *prometheus.HistogramVec
	methods                          map[string]*methodMetrics // full method name → handles; read-only once serving
	late                             sync.Map                  // full method name → *methodMetrics, for methods not registered
}

// methodMetrics are one method's bound handles.
type methodMetrics struct {
	started, received, sent prometheus.Counter
	handled                 [codes.Unauthenticated + 1]prometheus.Counter // by code
	seconds                 prometheus.Observer
}

func newGRPCMetrics(buckets []float64) *grpcMetrics {
	labels := []string{"grpc_type", "grpc_service", "grpc_method"}
	return &grpcMetrics{
		started: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_started_total", Help: "Total number of RPCs started on the server.",
		}, labels),
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_handled_total", Help: "Total number of RPCs completed on the server, regardless of success or failure.",
		}, append(labels, "grpc_code")),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_msg_received_total", Help: "Total number of RPC stream messages received on the server.",
		}, labels),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_msg_sent_total", Help: "Total number of gRPC stream messages sent by the server.",
		}, labels),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "grpc_server_handling_seconds", Help: "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
			Buckets: buckets,
		}, labels),
		methods: make(map[string]*methodMetrics),
	}
}

func (m *grpcMetrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.collectors() {
		c.Describe(ch)
	}
}

func (m *grpcMetrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.collectors() {
		c.Collect(ch)
	}
}

func (m *grpcMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.started, m.handled, m.received, m.sent, m.seconds}
}

// InitializeMetrics binds the handles of every method s serves, which
// also makes every series visible at zero before the first call. It must
// run before s serves.
func (m *grpcMetrics) InitializeMetrics(s *grpc.Server) {
	for service, info := range s.GetServiceInfo() {
		for _, method := range info.Methods {
			m.methods["/"+service+"/"+method.Name] = m.bind(grpcType(method.IsClientStream, method.IsServerStream), service, method.Name)
		}
	}
}

// grpcType is the grpc_type label of a method that streams as told.
func grpcType(clientStream, serverStream bool) string {
	switch {
	case clientStream && serverStream:
		return "bidi_stream"
	case clientStream:
		return "client_stream"
	case serverStream:
		return "server_stream"
	}
	return "unary"
}

func (m *grpcMetrics) bind(typ, service, method string) *methodMetrics {
	mm := &methodMetrics{
		started:  m.started.WithLabelValues(typ, service, method),
		received: m.received.WithLabelValues(typ, service, method),
		sent:     m.sent.WithLabelValues(typ, service, method),
		seconds:  m.seconds.WithLabelValues(typ, service, method),
	}
	for c := range mm.handled {
		mm.handled[c] = m.handled.WithLabelValues(typ, service, method, codes.Code(c).String())
	}
	return mm
}

// method returns the handles of fullMethod; a method not registered (no
// such service: the server answers Unimplemented) is bound on the spot.
func (m *grpcMetrics) method(fullMethod, typ string) *methodMetrics {
	if mm, ok := m.methods[fullMethod]; ok {
		return mm
	}
	if mm, ok := m.late.Load(fullMethod); ok {
		return mm.(*methodMetrics)
	}
	service, method, _ := strings.Cut(strings.TrimPrefix(fullMethod, "/"), "/")
	mm, _ := m.late.LoadOrStore(fullMethod, m.bind(typ, service, method))
	return mm.(*methodMetrics)
}

// done records the end of a call that started at start.
func (mm *methodMetrics) done(err error, start time.Time) {
	s, ok := status.FromError(err)
	if !ok {
		s = status.FromContextError(err)
	}
	code := s.Code()
	if int(code) >= len(mm.handled) {
		code = codes.Unknown
	}
	mm.handled[code].Inc()
	mm.seconds.Observe(time.Since(start).Seconds())
}

// beginUnary counts a unary call's start and the one message it received,
// as the provider's unary interceptor does; endUnary counts the message
// sent, the code and the latency.
func (m *grpcMetrics) beginUnary(fullMethod string) *methodMetrics {
	mm := m.method(fullMethod, "unary")
	mm.started.Inc()
	mm.received.Inc()
	return mm
}

func (mm *methodMetrics) endUnary(err error, start time.Time) {
	mm.sent.Inc()
	mm.done(err, start)
}

// StreamServerInterceptor counts streams (reflection, health watches) and
// their messages.
func (m *grpcMetrics) StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		start := time.Now()
		mm := m.method(info.FullMethod, grpcType(info.IsClientStream, info.IsServerStream))
		mm.started.Inc()
		err := handler(srv, &countedStream{ServerStream: ss, mm: mm})
		mm.done(err, start)
		return err
	}
}

type countedStream struct {
	grpc.ServerStream
	mm *methodMetrics
}

func (s *countedStream) SendMsg(m any) error {
	err := s.ServerStream.SendMsg(m)
	if err == nil {
		s.mm.sent.Inc()
	}
	return err
}

func (s *countedStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if err == nil {
		s.mm.received.Inc()
	}
	return err
}
