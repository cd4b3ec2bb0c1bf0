package broker

import (
	"context"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
	"github.com/tokenbroker/tokenbroker/sandbox"
)

// electedIn returns the value (a replica name) of the oldest candidate of
// shard's election in etcd: its leader.
func electedIn(t *testing.T, cli *clientv3.Client, prefix string, shard int) string {
	t.Helper()
	resp, err := cli.Get(context.Background(), prefix+electionPrefix+strconv.Itoa(shard)+"/", clientv3.WithFirstCreate()...)
	if err != nil {
		t.Fatalf("read the election of shard %d: %v", shard, err)
	}
	if len(resp.Kvs) == 0 {
		return ""
	}
	return string(resp.Kvs[0].Value)
}

// oneLeaderEach waits until every shard has exactly one leader among rs,
// the one etcd's election names, and returns shard → leader.
func oneLeaderEach(t *testing.T, cli *clientv3.Client, rs []*fleetReplica, shards int) []*fleetReplica {
	t.Helper()
	leaders := make([]*fleetReplica, shards)
	pollFor(t, fmt.Sprintf("exactly one leader for each of %d shards", shards), 10*time.Second, func() bool {
		for s := range shards {
			l := leaderAmong(rs, s)
			if l == nil || electedIn(t, cli, l.prefix, s) != l.name {
				return false
			}
			leaders[s] = l
		}
		return true
	})
	for _, r := range rs {
		for _, s := range r.LeadingShards() {
			if s < 0 || s >= shards {
				t.Errorf("%s leads shard %d, want shards 0 to %d only", r.name, s, shards-1)
			}
		}
	}
	return leaders
}

// balanced waits until no replica of rs leads more than its share of the
// shards, ceil(shards / len(rs)), and every shard has a leader.
func balanced(t *testing.T, rs []*fleetReplica, shards int) {
	t.Helper()
	share := (shards + len(rs) - 1) / len(rs)
	pollFor(t, fmt.Sprintf("at most %d of %d shards led by each of %d replicas", share, shards, len(rs)), 20*time.Second, func() bool {
		total := 0
		for _, r := range rs {
			n := len(r.LeadingShards())
			if n > share {
				return false
			}
			total += n
		}
		return total == shards
	})
}

// TestRefresherShards: with Shards: 1 one replica leads; with Shards: 4 and
// three replicas started one after the other, the shards spread (none leads
// more than 2), every shard has exactly one leader, as LeadingShards and
// etcd's elections agree, and each hot token is refreshed in the
// background by the leader of its shard. When the replica leading most
// shards closes, the others take its shards over, again one leader each.
func TestRefresherShards(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		shards int
	}{
		{name: "one shard", shards: 1},
		{name: "four shards", shards: 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := etcdtest.Start(t)
			cli := e.Client(t, nil)
			f := newSandboxFront(t, sandbox.Config{TokenLifetime: 2 * time.Second})
			cfg := fleetConfig()
			cfg.Refresh = RefreshConfig{Shards: tt.shards, ReportInterval: 200 * time.Millisecond}
			var rs []*fleetReplica
			for i := range 3 {
				rs = append(rs, newFleetReplica(t, e.Endpoint, fmt.Sprintf("shards-%d", i), cfg))
			}
			// The first replica started wins every shard; the shards then
			// spread, at most ceil(4/3) = 2 each.
			balanced(t, rs, tt.shards)
			leaders := oneLeaderEach(t, cli, rs, tt.shards)

			// Eight providers, eight grants, spread over the shards.
			const grants = 8
			perShard := make([]int, tt.shards)
			for i := range grants {
				name := fmt.Sprintf("p%d", i)
				putProvider(t, rs[0].Broker, sandboxProvider(name, f.TokenURL()), sandboxClientSecret)
				getToken(t, rs[i%len(rs)].Broker, name)
				key, err := NewTokenKey(name, "", nil)
				if err != nil {
					t.Fatal(err)
				}
				perShard[shardOf(key.id(), tt.shards)]++
			}
			t.Logf("tokens per shard: %v", perShard)
			for i := range grants {
				name := fmt.Sprintf("p%d", i)
				key, err := NewTokenKey(name, "", nil)
				if err != nil {
					t.Fatal(err)
				}
				want := leaders[shardOf(key.id(), tt.shards)]
				var g *Grant
				pollFor(t, "a background refresh of "+name, 10*time.Second, func() bool {
					g, err = rs[0].readGrant(context.Background(), rs[0].grantKey(name, ""))
					return err == nil && g != nil && g.Generation >= 2
				})
				if g.RefreshedBy != want.name {
					t.Errorf("%s (shard %d) was refreshed by %s, want its shard's leader %s", name, shardOf(key.id(), tt.shards), g.RefreshedBy, want.name)
				}
			}

			busiest := rs[0]
			for _, r := range rs {
				if len(r.LeadingShards()) > len(busiest.LeadingShards()) {
					busiest = r
				}
			}
			if err := busiest.Close(); err != nil {
				t.Errorf("Close %s: %v", busiest.name, err)
			}
			rest := slices.DeleteFunc(slices.Clone(rs), func(r *fleetReplica) bool { return r == busiest })
			oneLeaderEach(t, cli, rest, tt.shards)
			if got := busiest.LeadingShards(); len(got) != 0 {
				t.Errorf("closed %s still says it leads shards %v, want none", busiest.name, got)
			}
		})
	}
}

