// Package server is tokenbroker's transport: the gRPC services, the REST
// gateway guarded by the same interceptor chain, health, reflection, and on
// a listener of their own the metrics and the OpenAPI document.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/policy"
	"github.com/tokenbroker/tokenbroker/broker/workload"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// MaxRequestBytes bounds a request body on both listeners.
const MaxRequestBytes = 1 << 20

// Config configures a Server.
type Config struct {
	// GRPCAddr and HTTPAddr are the listen addresses; port 0 picks one.
	GRPCAddr string
	HTTPAddr string
	// MetricsAddr is the listen address of /metrics and /openapi.json,
	// served without credentials and so kept off the API listeners (a
	// loopback address, or one only the scraper reaches). Empty serves
	// neither.
	MetricsAddr string
	Broker      *broker.Broker
	// Auth authenticates and authorizes every call but health checks, on
	// both listeners. Its zero value lets no one in.
	Auth AuthConfig
	// TLS, when set, serves both listeners over TLS; with ClientCAs, client
	// certificates authenticate callers (see LoadTLS). Nil serves plain
	// text.
	TLS *tls.Config
	// Metrics, when set, instruments the interceptor chain, and is served
	// at /metrics on MetricsAddr.
	Metrics *Metrics
	// Logger is scoped with Named("server"), audit events with
	// Named(AuditLoggerName); nop when nil.
	Logger *zap.Logger
	// TracerProvider, when set, gives every call but health checks a
	// server span: gRPC calls, and REST requests to the gateway and the
	// introspection endpoint. A caller's W3C trace context is continued.
	// Nil installs nothing, whatever the global TracerProvider is.
	TracerProvider trace.TracerProvider
}

// Server serves the broker over gRPC and over the REST gateway, each on its
// own listener.
type Server struct {
	log      *zap.Logger
	grpc     *grpc.Server
	http     *http.Server
	metrics  *http.Server // nil without MetricsAddr
	tls      bool
	health   *health.Server
	guard    *guard
	routes   []string // the API listener's mux patterns
	grpcLis  net.Listener
	httpLis  net.Listener
	metLis   net.Listener
	errc     chan error
	wg       sync.WaitGroup
	stopOnce sync.Once
}

// New binds both listeners, so that an address in use is an error here, and
// builds the servers; Start serves.
func New(cfg Config) (*Server, error) {
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	audit := log.Named(AuditLoggerName)
	log = log.Named("server")
	g := newGuard(cfg.Auth, log, audit)
	// One chain for both listeners, in this order: (metrics), logging,
	// authentication, recovery.
	chain := unaryChain(log, g, cfg.Metrics)
	stream := []grpc.StreamServerInterceptor{logStream(log), g.stream, recoverStream(log)}
	if cfg.Metrics != nil {
		stream = append([]grpc.StreamServerInterceptor{cfg.Metrics.grpc.StreamServerInterceptor()}, stream...)
	}

	tb := NewTokenBrokerServer(cfg.Broker, log)
	admin := withAPIKeys(NewAdminServer(cfg.Broker, log), cfg.Auth.Keys, log)
	gw, getToken, err := newGateway(context.Background(), tb, admin, chain, gatewayTracing(cfg.TracerProvider)...)
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}

	s := &Server{log: log, health: health.NewServer(), guard: g, errc: make(chan error, 3)}
	opts := []grpc.ServerOption{
		grpc.UnaryInterceptor(chain),
		grpc.ChainStreamInterceptor(stream...),
		grpc.MaxRecvMsgSize(MaxRequestBytes),
		grpc.ForceServerCodecV2(newRequestCodec()),
	}
	if cfg.TLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(cfg.TLS.Clone())))
	}
	opts = append(opts, grpcTracing(cfg.TracerProvider)...)
	s.grpc = grpc.NewServer(opts...)
	tokenbrokerv1.RegisterTokenBrokerServiceServer(s.grpc, tb)
	tokenbrokerv1.RegisterAdminServiceServer(s.grpc, admin)
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	if cfg.Metrics != nil {
		cfg.Metrics.grpc.InitializeMetrics(s.grpc)
	}

	mux := newRouteMux()
	mountGateway(mux, gw, getToken)
	// The consent callback is authenticated by its single-use state, not
	// by caller credentials: a browser following a redirect has none.
	mux.Handle("GET "+CallbackPath, callbackHandler(cfg.Broker, log))
	mux.Handle("POST "+IntrospectPath, introspectionHandler(tb, chain, log))
	mountJWKS(mux, cfg.Broker, log.Named("jwks"))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	// Ready: etcd answers. Leadership is shown, for operators.
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := cfg.Broker.Ready(r.Context()); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = fmt.Fprintf(w, "not ready: etcd unreachable\n")
			return
		}
		_, _ = fmt.Fprintf(w, "ok\nleading refresh shards: %v\n", cfg.Broker.LeadingShards())
	})
	s.routes = mux.patterns
	s.http = &http.Server{
		Handler:           httpTracing(cfg.TracerProvider, mux),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          zap.NewStdLog(log.Named("http")),
	}
	if cfg.TLS != nil {
		s.http.TLSConfig = cfg.TLS.Clone()
		s.tls = true
	}

	if s.grpcLis, err = net.Listen("tcp", cfg.GRPCAddr); err != nil {
		return nil, fmt.Errorf("grpc listener: %w", err)
	}
	if s.httpLis, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
		s.grpcLis.Close()
		return nil, fmt.Errorf("http listener: %w", err)
	}
	if cfg.MetricsAddr != "" {
		s.metrics = &http.Server{
			Handler:           metricsMux(cfg.Metrics),
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       30 * time.Second,
			IdleTimeout:       2 * time.Minute,
			ErrorLog:          zap.NewStdLog(log.Named("metrics-http")),
		}
		if s.metLis, err = net.Listen("tcp", cfg.MetricsAddr); err != nil {
			s.grpcLis.Close()
			s.httpLis.Close()
			return nil, fmt.Errorf("metrics listener: %w", err)
		}
	}
	return s, nil
}

