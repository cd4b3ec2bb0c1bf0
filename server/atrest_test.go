package server_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/seal"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/testkeys"
)

// etcdDump returns every key and value under the broker's prefix, read
// directly from etcd.
func etcdDump(t *testing.T, cli *clientv3.Client) map[string][]byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctxb, 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, broker.DefaultPrefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string][]byte, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		out[string(kv.Key)] = kv.Value
	}
	return out
}

// assertNoPlaintext fails the test when any key or value under the prefix
// holds nine characters of a secret of book.
func assertNoPlaintext(t *testing.T, cli *clientv3.Client, book map[string]string, when string) {
	t.Helper()
	var b strings.Builder
	for k, v := range etcdDump(t, cli) {
		b.WriteString(k + " = " + string(v) + "\n")
	}
	for _, leak := range findLeaks(b.String(), book) {
		t.Errorf("etcd %s holds plaintext of %s", when, leak)
	}
}

// sealedKeyIDs returns the key id of every sealed value under the prefix,
// by "<etcd key>#<field>".
func sealedKeyIDs(t *testing.T, cli *clientv3.Client) map[string]string {
	t.Helper()
	out := map[string]string{}
	for k, v := range etcdDump(t, cli) {
		for field, sealed := range sealedMembers(v) {
			id, err := testkeys.Keyring().KeyID(sealed)
			if err != nil {
				t.Fatalf("%s#%s is not a sealed value: %v", k, field, err)
			}
			out[k+"#"+field] = id
		}
	}
	return out
}

// copyRecord puts the value of etcd key from under key to.
func copyRecord(t *testing.T, cli *clientv3.Client, from, to string) {
	t.Helper()
	v, ok := etcdDump(t, cli)[from]
	if !ok {
		t.Fatalf("no record %s to copy", from)
	}
	if _, err := cli.Put(ctxb, to, string(v)); err != nil {
		t.Fatal(err)
	}
}

