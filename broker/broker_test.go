package broker

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/tokenbroker/tokenbroker/broker/oauth"
	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
	"github.com/tokenbroker/tokenbroker/sandbox"
)

func TestGetTokenMediaHound(t *testing.T) {
	e := etcdtest.Start(t)
	clock := newClock()
	mh := newMediaHound(t, 0)
	b := newTestBroker(t, e, withClock(clock))
	putProvider(t, b, mediaHoundProvider(mh), mediaHoundClientSecret)

	rec := getToken(t, b, "mediahound")

	req := mh.requests()
	if len(req) != 1 {
		t.Fatalf("MediaHound got %d requests, want 1", len(req))
	}
	got := req[0]
	// The seed document's own example of the header for MyClientId:MyClientSecret.
	const wantAuth = "Basic TXlDbGllbnRJZDpNeUNsaWVudFNlY3JldA=="
	if wantAuth != "Basic "+base64.StdEncoding.EncodeToString([]byte(mediaHoundClientID+":"+mediaHoundClientSecret)) {
		t.Fatal("the seed's Authorization example does not match its credentials")
	}
	for _, h := range []struct{ name, want string }{
		{"Authorization", wantAuth},
		{"Accept", "application/json"},
		{"Content-Type", "application/x-www-form-urlencoded"},
	} {
		if v := got.Header.Get(h.name); v != h.want {
			t.Errorf("MediaHound got header %s = %q, want %q", h.name, v, h.want)
		}
	}
	if got.Method != http.MethodPost || got.Path != mediaHoundTokenPath {
		t.Errorf("MediaHound got %s %s, want POST %s", got.Method, got.Path, mediaHoundTokenPath)
	}
	wantForm := map[string]string{
		"grant_type":    "client_credentials",
		"client_id":     mediaHoundClientID,
		"client_secret": mediaHoundClientSecret,
		"scope":         "public search", // the provider's default scopes
	}
	for k, want := range wantForm {
		if v := got.Form[k]; len(v) != 1 || v[0] != want {
			t.Errorf("MediaHound got form %s = %q, want [%q]", k, v, want)
		}
	}
	if len(got.Form) != len(wantForm) {
		t.Errorf("MediaHound got form fields %v, want exactly %d", got.Form, len(wantForm))
	}

	if rec.AccessToken != "mh-token-1" {
		t.Errorf("AccessToken = %q, want mh-token-1", rec.AccessToken)
	}
	if rec.GrantedScope() != "public" {
		t.Errorf("GrantedScope() = %q, want %q", rec.GrantedScope(), "public")
	}
	if rec.Type() != "Bearer" {
		t.Errorf("Type() = %q (TokenType %q), want Bearer", rec.Type(), rec.TokenType())
	}
	if !rec.IssuedAt.Equal(t0) {
		t.Errorf("IssuedAt = %v, want %v", rec.IssuedAt, t0)
	}
	if want := t0.Add(86400 * time.Second); !rec.ExpiresAt.Equal(want) {
		t.Errorf("ExpiresAt = %v, want %v (issue time + expires_in 86400)", rec.ExpiresAt, want)
	}
	if rec.Generation != 1 {
		t.Errorf("Generation = %d, want 1", rec.Generation)
	}

	// What etcd holds is what was returned.
	stored, err := b.readToken(context.Background(), rec.Key.id())
	if err != nil || stored == nil {
		t.Fatalf("readToken = %v, %v; want the stored record", stored, err)
	}
	if stored.AccessToken != rec.AccessToken || !stored.ExpiresAt.Equal(rec.ExpiresAt) || stored.Scope() != "public" || stored.Revision != rec.Revision {
		t.Errorf("etcd holds %+v, want %+v", stored, rec)
	}
}

