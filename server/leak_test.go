package server_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/apikey"
	"github.com/tokenbroker/tokenbroker/broker/oauth"
	"github.com/tokenbroker/tokenbroker/broker/policy"
	"github.com/tokenbroker/tokenbroker/broker/seal"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
	"github.com/tokenbroker/tokenbroker/internal/fakes"
	"github.com/tokenbroker/tokenbroker/internal/testkeys"
	"github.com/tokenbroker/tokenbroker/sandbox"
	"github.com/tokenbroker/tokenbroker/server"
)

// The leak test (acceptance 2) and the at-rest test (acceptance 3) run the
// same flows: every grant, provider errors, rotation, admin calls, API
// keys, authentication failures and a recovered panic, through the real
// gRPC server and REST gateway, with secrets of known values. The tokens the
// provider issues are random; they are captured as the provider sends them.

// leakWindow: no secret may show any run of this many of its characters.
const leakWindow = 9

// Secrets of known values. They share no run of leakWindow characters with
// each other or with ordinary words.
const (
	leakClientID      = "svc-leaks"
	leakClientSecret  = "Qv7cS3kR9xLm2WpZt8Yb"
	leakPassword      = "pW4nHs8Kq2Zx7Ld5Vr1G"
	leakUser          = "alice"
	leakWrongSecret   = "wX3bN8mQ5tR2yK9vJ6cD"
	leakEchoSecret    = "eH7pL2sG9dF4kA6zM1qT"
	leakEchoPassword  = "eP5rT8wY3uI6oB2nC9xV"
	leakRotatedSecret = "rS6tD1fG8hJ3kL5zX7cB"
	leakBogusKey      = "bK2mN7vC4xZ9aS1dF6gH"
	leakUnknownToken  = "uT8yR3eW6qA1sD4fG7hJ"
	leakForgedState   = "fS5gH2jK9lZ3xC6vB8nM"
	leakDeviceCode    = "dV3cQ7wE1rT5yU9iO2pL"
	leakDeviceAccess  = "aD6sF1gH4jK8lQ3wE7rT"
	leakDeviceRefresh = "rD2fG5hJ9kL3zX8cV4bN"
)

// secretBook names every secret a flow used or saw, by value.
type secretBook struct {
	mu    sync.Mutex
	byVal map[string]string
}

func newSecretBook() *secretBook { return &secretBook{byVal: map[string]string{}} }

func (s *secretBook) add(name, value string) {
	if value == "" {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.byVal[value]; !ok {
		s.byVal[value] = name
	}
}

// addStored adds a value etcd holds sealed under name (key#field). A
// client certificate's key is PEM that shows its algorithm and public key,
// as the certificate does: the flows add its private part alone.
func (s *secretBook) addStored(name, plain string) {
	_, field, _ := strings.Cut(name, "#")
	if field == "client_certificate_key" {
		return
	}
	s.add("stored "+field, plain)
}

func (s *secretBook) all() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]string, len(s.byVal))
	for v, n := range s.byVal {
		out[v] = n
	}
	return out
}

// findLeaks reports every secret of book that has a run of leakWindow
// characters (the whole secret when it is shorter) in haystack: the
// secret's name, the run, and the text around it.
func findLeaks(haystack string, book map[string]string) []string {
	windows := map[string]string{}
	for v, name := range book {
		if len(v) < leakWindow {
			windows[v] = name
			continue
		}
		for i := 0; i+leakWindow <= len(v); i++ {
			windows[v[i:i+leakWindow]] = name
		}
	}
	found := map[string]string{}
	for i := 0; i+leakWindow <= len(haystack); i++ {
		run := haystack[i : i+leakWindow]
		if name, ok := windows[run]; ok {
			if _, seen := found[name]; !seen {
				lo, hi := max(i-60, 0), min(i+leakWindow+60, len(haystack))
				found[name] = fmt.Sprintf("%s: %q in …%s…", name, run, haystack[lo:hi])
			}
		}
	}
	// Secrets shorter than the window are looked for whole.
	for v, name := range book {
		if len(v) < leakWindow && strings.Contains(haystack, v) {
			found[name] = fmt.Sprintf("%s: %q", name, v)
		}
	}
	out := make([]string, 0, len(found))
	for _, f := range found {
		out = append(out, f)
	}
	sort.Strings(out)
	return out
}

func TestFindLeaksLooksForEveryRunOfNineCharacters(t *testing.T) {
	book := map[string]string{"0123456789abcdef": "secret", "short": "tiny"}
	tests := []struct {
		give string
		want int
	}{
		{"nothing here", 0},
		{"…0123456789abcdef…", 1},
		{"prefix 012345678 only", 1},
		{"suffix 789abcdef", 1},
		{"middle 3456789ab", 1},
		{"eight 01234567 is fine", 0},
		{"eight 89abcdef is fine", 0},
		{"a short one", 1},
	}
	for _, tt := range tests {
		if got := findLeaks(tt.give, book); len(got) != tt.want {
			t.Errorf("findLeaks(%q) = %q, want %d leaks", tt.give, got, tt.want)
		}
	}
}

// transcript is everything the broker said to anyone but a token caller:
// errors, admin responses, REST bodies, the consent page.
type transcript struct {
	mu    sync.Mutex
	parts []string
}

func (tr *transcript) add(label, text string) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.parts = append(tr.parts, label+": "+text)
}

func (tr *transcript) String() string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return strings.Join(tr.parts, "\n")
}

// addErr records an error as a caller sees it, status details included.
func (tr *transcript) addErr(label string, err error) {
	if err == nil {
		return
	}
	st := status.Convert(err)
	detail, _ := protojson.Marshal(st.Proto())
	tr.add(label, err.Error()+" "+string(detail))
}

// addMsg records a response message.
func (tr *transcript) addMsg(label string, m proto.Message) {
	b, err := protojson.Marshal(m)
	if err != nil {
		tr.add(label, fmt.Sprint(m))
		return
	}
	tr.add(label, string(b))
}

