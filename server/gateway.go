package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// The REST gateway calls the services in-process (about 2.5× the throughput
// of dialing the gRPC listener over loopback). In-process handlers skip the
// gRPC server's interceptors, so every method below runs the very same
// interceptor chain explicitly: a REST caller passes exactly the checks a
// gRPC caller passes. Embedding the Unsafe interfaces makes a new RPC a
// compile error here until it is routed through the chain.

type gatewayTokenBroker struct {
	tokenbrokerv1.UnsafeTokenBrokerServiceServer
	next      tokenbrokerv1.TokenBrokerServiceServer
	intercept grpc.UnaryServerInterceptor
}

func (g *gatewayTokenBroker) GetToken(ctx context.Context, req *tokenbrokerv1.GetTokenRequest) (*tokenbrokerv1.GetTokenResponse, error) {
	return invoke(ctx, g.intercept, g.next, tokenbrokerv1.TokenBrokerService_GetToken_FullMethodName, req, g.next.GetToken)
}

func (g *gatewayTokenBroker) Refresh(ctx context.Context, req *tokenbrokerv1.RefreshRequest) (*tokenbrokerv1.RefreshResponse, error) {
	return invoke(ctx, g.intercept, g.next, tokenbrokerv1.TokenBrokerService_Refresh_FullMethodName, req, g.next.Refresh)
}

func (g *gatewayTokenBroker) Introspect(ctx context.Context, req *tokenbrokerv1.IntrospectRequest) (*tokenbrokerv1.IntrospectResponse, error) {
	return invoke(ctx, g.intercept, g.next, tokenbrokerv1.TokenBrokerService_Introspect_FullMethodName, req, g.next.Introspect)
}

type gatewayAdmin struct {
	tokenbrokerv1.UnsafeAdminServiceServer
	next      tokenbrokerv1.AdminServiceServer
	intercept grpc.UnaryServerInterceptor
}

func (g *gatewayAdmin) PutProvider(ctx context.Context, req *tokenbrokerv1.PutProviderRequest) (*tokenbrokerv1.PutProviderResponse, error) {
	return invoke(ctx, g.intercept, g.next, tokenbrokerv1.AdminService_PutProvider_FullMethodName, req, g.next.PutProvider)
}

func (g *gatewayAdmin) GetProvider(ctx context.Context, req *tokenbrokerv1.GetProviderRequest) (*tokenbrokerv1.GetProviderResponse, error) {
	return invoke(ctx, g.intercept, g.next, tokenbrokerv1.AdminService_GetProvider_FullMethodName, req, g.next.GetProvider)
}

func (g *gatewayAdmin) ListProviders(ctx context.Context, req *tokenbrokerv1.ListProvidersRequest) (*tokenbrokerv1.ListProvidersResponse, error) {
	return invoke(ctx, g.intercept, g.next, tokenbrokerv1.AdminService_ListProviders_FullMethodName, req, g.next.ListProviders)
}

func (g *gatewayAdmin) DeleteProvider(ctx context.Context, req *tokenbrokerv1.DeleteProviderRequest) (*tokenbrokerv1.DeleteProviderResponse, error) {
	return invoke(ctx, g.intercept, g.next, tokenbrokerv1.AdminService_DeleteProvider_FullMethodName, req, g.next.DeleteProvider)
}

func (g *gatewayAdmin) PutAccount(ctx context.Context, req *tokenbrokerv1.PutAccountRequest) (*tokenbrokerv1.PutAccountResponse, error) {
	return invoke(ctx, g.intercept, g.next, tokenbrokerv1.AdminService_PutAccount_FullMethodName, req, g.next.PutAccount)
}

func (g *gatewayAdmin) StartAuthorization(ctx context.Context, req *tokenbrokerv1.StartAuthorizationRequest) (*tokenbrokerv1.StartAuthorizationResponse, error) {
	return invoke(ctx, g.intercept, g.next, tokenbrokerv1.AdminService_StartAuthorization_FullMethodName, req, g.next.StartAuthorization)
}

func (g *gatewayAdmin) ListGrants(ctx context.Context, req *tokenbrokerv1.ListGrantsRequest) (*tokenbrokerv1.ListGrantsResponse, error) {
	return invoke(ctx, g.intercept, g.next, tokenbrokerv1.AdminService_ListGrants_FullMethodName, req, g.next.ListGrants)
}

func (g *gatewayAdmin) RevokeGrant(ctx context.Context, req *tokenbrokerv1.RevokeGrantRequest) (*tokenbrokerv1.RevokeGrantResponse, error) {
	return invoke(ctx, g.intercept, g.next, tokenbrokerv1.AdminService_RevokeGrant_FullMethodName, req, g.next.RevokeGrant)
}

