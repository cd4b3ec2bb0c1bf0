package server

import (
	"bytes"
	"errors"
	"hash/maphash"
	"io"
	"net/http"
	"sync"
	"sync/atomic"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

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
//
// Two things make it cheaper than the gateway without changing a byte: a
// body of known length is unmarshalled in one pass (decode), and the JSON
// of a token is rendered once while its answer stays the same, that is
// once per token and second (renders).
type restGetToken struct {
	mux       *runtime.ServeMux
	marshaler restMarshaler
	tb        *gatewayTokenBroker
	gateway   http.Handler
	renders   renderCache
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
	if err := h.decode(r, &req); err != nil && !errors.Is(err, io.EOF) {
		runtime.HTTPError(ctx, h.mux, h.marshaler, w, r, status.Errorf(codes.InvalidArgument, "%v", err))
		return
	}
	req.Provider = r.PathValue("provider")
	resp, err := h.tb.GetToken(ctx, &req)
	if err != nil {
		runtime.HTTPError(ctx, h.mux, h.marshaler, w, r, err)
		return
	}
	tok := resp.GetToken()
	runtime.ForwardResponseMessage(ctx, h.mux, h.renders.marshaler(h.marshaler, tok), w, r, tok, h.mux.GetForwardResponseOptions()...)
}

// bodyBuffers hold request bodies while they are unmarshalled.
var bodyBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// decode reads the request into req as the gateway's decoder does. The
// gateway's decoder scans the body's first JSON value with encoding/json and
// then unmarshals it with protojson: two passes. A body whose length is
// known and within the limit is read whole and unmarshalled with protojson
// alone; when that fails, the gateway's decoder runs on the same bytes, so
// that the error (or the lenience of reading the first value only) is its
// own. When protojson accepts a body, the body is one JSON value, which the
// gateway's decoder would have handed to protojson whole.
func (h *restGetToken) decode(r *http.Request, req *tokenbrokerv1.GetTokenRequest) error {
	n := r.ContentLength
	if n <= 0 || n > MaxRequestBytes {
		return h.marshaler.NewDecoder(r.Body).Decode(req)
	}
	buf := bodyBuffers.Get().(*bytes.Buffer)
	defer func() {
		if buf.Cap() <= 64<<10 { // a rare large body is not kept
			bodyBuffers.Put(buf)
		}
	}()
	buf.Reset()
	if _, err := io.CopyN(buf, r.Body, n); err != nil {
		return h.marshaler.NewDecoder(io.MultiReader(bytes.NewReader(buf.Bytes()), r.Body)).Decode(req)
	}
	if h.marshaler.UnmarshalOptions.Unmarshal(buf.Bytes(), req) == nil {
		return nil
	}
	req.Reset()
	return h.marshaler.NewDecoder(bytes.NewReader(buf.Bytes())).Decode(req)
}

// renderCache keeps the JSON of the tokens answered lately, one per slot,
// the slot chosen by the access token. A token's answer changes once a
// second (expires_in), so a token served many times a second is rendered
// once per second; tokens that share a slot render in turn.
type renderCache struct {
	seed  maphash.Seed
	once  sync.Once
	slots [256]atomic.Pointer[rendering]
}

// rendering is a token and its JSON as the gateway's marshaler writes it.
type rendering struct {
	tok  *tokenbrokerv1.Token
	json []byte
}

// marshaler returns m, except that tok's JSON comes from the cache:
// rendered by m once and kept while the answer stays the same.
func (c *renderCache) marshaler(m restMarshaler, tok *tokenbrokerv1.Token) runtime.Marshaler {
	c.once.Do(func() { c.seed = maphash.MakeSeed() })
	slot := &c.slots[maphash.String(c.seed, tok.GetAccessToken())%uint64(len(c.slots))]
	if r := slot.Load(); r != nil && sameToken(r.tok, tok) {
		return &renderedMarshaler{restMarshaler: m, msg: tok, json: r.json}
	}
	b, err := m.Marshal(tok)
	if err != nil {
		return m // ForwardResponseMessage marshals again and reports it
	}
	slot.Store(&rendering{tok: tok, json: b})
	return &renderedMarshaler{restMarshaler: m, msg: tok, json: b}
}

// renderedMarshaler is the gateway's marshaler with the JSON of one message
// known in advance.
type renderedMarshaler struct {
	restMarshaler
	msg  *tokenbrokerv1.Token
	json []byte
}

func (m *renderedMarshaler) Marshal(v any) ([]byte, error) {
	if t, ok := v.(*tokenbrokerv1.Token); ok && t == m.msg {
		return m.json, nil
	}
	return m.restMarshaler.Marshal(v)
}

// sameToken reports whether a and b render the same: every field of
// Token (TestSameTokenComparesEveryField holds the list to the message).
func sameToken(a, b *tokenbrokerv1.Token) bool {
	return a.GetAccessToken() == b.GetAccessToken() &&
		a.GetTokenType() == b.GetTokenType() &&
		a.GetExpiresIn() == b.GetExpiresIn() &&
		a.GetScope() == b.GetScope() &&
		sameTime(a.GetExpiresAt(), b.GetExpiresAt()) &&
		sameTime(a.GetIssuedAt(), b.GetIssuedAt()) &&
		a.GetIdToken() == b.GetIdToken() &&
		a.GetProvider() == b.GetProvider() &&
		a.GetAccount() == b.GetAccount()
}

// sameTime compares timestamps, a missing one differing from any other.
func sameTime(a, b *timestamppb.Timestamp) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.GetSeconds() == b.GetSeconds() && a.GetNanos() == b.GetNanos()
}

// sameTokenFields are the fields of Token that sameToken compares.
var sameTokenFields = []string{"access_token", "token_type", "expires_in", "scope", "expires_at", "issued_at", "id_token", "provider", "account"}
