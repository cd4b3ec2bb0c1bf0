package server

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/policy"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// maxMinTTL bounds min_ttl: no provider issues tokens that a longer wait
// could be served from.
const maxMinTTL = 24 * time.Hour

type tokenBrokerServer struct {
	tokenbrokerv1.UnsafeTokenBrokerServiceServer
	broker *broker.Broker
	log    *zap.Logger
	now    func() time.Time
}

// NewTokenBrokerServer returns the TokenBrokerService backed by b.
func NewTokenBrokerServer(b *broker.Broker, log *zap.Logger) tokenbrokerv1.TokenBrokerServiceServer {
	return &tokenBrokerServer{broker: b, log: log, now: time.Now}
}

func (s *tokenBrokerServer) GetToken(ctx context.Context, req *tokenbrokerv1.GetTokenRequest) (*tokenbrokerv1.GetTokenResponse, error) {
	minTTL, err := minTTLArg(req.GetMinTtl())
	if err != nil {
		return nil, toStatus(s.log, err)
	}
	rec, err := s.broker.GetToken(ctx, broker.TokenRequest{
		Provider: req.GetProvider(), Account: req.GetAccount(), Scopes: req.GetScopes(), MinTTL: minTTL,
	})
	if err != nil {
		return nil, toStatus(s.log, err)
	}
	return &tokenbrokerv1.GetTokenResponse{Token: toToken(rec, s.now())}, nil
}

func (s *tokenBrokerServer) Refresh(ctx context.Context, req *tokenbrokerv1.RefreshRequest) (*tokenbrokerv1.RefreshResponse, error) {
	rec, err := s.broker.Refresh(ctx, broker.TokenRequest{
		Provider: req.GetProvider(), Account: req.GetAccount(), Scopes: req.GetScopes(),
	}, req.GetStaleAccessToken())
	if err != nil {
		return nil, toStatus(s.log, err)
	}
	return &tokenbrokerv1.RefreshResponse{Token: toToken(rec, s.now())}, nil
}

func (s *tokenBrokerServer) Introspect(ctx context.Context, req *tokenbrokerv1.IntrospectRequest) (*tokenbrokerv1.IntrospectResponse, error) {
	in, err := s.broker.Introspect(ctx, req.GetToken())
	if err != nil {
		return nil, toStatus(s.log, err)
	}
	// The caller was let in for introspection of some provider; it learns
	// about this token only when it may introspect the token's provider
	// and account. Otherwise the token is, to this caller, not active.
	if !in.Active || !callerMay(ctx, policy.Introspect, in.Provider, in.Account) {
		return &tokenbrokerv1.IntrospectResponse{}, nil
	}
	return &tokenbrokerv1.IntrospectResponse{
		Active:    true,
		Scope:     in.Scope,
		ClientId:  in.ClientID,
		TokenType: in.TokenType,
		Exp:       in.ExpiresAt.Unix(),
		Iat:       in.IssuedAt.Unix(),
		Provider:  in.Provider,
		Account:   in.Account,
		Username:  in.Username,
		Sub:       in.Subject,
	}, nil
}

func minTTLArg(d *durationpb.Duration) (time.Duration, error) {
	if d == nil {
		return 0, nil
	}
	if err := d.CheckValid(); err != nil {
		return 0, fmt.Errorf("%w: min_ttl: %v", broker.ErrInvalidArgument, err)
	}
	v := d.AsDuration()
	if v < 0 || v > maxMinTTL {
		return 0, fmt.Errorf("%w: min_ttl must be between 0 and %s", broker.ErrInvalidArgument, maxMinTTL)
	}
	return v, nil
}

func toToken(rec *broker.TokenRecord, now time.Time) *tokenbrokerv1.Token {
	return &tokenbrokerv1.Token{
		AccessToken: rec.AccessToken,
		TokenType:   rec.Type(),
		ExpiresIn:   int32(max(rec.ExpiresAt.Sub(now)/time.Second, 0)),
		Scope:       rec.GrantedScope(),
		ExpiresAt:   timestamppb.New(rec.ExpiresAt),
		IssuedAt:    timestamppb.New(rec.IssuedAt),
		IdToken:     rec.IDToken(),
		Provider:    rec.Key.Provider,
		Account:     rec.Key.Account,
	}
}