func (g *gatewayAdmin) CreateApiKey(ctx context.Context, req *tokenbrokerv1.CreateApiKeyRequest) (*tokenbrokerv1.CreateApiKeyResponse, error) {
	return invoke(ctx, g.intercept, g.next, tokenbrokerv1.AdminService_CreateApiKey_FullMethodName, req, g.next.CreateApiKey)
}

func (g *gatewayAdmin) ListApiKeys(ctx context.Context, req *tokenbrokerv1.ListApiKeysRequest) (*tokenbrokerv1.ListApiKeysResponse, error) {
	return invoke(ctx, g.intercept, g.next, tokenbrokerv1.AdminService_ListApiKeys_FullMethodName, req, g.next.ListApiKeys)
}

func (g *gatewayAdmin) RetireApiKey(ctx context.Context, req *tokenbrokerv1.RetireApiKeyRequest) (*tokenbrokerv1.RetireApiKeyResponse, error) {
	return invoke(ctx, g.intercept, g.next, tokenbrokerv1.AdminService_RetireApiKey_FullMethodName, req, g.next.RetireApiKey)
}

func (g *gatewayAdmin) RotateClientKey(ctx context.Context, req *tokenbrokerv1.RotateClientKeyRequest) (*tokenbrokerv1.RotateClientKeyResponse, error) {
	return invoke(ctx, g.intercept, g.next, tokenbrokerv1.AdminService_RotateClientKey_FullMethodName, req, g.next.RotateClientKey)
}

func (g *gatewayAdmin) RotateClientSecret(ctx context.Context, req *tokenbrokerv1.RotateClientSecretRequest) (*tokenbrokerv1.RotateClientSecretResponse, error) {
	return invoke(ctx, g.intercept, g.next, tokenbrokerv1.AdminService_RotateClientSecret_FullMethodName, req, g.next.RotateClientSecret)
}

// invoke runs handler h for method through the interceptor chain, as the
// gRPC server would. The call is marked as a REST call, so authentication
// uses the credentials of the HTTP request (see withRESTCredentials) and
// never the metadata the gateway derived from headers.
func invoke[Req, Resp any](ctx context.Context, intercept grpc.UnaryServerInterceptor, srv any, method string, req Req, h func(context.Context, Req) (Resp, error)) (Resp, error) {
	resp, err := intercept(asRESTCall(ctx), req, &grpc.UnaryServerInfo{Server: srv, FullMethod: method}, func(ctx context.Context, req any) (any, error) {
		return h(ctx, req.(Req))
	})
	if err != nil {
		var zero Resp
		return zero, err
	}
	return resp.(Resp), nil
}

// newGateway returns the REST gateway of both services. JSON uses the proto
// field names, and every field is present even when empty, so that callers
// in other languages see a stable shape. The handler records the caller's
// credentials before the gateway runs, and no header becomes gRPC metadata:
// the services read none, and authentication must not see any. Options in
// extra are applied last.
func newGateway(ctx context.Context, tb tokenbrokerv1.TokenBrokerServiceServer, admin tokenbrokerv1.AdminServiceServer, intercept grpc.UnaryServerInterceptor, extra ...runtime.ServeMuxOption) (http.Handler, *restGetToken, error) {
	mux, chained, err := newGatewayMux(ctx, tb, admin, intercept, extra...)
	if err != nil {
		return nil, nil, err
	}
	return withRESTCredentials(mux), &restGetToken{mux: mux, marshaler: gatewayMarshaler, tb: chained}, nil
}

// mountGateway serves the gateway under /v1/, with the request size limit,
// and REST GetToken through getToken, which hands the requests it does not
// serve itself to the gateway.
func mountGateway(mux *routeMux, gw http.Handler, getToken *restGetToken) {
	gateway := withBodyLimit(gw)
	getToken.gateway = gateway
	mux.Handle("/v1/", gateway)
	mux.Handle(restGetTokenPattern, getToken)
}

// gatewayMarshaler reads and writes the gateway's JSON. A body that does
// not decode is an error that says so (see bodyDecoder).
var gatewayMarshaler = restMarshaler{&runtime.JSONPb{
	MarshalOptions:   protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true},
	UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
}}

// restMarshaler is the gateway's JSONPb whose decoders are bodyDecoders.
type restMarshaler struct{ *runtime.JSONPb }

func (m restMarshaler) NewDecoder(r io.Reader) runtime.Decoder {
	return bodyDecoder{m.JSONPb.NewDecoder(r)}
}

// bodyDecoder decodes a request body; its errors, which the gateway answers
// as InvalidArgument with their text, say that the body is at fault and
// what it should have been. io.EOF (an empty body) passes through: the
// gateway takes it as an empty message.
type bodyDecoder struct{ runtime.Decoder }

