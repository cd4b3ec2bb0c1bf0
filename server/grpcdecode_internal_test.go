package server

import (
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// The codec sets aside requests of unary methods only: a streaming
// method's request would never be taken back by the unary chain.
func TestUnaryRequestsExcludeStreams(t *testing.T) {
	tests := []struct {
		give string
		want bool
	}{
		{"tokenbroker.v1.GetTokenRequest", true},
		{"tokenbroker.v1.PutProviderRequest", true},
		{"tokenbroker.v1.WatchEventsRequest", false},
		{"grpc.health.v1.HealthCheckRequest", false},
	}
	for _, tt := range tests {
		if got := unaryRequests[protoreflect.FullName(tt.give)]; got != tt.want {
			t.Errorf("unaryRequests[%s] = %v, want %v", tt.give, got, tt.want)
		}
	}
}
