package server_test

import (
	"context"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/server"
)

// TestWrongKeysAreRateLimitedPerAddress sends 3,000 calls with a key that
// was never issued from one address, over gRPC and REST: the first Burst
// are Unauthenticated, the rest ResourceExhausted with a RetryInfo (REST:
// 429 with Retry-After), and the log holds a bounded number of lines. A
// valid key from the same address still works, and another address has a
// bucket of its own.
func TestWrongKeysAreRateLimitedPerAddress(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	e := newEnv(t)
	// Bursts of 10 that refill once per 100s.
	in := e.startWith(options{log: zap.New(core), rules: matrixRules, unauthLimit: server.RateLimit{RPS: 0.01, Burst: 10}})
	e.register(in, "sandbox")
	_, allowedKey := createKey(t, in, svcAllowed)
	start := time.Now()
	logged := logs.Len()

	const grpcCalls, restCalls = 2000, 1000
	bad, _, _ := in.clientAs(t, nil, badKey)
	ctx := context.Background()
	codesSeen := map[codes.Code]int{}
	var lastErr error
	for range grpcCalls {
		_, err := bad.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: "sandbox"})
		codesSeen[status.Code(err)]++
		lastErr = err
	}
	statuses := map[int]int{}
	var retryAfter string
	for range restCalls {
		code, ra := postToken(t, in.baseURL, "sandbox", badKey)
		statuses[code]++
		if code == http.StatusTooManyRequests {
			retryAfter = ra
		}
	}
	elapsed := time.Since(start)
	t.Logf("%d wrong-key gRPC calls: %v; %d REST calls: %v; in %s", grpcCalls, codesSeen, restCalls, statuses, elapsed.Round(time.Millisecond))

	if n := codesSeen[codes.Unauthenticated] + statuses[http.StatusUnauthorized]; n < 10 || n > 12 {
		t.Errorf("%d of %d wrong-key calls were answered Unauthenticated, want the burst of 10", n, grpcCalls+restCalls)
	}
	if n := codesSeen[codes.ResourceExhausted] + statuses[http.StatusTooManyRequests]; n < grpcCalls+restCalls-12 {
		t.Errorf("%d wrong-key calls were answered ResourceExhausted/429, want all but the burst", n)
	}
	var retry *errdetails.RetryInfo
	for _, d := range status.Convert(lastErr).Details() {
		if r, ok := d.(*errdetails.RetryInfo); ok {
			retry = r
		}
	}
	if retry == nil || retry.GetRetryDelay().AsDuration() <= 0 {
		t.Errorf("last limited gRPC call = %v, want a RetryInfo with a delay", lastErr)
	}
	if secs, err := strconv.Atoi(retryAfter); err != nil || secs < 1 {
		t.Errorf("REST 429 Retry-After = %q, want whole seconds", retryAfter)
	}
	if got := in.server.AuthStats(); got.Unauthenticated+got.UnauthenticatedRateLimited != grpcCalls+restCalls {
		t.Errorf("AuthStats = %+v, want %d failed authentications counted", got, grpcCalls+restCalls)
	}

	// The log, every line of it: at most the log limiter's burst of 50
	// and 10 a second, the dropped lines counted in the ones written.
	lines := logs.Len() - logged
	if limit := 50 + int(elapsed.Seconds()*10) + 1; lines > limit {
		t.Errorf("%d failed-authentication log lines for %d calls in %s, want at most %d", lines, grpcCalls+restCalls, elapsed, limit)
	}
	suppressed := 0
	for _, l := range logs.All() {
		if v, ok := l.ContextMap()["suppressed"].(uint64); ok {
			suppressed += int(v)
		}
	}
	t.Logf("%d log lines, %d suppressed lines counted", lines, suppressed)
	assertNoSecretsLogged(t, logs, badKey, allowedKey, testAdminKey)

	// A valid key from the same address is still let in.
	good, _, _ := in.clientAs(t, nil, allowedKey)
	if _, err := good.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: "sandbox"}); err != nil {
		t.Errorf("GetToken with a valid key from the limited address = %v, want OK", err)
	}
	if code, raw := restDo(t, http.DefaultClient, http.MethodPost, in.baseURL+"/v1/providers/sandbox/token", http.Header{"Authorization": {"Bearer " + allowedKey}}, []byte(`{}`)); code != http.StatusOK {
		t.Errorf("REST GetToken with a valid key from the limited address = %d %s, want 200", code, raw)
	}

	// Another address (127.0.0.2, loopback too) has its own bucket.
	dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	conn, err := grpc.NewClient(in.grpcAddr, append(in.dialOptions(nil, badKey), grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
		return dialer.DialContext(ctx, "tcp", addr)
	}))...)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = tokenbrokerv1.NewTokenBrokerServiceClient(conn).GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: "sandbox"})
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("wrong key from another address = %v, want Unauthenticated", err)
	}

	// A new limit applies at once, with full buckets.
	in.server.SetUnauthenticatedRateLimit(server.RateLimit{RPS: 0.01, Burst: 1})
	if _, err := bad.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: "sandbox"}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("wrong key after SetUnauthenticatedRateLimit = %v, want Unauthenticated", err)
	}
}
