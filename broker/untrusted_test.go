package broker

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokenbroker/tokenbroker/broker/seal"
	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
	"github.com/tokenbroker/tokenbroker/internal/testkeys"
)

// rewriteRecord reads key straight from etcd, lets f change its members
// and writes it back, as someone with write access to etcd but without
// the master key could.
func rewriteRecord(t *testing.T, cli *clientv3.Client, key string, f func(map[string]json.RawMessage)) {
	t.Helper()
	ctx := context.Background()
	resp, err := cli.Get(ctx, key)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("read %s: %v (%d records)", key, err, len(resp.Kvs))
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(resp.Kvs[0].Value, &obj); err != nil {
		t.Fatal(err)
	}
	f(obj)
	val, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, key, string(val)); err != nil {
		t.Fatal(err)
	}
}

// A provider record changed straight in etcd to send its client secret and
// token requests elsewhere, and one created there, are never used: not by
// the broker that was running, not by one started after, and listings
// leave them out.
func TestForgedProviderRecordIsRefused(t *testing.T) {
	e := etcdtest.Start(t)
	attacker := e.Client(t, nil)
	mh := newMediaHound(t, 0)
	evil := newFakeProvider(t, mediaHoundTokenPath, func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, `{"access_token":"attacker-token","token_type":"bearer","expires_in":3600}`)
	})
	running := newTestBroker(t, e)
	putProvider(t, running, mediaHoundProvider(mh), mediaHoundClientSecret)
	if rec := getToken(t, running, "mediahound"); rec.AccessToken != "mh-token-1" {
		t.Fatalf("before the forgery: token %q, want mh-token-1", rec.AccessToken)
	}
	before := UntrustedRecords()

	// The authentic record with its token URL pointed at the attacker,
	// tag kept.
	rewriteRecord(t, attacker, DefaultPrefix+providersPrefix+"mediahound", func(o map[string]json.RawMessage) {
		o["token_url"], _ = json.Marshal(evil.TokenURL())
	})
	// A provider the attacker creates from a copy of the authentic record
	// (a tag made for another etcd key), and one with no tag at all.
	resp, err := attacker.Get(context.Background(), DefaultPrefix+providersPrefix+"mediahound")
	if err != nil {
		t.Fatal(err)
	}
	copied := strings.Replace(string(resp.Kvs[0].Value), `"mediahound"`, `"copied"`, 1)
	untagged := strings.Replace(copied, `"copied"`, `"untagged"`, 1)
	var obj map[string]json.RawMessage
	_ = json.Unmarshal([]byte(untagged), &obj)
	delete(obj, seal.RecordField)
	raw, _ := json.Marshal(obj)
	for k, v := range map[string]string{"copied": copied, "untagged": string(raw)} {
		if _, err := attacker.Put(context.Background(), DefaultPrefix+providersPrefix+k, v); err != nil {
			t.Fatal(err)
		}
	}
	fresh := newTestBroker(t, e)

	for _, b := range []struct {
		name string
		b    *Broker
	}{{"running broker", running}, {"broker started after", fresh}} {
		for _, name := range []string{"mediahound", "copied", "untagged"} {
			// A forced refresh reads the provider: it fails, and a token
			// that is still valid (MediaHound's first) may be served on.
			rec, err := b.b.Refresh(context.Background(), TokenRequest{Provider: name}, "")
			switch {
			case err == nil && name == "mediahound" && rec.AccessToken == "mh-token-1":
			case errors.Is(err, ErrUntrustedRecord), errors.Is(err, ErrNotFound):
			default:
				t.Errorf("%s: Refresh(%s) = %v, %v; want ErrUntrustedRecord, ErrNotFound or the authentic token", b.name, name, rec, err)
			}
		}
		if _, err := b.b.GetProvider(context.Background(), "mediahound"); !errors.Is(err, ErrUntrustedRecord) {
			t.Errorf("%s: GetProvider(mediahound) = %v, want ErrUntrustedRecord", b.name, err)
		}
		list, err := b.b.ListProviders(context.Background())
		if err != nil {
			t.Fatalf("%s: ListProviders: %v", b.name, err)
		}
		if len(list) != 0 {
			t.Errorf("%s: ListProviders = %d providers (%s…), want none: every record failed authentication", b.name, len(list), list[0].Name)
		}
	}
	if n := evil.calls(); n != 0 {
		t.Errorf("the attacker's token endpoint received %d requests, want 0", n)
	}
	for _, r := range evil.requests() {
		if r.Form.Get("client_secret") != "" || r.Header.Get("Authorization") != "" {
			t.Errorf("the attacker's endpoint received the client credentials")
		}
	}
	if got := UntrustedRecords() - before; got < 6 {
		t.Errorf("UntrustedRecords grew by %d, want at least 6", got)
	}

	// An admin's put replaces the forged record whole, and it is trusted
	// again.
	putProvider(t, running, mediaHoundProvider(mh), mediaHoundClientSecret)
	if rec, err := running.Refresh(context.Background(), TokenRequest{Provider: "mediahound"}, ""); err != nil || !strings.HasPrefix(rec.AccessToken, "mh-token-") {
		t.Errorf("after the admin put it back: Refresh = %v, %v; want a MediaHound token", rec, err)
	}
	if n := evil.calls(); n != 0 {
		t.Errorf("the attacker's token endpoint received %d requests, want 0", n)
	}
}

