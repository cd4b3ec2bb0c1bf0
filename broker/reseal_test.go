package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokenbroker/tokenbroker/broker/event"
	"github.com/tokenbroker/tokenbroker/broker/oauth"
	"github.com/tokenbroker/tokenbroker/broker/seal"
	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
	"github.com/tokenbroker/tokenbroker/internal/testkeys"
	"github.com/tokenbroker/tokenbroker/sandbox"
)

// sealedWith makes k the broker's keyring.
func sealedWith(k *seal.Keyring) brokerOption {
	return func(s *brokerSetup) { s.cfg.Keyring = k }
}

// resealRefreshOff turns the background refresher off: the tests count
// provider calls.
func resealRefreshOff() brokerOption {
	return func(s *brokerSetup) { s.cfg.Refresh.Disabled = true }
}

func keyring(t *testing.T, primary seal.Key, older ...seal.Key) *seal.Keyring {
	t.Helper()
	k, err := seal.NewKeyring(primary, older...)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

const (
	resealUser     = "alice"
	resealPassword = "alice-pw-3c9a71d0e5"
)

// resealFixture is a sandbox that issues rotating refresh tokens and
// id_tokens, registered as provider "sb" (client_credentials, password and
// authorization_code with PKCE), with a password account "alice", a pending
// consent for account "bob", and a token of each of the provider's own
// identity and alice in etcd: every kind of sealed field.
type resealFixture struct {
	sandbox *sandbox.Server
	url     string
	// hook, when set, runs before the sandbox answers a refresh_token
	// grant.
	mu   sync.Mutex
	hook func()
}

func newResealFixture(t *testing.T, clock *fakeClock) *resealFixture {
	t.Helper()
	sb, err := sandbox.New(sandbox.Config{
		Clients:             map[string]string{sandboxClientID: sandboxClientSecret},
		Users:               map[string]string{resealUser: resealPassword},
		RedirectURIs:        map[string][]string{sandboxClientID: {"https://broker.example.com/v1/oauth/callback"}},
		RefreshTokens:       true,
		RotateRefreshTokens: true,
		IDTokens:            true,
		Now:                 clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	f := &resealFixture{sandbox: sb}
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		if form, _ := url.ParseQuery(string(body)); form.Get("grant_type") == "refresh_token" {
			f.mu.Lock()
			hook := f.hook
			f.mu.Unlock()
			if hook != nil {
				hook()
			}
		}
		sb.ServeHTTP(w, r)
	}))
	t.Cleanup(ts.Close)
	f.url = ts.URL
	return f
}

func (f *resealFixture) setHook(h func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hook = h
}

func (f *resealFixture) provider() Provider {
	return Provider{
		Name: "sb", TokenURL: f.url + sandbox.TokenPath, AuthorizeURL: f.url + sandbox.AuthorizePath,
		ClientID: sandboxClientID, ClientAuth: oauth.AuthBasic, PKCE: true,
		RedirectURL: "https://broker.example.com/v1/oauth/callback",
		GrantTypes:  []GrantType{GrantClientCredentials, GrantPassword, GrantAuthorizationCode},
		// Served until the provider's expiry, so that Refresh without a
		// stale token replaces the token at once.
		RefreshRevokesAccessToken: ptr(false),
	}
}

// populate stores every kind of record through b.
func (f *resealFixture) populate(t *testing.T, b *Broker) {
	t.Helper()
	ctx := context.Background()
	putProvider(t, b, f.provider(), sandboxClientSecret)
	if _, err := b.PutAccount(ctx, Account{Provider: "sb", Account: resealUser, Type: GrantPassword,
		Username: resealUser, Password: resealPassword, Scopes: []string{"openid", "read"}}); err != nil {
		t.Fatalf("PutAccount: %v", err)
	}
	getToken(t, b, "sb")
	rec, err := b.GetToken(ctx, TokenRequest{Provider: "sb", Account: resealUser})
	if err != nil {
		t.Fatalf("GetToken(alice): %v", err)
	}
	if rec.IDToken() == "" {
		t.Fatalf("alice's token has no id_token; the fixture must store one")
	}
	if _, err := b.StartAuthorization(ctx, "sb", "bob", []string{"read"}); err != nil {
		t.Fatalf("StartAuthorization: %v", err)
	}
}

