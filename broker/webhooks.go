package broker

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tokenbroker/tokenbroker/broker/event"
)

// Webhooks push events to receivers. A subscription is a record tagged with
// the master key, its signing secret sealed; the leader of refresh shard 0
// delivers (see webhook_delivery.go).

// Key prefixes of webhooks below the broker's etcd prefix.
const (
	webhooksPrefix = "webhooks/"
	// webhookStatePrefix holds each subscription's delivery cursor.
	webhookStatePrefix = "webhookstate/"
	// webhookDeliveriesPrefix holds delivery records:
	// <subscription>/<event id>.
	webhookDeliveriesPrefix = "webhookdeliveries/"
	// webhookRedeliverPrefix queues dead letters an admin asked to
	// deliver again: <subscription>/<event id>.
	webhookRedeliverPrefix = "webhookredeliver/"
)

// WebhookSecretPrefix starts every signing secret (the Standard Webhooks
// format: whsec_ and the base64 of 24 to 64 key bytes).
const WebhookSecretPrefix = "whsec_"

// Webhook is a subscription: where to deliver which events.
type Webhook struct {
	// ID names the subscription, as a provider name.
	ID string
	// URL receives the deliveries: https, or plain http to a loopback
	// address when the broker allows it.
	URL string
	// EventTypes selects events by type; all when empty.
	EventTypes []event.Type
	// Providers selects events of these providers; all when empty.
	Providers []string
	// Secret signs deliveries. Callers that answer admins must not pass it
	// on.
	Secret           string
	SecretUpdateTime time.Time
	CreateTime       time.Time
	UpdateTime       time.Time
	// Status is the delivery state, when read.
	Status WebhookStatus
}

// WebhookStatus is where delivery to a subscription stands.
type WebhookStatus struct {
	// LastEventID is the last event delivered or dead-lettered, in order.
	LastEventID string
	// ConsecutiveFailures counts failed attempts since the last success.
	ConsecutiveFailures int
	// PausedUntil, when in the future, is when the circuit breaker lets
	// delivery resume.
	PausedUntil time.Time
}

func (w *Webhook) matches(e event.Event) bool {
	if len(w.EventTypes) > 0 && !slices.Contains(w.EventTypes, e.Type) {
		return false
	}
	return len(w.Providers) == 0 || slices.Contains(w.Providers, e.Provider)
}

// storedWebhook is the etcd encoding of a Webhook.
type storedWebhook struct {
	ID               string    `json:"id"`
	URL              string    `json:"url"`
	EventTypes       []string  `json:"event_types,omitempty"`
	Providers        []string  `json:"providers,omitempty"`
	Secret           []byte    `json:"secret_sealed"`
	SecretUpdateTime time.Time `json:"secret_update_time"`
	CreateTime       time.Time `json:"create_time"`
	UpdateTime       time.Time `json:"update_time"`
}

func (b *Broker) webhookKey(id string) string { return b.prefix + webhooksPrefix + id }

func (b *Broker) encodeWebhook(key string, w *Webhook) ([]byte, error) {
	secret, err := b.sealString(key, "secret", w.Secret)
	if err != nil {
		return nil, err
	}
	s := storedWebhook{ID: w.ID, URL: w.URL, Providers: w.Providers, Secret: secret,
		SecretUpdateTime: w.SecretUpdateTime, CreateTime: w.CreateTime, UpdateTime: w.UpdateTime}
	for _, t := range w.EventTypes {
		s.EventTypes = append(s.EventTypes, string(t))
	}
	return b.signRecord(key, s)
}

func (b *Broker) decodeWebhook(key string, data []byte) (*Webhook, error) {
	s, err := decodeSigned[storedWebhook](b, key, data, "webhook")
	if err != nil {
		return nil, err
	}
	secret, err := b.openString(key, "secret", s.Secret)
	if err != nil {
		return nil, err
	}
	w := &Webhook{ID: s.ID, URL: s.URL, Providers: s.Providers, Secret: secret,
		SecretUpdateTime: s.SecretUpdateTime, CreateTime: s.CreateTime, UpdateTime: s.UpdateTime}
	for _, t := range s.EventTypes {
		w.EventTypes = append(w.EventTypes, event.Type(t))
	}
	return w, nil
}

// Bounds of a subscription: its filters, and its secret (whsec_ and the
// base64 of at most 64 bytes).
const (
	maxWebhookFilters   = 64
	maxWebhookSecretLen = 128
)