// renderLogs renders every observed entry twice: as JSON (what a log
// shipper sees) and field by field with fmt (what a console shows).
func renderLogs(logs *observer.ObservedLogs) string {
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	var b strings.Builder
	for _, e := range logs.All() {
		if buf, err := enc.EncodeEntry(e.Entry, e.Context); err == nil {
			b.WriteString(buf.String())
			buf.Free()
		}
		b.WriteString(e.LoggerName + " " + e.Message)
		for k, v := range e.ContextMap() {
			fmt.Fprintf(&b, " %s=%v", k, v)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// capturingProvider serves a sandbox that exists only once the broker's
// callback URL is known, and records every token, refresh token and
// id_token the sandbox hands out.
type capturingProvider struct {
	mu      sync.Mutex
	sandbox *sandbox.Server
	url     string
	book    *secretBook
}

func newCapturingProvider(t *testing.T, book *secretBook) *capturingProvider {
	t.Helper()
	p := &capturingProvider{book: book}
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		sb := p.sandbox
		p.mu.Unlock()
		if sb == nil {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		rec := httptest.NewRecorder()
		sb.ServeHTTP(rec, r)
		var tok struct {
			AccessToken  string `json:"access_token"`
			RefreshToken string `json:"refresh_token"`
			IDToken      string `json:"id_token"`
		}
		if json.Unmarshal(rec.Body.Bytes(), &tok) == nil {
			book.add("issued access token", tok.AccessToken)
			book.add("issued refresh token", tok.RefreshToken)
			book.add("issued id_token", tok.IDToken)
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
	}))
	t.Cleanup(ts.Close)
	p.url = ts.URL
	return p
}

// start makes the sandbox: client leakClientID, user alice, consent back to
// callback, rotating refresh tokens and id_tokens.
func (p *capturingProvider) start(t *testing.T, callback string, now func() time.Time) *sandbox.Server {
	t.Helper()
	sb, err := sandbox.New(sandbox.Config{
		Clients:             map[string]string{leakClientID: leakClientSecret},
		Users:               map[string]string{leakUser: leakPassword},
		RedirectURIs:        map[string][]string{leakClientID: {callback}},
		RefreshTokens:       true,
		RotateRefreshTokens: true,
		IDTokens:            true,
		Now:                 now,
	})
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	p.sandbox = sb
	p.mu.Unlock()
	return sb
}

// startSealed starts a broker replica like env.startWith, with keys as its
// keyring, log for every logger, fast provider retries, the background
// refresher off and rules besides testAdminRule. stop shuts it down; the
// test's cleanup calls it too.
func startSealed(t *testing.T, e *env, keys *seal.Keyring, log *zap.Logger, rules ...policy.Rule) (in *instance, stop func()) {
	t.Helper()
	in = &instance{requests: &etcdtest.Counter{}}
	b, err := broker.New(context.Background(), broker.Config{
		Client:          e.etcd.Client(t, in.requests),
		OAuth:           withTracer(&oauth.Client{Timeout: 2 * time.Second, MaxResponseBytes: 64 << 10}, e.tracing),
		Logger:          log,
		Now:             e.clock.Now,
		Keyring:         keys,
		CooldownBase:    time.Nanosecond,
		ProviderBackoff: time.Millisecond,
		Refresh:         broker.RefreshConfig{Disabled: true},
	})
	if err != nil {
		t.Fatalf("broker.New: %v", err)
	}
	keyStore, err := apikey.NewStore(context.Background(), e.etcd.Client(t, nil), broker.DefaultPrefix, testkeys.Keyring(), log)
	if err != nil {
		b.Close()
		t.Fatalf("apikey.NewStore: %v", err)
	}
	if err := keyStore.SetStatic([]apikey.StaticKey{{ID: testAdminKeyID, Identity: testAdminIdentity, SHA256: testAdminKeySHA}}); err != nil {
		t.Fatal(err)
	}
	pol, err := policy.New(append([]policy.Rule{testAdminRule}, rules...))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{
		GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Broker: b, Logger: log,
		Auth:           server.AuthConfig{Keys: keyStore, Policy: pol},
		TracerProvider: e.tracing,
	})
	if err != nil {
		t.Fatalf("server.New: %v", err)
	}
	srv.Start()
	conn, err := grpc.NewClient(srv.GRPCAddr(), in.dialOptions(nil, testAdminKey)...)
	if err != nil {
		t.Fatal(err)
	}
	in.broker, in.server, in.keys, in.conn = b, srv, keyStore, conn
	in.tokens = tokenbrokerv1.NewTokenBrokerServiceClient(conn)
	in.admin = tokenbrokerv1.NewAdminServiceClient(conn)
	in.baseURL = "http://" + srv.HTTPAddr()
	in.grpcAddr = srv.GRPCAddr()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			conn.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			srv.Shutdown(ctx)
			keyStore.Close()
			b.Close()
		})
	}
	t.Cleanup(stop)
	return in, stop
}

// flowRun is the outcome of runFlows.
type flowRun struct {
	env      *env
	in       *instance
	stop     func()
	provider *capturingProvider
	sandbox  *sandbox.Server
	logs     *observer.ObservedLogs
	log      *zap.Logger
	book     *secretBook
	said     *transcript
	// hookOK and hookDead receive the webhook deliveries.
	hookOK, hookDead *hookSink
}

// leakSecretPart is the part of an API key that is secret: its id is
// public, logged and listed.
func leakSecretPart(key string) string {
	if id, ok := apikey.ParseID(key); ok {
		return strings.TrimPrefix(key, "tbk_"+id+"_")
	}
	return key
}

// runFlows runs every flow the broker has through one replica whose every
// logger is observed at Debug.
func runFlows(t *testing.T) *flowRun {
	t.Helper()
	return runFlowsTraced(t, nil)
}

// runFlowsTraced is runFlows with the replica's servers and provider calls
// traced through tp (nothing when nil).
func runFlowsTraced(t *testing.T, tp trace.TracerProvider) *flowRun {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	log := zap.New(core)
	book := newSecretBook()
	for v, name := range map[string]string{
		leakClientSecret: "client secret", leakPassword: "password", leakWrongSecret: "wrong client secret",
		leakEchoSecret: "echoed client secret", leakEchoPassword: "echoed password", leakRotatedSecret: "rotated client secret",
		leakBogusKey: "bogus API key", leakUnknownToken: "unknown token", leakForgedState: "forged state",
		leakDeviceCode: "device code", leakDeviceAccess: "device grant's access token", leakDeviceRefresh: "device grant's refresh token",
		leakSecretPart(testAdminKey):                                  "admin API key",
		base64.StdEncoding.EncodeToString(testkeys.Primary.Secret):    "master key",
		base64.RawURLEncoding.EncodeToString(testkeys.Primary.Secret): "master key (url)",
	} {
		book.add(name, v)
	}
	e := &env{t: t, etcd: etcdtest.Start(t), clock: &fakeClock{now: time.Now()}, tracing: tp}
	p := newCapturingProvider(t, book)
	readerRule := policy.Rule{Identities: []string{"svc-reader"}, Providers: []string{"elsewhere"}, Actions: []policy.Action{policy.Token}}
	in, stop := startSealed(t, e, testkeys.Keyring(), log, readerRule)
	callback := in.baseURL + server.CallbackPath
	sb := p.start(t, callback, e.clock.Now)
	r := &flowRun{env: e, in: in, stop: stop, provider: p, sandbox: sb, logs: logs, log: log, book: book, said: &transcript{}}
	e.provider, e.url = sb, p.url

	r.webhookSubscribe(t)
	r.adminFlows(t, callback)
	r.clientCredentialsFlows(t)
	r.passwordFlows(t)
	r.consentFlows(t)
	r.deviceFlows(t)
	r.clientCertificateFlows(t)
	r.exchangeFlows(t)
	r.providerErrorFlows(t)
	r.rotationFlows(t)
	r.clientKeyFlows(t)
	r.apiKeyFlows(t)
	r.authFailureFlows(t)
	r.panicFlows(t)
	r.revocationFlows(t)
	r.webhookFlows(t)

	// What the provider received: passwords, codes, verifiers, refresh
	// tokens and client credentials in forms and headers.
	for _, req := range sb.Requests() {
		for _, field := range []string{"client_secret", "password", "refresh_token", "code", "code_verifier"} {
			book.add("sent "+field, req.Form.Get(field))
		}
		if auth := req.Header.Get("Authorization"); strings.HasPrefix(auth, "Basic ") {
			book.add("sent Basic credentials", strings.TrimPrefix(auth, "Basic "))
		}
	}
	return r
}

var ctxb = context.Background()

// rest sends a JSON request to the gateway with key (none when empty) and
// records the answer in the transcript.
func (r *flowRun) rest(t *testing.T, method, path, key string, body any) (int, []byte) {
	t.Helper()
	var raw []byte
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		raw = b
	}
	header := http.Header{}
	if key != "" {
		header.Set("Authorization", "Bearer "+key)
	}
	code, resp := restDo(t, http.DefaultClient, method, r.in.baseURL+path, header, raw)
	r.said.add(fmt.Sprintf("REST %s %s %d", method, path, code), string(resp))
	return code, resp
}

// token records a token response's tokens as secrets; the token API hands
// them out by design, so the response is not transcript.
func (r *flowRun) token(tok *tokenbrokerv1.Token) {
	r.book.add("served access token", tok.GetAccessToken())
	r.book.add("served id_token", tok.GetIdToken())
}