func TestGetTokenLifetime(t *testing.T) {
	e := etcdtest.Start(t)
	clock := newClock()
	b := newTestBroker(t, e, withClock(clock))

	tests := []struct {
		name                string
		giveExpiresIn       any // nil: the field is left out
		giveDefaultLifetime time.Duration
		want                time.Duration
	}{
		{name: "number", giveExpiresIn: 7200, want: 2 * time.Hour},
		{name: "string", giveExpiresIn: "3600", want: time.Hour},
		{name: "absent with provider default", giveDefaultLifetime: 10 * time.Minute, want: 10 * time.Minute},
		{name: "absent", want: DefaultTokenLifetime},
		{name: "null with provider default", giveExpiresIn: jsonNull{}, giveDefaultLifetime: 5 * time.Minute, want: 5 * time.Minute},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fields := map[string]any{"access_token": fmt.Sprintf("tok-%d", i), "token_type": "Bearer"}
			if tt.giveExpiresIn != nil {
				fields["expires_in"] = tt.giveExpiresIn
			}
			body := tokenJSON(fields)
			p := newFakeProvider(t, "/token", func(w http.ResponseWriter, _ *http.Request) {
				writeJSON(w, http.StatusOK, body)
			})
			name := fmt.Sprintf("lifetime-%d", i)
			putProvider(t, b, Provider{
				Name: name, TokenURL: p.TokenURL(), ClientID: "id", ClientAuth: oauth.AuthPost,
				DefaultTokenLifetime: tt.giveDefaultLifetime,
			}, "secret")

			rec := getToken(t, b, name)

			if got := rec.Lifetime(); got != tt.want {
				t.Errorf("provider answered %s: Lifetime() = %v, want %v", body, got, tt.want)
			}
			if want := clock.Now().Add(tt.want); !rec.ExpiresAt.Equal(want) {
				t.Errorf("provider answered %s: ExpiresAt = %v, want %v", body, rec.ExpiresAt, want)
			}
			if p.calls() != 1 {
				t.Errorf("provider got %d calls, want 1", p.calls())
			}
		})
	}
}

// jsonNull marshals as JSON null.
type jsonNull struct{}

func (jsonNull) MarshalJSON() ([]byte, error) { return []byte("null"), nil }

func TestGetTokenHitMakesNoRequests(t *testing.T) {
	e := etcdtest.Start(t)
	sb, tokenURL := newSandbox(t, nil)
	var requests etcdtest.Counter
	b := newTestBroker(t, e, withCounter(&requests))
	putProvider(t, b, sandboxProvider("orders", tokenURL), sandboxClientSecret)
	first := getToken(t, b, "orders")
	settle(t, &requests)

	hitsFromMemory(t, b, &requests, "orders", first, 1000)
	if got := sb.TokenCalls(); got != 1 {
		t.Errorf("provider got %d token calls, want 1", got)
	}
}

func TestGetTokenRefetchesWhenNotFresh(t *testing.T) {
	e := etcdtest.Start(t)
	clock := newClock()
	sb, tokenURL := newSandbox(t, clock) // tokens live sandbox.DefaultTokenLifetime (1h)
	b := newTestBroker(t, e, withClock(clock))
	putProvider(t, b, sandboxProvider("orders", tokenURL), sandboxClientSecret)
	const minTTL = 5 * time.Minute
	req := TokenRequest{Provider: "orders", MinTTL: minTTL}
	ctx := context.Background()

	first, err := b.GetToken(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if first.Lifetime() != time.Hour {
		t.Fatalf("Lifetime() = %v, want 1h", first.Lifetime())
	}

	// One second before the threshold the token is still served.
	clock.Advance(time.Hour - minTTL - time.Second)
	got, err := b.GetToken(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if got.AccessToken != first.AccessToken || sb.TokenCalls() != 1 {
		t.Errorf("with %v left: token %q after %d provider calls, want %q after 1", minTTL+time.Second, got.AccessToken, sb.TokenCalls(), first.AccessToken)
	}

	// At the threshold it is not fresh any more: many callers, one new token.
	clock.Advance(time.Second)
	var wg sync.WaitGroup
	recs := make([]*TokenRecord, 20)
	errs := make([]error, len(recs))
	for i := range recs {
		wg.Go(func() { recs[i], errs[i] = b.GetToken(ctx, req) })
	}
	wg.Wait()
	for i := range recs {
		if errs[i] != nil {
			t.Fatalf("GetToken: %v", errs[i])
		}
		if recs[i].AccessToken != recs[0].AccessToken {
			t.Fatalf("callers got tokens %q and %q, want one", recs[i].AccessToken, recs[0].AccessToken)
		}
	}
	second := recs[0]
	if got := sb.TokenCalls(); got != 2 {
		t.Errorf("provider got %d token calls, want 2", got)
	}
	if second.AccessToken == first.AccessToken {
		t.Errorf("got the old token %q again, want a new one", second.AccessToken)
	}
	if second.Generation != 2 {
		t.Errorf("Generation = %d, want 2", second.Generation)
	}
	if !second.IssuedAt.Equal(clock.Now()) || !second.ExpiresAt.Equal(clock.Now().Add(time.Hour)) {
		t.Errorf("new token issued %v, expires %v; want %v and an hour later", second.IssuedAt, second.ExpiresAt, clock.Now())
	}
}

func TestGetTokenHerd(t *testing.T) {
	e := etcdtest.Start(t)
	mh := newMediaHound(t, 50*time.Millisecond) // a slow provider widens the race
	b := newTestBroker(t, e)
	putProvider(t, b, mediaHoundProvider(mh), mediaHoundClientSecret)

	const callers = 200
	start := make(chan struct{})
	tokens := make([]string, callers)
	errs := make([]error, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() {
			<-start
			rec, err := b.GetToken(context.Background(), TokenRequest{Provider: "mediahound"})
			if rec != nil {
				tokens[i] = rec.AccessToken
			}
			errs[i] = err
		})
	}
	close(start)
	wg.Wait()

	if got := mh.calls(); got != 1 {
		t.Errorf("%d concurrent callers made %d provider calls, want 1", callers, got)
	}
	for i := range callers {
		if errs[i] != nil || tokens[i] != "mh-token-1" {
			t.Fatalf("caller %d got %q, %v; want mh-token-1", i, tokens[i], errs[i])
		}
	}
}

func TestGetTokenTwoBrokersOneProviderCall(t *testing.T) {
	e := etcdtest.Start(t)
	mh := newMediaHound(t, 100*time.Millisecond)
	b1 := newTestBroker(t, e, withPrefix("/shared/"))
	b2 := newTestBroker(t, e, withPrefix("/shared/"))
	putProvider(t, b1, mediaHoundProvider(mh), mediaHoundClientSecret)

	const perBroker = 50
	start := make(chan struct{})
	var mu sync.Mutex
	got := map[string]int{}
	var wg sync.WaitGroup
	for _, b := range []*Broker{b1, b2, b1, b2} {
		for range perBroker / 2 {
			wg.Go(func() {
				<-start
				rec, err := b.GetToken(context.Background(), TokenRequest{Provider: "mediahound"})
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					got["error: "+err.Error()]++
					return
				}
				got[rec.AccessToken]++
			})
		}
	}
	close(start)
	wg.Wait()

	if n := mh.calls(); n != 1 {
		t.Errorf("two brokers made %d provider calls, want 1", n)
	}
	if len(got) != 1 || got["mh-token-1"] != 2*perBroker {
		t.Errorf("callers got %v, want map[mh-token-1:%d]", got, 2*perBroker)
	}
}

