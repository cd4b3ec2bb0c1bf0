package server

import (
	"context"
	"errors"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tokenbroker/tokenbroker/broker/apikey"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// An AdminService built by NewAdminServer alone has no key store: its API
// key RPCs answer Unimplemented. New serves them from AuthConfig.Keys
// through apiKeyAdmin.

var errNoKeyStore = status.Error(codes.Unimplemented, "API keys are not enabled on this server")

func (s *adminServer) CreateApiKey(context.Context, *tokenbrokerv1.CreateApiKeyRequest) (*tokenbrokerv1.CreateApiKeyResponse, error) {
	return nil, errNoKeyStore
}

func (s *adminServer) ListApiKeys(context.Context, *tokenbrokerv1.ListApiKeysRequest) (*tokenbrokerv1.ListApiKeysResponse, error) {
	return nil, errNoKeyStore
}

func (s *adminServer) RetireApiKey(context.Context, *tokenbrokerv1.RetireApiKeyRequest) (*tokenbrokerv1.RetireApiKeyResponse, error) {
	return nil, errNoKeyStore
}

// apiKeyAdmin is an AdminService whose API key RPCs are served by a key
// store; the other RPCs go to the AdminService it wraps.
type apiKeyAdmin struct {
	tokenbrokerv1.AdminServiceServer
	keys *apikey.Store
	log  *zap.Logger
}

// withAPIKeys serves admin's API key RPCs from keys; with no keys it returns
// admin.
func withAPIKeys(admin tokenbrokerv1.AdminServiceServer, keys *apikey.Store, log *zap.Logger) tokenbrokerv1.AdminServiceServer {
	if keys == nil {
		return admin
	}
	return &apiKeyAdmin{AdminServiceServer: admin, keys: keys, log: log}
}

func (s *apiKeyAdmin) CreateApiKey(ctx context.Context, req *tokenbrokerv1.CreateApiKeyRequest) (*tokenbrokerv1.CreateApiKeyResponse, error) {
	k, key, err := s.keys.Create(ctx, req.GetIdentity(), req.GetDescription())
	if err != nil {
		return nil, apiKeyStatus(s.log, err)
	}
	return &tokenbrokerv1.CreateApiKeyResponse{ApiKey: toAPIKey(k), Key: key}, nil
}

func (s *apiKeyAdmin) ListApiKeys(ctx context.Context, _ *tokenbrokerv1.ListApiKeysRequest) (*tokenbrokerv1.ListApiKeysResponse, error) {
	keys, err := s.keys.List(ctx)
	if err != nil {
		return nil, apiKeyStatus(s.log, err)
	}
	out := make([]*tokenbrokerv1.ApiKey, len(keys))
	for i, k := range keys {
		out[i] = toAPIKey(k)
	}
	return &tokenbrokerv1.ListApiKeysResponse{ApiKeys: out}, nil
}

func (s *apiKeyAdmin) RetireApiKey(ctx context.Context, req *tokenbrokerv1.RetireApiKeyRequest) (*tokenbrokerv1.RetireApiKeyResponse, error) {
	if _, err := s.keys.Retire(ctx, req.GetId()); err != nil {
		return nil, apiKeyStatus(s.log, err)
	}
	return &tokenbrokerv1.RetireApiKeyResponse{}, nil
}

func toAPIKey(k apikey.Key) *tokenbrokerv1.ApiKey {
	out := &tokenbrokerv1.ApiKey{Id: k.ID, Identity: k.Identity, Description: k.Description}
	if !k.CreateTime.IsZero() {
		out.CreateTime = timestamppb.New(k.CreateTime)
	}
	if k.Retired() {
		out.RetireTime = timestamppb.New(k.RetireTime)
	}
	return out
}

var apiKeyCodes = []struct {
	err  error
	code codes.Code
}{
	{apikey.ErrInvalidArgument, codes.InvalidArgument},
	{apikey.ErrNotFound, codes.NotFound},
	{apikey.ErrStatic, codes.FailedPrecondition},
	{apikey.ErrStoreUnavailable, codes.Unavailable},
	{apikey.ErrConflict, codes.Aborted},
	{apikey.ErrUntrustedRecord, codes.Internal},
}

// apiKeyStatus maps the key store's errors; the rest go through toStatus.
func apiKeyStatus(log *zap.Logger, err error) error {
	for _, m := range apiKeyCodes {
		if errors.Is(err, m.err) {
			return status.Error(m.code, err.Error())
		}
	}
	return toStatus(log, err)
}
