package server

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/oauth"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

type adminServer struct {
	tokenbrokerv1.UnsafeAdminServiceServer
	broker *broker.Broker
	log    *zap.Logger
}

// NewAdminServer returns the AdminService backed by b. No response carries
// a secret: only whether one is set, its fingerprint and when it changed.
func NewAdminServer(b *broker.Broker, log *zap.Logger) tokenbrokerv1.AdminServiceServer {
	return &adminServer{broker: b, log: log}
}

func (s *adminServer) PutProvider(ctx context.Context, req *tokenbrokerv1.PutProviderRequest) (*tokenbrokerv1.PutProviderResponse, error) {
	if req.GetProvider() == nil {
		return nil, toStatus(s.log, fmt.Errorf("%w: provider is required", broker.ErrInvalidArgument))
	}
	p, err := fromProvider(req.GetProvider())
	if err != nil {
		return nil, toStatus(s.log, err)
	}
	if pem := req.GetClientKey(); pem != "" {
		k, err := broker.ParseClientKey([]byte(pem), p.ClientKeyAlgorithm)
		if err != nil {
			return nil, toStatus(s.log, err)
		}
		p.ClientKeys = []broker.ClientKey{k}
	}
	if sa := req.GetServiceAccountKey(); sa != "" {
		if req.GetClientKey() != "" {
			return nil, toStatus(s.log, fmt.Errorf("%w: give client_key or service_account_key, not both", broker.ErrInvalidArgument))
		}
		if err := broker.ApplyServiceAccountKey(&p, []byte(sa)); err != nil {
			return nil, toStatus(s.log, err)
		}
	}
	p.ClientCertificateKey = req.GetClientCertificateKey()
	if preset := req.GetProvider().GetPreset(); preset != "" {
		if err := s.broker.ApplyPreset(ctx, &p, preset, req.GetProvider().GetBaseUrl()); err != nil {
			return nil, toStatus(s.log, err)
		}
	}
	stored, err := s.broker.PutProvider(ctx, p, req.GetClientSecret())
	if err != nil {
		return nil, toStatus(s.log, err)
	}
	s.log.Info("provider put", zap.String("provider", stored.Name), zap.Bool("secret_changed", req.GetClientSecret() != ""),
		zap.Bool("client_key_imported", req.GetClientKey() != "" || req.GetServiceAccountKey() != ""),
		zap.Bool("certificate_key_changed", req.GetClientCertificateKey() != ""))
	return &tokenbrokerv1.PutProviderResponse{Provider: s.toProvider(stored)}, nil
}

func (s *adminServer) GetProvider(ctx context.Context, req *tokenbrokerv1.GetProviderRequest) (*tokenbrokerv1.GetProviderResponse, error) {
	p, err := s.broker.GetProvider(ctx, req.GetName())
	if err != nil {
		return nil, toStatus(s.log, err)
	}
	return &tokenbrokerv1.GetProviderResponse{Provider: s.toProvider(p)}, nil
}

func (s *adminServer) ListProviders(ctx context.Context, _ *tokenbrokerv1.ListProvidersRequest) (*tokenbrokerv1.ListProvidersResponse, error) {
	ps, err := s.broker.ListProviders(ctx)
	if err != nil {
		return nil, toStatus(s.log, err)
	}
	out := make([]*tokenbrokerv1.Provider, len(ps))
	for i, p := range ps {
		out[i] = s.toProvider(p)
	}
	return &tokenbrokerv1.ListProvidersResponse{Providers: out}, nil
}

func (s *adminServer) DeleteProvider(ctx context.Context, req *tokenbrokerv1.DeleteProviderRequest) (*tokenbrokerv1.DeleteProviderResponse, error) {
	if err := s.broker.DeleteProvider(ctx, req.GetName()); err != nil {
		return nil, toStatus(s.log, err)
	}
	s.log.Info("provider deleted", zap.String("provider", req.GetName()))
	return &tokenbrokerv1.DeleteProviderResponse{}, nil
}

