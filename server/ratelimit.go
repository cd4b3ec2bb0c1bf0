package server

import (
	"math"
	"sync"
	"time"
)

// RateLimit is the per-caller rate limit: a token bucket per identity that
// refills at RPS calls per second and holds at most Burst.
type RateLimit struct {
	RPS   float64
	Burst int
}

// DefaultRateLimit applies when a RateLimit is zero: generous enough that
// only a runaway caller notices it.
var DefaultRateLimit = RateLimit{RPS: 1000, Burst: 2000}

func (r RateLimit) orDefault() RateLimit {
	if r.RPS <= 0 || r.Burst <= 0 {
		return DefaultRateLimit
	}
	return r
}

// rateLimiter holds one token bucket per caller identity. Identities are
// authenticated before they get a bucket, so the map grows with the number
// of legitimate callers only.
type rateLimiter struct {
	limit   RateLimit
	now     func() time.Time
	buckets sync.Map // identity → *bucket
}

type bucket struct {
	mu     sync.Mutex
	tokens float64
	last   time.Time
}

func newRateLimiter(l RateLimit, now func() time.Time) *rateLimiter {
	if now == nil {
		now = time.Now
	}
	return &rateLimiter{limit: l.orDefault(), now: now}
}

// allow takes a token from identity's bucket. When the bucket is empty it
// returns false and how long until the next token.
func (l *rateLimiter) allow(identity string) (bool, time.Duration) {
	v, ok := l.buckets.Load(identity)
	if !ok {
		v, _ = l.buckets.LoadOrStore(identity, &bucket{tokens: float64(l.limit.Burst), last: l.now()})
	}
	b := v.(*bucket)
	now := l.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if elapsed := now.Sub(b.last); elapsed > 0 {
		b.tokens = math.Min(float64(l.limit.Burst), b.tokens+elapsed.Seconds()*l.limit.RPS)
		b.last = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	wait := time.Duration((1 - b.tokens) / l.limit.RPS * float64(time.Second))
	return false, max(wait, time.Millisecond)
}
