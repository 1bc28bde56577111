package metrics

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// FollowStats is what a binlog follower (nonqueue follow) reports, read at
// scrape time. It is a plain value so this package needs no import of the
// follower.
type FollowStats struct {
	Active    bool    // holds its name's lock and follows
	Events    uint64  // row changes of followed tables read
	Requests  uint64  // topic requests committed
	Flushes   uint64  // commits of position and requests
	Errors    uint64  // active periods ended by an error
	Takeovers uint64  // times it took its name's lock
	Delay     float64 // seconds behind its source
}

// FollowConfig says where a follower's metrics come from.
type FollowConfig struct {
	Name      string             // the follower name, the follower label
	StatsFunc func() FollowStats // called once per scrape
}

// NewFollow registers a follower's metrics in reg:
// nonqueue_follow_events_total, nonqueue_follow_requests_total,
// nonqueue_follow_flushes_total, nonqueue_follow_errors_total,
// nonqueue_follow_takeovers_total, nonqueue_follow_delay_seconds and
// nonqueue_follow_active, each labelled follower=Name. A standby reports
// active 0 and its delay as 0.
func NewFollow(reg prometheus.Registerer, cfg FollowConfig) error {
	if cfg.StatsFunc == nil {
		return fmt.Errorf("follow metrics: StatsFunc is required")
	}
	labels := prometheus.Labels{"follower": cfg.Name}
	counter := func(name, help string, v func(FollowStats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: Namespace, Subsystem: "follow", Name: name, Help: help, ConstLabels: labels},
			func() float64 { return float64(v(cfg.StatsFunc())) })
	}
	gauge := func(name, help string, v func(FollowStats) float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: Namespace, Subsystem: "follow", Name: name, Help: help, ConstLabels: labels},
			func() float64 { return v(cfg.StatsFunc()) })
	}
	for _, c := range []prometheus.Collector{
		counter("events_total", "Row changes of followed tables read from the binary log.", func(s FollowStats) uint64 { return s.Events }),
		counter("requests_total", "Topic requests committed by the follower (a topic counts once per commit).", func(s FollowStats) uint64 { return s.Requests }),
		counter("flushes_total", "Commits of the follower's position with its requests on the primary.", func(s FollowStats) uint64 { return s.Flushes }),
		counter("errors_total", "Active periods of the follower ended by an error (source, primary, lost lock); it retries.", func(s FollowStats) uint64 { return s.Errors }),
		counter("takeovers_total", "Times the follower took its name's lock and became active.", func(s FollowStats) uint64 { return s.Takeovers }),
		gauge("delay_seconds", "How far the follower is behind its source: now minus the commit time of the last change read (0 when caught up).", func(s FollowStats) float64 { return s.Delay }),
		gauge("active", "1 while this process is the active follower of its name, 0 while it is a standby.", func(s FollowStats) float64 {
			if s.Active {
				return 1
			}
			return 0
		}),
	} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("follow metrics: %w", err)
		}
	}
	return nil
}
