package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/seal"
	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/gen/tokenbroker/v1"
)

// The memory figure: the broker process (broker and its embedded etcd)
// after n distinct tokens are in its cache. Fetching 100k tokens through
// GetToken would take minutes here: the misses of one grant are serialized
// by its etcd lock, about 7 ms each with fsync. So the tokens arrive the way
// a token fetched by another replica does: this process writes each as the
// broker's commit would (its record in the broker's format, sealed with the
// broker's master key, naming the client it was issued to for introspection),
// and the broker's watch decodes it into its cache. A sample is then asked
// for over gRPC to check that the broker serves the loaded records.
//
// Like the broker's commit, every transaction writes one token; 32 are in
// flight at a time, as from a fleet of replicas refreshing at once. Writing
// 100 tokens per transaction loads faster but measures something no broker
// does: with 32 such transactions in flight, etcd's queue of entries to
// apply held about 36 MB of raft entries at the peak (heap profile), and
// the process's RSS ended about 70 MiB higher.

// sentinelProvider names the record written last; it is not registered, so
// a miss cannot fetch it, and its presence in the cache says that every
// record before it (the watch delivers in revision order) is there too.
const sentinelProvider = "tbbench-sentinel"

// seedScopes is the scope set of seeded token i; seedToken its access
// token, derived from i so that the check knows what to expect.
func seedScopes(i int) []string { return []string{"api.read", fmt.Sprintf("tenant.%06d", i)} }

func seedToken(i int) string {
	sum := sha256.Sum256([]byte("tbbench-seed/" + strconv.Itoa(i)))
	return base64.RawURLEncoding.EncodeToString(sum[:]) // 43 characters, like the sandbox's
}

// storedToken mirrors the broker's etcd encoding (broker/store.go); the
// check below fails if it drifts from it.
type storedToken struct {
	Provider     string    `json:"provider"`
	Account      string    `json:"account,omitempty"`
	Scope        string    `json:"scope,omitempty"`
	AccessToken  []byte    `json:"access_token_sealed"`
	TokenType    string    `json:"token_type,omitempty"`
	GrantedScope string    `json:"granted_scope,omitempty"`
	IssuedAt     time.Time `json:"issued_at"`
	ExpiresAt    time.Time `json:"expires_at"`
	Generation   int64     `json:"generation"`
	ClientID     string    `json:"client_id,omitempty"`
}

// seeder writes token records into the broker's etcd.
type seeder struct {
	cli  *clientv3.Client
	keys *seal.Keyring
	// issued is when token i was issued and lifetime how long it lasts;
	// every token now and seedLifetime when nil.
	issued   func(i int) time.Time
	lifetime time.Duration
}

const (
	seedBatch    = 1  // tokens per transaction, as the broker's commit writes them
	seedWorkers  = 32 // transactions in flight
	seedLifetime = time.Hour
)