// TestRefresherCloseLeavesNoGoroutine closes replicas in the middle of
// everything: one leading shards with a background refresh held at the
// provider, one killed abruptly, one idle; once they and etcd are gone,
// no goroutine of theirs is left (elections, watches, the report loop,
// the lead loops, session keepalives).
func TestRefresherCloseLeavesNoGoroutine(t *testing.T) {
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, before) }) // runs last, after every other cleanup
	e := etcdtest.Start(t)
	f := newSandboxFront(t, sandbox.Config{TokenLifetime: 2 * time.Second})
	cfg := fleetConfig()
	cfg.StoreTimeout = 500 * time.Millisecond // what a killed replica waits for before it gives up on etcd
	cfg.Refresh = RefreshConfig{Shards: 4, ReportInterval: 200 * time.Millisecond}
	var rs []*fleetReplica
	for i := range 3 {
		rs = append(rs, newFleetReplica(t, e.Endpoint, fmt.Sprintf("leak-%d", i), cfg))
	}
	putProvider(t, rs[0].Broker, sandboxProvider("orders", f.TokenURL()), sandboxClientSecret)
	rec := getToken(t, rs[1].Broker, "orders")
	key, err := NewTokenKey("orders", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	h := f.holdNext()
	select {
	case <-h.arrived:
	case <-time.After(10 * time.Second):
		t.Fatalf("no background refresh of the token issued at %v", rec.IssuedAt)
	}
	leader := waitForLeader(t, rs, shardOf(key.id(), cfg.Refresh.Shards))

	// Close the refreshing leader first, kill another, close the last.
	if err := leader.Close(); err != nil {
		t.Errorf("Close %s mid-refresh: %v", leader.name, err)
	}
	for _, r := range rs {
		if r != leader && !r.killed.Load() {
			r.kill()
			break
		}
	}
	for _, r := range rs {
		if r != leader && !r.killed.Load() {
			if err := r.Close(); err != nil {
				t.Errorf("Close %s: %v", r.name, err)
			}
		}
	}
}

// shardOf is FNV-1a of the token id, as it has been: replicas of different
// versions agree on the shards.
func TestShardOfIsFNV1a(t *testing.T) {
	for _, id := range []string{"", "mediahound//", "mediahaven/alice/read%20write", "p/a%2Fb/x"} {
		h := fnv.New32a()
		h.Write([]byte(id))
		for _, n := range []int{2, 3, 8, 64} {
			if got, want := shardOf(id, n), int(h.Sum32()%uint32(n)); got != want {
				t.Errorf("shardOf(%q, %d) = %d, want %d", id, n, got, want)
			}
		}
	}
}
