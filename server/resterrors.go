package server

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// restError is the gateway's error handler: the default rendering, with a
// Retry-After header (whole seconds, rounded up) on every answer whose
// status carries a RetryInfo, and on every 429; a request whose body went
// over MaxRequestBytes is answered 413, and a provider's refusal of the
// broker's own credentials (ErrorInfo fault=broker) 502 with its status
// unchanged in the body.
func restError(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
	if b, ok := r.Body.(*limitedBody); ok && b.over {
		runtime.DefaultHTTPErrorHandler(ctx, mux, m, w, r, errBodyTooLarge)
		return
	}
	err = boundMessage(err) // the gateway's decoding errors quote the body
	setRetryAfter(w.Header(), err)
	if isBrokerFault(err) {
		err = &runtime.HTTPStatusError{HTTPStatus: http.StatusBadGateway, Err: err}
	}
	runtime.DefaultHTTPErrorHandler(ctx, mux, m, w, r, err)
}

// isBrokerFault reports whether err's status carries the broker's
// ErrorInfo with fault=broker.
func isBrokerFault(err error) bool {
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == ErrorDomain && info.GetMetadata()[faultKey] == faultBroker {
			return true
		}
	}
	return false
}

// setRetryAfter sets Retry-After from err's RetryInfo; a ResourceExhausted
// without one gets 1 second.
func setRetryAfter(h http.Header, err error) {
	st := status.Convert(err)
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			secs := max(1, int(math.Ceil(ri.GetRetryDelay().AsDuration().Seconds())))
			h.Set("Retry-After", strconv.Itoa(secs))
			return
		}
	}
	if st.Code() == codes.ResourceExhausted {
		h.Set("Retry-After", "1")
	}
}

// limitedBody is a request body limited to MaxRequestBytes that remembers
// whether a read went over, so that the error the gateway makes of it (an
// InvalidArgument that no longer says why) is answered 413.
type limitedBody struct {
	io.ReadCloser
	over bool
}

func (b *limitedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		b.over = true
	}
	return n, err
}

// limitBody replaces r's body with a limitedBody.
func limitBody(w http.ResponseWriter, r *http.Request) {
	r.Body = &limitedBody{ReadCloser: http.MaxBytesReader(w, r.Body, MaxRequestBytes)}
}

// errBodyTooLarge is the answer to a body over MaxRequestBytes: the status
// gRPC gives an oversized message, as HTTP 413.
var errBodyTooLarge = &runtime.HTTPStatusError{
	HTTPStatus: http.StatusRequestEntityTooLarge,
	Err:        status.Errorf(codes.ResourceExhausted, "request body is larger than %d bytes", MaxRequestBytes),
}

// withBodyLimit limits the body of every request next serves.
func withBodyLimit(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		limitBody(w, r)
		next.ServeHTTP(w, r)
	})
}

// restRoutingError answers a request the gateway has no route for: 405
// with an Allow header when the path exists for other methods, the
// default otherwise.
func restRoutingError(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, code int) {
	if code != http.StatusMethodNotAllowed {
		runtime.DefaultRoutingErrorHandler(ctx, mux, m, w, r, code)
		return
	}
	if allow := allowedMethods(r.URL.Path); allow != "" {
		w.Header().Set("Allow", allow)
	}
	runtime.DefaultHTTPErrorHandler(ctx, mux, m, w, r, &runtime.HTTPStatusError{
		HTTPStatus: http.StatusMethodNotAllowed,
		Err:        status.Errorf(codes.Unimplemented, "method %s is not allowed here", r.Method),
	})
}

// apiRoute is a path template of the OpenAPI document, split at '/', and
// the methods it serves.
type apiRoute struct {
	segs    []string
	methods []string
}

// restRoutes are the API's routes, read from the OpenAPI document.
var restRoutes = sync.OnceValue(func() []apiRoute {
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	raw, err := openAPIDoc()
	if err != nil {
		return nil
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil
	}
	routes := make([]apiRoute, 0, len(doc.Paths))
	for path, ops := range doc.Paths {
		rt := apiRoute{segs: strings.Split(path, "/")}
		for m := range ops {
			rt.methods = append(rt.methods, strings.ToUpper(m))
		}
		routes = append(routes, rt)
	}
	return routes
})

// allowedMethods lists, sorted and comma-separated, the methods of the
// routes path matches.
func allowedMethods(path string) string {
	segs := strings.Split(path, "/")
	var allow []string
	for _, rt := range restRoutes() {
		if matchRoute(rt.segs, segs) {
			allow = append(allow, rt.methods...)
		}
	}
	slices.Sort(allow)
	return strings.Join(slices.Compact(allow), ", ")
}

// matchRoute matches path segments against a template's: "{x}" matches
// one non-empty segment, "{x}:verb" one that ends in ":verb", anything
// else itself.
func matchRoute(tmpl, segs []string) bool {
	if len(tmpl) != len(segs) {
		return false
	}
	for i, t := range tmpl {
		s := segs[i]
		if !strings.HasPrefix(t, "{") {
			if t != s {
				return false
			}
			continue
		}
		if _, verb, ok := strings.Cut(t, "}:"); ok {
			var has bool
			if s, has = strings.CutSuffix(s, ":"+verb); !has {
				return false
			}
		}
		if s == "" {
			return false
		}
	}
	return true
}
