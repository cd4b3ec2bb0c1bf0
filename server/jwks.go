package server

import (
	"encoding/json"
	"errors"
	"net/http"

	"go.uber.org/zap"

	"github.com/tokenbroker/tokenbroker/broker"
)

// Paths of the broker's public keys (private_key_jwt): every provider's,
// and one provider's, to register with a provider as the client's
// jwks_uri. They serve public keys only and need no credentials.
const (
	JWKSPath         = "/.well-known/jwks.json"
	ProviderJWKSPath = "/v1/providers/{provider}/jwks.json"
)

// jwksMaxAge lets a provider cache the keys briefly; a rotation keeps the
// replaced key served for far longer than this.
const jwksMaxAge = "public, max-age=300"

// JWKSHandler serves the broker's public keys at JWKSPath and
// ProviderJWKSPath, as the REST listener does, for a process that serves
// them from a listener of its own.
func JWKSHandler(b *broker.Broker, log *zap.Logger) http.Handler {
	mux := newRouteMux()
	mountJWKS(mux, b, log)
	return mux
}

func mountJWKS(mux *routeMux, b *broker.Broker, log *zap.Logger) {
	mux.HandleFunc("GET "+JWKSPath, func(w http.ResponseWriter, _ *http.Request) {
		writeJWKS(w, b.AllJWKS())
	})
	mux.HandleFunc("GET "+ProviderJWKSPath, func(w http.ResponseWriter, r *http.Request) {
		set, err := b.JWKS(r.Context(), r.PathValue("provider"))
		switch {
		case errors.Is(err, broker.ErrNotFound), errors.Is(err, broker.ErrInvalidArgument):
			http.Error(w, "no such provider", http.StatusNotFound)
		case err != nil:
			log.Warn("serve jwks", zap.Error(err))
			http.Error(w, "keys unavailable", http.StatusServiceUnavailable)
		default:
			writeJWKS(w, set)
		}
	})
}

func writeJWKS(w http.ResponseWriter, set any) {
	w.Header().Set("Content-Type", "application/jwk-set+json")
	w.Header().Set("Cache-Control", jwksMaxAge)
	_ = json.NewEncoder(w).Encode(set)
}
