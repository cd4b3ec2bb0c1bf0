package broker

import (
	"hash/maphash"
	"maps"
	"sync"
	"sync/atomic"
	"time"
)

// tokenCache maps token ids to their cache entries. Entries are added,
// never removed. Reads take no lock and allocate nothing: each of a fixed
// number of shards holds an immutable map behind an atomic pointer, and an
// insert copies its shard's map. That costs an insert about a hundred
// entries copied per 100k tokens, and keeps a cached token's overhead to
// about one map slot (sync.Map's trie took about 110 B more per token).
type tokenCache struct {
	seed   maphash.Seed
	shards [cacheShards]cacheShard
}

const cacheShards = 1024

type cacheShard struct {
	mu sync.Mutex // serializes inserts
	m  atomic.Pointer[map[string]*cacheEntry]
}

func newTokenCache() *tokenCache { return &tokenCache{seed: maphash.MakeSeed()} }

func (c *tokenCache) shard(id string) *cacheShard {
	return &c.shards[maphash.String(c.seed, id)%cacheShards]
}

func (c *tokenCache) load(id string) (*cacheEntry, bool) {
	m := c.shard(id).m.Load()
	if m == nil {
		return nil, false
	}
	e, ok := (*m)[id]
	return e, ok
}

// loadOrAdd returns id's entry, adding an empty one when there is none.
func (c *tokenCache) loadOrAdd(id string) *cacheEntry {
	s := c.shard(id)
	if m := s.m.Load(); m != nil {
		if e, ok := (*m)[id]; ok {
			return e
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var old map[string]*cacheEntry
	if m := s.m.Load(); m != nil {
		if e, ok := (*m)[id]; ok {
			return e
		}
		old = *m
	}
	next := make(map[string]*cacheEntry, len(old)+1)
	maps.Copy(next, old)
	e := &cacheEntry{}
	next[id] = e
	s.m.Store(&next)
	return e
}

// each calls f for every entry until f returns false.
func (c *tokenCache) each(f func(id string, e *cacheEntry) bool) {
	for i := range c.shards {
		m := c.shards[i].m.Load()
		if m == nil {
			continue
		}
		for id, e := range *m {
			if !f(id, e) {
				return
			}
		}
	}
}

// cacheEntry holds the current record of one token key in memory, and when
// a caller last asked for it (for the background refresher). Entries stay
// for the life of the process; the record is swapped atomically.
type cacheEntry struct {
	rec        atomic.Pointer[TokenRecord]
	lastAccess atomic.Int64 // unix nanoseconds, updated at most once a second
	// gone is the etcd revision of the last deletion of the record: a
	// record of that revision or older, offered late by the watch, stays
	// out.
	gone atomic.Int64
}

// touch records an access without writing the shared cache line on every
// call: at most once a second, when it also lists the entry among those
// touched lately, for the refresher's report.
func (b *Broker) touch(id string, e *cacheEntry, now time.Time) {
	n := now.UnixNano()
	if n-e.lastAccess.Load() > int64(time.Second) {
		e.lastAccess.Store(n)
		b.touched.LoadOrStore(id, e)
	}
}

func (b *Broker) entry(id string) *cacheEntry { return b.tokens.loadOrAdd(id) }

// cached returns the record of id in memory, or nil.
func (b *Broker) cached(id string) *TokenRecord {
	if e, ok := b.tokens.load(id); ok {
		return e.rec.Load()
	}
	return nil
}

// offer publishes rec in memory unless a newer record is there already,
// and indexes its token for introspection.
func (b *Broker) offer(id string, rec *TokenRecord) {
	e := b.entry(id)
	for {
		cur := e.rec.Load()
		if cur != nil && cur.Revision >= rec.Revision || rec.Revision <= e.gone.Load() {
			return
		}
		if e.rec.CompareAndSwap(cur, rec) {
			if rec.Revision <= e.gone.Load() {
				// Deleted meanwhile (forget raises gone first).
				e.rec.CompareAndSwap(rec, nil)
				return
			}
			b.index(id, rec)
			return
		}
	}
}

// forget drops the record of id from memory unless it is newer than rev.
func (b *Broker) forget(id string, rev int64) {
	e, ok := b.tokens.load(id)
	if !ok {
		return
	}
	for {
		g := e.gone.Load()
		if rev <= g || e.gone.CompareAndSwap(g, rev) {
			break
		}
	}
	for {
		cur := e.rec.Load()
		if cur == nil || cur.Revision > rev || e.rec.CompareAndSwap(cur, nil) {
			return
		}
	}
}
