package apikey

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tokenbroker/tokenbroker/broker/event"
	"github.com/tokenbroker/tokenbroker/broker/seal"
)

var base64URL = base64.RawURLEncoding

// keysPrefix is where keys live below the broker's etcd prefix.
const keysPrefix = "apikeys/"

const (
	storeTimeout   = 5 * time.Second
	maxCASAttempts = 5
	resumeDelay    = 250 * time.Millisecond
)

// storedKey is the etcd encoding of a key: the hash of its secret part,
// never the key.
type storedKey struct {
	Identity    string    `json:"identity"`
	Description string    `json:"description,omitempty"`
	SHA256      string    `json:"sha256"`
	CreateTime  time.Time `json:"create_time"`
	RetireTime  time.Time `json:"retire_time,omitzero"`
}

func (s *storedKey) key(id string) Key {
	return Key{ID: id, Identity: s.Identity, Description: s.Description, CreateTime: s.CreateTime, RetireTime: s.RetireTime}
}

// entry is what Authenticate needs of a key.
type entry struct {
	identity string
	sum      [32]byte
	retired  bool
	rev      int64 // etcd mod revision; 0 for static keys
}

// Store holds the API keys: those issued through Create, kept in etcd and
// mirrored in memory by a watch, and the static ones from the config file.
// It is safe for concurrent use. Close stops the watch.
type Store struct {
	cli    *clientv3.Client
	prefix string // full etcd prefix of the keys
	base   string // the broker's etcd prefix, where events go
	seal   *seal.Keyring
	log    *zap.Logger
	now    func() time.Time

	mu      sync.Mutex                       // serializes writers of keys
	keys    atomic.Pointer[map[string]entry] // copy on write: readers take no lock
	static  atomic.Pointer[map[string]entry]
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	closing sync.Once
}

