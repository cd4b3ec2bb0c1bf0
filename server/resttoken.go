package server

import (
	"errors"
	"io"
	"net/http"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// REST GetToken's route, as the API declares it.
const (
	restGetTokenRoute   = "/v1/providers/{provider}/token"
	restGetTokenPattern = http.MethodPost + " " + restGetTokenRoute
)

// restGetToken serves REST GetToken, the call REST callers make most,
// without the gateway's generic route matching, header annotation and
// transport-stream capture, which cost it a third of its time, and with
// the caller's credentials and the size limit applied in place (see
// mountGateway). Everything
// a caller sees is the gateway's: the request is decoded, the answer
// written and errors rendered with the gateway's own marshaler and
// functions, and the call runs the same interceptor chain (gatewayTokenBroker).
// TestRESTGetTokenMatchesGateway compares the two answer by answer.
// Requests that use what only the gateway interprets (an escaped path, a
// Grpc-Timeout header, a method override) go to the gateway.
type restGetToken struct {
	mux       *runtime.ServeMux
	marshaler runtime.Marshaler
	tb        *gatewayTokenBroker
	gateway   http.Handler
}

func (h *restGetToken) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.RawPath != "" || r.Header.Get("Grpc-Timeout") != "" || r.Header.Get("X-HTTP-Method-Override") != "" {
		h.gateway.ServeHTTP(w, r)
		return
	}
	if route, ok := r.Context().Value(restRouteKey{}).(*string); ok {
		*route = restGetTokenRoute // a traced request's span is named after it
	}
	// What withRESTCredentials and the size limit do for the gateway, done
	// here without copying the request twice.
	ctx := runtime.NewServerMetadataContext(withRESTRequest(r), runtime.ServerMetadata{})
	limitBody(w, r)
	var req tokenbrokerv1.GetTokenRequest
	if err := h.marshaler.NewDecoder(r.Body).Decode(&req); err != nil && !errors.Is(err, io.EOF) {
		runtime.HTTPError(ctx, h.mux, h.marshaler, w, r, status.Errorf(codes.InvalidArgument, "%v", err))
		return
	}
	req.Provider = r.PathValue("provider")
	resp, err := h.tb.GetToken(ctx, &req)
	if err != nil {
		runtime.HTTPError(ctx, h.mux, h.marshaler, w, r, err)
		return
	}
	runtime.ForwardResponseMessage(ctx, h.mux, h.marshaler, w, r, resp.GetToken(), h.mux.GetForwardResponseOptions()...)
}
