package broker

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/broker/oauth"
	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
	"github.com/tokenbroker/tokenbroker/internal/fakes"
)

func TestPutProviderCreateThenUpdate(t *testing.T) {
	e := etcdtest.Start(t)
	clock := newClock()
	b := newTestBroker(t, e, withClock(clock))
	ctx := context.Background()
	p := Provider{Name: "mediahound", TokenURL: "https://api.mediahound.com/1.3/security/oauth/token",
		ClientID: "MyClientId", ClientAuth: oauth.AuthBasicAndPost, DefaultScopes: []string{"public"}}

	created := putProvider(t, b, p, "first-secret")
	if !created.CreateTime.Equal(t0) || !created.UpdateTime.Equal(t0) || !created.SecretUpdateTime.Equal(t0) {
		t.Errorf("created: create %v, update %v, secret update %v; want all %v", created.CreateTime, created.UpdateTime, created.SecretUpdateTime, t0)
	}
	if b.Fingerprint(created.ClientSecret) != b.Fingerprint("first-secret") || b.Fingerprint(created.ClientSecret) == "" {
		t.Errorf("created: fingerprint %q, want %q", b.Fingerprint(created.ClientSecret), b.Fingerprint("first-secret"))
	}

	// An update without a secret keeps the stored one.
	clock.Advance(time.Hour)
	t1 := clock.Now()
	p.DefaultScopes = []string{"public", "search"}
	updated := putProvider(t, b, p, "")
	stored, err := b.GetProvider(ctx, "mediahound")
	if err != nil {
		t.Fatal(err)
	}
	for _, got := range []*Provider{updated, stored} {
		if got.ClientSecret != "first-secret" || b.Fingerprint(got.ClientSecret) != b.Fingerprint(created.ClientSecret) {
			t.Errorf("after an update without a secret: fingerprint %q, want the old %q", b.Fingerprint(got.ClientSecret), b.Fingerprint(created.ClientSecret))
		}
		if !got.SecretUpdateTime.Equal(t0) || !got.CreateTime.Equal(t0) || !got.UpdateTime.Equal(t1) {
			t.Errorf("after an update without a secret: secret update %v, create %v, update %v; want %v, %v, %v",
				got.SecretUpdateTime, got.CreateTime, got.UpdateTime, t0, t0, t1)
		}
		if !slices.Equal(got.DefaultScopes, p.DefaultScopes) {
			t.Errorf("after an update: default scopes %q, want %q", got.DefaultScopes, p.DefaultScopes)
		}
	}

	// A new secret changes the fingerprint and its time.
	clock.Advance(time.Hour)
	t2 := clock.Now()
	rotated := putProvider(t, b, p, "second-secret")
	stored, err = b.GetProvider(ctx, "mediahound")
	if err != nil {
		t.Fatal(err)
	}
	for _, got := range []*Provider{rotated, stored} {
		if b.Fingerprint(got.ClientSecret) != b.Fingerprint("second-secret") || b.Fingerprint(got.ClientSecret) == b.Fingerprint(created.ClientSecret) {
			t.Errorf("after a rotation: fingerprint %q, want %q (was %q)", b.Fingerprint(got.ClientSecret), b.Fingerprint("second-secret"), b.Fingerprint(created.ClientSecret))
		}
		if !got.SecretUpdateTime.Equal(t2) || !got.CreateTime.Equal(t0) {
			t.Errorf("after a rotation: secret update %v, create %v; want %v, %v", got.SecretUpdateTime, got.CreateTime, t2, t0)
		}
	}

	// The same secret again is no rotation.
	clock.Advance(time.Hour)
	again := putProvider(t, b, p, "second-secret")
	if !again.SecretUpdateTime.Equal(t2) {
		t.Errorf("after putting the same secret: secret update %v, want %v", again.SecretUpdateTime, t2)
	}
}

