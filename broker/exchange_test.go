package broker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/oauth"
	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
)

// exchangeProvider is an RFC 8693 security token service: /token exchanges
// any subject token for a new access token; /upstream issues the subject
// tokens (client_credentials).
type exchangeProvider struct {
	*httptest.Server
	mu    sync.Mutex
	forms []url.Values // what /token received
	auths []string
	n     int
}

func newExchangeProvider(t *testing.T) *exchangeProvider {
	t.Helper()
	f := &exchangeProvider{}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		f.mu.Lock()
		defer f.mu.Unlock()
		f.n++
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.URL.Path == "/upstream" && r.PostForm.Get("grant_type") == "client_credentials":
			_, _ = fmt.Fprintf(w, `{"access_token":"subject-%d","token_type":"Bearer","expires_in":3600}`, f.n)
		case r.URL.Path == "/token" && r.PostForm.Get("grant_type") == string(GrantTokenExchange) && r.PostForm.Get("subject_token") != "":
			f.forms = append(f.forms, r.PostForm)
			f.auths = append(f.auths, r.Header.Get("Authorization"))
			_, _ = fmt.Fprintf(w, `{"access_token":"exchanged-%d","issued_token_type":%q,"token_type":"Bearer","expires_in":600}`, f.n, TokenTypeAccessToken)
		default:
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"error":"unsupported_grant_type"}`))
		}
	}))
	t.Cleanup(f.Close)
	return f
}

func (f *exchangeProvider) exchanges() ([]url.Values, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]url.Values(nil), f.forms...), append([]string(nil), f.auths...)
}

// TestTokenExchange: a provider on token exchange sends the subject token
// (another provider's, through the broker, or a file's), its type, the
// requested token type, audience, resource and scope; its tokens are
// cached per scope set, and a changed audience drops them.
func TestTokenExchange(t *testing.T) {
	e := etcdtest.Start(t)
	b := newTestBroker(t, e)
	f := newExchangeProvider(t)
	ctx := context.Background()
	if _, err := b.PutProvider(ctx, Provider{Name: "upstream", TokenURL: f.URL + "/upstream", ClientID: "up", ClientAuth: oauth.AuthPost}, "up-secret"); err != nil {
		t.Fatalf("PutProvider(upstream): %v", err)
	}
	sts := Provider{Name: "sts", TokenURL: f.URL + "/token", ClientID: "sts-client", ClientAuth: oauth.AuthBasic,
		GrantTypes: []GrantType{GrantTokenExchange}, TokenExchange: &TokenExchange{
			SubjectProvider: "upstream", RequestedTokenType: TokenTypeAccessToken,
			Audience: []string{"orders", "billing"}, Resource: []string{"https://orders.example/api"},
		}}
	if _, err := b.PutProvider(ctx, sts, "sts-secret"); err != nil {
		t.Fatalf("PutProvider(sts): %v", err)
	}

	read, err := b.GetToken(ctx, TokenRequest{Provider: "sts", Scopes: []string{"orders.read"}})
	if err != nil || !strings.HasPrefix(read.AccessToken, "exchanged-") {
		t.Fatalf("GetToken(sts) = %v, %v; want an exchanged token", read, err)
	}
	upstream, err := b.GetToken(ctx, TokenRequest{Provider: "upstream"})
	if err != nil {
		t.Fatalf("GetToken(upstream): %v", err)
	}
	forms, auths := f.exchanges()
	if len(forms) != 1 {
		t.Fatalf("the STS got %d exchanges, want 1", len(forms))
	}
	want := url.Values{
		"grant_type": {string(GrantTokenExchange)}, "subject_token": {upstream.AccessToken}, "subject_token_type": {TokenTypeAccessToken},
		"requested_token_type": {TokenTypeAccessToken}, "audience": {"orders", "billing"}, "resource": {"https://orders.example/api"},
		"scope": {"orders.read"},
	}
	if got := forms[0]; got.Encode() != want.Encode() {
		t.Errorf("exchange form = %v, want %v", got, want)
	}
	if !strings.HasPrefix(auths[0], "Basic ") {
		t.Errorf("exchange Authorization = %q, want the client's Basic credentials", auths[0])
	}

	again, err := b.GetToken(ctx, TokenRequest{Provider: "sts", Scopes: []string{"orders.read"}})
	if err != nil || again.AccessToken != read.AccessToken {
		t.Errorf("GetToken(sts) again = %v, %v; want the cached %s", again, err, read.AccessToken)
	}
	write, err := b.GetToken(ctx, TokenRequest{Provider: "sts", Scopes: []string{"orders.write"}})
	if err != nil || write.AccessToken == read.AccessToken {
		t.Errorf("GetToken(sts, orders.write) = %v, %v; want a token of its own", write, err)
	}
	if forms, _ = f.exchanges(); len(forms) != 2 || forms[1].Get("scope") != "orders.write" {
		t.Errorf("the STS got %d exchanges, want 2: one per scope set", len(forms))
	}

	sts.TokenExchange.Audience = []string{"orders"}
	if _, err := b.PutProvider(ctx, sts, ""); err != nil {
		t.Fatalf("PutProvider(sts, another audience): %v", err)
	}
	var moved *TokenRecord
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		// The put dropped the cached tokens in etcd; memory follows the watch.
		if moved, err = b.GetToken(ctx, TokenRequest{Provider: "sts", Scopes: []string{"orders.read"}}); err != nil || moved.AccessToken != read.AccessToken || time.Now().After(deadline) {
			break
		}
	}
	if err != nil || moved.AccessToken == read.AccessToken {
		t.Errorf("GetToken(sts) after the audience changed = %v, %v; want a new exchange", moved, err)
	}
	if forms, _ = f.exchanges(); len(forms) != 3 || strings.Join(forms[2]["audience"], ",") != "orders" {
		t.Errorf("exchange after the audience changed: %v, want audience orders", forms[len(forms)-1])
	}

	// A file subject token (a projected service-account token) is read at
	// each exchange.
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte("eyJ.projected.one\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := b.PutProvider(ctx, Provider{Name: "sts-file", TokenURL: f.URL + "/token", ClientID: "sts-client", ClientAuth: oauth.AuthBasic,
		GrantTypes: []GrantType{GrantTokenExchange}, TokenExchange: &TokenExchange{SubjectTokenFile: file}}, "sts-secret"); err != nil {
		t.Fatalf("PutProvider(sts-file): %v", err)
	}
	first, err := b.GetToken(ctx, TokenRequest{Provider: "sts-file"})
	if err != nil {
		t.Fatalf("GetToken(sts-file): %v", err)
	}
	if err := os.WriteFile(file, []byte("eyJ.projected.two"), 0o600); err != nil {
		t.Fatal(err)
	}
	second, err := b.Refresh(ctx, TokenRequest{Provider: "sts-file"}, first.AccessToken)
	if err != nil {
		t.Fatalf("Refresh(sts-file): %v", err)
	}
	forms, _ = f.exchanges()
	if got := forms[len(forms)-2:]; got[0].Get("subject_token") != "eyJ.projected.one" || got[1].Get("subject_token") != "eyJ.projected.two" ||
		got[0].Get("subject_token_type") != TokenTypeJWT || got[0].Has("audience") || got[0].Has("requested_token_type") {
		t.Errorf("file exchanges = %v, want the file's token as it was at each, of type jwt, nothing else asked", got)
	}

	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Refresh(ctx, TokenRequest{Provider: "sts-file"}, second.AccessToken); !errors.Is(err, ErrSubjectToken) {
		t.Errorf("Refresh without the subject token file = %v, want ErrSubjectToken", err)
	}
}

func TestTokenExchangeValidation(t *testing.T) {
	tests := []struct {
		name string
		give TokenExchange
		want string
	}{
		{name: "two sources", give: TokenExchange{SubjectProvider: "up", SubjectTokenFile: "/t"}, want: "exactly one of subject_provider and subject_token_file"},
		{name: "no source", give: TokenExchange{}, want: "exactly one of"},
		{name: "itself", give: TokenExchange{SubjectProvider: "sts"}, want: "subject_provider is the provider itself"},
		{name: "account without provider", give: TokenExchange{SubjectTokenFile: "/t", SubjectAccount: "a"}, want: "go with subject_provider"},
		{name: "relative resource", give: TokenExchange{SubjectTokenFile: "/t", Resource: []string{"/orders"}}, want: "is not an absolute URI"},
		{name: "token type not a URI", give: TokenExchange{SubjectTokenFile: "/t", RequestedTokenType: "access_token"}, want: "requested_token_type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x := tt.give
			p := Provider{Name: "sts", TokenURL: "https://sts.example/token", ClientID: "c", ClientAuth: oauth.AuthBasic,
				GrantTypes: []GrantType{GrantTokenExchange}, TokenExchange: &x}
			err := p.Validate()
			if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate = %v, want InvalidArgument saying %q", err, tt.want)
			}
		})
	}
}