// seed writes the records of tokens [0, n) and then the sentinel's.
func (s *seeder) seed(ctx context.Context, n int) error {
	now := time.Now().UTC().Truncate(time.Second)
	if s.issued == nil {
		s.issued = func(int) time.Time { return now }
	}
	if s.lifetime == 0 {
		s.lifetime = seedLifetime
	}
	var next atomic.Int64
	errc := make(chan error, seedWorkers)
	var wg sync.WaitGroup
	for range seedWorkers {
		wg.Go(func() {
			for {
				lo := int(next.Add(seedBatch)) - seedBatch
				if lo >= n || ctx.Err() != nil {
					return
				}
				if err := s.writeBatch(ctx, lo, min(lo+seedBatch, n)); err != nil {
					errc <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return err
	}
	ops, err := s.ops(ctx, sentinelProvider, []string{"done"}, "sentinel-token", now)
	if err != nil {
		return err
	}
	_, err = s.cli.Txn(ctx).Then(ops...).Commit()
	return err
}

// writeBatch writes tokens [lo, hi) in one transaction.
func (s *seeder) writeBatch(ctx context.Context, lo, hi int) error {
	ops := make([]clientv3.Op, 0, hi-lo)
	for i := lo; i < hi; i++ {
		tops, err := s.ops(ctx, benchProvider, seedScopes(i), seedToken(i), s.issued(i))
		if err != nil {
			return err
		}
		ops = append(ops, tops...)
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err := s.cli.Txn(sctx).Then(ops...).Commit()
	return err
}

// ops are the writes of one token as the broker's commit makes them: its
// record, which is all introspection needs too.
func (s *seeder) ops(_ context.Context, provider string, scopes []string, tok string, issued time.Time) ([]clientv3.Op, error) {
	key, err := broker.NewTokenKey(provider, "", scopes)
	if err != nil {
		return nil, err
	}
	tkey := broker.DefaultPrefix + "tokens/" + key.Provider + "/" + url.PathEscape(key.Account) + "/" + url.PathEscape(key.Scope)
	sealed, err := s.keys.Seal(tkey+"#access_token", []byte(tok))
	if err != nil {
		return nil, err
	}
	val, err := json.Marshal(storedToken{Provider: provider, Scope: key.Scope, AccessToken: sealed, TokenType: "Bearer",
		GrantedScope: key.Scope, IssuedAt: issued, ExpiresAt: issued.Add(s.lifetime), Generation: 1, ClientID: "bench"})
	if err != nil {
		return nil, err
	}
	return []clientv3.Op{clientv3.OpPut(tkey, string(val))}, nil
}

// memResult is the memory figure.
type memResult struct {
	tokens     int
	seconds    float64 // from the first write to the sentinel in the cache
	before     memInfo // after the load phases
	after      memInfo // with the tokens cached
	settled    memInfo // after the runtime returned free memory to the OS
	owners     []heapOwner
	checked    int
	mismatches int
	// introspected of the sample were introspected; introspectMisses of
	// them were not found active with the written record's client.
	introspected, introspectMisses int
	providerCalls                  int
	// dbSize and dbInUse are etcd's database file and the part of it in
	// use, before and with the tokens.
	dbBefore, dbSize, dbInUse int64
	// restart is the restart figure, when it ran.
	restart *restartResult
}

// memoryPhase loads b.opts.tokens tokens into the broker and measures its
// process.
func (b *bench) memoryPhase(ctx context.Context) error {
	n := b.opts.tokens
	b.progress("memory: loading %d distinct tokens into the broker's cache…", n)
	m := &memResult{tokens: n}
	if err := b.broker.call(ctx, http.MethodGet, "/mem", &m.before); err != nil {
		return err
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{b.broker.ready.EtcdAddr}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()
	if st, err := cli.Status(ctx, b.broker.ready.EtcdAddr); err == nil {
		m.dbBefore = st.DbSize
	}
	t, err := dialGRPC(b.broker.ready.GRPC, 1, b.keys)
	if err != nil {
		return err
	}
	defer t.close()
	client := tokenbrokerv1.NewTokenBrokerServiceClient(t.conns[0])

	start := time.Now()
	if err := (&seeder{cli: cli, keys: b.keyring}).seed(ctx, n); err != nil {
		return fmt.Errorf("memory: write tokens: %w", err)
	}
	for deadline := time.Now().Add(2 * time.Minute); ; {
		resp, err := client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: sentinelProvider, Scopes: []string{"done"}})
		if err == nil && resp.GetToken().GetAccessToken() == "sentinel-token" {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("memory: the tokens written are not in the broker's cache after 2 minutes (last: %v)", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	m.seconds = time.Since(start).Seconds()

	m.checked, m.mismatches = checkServed(ctx, client, n)
	m.introspected, m.introspectMisses = checkIntrospected(ctx, client, n)
	if st, err := cli.Status(ctx, b.broker.ready.EtcdAddr); err == nil {
		m.dbSize, m.dbInUse = st.DbSize, st.DbSizeInUse
	}
	if err := b.broker.call(ctx, http.MethodGet, "/mem", &m.after); err != nil {
		return err
	}
	if err := b.broker.call(ctx, http.MethodGet, "/heap-owners", &m.owners); err != nil {
		return err
	}
	if b.opts.profile != "" {
		b.saveProfile(ctx, b.broker, "/debug/pprof/heap", "broker-heap.pprof")
	}
	if err := b.broker.call(ctx, http.MethodGet, "/mem?free=1", &m.settled); err != nil {
		return err
	}
	b.res.mem = m
	b.progress("memory: %d tokens cached in %.1fs; RSS %s (%s once free memory is returned), live heap %s",
		n, m.seconds, mib(m.after.RSS), mib(m.settled.RSS), mib(int64(m.after.HeapAlloc)))
	return nil
}

// checkServed asks for an evenly spread sample of the n seeded tokens, as
// callers ask, and returns how many it asked for and how many were not
// served as written.
func checkServed(ctx context.Context, client tokenbrokerv1.TokenBrokerServiceClient, n int) (checked, mismatches int) {
	sample := min(1000, n)
	for j := range sample {
		i := j * n / sample
		resp, err := client.GetToken(ctx, &tokenbrokerv1.GetTokenRequest{Provider: benchProvider, Scopes: seedScopes(i)})
		checked++
		if err != nil || resp.GetToken().GetAccessToken() != seedToken(i) {
			mismatches++
		}
	}
	return checked, mismatches
}

// checkIntrospected introspects a tenth of checkServed's sample and returns
// how many it introspected and how many were not active as written.
func checkIntrospected(ctx context.Context, client tokenbrokerv1.TokenBrokerServiceClient, n int) (introspected, misses int) {
	sample := min(1000, n)
	for j := 0; j < sample; j += 10 {
		i := j * n / sample
		in, err := client.Introspect(ctx, &tokenbrokerv1.IntrospectRequest{Token: seedToken(i)})
		introspected++
		if err != nil || !in.GetActive() || in.GetClientId() != "bench" {
			misses++
		}
	}
	return introspected, misses
}

// memInfo is the memory of a process after a garbage collection.
type memInfo struct {
	RSS       int64  `json:"rss"`
	RSSAnon   int64  `json:"rss_anon"` // of RSS: anonymous memory (the heap, stacks)
	RSSFile   int64  `json:"rss_file"` // of RSS: mapped files (the binary, etcd's bbolt file)
	HWM       int64  `json:"hwm"`
	HeapAlloc uint64 `json:"heap_alloc"`
	HeapInuse uint64 `json:"heap_inuse"`
	Sys       uint64 `json:"sys"`
}

// readMem collects garbage and reads the process's memory; with free, it
// first returns all free memory to the OS, as the runtime's scavenger does
// over the following minutes.
func readMem(free bool) memInfo {
	runtime.GC()
	runtime.GC()
	if free {
		debug.FreeOSMemory()
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memInfo{RSS: procStatus(0, "VmRSS"), RSSAnon: procStatus(0, "RssAnon"), RSSFile: procStatus(0, "RssFile"), HWM: procStatus(0, "VmHWM"), HeapAlloc: ms.HeapAlloc, HeapInuse: ms.HeapInuse, Sys: ms.Sys}
}

func serveMem(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, readMem(r.URL.Query().Get("free") != ""))
}

// heapOwner is the live heap attributed to one part of the process.
type heapOwner struct {
	Owner string `json:"owner"`
	Bytes int64  `json:"bytes"`
}

// owners maps a function name prefix to the part of the process it belongs
// to. Packages shared by several parts (grpc, the etcd API types, the
// standard library) are skipped: the allocation goes to the nearest caller
// that is not shared.
var owners = []struct{ prefix, owner string }{
	{"github.com/tokenbroker/tokenbroker/", "tokenbroker (broker cache, servers, key store)"},
	{"go.etcd.io/etcd/server/", "embedded etcd server"},
	{"go.etcd.io/bbolt", "embedded etcd server"},
	{"go.etcd.io/raft/", "embedded etcd server"},
	{"go.etcd.io/etcd/client/", "etcd client"},
}

// serveHeapOwners attributes the live heap, as the heap profile estimates
// it after a collection, to the parts of the process.
func serveHeapOwners(w http.ResponseWriter, _ *http.Request) {
	runtime.GC()
	var buf strings.Builder
	if err := pprof.Lookup("heap").WriteTo(&buf, 1); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	got, err := heapOwners(strings.NewReader(buf.String()))
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	writeJSON(w, got)
}

// heapOwners reads a heap profile in the legacy text format (debug=1),
// scales its samples as pprof does, and sums in-use bytes by owner.
func heapOwners(r io.Reader) ([]heapOwner, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	rate := 512 * 1024.0
	sums := map[string]float64{}
	var (
		inUse   float64
		owner   string
		inEntry bool
	)
	flush := func() {
		if inEntry {
			if owner == "" {
				owner = "other (runtime, standard library, grpc)"
			}
			sums[owner] += inUse
		}
		inEntry, owner, inUse = false, "", 0
	}
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "heap profile:"):
			if i := strings.LastIndex(line, "heap/"); i >= 0 {
				// The header says twice the sampling rate (pprof halves it
				// too, in its legacy parser).
				if v, err := strconv.ParseFloat(line[i+5:], 64); err == nil && v > 0 {
					rate = v / 2
				}
			}
		case strings.HasPrefix(line, "#\t"):
			if !inEntry || owner != "" {
				continue
			}
			f := strings.Split(line, "\t") // "#", address, function+offset, file:line
			if len(f) < 3 {
				continue
			}
			for _, o := range owners {
				if strings.HasPrefix(f[2], o.prefix) {
					owner = o.owner
					break
				}
			}
		case strings.Contains(line, " @ ") && !strings.HasPrefix(line, "#"):
			flush()
			// "<inuse objects>: <inuse bytes> [<alloc objects>: <alloc bytes>] @ …"
			head, _, _ := strings.Cut(line, "[")
			objs, bytes, ok := strings.Cut(strings.TrimSpace(head), ":")
			if !ok {
				continue
			}
			count, err1 := strconv.ParseFloat(strings.TrimSpace(objs), 64)
			size, err2 := strconv.ParseFloat(strings.TrimSpace(bytes), 64)
			if err1 != nil || err2 != nil {
				continue
			}
			inEntry = true
			if count > 0 && size > 0 {
				// Each sampled allocation stands for 1/(1-e^(-size/rate))
				// allocations of its size.
				inUse = size / (1 - math.Exp(-(size/count)/rate))
			}
		case line == "" || strings.HasPrefix(line, "# runtime.MemStats"):
			flush()
		}
	}
	flush()
	if err := sc.Err(); err != nil {
		return nil, err
	}
	var out []heapOwner
	for o, v := range sums {
		out = append(out, heapOwner{Owner: o, Bytes: int64(v)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Bytes > out[j].Bytes })
	return out, nil
}
