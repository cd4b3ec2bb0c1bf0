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

// logUnary logs failed calls (Info for the caller's mistakes, Warn for the
// server's) and, at Debug only, successful ones. It never logs requests or
// responses: they carry tokens and secrets.
func logUnary(log *zap.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := handler(ctx, req)
		code := status.Code(err)
		level := levelOf(code)
		if ce := log.Check(level, "call"); ce != nil {
			fields := []zap.Field{
				zap.String("method", info.FullMethod),
				zap.Stringer("code", code),
				zap.Duration("duration", time.Since(start)),
			}
			if err != nil {
				fields = append(fields, zap.String("error", status.Convert(err).Message()))
			}
			ce.Write(fields...)
		}
		return resp, err
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
		defer func() {
			if r := recover(); r != nil {
				log.Error("panic in handler", zap.String("method", info.FullMethod), zap.ByteString("stack", debug.Stack()))
				resp, err = nil, status.Error(codes.Internal, "internal error")
			}
		}()
		return handler(ctx, req)
	}
}
