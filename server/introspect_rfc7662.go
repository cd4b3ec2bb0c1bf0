package server

import (
	"encoding/json"
	"errors"
	"net/http"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// IntrospectPath serves RFC 7662 token introspection, so that existing
// resource servers can use the broker as their introspection endpoint.
const IntrospectPath = "/oauth2/introspect"

// introspectionHandler answers RFC 7662 requests (form-encoded `token`,
// caller credentials as for every other call) by running Introspect through
// the same interceptor chain as gRPC and REST calls.
func introspectionHandler(tb tokenbrokerv1.TokenBrokerServiceServer, intercept grpc.UnaryServerInterceptor, log *zap.Logger) http.Handler {
	gw := &gatewayTokenBroker{next: tb, intercept: intercept}
	return withRESTCredentials(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, MaxRequestBytes)
		if err := r.ParseForm(); err != nil {
			if mbe := (*http.MaxBytesError)(nil); errors.As(err, &mbe) {
				writeOAuthError(w, http.StatusRequestEntityTooLarge, "invalid_request", "the body is too large")
				return
			}
			writeOAuthError(w, http.StatusBadRequest, "invalid_request", "the body is not form-encoded")
			return
		}
		resp, err := gw.Introspect(r.Context(), &tokenbrokerv1.IntrospectRequest{Token: r.PostForm.Get("token")})
		if err != nil {
			switch status.Code(err) {
			case codes.Unauthenticated:
				w.Header().Set("WWW-Authenticate", `Bearer realm="tokenbroker"`)
				writeOAuthError(w, http.StatusUnauthorized, "invalid_client", "caller authentication failed")
			case codes.PermissionDenied:
				writeOAuthError(w, http.StatusForbidden, "access_denied", "the caller may not introspect tokens")
			case codes.InvalidArgument:
				writeOAuthError(w, http.StatusBadRequest, "invalid_request", "the token parameter is missing")
			case codes.ResourceExhausted:
				setRetryAfter(w.Header(), err)
				writeOAuthError(w, http.StatusTooManyRequests, "temporarily_unavailable", "rate limited")
			default:
				writeOAuthError(w, http.StatusServiceUnavailable, "temporarily_unavailable", "introspection is unavailable")
			}
			return
		}
		out := map[string]any{"active": resp.GetActive()}
		if resp.GetActive() {
			for k, v := range map[string]string{
				"scope": resp.GetScope(), "client_id": resp.GetClientId(), "username": resp.GetUsername(),
				"token_type": resp.GetTokenType(), "sub": resp.GetSub(),
				"provider": resp.GetProvider(), "account": resp.GetAccount(),
			} {
				if v != "" {
					out[k] = v
				}
			}
			if resp.GetExp() != 0 {
				out["exp"] = resp.GetExp()
			}
			if resp.GetIat() != 0 {
				out["iat"] = resp.GetIat()
			}
		}
		w.Header().Set("Cache-Control", "no-store")
		writeJSON(w, http.StatusOK, out, log)
	}))
}

func writeOAuthError(w http.ResponseWriter, code int, oauthCode, desc string) {
	writeJSON(w, code, map[string]string{"error": oauthCode, "error_description": desc}, zap.NewNop())
}

func writeJSON(w http.ResponseWriter, code int, v any, log *zap.Logger) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	if err := json.NewEncoder(w).Encode(v); err != nil {
		log.Debug("write response", zap.Error(err))
	}
}
