package server

import (
	"fmt"
	"testing"
	"time"
)

func TestAddrKeyGroupsIPv6By64(t *testing.T) {
	tests := []struct {
		give, want string
	}{
		{"192.0.2.1:4000", "192.0.2.1/32"},
		{"[::ffff:192.0.2.1]:4000", "192.0.2.1/32"},
		{"[2001:db8:1:2:aaaa::1]:4000", "2001:db8:1:2::/64"},
		{"[2001:db8:1:2:bbbb::9%eth0]:1", "2001:db8:1:2::/64"},
		{"192.0.2.7", "192.0.2.7/32"},
		{"not an address", "invalid Prefix"},
	}
	for _, tt := range tests {
		if got := addrKey(tt.give).String(); got != tt.want {
			t.Errorf("addrKey(%q) = %s, want %s", tt.give, got, tt.want)
		}
	}
}

// A flood from many addresses keeps the map at its bound, and addresses
// whose bucket refilled are the first to go.
func TestFailureLimiterIsBounded(t *testing.T) {
	now := time.Unix(1e9, 0)
	l := newFailureLimiter(RateLimit{RPS: 1, Burst: 2}, func() time.Time { return now })
	l.max = 100
	for i := range 5000 {
		l.fail(fmt.Sprintf("10.0.%d.%d:1", i/256, i%256))
		if n := l.tracked(); n > l.max {
			t.Fatalf("after %d addresses the limiter tracks %d, want at most %d", i+1, n, l.max)
		}
	}
	// A limited address stays limited while others come and go, once the
	// refilled ones have been swept.
	l = newFailureLimiter(RateLimit{RPS: 0.001, Burst: 1}, func() time.Time { return now })
	l.max = 10
	for i := range 9 {
		l.fail(fmt.Sprintf("10.1.0.%d:1", i))
	}
	now = now.Add(time.Hour) // every bucket refilled
	l.fail("10.9.9.9:1")     // the one to keep: empty bucket
	for i := range 9 {
		l.fail(fmt.Sprintf("10.2.0.%d:1", i))
	}
	if ok, wait := l.fail("10.9.9.9:1"); ok || wait <= 0 {
		t.Errorf("fail of the limited address after a sweep = %v, %s; want refused with a wait", ok, wait)
	}
}