func TestWatchBringsTokenToOtherBroker(t *testing.T) {
	e := etcdtest.Start(t)
	sb, tokenURL := newSandbox(t, nil)
	var requests2 etcdtest.Counter
	b1 := newTestBroker(t, e)
	b2 := newTestBroker(t, e, withCounter(&requests2))
	putProvider(t, b1, sandboxProvider("orders", tokenURL), sandboxClientSecret)

	rec := getToken(t, b1, "orders")
	eventually(t, "the second broker's watch delivers the token", func() bool {
		m := inMemory(b2, rec.Key)
		return m != nil && m.AccessToken == rec.AccessToken
	})
	eventually(t, "the second broker's watch delivers the provider", func() bool {
		_, ok := b2.providers.Load("orders")
		return ok
	})
	settle(t, &requests2)

	hitsFromMemory(t, b2, &requests2, "orders", rec, 100)
	if n := sb.TokenCalls(); n != 1 {
		t.Errorf("provider got %d token calls, want 1", n)
	}
}

func TestRestartServesStoredToken(t *testing.T) {
	e := etcdtest.Start(t)
	clock := newClock()
	sb, tokenURL := newSandbox(t, clock)
	b1 := newTestBroker(t, e, withClock(clock))
	putProvider(t, b1, sandboxProvider("orders", tokenURL), sandboxClientSecret)
	first := getToken(t, b1, "orders")
	if err := b1.Close(); err != nil {
		t.Errorf("close first broker: %v", err)
	}
	if _, err := b1.GetToken(context.Background(), TokenRequest{Provider: "orders", Scopes: []string{"other"}}); !errors.Is(err, ErrClosed) {
		t.Errorf("closed broker: GetToken on a miss = %v, want ErrClosed", err)
	}

	clock.Advance(10 * time.Minute)
	var requests etcdtest.Counter
	b2 := newTestBroker(t, e, withClock(clock), withCounter(&requests))
	settle(t, &requests)
	before := requests.Load()
	got := getToken(t, b2, "orders")

	if got.AccessToken != first.AccessToken || got.Generation != 1 || !got.ExpiresAt.Equal(first.ExpiresAt) {
		t.Errorf("restarted broker served %q generation %d expiring %v, want %q generation 1 expiring %v",
			got.AccessToken, got.Generation, got.ExpiresAt, first.AccessToken, first.ExpiresAt)
	}
	if n := sb.TokenCalls(); n != 1 {
		t.Errorf("provider got %d token calls, want 1", n)
	}
	if n := requests.Load() - before; n != 0 {
		t.Errorf("restarted broker made %d etcd requests for a token it loaded, want 0", n)
	}
}

