package main

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// results are the findings of one run.
type results struct {
	env                 envInfo
	grpcReplyBroker     int
	grpcReplyEcho       int
	restReply           []namedSize
	grpc                []grpcPoint
	rest                []restPoint
	etcd                []etcdDuringLoad
	providerCallsBefore int
	providerCallsDuring int
	mem                 *memResult
	miss                *missResult
	refresh             *refreshResult
	watch               *watchResult
	herd                []herdRound
	dev                 []devStart
	devBuild            time.Duration
	devErr              string
	runTime             time.Duration
}

type envInfo struct {
	date    string
	args    string
	goVer   string
	cpus    int
	cpu     string
	pinning string
}

type namedSize struct {
	name  string
	bytes int
}

type grpcPoint struct {
	c, conns     int
	discarded    int
	echo, broker []*sample
}

type restPoint struct {
	c                     int
	discarded             int
	gateway, broker, http []*sample
}

type etcdDuringLoad struct {
	phase    string
	counts   map[string]int64
	logLines int64
}

func describeEnv(args []string) envInfo {
	e := envInfo{
		date:  time.Now().UTC().Format("2006-01-02 15:04 UTC"),
		args:  strings.Join(args, " "),
		goVer: runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH,
		cpus:  runtime.NumCPU(),
	}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if name, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(name) == "model name" {
				e.cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	return e
}

// stat is a figure over rounds: the median and the range.
type stat struct{ med, lo, hi float64 }

func statOf(v []float64) stat {
	s := slices.Clone(v)
	sort.Float64s(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return stat{med: med, lo: s[0], hi: s[len(s)-1]}
}

func collect(ss []*sample, f func(*sample) float64) stat {
	v := make([]float64, len(ss))
	for i, s := range ss {
		v[i] = f(s)
	}
	return statOf(v)
}

// ratios is num[i]/den[i] of each round.
func ratios(num, den []*sample, f func(*sample) float64) stat {
	v := make([]float64, len(num))
	for i := range num {
		v[i] = f(num[i]) / f(den[i])
	}
	return statOf(v)
}

func rpsOf(s *sample) float64  { return s.rps() }
func p50Of(s *sample) float64  { return float64(s.p50()) }
func p99Of(s *sample) float64  { return float64(s.p99()) }
func cpuOf(s *sample) float64  { return s.serverCPU }
func lcpuOf(s *sample) float64 { return s.loadCPU }

// cpuPerCallOf is the server's CPU time per completed call, in µs.
func cpuPerCallOf(s *sample) float64 {
	if s.calls == 0 {
		return 0
	}
	return s.serverCPU * s.elapsed.Seconds() / float64(s.calls) * 1e6
}

func (s stat) micros() string    { return fmt.Sprintf("%.1f", s.med) }
func otherOf(s *sample) float64  { return s.otherCPU }
func stolenOf(s *sample) float64 { return s.stolenCPU }

// otherLoad says how busy the rest of the machine was during the rounds:
// the median and the maximum, in cores, and what the hypervisor stole.
func otherLoad(discarded int, ss ...[]*sample) string {
	var all []*sample
	for _, s := range ss {
		all = append(all, s...)
	}
	o, st := collect(all, otherOf), collect(all, stolenOf)
	out := fmt.Sprintf("%.2f (max %.2f)", o.med, o.hi)
	if st.hi >= 0.01 {
		out += fmt.Sprintf(", stolen %.2f", st.med)
	}
	if discarded > 0 {
		out += fmt.Sprintf("; %d noisy set(s) discarded", discarded)
	}
	return out
}

func (s stat) rps() string   { return fmt.Sprintf("%s (%s–%s)", kilo(s.med), kilo(s.lo), kilo(s.hi)) }
func (s stat) ratio() string { return fmt.Sprintf("%.2f (%.2f–%.2f)", s.med, s.lo, s.hi) }
func (s stat) dur() string   { return fmtDur(time.Duration(s.med)) }
func (s stat) pct() string   { return fmt.Sprintf("%.0f%%", 100*s.med) }

func kilo(v float64) string {
	if v >= 1000 {
		return fmt.Sprintf("%.1fk", v/1000)
	}
	return fmt.Sprintf("%.0f", v)
}

func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2fs", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond))
	}
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// table is one section of the report.
type table struct {
	title string
	head  []string
	rows  [][]string
	notes []string
}

// report is the rendered findings.
type report struct {
	header []string
	tables []table
}

func (r *results) report(o *options) *report {
	rep := &report{}
	e := r.env
	rep.tables = append(rep.tables, r.targets(o))
	rep.header = []string{
		fmt.Sprintf("tokenbroker benchmark, %s; %s; %d CPUs (%s)", e.date, e.goVer, e.cpus, e.cpu),
		"command: tbbench " + e.args,
		"pinning: " + e.pinning,
		fmt.Sprintf("rounds: %d per target and concurrency, alternating targets, each %s measured after %s of warm-up; figures are medians over rounds (min–max)", o.rounds, o.measure, o.warmup),
		fmt.Sprintf("run time: %s", r.runTime.Round(time.Second)),
	}
	discarded, kept, sets := 0, 0, 0
	noisy := func(ss ...*sample) bool {
		for _, s := range ss {
			if s.otherCPU > o.maxOther {
				return true
			}
		}
		return false
	}
	for _, p := range r.grpc {
		discarded += p.discarded
		for i := range p.echo {
			sets++
			if noisy(p.echo[i], p.broker[i]) {
				kept++
			}
		}
	}
	for _, p := range r.rest {
		discarded += p.discarded
		for i := range p.broker {
			sets++
			if noisy(p.gateway[i], p.broker[i], p.http[i]) {
				kept++
			}
		}
	}
	if sets > 0 {
		rep.header = append(rep.header, fmt.Sprintf("noise: other processes kept more than %.2f cores busy during %d of the %d sets of rounds reported (%d more such sets were discarded and run again)",
			o.maxOther, kept, sets, discarded))
	}

	if len(r.grpc) > 0 {
		t := table{
			title: "gRPC GetToken of a cached token: broker vs grpc-go echo",
			head:  []string{"c", "conns", "echo rps", "broker rps", "broker/echo rps", "echo p50 / p99", "broker p50 / p99", "broker/echo p99", "server CPU echo / broker", "server CPU µs per call echo / broker", "echo/broker CPU per call", "load gen CPU", "rest of machine, cores"},
		}
		for _, p := range r.grpc {
			t.rows = append(t.rows, []string{
				fmt.Sprint(p.c), fmt.Sprint(p.conns),
				collect(p.echo, rpsOf).rps(), collect(p.broker, rpsOf).rps(),
				ratios(p.broker, p.echo, rpsOf).ratio(),
				collect(p.echo, p50Of).dur() + " / " + collect(p.echo, p99Of).dur(),
				collect(p.broker, p50Of).dur() + " / " + collect(p.broker, p99Of).dur(),
				ratios(p.broker, p.echo, p99Of).ratio(),
				collect(p.echo, cpuOf).pct() + " / " + collect(p.broker, cpuOf).pct(),
				collect(p.echo, cpuPerCallOf).micros() + " / " + collect(p.broker, cpuPerCallOf).micros(),
				ratios(p.echo, p.broker, cpuPerCallOf).ratio(),
				collect(append(slices.Clone(p.echo), p.broker...), lcpuOf).pct(),
				otherLoad(p.discarded, p.echo, p.broker),
			})
		}
		t.notes = append(t.notes, fmt.Sprintf("reply: %d B protobuf from the broker, %d B from the echo (same fields, built per call)", r.grpcReplyBroker, r.grpcReplyEcho))
		rep.tables = append(rep.tables, t)
	}
	if len(r.rest) > 0 {
		t := table{
			title: "REST GetToken of a cached token: broker vs grpc-gateway echo (in-process handlers) and net/http + protojson echo",
			head:  []string{"c", "gateway echo rps", "net/http echo rps", "broker rps", "broker/gateway", "broker/net-http", "p50 / p99 gateway", "p50 / p99 net/http", "p50 / p99 broker", "server CPU gw / http / broker", "server CPU µs per call gw / http / broker", "CPU per call gw/broker, http/broker", "rest of machine, cores"},
		}
		for _, p := range r.rest {
			t.rows = append(t.rows, []string{
				fmt.Sprint(p.c),
				collect(p.gateway, rpsOf).rps(), collect(p.http, rpsOf).rps(), collect(p.broker, rpsOf).rps(),
				ratios(p.broker, p.gateway, rpsOf).ratio(), ratios(p.broker, p.http, rpsOf).ratio(),
				collect(p.gateway, p50Of).dur() + " / " + collect(p.gateway, p99Of).dur(),
				collect(p.http, p50Of).dur() + " / " + collect(p.http, p99Of).dur(),
				collect(p.broker, p50Of).dur() + " / " + collect(p.broker, p99Of).dur(),
				collect(p.gateway, cpuOf).pct() + " / " + collect(p.http, cpuOf).pct() + " / " + collect(p.broker, cpuOf).pct(),
				collect(p.gateway, cpuPerCallOf).micros() + " / " + collect(p.http, cpuPerCallOf).micros() + " / " + collect(p.broker, cpuPerCallOf).micros(),
				fmt.Sprintf("%.2f, %.2f", ratios(p.gateway, p.broker, cpuPerCallOf).med, ratios(p.http, p.broker, cpuPerCallOf).med),
				otherLoad(p.discarded, p.gateway, p.http, p.broker),
			})
		}
		var sizes []string
		for _, s := range r.restReply {
			sizes = append(sizes, fmt.Sprintf("%s %d B", s.name, s.bytes))
		}
		t.notes = append(t.notes, "reply JSON: "+strings.Join(sizes, ", ")+"; one HTTP/1.1 keep-alive connection per caller")
		rep.tables = append(rep.tables, t)
	}
	if len(r.etcd) > 0 {
		t := table{title: "etcd requests of the broker and log lines during the load phases", head: []string{"phase", "GetToken calls", "etcd requests", "of which background", "other (hit path)", "by kind", "log lines"}}
		for _, e := range r.etcd {
			calls := r.calls(e.phase)
			var total, bg int64
			var kinds []string
			for k, v := range e.counts {
				total += v
				if background(k) {
					bg += v
				}
				kinds = append(kinds, fmt.Sprintf("%s: %d", k, v))
			}
			sort.Strings(kinds)
			if len(kinds) == 0 {
				kinds = []string{"none"}
			}
			t.rows = append(t.rows, []string{e.phase, fmt.Sprint(calls), fmt.Sprint(total), fmt.Sprint(bg), fmt.Sprint(total - bg), strings.Join(kinds, "; "), fmt.Sprint(e.logLines)})
		}
		t.notes = append(t.notes,
			"counted by an interceptor on the broker's etcd client (unary requests and every message sent on a stream), including the measured rounds' warm-ups",
			"background: the refresher's hot-token report (one Put a second while tokens are in use), the leader's read of the reports (one Range a second), lease keep-alives, the event retention (a Range and a DeleteRange under events/ once a minute) the shard-0 leader's look for webhook deliveries due (a Range under webhooks/ once a second) and the scan for pending device authorizations (a Range of their keys under device_authorizations/ once a second); they do not grow with the calls",
			fmt.Sprintf("provider calls during the load phases: %d (the token was fetched once before them)", r.providerCallsDuring))
		rep.tables = append(rep.tables, t)
	}
	if m := r.mem; m != nil {
		per := func(a, b int64) string { return fmt.Sprintf("%.0f B", float64(a-b)/float64(m.tokens)) }
		title := fmt.Sprintf("memory of the broker process (broker + embedded etcd) with %d cached tokens", m.tokens)
		if o.brokerMemLimit != "" {
			title += ", GOMEMLIMIT=" + o.brokerMemLimit
		}
		t := table{title: title,
			head: []string{"", "before", "with the tokens", "per token", "after returning free memory to the OS"}}
		t.rows = [][]string{
			{"RSS (VmRSS)", mib(m.before.RSS), mib(m.after.RSS), per(m.after.RSS, m.before.RSS), mib(m.settled.RSS)},
			{"of RSS: anonymous (RssAnon)", mib(m.before.RSSAnon), mib(m.after.RSSAnon), per(m.after.RSSAnon, m.before.RSSAnon), mib(m.settled.RSSAnon)},
			{"of RSS: mapped files (RssFile: the binary, etcd's bbolt file)", mib(m.before.RSSFile), mib(m.after.RSSFile), per(m.after.RSSFile, m.before.RSSFile), mib(m.settled.RSSFile)},
			{"Go heap, live objects after GC", mib(int64(m.before.HeapAlloc)), mib(int64(m.after.HeapAlloc)), per(int64(m.after.HeapAlloc), int64(m.before.HeapAlloc)), mib(int64(m.settled.HeapAlloc))},
			{"Go heap, spans in use", mib(int64(m.before.HeapInuse)), mib(int64(m.after.HeapInuse)), per(int64(m.after.HeapInuse), int64(m.before.HeapInuse)), mib(int64(m.settled.HeapInuse))},
			{"Go runtime, obtained from the OS (Sys)", mib(int64(m.before.Sys)), mib(int64(m.after.Sys)), "", mib(int64(m.settled.Sys))},
		}
		if m.dbSize > 0 {
			t.rows = append(t.rows,
				[]string{"etcd database file (db size)", mib(m.dbBefore), mib(m.dbSize), per(m.dbSize, m.dbBefore), ""},
				[]string{"etcd database in use (db size in use)", "", mib(m.dbInUse), fmt.Sprintf("%.0f B", float64(m.dbInUse)/float64(m.tokens)), ""})
		}
		for _, o := range m.owners {
			t.rows = append(t.rows, []string{"live heap: " + o.Owner, "", mib(o.Bytes), fmt.Sprintf("%.0f B", float64(o.Bytes)/float64(m.tokens)), ""})
		}
		t.notes = append(t.notes,
			"before: after the load phases; with the tokens: after a GC once the last token reached the cache; after returning free memory: debug.FreeOSMemory, what the runtime's scavenger does on its own over the following minutes",
			fmt.Sprintf("the tokens were written to etcd in the broker's record format (sealed, naming the client for introspection; no lease or second key per token) by the benchmark process, one token per transaction with 32 transactions in flight, and decoded into the cache by the broker's watch, in %.1fs", m.seconds),
			fmt.Sprintf("check over gRPC: %d of them asked for, %d not served from the written record, %d provider calls; %d introspected, %d not active as written", m.checked, m.mismatches, m.providerCalls, m.introspected, m.introspectMisses),
			"live heap by owner: estimated from the heap profile (sampled), each allocation charged to its nearest caller in tokenbroker, etcd server or etcd client code")
		rep.tables = append(rep.tables, t)
	}
	if m := r.mem; m != nil && m.restart != nil {
		x := m.restart
		t := table{title: fmt.Sprintf("restart of the broker process on %d cached tokens", x.tokens), head: []string{"from exec to", "time"}}
		t.rows = [][]string{
			{"ready line (app.Start returned: etcd started, every token record read)", fmtDur(x.ready)},
			{"of which app.Start, as the process measured it", fmtDurString(x.startup)},
			{"the token written last answered from memory", fmtDur(x.served)},
			{"RSS after the restart (after a GC)", mib(x.mem.RSS)},
			{"of RSS: anonymous (RssAnon)", mib(x.mem.RSSAnon)},
			{"of RSS: mapped files (RssFile: the binary, etcd's bbolt file, which etcd reads whole when it starts)", mib(x.mem.RSSFile)},
			{"Go heap, live objects after GC", mib(int64(x.mem.HeapAlloc))},
		}
		t.notes = append(t.notes,
			"the broker of the memory figure is stopped and started again on its data directory, unpinned; the sentinel (the record written last, of a provider no one can fetch from) is asked for every millisecond",
			fmt.Sprintf("check over gRPC after the start: %d tokens asked for, %d not served as written, with %d etcd requests beyond the background ones (0: every answer came from memory); %d introspected, %d not active as written",
				x.checked, x.mismatches, x.etcdRequests, x.introspected, x.introspectMisses))
		rep.tables = append(rep.tables, t)
	}
	if x := r.miss; x != nil {
		t := table{title: "miss path: GetToken of a key not cached, beside the bare provider call", head: []string{"", "p50", "p99", "max"}}
		row := func(name string, d []time.Duration) []string {
			return []string{name, fmtDur(pct(d, 0.5)), fmtDur(pct(d, 0.99)), fmtDur(d[len(d)-1])}
		}
		t.rows = [][]string{
			row("GetToken, miss (gRPC, c=1)", x.miss),
			row("token request sent to the provider directly", x.provider),
			row("GetToken, hit (gRPC, c=1)", x.hit),
			{"miss minus provider (of the percentiles)", fmtDur(pct(x.miss, 0.5) - pct(x.provider, 0.5)), fmtDur(pct(x.miss, 0.99) - pct(x.provider, 0.99)), ""},
		}
		var kinds []string
		for k, v := range x.etcd {
			kinds = append(kinds, fmt.Sprintf("%s %.1f", shortMethod(k), float64(v)/float64(x.n)))
		}
		sort.Strings(kinds)
		t.notes = append(t.notes,
			fmt.Sprintf("%d rounds of: the provider's token request (client_credentials, HTTP keep-alive), a GetToken naming a scope never asked for, a GetToken of the cached token; one at a time, the broker on every CPU", x.n),
			fmt.Sprintf("etcd requests per miss (the background ones left out): %s; provider calls per miss: %.2f", strings.Join(kinds, ", "), x.providerCallsPerMiss))
		rep.tables = append(rep.tables, t)
	}
	if x := r.refresh; x != nil {
		t := table{title: fmt.Sprintf("background refresh: %d hot tokens on %d replicas, %d refresh shards", x.tokens, x.replicas, x.shards), head: []string{"", "measured"}}
		t.rows = [][]string{
			{"refreshes asked for (tokens / refresh period)", fmt.Sprintf("%.0f/s (%d tokens, lifetime %s, refreshed every %s)", x.asked(), x.tokens, x.lifetime, fmtDur(x.period))},
			{"provider token requests", fmt.Sprintf("%.0f/s", x.perSecond(float64(x.providerCalls)))},
			{"refreshed tokens written to etcd", fmt.Sprintf("%.0f/s", x.perSecond(float64(x.refreshes)))},
			{"etcd writes (revisions)", fmt.Sprintf("%.0f/s (%.1f per refresh)", x.perSecond(float64(x.writes)), float64(x.writes)/max(float64(x.refreshes), 1))},
			{"refresh lag p50 / p99 / max", fmt.Sprintf("%s / %s / %s", fmtDur(pct(x.lags, 0.5)), fmtDur(pct(x.lags, 0.99)), fmtDur(pct(x.lags, 1)))},
			{"tokens more than 1s past their planned refresh at the end", fmt.Sprint(x.overdue)},
			{"shards led by each replica at the end", strings.Trim(fmt.Sprint(x.leading), "[]")},
		}
		var cpu []string
		for _, c := range x.cpu {
			cpu = append(cpu, fmt.Sprintf("%s %.2f", c.name, c.cores))
		}
		t.rows = append(t.rows, []string{"CPU, cores", strings.Join(cpu, "; ")})
		t.notes = append(t.notes,
			fmt.Sprintf("measured over %s, after a set-up of %s and a warm-up; etcd (production settings, fsync) in a process of its own, the replicas are app.Start with etcd.endpoints and refresher.shards %d, nothing pinned", x.window.Round(100*time.Millisecond), x.setup.Round(100*time.Millisecond), x.shards),
			"lag: the time a refreshed record reached etcd (seen by a watch) past the old record's planned refresh, the broker's default lead: max(lifetime/3, 2s, min(60s, lifetime/2) + 2 ticks)")
		rep.tables = append(rep.tables, t)
	}
	if x := r.watch; x != nil {
		t := table{title: fmt.Sprintf("watch propagation: an admin change on one of %d replicas, served by the others", x.replicas), head: []string{"", "p50", "p99", "max"}}
		row := func(name string, d []time.Duration) []string {
			return []string{name, fmtDur(pct(d, 0.5)), fmtDur(pct(d, 0.99)), fmtDur(d[len(d)-1])}
		}
		t.rows = [][]string{
			row(fmt.Sprintf("each other replica (%d × %d)", x.replicas-1, x.changes), x.each),
			row(fmt.Sprintf("the last of the %d others", x.replicas-1), x.all),
			row("the admin call (CreateApiKey) itself", x.admin),
		}
		t.notes = append(t.notes, fmt.Sprintf("%d API keys created one after the other on the first replica; from its answer, every other replica is asked for a cached token with the new key every %s until it accepts it", x.changes, watchPoll))
		rep.tables = append(rep.tables, t)
	}
	if len(r.herd) > 0 {
		t := table{title: fmt.Sprintf("herd: %d broker instances on one etcd, callers released at once on one key", o.herdInstances), head: []string{"herd", "callers", "provider calls", "errors", "latency p50", "latency max"}}
		for i, h := range r.herd {
			t.rows = append(t.rows, []string{fmt.Sprintf("%s %d", h.Kind, i%o.herdRounds+1), fmt.Sprint(h.Callers), fmt.Sprint(h.ProviderCalls), fmt.Sprint(h.Errors), fmtDur(h.P50), fmtDur(h.Max)})
		}
		t.notes = append(t.notes, "cold: a scope set never asked for; expiry: the instances' shared clock moved to 30s before the token's end (inside the default 60s min_ttl); the background refreshers run, but after the jump they see the key as idle, so the callers' misses meet",
			"provider calls: token requests the sandbox received for the herd's scope set, from the release until 0.5s (cold) or 1s (expiry) after the last answer")
		rep.tables = append(rep.tables, t)
	}
	if len(r.dev) > 0 || r.devErr != "" {
		t := table{title: "`tokenbroker dev` start (embedded etcd with production settings, sandbox provider)", head: []string{"start", "banner printed", "first GetToken answered"}}
		for i, d := range r.dev {
			t.rows = append(t.rows, []string{fmt.Sprint(i + 1), fmtDur(d.Banner), fmtDur(d.FirstToken)})
		}
		t.notes = append(t.notes, "from exec of `tokenbroker dev --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0` to the banner on stdout, and to the first successful gRPC GetToken with the printed key (a miss: the provider is called)")
		if r.devBuild > 0 {
			t.notes = append(t.notes, fmt.Sprintf("the binary was built first with go build (%s, not counted)", r.devBuild.Round(100*time.Millisecond)))
		}
		if r.devErr != "" {
			t.notes = append(t.notes, "not measured: "+r.devErr)
		}
		rep.tables = append(rep.tables, t)
	}
	return rep
}

// calls is the number of GetToken calls completed in the measured windows
// of a phase.
func (r *results) calls(phase string) uint64 {
	var n uint64
	add := func(ss []*sample) {
		for _, x := range ss {
			n += x.calls
		}
	}
	switch phase {
	case "grpc":
		for _, p := range r.grpc {
			add(p.broker)
		}
	case "rest":
		for _, p := range r.rest {
			add(p.broker)
		}
	}
	return n
}

const targetsTitle = "performance targets"

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}

