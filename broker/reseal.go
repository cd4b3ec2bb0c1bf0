package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/tokenbroker/tokenbroker/broker/seal"
)

// Re-sealing after a master-key rotation. Every record field that holds a
// sealed value is named "<field>_sealed" in the record's JSON, and is sealed
// with the additional data "<etcd key>#<field>" (see store.go). Reseal
// finds such fields in every record under the prefix, so a sealed field
// added later is re-sealed without a change here.

// ErrResealIncomplete: Reseal left records sealed with an old key (see
// ResealStats.Failures); the old key must stay in the keyring until a later
// Reseal succeeds.
var ErrResealIncomplete = errors.New("broker: re-seal incomplete")

// ResealStats counts what Reseal did.
type ResealStats struct {
	// Scanned is the number of records that hold at least one sealed
	// value.
	Scanned int
	// Resealed is the number of records written back with every sealed
	// value under the primary key.
	Resealed int
	// Signed is the number of records that had no tag and were given one
	// (SignUntagged).
	Signed int
	// Failed is the number of records left as they were: a value sealed
	// with a key the keyring does not hold, one that does not open or is no
	// sealed value at all, a lock that could not be taken, or a record
	// that kept changing under the re-seal.
	Failed int
	// Failures says why, one error per failed record (at most
	// maxResealFailures): the etcd key and the cause, never a value.
	Failures []error
}

const (
	resealPageSize     = 256
	resealStoreTimeout = 5 * time.Second
	// resealLockTimeout bounds the wait for a grant's lock: a fetch holds
	// it for at most a broker's FetchTimeout (30s by default).
	resealLockTimeout = time.Minute
	maxResealFailures = 100
	sealedSuffix      = "_sealed"
)

// Reseal re-seals every sealed value under prefix (DefaultPrefix when
// empty) that keys' primary key did not seal, with the same additional
// data, so that the older keys can then be dropped. It may run while
// brokers serve: each record is written back with a compare-and-swap on its
// mod revision (retried a few times when the record changes meanwhile),
// keeping its lease, and grant and provider records are re-sealed under the
// grant locks the brokers take to refresh, so that no in-flight refresh
// loses a rotated refresh token to the re-seal's write.
//
// A record that cannot be re-sealed is counted in Failed and the walk goes
// on; Reseal then returns the stats and an error wrapping
// ErrResealIncomplete. It returns an error wrapping ErrStoreUnavailable
// when etcd cannot be read, or the context's error when ctx ends. No error
// and no stat carries a secret, a token or key material.
//
// With SignUntagged, records of the kinds that must carry a tag made with
// the master key (providers, grants, pending authorizations, API keys; see
// seal.SignRecord) that have none are given one, trusting what they hold:
// the step after upgrading from a version that did not tag records, taken
// while no one else can write to etcd. Without it, such records are left
// as they are, and the brokers refuse them.
func Reseal(ctx context.Context, cli *clientv3.Client, prefix string, keys *seal.Keyring, opts ...ResealOption) (ResealStats, error) {
	if cli == nil || keys == nil {
		return ResealStats{}, errors.New("broker: reseal needs an etcd client and a keyring")
	}
	prefix = cmp(prefix, DefaultPrefix)
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	r := &resealer{cli: cli, prefix: prefix, keys: keys}
	for _, o := range opts {
		o(r)
	}
	defer r.close()
	err := r.run(ctx)
	if err == nil && r.stats.Failed > 0 {
		err = fmt.Errorf("%w: %d of %d records still need a key other than %q",
			ErrResealIncomplete, r.stats.Failed, r.stats.Scanned, keys.PrimaryID())
	}
	return r.stats, err
}

// Reseal re-seals the records under the broker's prefix with its keyring's
// primary key; see the function Reseal.
func (b *Broker) Reseal(ctx context.Context) (ResealStats, error) {
	return Reseal(ctx, b.cli, b.prefix, b.keys)
}

// ResealOption adjusts Reseal.
type ResealOption func(*resealer)

// SignUntagged makes Reseal tag the records that must carry a tag and have
// none, trusting their content.
func SignUntagged() ResealOption { return func(r *resealer) { r.signUntagged = true } }

// taggedPrefixes are the kinds of record that carry a tag made with the
// master key (below the broker's prefix; "apikeys/" is package apikey's).
var taggedPrefixes = []string{providersPrefix, grantsPrefix, statesPrefix, "apikeys/"}

type resealer struct {
	cli          *clientv3.Client
	prefix       string
	keys         *seal.Keyring
	signUntagged bool
	sess         *concurrency.Session
	stats        ResealStats
}