func (r *flowRun) restToken(t *testing.T, label, path string, body any) {
	t.Helper()
	code, raw := restDo(t, http.DefaultClient, http.MethodPost, r.in.baseURL+path, http.Header{"Authorization": {"Bearer " + testAdminKey}}, mustJSON(t, body))
	var tok struct {
		AccessToken string `json:"access_token"`
		IDToken     string `json:"id_token"`
	}
	if code == http.StatusOK && json.Unmarshal(raw, &tok) == nil {
		r.book.add("served access token", tok.AccessToken)
		r.book.add("served id_token", tok.IDToken)
		return
	}
	r.said.add(label, string(raw))
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (r *flowRun) sbProvider(name, baseURL string) *tokenbrokerv1.Provider {
	return &tokenbrokerv1.Provider{
		Name: name, TokenUrl: baseURL + sandbox.TokenPath, AuthorizeUrl: baseURL + sandbox.AuthorizePath,
		IntrospectionUrl: baseURL + sandbox.IntrospectPath, RevocationUrl: baseURL + sandbox.RevokePath,
		ClientId: leakClientID, ClientAuthStyle: tokenbrokerv1.ClientAuthStyle_CLIENT_AUTH_STYLE_BASIC, Pkce: true,
		GrantTypes: []tokenbrokerv1.GrantType{tokenbrokerv1.GrantType_GRANT_TYPE_CLIENT_CREDENTIALS,
			tokenbrokerv1.GrantType_GRANT_TYPE_PASSWORD, tokenbrokerv1.GrantType_GRANT_TYPE_AUTHORIZATION_CODE},
	}
}

// adminFlows registers providers over gRPC and REST, with secrets, and
// reads them back.
func (r *flowRun) adminFlows(t *testing.T, callback string) {
	t.Helper()
	sb := r.sbProvider("sb", r.provider.url)
	sb.RedirectUri = callback
	resp, err := r.in.admin.PutProvider(ctxb, &tokenbrokerv1.PutProviderRequest{Provider: sb, ClientSecret: leakClientSecret})
	if err != nil {
		t.Fatalf("PutProvider(sb): %v", err)
	}
	r.said.addMsg("PutProvider", resp)
	if code, raw := r.rest(t, http.MethodPut, "/v1/admin/providers/sbrest", testAdminKey, map[string]any{
		"provider":      map[string]any{"token_url": r.provider.url + sandbox.TokenPath, "client_id": leakClientID, "client_auth_style": "CLIENT_AUTH_STYLE_POST"},
		"client_secret": leakClientSecret,
	}); code != http.StatusOK {
		t.Fatalf("REST PutProvider(sbrest) = %d %s", code, raw)
	}
	wrong := r.sbProvider("wrong", r.provider.url)
	resp, err = r.in.admin.PutProvider(ctxb, &tokenbrokerv1.PutProviderRequest{Provider: wrong, ClientSecret: leakWrongSecret})
	if err != nil {
		t.Fatalf("PutProvider(wrong): %v", err)
	}
	r.said.addMsg("PutProvider", resp)
	got, err := r.in.admin.GetProvider(ctxb, &tokenbrokerv1.GetProviderRequest{Name: "sb"})
	if err != nil || !got.GetProvider().GetClientSecret().GetSet() {
		t.Fatalf("GetProvider(sb) = %v, %v; want the secret shown as set", got, err)
	}
	r.said.addMsg("GetProvider", got)
	list, err := r.in.admin.ListProviders(ctxb, &tokenbrokerv1.ListProvidersRequest{})
	r.said.addErr("ListProviders", err)
	r.said.addMsg("ListProviders", list)
	r.rest(t, http.MethodGet, "/v1/admin/providers/sbrest", testAdminKey, nil)
	r.rest(t, http.MethodGet, "/v1/admin/providers", testAdminKey, nil)
	// A put that fails validation, with a secret in the request.
	_, err = r.in.admin.PutProvider(ctxb, &tokenbrokerv1.PutProviderRequest{
		Provider: &tokenbrokerv1.Provider{Name: "bad name", TokenUrl: "ftp://x"}, ClientSecret: leakClientSecret})
	r.said.addErr("PutProvider(invalid)", err)
}

func (r *flowRun) clientCredentialsFlows(t *testing.T) {
	t.Helper()
	for _, name := range []string{"sb", "sbrest"} {
		got, err := r.in.tokens.GetToken(ctxb, &tokenbrokerv1.GetTokenRequest{Provider: name, Scopes: []string{"read"}})
		if err != nil {
			t.Fatalf("GetToken(%s): %v", name, err)
		}
		r.token(got.GetToken())
		stale := got.GetToken().GetAccessToken()
		ref, err := r.in.tokens.Refresh(ctxb, &tokenbrokerv1.RefreshRequest{Provider: name, Scopes: []string{"read"}, StaleAccessToken: stale})
		if err != nil {
			t.Fatalf("Refresh(%s): %v", name, err)
		}
		r.token(ref.GetToken())
		r.restToken(t, "REST GetToken", "/v1/providers/"+name+"/token", map[string]any{})
		r.restToken(t, "REST Refresh", "/v1/providers/"+name+"/token:refresh", map[string]any{"stale_access_token": ref.GetToken().GetAccessToken()})
		// Introspection of a token the broker handed out (the provider's
		// endpoint for sb, the broker's own index for sbrest) and of an
		// unknown one.
		for _, tok := range []string{ref.GetToken().GetAccessToken(), leakUnknownToken} {
			in, err := r.in.tokens.Introspect(ctxb, &tokenbrokerv1.IntrospectRequest{Token: tok})
			r.said.addErr("Introspect", err)
			r.said.addMsg("Introspect", in)
			r.rest(t, http.MethodPost, "/v1/introspect", testAdminKey, map[string]any{"token": tok})
			code, raw := restDo(t, http.DefaultClient, http.MethodPost, r.in.baseURL+server.IntrospectPath,
				http.Header{"Authorization": {"Bearer " + testAdminKey}, "Content-Type": {"application/x-www-form-urlencoded"}},
				[]byte(url.Values{"token": {tok}}.Encode()))
			r.said.add(fmt.Sprintf("RFC 7662 introspect %d", code), string(raw))
		}
	}
}

func (r *flowRun) passwordFlows(t *testing.T) {
	t.Helper()
	acct, err := r.in.admin.PutAccount(ctxb, &tokenbrokerv1.PutAccountRequest{Provider: "sb", Account: leakUser,
		GrantType: tokenbrokerv1.GrantType_GRANT_TYPE_PASSWORD, Username: leakUser, Password: leakPassword, Scopes: []string{"openid", "read"}})
	if err != nil {
		t.Fatalf("PutAccount(alice): %v", err)
	}
	r.said.addMsg("PutAccount", acct)
	r.rest(t, http.MethodPut, "/v1/admin/providers/sb/accounts/alice-rest", testAdminKey, map[string]any{
		"grant_type": "GRANT_TYPE_PASSWORD", "username": leakUser, "password": leakPassword})
	// A wrong password for a known user.
	_, err = r.in.admin.PutAccount(ctxb, &tokenbrokerv1.PutAccountRequest{Provider: "sb", Account: "mallory",
		GrantType: tokenbrokerv1.GrantType_GRANT_TYPE_PASSWORD, Username: leakUser, Password: leakEchoPassword})
	r.said.addErr("PutAccount(mallory)", err)
	for _, account := range []string{leakUser, "alice-rest"} {
		got, err := r.in.tokens.GetToken(ctxb, &tokenbrokerv1.GetTokenRequest{Provider: "sb", Account: account})
		if err != nil {
			t.Fatalf("GetToken(sb/%s): %v", account, err)
		}
		r.token(got.GetToken())
		for range 2 { // rotates the refresh token twice
			ref, err := r.in.tokens.Refresh(ctxb, &tokenbrokerv1.RefreshRequest{Provider: "sb", Account: account})
			if err != nil {
				t.Fatalf("Refresh(sb/%s): %v", account, err)
			}
			r.token(ref.GetToken())
		}
		r.restToken(t, "REST Refresh", "/v1/providers/sb/token:refresh", map[string]any{"account": account})
	}
	_, err = r.in.tokens.GetToken(ctxb, &tokenbrokerv1.GetTokenRequest{Provider: "sb", Account: "mallory"})
	r.said.addErr("GetToken(mallory)", err)
	grants, err := r.in.admin.ListGrants(ctxb, &tokenbrokerv1.ListGrantsRequest{})
	if err != nil {
		t.Fatalf("ListGrants: %v", err)
	}
	r.said.addMsg("ListGrants", grants)
	r.rest(t, http.MethodGet, "/v1/admin/grants?provider=sb", testAdminKey, nil)
}

// consentFlows runs the authorization-code grant end to end: the admin
// starts it, the person signs in at the provider, the provider's redirect
// lands on the broker's callback; then a replayed and a forged callback.
func (r *flowRun) consentFlows(t *testing.T) {
	t.Helper()
	start, err := r.in.admin.StartAuthorization(ctxb, &tokenbrokerv1.StartAuthorizationRequest{Provider: "sb", Account: "carol", Scopes: []string{"openid", "read"}})
	if err != nil {
		t.Fatalf("StartAuthorization: %v", err)
	}
	// The state is the admin's to hand to the person: it is in the answer
	// by design, and nowhere else.
	r.book.add("consent state", start.GetState())
	redacted := proto.Clone(start).(*tokenbrokerv1.StartAuthorizationResponse)
	redacted.State, redacted.AuthorizeUrl = "", ""
	r.said.addMsg("StartAuthorization", redacted)

	req, err := http.NewRequest(http.MethodGet, start.GetAuthorizeUrl(), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.SetBasicAuth(leakUser, leakPassword)
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noRedirect.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	back, err := url.Parse(resp.Header.Get("Location"))
	if resp.StatusCode != http.StatusFound || err != nil || back.Query().Get("code") == "" {
		t.Fatalf("sandbox authorize = %d, Location %q; want a redirect with a code", resp.StatusCode, resp.Header.Get("Location"))
	}
	r.book.add("authorization code", back.Query().Get("code"))
	for i, target := range []string{back.String(), back.String(), // the second is a replay
		r.in.baseURL + server.CallbackPath + "?" + url.Values{"state": {leakForgedState}, "code": {leakBogusKey}}.Encode()} {
		cb, err := http.Get(target)
		if err != nil {
			t.Fatal(err)
		}
		page, _ := io.ReadAll(cb.Body)
		cb.Body.Close()
		r.said.add(fmt.Sprintf("consent page %d (%d)", i, cb.StatusCode), string(page))
		if i == 0 && cb.StatusCode != http.StatusOK {
			t.Fatalf("consent callback = %d %s, want 200", cb.StatusCode, page)
		}
	}
	got, err := r.in.tokens.GetToken(ctxb, &tokenbrokerv1.GetTokenRequest{Provider: "sb", Account: "carol"})
	if err != nil {
		t.Fatalf("GetToken(carol) after consent: %v", err)
	}
	r.token(got.GetToken())
	ref, err := r.in.tokens.Refresh(ctxb, &tokenbrokerv1.RefreshRequest{Provider: "sb", Account: "carol"})
	if err != nil {
		t.Fatalf("Refresh(carol): %v", err)
	}
	r.token(ref.GetToken())
}

// deviceFlows onboards an account through the device authorization grant
// at a provider that quotes the device code and the client secret in its
// authorization_pending answers.
func (r *flowRun) deviceFlows(t *testing.T) {
	t.Helper()
	var polls atomic.Int32
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		_ = req.ParseForm()
		w.Header().Set("Content-Type", "application/json")
		if req.PostForm.Get("client_secret") != leakClientSecret {
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"error":"invalid_client"}`)
			return
		}
		switch req.URL.Path {
		case "/device":
			_ = json.NewEncoder(w).Encode(map[string]any{"device_code": leakDeviceCode, "user_code": "LEAK-TEST", "verification_uri": "https://idp.example/device", "expires_in": 60, "interval": 1})
		case "/token":
			if polls.Add(1) == 1 {
				w.WriteHeader(http.StatusBadRequest)
				_ = json.NewEncoder(w).Encode(map[string]string{"error": "authorization_pending",
					"error_description": "device code " + req.PostForm.Get("device_code") + " of client secret " + req.PostForm.Get("client_secret") + " pending"})
				return
			}
			_ = json.NewEncoder(w).Encode(map[string]any{"access_token": leakDeviceAccess, "refresh_token": leakDeviceRefresh, "token_type": "Bearer", "expires_in": 3600})
		}
	}))
	t.Cleanup(ts.Close)
	put, err := r.in.admin.PutProvider(ctxb, &tokenbrokerv1.PutProviderRequest{ClientSecret: leakClientSecret, Provider: &tokenbrokerv1.Provider{
		Name: "tv", TokenUrl: ts.URL + "/token", DeviceAuthorizationUrl: ts.URL + "/device", ClientId: leakClientID,
		ClientAuthStyle: tokenbrokerv1.ClientAuthStyle_CLIENT_AUTH_STYLE_POST,
		GrantTypes:      []tokenbrokerv1.GrantType{tokenbrokerv1.GrantType_GRANT_TYPE_DEVICE_CODE, tokenbrokerv1.GrantType_GRANT_TYPE_REFRESH_TOKEN},
	}})
	if err != nil {
		t.Fatalf("PutProvider(tv): %v", err)
	}
	r.said.addMsg("PutProvider(tv)", put)
	start, err := r.in.admin.StartAuthorization(ctxb, &tokenbrokerv1.StartAuthorizationRequest{Provider: "tv", Account: "den",
		Flow: tokenbrokerv1.AuthorizationFlow_AUTHORIZATION_FLOW_DEVICE_CODE})
	if err != nil {
		t.Fatalf("StartAuthorization(device): %v", err)
	}
	r.said.addMsg("StartAuthorization(device)", start)
	deadline := time.Now().Add(15 * time.Second)
	for {
		grants, err := r.in.admin.ListGrants(ctxb, &tokenbrokerv1.ListGrantsRequest{Provider: "tv"})
		if err != nil {
			t.Fatalf("ListGrants(tv): %v", err)
		}
		if gs := grants.GetGrants(); len(gs) == 1 && gs[0].GetHealth() == tokenbrokerv1.GrantHealth_GRANT_HEALTH_OK {
			r.said.addMsg("ListGrants(tv)", grants)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the device grant is not ok after 15s: %v", grants)
		}
		time.Sleep(100 * time.Millisecond)
	}
	got, err := r.in.tokens.GetToken(ctxb, &tokenbrokerv1.GetTokenRequest{Provider: "tv", Account: "den"})
	if err != nil || got.GetToken().GetAccessToken() != leakDeviceAccess {
		t.Fatalf("GetToken(tv/den) = %v, %v; want the device grant's token", got, err)
	}
}

// clientCertificateFlows registers a provider on tls_client_auth: first
// with the key of another certificate (refused), then with its own; the
// token request fails at the TLS handshake (the fake's CA is not trusted).
func (r *flowRun) clientCertificateFlows(t *testing.T) {
	t.Helper()
	cert, other := fakes.NewClientCertificate(t, "tokenbroker"), fakes.NewClientCertificate(t, "other")
	r.book.add("client certificate key", cert.PrivatePart(t))
	r.book.add("another certificate's key", other.PrivatePart(t))
	srv := fakes.NewMTLS(t, leakClientID, cert.Leaf)
	provider := &tokenbrokerv1.Provider{Name: "pki", TokenUrl: srv.URL + "/token", ClientId: leakClientID,
		ClientAuthStyle: tokenbrokerv1.ClientAuthStyle_CLIENT_AUTH_STYLE_TLS_CLIENT_AUTH, ClientCertificate: string(cert.CertPEM)}
	_, err := r.in.admin.PutProvider(ctxb, &tokenbrokerv1.PutProviderRequest{Provider: provider, ClientCertificateKey: string(other.KeyPEM)})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("PutProvider with another certificate's key = %v, want InvalidArgument", err)
	}
	r.said.addErr("PutProvider(pki, another key)", err)
	put, err := r.in.admin.PutProvider(ctxb, &tokenbrokerv1.PutProviderRequest{Provider: provider, ClientCertificateKey: string(cert.KeyPEM)})
	if err != nil || !put.GetProvider().GetClientCertificateKey().GetSet() {
		t.Fatalf("PutProvider(pki) = %v, %v; want the key set", put, err)
	}
	r.said.addMsg("PutProvider(pki)", put)
	got, err := r.in.admin.GetProvider(ctxb, &tokenbrokerv1.GetProviderRequest{Name: "pki"})
	if err != nil {
		t.Fatalf("GetProvider(pki): %v", err)
	}
	r.said.addMsg("GetProvider(pki)", got)
	r.refusedToken(t, "pki") // the fake's certificate is not trusted
}

// refusedToken asks for a token of provider, which must fail, and records
// the error.
func (r *flowRun) refusedToken(t *testing.T, provider string) {
	t.Helper()
	_, err := r.in.tokens.GetToken(ctxb, &tokenbrokerv1.GetTokenRequest{Provider: provider})
	if err == nil {
		t.Fatalf("GetToken(%s) succeeded, want a refusal", provider)
	}
	r.said.addErr("GetToken("+provider+")", err)
}

// exchangeFlows exchanges the sandbox's token at a security token service
// that refuses it, quoting the subject token and the client secret.
func (r *flowRun) exchangeFlows(t *testing.T) {
	t.Helper()
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		_ = req.ParseForm()
		_, secret, _ := req.BasicAuth()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": "invalid_grant",
			"error_description": "subject token " + req.PostForm.Get("subject_token") + " of client secret " + secret + " refused"})
	}))
	t.Cleanup(ts.Close)
	put, err := r.in.admin.PutProvider(ctxb, &tokenbrokerv1.PutProviderRequest{ClientSecret: leakClientSecret, Provider: &tokenbrokerv1.Provider{
		Name: "sts", TokenUrl: ts.URL + "/token", ClientId: leakClientID,
		GrantTypes:    []tokenbrokerv1.GrantType{tokenbrokerv1.GrantType_GRANT_TYPE_TOKEN_EXCHANGE},
		TokenExchange: &tokenbrokerv1.TokenExchange{SubjectProvider: "sb", Audience: []string{"orders"}},
	}})
	if err != nil {
		t.Fatalf("PutProvider(sts): %v", err)
	}
	r.said.addMsg("PutProvider(sts)", put)
	r.refusedToken(t, "sts")
}

// echoProvider answers every token request with invalid_client, quoting
// the client secret and the password it received, and the request body.
func echoProvider(t *testing.T) string {
	t.Helper()
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		_, secret, _ := r.BasicAuth()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		_ = json.NewEncoder(w).Encode(map[string]string{
			"error": "invalid_client",
			"error_description": "client secret " + secret + " and password " + r.PostForm.Get("password") +
				" refused; refresh token " + r.PostForm.Get("refresh_token"),
		})
	}))
	t.Cleanup(ts.Close)
	return ts.URL
}

func (r *flowRun) providerErrorFlows(t *testing.T) {
	t.Helper()
	// invalid_client: a wrong secret.
	_, err := r.in.tokens.GetToken(ctxb, &tokenbrokerv1.GetTokenRequest{Provider: "wrong"})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("GetToken(wrong) = %v, want FailedPrecondition", err)
	}
	r.said.addErr("GetToken(wrong)", err)
	r.rest(t, http.MethodPost, "/v1/providers/wrong/token", testAdminKey, map[string]any{})

	// A provider that echoes the secrets it was sent in its error.
	echo := echoProvider(t)
	if _, err := r.in.admin.PutProvider(ctxb, &tokenbrokerv1.PutProviderRequest{
		Provider: &tokenbrokerv1.Provider{Name: "echo", TokenUrl: echo + "/token", ClientId: leakClientID,
			GrantTypes: []tokenbrokerv1.GrantType{tokenbrokerv1.GrantType_GRANT_TYPE_CLIENT_CREDENTIALS, tokenbrokerv1.GrantType_GRANT_TYPE_PASSWORD}},
		ClientSecret: leakEchoSecret}); err != nil {
		t.Fatalf("PutProvider(echo): %v", err)
	}
	if _, err := r.in.admin.PutAccount(ctxb, &tokenbrokerv1.PutAccountRequest{Provider: "echo", Account: "dave",
		GrantType: tokenbrokerv1.GrantType_GRANT_TYPE_PASSWORD, Username: "dave", Password: leakEchoPassword}); err != nil {
		t.Fatalf("PutAccount(echo/dave): %v", err)
	}
	for _, account := range []string{"", "dave"} {
		_, err := r.in.tokens.GetToken(ctxb, &tokenbrokerv1.GetTokenRequest{Provider: "echo", Account: account})
		if err == nil {
			t.Errorf("GetToken(echo/%s) succeeded, want the provider's error", account)
		}
		r.said.addErr("GetToken(echo)", err)
		r.rest(t, http.MethodPost, "/v1/providers/echo/token", testAdminKey, map[string]any{"account": account})
	}

	// Failing answers whose bodies carry every secret the provider knows.
	body := "client_secret=" + leakClientSecret + " password=" + leakPassword
	for _, v := range r.book.all() {
		body += " " + v
	}
	failures := []struct {
		name string
		give sandbox.Failure
	}{
		{"502 HTML", sandbox.Failure{Status: http.StatusBadGateway, ContentType: "text/html", Body: "<html><body>upstream said: " + body + "</body></html>"}},
		// A JSON error can only echo what the request carried: the client
		// secret, in every request.
		{"500 JSON", sandbox.Failure{Status: http.StatusInternalServerError, Body: `{"error":"server_error","error_description":"` + leakClientSecret + `"}`}},
		{"huge body", sandbox.Failure{Status: http.StatusOK, Body: `{"access_token":"` + strings.Repeat("A", 70<<10) + `","note":"` + body + `"}`}},
		{"malformed", sandbox.Failure{Status: http.StatusOK, Body: `{"access_token":42,"refresh_token":"` + leakPassword + `","note":"` + body + `"}`}},
		{"429", sandbox.Failure{Status: http.StatusTooManyRequests, Body: `{"error":"slow_down","error_description":"client ` + leakClientSecret + `"}`}},
	}
	for i, f := range failures {
		r.sandbox.SetFailure(&f.give)
		scope := fmt.Sprintf("fail%d", i)
		_, err := r.in.tokens.GetToken(ctxb, &tokenbrokerv1.GetTokenRequest{Provider: "sb", Scopes: []string{scope}})
		if err == nil {
			t.Errorf("GetToken during %s succeeded, want an error", f.name)
		}
		r.said.addErr("GetToken("+f.name+")", err)
		r.rest(t, http.MethodPost, "/v1/providers/sb/token", testAdminKey, map[string]any{"scopes": []string{scope + "r"}})
		// A refresh of a password grant during the failure.
		_, err = r.in.tokens.Refresh(ctxb, &tokenbrokerv1.RefreshRequest{Provider: "sb", Account: "alice-rest", Scopes: []string{scope}})
		r.said.addErr("Refresh("+f.name+")", err)
	}
	r.sandbox.SetFailure(nil)
	grants, err := r.in.admin.ListGrants(ctxb, &tokenbrokerv1.ListGrantsRequest{})
	r.said.addErr("ListGrants", err)
	r.said.addMsg("ListGrants after failures", grants)
}

// rotationFlows rotate sbrest's client secret: refused when the provider
// rejects the new one (over gRPC and REST), then stored unproven with an
// overlap, during which the old secret still gets tokens.
func (r *flowRun) rotationFlows(t *testing.T) {
	t.Helper()
	_, err := r.in.admin.RotateClientSecret(ctxb, &tokenbrokerv1.RotateClientSecretRequest{Provider: "sbrest", ClientSecret: leakRotatedSecret})
	if err == nil {
		t.Errorf("RotateClientSecret to a secret the provider refuses succeeded")
	}
	r.said.addErr("RotateClientSecret(refused)", err)
	r.rest(t, http.MethodPost, "/v1/admin/providers/sbrest:rotateClientSecret", testAdminKey,
		map[string]any{"client_secret": leakRotatedSecret})
	rot, err := r.in.admin.RotateClientSecret(ctxb, &tokenbrokerv1.RotateClientSecretRequest{Provider: "sbrest", ClientSecret: leakRotatedSecret,
		SkipValidation: true, Overlap: durationpb.New(time.Hour)})
	if err != nil {
		t.Fatalf("RotateClientSecret(skip validation, overlap): %v", err)
	}
	r.said.addMsg("RotateClientSecret", rot)
	// The provider refuses the new secret; the old one still gets tokens.
	got, err := r.in.tokens.Refresh(ctxb, &tokenbrokerv1.RefreshRequest{Provider: "sbrest"})
	if err != nil {
		t.Fatalf("Refresh(sbrest) during the overlap: %v", err)
	}
	r.token(got.GetToken())
}

// clientKeyFlows register a provider on private_key_jwt with an imported
// key (gRPC and REST), read it back, round-trip it, get a token with it,
// rotate its key (imported, generated, and one that does not parse), and
// record every private key in the book: the imported PEMs and the private
// halves the broker generated, opened from etcd.
func (r *flowRun) clientKeyFlows(t *testing.T) {
	t.Helper()
	fp := fakes.NewAssertionProvider(t, leakClientID)
	fp.SetJWKSURL(r.in.baseURL + "/v1/providers/pkj/jwks.json")
	keys := map[string]string{}
	for _, name := range []string{"imported client key", "imported client key (REST)", "rotated client key", "rotated client key (REST)"} {
		pemText, d := testkeys.NewClientKeyPEM()
		keys[name] = pemText
		r.book.add(name, testkeys.PrivatePart(pemText))
		r.book.add(name+" (d)", d)
	}
	pkj := &tokenbrokerv1.Provider{Name: "pkj", TokenUrl: fp.URL + "/token", IntrospectionUrl: fp.URL + "/introspect", ClientId: leakClientID,
		ClientAuthStyle: tokenbrokerv1.ClientAuthStyle_CLIENT_AUTH_STYLE_PRIVATE_KEY_JWT}
	put, err := r.in.admin.PutProvider(ctxb, &tokenbrokerv1.PutProviderRequest{Provider: pkj, ClientKey: keys["imported client key"]})
	if err != nil {
		t.Fatalf("PutProvider(pkj): %v", err)
	}
	r.said.addMsg("PutProvider(private_key_jwt)", put)
	r.rest(t, http.MethodPut, "/v1/admin/providers/pkjrest", testAdminKey, map[string]any{
		"provider":   map[string]any{"token_url": fp.URL + "/token", "client_id": leakClientID, "client_auth_style": "CLIENT_AUTH_STYLE_PRIVATE_KEY_JWT"},
		"client_key": keys["imported client key (REST)"],
	})
	got, err := r.in.admin.GetProvider(ctxb, &tokenbrokerv1.GetProviderRequest{Name: "pkj"})
	r.said.addErr("GetProvider(pkj)", err)
	r.said.addMsg("GetProvider(pkj)", got)
	again, err := r.in.admin.PutProvider(ctxb, &tokenbrokerv1.PutProviderRequest{Provider: got.GetProvider()})
	r.said.addErr("PutProvider(round trip)", err)
	r.said.addMsg("PutProvider(round trip)", again)
	tok, err := r.in.tokens.GetToken(ctxb, &tokenbrokerv1.GetTokenRequest{Provider: "pkj"})
	if err != nil {
		t.Fatalf("GetToken(pkj): %v", err)
	}
	r.token(tok.GetToken())
	in, err := r.in.tokens.Introspect(ctxb, &tokenbrokerv1.IntrospectRequest{Token: tok.GetToken().GetAccessToken()})
	r.said.addErr("Introspect(pkj)", err)
	r.said.addMsg("Introspect(pkj)", in)
	rot, err := r.in.admin.RotateClientKey(ctxb, &tokenbrokerv1.RotateClientKeyRequest{Provider: "pkj", ClientKey: keys["rotated client key"], Overlap: durationpb.New(time.Hour)})
	r.said.addErr("RotateClientKey(imported)", err)
	r.said.addMsg("RotateClientKey(imported)", rot)
	rot, err = r.in.admin.RotateClientKey(ctxb, &tokenbrokerv1.RotateClientKeyRequest{Provider: "pkj", Algorithm: "RS256", Overlap: durationpb.New(time.Hour)})
	r.said.addErr("RotateClientKey(generated)", err)
	r.said.addMsg("RotateClientKey(generated)", rot)
	r.rest(t, http.MethodPost, "/v1/admin/providers/pkj:rotateClientKey", testAdminKey, map[string]any{"client_key": keys["rotated client key (REST)"]})
	// A key of the wrong algorithm, and one whose PEM body is damaged.
	_, err = r.in.admin.RotateClientKey(ctxb, &tokenbrokerv1.RotateClientKeyRequest{Provider: "pkj", ClientKey: keys["rotated client key"], Algorithm: "EdDSA"})
	r.said.addErr("RotateClientKey(wrong algorithm)", err)
	damaged := strings.Replace(keys["rotated client key"], "\n", "", 2)
	damaged = damaged[:len(damaged)/2] + "!!" + damaged[len(damaged)/2:]
	_, err = r.in.admin.RotateClientKey(ctxb, &tokenbrokerv1.RotateClientKeyRequest{Provider: "pkj", ClientKey: damaged})
	r.said.addErr("RotateClientKey(damaged)", err)
	if _, err := r.in.tokens.Refresh(ctxb, &tokenbrokerv1.RefreshRequest{Provider: "pkj"}); err != nil {
		t.Errorf("Refresh(pkj) after the rotations: %v", err)
	}
	r.rest(t, http.MethodGet, "/v1/providers/pkj/jwks.json", "", nil)
	r.rest(t, http.MethodGet, "/.well-known/jwks.json", "", nil)
	r.serviceAccountFlows(t)
	for name, d := range storedClientKeys(t, r.env, testkeys.Keyring()) {
		r.book.add(name, d)
	}
}

// serviceAccountFlows register Google service accounts from their key
// files (gRPC and REST, and a damaged one), get a token through the
// JWT-bearer grant, and read the providers back.
func (r *flowRun) serviceAccountFlows(t *testing.T) {
	t.Helper()
	var n atomic.Int64
	google := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		_ = req.ParseForm()
		tok := fmt.Sprintf("ya29.leak-%d-%s", n.Add(1), strings.Repeat("x", 16))
		r.book.add("issued access token", tok)
		r.book.add("sent assertion", req.PostForm.Get("assertion"))
		w.Header().Set("Content-Type", "application/json")
		_, _ = fmt.Fprintf(w, `{"access_token":%q,"token_type":"Bearer","expires_in":3599}`, tok)
	}))
	t.Cleanup(google.Close)
	files := map[string][]byte{}
	for _, name := range []string{"gsa", "gsarest"} {
		file, _, private := testkeys.NewServiceAccountKey("kid-"+name, google.URL+"/token")
		files[name] = file
		var pemText struct {
			PrivateKey string `json:"private_key"`
		}
		_ = json.Unmarshal(file, &pemText)
		r.book.add("service account key "+name, testkeys.PrivatePart(pemText.PrivateKey))
		for _, m := range private {
			r.book.add("service account key "+name+" (member)", m)
		}
	}
	put, err := r.in.admin.PutProvider(ctxb, &tokenbrokerv1.PutProviderRequest{
		Provider: &tokenbrokerv1.Provider{Name: "gsa", Preset: "google-service-account"}, ServiceAccountKey: string(files["gsa"])})
	if err != nil {
		t.Fatalf("PutProvider(google-service-account): %v", err)
	}
	r.said.addMsg("PutProvider(google-service-account)", put)
	r.rest(t, http.MethodPut, "/v1/admin/providers/gsarest", testAdminKey, map[string]any{
		"provider": map[string]any{"preset": "google-service-account"}, "service_account_key": string(files["gsarest"])})
	damaged := strings.Replace(string(files["gsa"]), "MII", "MIX", 1)
	_, err = r.in.admin.PutProvider(ctxb, &tokenbrokerv1.PutProviderRequest{
		Provider: &tokenbrokerv1.Provider{Name: "gsabad", Preset: "google-service-account"}, ServiceAccountKey: damaged})
	r.said.addErr("PutProvider(damaged service account key)", err)
	tok, err := r.in.tokens.GetToken(ctxb, &tokenbrokerv1.GetTokenRequest{Provider: "gsa", Scopes: []string{"https://www.googleapis.com/auth/cloud-platform"}})
	if err != nil {
		t.Fatalf("GetToken(gsa): %v", err)
	}
	r.token(tok.GetToken())
	r.restToken(t, "REST GetToken(gsarest)", "/v1/providers/gsarest/token", map[string]any{"scopes": []string{"https://www.googleapis.com/auth/drive"}})
	got, err := r.in.admin.GetProvider(ctxb, &tokenbrokerv1.GetProviderRequest{Name: "gsa"})
	r.said.addErr("GetProvider(gsa)", err)
	r.said.addMsg("GetProvider(gsa)", got)
	r.rest(t, http.MethodGet, "/v1/admin/providers/gsarest", testAdminKey, nil)
}

// storedClientKeys opens the private client keys of every provider record
// and returns their private members (d, and RSA's p, q, dp, dq, qi) by
// "<etcd key> <kid> <member>".
func storedClientKeys(t *testing.T, e *env, keys *seal.Keyring) map[string]string {
	t.Helper()
	cli := e.etcd.Client(t, nil)
	resp, err := cli.Get(ctxb, broker.DefaultPrefix+"providers/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, kv := range resp.Kvs {
		var rec struct {
			ClientKeys []struct {
				KeyID   string `json:"kid"`
				Private []byte `json:"private_jwk_sealed"`
			} `json:"client_keys"`
		}
		if json.Unmarshal(kv.Value, &rec) != nil {
			continue
		}
		for _, k := range rec.ClientKeys {
			plain, err := keys.Open(string(kv.Key)+"#client_key/"+k.KeyID, k.Private)
			if err != nil {
				t.Fatalf("open client key %s of %s: %v", k.KeyID, kv.Key, err)
			}
			var jwk map[string]any
			if err := json.Unmarshal(plain, &jwk); err != nil {
				t.Fatalf("client key %s of %s is not a JWK", k.KeyID, kv.Key)
			}
			for _, m := range []string{"d", "p", "q", "dp", "dq", "qi"} {
				if v, ok := jwk[m].(string); ok {
					out[fmt.Sprintf("%s %s %s", kv.Key, k.KeyID, m)] = v
				}
			}
		}
	}
	if len(out) < 4 {
		t.Errorf("found %d private client key members in etcd, want those of the imported and generated keys", len(out))
	}
	return out
}

func (r *flowRun) apiKeyFlows(t *testing.T) {
	t.Helper()
	created, err := r.in.admin.CreateApiKey(ctxb, &tokenbrokerv1.CreateApiKeyRequest{Identity: "svc-reader", Description: "leak test"})
	if err != nil {
		t.Fatalf("CreateApiKey: %v", err)
	}
	key := created.GetKey()
	r.book.add("created API key", leakSecretPart(key))
	shown := proto.Clone(created).(*tokenbrokerv1.CreateApiKeyResponse)
	shown.Key = "" // the key is the answer's purpose, shown once
	r.said.addMsg("CreateApiKey", shown)
	code, raw := restDo(t, http.DefaultClient, http.MethodPost, r.in.baseURL+"/v1/admin/apikeys",
		http.Header{"Authorization": {"Bearer " + testAdminKey}}, mustJSON(t, map[string]any{"identity": "svc-rest"}))
	var restCreated map[string]any
	if code != http.StatusOK || json.Unmarshal(raw, &restCreated) != nil {
		t.Fatalf("REST CreateApiKey = %d %s", code, raw)
	}
	restKey, _ := restCreated["key"].(string)
	r.book.add("created API key (REST)", leakSecretPart(restKey))
	delete(restCreated, "key")
	r.said.add("REST CreateApiKey", fmt.Sprint(restCreated))
	list, err := r.in.admin.ListApiKeys(ctxb, &tokenbrokerv1.ListApiKeysRequest{})
	r.said.addErr("ListApiKeys", err)
	r.said.addMsg("ListApiKeys", list)
	r.rest(t, http.MethodGet, "/v1/admin/apikeys", testAdminKey, nil)

	// The new key authenticates, but may not get sb's tokens, nor admin.
	tokens, admin, _ := r.in.clientAs(t, nil, key)
	_, err = tokens.GetToken(ctxb, &tokenbrokerv1.GetTokenRequest{Provider: "sb"})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("GetToken as svc-reader = %v, want PermissionDenied", err)
	}
	r.said.addErr("GetToken(denied)", err)
	_, err = admin.ListGrants(ctxb, &tokenbrokerv1.ListGrantsRequest{})
	r.said.addErr("ListGrants(denied)", err)
	r.rest(t, http.MethodPost, "/v1/providers/sb/token", key, map[string]any{})

	if _, err := r.in.admin.RetireApiKey(ctxb, &tokenbrokerv1.RetireApiKeyRequest{Id: created.GetApiKey().GetId()}); err != nil {
		t.Fatalf("RetireApiKey: %v", err)
	}
	if id, ok := apikey.ParseID(restKey); ok {
		r.rest(t, http.MethodDelete, "/v1/admin/apikeys/"+id, testAdminKey, nil)
	}
	// Retired keys no longer authenticate (the store's watch applies the
	// retirement shortly).
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err = tokens.GetToken(ctxb, &tokenbrokerv1.GetTokenRequest{Provider: "elsewhere"})
		if status.Code(err) == codes.Unauthenticated || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("GetToken with a retired key = %v, want Unauthenticated", err)
	}
	r.said.addErr("GetToken(retired key)", err)
	r.rest(t, http.MethodPost, "/v1/providers/sb/token", restKey, map[string]any{})
}

// authFailureFlows presents credentials that are no API key, over gRPC and
// REST: a forged key, a secret pasted as a key, a password in Basic.
func (r *flowRun) authFailureFlows(t *testing.T) {
	t.Helper()
	forged := "tbk_" + testAdminKeyID + "_" + leakBogusKey + strings.Repeat("x", 43-len(leakBogusKey))
	r.book.add("forged API key", leakSecretPart(forged))
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte(leakUser+":"+leakPassword))
	r.book.add("Basic credentials", strings.TrimPrefix(basic, "Basic "))
	for _, auth := range []string{"Bearer " + forged, "Bearer " + leakClientSecret, "Bearer " + leakBogusKey, basic} {
		conn, err := grpc.NewClient(r.in.grpcAddr, r.in.dialOptions(nil, "")...)
		if err != nil {
			t.Fatal(err)
		}
		md := headerCreds{"authorization": auth}
		c := tokenbrokerv1.NewTokenBrokerServiceClient(conn)
		_, err = c.GetToken(ctxb, &tokenbrokerv1.GetTokenRequest{Provider: "sb"}, grpc.PerRPCCredentials(md))
		if status.Code(err) != codes.Unauthenticated {
			t.Errorf("GetToken with %q… = %v, want Unauthenticated", auth[:10], err)
		}
		r.said.addErr("GetToken(bad credentials)", err)
		_, err = tokenbrokerv1.NewAdminServiceClient(conn).PutProvider(ctxb, &tokenbrokerv1.PutProviderRequest{
			Provider: r.sbProvider("sb", r.provider.url), ClientSecret: leakClientSecret}, grpc.PerRPCCredentials(md))
		r.said.addErr("PutProvider(bad credentials)", err)
		conn.Close()
		code, raw := restDo(t, http.DefaultClient, http.MethodPut, r.in.baseURL+"/v1/admin/providers/sb",
			http.Header{"Authorization": {auth}}, mustJSON(t, map[string]any{"provider": map[string]any{}, "client_secret": leakClientSecret}))
		r.said.add(fmt.Sprintf("REST PutProvider(bad credentials) %d", code), string(raw))
	}
	// Two authorization values; no credentials at all.
	code, raw := restDo(t, http.DefaultClient, http.MethodPost, r.in.baseURL+"/v1/providers/sb/token",
		http.Header{"Authorization": {"Bearer " + testAdminKey, "Bearer " + leakBogusKey}}, []byte(`{}`))
	r.said.add(fmt.Sprintf("REST two authorizations %d", code), string(raw))
	code, raw = restDo(t, http.DefaultClient, http.MethodPost, r.in.baseURL+"/v1/providers/sb/token", nil, []byte(`{}`))
	r.said.add(fmt.Sprintf("REST no credentials %d", code), string(raw))
}

// headerCreds sends fixed metadata with each call.
type headerCreds map[string]string

func (h headerCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return h, nil
}

func (headerCreds) RequireTransportSecurity() bool { return false }

// panicFlows: nothing a caller sends makes a configured server panic, so a
// server is built without a broker (a wiring mistake): every token call
// panics in the handler, behind the same interceptor chain, and is
// recovered. The requests carry tokens.
func (r *flowRun) panicFlows(t *testing.T) {
	t.Helper()
	keyStore, err := apikey.NewStore(ctxb, r.env.etcd.Client(t, nil), broker.DefaultPrefix, testkeys.Keyring(), r.log)
	if err != nil {
		t.Fatal(err)
	}
	defer keyStore.Close()
	if err := keyStore.SetStatic([]apikey.StaticKey{{ID: testAdminKeyID, Identity: testAdminIdentity, SHA256: testAdminKeySHA}}); err != nil {
		t.Fatal(err)
	}
	pol, err := policy.New([]policy.Rule{testAdminRule})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Logger: r.log,
		Auth: server.AuthConfig{Keys: keyStore, Policy: pol}})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	defer func() {
		ctx, cancel := context.WithTimeout(ctxb, 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}()
	stale := ""
	for v, name := range r.book.all() {
		if name == "issued access token" {
			stale = v
			break
		}
	}
	in := &instance{grpcAddr: srv.GRPCAddr()}
	tokens, _, _ := in.clientAs(t, nil, testAdminKey)
	_, err = tokens.Refresh(ctxb, &tokenbrokerv1.RefreshRequest{Provider: "sb", StaleAccessToken: stale})
	if status.Code(err) != codes.Internal {
		t.Errorf("Refresh on a server without a broker = %v, want Internal (a recovered panic)", err)
	}
	r.said.addErr("Refresh(panic)", err)
	_, err = tokens.Introspect(ctxb, &tokenbrokerv1.IntrospectRequest{Token: stale})
	r.said.addErr("Introspect(panic)", err)
	code, raw := restDo(t, http.DefaultClient, http.MethodPost, "http://"+srv.HTTPAddr()+"/v1/providers/sb/token:refresh",
		http.Header{"Authorization": {"Bearer " + testAdminKey}}, mustJSON(t, map[string]any{"stale_access_token": stale}))
	r.said.add(fmt.Sprintf("REST Refresh(panic) %d", code), string(raw))
	if code != http.StatusInternalServerError {
		t.Errorf("REST Refresh on a server without a broker = %d, want 500", code)
	}
	panics := 0
	for _, e := range r.logs.All() {
		if e.Message == "panic in handler" {
			panics++
		}
	}
	if panics < 3 {
		t.Errorf("logged %d recovered panics, want 3", panics)
	}
}

// revocationFlows: the provider revokes a lineage (invalid_grant on the
// next refresh); an admin revokes a grant and deletes a provider.
func (r *flowRun) revocationFlows(t *testing.T) {
	t.Helper()
	for v, name := range r.book.all() {
		if name == "issued refresh token" {
			r.sandbox.RevokeGrant(v) // revokes every lineage whose token this is
		}
	}
	for _, account := range []string{"carol", leakUser} {
		got, err := r.in.tokens.Refresh(ctxb, &tokenbrokerv1.RefreshRequest{Provider: "sb", Account: account})
		r.said.addErr("Refresh(revoked "+account+")", err)
		if err == nil {
			r.token(got.GetToken())
		}
	}
	grants, err := r.in.admin.ListGrants(ctxb, &tokenbrokerv1.ListGrantsRequest{Provider: "sb"})
	r.said.addErr("ListGrants", err)
	r.said.addMsg("ListGrants after revocation", grants)
	_, err = r.in.admin.RevokeGrant(ctxb, &tokenbrokerv1.RevokeGrantRequest{Provider: "sb", Account: "alice-rest"})
	r.said.addErr("RevokeGrant", err)
	r.rest(t, http.MethodDelete, "/v1/admin/providers/wrong", testAdminKey, nil)
	_, err = r.in.admin.DeleteProvider(ctxb, &tokenbrokerv1.DeleteProviderRequest{Name: "wrong"})
	r.said.addErr("DeleteProvider(again)", err)
}

// openAll opens every sealed value under the prefix with keys and returns
// the plaintexts by "<etcd key>#<field>".
func openAll(t *testing.T, e *env, keys *seal.Keyring) map[string]string {
	t.Helper()
	cli := e.etcd.Client(t, nil)
	resp, err := cli.Get(ctxb, broker.DefaultPrefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, kv := range resp.Kvs {
		for field, sealed := range sealedMembers(kv.Value) {
			plain, err := keys.Open(string(kv.Key)+"#"+field, sealed)
			if err != nil {
				t.Fatalf("open %s#%s: %v", kv.Key, field, err)
			}
			out[string(kv.Key)+"#"+field] = string(plain)
		}
	}
	return out
}

// sealedMembers returns a record's "<field>_sealed" members, decoded, by
// field.
func sealedMembers(value []byte) map[string][]byte {
	var obj map[string]json.RawMessage
	if !bytes.HasPrefix(value, []byte("{")) || json.Unmarshal(value, &obj) != nil {
		return nil
	}
	out := map[string][]byte{}
	for name, raw := range obj {
		var b []byte
		if field, ok := strings.CutSuffix(name, "_sealed"); ok && json.Unmarshal(raw, &b) == nil && len(b) > 0 {
			out[field] = b
		}
	}
	return out
}

// Acceptance 2: with every flow run, no log line, error or admin response
// holds a secret or a token, or any nine characters of one.
func TestNoSecretLeaksIntoLogsErrorsOrAdminResponses(t *testing.T) {
	r := runFlows(t)
	// Everything the broker keeps sealed is a secret too: the current
	// refresh tokens, the PKCE verifier, the previous client secret.
	for name, plain := range openAll(t, r.env, testkeys.Keyring()) {
		r.book.addStored(name, plain)
	}
	book := r.book.all()
	for _, kind := range []string{"issued access token", "issued refresh token", "issued id_token", "sent code_verifier", "authorization code", "created API key"} {
		found := false
		for _, name := range book {
			found = found || name == kind
		}
		if !found {
			t.Errorf("no %s was captured: the flows must exercise it", kind)
		}
	}
	r.stop() // flushes the last log lines

	logs := renderLogs(r.logs)
	if r.logs.Len() < 50 {
		t.Errorf("observed %d log entries, want the flows' (at least 50)", r.logs.Len())
	}
	for _, leak := range findLeaks(logs, book) {
		t.Errorf("log leaks %s", leak)
	}
	for _, leak := range findLeaks(r.said.String(), book) {
		t.Errorf("error or admin response leaks %s", leak)
	}
	// The audit log says what changed and by whom.
	audits := 0
	for _, e := range r.logs.FilterLoggerName(server.AuditLoggerName).All() {
		if e.Message == "admin change" {
			audits++
		}
	}
	if audits < 10 {
		t.Errorf("audit events = %d, want one per admin change (at least 10)", audits)
	}
}

// A provider that quotes part of the secrets it was sent (say, the first
// characters, to help someone spot a typo): every run of 8 or more
// characters of a secret is redacted, so no part passes into errors and
// logs.
func TestProviderQuotingPartOfASecretLeaksNothing(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	e := &env{t: t, etcd: etcdtest.Start(t), clock: &fakeClock{now: time.Now()}}
	in, stop := startSealed(t, e, testkeys.Keyring(), zap.New(core))
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		_, secret, _ := r.BasicAuth()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": "invalid_client",
			"error_description": "client secret starting " + secret[:12] + "... and password " + r.PostForm.Get("password")[:12] + "... refused"})
	}))
	t.Cleanup(ts.Close)
	if _, err := in.admin.PutProvider(ctxb, &tokenbrokerv1.PutProviderRequest{
		Provider:     &tokenbrokerv1.Provider{Name: "quoting", TokenUrl: ts.URL + "/token", ClientId: leakClientID, GrantTypes: []tokenbrokerv1.GrantType{tokenbrokerv1.GrantType_GRANT_TYPE_PASSWORD}},
		ClientSecret: leakEchoSecret}); err != nil {
		t.Fatal(err)
	}
	if _, err := in.admin.PutAccount(ctxb, &tokenbrokerv1.PutAccountRequest{Provider: "quoting", Account: "dave",
		GrantType: tokenbrokerv1.GrantType_GRANT_TYPE_PASSWORD, Username: "dave", Password: leakEchoPassword}); err != nil {
		t.Fatal(err)
	}
	said := &transcript{}
	_, err := in.tokens.GetToken(ctxb, &tokenbrokerv1.GetTokenRequest{Provider: "quoting", Account: "dave"})
	said.addErr("GetToken", err)
	grants, _ := in.admin.ListGrants(ctxb, &tokenbrokerv1.ListGrantsRequest{Provider: "quoting"})
	said.addMsg("ListGrants", grants)
	stop()
	book := map[string]string{leakEchoSecret: "client secret", leakEchoPassword: "password"}
	for _, leak := range findLeaks(renderLogs(logs)+said.String(), book) {
		t.Errorf("leaks %s", leak)
	}
}