func TestPutProviderInvalid(t *testing.T) {
	e := etcdtest.Start(t)
	b := newTestBroker(t, e)
	inspect := e.Client(t, nil)
	bad := Provider{
		Name:                 "Media Hound",
		AuthorizeURL:         "ftp://example.com/auth",
		IntrospectionURL:     "https://user:pw@example.com/introspect",
		GrantTokenURLs:       map[GrantType]string{"implicit": "https://example.com/t"},
		ClientAuth:           oauth.AuthStyle(99),
		GrantTypes:           []GrantType{GrantClientCredentials, "device_code"},
		DefaultScopes:        []string{`bad"scope`},
		TokenParams:          map[string]string{"client_secret": "x", "audience": "api"},
		DefaultTokenLifetime: -time.Second,
	}

	_, err := b.PutProvider(context.Background(), bad, "secret")

	if !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("PutProvider error = %v, want ErrInvalidArgument", err)
	}
	// Every problem is reported at once.
	for _, want := range []string{
		"provider name",
		"token_url is required",
		"authorize_url: scheme must be",
		"introspection_url: credentials in the URL",
		`grant_token_urls: unknown grant type "implicit"`,
		"client_id is required",
		"client_auth_style 99",
		`grant_types: unknown grant type "device_code"`,
		"default_scopes:",
		`token_params: "client_secret" is set by the broker`,
		"default_token_lifetime must not be negative",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("PutProvider error = %q, want it to contain %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "audience") {
		t.Errorf("PutProvider error = %q, want no complaint about the allowed token param audience", err)
	}
	for _, prefix := range []string{providersPrefix, tokensPrefix, grantsPrefix} {
		if kvs := etcdKeys(t, inspect, DefaultPrefix+prefix); len(kvs) != 0 {
			t.Errorf("etcd holds %v after an invalid PutProvider, want nothing", kvs)
		}
	}
}

