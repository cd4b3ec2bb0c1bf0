package server

import (
	"net"
	"net/netip"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/time/rate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// DefaultUnauthenticatedRateLimit applies to failed authentications when
// AuthConfig.UnauthenticatedRateLimit is zero: per remote address, one a
// second with bursts of 20.
var DefaultUnauthenticatedRateLimit = RateLimit{RPS: 1, Burst: 20}

// maxFailureAddrs bounds the remote addresses whose failed
// authentications are counted (about 150 bytes each).
const maxFailureAddrs = 10000

// failureLimiter counts failed authentications per remote address: a
// token bucket per IPv4 address or IPv6 /64 (a host gets a whole /64 as
// easily as one address). The map holds at most max addresses: when it is
// full, addresses whose bucket has refilled are dropped (they carry no
// state), and if that is not enough, arbitrary ones.
type failureLimiter struct {
	limit RateLimit
	now   func() time.Time
	max   int

	mu        sync.Mutex
	addrs     map[netip.Prefix]*rate.Limiter
	lastSweep time.Time
}

func newFailureLimiter(l RateLimit, now func() time.Time) *failureLimiter {
	if now == nil {
		now = time.Now
	}
	if l.RPS <= 0 || l.Burst <= 0 {
		l = DefaultUnauthenticatedRateLimit
	}
	return &failureLimiter{limit: l, now: now, max: maxFailureAddrs, addrs: make(map[netip.Prefix]*rate.Limiter)}
}

// fail counts a failed authentication from addr. Within the limit it
// returns true; over it, false and how long until the next one is
// allowed. An address that cannot be parsed shares one bucket with every
// other such address.
func (l *failureLimiter) fail(addr string) (bool, time.Duration) {
	key := addrKey(addr)
	now := l.now()
	l.mu.Lock()
	lim, ok := l.addrs[key]
	if !ok {
		l.makeRoom(now)
		lim = rate.NewLimiter(rate.Limit(l.limit.RPS), l.limit.Burst)
		l.addrs[key] = lim
	}
	l.mu.Unlock()
	r := lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, max(d, time.Millisecond)
	}
	return true, 0
}

// makeRoom drops addresses until one more fits; l.mu is held. A sweep of
// the refilled buckets runs at most once a second, so that a flood from
// many addresses does not scan the map on every call.
func (l *failureLimiter) makeRoom(now time.Time) {
	if len(l.addrs) < l.max {
		return
	}
	if now.Sub(l.lastSweep) >= time.Second {
		l.lastSweep = now
		for k, lim := range l.addrs {
			if lim.TokensAt(now) >= float64(l.limit.Burst) {
				delete(l.addrs, k)
			}
		}
	}
	for k := range l.addrs {
		if len(l.addrs) < l.max {
			break
		}
		delete(l.addrs, k)
	}
}

// tracked is how many addresses the limiter holds.
func (l *failureLimiter) tracked() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.addrs)
}

// addrKey is the bucket of a "host:port" or bare host address: the IPv4
// address, or the IPv6 address's /64.
func addrKey(addr string) netip.Prefix {
	host := addr
	if h, _, err := net.SplitHostPort(addr); err == nil {
		host = h
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Prefix{}
	}
	ip = ip.Unmap().WithZone("")
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, _ := ip.Prefix(bits)
	return p
}

// failureLog bounds the log lines of failed authentications across all
// addresses: at most 10 a second with bursts of 50; the lines it drops
// are counted in the next one it writes.
type failureLog struct {
	lim        *rate.Limiter
	mu         sync.Mutex
	suppressed uint64
}

func newFailureLog() *failureLog { return &failureLog{lim: rate.NewLimiter(10, 50)} }

func (f *failureLog) info(log *zap.Logger, msg string, fields ...zap.Field) {
	f.mu.Lock()
	if !f.lim.Allow() {
		f.suppressed++
		f.mu.Unlock()
		return
	}
	n := f.suppressed
	f.suppressed = 0
	f.mu.Unlock()
	if n > 0 {
		fields = append(fields, zap.Uint64("suppressed", n))
	}
	log.Info(msg, fields...)
}

// rejectFailure is the answer to a failed authentication, err being what
// authenticate returned: Unauthenticated within the address's limit,
// ResourceExhausted with a RetryInfo beyond it. Any other err (an issuer's
// keys that cannot be fetched) is the server's trouble, not the caller's:
// it is returned and not counted against the address. All are counted and
// logged (within the log's own limit).
func (g *guard) rejectFailure(method string, p presented, reason string, err error) error {
	if status.Code(err) != codes.Unauthenticated {
		g.unauthenticated.Add(1)
		g.failureLog.info(g.log, "unauthenticated call", zap.String("method", method), zap.Stringer("peer", p.peer), zap.String("reason", reason))
		return err
	}
	ok, wait := g.failures.Load().fail(p.peer.String())
	if ok {
		g.unauthenticated.Add(1)
		g.failureLog.info(g.log, "unauthenticated call", zap.String("method", method), zap.Stringer("peer", p.peer), zap.String("reason", reason))
		return err
	}
	g.unauthenticatedLimited.Add(1)
	g.failureLog.info(g.log, "unauthenticated calls rate limited", zap.String("method", method), zap.Stringer("peer", p.peer), zap.String("reason", reason))
	return retryLater("too many failed authentications from this address", wait)
}

// retryLater is ResourceExhausted with a RetryInfo of wait.
func retryLater(msg string, wait time.Duration) error {
	s, err := status.New(codes.ResourceExhausted, msg).WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(wait)})
	if err != nil {
		return status.Error(codes.ResourceExhausted, msg)
	}
	return s.Err()
}
