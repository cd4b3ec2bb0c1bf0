package broker

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// Concurrent inserts of overlapping ids give one entry per id, found by
// load and listed once by each, while readers run.
func TestTokenCacheConcurrentInserts(t *testing.T) {
	c := newTokenCache()
	const ids, writers = 40000, 8 // about 40 a shard: recent maps merged into bases several times
	got := make([][]*cacheEntry, writers)
	var wg sync.WaitGroup
	for w := range writers {
		got[w] = make([]*cacheEntry, ids)
		wg.Go(func() {
			for i := range ids {
				id := fmt.Sprintf("p/a/s%d", (i*7+w)%ids)
				got[w][(i*7+w)%ids] = c.loadOrAdd(id)
				if e, ok := c.load(id); !ok || e != got[w][(i*7+w)%ids] {
					t.Errorf("load(%q) right after loadOrAdd = %p, %t; want %p", id, e, ok, got[w][(i*7+w)%ids])
					return
				}
			}
		})
	}
	wg.Wait()
	for i := range ids {
		for w := 1; w < writers; w++ {
			if got[w][i] != got[0][i] {
				t.Fatalf("id %d has two entries", i)
			}
		}
	}
	seen := map[string]bool{}
	c.each(func(id string, e *cacheEntry) bool {
		if seen[id] {
			t.Errorf("each listed %q twice", id)
		}
		seen[id] = true
		return true
	})
	if len(seen) != ids {
		t.Errorf("each listed %d ids, want %d", len(seen), ids)
	}
	if _, ok := c.load("p/a/missing"); ok {
		t.Errorf("load of an id never added found an entry")
	}
}

// A record the watch offers late, older than a deletion already applied
// (a replica forgets a revoked grant's tokens before its watch catches
// up), stays out; a newer one comes in.
func TestForgottenRecordStaysOutWhenOfferedLate(t *testing.T) {
	b := &Broker{tokens: newTokenCache(), now: time.Now}
	const id = "p/a/read"
	key := TokenKey{Provider: "p", Account: "a", Scope: "read"}
	b.forget(id, 10) // no entry yet: nothing to forget, nothing remembered
	b.offer(id, &TokenRecord{Key: key, AccessToken: "t5", Revision: 5})
	if got := b.cached(id); got == nil || got.AccessToken != "t5" {
		t.Fatalf("cached = %+v, want t5 (no deletion was known for the entry)", got)
	}
	b.forget(id, 10)
	b.offer(id, &TokenRecord{Key: key, AccessToken: "t7", Revision: 7})
	if got := b.cached(id); got != nil {
		t.Errorf("a record of revision 7 offered after the deletion at 10 is cached: %q", got.AccessToken)
	}
	b.offer(id, &TokenRecord{Key: key, AccessToken: "t12", Revision: 12})
	if got := b.cached(id); got == nil || got.AccessToken != "t12" {
		t.Errorf("cached = %+v, want t12, newer than the deletion", got)
	}
}

// BenchmarkTokenCacheAdd adds a million ids to an empty cache, as a
// restart or a watch that brings a million tokens does.
func BenchmarkTokenCacheAdd(b *testing.B) {
	ids := make([]string, 1_000_000)
	for i := range ids {
		ids[i] = fmt.Sprintf("sandbox/_/api.read+tenant.%06d", i)
	}
	b.ReportAllocs()
	for b.Loop() {
		c := newTokenCache()
		for _, id := range ids {
			c.loadOrAdd(id)
		}
	}
}
