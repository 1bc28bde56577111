package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"

	"github.com/go-sql-driver/mysql"

	"github.com/nonqueue/nonqueue/monitor/metrics"
	"github.com/nonqueue/nonqueue/queue"
	"github.com/nonqueue/nonqueue/worker/follow"
)

// validateFollow checks [follower] and [[follow]] when either is set.
func (c *Config) validateFollow(followerSet bool) error {
	if !followerSet && len(c.Follow) == 0 {
		return nil
	}
	c.Follower = c.Follower.WithDefaults()
	if err := c.Follower.Validate(); err != nil {
		return asConfigError(err)
	}
	if err := follow.ValidateRules(c.Follow); err != nil {
		return asConfigError(err)
	}
	for i, r := range c.Follow {
		// Following nonqueue's own writes would request forever.
		if strings.EqualFold(r.Table, c.Topics.Schema+"."+c.Topics.Table) || strings.EqualFold(r.Table, c.Topics.MetaSchema+"."+queue.FollowTable) {
			return &ConfigError{Key: fmt.Sprintf("follow[%d].table", i), Err: fmt.Errorf("%s is written by nonqueue itself: following it would request without end", r.Table)}
		}
	}
	if c.Follower.Source == follow.SourceReplica && c.Replica.User == "" {
		return &ConfigError{Key: "follower.source", Err: errors.New(`"replica" (the default) needs the [replica] section; set source = "primary" to follow the primary`)}
	}
	return nil
}

// followOnly: the configuration of a host that runs only the follower
// ([[follow]] without the worker's [ssh] and [procedure]).
func (c *Config) followOnly() bool {
	return len(c.Follow) > 0 && c.SSH.Host == "" && c.Procedure.Name == ""
}

// asConfigError turns a follow.ConfigError into the file's ConfigError.
func asConfigError(err error) error {
	if fe, ok := errors.AsType[*follow.ConfigError](err); ok {
		return &ConfigError{Key: fe.Field, Err: fe.Err}
	}
	return err
}

// followSource is the server whose binlog the follower reads, and its
// configuration section.
func (c *Config) followSource() (Server, string) {
	if c.Follower.Source == follow.SourcePrimary {
		return c.Primary, "primary"
	}
	return c.Replica, "replica"
}

func runFollow(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("follow", stderr)
	path := fs.String("config", "", "configuration file (TOML)")
	metricsListen := fs.String("metrics-listen", "", "serve Prometheus metrics on HOST:PORT at /metrics (off by default)")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	if _, err := parseInterleaved(fs, args); err != nil {
		return err
	}
	if err := requireConfig("follow", *path); err != nil {
		return err
	}
	if err := checkMetricsListen(*metricsListen); err != nil {
		return err
	}
	log, err := textLogger(stderr, *level)
	if err != nil {
		return err
	}
	c, err := LoadConfig(*path)
	if err != nil {
		return err
	}
	if len(c.Follow) == 0 {
		return &ConfigError{Key: "follow", Err: errors.New("no [[follow]] table: nothing to follow")}
	}
	srv, section := c.followSource()
	mc, err := srv.MySQL(section)
	if err != nil {
		return err
	}
	// Like a worker, a follower waits for servers not up yet
	// (openWithRetry); once following, Run rides out their restarts.
	conns, err := openWithRetry(ctx, log, "follower start", 0, func(ctx context.Context) (*followConns, error) {
		return openFollowConns(ctx, c, mc, section, srv.addr())
	})
	if err != nil {
		if ctx.Err() != nil {
			log.Info("stopped while waiting for the servers")
			return nil // a stop, as after following
		}
		return err
	}
	defer conns.close()
	q, sourceDB := conns.q, conns.source
	host, _ := os.Hostname()
	f, err := follow.New(c.Follower, c.Follow, follow.Deps{
		Queue:    q,
		Source:   follow.Source{Name: section + " " + srv.addr(), Addr: srv.addr(), User: mc.User, Password: mc.Passwd},
		SourceDB: sourceDB,
		Host:     host,
		PID:      os.Getpid(),
		Logger:   log,
	})
	if err != nil {
		return asConfigError(err)
	}
	stop, err := serveFollowMetrics(ctx, *metricsListen, f, log)
	if err != nil {
		return err
	}
	defer stop()
	fmt.Fprintf(stdout, "following %s as %q (%d tables); Ctrl-C to stop\n", section+" "+srv.addr(), f.Config().Name, len(c.Follow))
	return f.Run(ctx)
}

// followConns are the connections a follower opens at start: the queue on
// the primary and a pool on its source.
type followConns struct {
	q      *queue.Queue
	source *sql.DB
}

// openFollowConns opens and checks the follower's connections; on error
// it closes what it opened.
func openFollowConns(ctx context.Context, c *Config, mc *mysql.Config, section, addr string) (*followConns, error) {
	q, err := openQueue(ctx, c)
	if err != nil {
		return nil, err
	}
	source, err := openPool(mc, 4)
	if err != nil {
		q.Close()
		return nil, fmt.Errorf("open %s: %w", section, err)
	}
	if err := source.PingContext(ctx); err != nil {
		source.Close()
		q.Close()
		return nil, fmt.Errorf("connect to %s %s: %w", section, addr, err)
	}
	return &followConns{q: q, source: source}, nil
}

func (fc *followConns) close() {
	fc.source.Close()
	fc.q.Close()
}

// serveFollowMetrics serves the follower's metrics on addr at /metrics
// until stop is called; "" serves nothing.
func serveFollowMetrics(ctx context.Context, addr string, f *follow.Follower, log *slog.Logger) (stop func(), err error) {
	if addr == "" {
		return func() {}, nil
	}
	reg := metrics.NewRegistry()
	err = metrics.NewFollow(reg, metrics.FollowConfig{Name: f.Config().Name, StatsFunc: func() metrics.FollowStats {
		s := f.Stats()
		return metrics.FollowStats{Active: s.Active, Events: s.Events, Requests: s.Requests, Flushes: s.Flushes,
			Errors: s.Errors, Takeovers: s.Takeovers, Delay: s.Delay.Seconds()}
	}})
	if err != nil {
		return nil, err
	}
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics.Handler(reg))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: metricsReadHeaderTimeout, WriteTimeout: metricsWriteTimeout,
		IdleTimeout: metricsIdleTimeout, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	log.InfoContext(ctx, "metrics listening", "addr", ln.Addr().String(), "path", "/metrics")
	return func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), metricsShutdownTimeout)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			srv.Close()
		}
		<-done
	}, nil
}
