package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tokenbroker/tokenbroker/broker/event"
)

// Events are written in the transaction of the change they describe (see
// package event), tagged like every record an attacker could use to
// mislead, and kept for a bounded count and age: the leader of refresh
// shard 0 drops older ones.

// Event retention defaults.
const (
	DefaultEventRetention = 10000
	DefaultEventMaxAge    = 7 * 24 * time.Hour
	eventCompactEvery     = time.Minute
	maxEventPage          = 1000
	// DefaultEventWatchBuffer is how many new events a watcher may fall
	// behind (see WatchEvents).
	DefaultEventWatchBuffer = 256
	// DefaultEventWatchGrace is how long a watcher's buffer may stay full
	// (see WatchEvents).
	DefaultEventWatchGrace = 5 * time.Second
)

// EventFilter selects events: of these types (all when empty), of this
// provider (all when empty).
type EventFilter struct {
	Types    []event.Type
	Provider string
}

func (f EventFilter) match(e event.Event) bool {
	if f.Provider != "" && e.Provider != f.Provider {
		return false
	}
	if len(f.Types) == 0 {
		return true
	}
	for _, t := range f.Types {
		if e.Type == t {
			return true
		}
	}
	return false
}

// eventOp is the write of e, to go in the transaction of its change.
func (b *Broker) eventOp(e event.Event) (clientv3.Op, error) {
	data, err := event.Encode(e)
	if err != nil {
		return clientv3.Op{}, err
	}
	key := event.Key(b.prefix, e.ID)
	val, err := b.keys.SignRecord(key, data)
	if err != nil {
		return clientv3.Op{}, err
	}
	return clientv3.OpPut(key, string(val)), nil
}

// grantEvent is an event of type t about grant g moving from before to
// after.
func (b *Broker) grantEvent(t event.Type, g *Grant, before, after GrantHealth, detail string) event.Event {
	e := event.New(t, time.Now())
	e.Provider, e.Account = g.Provider, g.Account
	e.HealthBefore, e.HealthAfter, e.Detail = string(before), string(after), detail
	return e
}

// withEvent appends the write of e to ops; an event that cannot be encoded
// is logged and left out rather than failing the change.
func (b *Broker) withEvent(ops []clientv3.Op, e event.Event) []clientv3.Op {
	op, err := b.eventOp(e)
	if err != nil {
		b.log.Error("record event", zap.String("type", string(e.Type)), zap.Error(err))
		return ops
	}
	return append(ops, op)
}

func (b *Broker) decodeEvent(kv *mvccpb.KeyValue) (event.Event, error) {
	if err := b.verifyRecord(string(kv.Key), kv.Value); err != nil {
		return event.Event{}, err
	}
	return event.Decode(kv.Value, kv.ModRevision)
}

