package oauth

import (
	"context"
	"errors"
	"net/url"
	"testing"
)

// TestNoTracerCostsNoAllocation: without a Tracer, the span bookkeeping of
// a call allocates nothing.
func TestNoTracerCostsNoAllocation(t *testing.T) {
	c := &Client{}
	r := Request{TokenURL: "https://example.com/token", Params: url.Values{"grant_type": {"client_credentials"}}}
	ctx := context.Background()
	err := errors.New("x")
	allocs := testing.AllocsPerRun(100, func() {
		_, span := c.startSpan(ctx, SpanToken, r)
		span.end(401, err)
	})
	if allocs != 0 {
		t.Errorf("allocations per call without a tracer = %v, want 0", allocs)
	}
}
