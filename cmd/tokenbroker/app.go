package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/internal/embedetcd"
	"github.com/tokenbroker/tokenbroker/server"
)

// App is the running broker: its store (embedded or external etcd), the
// broker, and the servers. End-to-end tests run the real wiring through it.
type App struct {
	cfg    Config
	log    *zap.Logger
	etcd   *embedetcd.Server // nil with external endpoints
	client *clientv3.Client
	broker *broker.Broker
	server *server.Server
}

// StartApp starts everything cfg describes and registers its providers.
// On error, whatever was started is stopped again.
func StartApp(ctx context.Context, cfg Config, log *zap.Logger) (_ *App, err error) {
	a := &App{cfg: cfg, log: log}
	defer func() {
		if err != nil {
			a.Close()
		}
	}()
	endpoints := cfg.Etcd.Endpoints
	if len(endpoints) == 0 {
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			return nil, fmt.Errorf("data dir: %w", err)
		}
		a.etcd, err = embedetcd.Start(ctx, embedetcd.Config{Dir: cfg.DataDir, Logger: log.Named("etcd").WithOptions(zap.IncreaseLevel(zap.ErrorLevel))})
		if err != nil {
			return nil, err
		}
		endpoints = []string{a.etcd.Endpoint()}
		log.Info("embedded etcd started", zap.String("data_dir", cfg.DataDir), zap.String("endpoint", a.etcd.Endpoint()))
	}
	a.client, err = clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: cfg.Etcd.DialTimeout,
		Logger:      log.Named("etcd-client").WithOptions(zap.IncreaseLevel(zap.WarnLevel)),
		Context:     context.Background(),
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client: %w", err)
	}
	a.broker, err = broker.New(ctx, broker.Config{
		Client:        a.client,
		Prefix:        cfg.Etcd.Prefix,
		DefaultMinTTL: cfg.DefaultMinTTL,
		Logger:        log,
	})
	if err != nil {
		return nil, err
	}
	for _, pc := range cfg.Providers {
		p, secret, err := pc.provider(cfg.env())
		if err != nil {
			return nil, fmt.Errorf("provider %q: %w", pc.Name, err)
		}
		if _, err := a.broker.PutProvider(ctx, p, secret); err != nil {
			return nil, fmt.Errorf("register provider %q: %w", pc.Name, err)
		}
		log.Info("provider registered from config", zap.String("provider", p.Name))
	}
	a.server, err = server.New(server.Config{GRPCAddr: cfg.GRPCAddr, HTTPAddr: cfg.HTTPAddr, Broker: a.broker, Logger: log})
	if err != nil {
		return nil, err
	}
	a.server.Start()
	return a, nil
}

// Broker returns the app's broker.
func (a *App) Broker() *broker.Broker { return a.broker }

// GRPCAddr and HTTPAddr are the bound listener addresses.
func (a *App) GRPCAddr() string { return a.server.GRPCAddr() }

// HTTPAddr is the bound REST listener address.
func (a *App) HTTPAddr() string { return a.server.HTTPAddr() }

// Wait blocks until ctx ends (nil) or a listener fails (its error).
func (a *App) Wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case err := <-a.server.Err():
		return err
	}
}

// Close drains in-flight calls for up to the shutdown timeout, then stops
// the broker, the etcd client and the embedded etcd, in that order.
func (a *App) Close() error {
	var errs []error
	if a.server != nil {
		ctx, cancel := context.WithTimeout(context.Background(), a.cfg.ShutdownTimeout)
		errs = append(errs, a.server.Shutdown(ctx))
		cancel()
	}
	if a.broker != nil {
		errs = append(errs, a.broker.Close())
	}
	if a.client != nil {
		errs = append(errs, a.client.Close())
	}
	if a.etcd != nil {
		a.etcd.Close()
	}
	return errors.Join(errs...)
}
