package server

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tokenbroker/tokenbroker/broker"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

func (s *adminServer) PutAccount(ctx context.Context, req *tokenbrokerv1.PutAccountRequest) (*tokenbrokerv1.PutAccountResponse, error) {
	g, err := s.broker.PutAccount(ctx, broker.Account{
		Provider: req.GetProvider(), Account: req.GetAccount(), Type: grantTypes[req.GetGrantType()],
		Username: req.GetUsername(), Password: req.GetPassword(), Scopes: req.GetScopes(),
	})
	if err != nil {
		return nil, toStatus(s.log, err)
	}
	s.log.Info("account put", zap.String("provider", g.Provider), zap.String("account", g.Account),
		zap.Bool("password_changed", req.GetPassword() != ""))
	return &tokenbrokerv1.PutAccountResponse{Grant: s.toGrant(g)}, nil
}

// authorizationFlows starts each consent flow.
var authorizationFlows = map[tokenbrokerv1.AuthorizationFlow]func(b *broker.Broker, ctx context.Context, provider, account string, scopes []string) (*broker.Authorization, error){
	tokenbrokerv1.AuthorizationFlow_AUTHORIZATION_FLOW_UNSPECIFIED:        (*broker.Broker).StartAuthorization,
	tokenbrokerv1.AuthorizationFlow_AUTHORIZATION_FLOW_AUTHORIZATION_CODE: (*broker.Broker).StartAuthorization,
	tokenbrokerv1.AuthorizationFlow_AUTHORIZATION_FLOW_DEVICE_CODE:        (*broker.Broker).StartDeviceAuthorization,
}

func (s *adminServer) StartAuthorization(ctx context.Context, req *tokenbrokerv1.StartAuthorizationRequest) (*tokenbrokerv1.StartAuthorizationResponse, error) {
	start, ok := authorizationFlows[req.GetFlow()]
	if !ok {
		return nil, toStatus(s.log, fmt.Errorf("%w: unknown flow %d", broker.ErrInvalidArgument, req.GetFlow()))
	}
	a, err := start(s.broker, ctx, req.GetProvider(), req.GetAccount(), req.GetScopes())
	if err != nil {
		return nil, toStatus(s.log, err)
	}
	out := &tokenbrokerv1.StartAuthorizationResponse{
		AuthorizeUrl: a.URL, State: a.State, ExpireTime: timestamppb.New(a.ExpiresAt),
		UserCode: a.UserCode, VerificationUri: a.VerificationURI, VerificationUriComplete: a.VerificationURIComplete,
	}
	if a.Interval > 0 {
		out.Interval = durationpb.New(a.Interval)
	}
	return out, nil
}

func (s *adminServer) ListGrants(ctx context.Context, req *tokenbrokerv1.ListGrantsRequest) (*tokenbrokerv1.ListGrantsResponse, error) {
	gs, err := s.broker.ListGrants(ctx, req.GetProvider())
	if err != nil {
		return nil, toStatus(s.log, err)
	}
	out := make([]*tokenbrokerv1.Grant, len(gs))
	for i, g := range gs {
		out[i] = s.toGrant(g)
	}
	return &tokenbrokerv1.ListGrantsResponse{Grants: out}, nil
}

func (s *adminServer) RevokeGrant(ctx context.Context, req *tokenbrokerv1.RevokeGrantRequest) (*tokenbrokerv1.RevokeGrantResponse, error) {
	if err := s.broker.RevokeGrant(ctx, req.GetProvider(), req.GetAccount()); err != nil {
		return nil, toStatus(s.log, err)
	}
	return &tokenbrokerv1.RevokeGrantResponse{}, nil
}

var grantHealth = map[broker.GrantHealth]tokenbrokerv1.GrantHealth{
	broker.HealthOK:                      tokenbrokerv1.GrantHealth_GRANT_HEALTH_OK,
	broker.HealthRefreshing:              tokenbrokerv1.GrantHealth_GRANT_HEALTH_REFRESHING,
	broker.HealthReauthorizationRequired: tokenbrokerv1.GrantHealth_GRANT_HEALTH_REAUTHORIZATION_REQUIRED,
	broker.HealthFailing:                 tokenbrokerv1.GrantHealth_GRANT_HEALTH_FAILING,
	broker.HealthPending:                 tokenbrokerv1.GrantHealth_GRANT_HEALTH_PENDING,
}

// toGrant converts a grant for an admin response, without its secrets.
func (s *adminServer) toGrant(g *broker.Grant) *tokenbrokerv1.Grant {
	out := &tokenbrokerv1.Grant{
		Provider:     g.Provider,
		Account:      g.Account,
		GrantType:    toGrantType(g.Type),
		Username:     g.Username,
		Password:     s.secretInfo(g.Password, g.PasswordUpdateTime),
		RefreshToken: s.secretInfo(g.RefreshToken, g.RefreshTokenUpdateTime),
		Scopes:       g.Scopes,
		Health:       grantHealth[g.Health],
		LastError:    g.LastError,
		RefreshedBy:  g.RefreshedBy,
		CreateTime:   timestamppb.New(g.CreateTime),
		UpdateTime:   timestamppb.New(g.UpdateTime),
	}
	if !g.LastRefresh.IsZero() {
		out.LastRefreshTime = timestamppb.New(g.LastRefresh)
	}
	if !g.ExpireTime.IsZero() {
		out.ExpireTime = timestamppb.New(g.ExpireTime)
	}
	return out
}

// secretInfo describes a secret for an admin answer: whether it is set,
// its keyed fingerprint, and when it changed; never the secret.
func (s *adminServer) secretInfo(secret string, changed time.Time) *tokenbrokerv1.SecretInfo {
	info := &tokenbrokerv1.SecretInfo{Set: secret != "", Fingerprint: s.broker.Fingerprint(secret)}
	if !changed.IsZero() {
		info.UpdateTime = timestamppb.New(changed)
	}
	return info
}
