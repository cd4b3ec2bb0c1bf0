package broker

import (
	"context"
	"errors"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// A mirror keeps the keys under one etcd prefix in memory.
type mirror struct {
	prefix string
	// apply applies one change; name is the key below prefix.
	apply func(name string, kv *mvccpb.KeyValue, deleted bool)
	// names lists the names held in memory, for the sweep after a reload.
	names func() []string
}

func (b *Broker) mirrors() []mirror {
	return []mirror{
		{prefix: b.prefix + providersPrefix, apply: b.applyProvider, names: syncMapKeys(&b.providers)},
		{prefix: b.prefix + tokensPrefix, apply: b.applyToken, names: syncMapKeys(&b.tokens)},
	}
}

func syncMapKeys(m interface{ Range(func(k, v any) bool) }) func() []string {
	return func() []string {
		var out []string
		m.Range(func(k, v any) bool {
			if e, ok := v.(*cacheEntry); !ok || e.rec.Load() != nil {
				out = append(out, k.(string))
			}
			return true
		})
		return out
	}
}

func (b *Broker) applyProvider(name string, kv *mvccpb.KeyValue, deleted bool) {
	if deleted {
		b.providers.Delete(name)
		return
	}
	p, err := b.decodeProvider(string(kv.Key), kv.Value, kv.ModRevision)
	if err != nil {
		b.log.Error("skip undecodable provider", zap.String("provider", name), zap.Error(err))
		return
	}
	b.providers.Store(name, p)
}

func (b *Broker) applyToken(id string, kv *mvccpb.KeyValue, deleted bool) {
	if deleted {
		b.forget(id, kv.ModRevision)
		return
	}
	rec, err := b.decodeToken(string(kv.Key), kv.Value, kv.ModRevision)
	if err != nil {
		b.log.Error("skip undecodable token record", zap.String("key", id), zap.Error(err))
		return
	}
	b.offer(id, rec)
}

// load reads every mirrored prefix at one revision and returns it.
func (b *Broker) load(ctx context.Context) (int64, error) {
	var rev int64
	for _, m := range b.mirrors() {
		r, err := b.reload(ctx, m, rev)
		if err != nil {
			return 0, err
		}
		rev = r
	}
	return rev, nil
}

// reload replaces m's memory with what etcd holds at rev (the latest when
// rev is 0) and returns the revision read.
func (b *Broker) reload(ctx context.Context, m mirror, rev int64) (int64, error) {
	sctx, cancel := context.WithTimeout(ctx, b.storeTimeout)
	defer cancel()
	opts := []clientv3.OpOption{clientv3.WithPrefix()}
	if rev > 0 {
		opts = append(opts, clientv3.WithRev(rev))
	}
	resp, err := b.cli.Get(sctx, m.prefix, opts...)
	if err != nil {
		return 0, storeError(ctx, "load "+m.prefix, err)
	}
	seen := make(map[string]bool, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		name := strings.TrimPrefix(string(kv.Key), m.prefix)
		seen[name] = true
		m.apply(name, kv, false)
	}
	for _, name := range m.names() {
		if !seen[name] {
			m.apply(name, &mvccpb.KeyValue{ModRevision: resp.Header.Revision}, true)
		}
	}
	return resp.Header.Revision, nil
}

// follow applies every change under m's prefix after rev until Close. When
// the watch breaks it resumes from the last revision seen; when that
// revision was compacted away it reloads the prefix.
func (b *Broker) follow(m mirror, rev int64) {
	defer b.wg.Done()
	log := b.log.With(zap.String("prefix", m.prefix))
	for {
		ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(b.ctx))
		for resp := range b.cli.Watch(ctx, m.prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
			if err := resp.Err(); err != nil {
				if errors.Is(err, rpctypes.ErrCompacted) || resp.CompactRevision != 0 {
					log.Warn("watch revision compacted; reloading", zap.Int64("revision", rev))
					if r, err := b.reload(b.ctx, m, 0); err == nil {
						rev = r
					} else {
						log.Warn("reload after compaction", zap.Error(err))
					}
				} else {
					log.Warn("watch interrupted; resuming", zap.Int64("revision", rev), zap.Error(err))
				}
				break
			}
			for _, ev := range resp.Events {
				name := strings.TrimPrefix(string(ev.Kv.Key), m.prefix)
				m.apply(name, ev.Kv, ev.Type == clientv3.EventTypeDelete)
			}
			rev = max(rev, resp.Header.Revision)
		}
		cancel()
		select {
		case <-b.ctx.Done():
			return
		case <-time.After(250 * time.Millisecond):
		}
	}
}