func TestGetTokenInvalidArgument(t *testing.T) {
	e := etcdtest.Start(t)
	sb, tokenURL := newSandbox(t, nil)
	b := newTestBroker(t, e)
	putProvider(t, b, sandboxProvider("orders", tokenURL), sandboxClientSecret)

	tests := []struct {
		name string
		give TokenRequest
	}{
		{name: "empty provider", give: TokenRequest{}},
		{name: "uppercase provider", give: TokenRequest{Provider: "Orders"}},
		{name: "provider too long", give: TokenRequest{Provider: strings.Repeat("o", 64)}},
		{name: "provider with slash", give: TokenRequest{Provider: "orders/x"}},
		{name: "provider with space", give: TokenRequest{Provider: "or ders"}},
		{name: "provider starting with dot", give: TokenRequest{Provider: ".orders"}},
		{name: "account with slash", give: TokenRequest{Provider: "orders", Account: "a/b"}},
		{name: "account with space", give: TokenRequest{Provider: "orders", Account: "a b"}},
		{name: "account with percent", give: TokenRequest{Provider: "orders", Account: "a%2F"}},
		{name: "account too long", give: TokenRequest{Provider: "orders", Account: strings.Repeat("a", 129)}},
		{name: "empty scope", give: TokenRequest{Provider: "orders", Scopes: []string{""}}},
		{name: "scope with quote", give: TokenRequest{Provider: "orders", Scopes: []string{`read"`}}},
		{name: "scope with space", give: TokenRequest{Provider: "orders", Scopes: []string{"read write"}}},
		{name: "scope with backslash", give: TokenRequest{Provider: "orders", Scopes: []string{"a", `b\c`}}},
		{name: "scope too long", give: TokenRequest{Provider: "orders", Scopes: []string{strings.Repeat("s", 257)}}},
		{name: "too many scopes", give: TokenRequest{Provider: "orders", Scopes: strings.Split(strings.Repeat("s,", 64)+"s", ",")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := b.GetToken(context.Background(), tt.give)
			if !errors.Is(err, ErrInvalidArgument) {
				t.Errorf("GetToken(%+v) error = %v, want ErrInvalidArgument", tt.give, err)
			}
			_, err = b.Refresh(context.Background(), tt.give, "")
			if !errors.Is(err, ErrInvalidArgument) {
				t.Errorf("Refresh(%+v) error = %v, want ErrInvalidArgument", tt.give, err)
			}
		})
	}
	if n := sb.TokenCalls(); n != 0 {
		t.Errorf("invalid requests made %d provider calls, want 0", n)
	}
}

func TestGetTokenNotFound(t *testing.T) {
	e := etcdtest.Start(t)
	sb, tokenURL := newSandbox(t, nil)
	b := newTestBroker(t, e)
	putProvider(t, b, sandboxProvider("orders", tokenURL), sandboxClientSecret)
	password := sandboxProvider("ropc-only", tokenURL)
	password.GrantTypes = []GrantType{GrantPassword}
	putProvider(t, b, password, sandboxClientSecret)
	inspect := e.Client(t, nil)

	tests := []struct {
		name string
		give TokenRequest
	}{
		{name: "unknown provider", give: TokenRequest{Provider: "billing"}},
		{name: "account", give: TokenRequest{Provider: "orders", Account: "alice@example.com"}},
		{name: "client_credentials not allowed", give: TokenRequest{Provider: "ropc-only"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := b.GetToken(context.Background(), tt.give)
			if !errors.Is(err, ErrNotFound) {
				t.Errorf("GetToken(%+v) error = %v, want ErrNotFound", tt.give, err)
			}
		})
	}
	if n := sb.TokenCalls(); n != 0 {
		t.Errorf("provider got %d token calls, want 0", n)
	}
	if kvs := etcdKeys(t, inspect, DefaultPrefix+tokensPrefix); len(kvs) != 0 {
		t.Errorf("etcd holds tokens %v, want none", kvs)
	}
}