func TestProviderValidate(t *testing.T) {
	valid := Provider{Name: "mediahaven", TokenURL: "https://integration.mediahaven.com/auth/oauth2/token",
		ClientID: "882rgLgNTSqwBSnUUbC3qRiUfMGhorzZ", ClientAuth: oauth.AuthPost}
	tests := []struct {
		name string
		give func(p *Provider)
		want string // "" for valid
	}{
		{name: "valid", give: func(*Provider) {}},
		{name: "password grant URL", give: func(p *Provider) {
			p.GrantTypes = []GrantType{GrantPassword, GrantRefreshToken, GrantAuthorizationCode}
			p.GrantTokenURLs = map[GrantType]string{GrantPassword: "https://integration.mediahaven.com/auth/ropc.php"}
		}},
		{name: "loopback http", give: func(p *Provider) { p.TokenURL = "http://127.0.0.1:8080/token" }},
		{name: "name with dots and dashes", give: func(p *Provider) { p.Name = "media-haven.eu_1" }},
		{name: "name of 63", give: func(p *Provider) { p.Name = strings.Repeat("m", 63) }},
		{name: "name of 64", give: func(p *Provider) { p.Name = strings.Repeat("m", 64) }, want: "longer than 63"},
		{name: "name starts with dash", give: func(p *Provider) { p.Name = "-mh" }, want: "provider name"},
		{name: "no token url", give: func(p *Provider) { p.TokenURL = "" }, want: "token_url is required"},
		{name: "relative token url", give: func(p *Provider) { p.TokenURL = "/token" }, want: "token_url: scheme"},
		{name: "no host", give: func(p *Provider) { p.TokenURL = "https:///token" }, want: "token_url: host is missing"},
		{name: "no auth style", give: func(p *Provider) { p.ClientAuth = 0 }, want: "client_auth_style"},
		{name: "reserved param", give: func(p *Provider) { p.TokenParams = map[string]string{"grant_type": "x"} }, want: "set by the broker"},
		{name: "bad grant url", give: func(p *Provider) {
			p.GrantTokenURLs = map[GrantType]string{GrantPassword: "mailto:x@example.com"}
		}, want: "grant_token_urls[password]"},
		{name: "token url of 2048", give: func(p *Provider) {
			p.TokenURL = "https://example.com/" + strings.Repeat("t", MaxURLLen-len("https://example.com/"))
		}},
		{name: "token url of 2049", give: func(p *Provider) {
			p.TokenURL = "https://example.com/" + strings.Repeat("t", MaxURLLen+1-len("https://example.com/"))
		}, want: "token_url: the URL is 2049 bytes, longer than 2048"},
		{name: "client id of 513", give: func(p *Provider) { p.ClientID = strings.Repeat("c", 513) }, want: "client_id is 513 bytes, longer than 512"},
		{name: "client secret of 4097", give: func(p *Provider) { p.ClientSecret = strings.Repeat("s", 4097) }, want: "client_secret is 4097 bytes, longer than 4096"},
		{name: "32 token params", give: func(p *Provider) { p.TokenParams = numbered(32, "v") }},
		{name: "33 token params", give: func(p *Provider) { p.TokenParams = numbered(33, "v") }, want: "token_params has 33 entries, more than 32"},
		{name: "token param value of 2049", give: func(p *Provider) { p.TokenParams = map[string]string{"audience": strings.Repeat("a", 2049)} },
			want: `token_params["audience"]: the value is 2049 bytes, longer than 2048`},
		{name: "token param key of 129", give: func(p *Provider) { p.TokenParams = map[string]string{strings.Repeat("k", 129): "v"} },
			want: `token_params: key "` + strings.Repeat("k", 64) + `"…: the key is 129 bytes, longer than 128`},
		{name: "empty token param key", give: func(p *Provider) { p.TokenParams = map[string]string{"": "v"} }, want: "token_params: a key is empty"},
		{name: "65 default scopes", give: func(p *Provider) { p.DefaultScopes = slices.Repeat([]string{"s"}, 65) }, want: "default_scopes has 65 entries, more than 64"},
		{name: "9 grant types", give: func(p *Provider) { p.GrantTypes = slices.Repeat([]GrantType{GrantClientCredentials}, 9) }, want: "grant_types has 9 entries, more than 8"},
		{name: "long unknown grant type", give: func(p *Provider) { p.GrantTypes = []GrantType{GrantType(strings.Repeat("g", 1000))} },
			want: `unknown grant type "` + strings.Repeat("g", 64) + `"…`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := valid
			tt.give(&p)
			err := p.Validate()
			got := ""
			if err != nil {
				got = err.Error()
			}
			if (tt.want == "") != (err == nil) || !strings.Contains(got, tt.want) || (err != nil && !errors.Is(err, ErrInvalidArgument)) {
				t.Errorf("Validate() = %v, want %s", err, describeWant(tt.want))
			}
		})
	}
}

func describeWant(want string) string {
	if want == "" {
		return "nil"
	}
	return "ErrInvalidArgument containing " + want
}