// A grant record edited in etcd (a password account's username changed) is
// refused: no token is fetched with it.
func TestForgedGrantRecordIsRefused(t *testing.T) {
	e := etcdtest.Start(t)
	attacker := e.Client(t, nil)
	_, tokenURL := newSandbox(t, nil)
	b := newTestBroker(t, e)
	p := sandboxProvider("sb", tokenURL)
	p.GrantTypes = []GrantType{GrantClientCredentials, GrantPassword, GrantRefreshToken}
	putProvider(t, b, p, sandboxClientSecret)
	if _, err := b.PutAccount(context.Background(), Account{Provider: "sb", Account: "alice", Type: GrantPassword, Username: "alice", Password: "alice-pw"}); err != nil {
		t.Fatal(err)
	}
	rewriteRecord(t, attacker, b.grantKey("sb", "alice"), func(o map[string]json.RawMessage) {
		o["username"] = json.RawMessage(`"mallory"`)
	})
	if _, err := b.GetToken(context.Background(), TokenRequest{Provider: "sb", Account: "alice"}); !errors.Is(err, ErrUntrustedRecord) {
		t.Errorf("GetToken(alice) with an edited grant = %v, want ErrUntrustedRecord", err)
	}
	grants, err := b.ListGrants(context.Background(), "sb")
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range grants {
		if g.Account == "alice" {
			t.Errorf("ListGrants shows the edited grant %s/%s (username %q)", g.Provider, g.Account, g.Username)
		}
	}
}

// Records stored by a version that did not tag them are refused until
// `keys reseal --sign-untagged` tags them; a plain re-seal leaves them be.
func TestResealSignsUntaggedRecordsOnlyWhenAsked(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t, nil)
	mh := newMediaHound(t, 0)
	b := newTestBroker(t, e)
	putProvider(t, b, mediaHoundProvider(mh), mediaHoundClientSecret)
	getToken(t, b, "mediahound")
	b.Close()
	strip := func(o map[string]json.RawMessage) { delete(o, seal.RecordField) }
	rewriteRecord(t, cli, DefaultPrefix+providersPrefix+"mediahound", strip)
	rewriteRecord(t, cli, DefaultPrefix+grantsPrefix+"mediahound/", strip)

	later := newTestBroker(t, e)
	if _, err := later.GetProvider(context.Background(), "mediahound"); !errors.Is(err, ErrUntrustedRecord) {
		t.Fatalf("GetProvider of an untagged record = %v, want ErrUntrustedRecord", err)
	}
	stats, err := Reseal(context.Background(), cli, DefaultPrefix, testkeys.Keyring())
	if err != nil || stats.Signed != 0 {
		t.Fatalf("Reseal without SignUntagged = %+v, %v; want nothing signed", stats, err)
	}
	if _, err := later.GetProvider(context.Background(), "mediahound"); !errors.Is(err, ErrUntrustedRecord) {
		t.Fatalf("after a plain re-seal: GetProvider = %v, want ErrUntrustedRecord", err)
	}
	stats, err = Reseal(context.Background(), cli, DefaultPrefix, testkeys.Keyring(), SignUntagged())
	if err != nil || stats.Signed != 2 {
		t.Fatalf("Reseal with SignUntagged = %+v, %v; want the provider and its grant signed", stats, err)
	}
	p, err := later.GetProvider(context.Background(), "mediahound")
	if err != nil || p.ClientSecret != mediaHoundClientSecret {
		t.Fatalf("after signing: GetProvider = %v; want the provider with its secret", err)
	}
	if _, err := later.Refresh(context.Background(), TokenRequest{Provider: "mediahound"}, ""); err != nil {
		t.Errorf("after signing: Refresh = %v, want a token", err)
	}
}

// A learned "refreshes do not revoke access tokens" written straight into
// etcd is ignored: the broker goes on assuming revocation, the safe side.
func TestForgedLearnedRecordIsIgnored(t *testing.T) {
	e := etcdtest.Start(t)
	attacker := e.Client(t, nil)
	mh := newMediaHound(t, 0)
	b := newTestBroker(t, e)
	putProvider(t, b, mediaHoundProvider(mh), mediaHoundClientSecret)
	if _, err := attacker.Put(context.Background(), b.learnedKey("mediahound"), `{"refresh_revokes_access_token":false}`); err != nil {
		t.Fatal(err)
	}
	p, err := b.GetProvider(context.Background(), "mediahound")
	if err != nil {
		t.Fatal(err)
	}
	if p.LearnedRefreshRevokesAccessToken != nil {
		t.Errorf("GetProvider: learned %v from a forged record, want nothing learned", *p.LearnedRefreshRevokesAccessToken)
	}
}