// NewStore loads the keys stored under prefix+"apikeys/" and starts the
// watch that keeps them current; keys created or retired on any replica
// take effect here within a watch delivery. prefix is the broker's etcd
// prefix (e.g. "/tokenbroker/"). Every stored key carries a tag made with
// keys, the master keyring (see seal.SignRecord): a record without a valid
// tag — one written into etcd by someone without the master key — is
// ignored and logged, never trusted. It returns an error wrapping
// ErrStoreUnavailable when etcd cannot be read; cancelling ctx abandons the
// load. The Store does not close cli.
func NewStore(ctx context.Context, cli *clientv3.Client, prefix string, keys *seal.Keyring, log *zap.Logger) (*Store, error) {
	if cli == nil {
		return nil, errors.New("apikey: no etcd client")
	}
	if keys == nil {
		return nil, errors.New("apikey: no master keyring")
	}
	if log == nil {
		log = zap.NewNop()
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	s := &Store{cli: cli, prefix: prefix + keysPrefix, base: prefix, seal: keys, log: log.Named("apikeys"), now: time.Now}
	empty := map[string]entry{}
	s.keys.Store(&empty)
	s.static.Store(&empty)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	rev, err := s.reload(ctx)
	if err != nil {
		s.cancel()
		return nil, err
	}
	s.wg.Add(1)
	go s.follow(rev)
	return s, nil
}

// Close stops the watch and waits for it. It is safe to call more than once.
func (s *Store) Close() error {
	s.closing.Do(func() {
		s.cancel()
		s.wg.Wait()
	})
	return nil
}

// SetStatic replaces the static keys. It fails, changing nothing, when a
// declaration is malformed (see ValidateStatic).
func (s *Store) SetStatic(keys []StaticKey) error {
	if err := ValidateStatic(keys); err != nil {
		return err
	}
	m := make(map[string]entry, len(keys))
	for _, k := range keys {
		sum, _ := validateStatic(k)
		m[k.ID] = entry{identity: k.Identity, sum: sum}
	}
	s.static.Store(&m)
	return nil
}

// Usable reports whether at least one key (static or stored) can
// authenticate.
func (s *Store) Usable() bool {
	if len(*s.static.Load()) > 0 {
		return true
	}
	for _, e := range *s.keys.Load() {
		if !e.retired {
			return true
		}
	}
	return false
}

// dummy is compared against when the id is unknown, so that an unknown id
// costs what a wrong secret costs.
var dummy = entry{sum: sha256.Sum256([]byte("tokenbroker-unknown-key"))}

// Authenticate returns the identity key is bound to. It makes no etcd
// call. A malformed, unknown or retired key, or a wrong secret, is
// ErrUnauthenticated, with no detail about which.
func (s *Store) Authenticate(key string) (string, error) {
	id, secret, ok := split(key)
	if !ok {
		return "", ErrUnauthenticated
	}
	e, found := (*s.static.Load())[id]
	if !found {
		e, found = (*s.keys.Load())[id]
	}
	if !found {
		e = dummy
	}
	var buf [secretLen]byte // on the stack: the hot path allocates nothing
	copy(buf[:], secret)
	sum := sha256.Sum256(buf[:])
	clear(buf[:])
	match := subtle.ConstantTimeCompare(sum[:], e.sum[:]) == 1
	if !found || !match || e.retired {
		return "", ErrUnauthenticated
	}
	return e.identity, nil
}

// Create issues a key bound to identity and stores its hash. The returned
// plaintext key is the only copy; it cannot be recovered later. Errors wrap
// ErrInvalidArgument, ErrStoreUnavailable or a context error.
func (s *Store) Create(ctx context.Context, identity, description string) (Key, string, error) {
	if err := ValidateIdentity(identity); err != nil {
		return Key{}, "", err
	}
	if err := validateDescription(description); err != nil {
		return Key{}, "", err
	}
	for range maxCASAttempts {
		id, plaintext, sum, err := Generate()
		if err != nil {
			return Key{}, "", err
		}
		if _, taken := (*s.static.Load())[id]; taken {
			continue
		}
		sk := storedKey{Identity: identity, Description: description, SHA256: sum, CreateTime: s.now().UTC().Truncate(time.Microsecond)}
		etcdKey := s.prefix + id
		val, err := s.encode(etcdKey, &sk)
		if err != nil {
			return Key{}, "", err
		}
		sctx, cancel := context.WithTimeout(ctx, storeTimeout)
		ev, err := s.eventOp(event.APIKeyCreated, id, identity)
		if err != nil {
			cancel()
			return Key{}, "", err
		}
		resp, err := s.cli.Txn(sctx).If(clientv3.Compare(clientv3.CreateRevision(etcdKey), "=", 0)).
			Then(clientv3.OpPut(etcdKey, string(val)), ev).Commit()
		cancel()
		if err != nil {
			return Key{}, "", storeError(ctx, "create key", err)
		}
		if !resp.Succeeded { // an id collision: draw again
			continue
		}
		s.apply(id, &sk, resp.Header.Revision)
		return sk.key(id), plaintext, nil
	}
	return Key{}, "", fmt.Errorf("%w: no free key id after %d attempts", ErrConflict, maxCASAttempts)
}

// List returns every key, stored and static, sorted by id, read from etcd.
// Errors wrap ErrStoreUnavailable or a context error.
func (s *Store) List(ctx context.Context) ([]Key, error) {
	sctx, cancel := context.WithTimeout(ctx, storeTimeout)
	resp, err := s.cli.Get(sctx, s.prefix, clientv3.WithPrefix())
	cancel()
	if err != nil {
		return nil, storeError(ctx, "list keys", err)
	}
	var out []Key
	for _, kv := range resp.Kvs {
		sk, err := s.decode(kv)
		if err != nil {
			s.log.Error("list keys: skip a stored key", zap.Error(err))
			continue
		}
		out = append(out, sk.key(strings.TrimPrefix(string(kv.Key), s.prefix)))
	}
	for id, e := range *s.static.Load() {
		out = append(out, Key{ID: id, Identity: e.identity, Description: "static key from the config file", Static: true})
	}
	slices.SortFunc(out, func(a, b Key) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// Retire makes key id unusable, on this replica at once and on the others
// as soon as the watch delivers the change. Retiring a retired key returns
// it unchanged. Errors wrap ErrNotFound, ErrStatic (declared in the config
// file), ErrStoreUnavailable, ErrConflict or a context error.
func (s *Store) Retire(ctx context.Context, id string) (Key, error) {
	if _, ok := (*s.static.Load())[id]; ok {
		return Key{}, fmt.Errorf("%w: %s: remove it from the config file and reload", ErrStatic, id)
	}
	if !validID(id) {
		return Key{}, fmt.Errorf("%w: key %q", ErrNotFound, id)
	}
	etcdKey := s.prefix + id
	for range maxCASAttempts {
		sctx, cancel := context.WithTimeout(ctx, storeTimeout)
		resp, err := s.cli.Get(sctx, etcdKey)
		cancel()
		if err != nil {
			return Key{}, storeError(ctx, "read key", err)
		}
		if len(resp.Kvs) == 0 {
			return Key{}, fmt.Errorf("%w: key %q", ErrNotFound, id)
		}
		sk, err := s.decode(resp.Kvs[0])
		if err != nil {
			return Key{}, err
		}
		if !sk.RetireTime.IsZero() {
			return sk.key(id), nil
		}
		sk.RetireTime = s.now().UTC().Truncate(time.Microsecond)
		val, err := s.encode(etcdKey, sk)
		if err != nil {
			return Key{}, err
		}
		sctx, cancel = context.WithTimeout(ctx, storeTimeout)
		ev, err := s.eventOp(event.APIKeyRetired, id, sk.Identity)
		if err != nil {
			cancel()
			return Key{}, err
		}
		txn, err := s.cli.Txn(sctx).If(clientv3.Compare(clientv3.ModRevision(etcdKey), "=", resp.Kvs[0].ModRevision)).
			Then(clientv3.OpPut(etcdKey, string(val)), ev).Commit()
		cancel()
		if err != nil {
			return Key{}, storeError(ctx, "retire key", err)
		}
		if txn.Succeeded {
			s.apply(id, sk, txn.Header.Revision)
			return sk.key(id), nil
		}
	}
	return Key{}, fmt.Errorf("%w: key %q changed %d times during the update", ErrConflict, id, maxCASAttempts)
}

// apply records key id at rev unless memory already holds a newer state;
// sk nil deletes it. Watch events and the writes of this replica may
// arrive in any order; the revision decides.
func (s *Store) apply(id string, sk *storedKey, rev int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := *s.keys.Load()
	if old, ok := cur[id]; ok && old.rev > rev {
		return
	}
	next := maps.Clone(cur)
	if sk == nil {
		delete(next, id)
	} else {
		e, err := decodeEntry(sk)
		if err != nil {
			s.log.Error("skip malformed key", zap.String("key_id", id), zap.Error(err))
			delete(next, id)
		} else {
			e.rev = rev
			next[id] = e
		}
	}
	s.keys.Store(&next)
}

func decodeEntry(sk *storedKey) (entry, error) {
	e := entry{identity: sk.Identity, retired: !sk.RetireTime.IsZero()}
	b, err := hex.DecodeString(sk.SHA256)
	if err != nil || len(b) != len(e.sum) {
		return entry{}, errors.New("sha256 is not 64 hex digits")
	}
	copy(e.sum[:], b)
	return e, nil
}

// reload replaces memory with what etcd holds now and returns the revision
// read. Entries written by this replica after that revision are kept.
func (s *Store) reload(ctx context.Context) (int64, error) {
	sctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	resp, err := s.cli.Get(sctx, s.prefix, clientv3.WithPrefix())
	if err != nil {
		return 0, storeError(ctx, "load keys", err)
	}
	rev := resp.Header.Revision
	loaded := make(map[string]entry, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		id := strings.TrimPrefix(string(kv.Key), s.prefix)
		sk, err := s.decode(kv)
		if err != nil {
			s.log.Error("skip a stored key", zap.Error(err))
			continue
		}
		e, err := decodeEntry(sk)
		if err != nil {
			s.log.Error("skip malformed key", zap.String("key_id", id), zap.Error(err))
			continue
		}
		e.rev = kv.ModRevision
		loaded[id] = e
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, e := range *s.keys.Load() {
		if l, ok := loaded[id]; e.rev > rev && (!ok || e.rev > l.rev) {
			loaded[id] = e
		}
	}
	s.keys.Store(&loaded)
	return rev, nil
}

// follow applies every change after rev until Close. When the watch breaks
// it resumes from the last revision seen; when that revision was compacted
// away it reloads.
func (s *Store) follow(rev int64) {
	defer s.wg.Done()
	for {
		ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(s.ctx))
		for resp := range s.cli.Watch(ctx, s.prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
			if err := resp.Err(); err != nil {
				if errors.Is(err, rpctypes.ErrCompacted) || resp.CompactRevision != 0 {
					s.log.Warn("watch revision compacted; reloading", zap.Int64("revision", rev))
					if r, err := s.reload(s.ctx); err == nil {
						rev = r
					} else {
						s.log.Warn("reload after compaction", zap.Error(err))
					}
				} else {
					s.log.Warn("watch interrupted; resuming", zap.Int64("revision", rev), zap.Error(err))
				}
				break
			}
			for _, ev := range resp.Events {
				s.applyEvent(ev.Kv, ev.Type == clientv3.EventTypeDelete)
			}
			rev = max(rev, resp.Header.Revision)
		}
		cancel()
		select {
		case <-s.ctx.Done():
			return
		case <-time.After(resumeDelay):
		}
	}
}

func (s *Store) applyEvent(kv *mvccpb.KeyValue, deleted bool) {
	id := strings.TrimPrefix(string(kv.Key), s.prefix)
	if deleted {
		s.apply(id, nil, kv.ModRevision)
		return
	}
	sk, err := s.decode(kv)
	if err != nil {
		// A record that fails authentication takes away the key it
		// replaces too: whoever wrote it could write anything there.
		s.log.Error("skip a stored key", zap.Error(err))
		s.apply(id, nil, kv.ModRevision)
		return
	}
	s.apply(id, sk, kv.ModRevision)
}

// eventOp is the write of an event about key id of identity, tagged like
// the key records, to go in the transaction of the change.
func (s *Store) eventOp(t event.Type, id, identity string) (clientv3.Op, error) {
	e := event.New(t, s.now())
	e.Subject, e.Detail = id, "identity "+identity
	data, err := event.Encode(e)
	if err != nil {
		return clientv3.Op{}, err
	}
	key := event.Key(s.base, e.ID)
	if data, err = s.seal.SignRecord(key, data); err != nil {
		return clientv3.Op{}, fmt.Errorf("apikey: sign event: %w", err)
	}
	return clientv3.OpPut(key, string(data)), nil
}

// encode returns the etcd value of sk, tagged for etcdKey.
func (s *Store) encode(etcdKey string, sk *storedKey) ([]byte, error) {
	val, err := json.Marshal(sk)
	if err != nil {
		return nil, fmt.Errorf("apikey: encode: %w", err)
	}
	if val, err = s.seal.SignRecord(etcdKey, val); err != nil {
		return nil, fmt.Errorf("apikey: sign: %w", err)
	}
	return val, nil
}

// decode returns the key kv holds. It returns an error wrapping
// ErrUntrustedRecord when kv's tag does not verify (the key was not
// written by a holder of the master key), or a decoding error; neither
// quotes the value.
func (s *Store) decode(kv *mvccpb.KeyValue) (*storedKey, error) {
	id := strings.TrimPrefix(string(kv.Key), s.prefix)
	if err := s.seal.VerifyRecord(string(kv.Key), kv.Value); err != nil {
		untrustedRecords.Add(1)
		return nil, fmt.Errorf("%w: key %s: %w", ErrUntrustedRecord, id, err)
	}
	var sk storedKey
	if err := json.Unmarshal(kv.Value, &sk); err != nil {
		return nil, fmt.Errorf("apikey: decode key %s: %w", id, err)
	}
	return &sk, nil
}

// untrustedRecords counts stored keys that failed authentication.
var untrustedRecords atomic.Int64

// UntrustedRecords is the number of stored keys that failed
// authentication, read by any Store in this process.
func UntrustedRecords() int64 { return untrustedRecords.Load() }

// storeError turns an etcd error into ErrStoreUnavailable, except when the
// caller's own context ended: then its error passes through.
func storeError(ctx context.Context, op string, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return ctxErr
	}
	return fmt.Errorf("%w: %s: %v", ErrStoreUnavailable, op, err)
}