func TestGetAndListProviders(t *testing.T) {
	e := etcdtest.Start(t)
	b := newTestBroker(t, e)
	ctx := context.Background()
	for _, name := range []string{"zeta", "alpha", "mediahound", "alpha-2"} {
		putProvider(t, b, Provider{Name: name, TokenURL: "https://" + name + ".example.com/token", ClientID: name + "-id", ClientAuth: oauth.AuthBasic}, name+"-secret")
	}

	list, err := b.ListProviders(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range list {
		names = append(names, p.Name)
	}
	if want := []string{"alpha", "alpha-2", "mediahound", "zeta"}; !slices.Equal(names, want) {
		t.Errorf("ListProviders names = %q, want %q", names, want)
	}

	got, err := b.GetProvider(ctx, "mediahound")
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != "mediahound" || got.TokenURL != "https://mediahound.example.com/token" || got.ClientID != "mediahound-id" ||
		got.ClientAuth != oauth.AuthBasic || b.Fingerprint(got.ClientSecret) != b.Fingerprint("mediahound-secret") {
		t.Errorf("GetProvider(mediahound) = %+v, want what was put", got)
	}

	tests := []struct {
		give string
		want error
	}{
		{give: "unknown", want: ErrNotFound},
		{give: "Unknown", want: ErrInvalidArgument},
		{give: "", want: ErrInvalidArgument},
	}
	for _, tt := range tests {
		if _, err := b.GetProvider(ctx, tt.give); !errors.Is(err, tt.want) {
			t.Errorf("GetProvider(%q) error = %v, want %v", tt.give, err, tt.want)
		}
	}
}

func TestPutProviderIdentityChangeDropsTokens(t *testing.T) {
	e := etcdtest.Start(t)
	sb1, url1 := newSandbox(t, nil)
	sb2, url2 := newSandbox(t, nil)
	b := newTestBroker(t, e)
	inspect := e.Client(t, nil)
	p := sandboxProvider("orders", url1)
	putProvider(t, b, p, sandboxClientSecret)
	first := getToken(t, b, "orders")
	tokens := DefaultPrefix + tokensPrefix + "orders/"

	// Rotating only the secret keeps the tokens.
	putProvider(t, b, p, "rotated-secret")
	if kvs := etcdKeys(t, inspect, tokens); len(kvs) != 1 {
		t.Errorf("after rotating the secret etcd holds %d tokens, want 1", len(kvs))
	}
	if got := getToken(t, b, "orders"); got.AccessToken != first.AccessToken {
		t.Errorf("after rotating the secret GetToken = %q, want the kept %q", got.AccessToken, first.AccessToken)
	}
	if n := sb1.TokenCalls(); n != 1 {
		t.Errorf("after rotating the secret the provider got %d calls, want 1", n)
	}

	// Pointing the provider elsewhere drops them.
	p.TokenURL = url2
	putProvider(t, b, p, sandboxClientSecret)
	if kvs := etcdKeys(t, inspect, tokens); len(kvs) != 0 {
		t.Errorf("after changing token_url etcd holds %v, want no token", kvs)
	}
	eventually(t, "the watch drops the token from memory and brings the new token_url", func() bool {
		v, ok := b.providers.Load("orders")
		return inMemory(b, first.Key) == nil && ok && v.(*Provider).TokenURL == url2
	})
	got := getToken(t, b, "orders")
	if got.AccessToken == first.AccessToken || sb2.TokenCalls() != 1 || sb1.TokenCalls() != 1 {
		t.Errorf("after changing token_url: token %q, calls old %d new %d; want a new token from the new URL (calls 1, 1)",
			got.AccessToken, sb1.TokenCalls(), sb2.TokenCalls())
	}
}

func TestDeleteProvider(t *testing.T) {
	e := etcdtest.Start(t)
	sb, tokenURL := newSandbox(t, nil)
	b1 := newTestBroker(t, e)
	b2 := newTestBroker(t, e)
	inspect := e.Client(t, nil)
	ctx := context.Background()
	putProvider(t, b1, sandboxProvider("orders", tokenURL), sandboxClientSecret)
	putProvider(t, b1, sandboxProvider("orders.eu", tokenURL), sandboxClientSecret)
	rec := getToken(t, b2, "orders")
	other := getToken(t, b2, "orders.eu")

	if err := b1.DeleteProvider(ctx, "orders"); err != nil {
		t.Fatalf("DeleteProvider: %v", err)
	}

	if kvs := etcdKeys(t, inspect, DefaultPrefix+providersPrefix+"orders"); len(kvs) != 1 {
		t.Errorf("etcd providers after the delete: %v, want orders.eu alone", kvs)
	}
	if kvs := etcdKeys(t, inspect, DefaultPrefix+tokensPrefix); len(kvs) != 1 {
		t.Errorf("etcd tokens after the delete: %v, want the token of orders.eu alone", kvs)
	}
	eventually(t, "the second broker's watch drops the provider and its token", func() bool {
		_, ok := b2.providers.Load("orders")
		return !ok && inMemory(b2, rec.Key) == nil
	})
	if _, err := b2.GetToken(ctx, TokenRequest{Provider: "orders"}); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetToken of the deleted provider on the other broker: error = %v, want ErrNotFound", err)
	}
	if got := getToken(t, b2, "orders.eu"); got.AccessToken != other.AccessToken {
		t.Errorf("GetToken(orders.eu) = %q, want the untouched %q", got.AccessToken, other.AccessToken)
	}
	if n := sb.TokenCalls(); n != 2 {
		t.Errorf("provider got %d token calls, want 2", n)
	}
	if _, err := b1.GetProvider(ctx, "orders"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetProvider of the deleted provider: error = %v, want ErrNotFound", err)
	}

	tests := []struct {
		give string
		want error
	}{
		{give: "orders", want: ErrNotFound},
		{give: "never-existed", want: ErrNotFound},
		{give: "Orders", want: ErrInvalidArgument},
	}
	for _, tt := range tests {
		if err := b1.DeleteProvider(ctx, tt.give); !errors.Is(err, tt.want) {
			t.Errorf("DeleteProvider(%q) error = %v, want %v", tt.give, err, tt.want)
		}
	}
}