var authStyles = map[tokenbrokerv1.ClientAuthStyle]oauth.AuthStyle{
	tokenbrokerv1.ClientAuthStyle_CLIENT_AUTH_STYLE_UNSPECIFIED:     0, // the preset's, else basic
	tokenbrokerv1.ClientAuthStyle_CLIENT_AUTH_STYLE_BASIC:           oauth.AuthBasic,
	tokenbrokerv1.ClientAuthStyle_CLIENT_AUTH_STYLE_POST:            oauth.AuthPost,
	tokenbrokerv1.ClientAuthStyle_CLIENT_AUTH_STYLE_BASIC_AND_POST:  oauth.AuthBasicAndPost,
	tokenbrokerv1.ClientAuthStyle_CLIENT_AUTH_STYLE_PRIVATE_KEY_JWT: oauth.AuthPrivateKeyJWT,
	tokenbrokerv1.ClientAuthStyle_CLIENT_AUTH_STYLE_NONE:            oauth.AuthNone,

	tokenbrokerv1.ClientAuthStyle_CLIENT_AUTH_STYLE_TLS_CLIENT_AUTH:             oauth.AuthTLSClientAuth,
	tokenbrokerv1.ClientAuthStyle_CLIENT_AUTH_STYLE_SELF_SIGNED_TLS_CLIENT_AUTH: oauth.AuthSelfSignedTLSClientAuth,
}

var grantTypes = map[tokenbrokerv1.GrantType]broker.GrantType{
	tokenbrokerv1.GrantType_GRANT_TYPE_CLIENT_CREDENTIALS: broker.GrantClientCredentials,
	tokenbrokerv1.GrantType_GRANT_TYPE_PASSWORD:           broker.GrantPassword,
	tokenbrokerv1.GrantType_GRANT_TYPE_AUTHORIZATION_CODE: broker.GrantAuthorizationCode,
	tokenbrokerv1.GrantType_GRANT_TYPE_REFRESH_TOKEN:      broker.GrantRefreshToken,
	tokenbrokerv1.GrantType_GRANT_TYPE_JWT_BEARER:         broker.GrantJWTBearer,
	tokenbrokerv1.GrantType_GRANT_TYPE_DEVICE_CODE:        broker.GrantDeviceCode,
	tokenbrokerv1.GrantType_GRANT_TYPE_TOKEN_EXCHANGE:     broker.GrantTokenExchange,
}

// fromProvider converts the API's provider; output-only fields are ignored.
func fromProvider(in *tokenbrokerv1.Provider) (broker.Provider, error) {
	auth, ok := authStyles[in.GetClientAuthStyle()]
	if !ok {
		return broker.Provider{}, fmt.Errorf("%w: unknown client_auth_style %d", broker.ErrInvalidArgument, in.GetClientAuthStyle())
	}
	p := broker.Provider{
		Name:             in.GetName(),
		TokenURL:         in.GetTokenUrl(),
		AuthorizeURL:     in.GetAuthorizeUrl(),
		IntrospectionURL: in.GetIntrospectionUrl(),
		RevocationURL:    in.GetRevocationUrl(),
		ClientID:         in.GetClientId(),
		ClientAuth:       auth,
		DefaultScopes:    in.GetDefaultScopes(),
		TokenParams:      in.GetTokenParams(),
		RedirectURL:      in.GetRedirectUri(),
		PKCE:             in.GetPkce(),

		ClientKeyAlgorithm: in.GetClientKeyAlgorithm(),
		AssertionAudience:  in.GetClientAssertionAudience(),
	}
	if j := in.GetJwtBearer(); j != nil {
		p.JWTBearer = broker.JWTBearer{Issuer: j.GetIssuer(), Subject: j.GetSubject(), Audience: j.GetAudience(), ScopeClaim: j.GetScopeClaim()}
		if d := j.GetLifetime(); d != nil {
			if err := d.CheckValid(); err != nil {
				return broker.Provider{}, fmt.Errorf("%w: jwt_bearer.lifetime: %v", broker.ErrInvalidArgument, err)
			}
			p.JWTBearer.Lifetime = d.AsDuration()
		}
	}
	p.RefreshLeadFraction = in.GetRefreshLeadFraction()
	p.DeviceAuthorizationURL = in.GetDeviceAuthorizationUrl()
	p.ClientCertificate = in.GetClientCertificate()
	if x := in.GetTokenExchange(); x != nil {
		if x.GetSubjectTokenFile() != "" {
			return broker.Provider{}, fmt.Errorf("%w: token_exchange.subject_token_file is set in the config file only", broker.ErrInvalidArgument)
		}
		p.TokenExchange = &broker.TokenExchange{
			SubjectProvider: x.GetSubjectProvider(), SubjectAccount: x.GetSubjectAccount(), SubjectScopes: x.GetSubjectScopes(),
			SubjectTokenType: x.GetSubjectTokenType(), RequestedTokenType: x.GetRequestedTokenType(),
			Audience: x.GetAudience(), Resource: x.GetResource(),
		}
	}
	p.RefreshRevokesAccessToken = in.RefreshRevokesAccessToken
	for _, d := range []struct {
		name string
		in   *durationpb.Duration
		out  *time.Duration
	}{
		{"refresh_min_lead", in.GetRefreshMinLead(), &p.RefreshMinLead},
		{"refresh_idle_after", in.GetRefreshIdleAfter(), &p.RefreshIdleAfter},
		{"keep_alive", in.GetKeepAlive(), &p.KeepAlive},
		{"default_token_lifetime", in.GetDefaultTokenLifetime(), &p.DefaultTokenLifetime},
	} {
		if d.in == nil {
			continue
		}
		if err := d.in.CheckValid(); err != nil {
			return broker.Provider{}, fmt.Errorf("%w: %s: %v", broker.ErrInvalidArgument, d.name, err)
		}
		*d.out = d.in.AsDuration()
	}
	if ia, ok := authStyles[in.GetIntrospectionAuthStyle()]; ok {
		p.IntrospectionAuth = ia
	} else {
		return broker.Provider{}, fmt.Errorf("%w: unknown introspection_auth_style %d", broker.ErrInvalidArgument, in.GetIntrospectionAuthStyle())
	}
	if len(in.GetGrantTokenUrls()) > 0 {
		p.GrantTokenURLs = make(map[broker.GrantType]string, len(in.GetGrantTokenUrls()))
		for g, u := range in.GetGrantTokenUrls() {
			p.GrantTokenURLs[broker.GrantType(g)] = u
		}
	}
	for _, g := range in.GetGrantTypes() {
		bg, ok := grantTypes[g]
		if !ok {
			return broker.Provider{}, fmt.Errorf("%w: unknown grant type %d", broker.ErrInvalidArgument, g)
		}
		p.GrantTypes = append(p.GrantTypes, bg)
	}
	return p, nil
}

