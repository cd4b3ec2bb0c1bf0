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
// number of shards holds immutable maps behind atomic pointers, and an
// insert copies a map. That keeps a cached token's overhead to about one
// map slot (sync.Map's trie took about 110 B more per token).
//
// An insert does not copy its whole shard: a shard is a large base map and
// a small map of the keys added since, which an insert copies; once that
// holds about the square root of the base's size, it is merged into a new
// base. An insert then copies about 2√n entries for n in the shard, not n:
// at a million tokens (about 1000 a shard) some 60 rather than 1000, which
// is what loading them through the watch costs in time and garbage.
type tokenCache struct {
	seed   maphash.Seed
	shards [cacheShards]cacheShard
}

const cacheShards = 1024

type cacheShard struct {
	mu     sync.Mutex // serializes inserts
	base   atomic.Pointer[map[string]*cacheEntry]
	recent atomic.Pointer[map[string]*cacheEntry] // added since base; nil when none
}

func newTokenCache() *tokenCache { return &tokenCache{seed: maphash.MakeSeed()} }

func (c *tokenCache) shard(id string) *cacheShard {
	return &c.shards[maphash.String(c.seed, id)%cacheShards]
}

// maps returns the shard's maps. recent is loaded first: a merge stores
// the new base before it clears recent, so an entry that moves from one to
// the other is in one of the two a reader sees.
func (s *cacheShard) maps() (base, recent map[string]*cacheEntry) {
	if r := s.recent.Load(); r != nil {
		recent = *r
	}
	if b := s.base.Load(); b != nil {
		base = *b
	}
	return base, recent
}

func (s *cacheShard) lookup(id string) (*cacheEntry, bool) {
	base, recent := s.maps()
	if e, ok := base[id]; ok {
		return e, true
	}
	e, ok := recent[id]
	return e, ok
}

func (c *tokenCache) load(id string) (*cacheEntry, bool) { return c.shard(id).lookup(id) }

// loadOrAdd returns id's entry, adding an empty one when there is none.
func (c *tokenCache) loadOrAdd(id string) *cacheEntry {
	s := c.shard(id)
	if e, ok := s.lookup(id); ok {
		return e
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.lookup(id); ok {
		return e
	}
	base, recent := s.maps()
	e := &cacheEntry{}
	if len(recent)+1 < mergeAt(len(base)) {
		next := make(map[string]*cacheEntry, len(recent)+1)
		maps.Copy(next, recent)
		next[id] = e
		s.recent.Store(&next)
		return e
	}
	next := make(map[string]*cacheEntry, len(base)+len(recent)+1)
	maps.Copy(next, base)
	maps.Copy(next, recent)
	next[id] = e
	s.base.Store(&next)
	s.recent.Store(nil)
	return e
}

// mergeAt is the size at which a shard's recent map is merged into its
// base of n entries: about √n, at least 8.
func mergeAt(n int) int {
	m := 8
	for m*m < n {
		m *= 2
	}
	return m
}

// each calls f for every entry until f returns false.
func (c *tokenCache) each(f func(id string, e *cacheEntry) bool) {
	for i := range c.shards {
		base, recent := c.shards[i].maps()
		for id, e := range base {
			if !f(id, e) {
				return
			}
		}
		for id, e := range recent {
			if _, dup := base[id]; dup {
				continue // merged into base after recent was loaded
			}
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
