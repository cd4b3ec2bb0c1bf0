package server

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tokenbroker/tokenbroker/broker"
	"github.com/tokenbroker/tokenbroker/broker/apikey"
	"github.com/tokenbroker/tokenbroker/broker/event"
	"github.com/tokenbroker/tokenbroker/internal/buildinfo"
)

// MetricsPath serves the Prometheus metrics on the metrics listener
// (Config.MetricsAddr).
const MetricsPath = "/metrics"

// Metrics are the broker's Prometheus metrics. It is a broker.Observer; the
// gRPC server's metrics (calls by method and code, latency) have the names
// of go-grpc-middleware's provider (see grpcMetrics) and count REST calls
// too, since they run the same interceptor chain. Labels never carry secrets: provider names,
// grant types, outcomes.
type Metrics struct {
	reg           *prometheus.Registry
	grpc          *grpcMetrics
	served        *prometheus.CounterVec
	hit, miss     prometheus.Counter // pre-bound: the hot path does one atomic add
	servedErr     prometheus.Counter
	providerCalls *prometheus.CounterVec
	providerTime  *prometheus.HistogramVec
	refreshed     *prometheus.CounterVec
	refreshAhead  *prometheus.HistogramVec
	refreshFailed *prometheus.CounterVec
	leading       *prometheus.GaugeVec
	hookAttempts  *prometheus.CounterVec
	hookLag       *prometheus.HistogramVec
	hookDead      *prometheus.CounterVec
	watchDropped  prometheus.Counter
	events        *prometheus.CounterVec
}

// NewMetrics makes the metrics and registers them, with the Go and process
// collectors, on a registry of their own.
func NewMetrics() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.grpc = newGRPCMetrics([]float64{.0001, .00025, .0005, .001, .0025, .005, .01, .05, .25, 1, 5})
	m.served = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tokenbroker_get_token_total", Help: "GetToken answers by outcome: hit (memory), miss (fetched or re-read), error.",
	}, []string{"outcome"})
	m.hit, m.miss, m.servedErr = m.served.WithLabelValues(broker.OutcomeHit), m.served.WithLabelValues(broker.OutcomeMiss), m.served.WithLabelValues(broker.OutcomeError)
	m.providerCalls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tokenbroker_provider_calls_total", Help: "Token-endpoint requests by provider, grant and outcome (ok, rejected, unavailable, malformed).",
	}, []string{"provider", "grant", "outcome"})
	m.providerTime = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "tokenbroker_provider_call_seconds", Help: "Token-endpoint request latency by provider and grant.",
		Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"provider", "grant"})
	m.refreshed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tokenbroker_background_refreshes_total", Help: "Tokens refreshed ahead of expiry by the elected refresher.",
	}, []string{"provider"})
	m.refreshAhead = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "tokenbroker_refresh_ahead_seconds", Help: "How long before the old token's expiry a background refresh got the new one (refresh lag: low values mean late).",
		Buckets: []float64{0, 1, 5, 15, 60, 300, 900, 1800, 3600},
	}, []string{"provider"})
	m.refreshFailed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tokenbroker_background_refresh_failures_total", Help: "Failed background refreshes.",
	}, []string{"provider"})
	m.leading = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "tokenbroker_refresh_shard_leader", Help: "1 while this replica leads the refresh shard.",
	}, []string{"shard"})
	m.hookAttempts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tokenbroker_webhook_deliveries_total", Help: "Webhook delivery attempts by subscription and outcome (succeeded, failed).",
	}, []string{"webhook", "outcome"})
	m.hookLag = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "tokenbroker_webhook_delivery_lag_seconds", Help: "From an event's recording to its successful delivery, by subscription.",
		Buckets: []float64{.01, .05, .1, .25, .5, 1, 5, 30, 120, 600, 3600, 21600, 86400},
	}, []string{"webhook"})
	m.hookDead = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tokenbroker_webhook_dead_letters_total", Help: "Webhook deliveries dead-lettered after their retry schedule, by subscription.",
	}, []string{"webhook"})
	m.watchDropped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "tokenbroker_event_watchers_dropped_total", Help: "Event watches ended because their consumer fell too far behind.",
	})
	m.events = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tokenbroker_events_total", Help: "Events recorded by the fleet, by type; counted by the leader of refresh shard 0 while it leads.",
	}, []string{"type"})
	m.reg.MustRegister(m.grpc, m.served, m.providerCalls, m.providerTime, m.refreshed, m.refreshAhead, m.refreshFailed, m.leading,
		m.hookAttempts, m.hookLag, m.hookDead, m.watchDropped, m.events,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), buildInfoGauge(buildinfo.Read()),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "tokenbroker_etcd_errors_total", Help: "Failed etcd calls."},
			func() float64 { return float64(broker.StoreErrors()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "tokenbroker_untrusted_records_total",
			Help: "etcd records (providers, grants, pending authorizations, API keys) refused because their tag made with the master key is missing or wrong."},
			func() float64 { return float64(broker.UntrustedRecords() + apikey.UntrustedRecords()) }),
	)
	return m
}

// WatchGrants adds a gauge of grants by health, read from etcd at scrape
// time.
func (m *Metrics) WatchGrants(b *broker.Broker) {
	m.reg.MustRegister(&grantCollector{b: b, desc: prometheus.NewDesc("tokenbroker_grants",
		"Grants by provider and health.", []string{"provider", "health"}, nil)})
}

// Handler serves the metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

func (m *Metrics) TokenServed(outcome string) {
	switch outcome {
	case broker.OutcomeHit:
		m.hit.Inc()
	case broker.OutcomeMiss:
		m.miss.Inc()
	default:
		m.servedErr.Inc()
	}
}

func (m *Metrics) ProviderCall(provider string, grant broker.GrantType, outcome string, d time.Duration) {
	m.providerCalls.WithLabelValues(provider, string(grant), outcome).Inc()
	m.providerTime.WithLabelValues(provider, string(grant)).Observe(d.Seconds())
}

func (m *Metrics) Refreshed(provider string, ahead time.Duration) {
	m.refreshed.WithLabelValues(provider).Inc()
	m.refreshAhead.WithLabelValues(provider).Observe(ahead.Seconds())
}

func (m *Metrics) RefreshFailed(provider string) { m.refreshFailed.WithLabelValues(provider).Inc() }

func (m *Metrics) Leading(shard int, leading bool) {
	v := 0.0
	if leading {
		v = 1
	}
	m.leading.WithLabelValues(strconv.Itoa(shard)).Set(v)
}

func (m *Metrics) WebhookAttempt(webhook string, ok bool, lag time.Duration) {
	if !ok {
		m.hookAttempts.WithLabelValues(webhook, "failed").Inc()
		return
	}
	m.hookAttempts.WithLabelValues(webhook, "succeeded").Inc()
	m.hookLag.WithLabelValues(webhook).Observe(lag.Seconds())
}

func (m *Metrics) WebhookDeadLettered(webhook string) { m.hookDead.WithLabelValues(webhook).Inc() }

func (m *Metrics) EventWatcherDropped() { m.watchDropped.Inc() }

func (m *Metrics) EventRecorded(t event.Type) { m.events.WithLabelValues(string(t)).Inc() }

// grantCollector reads the grants' health at scrape time.
type grantCollector struct {
	b    *broker.Broker
	desc *prometheus.Desc
}

func (c *grantCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *grantCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	gs, err := c.b.ListGrants(ctx, "")
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.desc, err)
		return
	}
	counts := map[[2]string]int{}
	for _, g := range gs {
		counts[[2]string{g.Provider, string(g.Health)}]++
	}
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), k[0], k[1])
	}
}
