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

// chainUnary composes interceptors into one; the first is outermost.
func chainUnary(interceptors ...grpc.UnaryServerInterceptor) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		next := handler
		for i := len(interceptors) - 1; i >= 0; i-- {
			next = bind(interceptors[i], info, next)
		}
		return next(ctx, req)
	}
}

func bind(i grpc.UnaryServerInterceptor, info *grpc.UnaryServerInfo, next grpc.UnaryHandler) grpc.UnaryHandler {
	return func(ctx context.Context, req any) (any, error) { return i(ctx, req, info, next) }
}

// chainStream composes stream interceptors into one; the first is outermost.
func chainStream(interceptors ...grpc.StreamServerInterceptor) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		next := handler
		for i := len(interceptors) - 1; i >= 0; i-- {
			next = bindStream(interceptors[i], info, next)
		}
		return next(srv, ss)
	}
}

func bindStream(i grpc.StreamServerInterceptor, info *grpc.StreamServerInfo, next grpc.StreamHandler) grpc.StreamHandler {
	return func(srv any, ss grpc.ServerStream) error { return i(srv, ss, info, next) }
}

// logUnary logs failed calls (Info for the caller's mistakes, Warn for the
// server's) and, at Debug only, successful ones, with the caller's identity
// once authentication found it. It never logs requests, responses or
// credentials: they carry tokens and secrets.
func logUnary(log *zap.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		ctx, st := withCallState(ctx)
		resp, err := handler(ctx, req)
		logCall(log, info.FullMethod, st, err, start)
		return resp, err
	}
}

// logStream is logUnary for streams; it logs when the stream ends.
func logStream(log *zap.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		start := time.Now()
		ctx, st := withCallState(ss.Context())
		err := handler(srv, &contextStream{ServerStream: ss, ctx: ctx})
		logCall(log, info.FullMethod, st, err, start)
		return err
	}
}

func logCall(log *zap.Logger, method string, st *callState, err error, start time.Time) {
	code := status.Code(err)
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

// recoverUnary turns a panic in a handler into Internal. The log records
// the method and the stack, never the panic value, which could hold a
// secret.
func recoverUnary(log *zap.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		return recovering(ctx, req, info, handler, log)
	}
}

func recovering(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler, log *zap.Logger) (resp any, err error) {
	defer func() {
		if r := recover(); r != nil {
			log.Error("panic in handler", zap.String("method", info.FullMethod), zap.ByteString("stack", debug.Stack()))
			resp, err = nil, status.Error(codes.Internal, "internal error")
		}
	}()
	return handler(ctx, req)
}

// recoverStream is recoverUnary for streams.
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
// nil), then logging, authentication and recovery. The last three are one
// function rather than a chain of interceptors, so that a call allocates
// no handler closure per interceptor; they behave as logUnary, guard.unary
// and recoverUnary composed in that order.
func unaryChain(log *zap.Logger, g *guard, m *Metrics) grpc.UnaryServerInterceptor {
	call := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler, start time.Time) (any, error) {
		ctx, st := withCallState(ctx)
		resp, err := g.serve(ctx, st, req, info, handler, log)
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
