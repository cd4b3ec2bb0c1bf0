package broker

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
)

// Background refresh. Every replica reports which tokens its callers asked
// for recently (hot tokens) under hot/<replica>, leased to its session. The
// token keys are split into shards; each shard has an election, and its
// leader refreshes the shard's hot tokens when about a third of their
// lifetime remains, so that callers never wait on a provider. Refreshes go
// through the same per-grant lock and fenced write as a caller's miss: only
// the holder of the lock, whose lease is the session's, can store a token,
// so a deposed leader's late write is discarded.

// RefreshConfig tunes the background refresher.
type RefreshConfig struct {
	// Disabled turns the background refresher off (callers then refresh on
	// a miss).
	Disabled bool
	// Shards is the number of refresh shards, each with its own election;
	// 1 when zero.
	Shards int
	// LeadFraction of a token's lifetime before its expiry starts a
	// refresh; 1/3 when zero.
	LeadFraction float64
	// MinLead starts a refresh at least this long before expiry; 2s when
	// zero (and never more than half the lifetime).
	MinLead time.Duration
	// IdleAfter is how long after the last call a token is no longer kept
	// warm; 10m when zero.
	IdleAfter time.Duration
	// Tick is how often a leader looks for due tokens; 250ms when zero.
	Tick time.Duration
	// ReportInterval is how often a replica reports its hot tokens; 1s
	// when zero.
	ReportInterval time.Duration
	// Workers bounds concurrent background refreshes per shard; 4 when zero.
	Workers int

	// keepAlive is the provider's KeepAlive (see tuning).
	keepAlive time.Duration

	// callerMinTTL is the broker's DefaultMinTTL: a token must be refreshed
	// before it stops being fresh for a caller who names no min_ttl.
	callerMinTTL time.Duration
}

func (c RefreshConfig) withDefaults() RefreshConfig {
	c.Shards = cmp(c.Shards, 1)
	c.LeadFraction = cmp(c.LeadFraction, 1.0/3)
	c.MinLead = cmp(c.MinLead, 2*time.Second)
	c.IdleAfter = cmp(c.IdleAfter, 10*time.Minute)
	c.Tick = cmp(c.Tick, 250*time.Millisecond)
	c.ReportInterval = cmp(c.ReportInterval, time.Second)
	c.Workers = cmp(c.Workers, 4)
	return c
}

// due reports whether rec should be refreshed ahead of its expiry. A token
// served until its hand-over is due a tick before it: refreshAll waits
// for the moment itself.
func (c RefreshConfig) due(rec *TokenRecord, now time.Time) bool {
	if !rec.ProviderExpiresAt().IsZero() {
		return rec.ExpiresAt.Sub(now) <= c.Tick
	}
	life := rec.Lifetime()
	lead := max(time.Duration(float64(life)*c.LeadFraction), min(c.MinLead, life/2))
	// Callers at the default min_ttl leave the hot path when less than
	// min(DefaultMinTTL, life/2) remains (TokenRecord.Fresh): start two
	// ticks before that, so that the new token is there when they ask.
	lead = max(lead, min(c.callerMinTTL, life/2)+2*c.Tick)
	return rec.ExpiresAt.Sub(now) <= lead
}

// handOver is when a token that its replacement revokes is replaced, and
// so the expiry it is served with: MinLead before the provider's expiry,
// but at most half its lifetime. Refreshing ahead buys such a token
// nothing (its replacement would revoke it at once), so it is served for
// as long as the provider allows, less a margin for the clocks and for a
// caller's last request on its way to the provider.
func (c RefreshConfig) handOver(issued, providerExpiry time.Time) time.Time {
	return providerExpiry.Add(-min(c.MinLead, providerExpiry.Sub(issued)/2))
}