// sealedValues reads every record under prefix and returns, per etcd key
// and sealed field, the id of the key that sealed it.
func sealedValues(t *testing.T, cli *clientv3.Client, prefix string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for key, val := range etcdKeys(t, cli, prefix) {
		fields, ok := sealedFields([]byte(val))
		if !ok {
			continue
		}
		for name, v := range fields {
			id, err := testkeys.Keyring().KeyID(v)
			if err != nil {
				t.Fatalf("%s %s: %v", key, name, err)
			}
			out[key+"#"+strings.TrimSuffix(name, "_sealed")] = id
		}
	}
	return out
}

func TestResealMovesEverySealedValueToThePrimaryKey(t *testing.T) {
	e := etcdtest.Start(t)
	clock := newClock()
	f := newResealFixture(t, clock)
	oldOnly := keyring(t, testkeys.Older)
	rotated := keyring(t, testkeys.Primary, testkeys.Older)
	newOnly := keyring(t, testkeys.Primary)

	old := newTestBroker(t, e, withClock(clock), sealedWith(oldOnly), resealRefreshOff())
	f.populate(t, old)
	cli := e.Client(t, nil)
	before := sealedValues(t, cli, DefaultPrefix)
	// provider secret; alice's password and refresh token; two access
	// tokens and alice's id_token; bob's PKCE verifier.
	wantFields := []string{"client_secret", "password", "refresh_token", "access_token", "id_token", "code_verifier"}
	for _, field := range wantFields {
		found := false
		for name, id := range before {
			if strings.HasSuffix(name, "#"+field) {
				found = true
				if id != testkeys.Older.ID {
					t.Errorf("%s sealed with %q before the rotation, want %q", name, id, testkeys.Older.ID)
				}
			}
		}
		if !found {
			t.Fatalf("no sealed %s in etcd; the fixture must store every kind of sealed field (have %v)", field, before)
		}
	}
	authKey := ""
	for name := range before {
		if strings.Contains(name, "/"+statesPrefix) {
			authKey, _, _ = strings.Cut(name, "#")
		}
	}
	leaseBefore := leaseOf(t, cli, authKey)
	if leaseBefore == 0 {
		t.Fatalf("pending authorization %s has no lease", authKey)
	}
	old.Close()

	stats, err := Reseal(context.Background(), cli, DefaultPrefix, rotated)
	if err != nil {
		t.Fatalf("Reseal: %v", err)
	}
	// Records: the provider, two grants (alice; the provider's own),
	// bob's grant holds no secret, two tokens, bob's authorization.
	records := map[string]bool{}
	for name := range before {
		k, _, _ := strings.Cut(name, "#")
		records[k] = true
	}
	if stats.Scanned != len(records) || stats.Resealed != len(records) || stats.Failed != 0 || len(stats.Failures) != 0 {
		t.Fatalf("Reseal stats = %+v, want %d records scanned and re-sealed, none failed", stats, len(records))
	}
	after := sealedValues(t, cli, DefaultPrefix)
	if len(after) != len(before) {
		t.Errorf("sealed fields after the re-seal: %d, want %d as before", len(after), len(before))
	}
	for name, id := range after {
		if id != testkeys.Primary.ID {
			t.Errorf("%s sealed with %q after the re-seal, want the primary %q", name, id, testkeys.Primary.ID)
		}
	}
	if got := leaseOf(t, cli, authKey); got != leaseBefore {
		t.Errorf("pending authorization lease %x after the re-seal, want %x kept", got, leaseBefore)
	}

	again, err := Reseal(context.Background(), cli, DefaultPrefix, rotated)
	if err != nil || again.Scanned != len(records) || again.Resealed != 0 || again.Failed != 0 {
		t.Errorf("second Reseal = %+v, %v; want every record scanned and none written", again, err)
	}

	// A broker that holds only the new key opens every record: the secret
	// it sends, the password and refresh token it keeps, the tokens it
	// serves without asking the provider.
	calls := f.sandbox.TokenCalls()
	b := newTestBroker(t, e, withClock(clock), sealedWith(newOnly), resealRefreshOff())
	p, err := b.GetProvider(context.Background(), "sb")
	if err != nil || p.ClientSecret != sandboxClientSecret {
		t.Fatalf("GetProvider with the new key only = %v; want the client secret opened", err)
	}
	grants, err := b.ListGrants(context.Background(), "sb")
	if err != nil {
		t.Fatalf("ListGrants with the new key only: %v", err)
	}
	for _, g := range grants {
		if g.Account == resealUser && (g.Password != resealPassword || g.RefreshToken == "") {
			t.Errorf("alice's grant opened to password %v, refresh token set %v; want both", g.Password == resealPassword, g.RefreshToken != "")
		}
	}
	getToken(t, b, "sb")
	if _, err := b.GetToken(context.Background(), TokenRequest{Provider: "sb", Account: resealUser}); err != nil {
		t.Fatalf("GetToken(alice) with the new key only: %v", err)
	}
	if got := f.sandbox.TokenCalls(); got != calls {
		t.Errorf("provider calls serving stored tokens = %d, want 0", got-calls)
	}
	// The re-sealed refresh token still works, once.
	if _, err := b.Refresh(context.Background(), TokenRequest{Provider: "sb", Account: resealUser}, ""); err != nil {
		t.Fatalf("Refresh(alice) after the re-seal: %v", err)
	}
	if n := f.sandbox.ReusedRefreshTokens(); n != 0 {
		t.Errorf("provider saw %d reused refresh tokens, want 0", n)
	}
}