func TestGetTokenInvalidClient(t *testing.T) {
	e := etcdtest.Start(t)
	sb, tokenURL := newSandbox(t, nil)
	b := newTestBroker(t, e)
	putProvider(t, b, sandboxProvider("orders", tokenURL), sandboxClientSecret)
	inspect := e.Client(t, nil)
	sb.SetFailure(&sandbox.Failure{
		Status: http.StatusUnauthorized,
		Body:   `{"error":"invalid_client","error_description":"Client authentication failed"}`,
	})

	_, err := b.GetToken(context.Background(), TokenRequest{Provider: "orders"})

	var oe *oauth.Error
	if !errors.As(err, &oe) {
		t.Fatalf("GetToken error = %v, want an *oauth.Error", err)
	}
	if oe.StatusCode != 401 || oe.Code != "invalid_client" || oe.Description != "Client authentication failed" || oe.Temporary() {
		t.Errorf("oauth.Error = %+v (temporary %t), want 401 invalid_client %q, not temporary", oe, oe.Temporary(), "Client authentication failed")
	}
	var pe *ProviderError
	if !errors.As(err, &pe) || pe.Provider != "orders" {
		t.Errorf("GetToken error = %#v, want a *ProviderError of provider orders", err)
	}
	if n := sb.TokenCalls(); n != 1 {
		t.Errorf("provider got %d token calls, want 1 (invalid_client is not worth a retry)", n)
	}
	if kvs := etcdKeys(t, inspect, DefaultPrefix+tokensPrefix); len(kvs) != 0 {
		t.Errorf("after a failed fetch etcd holds %v, want nothing under %s", kvs, tokensPrefix)
	}
	key, _ := NewTokenKey("orders", "", nil)
	if rec := inMemory(b, key); rec != nil {
		t.Errorf("after a failed fetch memory holds %+v, want nothing", rec)
	}

	// The provider recovers: the failure was not cached.
	sb.SetFailure(nil)
	rec := getToken(t, b, "orders")
	if n := sb.TokenCalls(); n != 2 {
		t.Errorf("provider got %d token calls, want 2", n)
	}
	if rec.Generation != 1 {
		t.Errorf("Generation = %d, want 1 (nothing was stored before)", rec.Generation)
	}
}

func TestGetTokenProviderDown(t *testing.T) {
	e := etcdtest.Start(t)
	sb, tokenURL := newSandbox(t, nil)
	b := newTestBroker(t, e)
	putProvider(t, b, sandboxProvider("orders", tokenURL), sandboxClientSecret)
	inspect := e.Client(t, nil)
	sb.SetFailure(&sandbox.Failure{
		Status:      http.StatusBadGateway,
		ContentType: "text/html",
		Body:        "<html><body><h1>502 Bad Gateway</h1></body></html>",
	})

	_, err := b.GetToken(context.Background(), TokenRequest{Provider: "orders"})

	var oe *oauth.Error
	if !errors.As(err, &oe) {
		t.Fatalf("GetToken error = %v, want an *oauth.Error", err)
	}
	if oe.StatusCode != 502 || oe.Code != "" || !oe.Temporary() {
		t.Errorf("oauth.Error = %+v (temporary %t), want 502 without a code, temporary", oe, oe.Temporary())
	}
	var pe *ProviderError
	if !errors.As(err, &pe) || pe.Provider != "orders" {
		t.Errorf("GetToken error = %#v, want a *ProviderError of provider orders", err)
	}
	if strings.Contains(err.Error(), "<html>") {
		t.Errorf("error %q carries the provider's HTML", err)
	}
	if sb.TokenCalls() < 1 {
		t.Errorf("provider got no token call")
	}
	if kvs := etcdKeys(t, inspect, DefaultPrefix+tokensPrefix); len(kvs) != 0 {
		t.Errorf("after a failed fetch etcd holds %v, want no token", kvs)
	}
}

func TestGetTokenResponseTooLarge(t *testing.T) {
	e := etcdtest.Start(t)
	huge := tokenJSON(map[string]any{"access_token": strings.Repeat("a", 4096), "token_type": "bearer", "expires_in": 3600})
	p := newFakeProvider(t, "/token", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, huge)
	})
	b := newTestBroker(t, e, withOAuth(&oauth.Client{MaxResponseBytes: 1024}))
	putProvider(t, b, Provider{Name: "chatty", TokenURL: p.TokenURL(), ClientID: "id", ClientAuth: oauth.AuthPost}, "secret")
	inspect := e.Client(t, nil)

	_, err := b.GetToken(context.Background(), TokenRequest{Provider: "chatty"})

	if !errors.Is(err, oauth.ErrResponseTooLarge) {
		t.Errorf("GetToken error = %v, want oauth.ErrResponseTooLarge", err)
	}
	var pe *ProviderError
	if !errors.As(err, &pe) || pe.Provider != "chatty" {
		t.Errorf("GetToken error = %#v, want a *ProviderError of provider chatty", err)
	}
	if p.calls() != 1 {
		t.Errorf("provider got %d calls, want 1", p.calls())
	}
	if kvs := etcdKeys(t, inspect, DefaultPrefix+tokensPrefix); len(kvs) != 0 {
		t.Errorf("etcd holds %v, want no token", kvs)
	}
}