// shardOf maps a token id to its shard.
func shardOf(id string, shards int) int {
	if shards <= 1 {
		return 0
	}
	// FNV-1a, 32 bits, written out so that it allocates nothing.
	h := uint32(2166136261)
	for i := 0; i < len(id); i++ {
		h ^= uint32(id[i])
		h *= 16777619
	}
	return int(h % uint32(shards))
}

// hotReport is what a replica says its callers asked for.
type hotReport struct {
	At  time.Time `json:"at"`
	IDs []string  `json:"ids"`
}

// startRefresher starts the report loop and one campaign per shard; all of
// them stop on Close.
func (b *Broker) startRefresher() {
	if b.refresh.Disabled {
		return
	}
	b.leading = make([]bool, b.refresh.Shards)
	b.wg.Add(1 + b.refresh.Shards)
	go b.reportLoop()
	for s := range b.refresh.Shards {
		go b.campaign(s)
	}
}

// LeadingShards lists the refresh shards this replica leads now.
func (b *Broker) LeadingShards() []int {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []int
	for s, l := range b.leading {
		if l {
			out = append(out, s)
		}
	}
	return out
}

func (b *Broker) setLeading(shard int, v bool) {
	b.mu.Lock()
	b.leading[shard] = v
	b.mu.Unlock()
	b.obs.Leading(shard, v)
}

