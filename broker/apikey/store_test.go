package apikey_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/tokenbroker/tokenbroker/broker/apikey"
	"github.com/tokenbroker/tokenbroker/broker/event"
	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
	"github.com/tokenbroker/tokenbroker/internal/testkeys"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const prefix = "/tokenbroker/"

func newStore(t *testing.T, cli *clientv3.Client) *apikey.Store {
	t.Helper()
	s, err := apikey.NewStore(t.Context(), cli, prefix, testkeys.Keyring(), zaptest.NewLogger(t))
	if err != nil {
		t.Fatalf("NewStore: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// eventually polls cond every 10ms until it holds or within elapses.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var keyFormat = regexp.MustCompile(`^tbk_([a-z2-7]{12})_([A-Za-z0-9_-]{43})$`)

func TestGenerateFormat(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		id, key, sum, err := apikey.Generate()
		if err != nil {
			t.Fatal(err)
		}
		m := keyFormat.FindStringSubmatch(key)
		if m == nil || m[1] != id {
			t.Fatalf("Generate() key %q id %q, want tbk_<id>_<43 base64url chars>", key, id)
		}
		want := sha256.Sum256([]byte(m[2]))
		if sum != hex.EncodeToString(want[:]) {
			t.Errorf("Generate() sha256 = %s, want the hex SHA-256 of the secret part", sum)
		}
		if got, ok := apikey.ParseID(key); !ok || got != id {
			t.Errorf("ParseID(key) = %q, %v; want %q", got, ok, id)
		}
		if seen[id] {
			t.Errorf("Generate() repeated id %s", id)
		}
		seen[id] = true
	}
}

func TestCreateAuthenticateRetire(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t, nil)
	s := newStore(t, cli)
	ctx := t.Context()

	k, key, err := s.Create(ctx, "spiffe://corp/billing", "billing service")
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if k.Identity != "spiffe://corp/billing" || k.Description != "billing service" || k.CreateTime.IsZero() || k.Retired() {
		t.Errorf("Create = %+v, want the identity, description and a create time", k)
	}
	if !strings.HasPrefix(key, "tbk_"+k.ID+"_") {
		t.Errorf("key %q does not start with tbk_<id>_", key)
	}
	if got, err := s.Authenticate(key); err != nil || got != "spiffe://corp/billing" {
		t.Fatalf("Authenticate(new key) = %q, %v; want the identity", got, err)
	}

	// etcd holds the hash, never the key or its secret part.
	resp, err := cli.Get(ctx, prefix+"apikeys/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Key) != prefix+"apikeys/"+k.ID {
		t.Fatalf("etcd holds %d keys under apikeys/, want 1 named by the id", len(resp.Kvs))
	}
	secret := key[len("tbk_")+12+1:]
	if v := string(resp.Kvs[0].Value); strings.Contains(v, secret) || strings.Contains(v, secret[:9]) {
		t.Errorf("etcd value %s holds the secret", v)
	}

	bad := []struct {
		name string
		give string
	}{
		{"empty", ""},
		{"garbage", "hello"},
		{"wrong secret", key[:len(key)-1] + flip(key[len(key)-1])},
		{"unknown id", "tbk_aaaaaaaaaaaa_" + secret},
		{"truncated", key[:len(key)-1]},
		{"bearer prefix left in", "Bearer " + key},
	}
	for _, tt := range bad {
		if got, err := s.Authenticate(tt.give); !errors.Is(err, apikey.ErrUnauthenticated) || got != "" {
			t.Errorf("Authenticate(%s) = %q, %v; want ErrUnauthenticated", tt.name, got, err)
		}
	}

	retired, err := s.Retire(ctx, k.ID)
	if err != nil || !retired.Retired() {
		t.Fatalf("Retire = %+v, %v; want a retired key", retired, err)
	}
	if _, err := s.Authenticate(key); !errors.Is(err, apikey.ErrUnauthenticated) {
		t.Errorf("Authenticate(retired key) on the retiring store = %v, want ErrUnauthenticated at once", err)
	}
	again, err := s.Retire(ctx, k.ID)
	if err != nil || !again.RetireTime.Equal(retired.RetireTime) {
		t.Errorf("second Retire = %+v, %v; want the key unchanged", again, err)
	}
	if _, err := s.Retire(ctx, "bbbbbbbbbbbb"); !errors.Is(err, apikey.ErrNotFound) {
		t.Errorf("Retire(unknown) = %v, want ErrNotFound", err)
	}
	if _, err := s.Retire(ctx, "../providers/x"); !errors.Is(err, apikey.ErrNotFound) {
		t.Errorf("Retire(malformed id) = %v, want ErrNotFound", err)
	}

	keys, err := s.List(ctx)
	if err != nil || len(keys) != 1 || keys[0].ID != k.ID || !keys[0].Retired() {
		t.Errorf("List = %+v, %v; want the one retired key", keys, err)
	}
}

func flip(c byte) string {
	if c == 'A' {
		return "B"
	}
	return "A"
}

func TestCreateValidates(t *testing.T) {
	e := etcdtest.Start(t)
	s := newStore(t, e.Client(t, nil))
	tests := []struct {
		name, identity, description string
	}{
		{"empty identity", "", ""},
		{"control character", "svc\n", ""},
		{"surrounding space", " svc", ""},
		{"long identity", strings.Repeat("a", apikey.MaxIdentity+1), ""},
		{"long description", "svc", strings.Repeat("d", apikey.MaxDescription+1)},
		{"not UTF-8", "svc\xff", ""},
	}
	for _, tt := range tests {
		if _, _, err := s.Create(t.Context(), tt.identity, tt.description); !errors.Is(err, apikey.ErrInvalidArgument) {
			t.Errorf("Create(%s) = %v, want ErrInvalidArgument", tt.name, err)
		}
	}
}

// TestSecondStoreFollows: keys created and retired through one store are
// seen by another on the same etcd, through its watch.
func TestSecondStoreFollows(t *testing.T) {
	e := etcdtest.Start(t)
	a := newStore(t, e.Client(t, nil))
	ctx := t.Context()
	old, oldKey, err := a.Create(ctx, "svc-old", "")
	if err != nil {
		t.Fatal(err)
	}
	counter := &etcdtest.Counter{}
	b := newStore(t, e.Client(t, counter))
	// Loaded at start.
	if got, err := b.Authenticate(oldKey); err != nil || got != "svc-old" {
		t.Fatalf("second store Authenticate(key created before it started) = %q, %v", got, err)
	}
	// Created after it started: arrives through the watch.
	_, newKey, err := a.Create(ctx, "svc-new", "")
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Second, "second store accepts a key created on the first", func() bool {
		id, err := b.Authenticate(newKey)
		return err == nil && id == "svc-new"
	})
	if _, err := a.Retire(ctx, old.ID); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Second, "second store rejects a key retired on the first", func() bool {
		_, err := b.Authenticate(oldKey)
		return errors.Is(err, apikey.ErrUnauthenticated)
	})
	// Authentication makes no etcd request.
	before := counter.Load()
	for range 1000 {
		if _, err := b.Authenticate(newKey); err != nil {
			t.Fatal(err)
		}
	}
	if n := counter.Load() - before; n != 0 {
		t.Errorf("etcd requests during 1000 authentications = %d, want 0", n)
	}
	// Deleted in etcd by an operator: gone here too.
	if _, err := e.Client(t, nil).Delete(ctx, prefix+"apikeys/", clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Second, "second store rejects a key deleted from etcd", func() bool {
		_, err := b.Authenticate(newKey)
		return errors.Is(err, apikey.ErrUnauthenticated)
	})
}

