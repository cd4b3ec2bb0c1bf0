package broker

import (
	"sync/atomic"
	"time"
)

// cacheEntry holds the current record of one token key in memory, and when
// a caller last asked for it (for the background refresher). Entries stay
// for the life of the process; the record is swapped atomically.
type cacheEntry struct {
	rec        atomic.Pointer[TokenRecord]
	lastAccess atomic.Int64 // unix nanoseconds, updated at most once a second
}

// touch records an access without writing the shared cache line on every
// call: at most once a second, when it also lists the entry among those
// touched lately, for the refresher's report.
func (b *Broker) touch(id string, e *cacheEntry, now time.Time) {
	n := now.UnixNano()
	if n-e.lastAccess.Load() > int64(time.Second) {
		e.lastAccess.Store(n)
		if _, ok := b.touched.Load(id); !ok {
			b.touched.Store(id, e)
		}
	}
}

func (b *Broker) entry(id string) *cacheEntry {
	if v, ok := b.tokens.Load(id); ok {
		return v.(*cacheEntry)
	}
	v, _ := b.tokens.LoadOrStore(id, &cacheEntry{})
	return v.(*cacheEntry)
}

// cached returns the record of id in memory, or nil.
func (b *Broker) cached(id string) *TokenRecord {
	if v, ok := b.tokens.Load(id); ok {
		return v.(*cacheEntry).rec.Load()
	}
	return nil
}

// offer publishes rec in memory unless a newer record is there already,
// and indexes its token for introspection.
func (b *Broker) offer(id string, rec *TokenRecord) {
	e := b.entry(id)
	for {
		cur := e.rec.Load()
		if cur != nil && cur.Revision >= rec.Revision {
			return
		}
		if e.rec.CompareAndSwap(cur, rec) {
			b.index(id, rec)
			return
		}
	}
}

// forget drops the record of id from memory unless it is newer than rev.
func (b *Broker) forget(id string, rev int64) {
	v, ok := b.tokens.Load(id)
	if !ok {
		return
	}
	e := v.(*cacheEntry)
	for {
		cur := e.rec.Load()
		if cur == nil || cur.Revision > rev || e.rec.CompareAndSwap(cur, nil) {
			return
		}
	}
}
