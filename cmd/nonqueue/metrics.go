package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/nonqueue/nonqueue/monitor"
	"github.com/nonqueue/nonqueue/monitor/metrics"
	"github.com/nonqueue/nonqueue/queue"
)

// Timeouts of the metrics server. A scrape reads memory only (the worker's
// collectors never query), so short limits cost nothing and keep a stuck
// client from holding a connection.
const (
	metricsReadHeaderTimeout = 5 * time.Second
	metricsWriteTimeout      = 30 * time.Second
	metricsIdleTimeout       = 2 * time.Minute
	metricsShutdownTimeout   = 5 * time.Second
)

// workerMetrics is a worker process's /metrics endpoint and the metrics
// behind it. The zero value (metrics off) is usable: its hooks are nil and
// Stop does nothing.
type workerMetrics struct {
	m    *metrics.Worker
	srv  *http.Server
	addr net.Addr // where it listens, for logs and tests

	stopOnce sync.Once
	done     chan struct{} // closed when Serve has returned
}

// checkMetricsListen validates --metrics-listen before anything is opened:
// "" (off) or host:port.
func checkMetricsListen(addr string) error {
	if addr == "" {
		return nil
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("--metrics-listen %q: want HOST:PORT, such as 127.0.0.1:9464: %w", addr, err)
	}
	return nil
}

// startWorkerMetrics serves a worker process's metrics on addr at /metrics
// until ctx ends or Stop is called; addr "" turns metrics off and returns
// an idle *workerMetrics. The listener is bound before it returns, so a
// busy port fails the start instead of a later scrape. The endpoint has
// no authentication: a non-loopback addr is served but warned about. The
// metrics read q's claim counters, gate's last sample, the reasons gate
// and throttle hold work back, pause's last read (nil: no
// nonqueue_paused) and pendingDrops (nil: no nonqueue_pending_drops) at
// scrape time;
// runs, instance states and reaped leases arrive through the hooks.
func startWorkerMetrics(ctx context.Context, addr string, q *queue.Queue, gate *monitor.Gate, throttle *monitor.Throttle, pause *monitor.PauseWatch, pendingDrops func() int, log *slog.Logger) (*workerMetrics, error) {
	wm := &workerMetrics{}
	if addr == "" {
		return wm, nil
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := checkMetricsListen(addr); err != nil {
		return nil, err
	}
	reg := metrics.NewRegistry()
	wc := metrics.WorkerConfig{ClaimStatsFunc: q.Stats, ReplicaStatusFunc: gate.Status,
		ThrottledFunc: func() []string {
			reasons := throttle.Reasons()
			if _, err := gate.Check(); err != nil {
				reasons = append(reasons, monitor.GateReason(err))
			}
			return reasons
		}}
	if pause != nil {
		wc.PausesFunc = pause.InForce
	}
	wc.PendingDropsFunc = pendingDrops
	m, err := metrics.NewWorker(reg, wc)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics.Handler(reg))
	wm.m, wm.addr, wm.done = m, ln.Addr(), make(chan struct{})
	wm.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: metricsReadHeaderTimeout,
		WriteTimeout:      metricsWriteTimeout,
		IdleTimeout:       metricsIdleTimeout,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	if tcp, ok := ln.Addr().(*net.TCPAddr); ok && !tcp.IP.IsLoopback() {
		log.WarnContext(ctx, "metrics served on a non-loopback address without authentication", "addr", ln.Addr().String())
	}
	go func() {
		defer close(wm.done)
		if err := wm.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	context.AfterFunc(ctx, wm.Stop)
	log.InfoContext(ctx, "metrics listening", "addr", ln.Addr().String(), "path", "/metrics")
	return wm, nil
}

// Stop shuts the server down, letting a scrape in progress finish for up
// to 5s, and waits for it. It is idempotent and safe when metrics are off.
func (wm *workerMetrics) Stop() {
	if wm.srv == nil {
		return
	}
	wm.stopOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), metricsShutdownTimeout)
		defer cancel()
		if err := wm.srv.Shutdown(ctx); err != nil {
			wm.srv.Close()
		}
		<-wm.done
	})
}

// observer is worker.Deps.Observer: nil when metrics are off.
func (wm *workerMetrics) observer() func(*monitor.Run) {
	if wm.m == nil {
		return nil
	}
	return wm.m.ObserveRun
}

// stateFunc is worker.Deps.StateFunc: nil when metrics are off.
func (wm *workerMetrics) stateFunc() func(int64, string) {
	if wm.m == nil {
		return nil
	}
	return wm.m.SetInstanceState
}

// reapedFunc is queue.Reaper.ReapedFunc: nil when metrics are off.
func (wm *workerMetrics) reapedFunc() func(queue.Reaped) {
	if wm.m == nil {
		return nil
	}
	return wm.m.ObserveReaped
}
