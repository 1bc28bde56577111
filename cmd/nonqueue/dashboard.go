package main

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/nonqueue/nonqueue/monitor"
	"github.com/nonqueue/nonqueue/monitor/dashboard"
	"github.com/nonqueue/nonqueue/monitor/metrics"
)

// DashboardConfig is the [dashboard] section: how `nonqueue dashboard`
// serves. Every key is optional.
//
//	[dashboard]
//	listen = "127.0.0.1:8080"                      # --listen overrides
//	prefix = "/nonqueue"                           # --prefix overrides
//	operator_token_env = "NONQUEUE_OPERATOR_TOKEN" # unset: read-only
//	log_dirs = ["/var/log/nonqueue"]               # default: [worker] log_dir
//	trusted_proxies = ["127.0.0.1"]                # X-Forwarded-For trusted from these; default none
type DashboardConfig struct {
	// Listen is the address to serve on; default 127.0.0.1:8080.
	Listen string `toml:"listen"`
	// Prefix mounts the pages under a path ("/nonqueue"); default none.
	Prefix string `toml:"prefix"`
	// OperatorTokenEnv names the environment variable that holds the
	// operator token (at least 16 characters). Without it the actions are
	// disabled. The token itself never appears in the file or the logs.
	OperatorTokenEnv string `toml:"operator_token_env"`
	// LogDirs are the directories whose run logs the topic page may show;
	// default the [worker] log_dir (or its default /var/log/nonqueue).
	LogDirs []string `toml:"log_dirs"`
	// Refresh is the pages' auto-refresh period; default 5s.
	Refresh time.Duration `toml:"refresh"`
	// CacheTTL is how long a computed overview is reused; default 2s.
	CacheTTL time.Duration `toml:"cache_ttl"`
	// Origin is the public origin when a proxy rewrites Host
	// ("https://ops.example.com"); default: the request's Host.
	Origin string `toml:"origin"`
	// SessionTTL is how long an operator login lasts; default 12h.
	SessionTTL time.Duration `toml:"session_ttl"`
	// TrustedProxies are reverse proxies (addresses or CIDR ranges) whose
	// X-Forwarded-For names the client for the per-client login throttle;
	// default none: the header is ignored.
	TrustedProxies []string `toml:"trusted_proxies"`
	// Replicas are more replicas to read live ([[dashboard.replicas]],
	// same keys as [replica]), besides [replica] when it is set. Their
	// password defaults to NONQUEUE_REPLICA_PASSWORD.
	Replicas []Server `toml:"replicas"`
}

// serverConfig turns the section into the dashboard's Config; listen and
// prefix (flags) override the file when not empty. A configured token
// variable that is unset or empty is an error: the operator asked for
// actions.
func (d *DashboardConfig) serverConfig(c *Config, listen, prefix string) (dashboard.Config, error) {
	dc := dashboard.Config{
		Listen: d.Listen, Prefix: d.Prefix, LogDirs: d.LogDirs, Refresh: d.Refresh, CacheTTL: d.CacheTTL,
		Origin: d.Origin, SessionTTL: d.SessionTTL, TrustedProxies: d.TrustedProxies,
	}
	if listen != "" {
		dc.Listen = listen
	}
	if prefix != "" {
		dc.Prefix = prefix
	}
	dc.Prefix = trimPrefixFlag(dc.Prefix)
	if len(dc.LogDirs) == 0 {
		dc.LogDirs = []string{c.Worker.WithDefaults(c.Topics.Lease).LogDir}
	}
	if name := d.OperatorTokenEnv; name != "" {
		v, ok := os.LookupEnv(name)
		if !ok || v == "" {
			return dc, &ConfigError{Key: "dashboard.operator_token_env", Err: fmt.Errorf("environment variable %s is not set", name)}
		}
		dc.OperatorToken = dashboard.Secret(v)
	}
	dc = dc.WithDefaults()
	if err := dc.Validate(); err != nil {
		return dc, err
	}
	return dc, nil
}

// dashboardReplicas opens a small pool on [replica] (when set) and on
// every [[dashboard.replicas]]. A replica that cannot be opened is logged
// and left out: the dashboard shows what it can. close closes them all.
func dashboardReplicas(ctx context.Context, c *Config, d *DashboardConfig, log *slog.Logger) (reps []dashboard.Replica, close func()) {
	var servers []Server
	if c.Replica.User != "" {
		servers = append(servers, c.Replica)
	}
	servers = append(servers, d.Replicas...)
	var pools []*sql.DB
	close = func() {
		for _, p := range pools {
			p.Close()
		}
	}
	for _, s := range servers {
		mc, err := s.MySQL("replica")
		if err != nil {
			log.WarnContext(ctx, "dashboard: replica left out", "replica", s, "err", err)
			continue
		}
		mc.Timeout = 3 * time.Second
		db, err := openPool(mc, 4)
		if err != nil {
			log.WarnContext(ctx, "dashboard: replica left out", "replica", s, "err", err)
			continue
		}
		pools = append(pools, db)
		reps = append(reps, dashboard.Replica{Name: s.addr(), DB: db})
	}
	return reps, close
}

func runDashboard(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("dashboard", stderr)
	path := fs.String("config", "", "configuration file (TOML)")
	listen := fs.String("listen", "", "address to serve on (default [dashboard] listen, else "+dashboard.DefaultListen+")")
	prefix := fs.String("prefix", "", "serve under this path, such as /nonqueue (default [dashboard] prefix, else /)")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	if _, err := parseInterleaved(fs, args); err != nil {
		return err
	}
	if err := requireConfig("dashboard", *path); err != nil {
		return err
	}
	logger, err := textLogger(stderr, *level)
	if err != nil {
		return err
	}
	c, err := LoadConfig(*path)
	if err != nil {
		return err
	}
	d := &c.Dashboard
	dc, err := d.serverConfig(c, *listen, *prefix)
	if err != nil {
		return err
	}
	q, err := openQueue(ctx, c)
	if err != nil {
		return err
	}
	defer q.Close()
	reps, closeReps := dashboardReplicas(ctx, c, d, logger)
	defer closeReps()
	reg := metrics.NewRegistry()
	if err := reg.Register(metrics.NewTopicCollector(q, 5*time.Second, logger)); err != nil {
		return fmt.Errorf("dashboard metrics: %w", err)
	}
	srv, err := dashboard.New(dc, &dashboard.Sources{
		Queue: q, History: &monitor.History{Primary: q.DB(), Schema: c.Topics.MetaSchema}, Replicas: reps,
		Metrics: metrics.Handler(reg),
	}, logger)
	if err != nil {
		return err
	}
	if err := srv.Start(ctx); err != nil {
		return err
	}
	actions := "disabled (no operator token configured)"
	if dc.OperatorToken != "" {
		actions = "enabled (operator token from $" + d.OperatorTokenEnv + ")"
	}
	fmt.Fprintf(stdout, "dashboard on http://%s%s/ ; actions %s; stop with Ctrl-C\n", srv.Addr(), dc.Prefix, actions)
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return srv.Stop(sctx)
}

// trimPrefixFlag normalises a prefix ("nonqueue/" → "/nonqueue").
func trimPrefixFlag(p string) string {
	p = strings.TrimRight(strings.TrimSpace(p), "/")
	if p != "" && !strings.HasPrefix(p, "/") {
		p = "/" + p
	}
	return p
}
