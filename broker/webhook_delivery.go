package broker

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tokenbroker/tokenbroker/broker/event"
)

// Delivery follows the Standard Webhooks specification: a POST of the
// event as JSON with the headers webhook-id (the event id, the same on
// every attempt), webhook-timestamp (Unix seconds) and webhook-signature
// ("v1," and the base64 HMAC-SHA256 of "{id}.{timestamp}.{body}" keyed
// with the secret's bytes). Any 2xx answer is a success.
//
// The leader of refresh shard 0 delivers, one worker per subscription, in
// the order the events were committed (etcd revision order, which per
// grant is the order of its changes). Each subscription has a cursor: the
// revision of the last event delivered or dead-lettered. The cursor moves
// only after the receiver answered, in a transaction fenced on the
// leader's election key, so that a leader that dies mid-delivery leaves
// the event to its successor (at least once; a duplicate has the same
// webhook-id). An event that keeps failing is retried on the schedule,
// then dead-lettered, and the cursor moves past it.

// ErrNotLeader: a write only the leader may make was refused because this
// replica no longer leads.
var ErrNotLeader = errors.New("broker: not the leader")

// WebhookConfig tunes webhook delivery.
type WebhookConfig struct {
	// Schedule is the wait before each retry of a failed delivery; after
	// the last, the delivery is dead-lettered. DefaultWebhookSchedule when
	// nil (about 23 hours in all).
	Schedule []time.Duration
	// Timeout bounds one attempt; 10s when zero.
	Timeout time.Duration
	// MaxResponseBytes of a receiver's answer are read, the rest ignored;
	// 64 KiB when zero.
	MaxResponseBytes int64
	// BreakerThreshold consecutive failed attempts to a subscription pause
	// it for BreakerPause; 10 and 5 minutes when zero.
	BreakerThreshold int
	BreakerPause     time.Duration
	// Poll is how often the leader looks for new subscriptions and due
	// retries when no event wakes it; 1s when zero.
	Poll time.Duration
	// KeepDelivered is how many delivered records are kept per
	// subscription for ListWebhookDeliveries; 100 when zero. Dead letters
	// are kept until redelivered or the subscription is deleted.
	KeepDelivered int
}

// DefaultWebhookSchedule is the retry schedule when none is configured.
var DefaultWebhookSchedule = []time.Duration{5 * time.Second, 30 * time.Second, 2 * time.Minute, 10 * time.Minute,
	time.Hour, 2 * time.Hour, 4 * time.Hour, 8 * time.Hour, 8 * time.Hour}

func (c WebhookConfig) withDefaults() WebhookConfig {
	if c.Schedule == nil {
		c.Schedule = DefaultWebhookSchedule
	}
	c.Timeout = cmp(c.Timeout, 10*time.Second)
	c.MaxResponseBytes = cmp(c.MaxResponseBytes, 64<<10)
	c.BreakerThreshold = cmp(c.BreakerThreshold, 10)
	c.BreakerPause = cmp(c.BreakerPause, 5*time.Minute)
	c.Poll = cmp(c.Poll, time.Second)
	c.KeepDelivered = cmp(c.KeepDelivered, 100)
	return c
}

// DeliveryStatus is where the delivery of one event to one subscription
// stands.
type DeliveryStatus string

// Delivery statuses.
const (
	// DeliveryRetrying: an attempt failed; the next is at NextAttempt.
	DeliveryRetrying DeliveryStatus = "retrying"
	// DeliveryDelivered: the receiver answered 2xx.
	DeliveryDelivered DeliveryStatus = "delivered"
	// DeliveryDead: every attempt of the schedule failed (a dead letter).
	DeliveryDead DeliveryStatus = "dead"
	// DeliveryQueued: an admin asked to deliver a dead letter again.
	DeliveryQueued DeliveryStatus = "queued"
)