// GenerateWebhookSecret returns a fresh signing secret: whsec_ and the
// base64 of 32 random bytes.
func GenerateWebhookSecret() (string, error) {
	var k [32]byte
	if _, err := rand.Read(k[:]); err != nil {
		return "", err
	}
	return WebhookSecretPrefix + base64.StdEncoding.EncodeToString(k[:]), nil
}

// webhookKeyBytes is the HMAC key of a whsec_ secret.
func webhookKeyBytes(secret string) ([]byte, error) {
	if len(secret) > maxWebhookSecretLen {
		return nil, invalidf("webhook secret: %v", tooLong("the secret", len(secret), maxWebhookSecretLen))
	}
	raw, ok := strings.CutPrefix(secret, WebhookSecretPrefix)
	if !ok {
		return nil, invalidf("webhook secret must start with %s", WebhookSecretPrefix)
	}
	k, err := base64.StdEncoding.DecodeString(raw)
	if err != nil {
		return nil, invalidf("webhook secret: the part after %s is not base64", WebhookSecretPrefix)
	}
	if len(k) < 24 || len(k) > 64 {
		return nil, invalidf("webhook secret: want 24 to 64 key bytes, got %d", len(k))
	}
	return k, nil
}

// validateWebhook checks w, with the broker's https rule.
func (b *Broker) validateWebhook(w *Webhook) error { return ValidateWebhook(w, b.requireHTTPS) }

// ValidateWebhook checks a subscription as PutWebhook does: its id, its
// URL (https, or plain http to a loopback address unless requireHTTPS),
// its filters, and its secret when w.Secret is set. Errors wrap
// ErrInvalidArgument and never quote the secret.
func ValidateWebhook(w *Webhook, requireHTTPS bool) error {
	if w.Secret != "" {
		if _, err := webhookKeyBytes(w.Secret); err != nil {
			return err
		}
	}
	if err := ValidateProviderName(w.ID); err != nil {
		return invalidf("webhook id: %v", strings.TrimPrefix(err.Error(), ErrInvalidArgument.Error()+": "))
	}
	if w.URL == "" {
		return invalidf("webhook %q: url is required", w.ID)
	}
	if err := validateURL(w.URL); err != nil {
		return invalidf("webhook %q: url: %v", w.ID, err)
	}
	if requireHTTPS && strings.HasPrefix(w.URL, "http:") {
		return invalidf("webhook %q: url: plain http is refused (serve --insecure-http-loopback allows it to loopback addresses)", w.ID)
	}
	if len(w.EventTypes) > maxWebhookFilters || len(w.Providers) > maxWebhookFilters {
		return invalidf("webhook %q: at most %d event types and %d providers", w.ID, maxWebhookFilters, maxWebhookFilters)
	}
	for _, t := range w.EventTypes {
		if !t.Valid() {
			return invalidf("webhook %q: unknown event type %q", w.ID, printable(string(t), 40))
		}
	}
	for _, p := range w.Providers {
		if err := ValidateProviderName(p); err != nil {
			return err
		}
	}
	return nil
}

// PutWebhook creates or replaces subscription w. An empty secret keeps the
// stored one, or, for a new subscription, generates one: the second result
// is that generated secret, to show the admin once. A new subscription
// receives the events recorded after it. Errors wrap ErrInvalidArgument,
// ErrStoreUnavailable or ErrConflict.
func (b *Broker) PutWebhook(ctx context.Context, w Webhook, secret string) (*Webhook, string, error) {
	if err := b.validateWebhook(&w); err != nil {
		return nil, "", err
	}
	if secret != "" {
		if _, err := webhookKeyBytes(secret); err != nil {
			return nil, "", err
		}
	}
	key := b.webhookKey(w.ID)
	for range maxCASAttempts {
		sctx, cancel := context.WithTimeout(ctx, b.storeTimeout)
		resp, err := b.cli.Get(sctx, key)
		cancel()
		if err != nil {
			return nil, "", storeError(ctx, "read webhook", err)
		}
		next := w
		now := time.Now().UTC()
		next.CreateTime, next.UpdateTime = now, now
		next.Secret, next.SecretUpdateTime = secret, now
		generated := ""
		cond := clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
		if len(resp.Kvs) > 0 {
			old, err := b.decodeWebhook(key, resp.Kvs[0].Value)
			if err != nil {
				return nil, "", err
			}
			next.CreateTime = old.CreateTime
			if secret == "" || secret == old.Secret {
				next.Secret, next.SecretUpdateTime = old.Secret, old.SecretUpdateTime
			}
			cond = clientv3.Compare(clientv3.ModRevision(key), "=", resp.Kvs[0].ModRevision)
		} else if secret == "" {
			if generated, err = GenerateWebhookSecret(); err != nil {
				return nil, "", err
			}
			next.Secret = generated
		}
		val, err := b.encodeWebhook(key, &next)
		if err != nil {
			return nil, "", err
		}
		sctx, cancel = context.WithTimeout(ctx, b.storeTimeout)
		txn, err := b.cli.Txn(sctx).If(cond).Then(clientv3.OpPut(key, string(val))).Commit()
		cancel()
		if err != nil {
			return nil, "", storeError(ctx, "write webhook", err)
		}
		if txn.Succeeded {
			b.wakeWebhooks()
			return &next, generated, nil
		}
	}
	return nil, "", fmt.Errorf("%w: webhook %q changed %d times during the update", ErrConflict, w.ID, maxCASAttempts)
}

