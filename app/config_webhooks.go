package app

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/event"
)

// EventsConfig bounds the events kept and tunes their delivery to
// webhooks.
type EventsConfig struct {
	// Retention and MaxAge bound the events kept: the oldest beyond the
	// count and those older than the age are dropped. 10000 and 168h
	// when zero.
	Retention int           `yaml:"retention"`
	MaxAge    time.Duration `yaml:"max_age"`
	// WatchBuffer is how many events a WatchEvents consumer may fall
	// behind before its stream ends with a resumable error; 256 when
	// zero.
	WatchBuffer int `yaml:"watch_buffer"`
	// WebhookDelivery tunes the retries of webhook deliveries.
	WebhookDelivery WebhookDeliveryConfig `yaml:"webhook_delivery"`
}

// WebhookDeliveryConfig tunes webhook delivery; zero values take the
// broker's defaults (see broker.WebhookConfig).
type WebhookDeliveryConfig struct {
	// Schedule is the wait before each retry of a failed delivery; after
	// the last, the delivery is dead-lettered. About 23 hours in all by
	// default: 5s, 30s, 2m, 10m, 1h, 2h, 4h, 8h, 8h.
	Schedule []time.Duration `yaml:"schedule"`
	// Timeout bounds one attempt; 10s by default.
	Timeout time.Duration `yaml:"timeout"`
	// BreakerThreshold consecutive failed attempts pause a subscription
	// for BreakerPause; 10 and 5m by default.
	BreakerThreshold int           `yaml:"breaker_threshold"`
	BreakerPause     time.Duration `yaml:"breaker_pause"`
}

// Bounds of the events section.
const (
	maxEventRetention     = 1_000_000
	maxEventWatchBuffer   = 100_000
	maxWebhookSchedule    = 32
	maxWebhookScheduleSum = 7 * 24 * time.Hour
)

func (e EventsConfig) validate() []error {
	var errs []error
	if e.Retention < 0 || e.Retention > maxEventRetention {
		errs = append(errs, fmt.Errorf("events.retention %d must be between 0 (the default) and %d", e.Retention, maxEventRetention))
	}
	if e.MaxAge < 0 {
		errs = append(errs, errors.New("events.max_age must not be negative"))
	}
	if e.WatchBuffer < 0 || e.WatchBuffer > maxEventWatchBuffer {
		errs = append(errs, fmt.Errorf("events.watch_buffer %d must be between 0 (the default) and %d", e.WatchBuffer, maxEventWatchBuffer))
	}
	d := e.WebhookDelivery
	if len(d.Schedule) > maxWebhookSchedule {
		errs = append(errs, fmt.Errorf("events.webhook_delivery.schedule has %d retries, at most %d", len(d.Schedule), maxWebhookSchedule))
	}
	var sum time.Duration
	for i, w := range d.Schedule {
		if w <= 0 {
			errs = append(errs, fmt.Errorf("events.webhook_delivery.schedule[%d] %s must be above 0", i, w))
		}
		sum += w
	}
	if sum > maxWebhookScheduleSum {
		errs = append(errs, fmt.Errorf("events.webhook_delivery.schedule adds up to %s, at most %s", sum, maxWebhookScheduleSum))
	}
	if d.Timeout < 0 || d.BreakerPause < 0 || d.BreakerThreshold < 0 {
		errs = append(errs, errors.New("events.webhook_delivery: timeout, breaker_threshold and breaker_pause must not be negative"))
	}
	return errs
}

// brokerConfig is the delivery tuning for the broker.
func (d WebhookDeliveryConfig) brokerConfig() broker.WebhookConfig {
	return broker.WebhookConfig{Schedule: d.Schedule, Timeout: d.Timeout, BreakerThreshold: d.BreakerThreshold, BreakerPause: d.BreakerPause}
}

// WebhookConfig declares a webhook subscription. Its signing secret (the
// Standard Webhooks form, whsec_ and base64) comes from exactly one of
// SecretEnv and SecretFile: it is stored sealed and never shown.
type WebhookConfig struct {
	ID  string `yaml:"id"`
	URL string `yaml:"url"`
	// EventTypes and Providers select the events delivered; all when
	// empty.
	EventTypes []string `yaml:"event_types"`
	Providers  []string `yaml:"providers"`
	SecretEnv  string   `yaml:"secret_env"`
	SecretFile string   `yaml:"secret_file"`
}

// webhook converts the declaration, reading the secret from where it
// says. Errors never quote the secret.
func (wc WebhookConfig) webhook(getenv func(string) string, requireHTTPS bool) (broker.Webhook, error) {
	w := broker.Webhook{ID: wc.ID, URL: wc.URL, Providers: wc.Providers}
	for _, t := range wc.EventTypes {
		w.EventTypes = append(w.EventTypes, event.Type(t))
	}
	switch {
	case (wc.SecretEnv == "") == (wc.SecretFile == ""):
		return w, errors.New("set one of secret_env and secret_file")
	case wc.SecretEnv != "":
		if w.Secret = getenv(wc.SecretEnv); w.Secret == "" {
			return w, fmt.Errorf("secret_env: $%s is empty", wc.SecretEnv)
		}
	default:
		b, err := os.ReadFile(wc.SecretFile)
		if err != nil {
			return w, fmt.Errorf("secret_file: cannot read %s", wc.SecretFile)
		}
		w.Secret = strings.TrimSpace(string(b))
	}
	if err := broker.ValidateWebhook(&w, requireHTTPS); err != nil {
		return w, errors.New(strings.TrimPrefix(err.Error(), broker.ErrInvalidArgument.Error()+": "))
	}
	return w, nil
}

// validateWebhooks reports every problem of the webhooks section.
func (c *Config) validateWebhooks(getenv func(string) string) []error {
	var errs []error
	seen := map[string]bool{}
	for i, wc := range c.Webhooks {
		if seen[wc.ID] {
			errs = append(errs, fmt.Errorf("webhooks[%d]: %q is declared twice", i, wc.ID))
		}
		seen[wc.ID] = true
		if _, err := wc.webhook(getenv, !c.InsecureHTTPLoopback); err != nil {
			errs = append(errs, fmt.Errorf("webhooks[%d]: %w", i, err))
		}
	}
	return errs
}

// ApplyWebhooks creates or updates the subscriptions cfg declares; one
// stored as declared is left alone (its delivery state too). A
// subscription removed from the file is not deleted: 'tokenbroker
// webhooks delete' does that. It is run at start and on SIGHUP.
func (a *App) ApplyWebhooks(ctx context.Context, cfg Config) error {
	for _, wc := range cfg.Webhooks {
		w, err := wc.webhook(cfg.env(), !cfg.InsecureHTTPLoopback)
		if err != nil {
			return fmt.Errorf("webhook %q: %w", wc.ID, err)
		}
		old, err := a.broker.GetWebhook(ctx, w.ID)
		switch {
		case err == nil && old.URL == w.URL && old.Secret == w.Secret &&
			slices.Equal(old.EventTypes, w.EventTypes) && slices.Equal(old.Providers, w.Providers):
			continue
		case err != nil && !errors.Is(err, broker.ErrNotFound):
			return fmt.Errorf("webhook %q: %w", wc.ID, err)
		}
		secret := w.Secret
		w.Secret = ""
		if _, _, err := a.broker.PutWebhook(ctx, w, secret); err != nil {
			return fmt.Errorf("register webhook %q: %w", wc.ID, err)
		}
		a.log.Info("webhook registered from config", zap.String("webhook", w.ID))
	}
	return nil
}