// WebhookDelivery is the delivery of one event to one subscription.
type WebhookDelivery struct {
	Webhook   string         `json:"webhook"`
	EventID   string         `json:"event_id"`
	EventType event.Type     `json:"event_type"`
	Status    DeliveryStatus `json:"status"`
	Attempts  int            `json:"attempts"`
	// LastHTTPStatus is the receiver's last answer; 0 when it gave none.
	LastHTTPStatus int `json:"last_http_status,omitempty"`
	// LastError says why the last attempt failed, without the URL.
	LastError    string    `json:"last_error,omitempty"`
	FirstAttempt time.Time `json:"first_attempt"`
	LastAttempt  time.Time `json:"last_attempt"`
	NextAttempt  time.Time `json:"next_attempt,omitzero"`
}

// storedWebhookState is a subscription's cursor and breaker.
type storedWebhookState struct {
	Rev         int64     `json:"rev"`
	EventID     string    `json:"event_id,omitempty"`
	Failures    int       `json:"failures,omitempty"`
	PausedUntil time.Time `json:"paused_until,omitzero"`
}

func (s storedWebhookState) status() WebhookStatus {
	return WebhookStatus{LastEventID: s.EventID, ConsecutiveFailures: s.Failures, PausedUntil: s.PausedUntil}
}

// decodeSigned reads a record of type T tagged for key with the master
// key; what names it in errors.
func decodeSigned[T any](b *Broker, key string, data []byte, what string) (T, error) {
	var v T
	if err := b.verifyRecord(key, data); err != nil {
		return v, err
	}
	if err := json.Unmarshal(data, &v); err != nil {
		return v, fmt.Errorf("decode %s: %w", what, err)
	}
	return v, nil
}

func (b *Broker) decodeWebhookState(key string, data []byte) (storedWebhookState, error) {
	return decodeSigned[storedWebhookState](b, key, data, "webhook state")
}

func (b *Broker) deliveryKey(id, eventID string) string {
	return b.prefix + webhookDeliveriesPrefix + id + "/" + eventID
}

func (b *Broker) decodeDelivery(key string, data []byte) (WebhookDelivery, error) {
	return decodeSigned[WebhookDelivery](b, key, data, "webhook delivery")
}

// ListWebhookDeliveries returns the kept deliveries of subscription id,
// newest event first: recent ones and every dead letter. Errors wrap
// ErrInvalidArgument or ErrStoreUnavailable.
func (b *Broker) ListWebhookDeliveries(ctx context.Context, id string) ([]WebhookDelivery, error) {
	if err := ValidateProviderName(id); err != nil {
		return nil, err
	}
	sctx, cancel := context.WithTimeout(ctx, b.storeTimeout)
	defer cancel()
	resp, err := b.cli.Get(sctx, b.prefix+webhookDeliveriesPrefix+id+"/", clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend))
	if err != nil {
		return nil, storeError(ctx, "list webhook deliveries", err)
	}
	var out []WebhookDelivery
	for _, kv := range resp.Kvs {
		d, err := b.decodeDelivery(string(kv.Key), kv.Value)
		if err != nil {
			b.log.Error("skip a webhook delivery record", zap.Error(err))
			continue
		}
		out = append(out, d)
	}
	return out, nil
}

