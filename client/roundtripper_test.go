package client_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"golang.org/x/oauth2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/client"
	"github.com/tokenbroker/tokenbroker/sandbox"
)

// do sends req with c and returns the status and body of the answer.
func do(t *testing.T, c *http.Client, req *http.Request) (int, string) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

func newRequest(t *testing.T, method, url string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// Acceptance: the TokenSource used as oauth2.NewClient's is, through
// client.NewClient, against an API that answers 401 once for a revoked
// token: exactly one Refresh with that stale token, and the request
// succeeds on the retry.
func TestClientRefreshesOnceAfter401AndRetries(t *testing.T) {
	e := newEnv(t)
	ts := client.NewTokenSource(e.conn, "sandbox")
	c := client.NewClient(context.Background(), ts)

	if code, _ := do(t, c, newRequest(t, http.MethodGet, e.api.url+"/assets", nil)); code != http.StatusOK {
		t.Fatalf("first GET = %d, want 200", code)
	}
	first := e.api.requests()
	stale := first[0].token
	e.provider.Revoke(stale)

	req := newRequest(t, http.MethodGet, e.api.url+"/assets", nil)
	if code, _ := do(t, c, req); code != http.StatusOK {
		t.Fatalf("GET after revocation = %d, want 200 after the retry", code)
	}
	if got, want := e.calls.refreshes(), []string{stale}; !slices.Equal(got, want) {
		t.Errorf("Refresh calls with stale tokens %q, want exactly %q", got, want)
	}
	seen := e.api.requests()
	if len(seen) != 2 || seen[0].token != stale || seen[0].status != http.StatusUnauthorized ||
		seen[1].token == stale || seen[1].status != http.StatusOK {
		t.Errorf("API saw %+v, want the stale token refused, then a new one accepted", seen)
	}
	if got := e.provider.TokenCalls(); got != 2 {
		t.Errorf("provider token calls = %d, want 2 (first fetch, one refresh)", got)
	}
	if got := req.Header.Get("Authorization"); got != "" {
		t.Errorf("caller's request got Authorization %q, want it untouched", got)
	}
	// The new token is cached: no further broker call.
	if code, _ := do(t, c, newRequest(t, http.MethodGet, e.api.url+"/assets", nil)); code != http.StatusOK {
		t.Fatalf("third GET = %d, want 200", code)
	}
	if gets, refreshes := e.calls.count("GetToken"), e.calls.count("Refresh"); gets != 1 || refreshes != 1 {
		t.Errorf("broker calls: %d GetToken, %d Refresh; want 1 and 1", gets, refreshes)
	}
}

func TestConcurrent401sMakeOneRefresh(t *testing.T) {
	e := newEnv(t)
	ts := client.NewTokenSource(e.conn, "sandbox")
	c := client.NewClient(context.Background(), ts)
	stale, err := ts.Token()
	if err != nil {
		t.Fatal(err)
	}
	e.provider.Revoke(stale.AccessToken)
	callsBefore := e.provider.TokenCalls()

	// All 20 see the 401 before any of them can refresh.
	const callers = 20
	e.api.holdRejections(callers)
	codes := make([]int, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() {
			resp, err := c.Get(e.api.url + "/assets")
			if err != nil {
				t.Errorf("caller %d: %v", i, err)
				return
			}
			resp.Body.Close()
			codes[i] = resp.StatusCode
		})
	}
	wg.Wait()

	for i, code := range codes {
		if code != http.StatusOK {
			t.Errorf("caller %d got %d, want 200 after the retry", i, code)
		}
	}
	var refused int
	for _, s := range e.api.requests() {
		if s.token == stale.AccessToken && s.status == http.StatusUnauthorized {
			refused++
		}
	}
	if refused != callers {
		t.Errorf("API refused the stale token %d times, want %d (every caller at once)", refused, callers)
	}
	if got, want := e.calls.refreshes(), []string{stale.AccessToken}; !slices.Equal(got, want) {
		t.Errorf("Refresh calls with stale tokens %q, want exactly %q", got, want)
	}
	if got := e.provider.TokenCalls() - callsBefore; got != 1 {
		t.Errorf("provider token calls for %d callers' 401s = %d, want 1", callers, got)
	}
}

