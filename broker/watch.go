package broker

import (
	"bytes"
	"context"
	"errors"
	"runtime"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A mirror keeps the keys under one etcd prefix in memory.
type mirror struct {
	prefix string
	// apply applies one change; name is the key below prefix.
	apply func(name string, kv *mvccpb.KeyValue, deleted bool)
	// names lists the names held in memory, for the sweep after a reload.
	names func() []string
	// rev, when set, learns how far the mirror has applied etcd's history.
	rev *revision
}

// name is key's name below the prefix, in a string of its own (memory
// keeps it for as long as the entry lives).
func (m mirror) name(key []byte) string {
	return string(bytes.TrimPrefix(key, []byte(m.prefix)))
}

func (b *Broker) mirrors() []mirror {
	return []mirror{
		{prefix: b.prefix + providersPrefix, apply: b.applyProvider, names: syncMapKeys(&b.providers), rev: &b.providersRev},
		{prefix: b.prefix + tokensPrefix, apply: b.applyToken, names: b.cachedNames, rev: &b.tokensRev},
	}
}

func syncMapKeys(m *sync.Map) func() []string {
	return func() []string {
		var out []string
		m.Range(func(k, _ any) bool {
			out = append(out, k.(string))
			return true
		})
		return out
	}
}

// cachedNames lists the ids of the tokens in memory.
func (b *Broker) cachedNames() []string {
	var out []string
	b.tokens.each(func(id string, e *cacheEntry) bool {
		if e.rec.Load() != nil {
			out = append(out, id)
		}
		return true
	})
	return out
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

// loadPage is how many records one Get of a reload returns from an etcd
// without RangeStream (pagedRange): a large store arrives in pages rather
// than in one response held whole in memory.
const loadPage = 1000

// reload replaces m's memory with what etcd holds at rev (the latest when
// rev is 0) and returns the revision read. The records arrive in chunks
// of etcd's RangeStream (pages of Get from an older etcd); the next chunk
// is read while one is applied, and a chunk's records are decoded on every
// CPU: a restart on many tokens waits for this.
func (b *Broker) reload(ctx context.Context, m mirror, rev int64) (int64, error) {
	end := clientv3.GetPrefixRangeEnd(m.prefix)
	pages := make(chan []*mvccpb.KeyValue, 1)
	// Written by the reader before it closes pages.
	var readErr error
	readRev := rev
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		defer close(pages)
		send := func(kvs []*mvccpb.KeyValue) bool {
			select {
			case pages <- kvs:
				return true
			case <-rctx.Done():
				return false
			}
		}
		r, err := b.streamRange(rctx, m.prefix, end, rev, send)
		if status.Code(err) == codes.Unimplemented {
			// An etcd older than 3.7 has no RangeStream: pages of Get.
			r, err = b.pagedRange(rctx, m.prefix, end, rev, send)
		}
		if err != nil {
			readErr = storeError(ctx, "load "+m.prefix, err)
			return
		}
		readRev = r
	}()
	seen := make(map[string]bool)
	workers := runtime.GOMAXPROCS(0)
	for kvs := range pages {
		names := make([]string, len(kvs))
		for i, kv := range kvs {
			names[i] = m.name(kv.Key)
			seen[names[i]] = true
		}
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				for i := w; i < len(kvs); i += workers {
					m.apply(names[i], kvs[i], false)
				}
			})
		}
		wg.Wait()
	}
	if readErr != nil {
		return 0, readErr
	}
	rev = readRev
	for _, name := range m.names() {
		if !seen[name] {
			m.apply(name, &mvccpb.KeyValue{ModRevision: rev}, true)
		}
	}
	if m.rev != nil {
		m.rev.advance(rev)
	}
	return rev, nil
}

// streamRange reads [from, end) at rev (the latest when 0) with etcd's
// RangeStream, handing each chunk to send, and returns the revision read.
// Each chunk is bounded by StoreTimeout, the whole stream is not. Unlike
// pages of Get, whose every page makes etcd count the keys left in the
// range (a million records in pages of 1000 visit 500 million keys), the
// stream reads each key once.
func (b *Broker) streamRange(ctx context.Context, from, end string, rev int64, send func([]*mvccpb.KeyValue) bool) (int64, error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stalled := time.AfterFunc(b.storeTimeout, cancel)
	defer stalled.Stop()
	opts := []clientv3.OpOption{clientv3.WithRange(end)}
	if rev > 0 {
		opts = append(opts, clientv3.WithRev(rev))
	}
	chunks, err := b.cli.GetStream(sctx, from, opts...)
	if err != nil {
		return 0, err
	}
	// The client's reader of the stream ends once the stream is cancelled
	// and it has handed over what it holds: wait for it.
	defer func() {
		cancel()
		for range chunks {
		}
	}()
	for chunk := range chunks {
		if err := chunk.Err(); err != nil {
			return 0, err
		}
		if h := chunk.GetHeader(); h != nil && rev == 0 {
			// The stream reads at the revision it started at, which its
			// header gives. (When asked for rev, the header still says
			// etcd's latest, which is not what was read.)
			rev = h.Revision
		}
		stalled.Stop() // the time send waits is not etcd's
		if len(chunk.Kvs) > 0 && !send(chunk.Kvs) {
			return 0, ctx.Err()
		}
		stalled.Reset(b.storeTimeout)
	}
	if err := sctx.Err(); err != nil {
		return 0, err
	}
	return rev, nil
}

// pagedRange is streamRange in pages of Get, for an etcd without
// RangeStream.
func (b *Broker) pagedRange(ctx context.Context, from, end string, rev int64, send func([]*mvccpb.KeyValue) bool) (int64, error) {
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(loadPage)}
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		sctx, cancel := context.WithTimeout(ctx, b.storeTimeout)
		resp, err := b.cli.Get(sctx, from, opts...)
		cancel()
		if err != nil {
			return 0, err
		}
		if rev == 0 {
			// The first page pins the revision the others are read at.
			rev = resp.Header.Revision
		}
		if len(resp.Kvs) > 0 && !send(resp.Kvs) {
			return 0, ctx.Err()
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return rev, nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
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
				name := m.name(ev.Kv.Key)
				m.apply(name, ev.Kv, ev.Type == clientv3.EventTypeDelete)
			}
			rev = max(rev, resp.Header.Revision)
			if m.rev != nil {
				m.rev.advance(rev) // progress notifications advance it too
			}
		}
		cancel()
		select {
		case <-b.ctx.Done():
			return
		case <-time.After(250 * time.Millisecond):
		}
	}
}
