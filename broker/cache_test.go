package broker

import (
	"fmt"
	"sync"
	"testing"
)

// Concurrent inserts of overlapping ids give one entry per id, found by
// load and listed once by each, while readers run.
func TestTokenCacheConcurrentInserts(t *testing.T) {
	c := newTokenCache()
	const ids, writers = 5000, 8
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