// Acceptance 3: after every flow, etcd holds no secret or token in plain
// text; a record copied to another key does not open; after a master-key
// rotation and a re-seal everything works, no record names the old key, and
// a broker with the new key alone opens everything.
func TestEtcdHoldsOnlySealedSecretsThatSurviveARotation(t *testing.T) {
	r := runFlows(t)
	// A consent left pending: its PKCE verifier is stored too.
	if _, err := r.in.admin.StartAuthorization(ctxb, &tokenbrokerv1.StartAuthorizationRequest{Provider: "sb", Account: "erin"}); err != nil {
		t.Fatalf("StartAuthorization(erin): %v", err)
	}
	cli := r.env.etcd.Client(t, nil)
	plain := openAll(t, r.env, testkeys.Keyring())
	for name, v := range plain {
		r.book.addStored(name, v)
	}
	for _, field := range []string{"client_secret", "previous_client_secret", "password", "refresh_token", "access_token", "id_token", "code_verifier", "client_certificate_key"} {
		found := false
		for name := range plain {
			found = found || strings.HasSuffix(name, "#"+field)
		}
		if !found {
			t.Errorf("no sealed %s in etcd: the flows must store every kind of secret", field)
		}
	}
	book := r.book.all()
	assertNoPlaintext(t, cli, book, "after the flows")

	// Records copied to another key do not open: a token is fetched anew,
	// an account or a provider is refused, and the provider never sees the
	// copied secret under the new name.
	const prefix = broker.DefaultPrefix
	copied := map[string]string{
		prefix + "tokens/sb//read":       prefix + "tokens/sb//stolen",
		prefix + "grants/sb/" + leakUser: prefix + "grants/sb/mallet",
		prefix + "providers/sb":          prefix + "providers/sbcopy",
	}
	for from, to := range copied {
		copyRecord(t, cli, from, to)
	}
	calls := r.sandbox.TokenCalls()
	got, err := r.in.tokens.GetToken(ctxb, &tokenbrokerv1.GetTokenRequest{Provider: "sb", Scopes: []string{"stolen"}})
	if err != nil {
		t.Fatalf("GetToken(sb, stolen) over a copied record: %v", err)
	}
	if got.GetToken().GetAccessToken() == plain[prefix+"tokens/sb//read#access_token"] {
		t.Errorf("a token record copied to another key was served under it")
	}
	if r.sandbox.TokenCalls() != calls+1 {
		t.Errorf("provider calls for a copied token record = %d, want 1 (fetched anew)", r.sandbox.TokenCalls()-calls)
	}
	ignored := false
	for _, e := range r.logs.FilterMessage("ignore undecodable token record").All() {
		ignored = ignored || strings.Contains(fmt.Sprint(e.ContextMap()["error"]), seal.ErrOpen.Error())
	}
	if !ignored {
		t.Errorf("no log says the copied token record did not open")
	}
	calls = r.sandbox.TokenCalls()
	_, err = r.in.tokens.GetToken(ctxb, &tokenbrokerv1.GetTokenRequest{Provider: "sb", Account: "mallet"})
	if status.Code(err) != codes.Internal {
		t.Errorf("GetToken(sb/mallet) over a copied grant = %v, want Internal", err)
	}
	_, err = r.in.admin.GetProvider(ctxb, &tokenbrokerv1.GetProviderRequest{Name: "sbcopy"})
	if status.Code(err) != codes.Internal {
		t.Errorf("GetProvider(sbcopy) over a copied provider = %v, want Internal", err)
	}
	_, err = r.in.tokens.GetToken(ctxb, &tokenbrokerv1.GetTokenRequest{Provider: "sbcopy"})
	if err == nil {
		t.Errorf("GetToken(sbcopy) over a copied provider succeeded")
	}
	if n := r.sandbox.TokenCalls() - calls; n != 0 {
		t.Errorf("provider calls with copied secrets = %d, want 0", n)
	}
	for _, to := range copied {
		if _, err := cli.Delete(ctxb, to); err != nil {
			t.Fatal(err)
		}
	}

	// Rotation: the new key first, the old one after it; restart.
	r.stop()
	next, err := seal.GenerateKey("rot2")
	if err != nil {
		t.Fatal(err)
	}
	rotated, err := seal.NewKeyring(next, testkeys.Primary)
	if err != nil {
		t.Fatal(err)
	}
	b, stopB := startSealed(t, r.env, rotated, zap.NewNop())
	served := plain[prefix+"tokens/sb//read#access_token"]
	calls = r.sandbox.TokenCalls()
	got, err = b.tokens.GetToken(ctxb, &tokenbrokerv1.GetTokenRequest{Provider: "sb", Scopes: []string{"read"}})
	if err != nil || got.GetToken().GetAccessToken() != served {
		t.Fatalf("GetToken(sb, read) after the restart with the rotated keyring = %v; want the stored token", err)
	}
	stats, err := broker.Reseal(ctxb, cli, prefix, rotated)
	if err != nil || stats.Failed != 0 || stats.Resealed == 0 || stats.Resealed > stats.Scanned {
		t.Fatalf("Reseal = %+v, %v; want records re-sealed, none failed", stats, err)
	}
	for name, id := range sealedKeyIDs(t, cli) {
		if id != "rot2" {
			t.Errorf("%s is sealed with %q after the re-seal, want rot2", name, id)
		}
	}
	assertNoPlaintext(t, cli, book, "after the re-seal")

	// Everything still works: stored tokens are served, grants refresh.
	r.checkServes(t, b, "the rotated keyring", served, calls)
	stopB()

	// The old key dropped: a broker with rot2 alone opens everything.
	newOnly, err := seal.NewKeyring(next)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := startSealed(t, r.env, newOnly, zap.NewNop())
	current := openAll(t, r.env, newOnly)[prefix+"tokens/sb//read#access_token"]
	r.checkServes(t, c, "the new key alone", current, r.sandbox.TokenCalls())
	grants, err := c.admin.ListGrants(ctxb, &tokenbrokerv1.ListGrantsRequest{})
	if err != nil || len(grants.GetGrants()) == 0 {
		t.Fatalf("ListGrants with the new key alone = %v, %v", grants, err)
	}
	for _, g := range grants.GetGrants() {
		if g.GetAccount() == leakUser && (!g.GetPassword().GetSet() || !g.GetRefreshToken().GetSet()) {
			t.Errorf("alice's grant with the new key alone: password set %v, refresh token set %v; want both",
				g.GetPassword().GetSet(), g.GetRefreshToken().GetSet())
		}
	}
	for _, name := range []string{"sb", "sbrest", "echo"} {
		p, err := c.admin.GetProvider(ctxb, &tokenbrokerv1.GetProviderRequest{Name: name})
		if err != nil || !p.GetProvider().GetClientSecret().GetSet() {
			t.Errorf("GetProvider(%s) with the new key alone = %v, %v; want its secret set", name, p, err)
		}
	}
}

// checkServes asserts that in serves the stored token of sb's "read" scope
// without calling the provider (calls is the provider's count before), and
// that the stored secrets still get tokens: the client secret, alice's
// rotating refresh token, sbrest's previous secret.
func (r *flowRun) checkServes(t *testing.T, in *instance, keyring, stored string, calls int) {
	t.Helper()
	got, err := in.tokens.GetToken(ctxb, &tokenbrokerv1.GetTokenRequest{Provider: "sb", Scopes: []string{"read"}})
	if err != nil || got.GetToken().GetAccessToken() != stored {
		t.Fatalf("GetToken(sb, read) with %s = %v; want the stored token", keyring, err)
	}
	if n := r.sandbox.TokenCalls() - calls; n != 0 {
		t.Errorf("provider calls serving the stored token with %s = %d, want 0", keyring, n)
	}
	reused := r.sandbox.ReusedRefreshTokens()
	for _, req := range []*tokenbrokerv1.RefreshRequest{
		{Provider: "sb", Scopes: []string{"read"}},
		{Provider: "sb", Account: leakUser},
		{Provider: "sbrest"},
	} {
		if _, err := in.tokens.Refresh(ctxb, req); err != nil {
			t.Errorf("Refresh(%s/%s) with %s: %v", req.GetProvider(), req.GetAccount(), keyring, err)
		}
	}
	if n := r.sandbox.ReusedRefreshTokens() - reused; n != 0 {
		t.Errorf("provider saw %d reused refresh tokens with %s, want 0", n, keyring)
	}
	for _, req := range r.sandbox.Requests()[calls:] {
		if req.Form.Get("grant_type") == "password" {
			t.Errorf("with %s the broker fell back to the password grant: the stored refresh token did not open", keyring)
		}
	}
}