// ListEvents returns up to limit events after the event id after (from the
// oldest kept when empty) that f selects, oldest first, and the etcd
// revision read. Errors wrap ErrInvalidArgument or ErrStoreUnavailable.
func (b *Broker) ListEvents(ctx context.Context, after string, limit int, f EventFilter) ([]event.Event, int64, error) {
	if after != "" && !event.ValidID(after) {
		return nil, 0, invalidf("event id %q is malformed", printable(after, 32))
	}
	if limit <= 0 || limit > maxEventPage {
		limit = maxEventPage
	}
	prefix := b.prefix + event.Prefix
	from := prefix
	if after != "" {
		from = event.Key(b.prefix, after) + "\x00"
	}
	var out []event.Event
	var rev int64
	for {
		sctx, cancel := context.WithTimeout(ctx, b.storeTimeout)
		opts := []clientv3.OpOption{clientv3.WithRange(clientv3.GetPrefixRangeEnd(prefix)), clientv3.WithLimit(int64(limit))}
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := b.cli.Get(sctx, from, opts...)
		cancel()
		if err != nil {
			return nil, 0, storeError(ctx, "list events", err)
		}
		rev = resp.Header.Revision
		for _, kv := range resp.Kvs {
			e, err := b.decodeEvent(kv)
			if err != nil {
				b.log.Error("skip an event record", zap.Error(err))
				continue
			}
			if f.match(e) {
				out = append(out, e)
				if len(out) == limit {
					return out, rev, nil
				}
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return out, rev, nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// ErrSlowConsumer: a watcher fell further behind the events recorded than
// the broker buffers for it. Its watch ended after it got every buffered
// event; it resumes with the id of the last one it got.
var ErrSlowConsumer = errors.New("broker: event watcher too slow")

// WatchEvents sends every event after the event id after (from the oldest
// kept when empty) that f selects, oldest first, then each new one as it
// is recorded, until ctx ends or send fails. A consumer that reconnects
// with the id of the last event it got misses none that is still kept.
//
// New events wait for send in a buffer of EventWatchBuffer events: a
// consumer that stays further behind for EventWatchGrace gets what the
// buffer holds, then an error wrapping ErrSlowConsumer that names the id
// to resume after; the broker never waits for it, and holds no more for
// it than the buffer and what is recorded during the grace period. Otherwise it returns
// send's error, the context's, or one wrapping ErrStoreUnavailable.
func (b *Broker) WatchEvents(ctx context.Context, after string, f EventFilter, send func(event.Event) error) error {
	for {
		page, rev, err := b.ListEvents(ctx, after, maxEventPage, EventFilter{})
		if err != nil {
			return err
		}
		for _, e := range page {
			after = e.ID
			if f.match(e) {
				if err := send(e); err != nil {
					return err
				}
			}
		}
		if len(page) == maxEventPage {
			continue // more kept events to catch up with
		}
		err = b.followEvents(ctx, rev, &after, f, send)
		if !errors.Is(err, rpctypes.ErrCompacted) {
			return err
		}
		// The revision to resume from is gone: read from the last id again.
	}
}

// followEvents sends the events written after rev and after the id
// *after, which it moves past each event sent. A reader moves the watched
// events into a bounded buffer without waiting for send; when the buffer
// is full it stops watching, and the events it holds are still sent.
func (b *Broker) followEvents(ctx context.Context, rev int64, after *string, f EventFilter, send func(event.Event) error) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	buf := make(chan event.Event, b.eventBuffer)
	var readErr error // the reader's, read once buf is closed
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(buf)
		defer cancel()
		readErr = b.readEvents(wctx, rev, *after, f, buf)
	})
	defer wg.Wait()
	for e := range buf {
		*after = e.ID
		if err := send(e); err != nil {
			cancel()
			for range buf { // let the reader end
			}
			return err
		}
	}
	if errors.Is(readErr, ErrSlowConsumer) {
		b.obs.EventWatcherDropped()
		return fmt.Errorf("%w: more than %d events behind; resume after event %s", ErrSlowConsumer, b.eventBuffer, *after)
	}
	if readErr == nil || ctx.Err() != nil {
		return ctx.Err()
	}
	return readErr
}

// readEvents watches the events written after rev, puts those after the
// id after that f selects into buf, and returns ErrSlowConsumer when buf
// stayed full for the grace period, rpctypes.ErrCompacted when rev is compacted away, nil
// when ctx ends, or an error wrapping ErrStoreUnavailable.
func (b *Broker) readEvents(ctx context.Context, rev int64, after string, f EventFilter, buf chan<- event.Event) error {
	for resp := range b.cli.Watch(ctx, b.prefix+event.Prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
		if err := resp.Err(); err != nil {
			if resp.CompactRevision != 0 {
				return rpctypes.ErrCompacted
			}
			return fmt.Errorf("%w: watch events: %v", ErrStoreUnavailable, err)
		}
		for _, ev := range resp.Events {
			if ev.Type != clientv3.EventTypePut || ev.Kv.CreateRevision != ev.Kv.ModRevision {
				continue
			}
			e, err := b.decodeEvent(ev.Kv)
			if err != nil {
				b.log.Error("skip an event record", zap.Error(err))
				continue
			}
			if e.ID <= after || !f.match(e) {
				continue
			}
			after = e.ID
			select {
			case buf <- e:
				continue
			default:
			}
			// Full: a burst, or a consumer that stopped reading. Wait a
			// little, the etcd watch unread meanwhile.
			wait := time.NewTimer(b.eventGrace)
			select {
			case buf <- e:
				wait.Stop()
			case <-wait.C:
				return ErrSlowConsumer
			case <-ctx.Done():
				wait.Stop()
				return nil
			}
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("%w: watch events ended", ErrStoreUnavailable)
}

// compactEvents drops the events beyond the retention: older than its age,
// and the oldest beyond its count.
func (b *Broker) compactEvents(ctx context.Context) {
	prefix := b.prefix + event.Prefix
	end := clientv3.GetPrefixRangeEnd(prefix)
	sctx, cancel := context.WithTimeout(ctx, b.storeTimeout)
	defer cancel()
	// Older than the age: every id below the one of the cut-off time.
	cut := event.New("", time.Now().Add(-b.eventMaxAge)).ID[:16]
	if _, err := b.cli.Delete(sctx, prefix, clientv3.WithRange(prefix+cut)); err != nil {
		b.log.Warn("drop old events", zap.Error(err))
		return
	}
	count, err := b.cli.Get(sctx, prefix, clientv3.WithRange(end), clientv3.WithCountOnly())
	if err != nil || count.Count <= int64(b.eventRetention) {
		return
	}
	// The oldest beyond the count: find the first one kept.
	excess := count.Count - int64(b.eventRetention)
	keys, err := b.cli.Get(sctx, prefix, clientv3.WithRange(end), clientv3.WithKeysOnly(), clientv3.WithLimit(excess+1))
	if err != nil || int64(len(keys.Kvs)) <= excess {
		return
	}
	if _, err := b.cli.Delete(sctx, prefix, clientv3.WithRange(string(keys.Kvs[excess].Key))); err != nil {
		b.log.Warn("drop events beyond the retention", zap.Error(err))
	}
}