// RedeliverWebhook queues the dead letter of event eventID to subscription
// id for delivery again, with a fresh schedule, ahead of the events not
// delivered yet. Errors wrap ErrInvalidArgument (a malformed id, or a
// delivery that is not dead), ErrNotFound, ErrConflict or
// ErrStoreUnavailable.
func (b *Broker) RedeliverWebhook(ctx context.Context, id, eventID string) error {
	if err := ValidateProviderName(id); err != nil {
		return err
	}
	if !event.ValidID(eventID) {
		return invalidf("event id %q is malformed", printable(eventID, 32))
	}
	key := b.deliveryKey(id, eventID)
	sctx, cancel := context.WithTimeout(ctx, b.storeTimeout)
	defer cancel()
	resp, err := b.cli.Get(sctx, key)
	if err != nil {
		return storeError(ctx, "read webhook delivery", err)
	}
	if len(resp.Kvs) == 0 {
		return fmt.Errorf("%w: no delivery of event %s to webhook %q", ErrNotFound, eventID, id)
	}
	d, err := b.decodeDelivery(key, resp.Kvs[0].Value)
	if err != nil {
		return err
	}
	if d.Status != DeliveryDead {
		return invalidf("delivery of event %s to webhook %q is %s, not dead-lettered", eventID, id, d.Status)
	}
	d.Status, d.Attempts, d.NextAttempt = DeliveryQueued, 0, time.Time{}
	val, err := b.signRecord(key, d)
	if err != nil {
		return err
	}
	txn, err := b.cli.Txn(sctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", resp.Kvs[0].ModRevision)).
		Then(clientv3.OpPut(key, string(val)), clientv3.OpPut(b.prefix+webhookRedeliverPrefix+id+"/"+eventID, "")).Commit()
	if err != nil {
		return storeError(ctx, "queue webhook redelivery", err)
	}
	if !txn.Succeeded {
		return fmt.Errorf("%w: delivery of event %s changed", ErrConflict, eventID)
	}
	b.wakeWebhooks()
	return nil
}

// wakeWebhooks tells this replica's deliverer, if it leads, to look again
// now.
func (b *Broker) wakeWebhooks() {
	select {
	case b.webhookWake <- struct{}{}:
	default:
	}
}

// fence guards the leader's writes: they commit only while its election
// key is the one it won with.
type fence struct {
	key string
	rev int64
}

func (f fence) held() clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(f.key), "=", f.rev)
}

// webhookWorker delivers to one subscription.
type webhookWorker struct {
	hook    atomic.Pointer[Webhook]
	created int64 // the subscription record's create revision
	wake    chan struct{}
	cancel  context.CancelFunc
	done    chan struct{}
	// delivered counts successes since the last pruning.
	delivered int
}

func (wk *webhookWorker) poke() {
	select {
	case wk.wake <- struct{}{}:
	default:
	}
}

// deliverWebhooks runs a worker per subscription until ctx ends (the
// leadership is lost or the broker closes) and waits for them.
func (b *Broker) deliverWebhooks(ctx context.Context, f fence) {
	workers := map[string]*webhookWorker{}
	defer func() {
		for _, wk := range workers {
			wk.cancel()
			<-wk.done
		}
	}()
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	// From the revision at which this replica began to campaign, so that
	// every event recorded since is counted (a watch opens
	// asynchronously; a predecessor that died counted none after).
	watchFrom := func(rev int64) clientv3.WatchChan {
		return b.cli.Watch(wctx, b.prefix+event.Prefix, clientv3.WithPrefix(), clientv3.WithFilterDelete(), clientv3.WithRev(rev))
	}
	recorded := watchFrom(f.rev + 1)
	tick := time.NewTicker(b.webhooks.Poll)
	defer tick.Stop()
	for {
		hooks, created, err := b.readWebhooks(ctx)
		if err == nil {
			seen := map[string]bool{}
			for _, w := range hooks {
				seen[w.ID] = true
				wk, ok := workers[w.ID]
				if ok && wk.created != created[w.ID] { // deleted and made again
					wk.cancel()
					<-wk.done
					ok = false
				}
				if !ok {
					wk = &webhookWorker{created: created[w.ID], wake: make(chan struct{}, 1), done: make(chan struct{})}
					var wkctx context.Context
					wkctx, wk.cancel = context.WithCancel(ctx)
					wk.hook.Store(w)
					workers[w.ID] = wk
					go b.runWebhook(wkctx, f, wk) // stopped and waited for by the deferred loop above
				}
				wk.hook.Store(w)
			}
			for id, wk := range workers {
				if !seen[id] {
					wk.cancel()
					<-wk.done
					delete(workers, id)
				}
			}
		}
		for _, wk := range workers {
			wk.poke()
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-b.webhookWake:
		case resp, ok := <-recorded:
			switch {
			case resp.CompactRevision != 0: // from the oldest revision kept
				recorded = watchFrom(resp.CompactRevision)
			case !ok:
				recorded = nil // the ticker goes on
			}
			b.countEvents(resp)
		}
	}
}