// pause waits d or until Close; it reports whether to go on.
func (b *Broker) pause(d time.Duration) bool {
	select {
	case <-b.ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

// campaign runs for shard's leadership until Close: campaign, lead while
// the session lives, resign, again.
func (b *Broker) campaign(shard int) {
	defer b.wg.Done()
	log := b.log.With(zap.Int("shard", shard))
	for b.ctx.Err() == nil {
		sess, err := b.session(b.ctx)
		if err != nil {
			log.Warn("refresher has no etcd session", zap.Error(err))
			b.pause(time.Second)
			continue
		}
		e := concurrency.NewElection(sess, b.prefix+electionPrefix+strconv.Itoa(shard))
		if err := b.campaignWhileAlive(e, sess); err != nil {
			if b.ctx.Err() == nil && !isDone(sess) {
				log.Warn("campaign for refresh shard", zap.Error(err))
				b.pause(time.Second)
			}
			continue
		}
		if isDone(sess) {
			// Won on the key of a session that is gone (etcd came back and
			// the old keys lapsed in turn): campaign again with a live one
			// instead of leading for no time.
			log.Debug("won a refresh shard with a lost session; campaigning again")
			continue
		}
		log.Info("leading refresh shard")
		b.setLeading(shard, true)
		b.lead(shard, sess, fence{key: e.Key(), rev: e.Rev()})
		b.setLeading(shard, false)
		// Resign so that another replica takes over at once, not after the
		// lease's TTL; after a lost session there is nothing to resign.
		select {
		case <-b.ctx.Done():
			// Close revokes the session's lease, which removes the
			// leadership key at once.
			log.Info("leaving refresh shard: shutting down")
		case <-sess.Done():
			log.Warn("lost refresh shard leadership: etcd session expired")
		default:
			ctx, cancel := context.WithTimeout(context.Background(), b.storeTimeout)
			if err := e.Resign(ctx); err != nil {
				log.Warn("resign refresh shard", zap.Error(err))
			}
			cancel()
			log.Info("resigned refresh shard")
		}
	}
}

// campaignWhileAlive campaigns for e until it wins, Close, or sess ends:
// a campaign must not outlive its session's lease.
func (b *Broker) campaignWhileAlive(e *concurrency.Election, sess *concurrency.Session) error {
	ctx, stop := whileAlive(b.ctx, sess)
	defer stop()
	return e.Campaign(ctx, b.replica)
}

// whileAlive returns a context of parent that also ends when sess does.
// stop cancels it and waits for the goroutine that watches sess.
func whileAlive(parent context.Context, sess *concurrency.Session) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancel(parent)
	done := make(chan struct{})
	go func() {
		defer close(done)
		select {
		case <-sess.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, func() { cancel(); <-done }
}

// isDone reports whether sess has ended.
func isDone(sess *concurrency.Session) bool {
	select {
	case <-sess.Done():
		return true
	default:
		return false
	}
}

// lead refreshes shard's due hot tokens until Close or until the session,
// and with it the leadership, is lost. The leader of shard 0 also delivers
// webhooks, its writes fenced by f, its election key.
func (b *Broker) lead(shard int, sess *concurrency.Session, f fence) {
	ctx, stop := whileAlive(b.ctx, sess)
	defer stop()
	if shard == 0 {
		var wg sync.WaitGroup
		defer func() { stop(); wg.Wait() }()
		wg.Go(func() { b.deliverWebhooks(ctx, f) })
	}
	seen := map[string]time.Time{} // shard's token id → last reported call
	var lastRead, lastKeepAliveScan, lastCompact, lastBalance time.Time
	tick := time.NewTicker(b.refresh.Tick)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		now := b.now()
		if time.Since(lastRead) >= b.refresh.ReportInterval {
			b.readHot(ctx, seen, shard)
			lastRead = time.Now()
		}
		keepAliveScan := now.Sub(lastKeepAliveScan) >= keepAliveScanEvery
		if keepAliveScan {
			lastKeepAliveScan = now
		}
		due := b.dueTokens(shard, now, seen, keepAliveScan)
		b.refreshAll(ctx, due)
		if b.refresh.Shards > 1 && time.Since(lastBalance) >= balanceEvery {
			lastBalance = time.Now()
			if b.overShare(ctx, shard) {
				b.log.Info("handing a refresh shard over: this replica leads more than its share", zap.Int("shard", shard))
				return
			}
		}
		if shard == 0 && time.Since(lastCompact) >= eventCompactEvery {
			b.compactEvents(ctx)
			lastCompact = time.Now()
		}
	}
}

// balanceEvery is how often a leader of several shards checks that it
// leads no more than its share.
const balanceEvery = time.Second

// overShare reports whether shard is one this replica should hand over:
// it leads more than its share of the shards, ceil(shards / candidates)
// (every replica campaigns for every shard, so the candidates of shard are
// the live replicas), and shard is among the highest-numbered it leads
// beyond that share. A leader that returns from lead resigns and campaigns
// again behind the other candidates, so the shard goes to the replica that
// has waited longest. Without it, the replica that starts first leads every
// shard for as long as it lives.
func (b *Broker) overShare(ctx context.Context, shard int) bool {
	led := b.LeadingShards()
	if len(led) <= 1 {
		return false
	}
	sctx, cancel := context.WithTimeout(ctx, b.storeTimeout)
	defer cancel()
	resp, err := b.cli.Get(sctx, b.prefix+electionPrefix+strconv.Itoa(shard)+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count <= 1 {
		return false
	}
	share := (b.refresh.Shards + int(resp.Count) - 1) / int(resp.Count)
	// led is sorted: the shards beyond the share are its last ones.
	return len(led) > share && shard >= led[share]
}

// keepAliveScanEvery is how often, on the token clock, the leader looks
// through the whole cache for idle accounts due a keep-alive refresh.
// Keep-alive periods are long; the tokens callers use are looked at on
// every tick.
const keepAliveScanEvery = time.Minute

// dueTokens lists the tokens of shard to refresh now: those callers asked
// for lately (seen) that are due and, when keepAliveScan is set, idle
// accounts due a keep-alive. Only the keep-alive scan reads the whole
// cache, and neither allocates per token.
func (b *Broker) dueTokens(shard int, now time.Time, seen map[string]time.Time, keepAliveScan bool) []dueToken {
	var due []dueToken
	tunings := map[string]RefreshConfig{}
	// candidate returns the record of id and its tuning, unless it is
	// not this shard's, gone, or its grant is cooling down.
	candidate := func(id string, e *cacheEntry) (*TokenRecord, string, RefreshConfig, bool) {
		if shardOf(id, b.refresh.Shards) != shard {
			return nil, "", RefreshConfig{}, false
		}
		rec := e.rec.Load()
		if rec == nil {
			return nil, "", RefreshConfig{}, false
		}
		// The grant's id is the token id's first two parts (the scope
		// part, escaped, holds no '/').
		gid := id[:strings.LastIndexByte(id, '/')]
		if _, cooling := b.cooldown(gid); cooling {
			return nil, "", RefreshConfig{}, false
		}
		c, ok := tunings[rec.Key.Provider]
		if !ok {
			c = b.tuning(rec.Key.Provider)
			tunings[rec.Key.Provider] = c
		}
		return rec, gid, c, true
	}
	hotDue := func(id string, rec *TokenRecord, c RefreshConfig) bool {
		at, ok := seen[id]
		return ok && now.Sub(at) <= c.IdleAfter && c.due(rec, now)
	}
	for id := range seen {
		e, ok := b.tokens.load(id)
		if !ok {
			continue
		}
		if rec, _, c, ok := candidate(id, e); ok && hotDue(id, rec, c) {
			due = append(due, dueToken{key: rec.Key, good: b.notDue(c), at: handOverOf(rec)})
		}
	}
	if !keepAliveScan || !b.anyKeepAlive() {
		return due
	}
	var kept map[string]bool // grants a keep-alive refresh is planned for
	b.tokens.each(func(id string, e *cacheEntry) bool {
		rec, gid, c, ok := candidate(id, e)
		if !ok || c.keepAlive <= 0 || rec.Key.Account == "" || now.Sub(rec.IssuedAt) < c.keepAlive || kept[gid] || hotDue(id, rec, c) {
			return true
		}
		// An idle account: refreshing it keeps its refresh token from
		// lapsing.
		if kept == nil {
			kept = map[string]bool{}
		}
		kept[gid] = true
		due = append(due, dueToken{key: rec.Key, good: b.keptAlive(c.keepAlive)})
		return true
	})
	return due
}

// anyKeepAlive reports whether a provider asks for keep-alive refreshes.
func (b *Broker) anyKeepAlive() bool {
	found := false
	b.providers.Range(func(_, v any) bool {
		found = v.(*Provider).KeepAlive > 0
		return !found
	})
	return found
}

// notDue says whether a token is no longer due under c: another replica
// refreshed it. (A function of its own, so that the scan's c stays on the
// stack.)
func (b *Broker) notDue(c RefreshConfig) func(*TokenRecord) bool {
	return func(cur *TokenRecord) bool { return cur != nil && !c.due(cur, b.now()) }
}

// keptAlive says whether a token was issued within the keep-alive period.
func (b *Broker) keptAlive(period time.Duration) func(*TokenRecord) bool {
	return func(cur *TokenRecord) bool { return cur != nil && b.now().Sub(cur.IssuedAt) < period }
}

// dueToken is a token the leader refreshes, and when the token it finds
// is good enough already (another replica refreshed it).
type dueToken struct {
	key  TokenKey
	good func(*TokenRecord) bool
	// at, when not zero, is the token's hand-over: the refresh waits for it.
	at time.Time
}

// handOverOf is rec's hand-over, zero for a token served until the
// provider's expiry.
func handOverOf(rec *TokenRecord) time.Time {
	if rec.ProviderExpiresAt().IsZero() {
		return time.Time{}
	}
	return rec.ExpiresAt
}

// tuning is the refresh configuration of provider name's tokens: the
// broker's, with the provider's overrides.
func (b *Broker) tuning(name string) RefreshConfig {
	if v, ok := b.providers.Load(name); ok {
		return b.tuningOf(v.(*Provider))
	}
	return b.refresh
}

// tuningOf is the refresh configuration of p's tokens.
func (b *Broker) tuningOf(p *Provider) RefreshConfig {
	c := b.refresh
	if p.RefreshLeadFraction > 0 {
		c.LeadFraction = p.RefreshLeadFraction
	}
	if p.RefreshMinLead > 0 {
		c.MinLead = p.RefreshMinLead
	}
	if p.RefreshIdleAfter > 0 {
		c.IdleAfter = p.RefreshIdleAfter
	}
	c.keepAlive = p.KeepAlive
	return c
}

// refreshAll refreshes tokens with at most Workers at a time and waits.
func (b *Broker) refreshAll(ctx context.Context, tokens []dueToken) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, b.refresh.Workers)
	for _, t := range tokens {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return
		}
		wg.Go(func() {
			defer func() { <-sem }()
			key := t.key
			if wait := t.at.Sub(b.now()); wait > 0 {
				// Not a moment before the hand-over: callers were told
				// the token lasts until then.
				select {
				case <-ctx.Done():
					return
				case <-time.After(min(wait, b.refresh.Tick)):
				}
			}
			before := b.cached(key.id())
			rec, err := b.fetch(ctx, "bg\x00"+key.id(), key, t.good, "", true)
			switch {
			case err != nil && ctx.Err() == nil:
				b.obs.RefreshFailed(key.Provider)
				b.log.Warn("background refresh failed", zap.Stringer("key", key), zap.Error(err))
			case err == nil && before != nil && rec != before:
				b.obs.Refreshed(key.Provider, before.ExpiresAt.Sub(rec.IssuedAt))
			}
		})
	}
	wg.Wait()
}