// TestWatchSurvivesCompaction: etcd compacts away revisions a follower has
// seen; the follower keeps following.
func TestWatchSurvivesCompaction(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t, nil)
	writer := newStore(t, cli)
	ctx := t.Context()
	follower := newStore(t, e.Client(t, nil))
	_, k1, err := writer.Create(ctx, "svc-1", "")
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Second, "follower sees the first key", func() bool { _, err := follower.Authenticate(k1); return err == nil })
	// Churn and compact: the follower is current, so this only proves it
	// keeps following after etcd compacted what it saw.
	for range 5 {
		if _, err := cli.Put(ctx, "/unrelated", "x"); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := cli.Get(ctx, "/unrelated")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	_, k2, err := writer.Create(ctx, "svc-2", "")
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Second, "follower sees a key created after compaction", func() bool { _, err := follower.Authenticate(k2); return err == nil })
}

func TestStaticKeys(t *testing.T) {
	e := etcdtest.Start(t)
	s := newStore(t, e.Client(t, nil))
	id, key, sum, err := apikey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	if s.Usable() {
		t.Errorf("Usable() on an empty store = true, want false")
	}
	if err := s.SetStatic([]apikey.StaticKey{{ID: id, Identity: "bootstrap-admin", SHA256: sum}}); err != nil {
		t.Fatalf("SetStatic: %v", err)
	}
	if !s.Usable() {
		t.Errorf("Usable() with a static key = false, want true")
	}
	if got, err := s.Authenticate(key); err != nil || got != "bootstrap-admin" {
		t.Errorf("Authenticate(static key) = %q, %v; want bootstrap-admin", got, err)
	}
	if _, err := s.Retire(t.Context(), id); !errors.Is(err, apikey.ErrStatic) {
		t.Errorf("Retire(static) = %v, want ErrStatic", err)
	}
	keys, err := s.List(t.Context())
	if err != nil || len(keys) != 1 || !keys[0].Static || keys[0].Identity != "bootstrap-admin" {
		t.Errorf("List = %+v, %v; want the static key", keys, err)
	}
	// Replacing the set removes the key.
	if err := s.SetStatic(nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authenticate(key); !errors.Is(err, apikey.ErrUnauthenticated) {
		t.Errorf("Authenticate(removed static key) = %v, want ErrUnauthenticated", err)
	}

	bad := []struct {
		name string
		give []apikey.StaticKey
		want string
	}{
		{"bad id", []apikey.StaticKey{{ID: "ABC", Identity: "x", SHA256: sum}}, `static key id "ABC"`},
		{"bad hash", []apikey.StaticKey{{ID: id, Identity: "x", SHA256: "zz"}}, "sha256 is not 64 hex digits"},
		{"no identity", []apikey.StaticKey{{ID: id, SHA256: sum}}, "identity is empty"},
		{"twice", []apikey.StaticKey{{ID: id, Identity: "x", SHA256: sum}, {ID: id, Identity: "y", SHA256: sum}}, "declared twice"},
	}
	for _, tt := range bad {
		if err := s.SetStatic(tt.give); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("SetStatic(%s) = %v, want an error containing %q", tt.name, err, tt.want)
		}
	}
}