// targets is the table of the performance targets with the measured values.
func (r *results) targets(o *options) table {
	t := table{title: targetsTitle, head: []string{"target", "measured", ""}}
	for _, p := range r.grpc {
		if p.c < 16 {
			continue
		}
		thr := ratios(p.broker, p.echo, rpsOf)
		p99 := ratios(p.broker, p.echo, p99Of)
		t.rows = append(t.rows,
			[]string{fmt.Sprintf("P1 gRPC throughput ≥ 0.9× echo at c=%d", p.c),
				fmt.Sprintf("%s× (CPU per call: %.2f×)", thr.ratio(), ratios(p.echo, p.broker, cpuPerCallOf).med), verdict(thr.med >= 0.9)},
			[]string{fmt.Sprintf("P1 gRPC p99 ≤ 1.5× echo at c=%d", p.c), p99.ratio() + "×", verdict(p99.med <= 1.5)})
	}
	for _, p := range r.rest {
		if p.c < 16 {
			continue
		}
		g := ratios(p.broker, p.gateway, rpsOf)
		h := ratios(p.broker, p.http, rpsOf)
		t.rows = append(t.rows,
			[]string{fmt.Sprintf("P2 REST ≥ 0.9× gateway echo at c=%d", p.c),
				fmt.Sprintf("%s× (CPU per call: %.2f×)", g.ratio(), ratios(p.gateway, p.broker, cpuPerCallOf).med), verdict(g.med >= 0.9)},
			[]string{fmt.Sprintf("P2 REST ≥ 0.75× net/http echo at c=%d", p.c),
				fmt.Sprintf("%s× (CPU per call: %.2f×)", h.ratio(), ratios(p.http, p.broker, cpuPerCallOf).med), verdict(h.med >= 0.75)},
			[]string{fmt.Sprintf("P2′ REST ≥ 1.0× net/http echo at c=%d", p.c), h.ratio() + "×", verdict(h.med >= 1.0)})
	}
	for _, e := range r.etcd {
		var other int64
		for k, v := range e.counts {
			if !background(k) {
				other += v
			}
		}
		t.rows = append(t.rows, []string{fmt.Sprintf("P3 0 etcd requests on the hit path (%s phase)", e.phase),
			fmt.Sprintf("%d over %d calls (+%d background)", other, r.calls(e.phase), total(e.counts)-other), verdict(other == 0)})
	}
	if len(r.herd) > 0 {
		ok := true
		var calls []string
		for _, h := range r.herd {
			ok = ok && h.ProviderCalls == 1 && h.Errors == 0
			calls = append(calls, fmt.Sprint(h.ProviderCalls))
		}
		t.rows = append(t.rows, []string{fmt.Sprintf("P4 1 provider call per token lifetime, %d instances × %d callers", o.herdInstances, o.herdCallers),
			strings.Join(calls, ", ") + " (cold, cold, …, expiry, …)", verdict(ok)})
	}
	if m := r.mem; m != nil {
		const million = 1_000_000
		limit := ""
		if o.brokerMemLimit != "" {
			limit = ", GOMEMLIMIT=" + o.brokerMemLimit
		}
		served := m.mismatches == 0 && m.introspectMisses == 0
		if m.tokens <= 100_000 {
			t.rows = append(t.rows, []string{fmt.Sprintf("P6 %d cached tokens in ≤ 200 MiB RSS%s", m.tokens, limit),
				fmt.Sprintf("%s (%s after returning free memory)", mib(m.after.RSS), mib(m.settled.RSS)), verdict(m.after.RSS <= 200<<20 && served)})
		}
		at := m.after.RSS
		how := fmt.Sprintf("%s with %d tokens", mib(at), m.tokens)
		if m.tokens != million {
			// A projection: what the process held before, plus a million
			// times the measured cost of a token.
			at = m.before.RSS + int64(float64(m.after.RSS-m.before.RSS)/float64(m.tokens)*million)
			how = fmt.Sprintf("%s projected from %d tokens (%s before + 1M × %.0f B), not measured", mib(at), m.tokens, mib(m.before.RSS), float64(m.after.RSS-m.before.RSS)/float64(m.tokens))
		}
		t.rows = append(t.rows, []string{"P6′ 1,000,000 cached tokens in ≤ 1 GiB RSS" + limit, how, verdict(at <= 1<<30 && served)})
	}
	if x := r.miss; x != nil {
		d := pct(x.miss, 0.5) - pct(x.provider, 0.5)
		t.rows = append(t.rows, []string{"P8 miss path minus bare provider ≤ 3 ms at p50",
			fmt.Sprintf("%s p50, %s p99", fmtDur(d), fmtDur(pct(x.miss, 0.99)-pct(x.provider, 0.99))), verdict(d <= 3*time.Millisecond)})
	}
	if x := r.refresh; x != nil {
		got := x.perSecond(float64(x.refreshes))
		t.rows = append(t.rows, []string{fmt.Sprintf("P9 ≥ 1000 background refreshes/s fleet-wide (%d replicas, %d shards)", x.replicas, x.shards),
			fmt.Sprintf("%.0f/s of %.0f/s asked (provider %.0f/s, etcd %.0f writes/s, lag p99 %s)", got, x.asked(), x.perSecond(float64(x.providerCalls)), x.perSecond(float64(x.writes)), fmtDur(pct(x.lags, 0.99))),
			verdict(got >= 1000)})
	}
	if m := r.mem; m != nil && m.restart != nil {
		t.rows = append(t.rows, []string{fmt.Sprintf("P10 restart to serving %d cached tokens (no limit set)", m.restart.tokens), fmtDur(m.restart.served), "reported"})
	}
	if x := r.watch; x != nil {
		t.rows = append(t.rows, []string{fmt.Sprintf("watch propagation to %d other replicas, p50 / p99 (no limit set)", x.replicas-1),
			fmt.Sprintf("each %s / %s; all %s / %s", fmtDur(pct(x.each, 0.5)), fmtDur(pct(x.each, 0.99)), fmtDur(pct(x.all, 0.5)), fmtDur(pct(x.all, 0.99))), "reported"})
	}
	if len(r.dev) > 0 {
		var firsts []string
		ok := true
		for _, d := range r.dev {
			firsts = append(firsts, fmtDur(d.FirstToken))
			ok = ok && d.FirstToken <= 2*time.Second
		}
		t.rows = append(t.rows, []string{"P5 `tokenbroker dev` first GetToken ≤ 2 s after start", strings.Join(firsts, ", "), verdict(ok)})
	}
	t.notes = append(t.notes, "a ratio target is judged on the median over rounds; the range shows the spread",
		"CPU per call: the ceiling's server CPU time per call over the broker's, the throughput ratio if both servers were CPU-bound; less sensitive to other load on the machine than throughput")
	return t
}

