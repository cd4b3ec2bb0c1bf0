package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/server"
)

// The ceilings. Each answers GetToken with a reply of the same size as the
// broker's, built anew for every call from the fields of a real broker
// answer, through the same generated code: a TokenBrokerService
// implementation on a bare grpc-go server (no interceptors), the same
// implementation behind grpc-gateway's in-process handlers with the broker's
// JSON options, and a hand-written net/http + protojson handler.

// echoTokens is a TokenBrokerService that answers GetToken with a copy of
// one token and does nothing else.
type echoTokens struct {
	tokenbrokerv1.UnimplementedTokenBrokerServiceServer
	tmpl *tokenbrokerv1.Token
	exp  time.Time
	iat  time.Time
}

func newEchoTokens(reply *tokenbrokerv1.GetTokenResponse) *echoTokens {
	t := reply.GetToken()
	return &echoTokens{tmpl: t, exp: t.GetExpiresAt().AsTime(), iat: t.GetIssuedAt().AsTime()}
}

// reply builds the answer as the broker's handler does: a new Token with
// the remaining lifetime and two new timestamps.
func (e *echoTokens) reply(req *tokenbrokerv1.GetTokenRequest) *tokenbrokerv1.GetTokenResponse {
	t := e.tmpl
	return &tokenbrokerv1.GetTokenResponse{Token: &tokenbrokerv1.Token{
		AccessToken: t.AccessToken,
		TokenType:   t.TokenType,
		ExpiresIn:   int32(max(time.Until(e.exp)/time.Second, 0)),
		Scope:       t.Scope,
		ExpiresAt:   timestamppb.New(e.exp),
		IssuedAt:    timestamppb.New(e.iat),
		IdToken:     t.IdToken,
		Provider:    req.GetProvider(),
		Account:     req.GetAccount(),
	}}
}

func (e *echoTokens) GetToken(_ context.Context, req *tokenbrokerv1.GetTokenRequest) (*tokenbrokerv1.GetTokenResponse, error) {
	return e.reply(req), nil
}

// gatewayJSON are the broker gateway's JSON options (server/gateway.go).
var gatewayJSON = &runtime.JSONPb{
	MarshalOptions:   protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true},
	UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
}

// newGatewayEcho is grpc-gateway with in-process handlers over e, muxed as
// the broker muxes its gateway (under /v1/, request size bounded), without
// authentication.
func newGatewayEcho(e *echoTokens) (http.Handler, error) {
	gw := runtime.NewServeMux(
		runtime.WithMarshalerOption(runtime.MIMEWildcard, gatewayJSON),
		runtime.WithIncomingHeaderMatcher(func(string) (string, bool) { return "", false }),
	)
	if err := tokenbrokerv1.RegisterTokenBrokerServiceHandlerServer(context.Background(), gw, e); err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/v1/", http.MaxBytesHandler(gw, server.MaxRequestBytes))
	return mux, nil
}

// newHTTPEcho is a hand-written net/http + protojson GetToken.
func newHTTPEcho(e *echoTokens) http.Handler {
	marshal := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/providers/{provider}/token", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, server.MaxRequestBytes))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var req tokenbrokerv1.GetTokenRequest
		if err := protojson.Unmarshal(body, &req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		req.Provider = r.PathValue("provider")
		out, err := marshal.Marshal(e.reply(&req))
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(out)
	})
	return mux
}

// runEchoChild serves the three ceilings until ctx ends. The broker's
// reply to imitate comes base64-encoded in TBBENCH_REPLY.
func runEchoChild(ctx context.Context, ready func(readyLine), control *http.ServeMux) error {
	raw, err := base64.StdEncoding.DecodeString(getenv("TBBENCH_REPLY"))
	if err != nil {
		return fmt.Errorf("TBBENCH_REPLY: %w", err)
	}
	var reply tokenbrokerv1.GetTokenResponse
	if err := proto.Unmarshal(raw, &reply); err != nil || reply.GetToken() == nil {
		return fmt.Errorf("TBBENCH_REPLY is not a GetTokenResponse with a token: %v", err)
	}
	e := newEchoTokens(&reply)

	gs := grpc.NewServer(grpc.MaxRecvMsgSize(server.MaxRequestBytes))
	tokenbrokerv1.RegisterTokenBrokerServiceServer(gs, e)
	gw, err := newGatewayEcho(e)
	if err != nil {
		return err
	}
	servers := []*http.Server{
		{Handler: gw, ReadHeaderTimeout: 10 * time.Second},
		{Handler: newHTTPEcho(e), ReadHeaderTimeout: 10 * time.Second},
		{Handler: control, ReadHeaderTimeout: 10 * time.Second},
	}
	var lis []net.Listener
	for range 4 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		defer l.Close()
		lis = append(lis, l)
	}
	errc := make(chan error, 4)
	go func() { errc <- gs.Serve(lis[0]) }()
	for i, s := range servers {
		go func() {
			if err := s.Serve(lis[i+1]); !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}()
	}
	ready(readyLine{GRPC: lis[0].Addr().String(), Gateway: lis[1].Addr().String(), HTTP: lis[2].Addr().String(), Control: lis[3].Addr().String()})
	select {
	case <-ctx.Done():
		err = nil
	case err = <-errc:
	}
	gs.Stop()
	for _, s := range servers {
		s.Close()
	}
	return err
}