func TestNewStoreUnreachableEtcd(t *testing.T) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"127.0.0.1:1"}, DialTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	if _, err := apikey.NewStore(ctx, cli, prefix, testkeys.Keyring(), nil); err == nil {
		t.Errorf("NewStore with etcd down = nil error, want one")
	}
}

func BenchmarkAuthenticate(b *testing.B) {
	e := etcdtest.Start(b)
	s, err := apikey.NewStore(context.Background(), e.Client(b, nil), prefix, testkeys.Keyring(), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	_, key, err := s.Create(context.Background(), "svc", "")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Authenticate(key); err != nil {
			b.Fatal(err)
		}
	}
}

// forgedRecord is what a process that can write to etcd but does not hold
// the master key can store: a key record in the shape the store uses, for
// a secret it knows, bound to identity.
func forgedRecord(t *testing.T, identity string) (id, key, value string) {
	t.Helper()
	id, key, sum, err := apikey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	rec, err := json.Marshal(map[string]any{"identity": identity, "sha256": sum, "create_time": time.Now().UTC()})
	if err != nil {
		t.Fatal(err)
	}
	return id, key, string(rec)
}

// A key record written straight into etcd, or an authentic one edited
// there, is refused: at load, through the watch, and in listings, and the
// refusal is logged and counted.
func TestForgedKeyRecordIsRefused(t *testing.T) {
	e := etcdtest.Start(t)
	attacker := e.Client(t, nil)
	core, logs := observer.New(zap.InfoLevel)
	open := func() *apikey.Store {
		s, err := apikey.NewStore(t.Context(), e.Client(t, nil), prefix, testkeys.Keyring(), zap.New(core))
		if err != nil {
			t.Fatalf("NewStore: %v", err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	put := func(k, v string) {
		t.Helper()
		if _, err := attacker.Put(t.Context(), prefix+"apikeys/"+k, v); err != nil {
			t.Fatal(err)
		}
	}
	before := apikey.UntrustedRecords()

	// Written before the store starts: never loaded.
	idA, keyA, recA := forgedRecord(t, "admin")
	put(idA, recA)
	running := open()
	// Written while it runs: the watch ignores it.
	idB, keyB, recB := forgedRecord(t, "admin")
	put(idB, recB)
	// An authentic key whose record is edited to name another identity,
	// its tag kept.
	_, keyC, err := running.Create(t.Context(), "reader", "")
	if err != nil {
		t.Fatal(err)
	}
	if id, err := running.Authenticate(keyC); err != nil || id != "reader" {
		t.Fatalf("Authenticate(authentic key) = %q, %v; want reader", id, err)
	}
	resp, err := attacker.Get(t.Context(), prefix+"apikeys/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		if v := string(kv.Value); strings.Contains(v, `"reader"`) {
			put(strings.TrimPrefix(string(kv.Key), prefix+"apikeys/"), strings.Replace(v, `"reader"`, `"admin"`, 1))
		}
	}
	// Let the watch deliver the three writes: a key created after them is
	// seen once they are.
	_, marker, err := open().Create(t.Context(), "marker", "")
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the running store sees a key created after the forgeries", func() bool {
		_, err := running.Authenticate(marker)
		return err == nil
	})
	fresh := open()

	for _, s := range []struct {
		name  string
		store *apikey.Store
	}{{"running store", running}, {"store started after the forgeries", fresh}} {
		for _, k := range []struct{ what, key string }{
			{"forged before start", keyA}, {"forged while running", keyB}, {"authentic key edited to admin", keyC},
		} {
			if id, err := s.store.Authenticate(k.key); !errors.Is(err, apikey.ErrUnauthenticated) {
				t.Errorf("%s: Authenticate(%s) = %q, %v; want ErrUnauthenticated", s.name, k.what, id, err)
			}
		}
		keys, err := s.store.List(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			if k.ID == idA || k.ID == idB || k.Identity == "admin" {
				t.Errorf("%s: List shows %+v, a key that failed authentication", s.name, k)
			}
		}
	}
	refused := 0
	for _, entry := range logs.All() {
		for _, f := range entry.Context {
			if f.Key == "error" && strings.Contains(fmt.Sprint(f.Interface), "failed authentication") {
				refused++
			}
		}
	}
	if refused == 0 {
		t.Errorf("no log line says a stored key failed authentication; logged: %v", logs.All())
	}
	if got := apikey.UntrustedRecords() - before; got < 3 {
		t.Errorf("UntrustedRecords grew by %d, want at least 3 (one per forged record)", got)
	}
}