func TestRefresh(t *testing.T) {
	e := etcdtest.Start(t)
	clock := newClock()
	sb, tokenURL := newSandbox(t, clock)
	var requests etcdtest.Counter
	b := newTestBroker(t, e, withClock(clock), withCounter(&requests))
	putProvider(t, b, sandboxProvider("orders", tokenURL), sandboxClientSecret)
	req := TokenRequest{Provider: "orders"}
	ctx := context.Background()
	first := getToken(t, b, "orders")
	clock.Advance(time.Minute)

	// The caller's token is the current one: a new one is obtained, although
	// the current one is fresh.
	second, err := b.Refresh(ctx, req, first.AccessToken)
	if err != nil {
		t.Fatalf("Refresh(current token): %v", err)
	}
	if second.AccessToken == first.AccessToken || second.Generation != 2 || sb.TokenCalls() != 2 {
		t.Errorf("Refresh(current token) = %q generation %d after %d provider calls, want a new token, generation 2, 2 calls",
			second.AccessToken, second.Generation, sb.TokenCalls())
	}
	if got := getToken(t, b, "orders"); got.AccessToken != second.AccessToken {
		t.Errorf("GetToken after Refresh = %q, want the refreshed %q", got.AccessToken, second.AccessToken)
	}

	// The caller's token is an old one: someone refreshed first.
	settle(t, &requests)
	before := requests.Load()
	got, err := b.Refresh(ctx, req, first.AccessToken)
	if err != nil {
		t.Fatalf("Refresh(old token): %v", err)
	}
	if got.AccessToken != second.AccessToken || sb.TokenCalls() != 2 {
		t.Errorf("Refresh(old token) = %q after %d provider calls, want the current %q after 2", got.AccessToken, sb.TokenCalls(), second.AccessToken)
	}
	if n := requests.Load() - before; n != 0 {
		t.Errorf("Refresh(old token) made %d etcd requests, want 0: the current token is in memory", n)
	}

	// Many callers saw the same token fail: one provider call.
	const callers = 50
	var wg sync.WaitGroup
	recs := make([]*TokenRecord, callers)
	errs := make([]error, callers)
	for i := range callers {
		wg.Go(func() { recs[i], errs[i] = b.Refresh(ctx, req, second.AccessToken) })
	}
	wg.Wait()
	for i := range callers {
		if errs[i] != nil {
			t.Fatalf("concurrent Refresh: %v", errs[i])
		}
		if recs[i].AccessToken != recs[0].AccessToken {
			t.Fatalf("concurrent Refresh returned %q and %q, want one token", recs[0].AccessToken, recs[i].AccessToken)
		}
	}
	if n := sb.TokenCalls(); n != 3 {
		t.Errorf("%d concurrent Refresh calls made %d provider calls in all, want 3", callers, n)
	}
	if recs[0].AccessToken == second.AccessToken || recs[0].Generation != 3 {
		t.Errorf("concurrent Refresh returned %q generation %d, want a new token, generation 3", recs[0].AccessToken, recs[0].Generation)
	}
}

func TestIntrospect(t *testing.T) {
	e := etcdtest.Start(t)
	clock := newClock()
	mh := newMediaHound(t, 0)
	b := newTestBroker(t, e, withClock(clock))
	putProvider(t, b, mediaHoundProvider(mh), mediaHoundClientSecret)
	rec := getToken(t, b, "mediahound")
	ctx := context.Background()

	got, err := b.Introspect(ctx, rec.AccessToken)
	if err != nil {
		t.Fatalf("Introspect(issued token): %v", err)
	}
	want := Introspection{
		Active: true, Provider: "mediahound", Account: "", Scope: "public", ClientID: mediaHoundClientID,
		TokenType: "Bearer", IssuedAt: t0, ExpiresAt: t0.Add(86400 * time.Second),
	}
	if got.Active != want.Active || got.Provider != want.Provider || got.Account != want.Account || got.Scope != want.Scope ||
		got.ClientID != want.ClientID || got.TokenType != want.TokenType || !got.IssuedAt.Equal(want.IssuedAt) || !got.ExpiresAt.Equal(want.ExpiresAt) {
		t.Errorf("Introspect(issued token) = %+v, want %+v", *got, want)
	}

	tests := []struct {
		name string
		give string
	}{
		{name: "unknown", give: "mh-token-unknown"},
		{name: "issued token with a suffix", give: rec.AccessToken + "x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := b.Introspect(ctx, tt.give)
			if err != nil || got == nil || *got != (Introspection{}) {
				t.Errorf("Introspect(%q) = %+v, %v; want inactive", tt.give, got, err)
			}
		})
	}

	if _, err := b.Introspect(ctx, ""); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("Introspect(\"\") error = %v, want ErrInvalidArgument", err)
	}

	clock.Advance(86400 * time.Second)
	if got, err := b.Introspect(ctx, rec.AccessToken); err != nil || got.Active {
		t.Errorf("Introspect(expired token) = %+v, %v; want inactive", got, err)
	}
	if n := mh.calls(); n != 1 {
		t.Errorf("provider got %d calls, want 1: introspection uses the broker's own index", n)
	}
}