// GetWebhook reads subscription id with its delivery status. The result
// includes the secret: callers that answer admins must not pass it on.
// Errors wrap ErrInvalidArgument, ErrNotFound, ErrUntrustedRecord or
// ErrStoreUnavailable.
func (b *Broker) GetWebhook(ctx context.Context, id string) (*Webhook, error) {
	if err := ValidateProviderName(id); err != nil {
		return nil, err
	}
	sctx, cancel := context.WithTimeout(ctx, b.storeTimeout)
	defer cancel()
	resp, err := b.cli.Txn(sctx).Then(clientv3.OpGet(b.webhookKey(id)), clientv3.OpGet(b.prefix+webhookStatePrefix+id)).Commit()
	if err != nil {
		return nil, storeError(ctx, "read webhook", err)
	}
	kvs := resp.Responses[0].GetResponseRange().GetKvs()
	if len(kvs) == 0 {
		return nil, fmt.Errorf("%w: webhook %q", ErrNotFound, id)
	}
	w, err := b.decodeWebhook(string(kvs[0].Key), kvs[0].Value)
	if err != nil {
		return nil, err
	}
	if st := resp.Responses[1].GetResponseRange().GetKvs(); len(st) > 0 {
		if s, err := b.decodeWebhookState(string(st[0].Key), st[0].Value); err == nil {
			w.Status = s.status()
		}
	}
	return w, nil
}

// ListWebhooks returns every subscription sorted by id, with secrets (see
// GetWebhook) and without status. Records that fail authentication are
// logged and left out. Errors wrap ErrStoreUnavailable.
func (b *Broker) ListWebhooks(ctx context.Context) ([]*Webhook, error) {
	hooks, _, err := b.readWebhooks(ctx)
	return hooks, err
}

// readWebhooks also returns each subscription's create revision by id.
func (b *Broker) readWebhooks(ctx context.Context) ([]*Webhook, map[string]int64, error) {
	sctx, cancel := context.WithTimeout(ctx, b.storeTimeout)
	defer cancel()
	resp, err := b.cli.Get(sctx, b.prefix+webhooksPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, nil, storeError(ctx, "list webhooks", err)
	}
	var out []*Webhook
	created := map[string]int64{}
	for _, kv := range resp.Kvs {
		w, err := b.decodeWebhook(string(kv.Key), kv.Value)
		if err != nil {
			b.log.Error("skip a webhook record", zap.Error(err))
			continue
		}
		out = append(out, w)
		created[w.ID] = kv.CreateRevision
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, created, nil
}

// DeleteWebhook removes subscription id with its delivery state and
// records. Errors wrap ErrInvalidArgument, ErrNotFound or
// ErrStoreUnavailable.
func (b *Broker) DeleteWebhook(ctx context.Context, id string) error {
	if err := ValidateProviderName(id); err != nil {
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, b.storeTimeout)
	defer cancel()
	resp, err := b.cli.Txn(sctx).Then(
		clientv3.OpDelete(b.webhookKey(id)),
		clientv3.OpDelete(b.prefix+webhookStatePrefix+id),
		clientv3.OpDelete(b.prefix+webhookDeliveriesPrefix+id+"/", clientv3.WithPrefix()),
		clientv3.OpDelete(b.prefix+webhookRedeliverPrefix+id+"/", clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return storeError(ctx, "delete webhook", err)
	}
	if resp.Responses[0].GetResponseDeleteRange().GetDeleted() == 0 {
		return fmt.Errorf("%w: webhook %q", ErrNotFound, id)
	}
	b.wakeWebhooks()
	return nil
}