// fmtDurString formats a duration that a child reported as a string.
func fmtDurString(s string) string {
	d, err := time.ParseDuration(s)
	if err != nil {
		return s
	}
	return fmtDur(d)
}

// shortMethod is a gRPC method name without its service.
func shortMethod(m string) string {
	if i := strings.LastIndexByte(m, '/'); i >= 0 {
		return m[i+1:]
	}
	return m
}

func total(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}

func (r *report) text() string {
	var b strings.Builder
	for _, h := range r.header {
		b.WriteString(h + "\n")
	}
	for _, t := range r.tables {
		fmt.Fprintf(&b, "\n== %s\n", t.title)
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, strings.Join(t.head, "\t"))
		for _, row := range t.rows {
			fmt.Fprintln(tw, strings.Join(row, "\t"))
		}
		tw.Flush()
		for _, n := range t.notes {
			b.WriteString("  - " + n + "\n")
		}
	}
	return b.String()
}

func (r *report) markdown() string {
	var b strings.Builder
	for _, h := range r.header {
		b.WriteString(h + "  \n")
	}
	esc := func(s string) string { return strings.ReplaceAll(s, "|", "\\|") }
	for _, t := range r.tables {
		fmt.Fprintf(&b, "\n### %s\n\n", t.title)
		head := make([]string, len(t.head))
		for i, h := range t.head {
			head[i] = esc(h)
		}
		b.WriteString("| " + strings.Join(head, " | ") + " |\n")
		b.WriteString("|" + strings.Repeat("---|", len(t.head)) + "\n")
		for _, row := range t.rows {
			cells := make([]string, len(row))
			for i, c := range row {
				cells[i] = esc(c)
			}
			b.WriteString("| " + strings.Join(cells, " | ") + " |\n")
		}
		if len(t.notes) > 0 {
			b.WriteString("\n")
			for _, n := range t.notes {
				b.WriteString("- " + n + "\n")
			}
		}
	}
	return b.String()
}
