package main

import (
	"io"
	"net/http"
	"regexp"
	"runtime"
	"strconv"
	"testing"
)

// TestMetricsAfterScriptedCalls: after one cold GetToken and four hits,
// /metrics, on metrics_addr and not on the API port, counts one miss, four hits, one provider call and five handled
// GetToken RPCs, and shows the provider's grant as healthy.
func TestMetricsAfterScriptedCalls(t *testing.T) {
	fake := startFake(t)
	inst, _ := startApp(t, appConfig(fake.url, t.TempDir()))
	for range 5 {
		grpcGetToken(t, inst.GRPCAddr(), providerName)
	}
	if resp, err := http.Get("http://" + inst.HTTPAddr() + "/metrics"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /metrics on the API port = %v, %v; want 404 (it is on metrics_addr)", resp, err)
	} else {
		resp.Body.Close()
	}
	resp, err := http.Get("http://" + inst.MetricsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		give string // a metric line, as a regular expression without the value
		want float64
	}{
		{`tokenbroker_get_token_total\{outcome="miss"\}`, 1},
		{`tokenbroker_get_token_total\{outcome="hit"\}`, 4},
		{`tokenbroker_get_token_total\{outcome="error"\}`, 0},
		{`tokenbroker_provider_calls_total\{grant="client_credentials",outcome="ok",provider="mediahound"\}`, 1},
		{`grpc_server_handled_total\{grpc_code="OK",grpc_method="GetToken",grpc_service="tokenbroker.v1.TokenBrokerService",grpc_type="unary"\}`, 5},
		{`tokenbroker_grants\{health="ok",provider="mediahound"\}`, 1},
		{`tokenbroker_build_info\{goversion="` + regexp.QuoteMeta(runtime.Version()) + `",revision="[^"]*",version="[^"]+"\}`, 1},
	}
	for _, tt := range tests {
		m := regexp.MustCompile(`(?m)^` + tt.give + ` (\S+)$`).FindSubmatch(body)
		if m == nil {
			t.Errorf("/metrics has no line %s", tt.give)
			continue
		}
		if got, _ := strconv.ParseFloat(string(m[1]), 64); got != tt.want {
			t.Errorf("%s = %v, want %v", tt.give, got, tt.want)
		}
	}
	if resp, err := http.Get("http://" + inst.HTTPAddr() + "/readyz"); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("/readyz = %v, %v; want 200", resp, err)
	} else {
		resp.Body.Close()
	}
}
