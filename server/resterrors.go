package server

import (
	"context"
	"math"
	"net/http"
	"strconv"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// restError is the gateway's error handler: the default rendering, with a
// Retry-After header (whole seconds, rounded up) on every answer whose
// status carries a RetryInfo, and on every 429.
func restError(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
	setRetryAfter(w.Header(), err)
	runtime.DefaultHTTPErrorHandler(ctx, mux, m, w, r, err)
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