// toProvider converts a provider for an admin response, without its secret.
func (s *adminServer) toProvider(p *broker.Provider) *tokenbrokerv1.Provider {
	out := &tokenbrokerv1.Provider{
		Name:                p.Name,
		TokenUrl:            p.TokenURL,
		AuthorizeUrl:        p.AuthorizeURL,
		IntrospectionUrl:    p.IntrospectionURL,
		RevocationUrl:       p.RevocationURL,
		ClientId:            p.ClientID,
		ClientSecret:        s.secretInfo(p.ClientSecret, p.SecretUpdateTime),
		DefaultScopes:       p.DefaultScopes,
		TokenParams:         p.TokenParams,
		CreateTime:          timestamppb.New(p.CreateTime),
		UpdateTime:          timestamppb.New(p.UpdateTime),
		RedirectUri:         p.RedirectURL,
		Pkce:                p.PKCE,
		RefreshLeadFraction: p.RefreshLeadFraction,

		ClientKeyAlgorithm:      p.ClientKeyAlgorithm,
		ClientAssertionAudience: p.AssertionAudience,
		ClientKeys:              toClientKeys(p),
		JwtBearer:               toJWTBearer(p.JWTBearer),

		RefreshRevokesAccessToken:        p.RefreshRevokesAccessToken,
		LearnedRefreshRevokesAccessToken: p.LearnedRefreshRevokesAccessToken,
	}
	out.DeviceAuthorizationUrl = p.DeviceAuthorizationURL
	out.ClientCertificate = p.ClientCertificate
	if x := p.TokenExchange; x != nil {
		out.TokenExchange = &tokenbrokerv1.TokenExchange{
			SubjectProvider: x.SubjectProvider, SubjectAccount: x.SubjectAccount, SubjectScopes: x.SubjectScopes,
			SubjectTokenFile: x.SubjectTokenFile, SubjectTokenType: x.SubjectTokenType, RequestedTokenType: x.RequestedTokenType,
			Audience: x.Audience, Resource: x.Resource,
		}
	}
	if p.ClientCertificateKey != "" {
		out.ClientCertificateKey = s.secretInfo(p.ClientCertificateKey, p.CertificateUpdateTime)
	}
	for _, d := range []struct {
		in  time.Duration
		out **durationpb.Duration
	}{
		{p.RefreshMinLead, &out.RefreshMinLead},
		{p.RefreshIdleAfter, &out.RefreshIdleAfter},
		{p.KeepAlive, &out.KeepAlive},
		{p.DefaultTokenLifetime, &out.DefaultTokenLifetime},
	} {
		if d.in > 0 {
			*d.out = durationpb.New(d.in)
		}
	}
	for k, v := range authStyles {
		if v == p.ClientAuth && v != 0 {
			out.ClientAuthStyle = k
		}
		if v == p.IntrospectionAuth && v != 0 {
			out.IntrospectionAuthStyle = k
		}
	}
	if len(p.GrantTokenURLs) > 0 {
		out.GrantTokenUrls = make(map[string]string, len(p.GrantTokenURLs))
		for g, u := range p.GrantTokenURLs {
			out.GrantTokenUrls[string(g)] = u
		}
	}
	for _, g := range p.GrantTypes {
		out.GrantTypes = append(out.GrantTypes, toGrantType(g))
	}
	return out
}

