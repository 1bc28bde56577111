package metrics

import (
	"cmp"
	"context"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nonqueue/nonqueue/queue"
)

// DefaultTopicQueryTimeout bounds the topic collector's query when
// NewTopicCollector is given no timeout: under Prometheus' default scrape
// timeout (10s), so a slow primary fails this collector, not the scrape.
const DefaultTopicQueryTimeout = 5 * time.Second

// stateCounter is queue.Queue.StateCounts' shape, so tests can fake it.
type stateCounter func(context.Context) (map[string]int64, time.Duration, error)

// topicCollector reads the topic table on every scrape. It keeps no cache:
// a scrape shows the table as it is, and two scrapes cost two queries.
type topicCollector struct {
	count                              stateCounter
	timeout                            time.Duration
	log                                *slog.Logger
	topics, oldest, success, queryTime *prometheus.Desc
}

// NewTopicCollector returns a collector that, on each scrape, counts the
// topic table's topics per state with q.StateCounts on the primary and
// exposes nonqueue_topics{state} (the queue.StateCount* keys; "required"
// overlaps the others, which partition the table) and
// nonqueue_oldest_due_age_seconds (0 when nothing is due). It also
// exposes nonqueue_topic_query_success (1 or 0) and
// nonqueue_topic_query_duration_seconds for the query itself.
//
// The query runs under timeout (DefaultTopicQueryTimeout when <= 0). When
// it fails, the failure is logged at warn level, success is 0, and the
// topic gauges are left out of that scrape rather than reported as zeros;
// the rest of the registry is still served. log may be nil (discard).
// The collector is meant for the dashboard's registry: every process that
// registers it queries the primary once per scrape.
func NewTopicCollector(q *queue.Queue, timeout time.Duration, log *slog.Logger) prometheus.Collector {
	return newTopicCollector(q.StateCounts, timeout, log)
}

func newTopicCollector(count stateCounter, timeout time.Duration, log *slog.Logger) *topicCollector {
	if timeout <= 0 {
		timeout = DefaultTopicQueryTimeout
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &topicCollector{
		count: count, timeout: timeout, log: log,
		topics: prometheus.NewDesc(Namespace+"_topics",
			"Topics in the topic table per state: due, running, backoff, scheduled, parked, inactive and idle partition the table; required counts every requested topic and overlaps them.",
			[]string{"state"}, nil),
		oldest: prometheus.NewDesc(Namespace+"_oldest_due_age_seconds",
			"How long the oldest due topic has been due, on the primary's clock; 0 when none is due.",
			nil, nil),
		success: prometheus.NewDesc(Namespace+"_topic_query_success",
			"1 if this scrape's topic count query on the primary succeeded, 0 if it failed (the topic gauges are then absent).",
			nil, nil),
		queryTime: prometheus.NewDesc(Namespace+"_topic_query_duration_seconds",
			"Time this scrape's topic count query on the primary took.",
			nil, nil),
	}
}

func (c *topicCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.topics
	ch <- c.oldest
	ch <- c.success
	ch <- c.queryTime
}

func (c *topicCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	start := time.Now()
	counts, oldest, err := c.count(ctx)
	ch <- prometheus.MustNewConstMetric(c.queryTime, prometheus.GaugeValue, time.Since(start).Seconds())
	if err != nil {
		c.log.WarnContext(ctx, "count topics for metrics", "err", err, "timeout", c.timeout)
		ch <- prometheus.MustNewConstMetric(c.success, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.success, prometheus.GaugeValue, 1)
	// The documented keys always, at zero if the counter left one out.
	all := map[string]int64{}
	for _, k := range queue.StateCountKeys() {
		all[k] = 0
	}
	maps.Copy(all, counts)
	for _, k := range slices.Sorted(maps.Keys(all)) {
		ch <- prometheus.MustNewConstMetric(c.topics, prometheus.GaugeValue, float64(all[k]), cmp.Or(k, "unknown"))
	}
	ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, oldest.Seconds())
}
