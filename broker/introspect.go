package broker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Introspection answers for tokens the broker handed out. A token record
// in etcd carries what introspection needs: the client id and username the
// token was issued to, and the tokens it replaced that are still valid
// (callers may hold them until they expire). Every replica indexes, in
// memory, the hashes of the tokens in the records its watch sees; an
// introspection looks the hash up there, reads the record it names and
// checks the token against it. No entry, lease or key per token is kept in
// etcd beyond the record itself.

// maxPrevious bounds the replaced, still valid tokens a record remembers.
const maxPrevious = 8

// previousToken is a token a record's token replaced and that has not
// expired yet, as the record stores it.
type previousToken struct {
	Hash      string    `json:"hash"` // tokenHash of the access token
	Scope     string    `json:"scope,omitempty"`
	IssuedAt  time.Time `json:"issued_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

// carried returns the tokens a record replacing cur must remember: cur's
// own, unless it is the same token, and those cur remembered, as long as
// they have not expired; newest first.
func carried(cur *TokenRecord, next string, now time.Time) []previousToken {
	if cur == nil {
		return nil
	}
	var out []previousToken
	nextHash := tokenHash(next)
	if cur.AccessToken != next && cur.ExpiresAt.After(now) {
		out = append(out, previousToken{Hash: tokenHash(cur.AccessToken), Scope: cur.Scope(), IssuedAt: cur.IssuedAt, ExpiresAt: cur.ExpiresAt})
	}
	for _, p := range cur.replaced() {
		if len(out) == maxPrevious {
			break
		}
		if p.ExpiresAt.After(now) && p.Hash != nextHash {
			out = append(out, p)
		}
	}
	return out
}

// tokenHash names a token in the introspection index without storing it.
func tokenHash(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// tokenIndex maps the hash of every token this replica has seen in a
// record to the record's id, until the token expires. An entry may be
// stale (the record was replaced or deleted since); Introspect checks the
// record, so a stale entry costs a read, never a wrong answer.
type tokenIndex struct {
	mu        sync.Mutex
	m         map[indexKey]indexEntry
	nextSweep time.Time
}

// indexKey is the first half of a token's SHA-256. Two tokens sharing it
// would share an entry, and the record's check would then answer for one
// of them only; at 2^-128 per pair that is not a concern, and it halves
// the index's keys.
type indexKey [sha256.Size / 2]byte

func keyOf(sum [sha256.Size]byte) indexKey { return indexKey(sum[:sha256.Size/2]) }

type indexEntry struct {
	id      string
	expires int64 // unix nanoseconds
}

// sweepEvery is how often the index drops the entries of expired tokens.
const sweepEvery = time.Minute

func (x *tokenIndex) add(sum [sha256.Size]byte, id string, expires, now time.Time) {
	if !expires.After(now) {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.m == nil {
		x.m = make(map[indexKey]indexEntry)
	}
	x.m[keyOf(sum)] = indexEntry{id: id, expires: expires.UnixNano()}
	if now.After(x.nextSweep) {
		x.nextSweep = now.Add(sweepEvery)
		n := now.UnixNano()
		for k, e := range x.m {
			if e.expires <= n {
				delete(x.m, k)
			}
		}
	}
}

func (x *tokenIndex) lookup(sum [sha256.Size]byte, now time.Time) (string, bool) {
	x.mu.Lock()
	e, ok := x.m[keyOf(sum)]
	x.mu.Unlock()
	if !ok || e.expires <= now.UnixNano() {
		return "", false
	}
	return e.id, true
}

// index records rec's token, and those it replaced, under id.
func (b *Broker) index(id string, rec *TokenRecord) {
	now := b.now()
	b.introspection.add(sha256.Sum256([]byte(rec.AccessToken)), id, rec.ExpiresAt, now)
	for _, p := range rec.replaced() {
		var sum [sha256.Size]byte
		if n, err := hex.Decode(sum[:], []byte(p.Hash)); err == nil && n == len(sum) {
			b.introspection.add(sum, id, p.ExpiresAt, now)
		}
	}
}

// Introspection is what the broker knows of a token it handed out.
type Introspection struct {
	Active    bool
	Provider  string
	Account   string
	Scope     string
	ClientID  string
	TokenType string
	Username  string
	Subject   string
	IssuedAt  time.Time
	ExpiresAt time.Time
}

// Introspect answers for a token the broker handed out. When the token's
// provider has an introspection endpoint (RFC 7662), the provider's answer
// decides (a revoked token is inactive); otherwise the broker's own records
// of the tokens it handed out do. An unknown or expired token is inactive,
// not an error. Errors wrap ErrInvalidArgument (empty token),
// ErrStoreUnavailable, or a *ProviderError when the provider's endpoint
// fails.
func (b *Broker) Introspect(ctx context.Context, token string) (*Introspection, error) {
	if token == "" {
		return nil, invalidf("token is empty")
	}
	own, err := b.ownIntrospection(ctx, token)
	if err != nil || !own.Active {
		return own, err
	}
	p, err := b.provider(ctx, own.Provider)
	if err != nil || p.IntrospectionURL == "" {
		return own, nil
	}
	req, err := p.endpointRequest(p.IntrospectionURL, url.Values{"token_type_hint": {"access_token"}}, true)
	if err != nil {
		return nil, err
	}
	in, err := b.oauth.Introspect(ctx, req, token)
	if err != nil {
		return nil, &ProviderError{Provider: p.Name, Err: err}
	}
	if !in.Active {
		return &Introspection{}, nil
	}
	out := *own
	out.Scope = cmp(in.Scope, own.Scope)
	out.ClientID = cmp(in.ClientID, own.ClientID)
	out.Username = cmp(in.Username, own.Username)
	out.Subject = in.Subject
	if !in.ExpiresAt.IsZero() && in.ExpiresAt.Before(out.ExpiresAt) {
		// Never later than the broker's own: a token served until its
		// hand-over is not answered for beyond it.
		out.ExpiresAt = in.ExpiresAt
	}
	if !in.IssuedAt.IsZero() {
		out.IssuedAt = in.IssuedAt
	}
	return &out, nil
}

// ownIntrospection answers from the broker's records alone.
func (b *Broker) ownIntrospection(ctx context.Context, token string) (*Introspection, error) {
	sum := sha256.Sum256([]byte(token))
	id, ok := b.introspection.lookup(sum, b.now())
	if !ok {
		// A token another replica stored a moment ago may not have
		// reached this replica's watch yet: catch up, then look again.
		if err := b.catchUpTokens(ctx); err != nil {
			return nil, err
		}
		if id, ok = b.introspection.lookup(sum, b.now()); !ok {
			return &Introspection{}, nil
		}
	}
	sctx, cancel := context.WithTimeout(ctx, b.storeTimeout)
	defer cancel()
	key := b.prefix + tokensPrefix + id
	resp, err := b.cli.Get(sctx, key)
	if err != nil {
		return nil, storeError(ctx, "read token record", err)
	}
	if len(resp.Kvs) == 0 {
		return &Introspection{}, nil
	}
	var s storedToken
	if err := json.Unmarshal(resp.Kvs[0].Value, &s); err != nil {
		return nil, fmt.Errorf("decode token record: %w", err)
	}
	access, err := b.openString(key, "access_token", s.AccessToken)
	if err != nil {
		return nil, err
	}
	out := &Introspection{
		Provider: s.Provider, Account: s.Account, ClientID: s.ClientID, TokenType: tokenTypeOf(s.TokenType), Username: s.Username,
	}
	hash := hex.EncodeToString(sum[:])
	switch {
	case access == token:
		out.Scope, out.IssuedAt, out.ExpiresAt = s.GrantedScope, s.IssuedAt, s.ExpiresAt
	default:
		found := false
		for _, p := range s.Previous {
			if p.Hash == hash {
				out.Scope, out.IssuedAt, out.ExpiresAt, found = p.Scope, p.IssuedAt, p.ExpiresAt, true
				break
			}
		}
		if !found {
			return &Introspection{}, nil
		}
	}
	if out.Scope == "" {
		out.Scope = s.Scope
	}
	if !out.ExpiresAt.After(b.now()) {
		return &Introspection{}, nil
	}
	out.Active = true
	return out, nil
}

// revision is how far a watch has applied etcd's history; waiters learn
// when it moves.
type revision struct {
	mu      sync.Mutex
	v       int64
	changed chan struct{}
}

func (r *revision) advance(v int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if v <= r.v {
		return
	}
	r.v = v
	if r.changed != nil {
		close(r.changed)
		r.changed = nil
	}
}

// at returns the revision applied and a channel closed when it moves.
func (r *revision) at() (int64, <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.changed == nil {
		r.changed = make(chan struct{})
	}
	return r.v, r.changed
}

// catchUpTokens waits until the token watch has applied every change etcd
// had committed when it was called, so that memory reflects at least that
// revision. Watches deliver changes only, so while it waits it asks etcd
// for progress notifications, which carry the current revision.
func (b *Broker) catchUpTokens(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, b.storeTimeout)
	defer cancel()
	resp, err := b.cli.Get(ctx, b.prefix+tokensPrefix, clientv3.WithCountOnly())
	if err != nil {
		return storeError(ctx, "read store revision", err)
	}
	target := resp.Header.Revision
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for asked, tries := false, 0; ; {
		v, changed := b.tokensRev.at()
		if v >= target {
			return nil
		}
		if tries == catchUpProgressTries {
			// etcd answers a progress request only while none of its
			// watchers lags behind; rather than wait on that, read the
			// token records changed since the watch's revision up to
			// the target and apply them (offer keeps the newest).
			return b.applyTokensChanged(ctx, v, target)
		}
		if !asked {
			// The progress request goes to the stream of the watches,
			// which were opened with WithRequireLeader.
			if err := b.cli.RequestProgress(clientv3.WithRequireLeader(ctx)); err != nil {
				return storeError(ctx, "request watch progress", err)
			}
			asked = true
		}
		select {
		case <-changed:
		case <-tick.C:
			asked = false // not every watcher was in sync yet; ask again
			tries++
		case <-ctx.Done():
			return storeError(ctx, "catch up with the token records", ctx.Err())
		}
	}
}

// catchUpProgressTries is how many progress requests, 50 ms apart,
// catchUpTokens makes before it reads the changed records instead.
const catchUpProgressTries = 6

// applyTokensChanged reads the token records modified after revision from
// up to revision to (one range read at to, filtered by etcd) and applies
// them to memory as the watch would.
func (b *Broker) applyTokensChanged(ctx context.Context, from, to int64) error {
	prefix := b.prefix + tokensPrefix
	resp, err := b.cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(to), clientv3.WithMinModRev(from+1))
	if err != nil {
		return storeError(ctx, "read changed token records", err)
	}
	for _, kv := range resp.Kvs {
		b.applyToken(strings.TrimPrefix(string(kv.Key), prefix), kv, false)
	}
	// Every record written up to to is in memory now; deletions are left
	// to the watch (introspection reads the record from etcd before it
	// answers active).
	b.tokensRev.advance(to)
	return nil
}