// TestWriteTokenFencedByLock shows that a write made after the lock's
// session lease was lost is discarded.
func TestWriteTokenFencedByLock(t *testing.T) {
	e := etcdtest.Start(t)
	clock := newClock()
	b := newTestBroker(t, e, withClock(clock))
	cli := e.Client(t, nil)
	ctx := context.Background()
	putProvider(t, b, sandboxProvider("orders", "https://orders.example.com/oauth2/token"), sandboxClientSecret)
	p, err := b.GetProvider(ctx, "orders")
	if err != nil {
		t.Fatal(err)
	}
	key, err := NewTokenKey("orders", "", []string{"read"})
	if err != nil {
		t.Fatal(err)
	}
	id := key.id()
	record := func(token string) *TokenRecord {
		r := &TokenRecord{Key: key, AccessToken: token, IssuedAt: clock.Now(), ExpiresAt: clock.Now().Add(time.Hour), Generation: 1}
		r.fill("Bearer", "", rareFields{})
		return r
	}
	// lock takes the token's lock in a session of its own, as another
	// replica would.
	lock := func(t *testing.T) (*concurrency.Session, *grantMutex) {
		t.Helper()
		sess, err := concurrency.NewSession(cli, concurrency.WithTTL(30))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sess.Close() })
		m := concurrency.NewMutex(sess, b.prefix+locksPrefix+id)
		if err := m.Lock(ctx); err != nil {
			t.Fatal(err)
		}
		resp, err := cli.Get(ctx, m.Key())
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("read the lock's key: %v, %v", resp, err)
		}
		return sess, &grantMutex{key: m.Key(), rev: resp.Kvs[0].CreateRevision}
	}

	// While the lock is held the write commits.
	_, m := lock(t)
	held := record("written-under-the-lock")
	grant := &Grant{Provider: "orders", Type: GrantClientCredentials, Health: HealthOK}
	if err := b.commit(ctx, m, p, grant, grant, id, held); err != nil {
		t.Fatalf("commit with the lock held: %v", err)
	}
	if resp, err := cli.Get(ctx, m.key); err != nil || len(resp.Kvs) != 0 || !m.released {
		t.Fatalf("lock key after the commit: %v, %v (released %v); want it deleted by the commit", resp, err, m.released)
	}
	stored, err := b.readToken(ctx, id)
	if err != nil || stored == nil || stored.AccessToken != held.AccessToken || stored.Revision != held.Revision {
		t.Fatalf("readToken = %+v, %v; want the record written under the lock", stored, err)
	}

	// Once the session's lease is gone the write is discarded.
	sess, m := lock(t)
	if _, err := cli.Revoke(ctx, sess.Lease()); err != nil {
		t.Fatal(err)
	}
	leases, err := cli.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	lost := record("written-after-the-lease-was-lost")
	_, grant, err = b.readTokenAndGrant(ctx, id, grantID("orders", ""))
	if err != nil || grant == nil {
		t.Fatalf("read grant = %v, %v; want the grant written with the token", grant, err)
	}
	err = b.commit(ctx, m, p, grant, grant, id, lost)

	if !errors.Is(err, ErrLockLost) {
		t.Errorf("commit after the lease was revoked: error = %v, want ErrLockLost", err)
	}
	stored, err = b.readToken(ctx, id)
	if err != nil || stored == nil || stored.AccessToken != held.AccessToken {
		t.Errorf("etcd holds %+v (%v), want the earlier record %q untouched", stored, err, held.AccessToken)
	}
	if got, err := b.Introspect(ctx, lost.AccessToken); err != nil || got.Active {
		t.Errorf("Introspect of the discarded token = %+v, %v; want inactive", got, err)
	}
	after, err := cli.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(after.Leases) != len(leases.Leases) {
		t.Errorf("etcd holds %d leases after the discarded write, want %d: a token write takes no lease", len(after.Leases), len(leases.Leases))
	}
}

