package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Namespace prefixes every nonqueue metric name.
const Namespace = "nonqueue"

// NewRegistry returns an empty registry with the Go runtime and process
// collectors (goroutines, GC, memory, CPU, open file descriptors), which
// every nonqueue process exposes. Callers add their own collectors and
// serve it with Handler. It never touches prometheus.DefaultRegisterer.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

// Handler serves reg in the Prometheus exposition format (text, or
// protobuf when the scraper asks for it), with the standard
// promhttp_metric_handler_* metrics registered in reg. A collector that
// fails does not fail the scrape: the other metrics are served
// (ContinueOnError) and the failure is counted in
// promhttp_metric_handler_errors_total; nonqueue's own collectors report
// failures as metrics and log them instead. At most 4 scrapes run at
// once; more get 503, which also bounds the topic queries a dashboard's
// registry can start.
func Handler(reg *prometheus.Registry) http.Handler {
	return promhttp.InstrumentMetricHandler(reg, promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		Registry:            reg,
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
	}))
}