// readHot merges every replica's report of shard's tokens into seen,
// dropping what is idle. seen holds shard's tokens only: the leader looks
// at each of them on every tick.
func (b *Broker) readHot(ctx context.Context, seen map[string]time.Time, shard int) {
	sctx, cancel := context.WithTimeout(ctx, b.storeTimeout)
	defer cancel()
	resp, err := b.cli.Get(sctx, b.prefix+hotPrefix, clientv3.WithPrefix())
	if err != nil {
		b.log.Debug("read hot tokens", zap.Error(err))
		return
	}
	for _, kv := range resp.Kvs {
		var r hotReport
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			continue
		}
		for _, id := range r.IDs {
			if shardOf(id, b.refresh.Shards) == shard && r.At.After(seen[id]) {
				seen[id] = r.At
			}
		}
	}
	now := b.now()
	idle := map[string]time.Duration{} // provider → IdleAfter
	for id, at := range seen {
		provider, _, _ := strings.Cut(id, "/")
		d, ok := idle[provider]
		if !ok {
			d = b.tuning(provider).IdleAfter
			idle[provider] = d
		}
		if now.Sub(at) > d {
			delete(seen, id)
		}
	}
}

// reportLoop writes, every ReportInterval, the tokens this replica's
// callers asked for since the last report.
func (b *Broker) reportLoop() {
	defer b.wg.Done()
	key := b.prefix + hotPrefix + strings.ReplaceAll(b.replica, "/", "_")
	var last time.Time
	for b.pause(b.refresh.ReportInterval) {
		now := b.now()
		since := last.Add(-2 * time.Second).UnixNano() // touch is coarse: once a second
		var ids []string
		b.touched.Range(func(k, v any) bool {
			if v.(*cacheEntry).lastAccess.Load() >= since {
				ids = append(ids, k.(string))
			} else {
				b.touched.Delete(k) // touch lists it again on its next call
			}
			return true
		})
		if len(ids) == 0 {
			continue
		}
		sess, err := b.session(b.ctx)
		if err != nil {
			continue
		}
		val, err := json.Marshal(hotReport{At: now, IDs: ids})
		if err != nil {
			continue
		}
		ctx, cancel := context.WithTimeout(b.ctx, b.storeTimeout)
		_, err = b.cli.Put(ctx, key, string(val), clientv3.WithLease(sess.Lease()))
		cancel()
		if err != nil {
			b.log.Debug("report hot tokens", zap.Error(err))
			continue
		}
		last = now
	}
}
