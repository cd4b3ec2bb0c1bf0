package server

import (
	"context"
	"net/http"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// The in-process gateway cannot serve a server stream, so GET
// /v1/admin/events:watch is served here: the call passes the same
// interceptor chain as every REST call (authentication, policy, logging,
// metrics, recovery) and then streams newline-delimited JSON in the
// gateway's own stream format, one {"result": WatchEventsResponse} per
// event, until the caller goes away; an error after the first event is a
// last {"error": Status} line.

const restWatchEventsPath = "/v1/admin/events:watch"

func handleRESTWatchEvents(mux *runtime.ServeMux, admin tokenbrokerv1.AdminServiceServer, intercept grpc.UnaryServerInterceptor) error {
	return mux.HandlePath(http.MethodGet, restWatchEventsPath, func(w http.ResponseWriter, r *http.Request, _ map[string]string) {
		q := r.URL.Query()
		req := &tokenbrokerv1.WatchEventsRequest{AfterId: q.Get("after_id"), Types: q["types"], Provider: q.Get("provider")}
		ctx := asRESTCall(r.Context())
		stream := &restEventStream{w: w, ctx: ctx}
		_, err := intercept(ctx, req, &grpc.UnaryServerInfo{Server: admin, FullMethod: tokenbrokerv1.AdminService_WatchEvents_FullMethodName},
			func(ctx context.Context, req any) (any, error) {
				wr := req.(*tokenbrokerv1.WatchEventsRequest)
				if _, err := eventFilter(wr.GetTypes(), wr.GetProvider()); err != nil {
					return nil, toStatus(zap.NewNop(), err) // before the stream starts: an HTTP error
				}
				stream.ctx = ctx
				stream.start() // the caller sees 200 now, events as they come
				return nil, admin.WatchEvents(wr, stream)
			})
		switch {
		case err == nil || r.Context().Err() != nil:
		case !stream.started:
			runtime.HTTPError(ctx, mux, gatewayMarshaler, w, r, err)
		default:
			stream.writeError(err)
		}
	})
}

// restEventStream is the WatchEvents stream of a REST caller.
type restEventStream struct {
	grpc.ServerStream
	w       http.ResponseWriter
	ctx     context.Context
	started bool
}

func (s *restEventStream) Context() context.Context { return s.ctx }

func (s *restEventStream) SetHeader(metadata.MD) error  { return nil }
func (s *restEventStream) SendHeader(metadata.MD) error { return nil }
func (s *restEventStream) SetTrailer(metadata.MD)       {}

func (s *restEventStream) Send(m *tokenbrokerv1.WatchEventsResponse) error {
	b, err := gatewayMarshaler.Marshal(m)
	if err != nil {
		return err
	}
	return s.line(`{"result":`, b)
}

func (s *restEventStream) writeError(err error) {
	b, mErr := gatewayMarshaler.Marshal(status.Convert(err).Proto())
	if mErr == nil {
		_ = s.line(`{"error":`, b)
	}
}

// start sends the answer's header.
func (s *restEventStream) start() {
	if s.started {
		return
	}
	s.w.Header().Set("Content-Type", "application/x-ndjson")
	s.w.WriteHeader(http.StatusOK)
	s.started = true
	if f, ok := s.w.(http.Flusher); ok {
		f.Flush()
	}
}

func (s *restEventStream) line(prefix string, b []byte) error {
	s.start()
	out := make([]byte, 0, len(prefix)+len(b)+2)
	out = append(append(append(out, prefix...), b...), "}\n"...)
	if _, err := s.w.Write(out); err != nil {
		return err
	}
	if f, ok := s.w.(http.Flusher); ok {
		f.Flush()
	}
	return nil
}