func TestPutProviderRefusesPlainHTTP(t *testing.T) {
	e := etcdtest.Start(t)
	tests := []struct {
		name         string
		requireHTTPS bool
		give         string
		wantErr      bool
	}{
		{"https always", true, "https://idp.example.com/token", false},
		{"http to another host, never", false, "http://idp.example.com/token", true},
		{"http to loopback in development", false, "http://127.0.0.1:9/token", false},
		{"http to loopback when https is required", true, "http://127.0.0.1:9/token", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newTestBroker(t, e, withPrefix("/"+strings.ReplaceAll(tt.name, " ", "-")+"/"), func(s *brokerSetup) { s.cfg.RequireHTTPS = tt.requireHTTPS })
			_, err := b.PutProvider(context.Background(), Provider{Name: "p", TokenURL: tt.give, ClientID: "id", ClientAuth: oauth.AuthBasic}, "s")
			if (err != nil) != tt.wantErr || (err != nil && !errors.Is(err, ErrInvalidArgument)) {
				t.Errorf("PutProvider(%s) = %v, want error %v (InvalidArgument)", tt.give, err, tt.wantErr)
			}
		})
	}
}

// Once a call that changes a provider returns, the replica that made it
// holds the change in memory: its JWKS serves a rotated key before the key
// signs here, and its refresher uses new tuning.
func TestProviderChangesAreInMemoryOnReturn(t *testing.T) {
	e := etcdtest.Start(t)
	b := newTestBroker(t, e)
	ctx := context.Background()
	fp := fakes.NewAssertionProvider(t, "c")
	p := pkjProvider("pkj", fp)
	inMemory := func() *Provider {
		v, ok := b.providers.Load("pkj")
		if !ok {
			return nil
		}
		return v.(*Provider)
	}
	for i := range 20 {
		p.RefreshIdleAfter = time.Duration(i+1) * time.Minute
		put := putProvider(t, b, p, "")
		if m := inMemory(); m == nil || m.Revision != put.Revision || m.RefreshIdleAfter != p.RefreshIdleAfter {
			t.Fatalf("round %d: memory holds %+v right after PutProvider returned revision %d", i, m, put.Revision)
		}
		rotated, err := b.RotateClientKey(ctx, "pkj", ClientKey{}, KeyES256, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		k, _ := rotated.SigningKey()
		if all := b.AllJWKS(); len(all.Key(k.KeyID)) != 1 {
			t.Fatalf("round %d: AllJWKS right after RotateClientKey returned lacks the new key %s", i, k.KeyID)
		}
		if err := b.DeleteProvider(ctx, "pkj"); err != nil {
			t.Fatal(err)
		}
		if m := inMemory(); m != nil {
			t.Fatalf("round %d: memory holds provider revision %d right after DeleteProvider returned", i, m.Revision)
		}
	}
}