func leaseOf(t *testing.T, cli *clientv3.Client, key string) int64 {
	t.Helper()
	resp, err := cli.Get(context.Background(), key)
	if err != nil || len(resp.Kvs) == 0 {
		t.Fatalf("get %s: %v (found %d)", key, err, len(resp.Kvs))
	}
	return resp.Kvs[0].Lease
}

func TestResealReportsRecordsItCannotOpen(t *testing.T) {
	e := etcdtest.Start(t)
	clock := newClock()
	gone, err := seal.GenerateKey("gone")
	if err != nil {
		t.Fatal(err)
	}
	_, tokenURL := newSandbox(t, clock)
	// Provider "a" under a key no keyring will hold any more; provider "b"
	// under the old key, then tampered with; provider "c" fine.
	lost := newTestBroker(t, e, withClock(clock), sealedWith(keyring(t, gone)), resealRefreshOff())
	putProvider(t, lost, sandboxProvider("a", tokenURL), "secret-of-a-0123456789")
	lost.Close()
	old := newTestBroker(t, e, withClock(clock), sealedWith(keyring(t, testkeys.Older)), resealRefreshOff())
	putProvider(t, old, sandboxProvider("b", tokenURL), "secret-of-b-0123456789")
	putProvider(t, old, sandboxProvider("c", tokenURL), "secret-of-c-0123456789")
	old.Close()

	cli := e.Client(t, nil)
	keyB := DefaultPrefix + providersPrefix + "b"
	resp, err := cli.Get(context.Background(), keyB)
	if err != nil {
		t.Fatal(err)
	}
	var obj map[string]any
	if err := json.Unmarshal(resp.Kvs[0].Value, &obj); err != nil {
		t.Fatal(err)
	}
	sealed, _ := sealedFields(resp.Kvs[0].Value)
	tampered := bytes.Clone(sealed["client_secret_sealed"])
	tampered[len(tampered)-1] ^= 1
	obj["client_secret_sealed"] = tampered
	val, _ := json.Marshal(obj)
	if _, err := cli.Put(context.Background(), keyB, string(val)); err != nil {
		t.Fatal(err)
	}

	// The events the puts recorded (tagged under the same keys) are
	// re-sealed like any record; this test counts the providers only.
	if _, err := cli.Delete(context.Background(), DefaultPrefix+event.Prefix, clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	stats, err := Reseal(context.Background(), cli, DefaultPrefix, keyring(t, testkeys.Primary, testkeys.Older))
	if !errors.Is(err, ErrResealIncomplete) {
		t.Fatalf("Reseal error = %v, want ErrResealIncomplete", err)
	}
	if stats.Scanned != 3 || stats.Resealed != 1 || stats.Failed != 2 || len(stats.Failures) != 2 {
		t.Fatalf("Reseal stats = %+v, want 3 scanned, 1 re-sealed, 2 failed", stats)
	}
	wantCauses := map[string]error{DefaultPrefix + providersPrefix + "a": seal.ErrUnknownKey, keyB: seal.ErrOpen}
	for _, f := range stats.Failures {
		key, _, _ := strings.Cut(f.Error(), ": ")
		if want := wantCauses[key]; want == nil || !errors.Is(f, want) {
			t.Errorf("failure %q, want one of %v naming its key and cause", f, wantCauses)
		}
		for _, secret := range []string{"secret-of-a", "secret-of-b"} {
			if strings.Contains(f.Error(), secret) {
				t.Errorf("failure %q holds a secret", f)
			}
		}
	}
	// The failed records are left as they were.
	if got := sealedValues(t, cli, DefaultPrefix)[DefaultPrefix+providersPrefix+"a#client_secret"]; got != "gone" {
		t.Errorf("provider a's secret is sealed with %q after a failed re-seal, want %q untouched", got, "gone")
	}
}

// A re-seal running while a broker refreshes a rotating refresh token waits
// for the grant's lock: it must not make the broker's fenced write fail,
// which would discard the new refresh token after the provider retired the
// old one.
func TestResealWaitsForAnInFlightRefresh(t *testing.T) {
	e := etcdtest.Start(t)
	clock := newClock()
	f := newResealFixture(t, clock)
	old := newTestBroker(t, e, withClock(clock), sealedWith(keyring(t, testkeys.Older)), resealRefreshOff())
	f.populate(t, old)
	old.Close()

	rotated := keyring(t, testkeys.Primary, testkeys.Older)
	b := newTestBroker(t, e, withClock(clock), sealedWith(rotated), resealRefreshOff())
	cli := e.Client(t, nil)
	type result struct {
		stats ResealStats
		err   error
	}
	done := make(chan result, 1)
	f.setHook(func() {
		f.setHook(nil)
		go func() {
			s, err := Reseal(context.Background(), cli, DefaultPrefix, rotated)
			done <- result{s, err}
		}()
		// Give the re-seal the time to write the grant if it could.
		select {
		case r := <-done:
			done <- r
		case <-time.After(500 * time.Millisecond):
		}
	})
	if _, err := b.Refresh(context.Background(), TokenRequest{Provider: "sb", Account: resealUser}, ""); err != nil {
		t.Fatalf("Refresh(alice) during a re-seal: %v", err)
	}
	var r result
	select {
	case r = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Reseal did not finish after the refresh")
	}
	if r.err != nil || r.stats.Failed != 0 {
		t.Fatalf("Reseal = %+v, %v; want no failure", r.stats, r.err)
	}
	for name, id := range sealedValues(t, cli, DefaultPrefix) {
		if id != testkeys.Primary.ID {
			t.Errorf("%s sealed with %q, want %q", name, id, testkeys.Primary.ID)
		}
	}
	// The rotated refresh token was kept: the next refresh uses it, and
	// the provider never saw a refresh token twice nor a second password.
	if _, err := b.Refresh(context.Background(), TokenRequest{Provider: "sb", Account: resealUser}, ""); err != nil {
		t.Fatalf("second Refresh(alice): %v", err)
	}
	if n := f.sandbox.ReusedRefreshTokens(); n != 0 {
		t.Errorf("provider saw %d reused refresh tokens, want 0: the rotated one was lost", n)
	}
	passwords := 0
	for _, req := range f.sandbox.Requests() {
		if req.Form.Get("grant_type") == "password" {
			passwords++
		}
	}
	if passwords != 1 {
		t.Errorf("provider saw %d password grants, want 1 (the refresh token lineage must survive)", passwords)
	}
}

// An admin change of the provider while a broker refreshes a rotating
// refresh token: the broker's fenced write fails on the provider's new
// revision, yet the new refresh token must be saved, since the provider has
// retired the old one. Otherwise the retry would present the retired
// refresh token (reuse: the provider revokes the whole lineage).
func TestAdminChangeDuringRotatingRefreshKeepsTheNewRefreshToken(t *testing.T) {
	e := etcdtest.Start(t)
	clock := newClock()
	f := newResealFixture(t, clock)
	b := newTestBroker(t, e, withClock(clock), resealRefreshOff())
	f.populate(t, b)
	f.setHook(func() {
		f.setHook(nil)
		// Same registration, same secret: only the update time changes.
		if _, err := b.PutProvider(context.Background(), f.provider(), sandboxClientSecret); err != nil {
			t.Errorf("PutProvider during the refresh: %v", err)
		}
	})
	if _, err := b.Refresh(context.Background(), TokenRequest{Provider: "sb", Account: resealUser}, ""); err != nil {
		t.Fatalf("Refresh(alice): %v", err)
	}
	if n := f.sandbox.ReusedRefreshTokens(); n != 0 {
		t.Errorf("provider saw %d reused refresh tokens, want 0: the rotated refresh token was discarded", n)
	}
}

// Rotating to the secret that is already current (a retried request, or
// automation that applies its desired state again) must not drop the
// overlap: the provider may still accept only the previous secret.
func TestRotateClientSecretAgainKeepsThePreviousSecret(t *testing.T) {
	e := etcdtest.Start(t)
	_, tokenURL := newSandbox(t, nil)
	b := newTestBroker(t, e, resealRefreshOff())
	putProvider(t, b, sandboxProvider("sb", tokenURL), sandboxClientSecret)
	for i := range 2 {
		p, err := b.RotateClientSecret(context.Background(), "sb", "not-yet-live-secret", false, time.Hour)
		if err != nil {
			t.Fatalf("rotation %d: %v", i+1, err)
		}
		if p.PreviousSecret != sandboxClientSecret {
			t.Errorf("after rotation %d the previous secret is set %v, want the secret the provider still accepts", i+1, p.PreviousSecret != "")
		}
	}
	if _, err := b.Refresh(context.Background(), TokenRequest{Provider: "sb"}, ""); err != nil {
		t.Errorf("Refresh during the overlap after a repeated rotation: %v", err)
	}
}

// Reseal walks the prefix a page at a time: more records than a page hold.
func TestResealWalksEveryPage(t *testing.T) {
	e := etcdtest.Start(t)
	old := newTestBroker(t, e, sealedWith(keyring(t, testkeys.Older)), resealRefreshOff())
	cli := e.Client(t, nil)
	n := 2*resealPageSize + 7
	writeTokenRecords(t, old, cli, n)
	stats, err := Reseal(context.Background(), cli, DefaultPrefix, keyring(t, testkeys.Primary, testkeys.Older))
	if err != nil || stats.Scanned != n || stats.Resealed != n {
		t.Fatalf("Reseal = %+v, %v; want %d records scanned and re-sealed", stats, err, n)
	}
	for name, id := range sealedValues(t, cli, DefaultPrefix) {
		if id != testkeys.Primary.ID {
			t.Fatalf("%s sealed with %q, want %q", name, id, testkeys.Primary.ID)
		}
	}
}