// toJWTBearer converts the JWT-bearer grant's settings; nil when unset.
func toJWTBearer(j broker.JWTBearer) *tokenbrokerv1.JwtBearerGrant {
	if j == (broker.JWTBearer{}) {
		return nil
	}
	out := &tokenbrokerv1.JwtBearerGrant{Issuer: j.Issuer, Subject: j.Subject, Audience: j.Audience, ScopeClaim: j.ScopeClaim}
	if j.Lifetime > 0 {
		out.Lifetime = durationpb.New(j.Lifetime)
	}
	return out
}

// toClientKeys describes p's client keys, the signing one first, without
// their private halves.
func toClientKeys(p *broker.Provider) []*tokenbrokerv1.ClientKeyInfo {
	var out []*tokenbrokerv1.ClientKeyInfo
	for _, k := range p.ClientKeys {
		info := &tokenbrokerv1.ClientKeyInfo{KeyId: k.KeyID, Algorithm: k.Algorithm, CreateTime: timestamppb.New(k.CreateTime)}
		if !k.RetireTime.IsZero() {
			info.RetireTime = timestamppb.New(k.RetireTime)
		}
		if k.RetireTime.IsZero() {
			out = append([]*tokenbrokerv1.ClientKeyInfo{info}, out...)
		} else {
			out = append(out, info)
		}
	}
	return out
}

func toGrantType(g broker.GrantType) tokenbrokerv1.GrantType {
	for k, v := range grantTypes {
		if v == g {
			return k
		}
	}
	return tokenbrokerv1.GrantType_GRANT_TYPE_UNSPECIFIED
}

func (s *adminServer) RotateClientSecret(ctx context.Context, req *tokenbrokerv1.RotateClientSecretRequest) (*tokenbrokerv1.RotateClientSecretResponse, error) {
	var overlap time.Duration
	if d := req.GetOverlap(); d != nil {
		if err := d.CheckValid(); err != nil {
			return nil, toStatus(s.log, fmt.Errorf("%w: overlap: %v", broker.ErrInvalidArgument, err))
		}
		overlap = d.AsDuration()
	}
	p, err := s.broker.RotateClientSecret(ctx, req.GetProvider(), req.GetClientSecret(), !req.GetSkipValidation(), overlap)
	if err != nil {
		return nil, toStatus(s.log, err)
	}
	return &tokenbrokerv1.RotateClientSecretResponse{Provider: s.toProvider(p)}, nil
}

func (s *adminServer) RotateClientKey(ctx context.Context, req *tokenbrokerv1.RotateClientKeyRequest) (*tokenbrokerv1.RotateClientKeyResponse, error) {
	var overlap time.Duration
	if d := req.GetOverlap(); d != nil {
		if err := d.CheckValid(); err != nil {
			return nil, toStatus(s.log, fmt.Errorf("%w: overlap: %v", broker.ErrInvalidArgument, err))
		}
		overlap = d.AsDuration()
	}
	var k broker.ClientKey
	if pem := req.GetClientKey(); pem != "" {
		var err error
		if k, err = broker.ParseClientKey([]byte(pem), req.GetAlgorithm()); err != nil {
			return nil, toStatus(s.log, err)
		}
	}
	p, err := s.broker.RotateClientKey(ctx, req.GetProvider(), k, req.GetAlgorithm(), overlap)
	if err != nil {
		return nil, toStatus(s.log, err)
	}
	signing, _ := p.SigningKey()
	s.log.Info("client key rotated", zap.String("provider", p.Name), zap.String("kid", signing.KeyID), zap.Bool("imported", k.Private != nil))
	return &tokenbrokerv1.RotateClientKeyResponse{Provider: s.toProvider(p)}, nil
}