// Issuing and retiring a key records an event each, in the same
// transaction, naming the key's id and identity and never the key.
func TestKeyEvents(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t, nil)
	s := newStore(t, cli)
	k, plaintext, err := s.Create(t.Context(), "svc-events", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Retire(t.Context(), k.ID); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(t.Context(), prefix+event.Prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var got []event.Type
	for _, kv := range resp.Kvs {
		if err := testkeys.Keyring().VerifyRecord(string(kv.Key), kv.Value); err != nil {
			t.Errorf("event record %s is not tagged: %v", kv.Key, err)
		}
		ev, err := event.Decode(kv.Value, kv.ModRevision)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, ev.Type)
		if ev.Subject != k.ID || !strings.Contains(ev.Detail, "svc-events") {
			t.Errorf("event %s is about %q (%q), want key %s of svc-events", ev.Type, ev.Subject, ev.Detail, k.ID)
		}
		_, secret, _ := strings.Cut(strings.TrimPrefix(plaintext, "tbk_"), "_")
		if strings.Contains(string(kv.Value), secret) {
			t.Errorf("event %s carries the key", ev.Type)
		}
	}
	if len(got) != 2 || got[0] != event.APIKeyCreated || got[1] != event.APIKeyRetired {
		t.Errorf("events %v, want apikey.created then apikey.retired", got)
	}
}
