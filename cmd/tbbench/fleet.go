package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tokenbroker/tokenbroker/app"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// fleet is several broker processes (replicas) on one etcd member that runs
// in a process of its own, as a deployment on an external etcd cluster
// runs. Every replica is app.Start from the same configuration with
// etcd.endpoints set; nothing is pinned.
type fleet struct {
	etcd     *child
	replicas []*child
	cli      *clientv3.Client // the benchmark's own client of the etcd
}

func (f *fleet) stop() {
	if f.cli != nil {
		f.cli.Close()
	}
	var wg sync.WaitGroup
	for _, r := range f.replicas {
		wg.Go(r.stop)
	}
	wg.Wait()
	if f.etcd != nil {
		f.etcd.stop()
	}
}

// startFleet starts the etcd process and n replicas of cfg on it, all at
// once.
func (b *bench) startFleet(ctx context.Context, n int, cfg app.Config) (_ *fleet, err error) {
	f := &fleet{}
	defer func() {
		if err != nil {
			f.stop()
		}
	}()
	if f.etcd, err = startChild(ctx, "etcd", "", []string{"TBBENCH_CHILD=etcd"}); err != nil {
		return nil, err
	}
	cfg.Etcd.Endpoints = []string{f.etcd.ready.EtcdAddr}
	if f.cli, err = clientv3.New(clientv3.Config{Endpoints: cfg.Etcd.Endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()}); err != nil {
		return nil, err
	}
	f.replicas = make([]*child, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { f.replicas[i], errs[i] = b.startBroker(ctx, "", cfg, "") })
	}
	wg.Wait()
	var kept []*child
	for _, r := range f.replicas {
		if r != nil {
			kept = append(kept, r)
		}
	}
	f.replicas = kept
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return f, nil
}

// revision is the etcd's current revision: one more for every write.
func (f *fleet) revision(ctx context.Context) (int64, error) {
	resp, err := f.cli.Get(ctx, "tbbench-revision", clientv3.WithCountOnly())
	if err != nil {
		return 0, err
	}
	return resp.Header.Revision, nil
}

// clients dials every replica with the benchmark's keys.
func (f *fleet) clients(keys []string) ([]tokenbrokerv1.TokenBrokerServiceClient, func(), error) {
	var out []tokenbrokerv1.TokenBrokerServiceClient
	var ts []*grpcTarget
	closeAll := func() {
		for _, t := range ts {
			t.close()
		}
	}
	for _, r := range f.replicas {
		t, err := dialGRPC(r.ready.GRPC, 1, keys)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		ts = append(ts, t)
		out = append(out, tokenbrokerv1.NewTokenBrokerServiceClient(t.conns[0]))
	}
	return out, closeAll, nil
}

// awaitSentinel waits until every client serves the seeded sentinel: the
// replica's watch has delivered every record written before it.
func awaitSentinel(ctx context.Context, clients []tokenbrokerv1.TokenBrokerServiceClient, within time.Duration) error {
	deadline := time.Now().Add(within)
	for i, c := range clients {
		for {
			resp, err := c.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: sentinelProvider, Scopes: []string{"done"}})
			if err == nil && resp.GetToken().GetAccessToken() == "sentinel-token" {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("replica %d does not serve the tokens written after %s (last: %v)", i, within, err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return nil
}
