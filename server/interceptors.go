package server

import (
	"context"
	"runtime/debug"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// logStream logs a stream when it ends (see logCall).
func logStream(log *zap.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		start := time.Now()
		ctx, st := withCallState(ss.Context())
		err := handler(srv, &contextStream{ServerStream: ss, ctx: ctx})
		logCall(log, info.FullMethod, st, err, start)
		return err
	}
}

// logCall logs a failed call (Info for the caller's mistakes, Warn for the
// server's) and, at Debug only, a successful one, with the caller's
// identity once authentication found it. It never logs requests,
// responses or credentials: they carry tokens and secrets.
func logCall(log *zap.Logger, method string, st *callState, err error, start time.Time) {
	code := status.Code(err)
	if !st.authenticated && (code == codes.Unauthenticated || code == codes.ResourceExhausted) {
		return // the guard logged the failed authentication, within its limit
	}
	if ce := log.Check(levelOf(code), "call"); ce != nil {
		fields := []zap.Field{
			zap.String("method", method),
			zap.Stringer("code", code),
			zap.Duration("duration", time.Since(start)),
		}
		if st.authenticated {
			fields = append(fields, zap.String("caller", st.caller.Identity))
		}
		if err != nil {
			fields = append(fields, zap.String("error", status.Convert(err).Message()))
		}
		ce.Write(fields...)
	}
}

func levelOf(code codes.Code) zapcore.Level {
	switch code {
	case codes.OK:
		return zapcore.DebugLevel
	case codes.Internal, codes.Unknown, codes.DataLoss, codes.Unavailable, codes.Unimplemented:
		return zapcore.WarnLevel
	}
	return zapcore.InfoLevel
}

// recovering runs handler, turning a panic into Internal. The log records
// the method and the stack, never the panic value, which could hold a
// secret.
func recovering(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler, log *zap.Logger) (resp any, err error) {
	defer func() {
		if r := recover(); r != nil {
			log.Error("panic in handler", zap.String("method", info.FullMethod), zap.ByteString("stack", debug.Stack()))
			resp, err = nil, status.Error(codes.Internal, "internal error")
		}
	}()
	return handler(ctx, req)
}

// recoverStream is recovering for streams.
func recoverStream(log *zap.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
		defer func() {
			if r := recover(); r != nil {
				log.Error("panic in handler", zap.String("method", info.FullMethod), zap.ByteString("stack", debug.Stack()))
				err = status.Error(codes.Internal, "internal error")
			}
		}()
		return handler(srv, ss)
	}
}

// unaryChain is the one chain both listeners run: metrics (when m is not
// nil), then logging, authentication and recovery. It is one function
// rather than a chain of interceptors, so that a call allocates no handler
// closure per interceptor. Calls are logged by logCall.
func unaryChain(log *zap.Logger, g *guard, m *Metrics) grpc.UnaryServerInterceptor {
	call := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler, start time.Time) (any, error) {
		ctx, st := withCallState(ctx)
		// A request that could not be unmarshalled is answered
		// InvalidArgument once the caller is admitted (with the request
		// reset, authorization sees no provider).
		if bad := undecodable(req); bad != nil {
			handler = func(context.Context, any) (any, error) { return nil, bad }
		}
		resp, err := g.serve(ctx, st, req, info, handler, log)
		err = boundMessage(err)
		logCall(log, info.FullMethod, st, err, start)
		return resp, err
	}
	if m == nil {
		return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
			return call(ctx, req, info, handler, time.Now())
		}
	}
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now() // one clock read for the log line and the histogram
		mm := m.grpc.beginUnary(info.FullMethod)
		resp, err := call(ctx, req, info, handler, start)
		mm.endUnary(err, start)
		return resp, err
	}
}
