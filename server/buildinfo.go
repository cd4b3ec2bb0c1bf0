package server

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenbroker/tokenbroker/internal/buildinfo"
)

// buildInfoGauge is tokenbroker_build_info: always 1, with the build's
// version, Go version and source revision as labels (as `tokenbroker
// version` prints them), so that a dashboard can tell which build each
// replica runs.
func buildInfoGauge(info buildinfo.Info) prometheus.Collector {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "tokenbroker_build_info",
		Help: "Always 1; the labels say which build runs: version, goversion and revision (with -modified for a tree with uncommitted changes).",
	}, []string{"version", "goversion", "revision"})
	g.WithLabelValues(info.Version, info.GoVersion, info.RevisionLabel()).Set(1)
	return g
}
