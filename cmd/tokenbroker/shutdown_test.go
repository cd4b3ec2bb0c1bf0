package main

import (
	"context"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tokenbroker/tokenbroker/app"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/internal/etcdtest"
	"github.com/tokenbroker/tokenbroker/sandbox"
)

// TestShutdownDrainsAndHandsOverLeadership: two replicas on one etcd. While
// calls are in flight on the leader (each waiting on a slow provider), the
// leader shuts down as on SIGTERM: every call in flight completes, and the
// other replica leads the refresh shard within a second.
func TestShutdownDrainsAndHandsOverLeadership(t *testing.T) {
	etcd := etcdtest.Start(t)
	fake := startFake(t)
	replica := func() (*app.App, func() error) {
		cfg := appConfig(fake.url, t.TempDir())
		cfg.Etcd.Endpoints = []string{etcd.Endpoint}
		return startApp(t, cfg)
	}
	a, closeA := replica()
	deadline := time.Now().Add(5 * time.Second)
	for len(a.Broker().LeadingShards()) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if len(a.Broker().LeadingShards()) == 0 {
		t.Fatal("the first replica never led the refresh shard")
	}
	b, _ := replica()

	conn, err := grpc.NewClient(a.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(bearer(testKey)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := tokenbrokerv1.NewTokenBrokerServiceClient(conn)

	fake.SetFailure(&sandbox.Failure{Status: 200, Body: `{"access_token":"slow-token","token_type":"bearer","expires_in":3600}`, Delay: 700 * time.Millisecond})
	const calls = 20
	var wg sync.WaitGroup
	errs := make(chan error, calls)
	for range calls {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			// One cold key: the calls share one provider call, in flight
			// when the shutdown starts.
			_, err := client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: providerName, Scopes: []string{"drain"}})
			errs <- err
		})
	}
	time.Sleep(200 * time.Millisecond) // the calls wait on the provider now
	start := time.Now()
	if err := closeA(); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("a call in flight at shutdown failed: %v", err)
		}
	}
	for len(b.Broker().LeadingShards()) == 0 {
		if time.Since(start) > time.Second+fakeDelay {
			t.Fatalf("the other replica did not lead within 1s of the shutdown's end")
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("shutdown with %d calls in flight, leadership moved after %s (the drain took most of it)", calls, time.Since(start))
}

// fakeDelay is how long the drained calls wait on the provider.
const fakeDelay = 700 * time.Millisecond