func TestCloseRevokesSessionLease(t *testing.T) {
	e := etcdtest.Start(t)
	_, tokenURL := newSandbox(t, nil)
	b := newTestBroker(t, e)
	putProvider(t, b, sandboxProvider("orders", tokenURL), sandboxClientSecret)
	getToken(t, b, "orders") // a miss takes a lock, which starts the session
	b.mu.Lock()
	lease := b.sess.Lease()
	b.mu.Unlock()

	if err := b.Close(); err != nil {
		t.Errorf("Close() = %v, want nil", err)
	}

	resp, err := e.Client(t, nil).TimeToLive(context.Background(), lease)
	if err != nil {
		t.Fatal(err)
	}
	if resp.TTL != -1 {
		t.Errorf("after Close the session lease %x has %ds left, want it revoked", lease, resp.TTL)
	}
	if err := b.Close(); err != nil {
		t.Errorf("second Close() = %v, want nil", err)
	}
}

// hitsFromMemory asks b n times for provider's token and fails unless every
// answer is want, the record in memory, and no call made an etcd request
// (requests counts b's).
func hitsFromMemory(t *testing.T, b *Broker, requests *etcdtest.Counter, provider string, want *TokenRecord, n int) {
	t.Helper()
	before := requests.Load()
	for range n {
		got := getToken(t, b, provider)
		if got.AccessToken != want.AccessToken || got.Revision != want.Revision {
			t.Fatalf("GetToken returned %q (revision %d), want the record in memory, %q (revision %d)", got.AccessToken, got.Revision, want.AccessToken, want.Revision)
		}
	}
	if got := requests.Load() - before; got != 0 {
		t.Errorf("%d cache hits made %d etcd requests, want 0", n, got)
	}
}

// A broker starting on more token records than one read returns loads
// every page into memory, each record as written.
func TestStartLoadsEveryPage(t *testing.T) {
	e := etcdtest.Start(t)
	writer := newTestBroker(t, e)
	cli := e.Client(t, nil)
	n := 2*loadPage + 7
	keys := writeTokenRecords(t, writer, cli, n)
	b := newTestBroker(t, e)
	for i, key := range keys {
		rec := b.cached(key.id())
		if rec == nil || rec.AccessToken != fmt.Sprintf("token-%04d", i) || !rec.ExpiresAt.Equal(t0.Add(time.Hour)) {
			t.Fatalf("record %d after the start: %+v, want token-%04d expiring at %v", i, rec, i, t0.Add(time.Hour))
		}
	}
	if got := len(b.cachedNames()); got != n {
		t.Errorf("memory holds %d tokens after the start, want %d", got, n)
	}
	// Both ways of reading a range deliver every record once, at one
	// revision: RangeStream, and pages of Get for an etcd without it.
	from, end := DefaultPrefix+tokensPrefix, clientv3.GetPrefixRangeEnd(DefaultPrefix+tokensPrefix)
	reads := map[string]func(context.Context, string, string, int64, func([]*mvccpb.KeyValue) bool) (int64, error){
		"stream": b.streamRange, "pages": b.pagedRange,
	}
	readAt := func(read func(context.Context, string, string, int64, func([]*mvccpb.KeyValue) bool) (int64, error), rev int64) (map[string]int, int64, error) {
		seen := map[string]int{}
		rev, err := read(context.Background(), from, end, rev, func(kvs []*mvccpb.KeyValue) bool {
			for _, kv := range kvs {
				seen[string(kv.Key)]++
			}
			return true
		})
		return seen, rev, err
	}
	revs := map[string]int64{}
	for name, read := range reads {
		seen, rev, err := readAt(read, 0)
		if err != nil || rev == 0 || len(seen) != n {
			t.Errorf("%s: read %d records at revision %d, %v; want %d", name, len(seen), rev, err, n)
		}
		for k, c := range seen {
			if c != 1 {
				t.Errorf("%s: %s read %d times", name, k, c)
			}
		}
		revs[name] = rev
	}
	// A read at a given revision returns that revision, not etcd's latest
	// (which a watch from it would then skip the changes between).
	if _, err := cli.Put(context.Background(), from+"later", "x"); err != nil {
		t.Fatal(err)
	}
	for name, read := range reads {
		seen, rev, err := readAt(read, revs[name])
		if err != nil || rev != revs[name] || len(seen) != n {
			t.Errorf("%s at revision %d: read %d records, returned revision %d, %v; want %d records and revision %d", name, revs[name], len(seen), rev, err, n, revs[name])
		}
	}
}