// untagged reports whether kv is a record that must carry a tag and has
// none.
func (r *resealer) untagged(kv *mvccpb.KeyValue) bool {
	rest := strings.TrimPrefix(string(kv.Key), r.prefix)
	for _, p := range taggedPrefixes {
		if strings.HasPrefix(rest, p) {
			return !seal.HasRecordTag(kv.Value)
		}
	}
	return false
}

func (r *resealer) close() {
	if r.sess != nil {
		r.sess.Close() // revokes the lease: any lock still held goes with it
	}
}

// run walks the prefix a page at a time, in key order.
func (r *resealer) run(ctx context.Context) error {
	end := clientv3.GetPrefixRangeEnd(r.prefix)
	for from := r.prefix; ; {
		sctx, cancel := context.WithTimeout(ctx, resealStoreTimeout)
		resp, err := r.cli.Get(sctx, from, clientv3.WithRange(end), clientv3.WithLimit(resealPageSize))
		cancel()
		if err != nil {
			return storeError(ctx, "reseal: read "+r.prefix, err)
		}
		for _, kv := range resp.Kvs {
			if err := r.record(ctx, kv); err != nil {
				return err
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// record re-seals one record if it needs it. It returns only errors that
// end the walk: the context's.
func (r *resealer) record(ctx context.Context, kv *mvccpb.KeyValue) error {
	key := string(kv.Key)
	if r.signUntagged && r.untagged(kv) {
		if err := r.sign(ctx, kv); err != nil {
			return err
		}
		// Signed from what it held; a sealed value under an old key is
		// re-sealed on the next run.
		return nil
	}
	fields, ok := sealedFields(kv.Value)
	if !ok {
		return nil
	}
	r.stats.Scanned++
	if !r.needsReseal(fields) {
		return nil
	}
	resealed, err := r.rewriteLocked(ctx, key, kv, func(value []byte) ([]byte, bool, error) {
		fields, ok := sealedFields(value)
		if !ok || !r.needsReseal(fields) {
			return nil, false, nil
		}
		val, err := r.rewrite(key, value, fields)
		return val, err == nil, err
	})
	return r.count(ctx, key, resealed, err, &r.stats.Resealed)
}

// sign tags an untagged record of a tagged kind.
func (r *resealer) sign(ctx context.Context, kv *mvccpb.KeyValue) error {
	key := string(kv.Key)
	signed, err := r.rewriteLocked(ctx, key, kv, func(value []byte) ([]byte, bool, error) {
		if seal.HasRecordTag(value) {
			return nil, false, nil
		}
		val, err := r.keys.SignRecord(key, value)
		return val, err == nil, err
	})
	return r.count(ctx, key, signed, err, &r.stats.Signed)
}

// count records the outcome of a rewrite of key. It returns only errors
// that end the walk: the context's.
func (r *resealer) count(ctx context.Context, key string, wrote bool, err error, n *int) error {
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case err != nil:
		r.stats.Failed++
		if len(r.stats.Failures) < maxResealFailures {
			r.stats.Failures = append(r.stats.Failures, fmt.Errorf("%s: %w", key, err))
		}
	case wrote:
		*n++
	}
	return nil
}

func (r *resealer) needsReseal(fields map[string][]byte) bool {
	for _, v := range fields {
		if v == nil || r.keys.NeedsReseal(v) {
			return true
		}
	}
	return false
}

// rewriteLocked takes the grant locks key needs, then writes back what
// change makes of its value with a bounded compare-and-swap loop. change
// reports false when the value needs no write (any more). rewriteLocked
// reports whether it wrote the record; a record that was deleted, or
// rewritten by someone else meanwhile, needs no write.
func (r *resealer) rewriteLocked(ctx context.Context, key string, kv *mvccpb.KeyValue, change func([]byte) ([]byte, bool, error)) (bool, error) {
	unlock, err := r.lock(ctx, key)
	if err != nil {
		return false, err
	}
	defer unlock()
	for range maxCASAttempts {
		val, write, err := change(kv.Value)
		if err != nil {
			return false, err
		}
		if !write {
			return false, nil
		}
		sctx, cancel := context.WithTimeout(ctx, resealStoreTimeout)
		resp, err := r.cli.Txn(sctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)).
			Then(clientv3.OpPut(key, string(val), clientv3.WithIgnoreLease())).
			Else(clientv3.OpGet(key)).Commit()
		cancel()
		if err != nil {
			return false, storeError(ctx, "write", err)
		}
		if resp.Succeeded {
			return true, nil
		}
		kvs := resp.Responses[0].GetResponseRange().GetKvs()
		if len(kvs) == 0 {
			return false, nil // deleted meanwhile
		}
		kv = kvs[0]
	}
	return false, fmt.Errorf("%w: changed %d times during the re-seal", ErrConflict, maxCASAttempts)
}

// rewrite returns the record value with every sealed field that needs it
// re-sealed under the primary key, every other member kept as it was.
func (r *resealer) rewrite(key string, value []byte, fields map[string][]byte) ([]byte, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(value, &obj); err != nil {
		return nil, fmt.Errorf("decode record: %w", err)
	}
	for _, name := range slices.Sorted(maps.Keys(fields)) {
		sealed := fields[name]
		if sealed == nil {
			return nil, fmt.Errorf("field %s is not a sealed value", name)
		}
		if !r.keys.NeedsReseal(sealed) {
			continue
		}
		field := strings.TrimSuffix(name, sealedSuffix)
		out, err := r.keys.Reseal(key+"#"+field, sealed)
		if err != nil {
			return nil, fmt.Errorf("field %s: %w", field, err)
		}
		if obj[name], err = json.Marshal(out); err != nil {
			return nil, err
		}
	}
	return json.Marshal(obj)
}

// lock takes the grant locks that a write of key must hold so that it
// cannot invalidate an in-flight fetch: a fetch's fenced commit compares the
// mod revisions of its grant and of its provider, and a commit that loses
// that compare discards a refresh token the provider may have rotated
// already. A grant needs its own lock; a provider the locks of all its
// grants, taken in key order. Other records (tokens, pending
// authorizations) need none: no fenced write compares them.
func (r *resealer) lock(ctx context.Context, key string) (func(), error) {
	rest := strings.TrimPrefix(key, r.prefix)
	var gids []string
	switch {
	case strings.HasPrefix(rest, grantsPrefix):
		gids = []string{strings.TrimPrefix(rest, grantsPrefix)}
	case strings.HasPrefix(rest, providersPrefix):
		name := strings.TrimPrefix(rest, providersPrefix)
		grants := r.prefix + grantsPrefix + name + "/"
		sctx, cancel := context.WithTimeout(ctx, resealStoreTimeout)
		resp, err := r.cli.Get(sctx, grants, clientv3.WithPrefix(), clientv3.WithKeysOnly())
		cancel()
		if err != nil {
			return nil, storeError(ctx, "list grants", err)
		}
		for _, kv := range resp.Kvs {
			gids = append(gids, strings.TrimPrefix(string(kv.Key), r.prefix+grantsPrefix))
		}
	}
	if len(gids) == 0 {
		return func() {}, nil
	}
	if r.sess == nil {
		s, err := concurrency.NewSession(r.cli, concurrency.WithTTL(10), concurrency.WithContext(ctx))
		if err != nil {
			return nil, storeError(ctx, "start session", err)
		}
		r.sess = s
	}
	var held []*concurrency.Mutex
	unlock := func() {
		for _, m := range slices.Backward(held) {
			uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), resealStoreTimeout)
			_ = m.Unlock(uctx) // the session's lease releases it at the latest on close
			cancel()
		}
	}
	lctx, cancel := context.WithTimeout(ctx, resealLockTimeout)
	defer cancel()
	for _, gid := range gids {
		m := concurrency.NewMutex(r.sess, r.prefix+locksPrefix+gid)
		if err := m.Lock(lctx); err != nil {
			unlock()
			return nil, fmt.Errorf("%w: lock grant %s: %v", ErrStoreUnavailable, gid, err)
		}
		held = append(held, m)
	}
	return unlock, nil
}

// sealedFields returns the "<field>_sealed" members of a record that is a
// JSON object, with their decoded bytes (nil for a member that is not a
// base64 string), leaving out empty and null ones. ok is false for a value
// that is not a JSON object or holds no sealed member.
func sealedFields(value []byte) (fields map[string][]byte, ok bool) {
	if !bytes.HasPrefix(bytes.TrimLeft(value, " \t\r\n"), []byte("{")) {
		return nil, false
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(value, &obj); err != nil {
		return nil, false
	}
	for name, raw := range obj {
		if !strings.HasSuffix(name, sealedSuffix) || string(raw) == "null" {
			continue
		}
		var b []byte
		if err := json.Unmarshal(raw, &b); err != nil {
			b = nil // not base64: reported when the record is re-sealed
		} else if len(b) == 0 {
			continue
		}
		if fields == nil {
			fields = make(map[string][]byte)
		}
		fields[name] = b
	}
	return fields, len(fields) > 0
}