func (d bodyDecoder) Decode(v any) error {
	err := d.Decoder.Decode(v)
	if err == nil || errors.Is(err, io.EOF) {
		return err
	}
	what := "JSON object"
	if m, ok := v.(proto.Message); ok {
		what = "JSON " + string(m.ProtoReflect().Descriptor().FullName())
	}
	return fmt.Errorf("request body is not a valid %s: %w", what, err)
}

// newGatewayMux returns the gateway's router of both services, and the
// token service as the router calls it (through the interceptor chain).
func newGatewayMux(ctx context.Context, tb tokenbrokerv1.TokenBrokerServiceServer, admin tokenbrokerv1.AdminServiceServer, intercept grpc.UnaryServerInterceptor, extra ...runtime.ServeMuxOption) (*runtime.ServeMux, *gatewayTokenBroker, error) {
	mux := runtime.NewServeMux(append([]runtime.ServeMuxOption{
		runtime.WithMarshalerOption(runtime.MIMEWildcard, gatewayMarshaler),
		runtime.WithIncomingHeaderMatcher(func(string) (string, bool) { return "", false }),
		runtime.WithErrorHandler(restError),
		runtime.WithRoutingErrorHandler(restRoutingError),
	}, extra...)...)
	chained := &gatewayTokenBroker{next: tb, intercept: intercept}
	if err := tokenbrokerv1.RegisterTokenBrokerServiceHandlerServer(ctx, mux, chained); err != nil {
		return nil, nil, err
	}
	if err := tokenbrokerv1.RegisterAdminServiceHandlerServer(ctx, mux, &gatewayAdmin{next: admin, intercept: intercept}); err != nil {
		return nil, nil, err
	}
	if err := handleRESTWatchEvents(mux, admin, intercept); err != nil {
		return nil, nil, err
	}
	return mux, chained, nil
}

func (g *gatewayAdmin) ListEvents(ctx context.Context, req *tokenbrokerv1.ListEventsRequest) (*tokenbrokerv1.ListEventsResponse, error) {
	return invoke(ctx, g.intercept, g.next, tokenbrokerv1.AdminService_ListEvents_FullMethodName, req, g.next.ListEvents)
}

// WatchEvents is not routed by the generated gateway, which cannot stream
// in-process: GET /v1/admin/events:watch is served by
// handleRESTWatchEvents.
func (g *gatewayAdmin) WatchEvents(*tokenbrokerv1.WatchEventsRequest, tokenbrokerv1.AdminService_WatchEventsServer) error {
	return status.Error(codes.Unimplemented, "WatchEvents over REST is GET "+restWatchEventsPath)
}

func (g *gatewayAdmin) PutWebhook(ctx context.Context, req *tokenbrokerv1.PutWebhookRequest) (*tokenbrokerv1.PutWebhookResponse, error) {
	return invoke(ctx, g.intercept, g.next, tokenbrokerv1.AdminService_PutWebhook_FullMethodName, req, g.next.PutWebhook)
}

func (g *gatewayAdmin) GetWebhook(ctx context.Context, req *tokenbrokerv1.GetWebhookRequest) (*tokenbrokerv1.GetWebhookResponse, error) {
	return invoke(ctx, g.intercept, g.next, tokenbrokerv1.AdminService_GetWebhook_FullMethodName, req, g.next.GetWebhook)
}

func (g *gatewayAdmin) ListWebhooks(ctx context.Context, req *tokenbrokerv1.ListWebhooksRequest) (*tokenbrokerv1.ListWebhooksResponse, error) {
	return invoke(ctx, g.intercept, g.next, tokenbrokerv1.AdminService_ListWebhooks_FullMethodName, req, g.next.ListWebhooks)
}

func (g *gatewayAdmin) DeleteWebhook(ctx context.Context, req *tokenbrokerv1.DeleteWebhookRequest) (*tokenbrokerv1.DeleteWebhookResponse, error) {
	return invoke(ctx, g.intercept, g.next, tokenbrokerv1.AdminService_DeleteWebhook_FullMethodName, req, g.next.DeleteWebhook)
}

func (g *gatewayAdmin) ListWebhookDeliveries(ctx context.Context, req *tokenbrokerv1.ListWebhookDeliveriesRequest) (*tokenbrokerv1.ListWebhookDeliveriesResponse, error) {
	return invoke(ctx, g.intercept, g.next, tokenbrokerv1.AdminService_ListWebhookDeliveries_FullMethodName, req, g.next.ListWebhookDeliveries)
}

func (g *gatewayAdmin) RedeliverWebhook(ctx context.Context, req *tokenbrokerv1.RedeliverWebhookRequest) (*tokenbrokerv1.RedeliverWebhookResponse, error) {
	return invoke(ctx, g.intercept, g.next, tokenbrokerv1.AdminService_RedeliverWebhook_FullMethodName, req, g.next.RedeliverWebhook)
}