// metricsMux serves m (when not nil) at MetricsPath and the OpenAPI
// document at OpenAPIPath.
func metricsMux(m *Metrics) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+OpenAPIPath, serveOpenAPI)
	if m != nil {
		mux.Handle("GET "+MetricsPath, m.Handler())
	}
	return mux
}

// GRPCAddr is the address the gRPC listener is bound to.
func (s *Server) GRPCAddr() string { return s.grpcLis.Addr().String() }

// HTTPAddr is the address the REST listener is bound to.
func (s *Server) HTTPAddr() string { return s.httpLis.Addr().String() }

// MetricsAddr is the address the metrics listener is bound to; empty
// without one.
func (s *Server) MetricsAddr() string {
	if s.metLis == nil {
		return ""
	}
	return s.metLis.Addr().String()
}

// Start serves both listeners in the background until Shutdown. A listener
// that fails is reported on Err.
func (s *Server) Start() {
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	for _, svc := range []string{tokenbrokerv1.TokenBrokerService_ServiceDesc.ServiceName, tokenbrokerv1.AdminService_ServiceDesc.ServiceName} {
		s.health.SetServingStatus(svc, healthpb.HealthCheckResponse_SERVING)
	}
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		if err := s.grpc.Serve(s.grpcLis); err != nil {
			s.errc <- fmt.Errorf("grpc server: %w", err)
		}
	}()
	go func() {
		defer s.wg.Done()
		serve := s.http.Serve
		if s.tls {
			// The certificate is in TLSConfig; ServeTLS adds h2 to it.
			serve = func(l net.Listener) error { return s.http.ServeTLS(l, "", "") }
		}
		if err := serve(s.httpLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.errc <- fmt.Errorf("http server: %w", err)
		}
	}()
	if s.metrics != nil {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := s.metrics.Serve(s.metLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.errc <- fmt.Errorf("metrics server: %w", err)
			}
		}()
	}
	s.log.Info("serving", zap.String("grpc_addr", s.GRPCAddr()), zap.String("http_addr", s.HTTPAddr()),
		zap.String("metrics_addr", s.MetricsAddr()), zap.Bool("tls", s.tls))
}

// SetPolicy replaces the authorization policy; calls already authorized
// finish under the old one. Under AuthConfig.InsecureNoAuth every caller
// keeps every action.
func (s *Server) SetPolicy(p *policy.Policy) { s.guard.setPolicy(p) }

// SetWorkloadVerifier replaces the verifier of JWT callers; nil accepts
// none. Calls already authenticated are not affected.
func (s *Server) SetWorkloadVerifier(v *workload.Verifier) { s.guard.workload.Store(v) }

// SetRateLimit replaces the per-caller rate limit; every bucket starts full.
func (s *Server) SetRateLimit(l RateLimit) { s.guard.limiter.Store(newRateLimiter(l, nil)) }

// SetUnauthenticatedRateLimit replaces the limit of failed
// authentications per remote address; every bucket starts full.
func (s *Server) SetUnauthenticatedRateLimit(l RateLimit) {
	s.guard.failures.Store(newFailureLimiter(l, nil))
}

// AuthStats counts the calls refused since the server started.
func (s *Server) AuthStats() AuthStats { return s.guard.stats() }

// Err reports a listener that stopped serving on its own.
func (s *Server) Err() <-chan error { return s.errc }

// Shutdown stops accepting calls and waits for in-flight ones until ctx
// ends; then it cuts the rest. It waits for the serving goroutines.
func (s *Server) Shutdown(ctx context.Context) error {
	var err error
	s.stopOnce.Do(func() {
		s.health.Shutdown()
		done := make(chan struct{})
		go func() {
			s.grpc.GracefulStop()
			close(done)
		}()
		err = s.http.Shutdown(ctx)
		if s.metrics != nil {
			if s.metrics.Shutdown(ctx) != nil {
				s.metrics.Close()
			}
		}
		select {
		case <-done:
		case <-ctx.Done():
			s.grpc.Stop()
			<-done
		}
		if err != nil {
			s.http.Close()
		}
		// Listeners that Start never served are closed here.
		s.grpcLis.Close()
		s.httpLis.Close()
		if s.metLis != nil {
			s.metLis.Close()
		}
		s.wg.Wait()
	})
	return err
}