// countEvents reports the events a watch response carries as recorded:
// the leader of shard 0 counts them for the fleet.
func (b *Broker) countEvents(resp clientv3.WatchResponse) {
	for _, ev := range resp.Events {
		if ev.Type != clientv3.EventTypePut || ev.Kv.CreateRevision != ev.Kv.ModRevision {
			continue
		}
		if e, err := b.decodeEvent(ev.Kv); err == nil {
			b.obs.EventRecorded(e.Type)
		}
	}
}

// runWebhook delivers to one subscription until ctx ends.
func (b *Broker) runWebhook(ctx context.Context, f fence, wk *webhookWorker) {
	defer close(wk.done)
	log := b.log.With(zap.String("webhook", wk.hook.Load().ID))
	for ctx.Err() == nil {
		wait, err := b.deliverNext(ctx, f, wk)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Warn("webhook delivery", zap.Error(err))
			wait = b.webhooks.Poll
		}
		if wait == 0 {
			continue
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
		case <-wk.wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// deliverNext makes one attempt to deliver the subscription's next event
// and records it; it returns how long to wait before the next step (0 to
// go on at once).
func (b *Broker) deliverNext(ctx context.Context, f fence, wk *webhookWorker) (time.Duration, error) {
	w := wk.hook.Load()
	stateKey := b.prefix + webhookStatePrefix + w.ID
	sctx, cancel := context.WithTimeout(ctx, b.storeTimeout)
	resp, err := b.cli.Txn(sctx).Then(
		clientv3.OpGet(stateKey),
		clientv3.OpGet(b.prefix+webhookRedeliverPrefix+w.ID+"/", clientv3.WithPrefix(), clientv3.WithLimit(1)),
	).Commit()
	cancel()
	if err != nil {
		return 0, storeError(ctx, "read webhook state", err)
	}
	st := storedWebhookState{Rev: wk.created} // a new subscription gets what is recorded after it
	if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
		if st, err = b.decodeWebhookState(stateKey, kvs[0].Value); err != nil {
			return 0, err
		}
	}
	now := time.Now()
	if st.PausedUntil.After(now) {
		return st.PausedUntil.Sub(now), nil
	}
	var e *event.Event
	redeliver := ""
	if kvs := resp.Responses[1].GetResponseRange().GetKvs(); len(kvs) > 0 {
		redeliver = string(kvs[0].Key)
		if e, err = b.readEvent(ctx, redeliver[strings.LastIndexByte(redeliver, '/')+1:]); err != nil {
			return 0, err
		}
		if e == nil { // no longer kept: nothing to deliver
			return 0, b.fencedWrite(ctx, f, wk, clientv3.OpDelete(redeliver))
		}
	} else {
		next, skip, err := b.nextEvent(ctx, w, st.Rev)
		if err != nil {
			return 0, err
		}
		if next == nil {
			if skip > st.Rev { // events this subscription does not want
				st.Rev = skip
				op, err := b.stateOp(stateKey, st)
				if err != nil {
					return 0, err
				}
				return 0, b.fencedWrite(ctx, f, wk, op)
			}
			return b.webhooks.Poll, nil
		}
		e = next
	}

	dkey := b.deliveryKey(w.ID, e.ID)
	d := WebhookDelivery{Webhook: w.ID, EventID: e.ID, EventType: e.Type, Status: DeliveryRetrying}
	sctx, cancel = context.WithTimeout(ctx, b.storeTimeout)
	dresp, err := b.cli.Get(sctx, dkey)
	cancel()
	if err != nil {
		return 0, storeError(ctx, "read webhook delivery", err)
	}
	if len(dresp.Kvs) > 0 {
		if d, err = b.decodeDelivery(dkey, dresp.Kvs[0].Value); err != nil {
			return 0, err
		}
	}
	if wait := time.Until(d.NextAttempt); wait > 0 {
		return wait, nil
	}

	code, failure := b.postWebhook(ctx, w, e)
	if ctx.Err() != nil {
		return 0, ctx.Err() // deposed or closing: the next leader delivers
	}
	now = time.Now()
	d.Attempts++
	if d.FirstAttempt.IsZero() {
		d.FirstAttempt = now
	}
	d.LastAttempt, d.LastHTTPStatus, d.LastError, d.NextAttempt = now, code, failure, time.Time{}
	if failure == "" {
		d.Status, st.Failures, st.PausedUntil = DeliveryDelivered, 0, time.Time{}
		b.obs.WebhookAttempt(w.ID, true, now.Sub(e.Time))
	} else {
		st.Failures++
		b.obs.WebhookAttempt(w.ID, false, 0)
		if d.Attempts > len(b.webhooks.Schedule) {
			d.Status = DeliveryDead
			b.obs.WebhookDeadLettered(w.ID)
			b.log.Warn("webhook delivery dead-lettered", zap.String("webhook", w.ID), zap.String("event", e.ID),
				zap.Int("attempts", d.Attempts), zap.String("last_error", failure))
		} else {
			d.Status, d.NextAttempt = DeliveryRetrying, now.Add(b.webhooks.Schedule[d.Attempts-1])
		}
		if st.Failures >= b.webhooks.BreakerThreshold {
			st.PausedUntil = now.Add(b.webhooks.BreakerPause)
		}
	}
	finished := d.Status == DeliveryDelivered || d.Status == DeliveryDead
	if finished && redeliver == "" {
		st.Rev, st.EventID = e.Revision, e.ID
	}
	dval, err := b.signRecord(dkey, d)
	if err != nil {
		return 0, err
	}
	sop, err := b.stateOp(stateKey, st)
	if err != nil {
		return 0, err
	}
	ops := []clientv3.Op{sop, clientv3.OpPut(dkey, string(dval))}
	if finished && redeliver != "" {
		ops = append(ops, clientv3.OpDelete(redeliver))
	}
	if err := b.fencedWrite(ctx, f, wk, ops...); err != nil {
		return 0, err
	}
	if d.Status == DeliveryDelivered {
		if wk.delivered++; wk.delivered >= b.webhooks.KeepDelivered {
			wk.delivered = 0
			b.pruneDeliveries(ctx, f, wk)
		}
	}
	return 0, nil
}

func (b *Broker) stateOp(key string, st storedWebhookState) (clientv3.Op, error) {
	val, err := b.signRecord(key, st)
	if err != nil {
		return clientv3.Op{}, err
	}
	return clientv3.OpPut(key, string(val)), nil
}

// fencedWrite commits ops while this replica leads and the subscription
// is the one wk delivers to; otherwise it returns ErrNotLeader (or
// ErrNotFound for a deleted subscription) and writes nothing.
func (b *Broker) fencedWrite(ctx context.Context, f fence, wk *webhookWorker, ops ...clientv3.Op) error {
	sctx, cancel := context.WithTimeout(ctx, b.storeTimeout)
	defer cancel()
	key := b.webhookKey(wk.hook.Load().ID)
	txn, err := b.cli.Txn(sctx).If(f.held(), clientv3.Compare(clientv3.CreateRevision(key), "=", wk.created)).
		Then(ops...).
		Else(clientv3.OpGet(f.key)).Commit()
	if err != nil {
		return storeError(ctx, "write webhook delivery", err)
	}
	if !txn.Succeeded {
		if kvs := txn.Responses[0].GetResponseRange().GetKvs(); len(kvs) == 0 || kvs[0].CreateRevision != f.rev {
			return ErrNotLeader
		}
		return fmt.Errorf("%w: webhook %q was deleted or replaced", ErrNotFound, wk.hook.Load().ID)
	}
	return nil
}

// readEvent reads event id; nil when it is no longer kept.
func (b *Broker) readEvent(ctx context.Context, id string) (*event.Event, error) {
	sctx, cancel := context.WithTimeout(ctx, b.storeTimeout)
	defer cancel()
	resp, err := b.cli.Get(sctx, event.Key(b.prefix, id))
	if err != nil {
		return nil, storeError(ctx, "read event", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	e, err := b.decodeEvent(resp.Kvs[0])
	if err != nil {
		return nil, err
	}
	return &e, nil
}

// nextEvent returns the first event committed after rev that w selects;
// when there is none, skip is the revision of the last one it passed over.
func (b *Broker) nextEvent(ctx context.Context, w *Webhook, rev int64) (next *event.Event, skip int64, err error) {
	sctx, cancel := context.WithTimeout(ctx, b.storeTimeout)
	defer cancel()
	resp, err := b.cli.Get(sctx, b.prefix+event.Prefix, clientv3.WithPrefix(), clientv3.WithMinModRev(rev+1),
		clientv3.WithSort(clientv3.SortByModRevision, clientv3.SortAscend), clientv3.WithLimit(100))
	if err != nil {
		return nil, 0, storeError(ctx, "read events", err)
	}
	for _, kv := range resp.Kvs {
		e, err := b.decodeEvent(kv)
		if err != nil {
			b.log.Error("skip an event record", zap.Error(err))
		} else if w.matches(e) {
			return &e, skip, nil
		}
		skip = kv.ModRevision
	}
	return nil, skip, nil
}

// webhookClient makes the deliveries: no redirects followed.
var webhookClient = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// signWebhook is the webhook-signature of a delivery (one v1 signature).
func signWebhook(key []byte, id, timestamp string, body []byte) string {
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id + "." + timestamp + "."))
	mac.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// postWebhook makes one attempt; it returns the receiver's status (0 when
// none) and, for a failure, why, in words without the URL or secret.
func (b *Broker) postWebhook(ctx context.Context, w *Webhook, e *event.Event) (int, string) {
	key, err := webhookKeyBytes(w.Secret)
	if err != nil {
		return 0, "the stored secret is unusable"
	}
	body, err := event.Encode(*e)
	if err != nil {
		return 0, "encode the event"
	}
	ctx, cancel := context.WithTimeout(ctx, b.webhooks.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL, strings.NewReader(string(body)))
	if err != nil {
		return 0, "the URL is unusable"
	}
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "tokenbroker-webhooks")
	req.Header.Set("webhook-id", e.ID)
	req.Header.Set("webhook-timestamp", ts)
	req.Header.Set("webhook-signature", signWebhook(key, e.ID, ts, body))
	resp, err := webhookClient.Do(req)
	if err != nil {
		var ue *url.Error
		switch {
		case errors.Is(err, context.DeadlineExceeded):
			return 0, fmt.Sprintf("no answer within %s", b.webhooks.Timeout)
		case errors.As(err, &ue): // its text repeats the URL, which may be a secret of its own
			return 0, ue.Err.Error()
		default:
			return 0, "request failed"
		}
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, b.webhooks.MaxResponseBytes))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return resp.StatusCode, "HTTP " + strconv.Itoa(resp.StatusCode)
	}
	return resp.StatusCode, ""
}

// pruneDeliveries drops the oldest delivered records beyond KeepDelivered.
func (b *Broker) pruneDeliveries(ctx context.Context, f fence, wk *webhookWorker) {
	ds, err := b.ListWebhookDeliveries(ctx, wk.hook.Load().ID)
	if err != nil {
		return
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i].EventID > ds[j].EventID })
	var ops []clientv3.Op
	kept := 0
	for _, d := range ds {
		if d.Status != DeliveryDelivered {
			continue
		}
		if kept++; kept > b.webhooks.KeepDelivered {
			ops = append(ops, clientv3.OpDelete(b.deliveryKey(d.Webhook, d.EventID)))
		}
	}
	if len(ops) > 0 {
		if err := b.fencedWrite(ctx, f, wk, ops...); err != nil {
			b.log.Debug("prune webhook deliveries", zap.Error(err))
		}
	}
}
