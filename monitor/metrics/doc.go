// Package metrics exposes nonqueue to Prometheus: a worker process's runs,
// claims, reaped leases, replica health and instance states, and, for the
// dashboard, the topic table's backlog per state.
//
// Nothing here is global. Every metric lives in a prometheus.Registry the
// caller creates (NewRegistry adds the Go runtime and process collectors)
// and serves with Handler; the default registry is never touched, so two
// workers or a worker and a test in one process never share counters.
//
// Two kinds of source feed the metrics, chosen by what each source is:
//
//   - Events are counted as they happen: Worker.ObserveRun is the worker's
//     Observer (runs by outcome, phase durations, bytes shipped),
//     Worker.SetInstanceState its StateFunc, Worker.ObserveReaped a
//     queue.Reaper's ReapedFunc.
//   - State that something else already keeps is read at scrape time by a
//     collector, never copied: the queue's claim counters (queue.Queue.Stats),
//     the lag gate's last sample (monitor.Gate.Status), the pause watch's
//     last read (monitor.PauseWatch.InForce: nonqueue_paused{scope}, with
//     scope "unknown" at 1 while the pauses cannot be read), and the topic table
//     itself (NewTopicCollector runs queue.Queue.StateCounts on the primary,
//     bounded by a timeout, per scrape).
//
// Names follow Prometheus conventions: counters end in _total, durations
// are in seconds and sizes in bytes, and every label value that can occur
// is exported from the start (at zero), so rate() and dashboards work
// before the first event. Unknown is absent, not zero: the replication
// metrics disappear while the gate has no readable sample, and the topic
// gauges while the topic query fails (nonqueue_topic_query_success says
// so), because a zero there would read as "healthy" or "empty".
package metrics