func TestTransportRetriesOnlyWhatItCan(t *testing.T) {
	e := newEnv(t)
	const payload = `{"name":"asset"}`
	tests := []struct {
		name          string
		method        string
		body          func() io.Reader // nil: no body
		revoke        bool             // revoke the token before the request
		rejectAll     bool             // the API refuses every token
		wantStatus    int
		wantRefreshes int
		wantSeen      []int // statuses the API answered
		wantBodies    []string
	}{
		{name: "valid token", method: http.MethodGet, wantStatus: 200, wantRefreshes: 0, wantSeen: []int{200}, wantBodies: []string{""}},
		{name: "GET without body", method: http.MethodGet, revoke: true, wantStatus: 200, wantRefreshes: 1, wantSeen: []int{401, 200}, wantBodies: []string{"", ""}},
		{name: "POST with a replayable body", method: http.MethodPost, body: func() io.Reader { return bytes.NewReader([]byte(payload)) }, revoke: true,
			wantStatus: 200, wantRefreshes: 1, wantSeen: []int{401, 200}, wantBodies: []string{payload, payload}},
		{name: "POST with a body that cannot be replayed", method: http.MethodPost, body: func() io.Reader { return io.MultiReader(strings.NewReader(payload)) }, revoke: true,
			wantStatus: 401, wantRefreshes: 0, wantSeen: []int{401}, wantBodies: []string{payload}},
		{name: "new token refused too", method: http.MethodGet, rejectAll: true, wantStatus: 401, wantRefreshes: 1, wantSeen: []int{401, 401}, wantBodies: []string{"", ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := client.NewTokenSource(e.conn, "sandbox")
			tok, err := ts.Token()
			if err != nil {
				t.Fatal(err)
			}
			if tt.revoke {
				e.provider.Revoke(tok.AccessToken)
			}
			e.api.setRejectAll(tt.rejectAll)
			defer e.api.setRejectAll(false)
			before := len(e.calls.refreshes())
			var body io.Reader
			if tt.body != nil {
				body = tt.body()
			}
			c := &http.Client{Transport: client.NewTransport(ts, nil)}

			code, _ := do(t, c, newRequest(t, tt.method, e.api.url+"/assets", body))

			if code != tt.wantStatus {
				t.Errorf("status = %d, want %d", code, tt.wantStatus)
			}
			if got := len(e.calls.refreshes()) - before; got != tt.wantRefreshes {
				t.Errorf("Refresh calls = %d, want %d", got, tt.wantRefreshes)
			}
			var statuses []int
			var bodies []string
			for _, s := range e.api.requests() {
				statuses = append(statuses, s.status)
				bodies = append(bodies, s.body)
			}
			if !slices.Equal(statuses, tt.wantSeen) || !slices.Equal(bodies, tt.wantBodies) {
				t.Errorf("API answered %v to bodies %q, want %v to %q", statuses, bodies, tt.wantSeen, tt.wantBodies)
			}
		})
	}
}

func TestTransportReturnsTheBrokersErrors(t *testing.T) {
	fb, addr, stop := startFakeBroker()
	defer stop()
	conn := dial(t, addr, fakeAPIKey)
	api := providerAPI("token-1")
	defer api.Close()
	reauth := status.Error(codes.FailedPrecondition, "reauthorization required")
	tests := []struct {
		name       string
		provider   string
		refreshErr error
		wantCode   codes.Code
		wantSent   int // requests sent to the API
	}{
		{name: "no token at all", provider: "nope", wantCode: codes.NotFound, wantSent: 0},
		{name: "refresh after the 401 fails", provider: "sandbox", refreshErr: reauth, wantCode: codes.FailedPrecondition, wantSent: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fb.failRefresh(tt.refreshErr)
			defer fb.failRefresh(nil)
			base := &countingTransport{}
			c := &http.Client{Transport: client.NewTransport(client.NewTokenSource(conn, tt.provider), base)}

			resp, err := c.Get(api.URL)
			if err == nil {
				resp.Body.Close()
			}

			if got := status.Code(err); got != tt.wantCode {
				t.Errorf("GET error = %v (code %v), want code %v", err, got, tt.wantCode)
			}
			if base.n != tt.wantSent {
				t.Errorf("requests sent = %d, want %d", base.n, tt.wantSent)
			}
		})
	}
}

// countingTransport counts the requests it passes on.
type countingTransport struct {
	mu sync.Mutex
	n  int
}

func (c *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	c.mu.Lock()
	c.n++
	c.mu.Unlock()
	return http.DefaultTransport.RoundTrip(req)
}

func TestNewClientBuildsOnTheContextsClient(t *testing.T) {
	_, addr, stop := startFakeBroker()
	defer stop()
	api := providerAPI()
	defer api.Close()
	ts := client.NewTokenSource(dial(t, addr, fakeAPIKey), "sandbox")
	base := &countingTransport{}
	ctx := context.WithValue(context.Background(), oauth2.HTTPClient, &http.Client{Transport: base})

	code, body := do(t, client.NewClient(ctx, ts), newRequest(t, http.MethodGet, api.URL, nil))

	if code != http.StatusOK || body != "hello, token-1" {
		t.Errorf("GET = %d %q, want 200 %q", code, body, "hello, token-1")
	}
	if base.n != 1 {
		t.Errorf("requests through the context's transport = %d, want 1", base.n)
	}
}

// TestTransportProviderDownAfter401: the API refused the token and the
// provider cannot issue a new one. The broker does not hand back the
// refused token; the request fails with the broker's Unavailable.
func TestTransportProviderDownAfter401(t *testing.T) {
	e := newEnv(t)
	ts := client.NewTokenSource(e.conn, "sandbox")
	tok, err := ts.Token()
	if err != nil {
		t.Fatal(err)
	}
	e.provider.Revoke(tok.AccessToken)
	e.provider.SetFailure(&sandbox.Failure{Status: http.StatusServiceUnavailable, Body: `{"error":"temporarily_unavailable"}`})
	defer e.provider.SetFailure(nil)
	before := len(e.calls.refreshes())
	c := &http.Client{Transport: client.NewTransport(ts, nil)}
	resp, err := c.Do(newRequest(t, http.MethodGet, e.api.url+"/assets", nil))
	if err == nil {
		resp.Body.Close()
		t.Fatalf("request answered %d, want the broker's error", resp.StatusCode)
	}
	if got := status.Code(err); got != codes.Unavailable {
		t.Errorf("error = %v (code %v), want Unavailable", err, got)
	}
	if got := len(e.calls.refreshes()) - before; got != 1 {
		t.Errorf("Refresh calls = %d, want 1", got)
	}
}
