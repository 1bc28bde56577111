package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/nonqueue/nonqueue/internal/flavor"
	"github.com/nonqueue/nonqueue/monitor"
	"github.com/nonqueue/nonqueue/procs"
	"github.com/nonqueue/nonqueue/queue"
	"github.com/nonqueue/nonqueue/transfer"
	"github.com/nonqueue/nonqueue/worker"
)

// node is everything a worker process opens, shared by its instances.
type node struct {
	cfg      *Config
	queue    *queue.Queue
	primary  *sql.DB // binlogged: run history, registry, lag heartbeat (which must replicate)
	publish  *sql.DB // primary sessions with sql_log_bin=0: publishes never replicate
	replica  *sql.DB // every session with sql_log_bin=0: no local GTIDs (docs/design.md, "Cleanup")
	flavor   flavor.Flavor
	serverID uint32
	datadir  string
	shipper  *transfer.Shipper
	runner   *procs.Runner
	gate     *monitor.Gate
	pause    *monitor.PauseWatch
	throttle *monitor.Throttle
	slots    *monitor.PublishSlots
	log      *slog.Logger
}

// requireWorkerSections checks the sections a worker needs beyond the
// queue's.
func (c *Config) requireWorkerSections() error {
	switch {
	case c.Replica.User == "":
		return &ConfigError{Key: "replica", Err: errors.New("section is required to run workers")}
	case c.SSH.Host == "":
		return &ConfigError{Key: "ssh", Err: errors.New("section is required to run workers")}
	case c.Procedure.Name == "":
		return &ConfigError{Key: "procedure.name", Err: errors.New("is required to run workers")}
	case c.Results.Schema == "" || len(c.Results.Tables) == 0:
		return &ConfigError{Key: "results", Err: errors.New("schema and tables are required to run workers")}
	}
	return nil
}

func (c *Config) transferConfig() transfer.Config {
	return transfer.Config{
		SSH: transfer.SSHConfig{
			Host: c.SSH.Host, Port: c.SSH.Port, User: c.SSH.User, KeyFile: c.SSH.KeyFile, KnownHosts: c.SSH.KnownHosts,
			DialTimeout: c.SSH.DialTimeout, KeepaliveInterval: c.SSH.KeepaliveInterval, KeepaliveTimeout: c.SSH.KeepaliveTimeout,
			StallTimeout: c.SSH.StallTimeout, MinThroughput: c.SSH.MinThroughput,
		},
		PrimaryDatadir: c.SSH.Datadir,
		Schema:         c.Results.Schema,
		Tables:         c.Results.Tables,
		BackupDir:      c.Results.BackupDir,
		BackupKeep:     c.Results.BackupKeep,
		LockWait:       c.Results.LockWait,
		SwapTries:      c.Results.SwapTries,
		SwapBackoff:    c.Results.SwapBackoff,
		FileMode:       c.SSH.mode,
		NoBinlogPools:  true, // openNode's replica and publish pools
		// openNode's publish pool: the fence goes with the publish lock.
		MultiStatementPools: true,
		Verify:              c.Results.Verify,
		NoSync:              c.Results.Sync != nil && !*c.Results.Sync,
	}.WithDefaults()
}

func (c *Config) procsConfig() procs.Config {
	return procs.Config{
		Procedure: c.Procedure.Name, Marker: c.Procedure.Marker, Timeout: c.Procedure.Timeout, LogDir: c.Worker.LogDir,
	}.WithDefaults()
}

func (c *Config) gateConfig() monitor.GateConfig {
	return monitor.GateConfig{
		MaxLag: c.Lag.MaxLag, StoppedBackoff: c.Lag.StoppedBackoff, BehindBackoff: c.Lag.BehindBackoff, SampleInterval: c.Lag.SampleInterval,
	}.WithDefaults()
}

func (c *Config) throttleConfig() monitor.ThrottleConfig {
	t := c.Throttle
	return monitor.ThrottleConfig{
		MaxThreadsRunning: t.MaxThreadsRunning, URL: t.URL, URLTimeout: t.URLTimeout, SampleInterval: t.SampleInterval,
		MaxConcurrentPublishes: t.MaxConcurrentPublishes, PublishWait: t.PublishWait,
	}.WithDefaults()
}

// validateWorker validates every section a worker uses, in order, so the
// first problem is reported in plain words.
func (c *Config) validateWorker() error {
	if err := c.requireWorkerSections(); err != nil {
		return err
	}
	c.Worker = c.Worker.WithDefaults(c.Topics.Lease)
	if err := c.Worker.Validate(c.Topics.Lease); err != nil {
		return err
	}
	if err := c.transferConfig().Validate(); err != nil {
		return err
	}
	if err := c.procsConfig().Validate(); err != nil {
		return err
	}
	return c.gateConfig().Validate()
}

// openPool opens a worker pool. Arguments are interpolated by the driver
// (escaped for the connection's character set, as gh-ost does) instead of
// server-side prepared statements: a one-off query with arguments is then
// one round trip, not a PREPARE, an EXECUTE and a CLOSE.
func openPool(mc *mysql.Config, conns int) (*sql.DB, error) {
	mc = mc.Clone()
	mc.InterpolateParams = true
	conn, err := mysql.NewConnector(mc)
	if err != nil {
		return nil, err
	}
	db := sql.OpenDB(conn)
	db.SetMaxOpenConns(conns)
	db.SetMaxIdleConns(conns)
	db.SetConnMaxIdleTime(5 * time.Minute)
	return db, nil
}

// noBinlog returns mc with sql_log_bin=0 set on every new session (needs
// SUPER or BINLOG ADMIN, which a worker needs anyway).
func noBinlog(mc *mysql.Config) *mysql.Config {
	mc = mc.Clone()
	if mc.Params == nil {
		mc.Params = map[string]string{}
	}
	mc.Params["sql_log_bin"] = "0"
	return mc
}

// maxPrimaryConns, maxPublishConns and maxQueueConns cap a worker
// process's three primary pools: the primary's connections grow with
// processes, not with instances (at most 40 per process). Publishes beyond
// maxPublishConns wait for a session, as they wait for a publish slot; the
// queue's statements are short and a process's claims are combined, so
// 16 sessions serve claims, lease heartbeats and finishes of a process
// with a thousand instances (bench scenario 9).
const (
	maxPrimaryConns = 16
	maxPublishConns = 8
	maxQueueConns   = 16
)

// openNode connects to both servers and the primary's SSH, and reads what
// the worker needs from its replica. On error everything opened is closed.
func openNode(ctx context.Context, c *Config, instances int, log *slog.Logger) (_ *node, err error) {
	n := &node{cfg: c, log: log}
	defer func() {
		if err != nil {
			n.close()
		}
	}()
	if n.queue, err = openQueue(ctx, c); err != nil {
		return nil, err
	}
	n.queue.DB().SetMaxOpenConns(maxQueueConns)
	n.queue.DB().SetMaxIdleConns(maxQueueConns)
	pmc, err := c.Primary.MySQL("primary")
	if err != nil {
		return nil, err
	}
	// With the pipeline (worker.Config.Pipeline), an instance has up to
	// two runs at once: one computing, one shipping.
	runs := instances
	if c.Worker.Pipelined() {
		runs = 2 * instances
	}
	// Both primary pools are capped per process, whatever the instance
	// count (docs/operations.md, "Connections"): their statements are
	// short, and a fleet of hundreds of instances must not hold one
	// primary connection or more each.
	if n.primary, err = openPool(pmc, min(runs+4, maxPrimaryConns)); err != nil {
		return nil, fmt.Errorf("open primary: %w", err)
	}
	// A capped publish holds its slot on its own session: no extra
	// connection. The throttle's sample borrows one of primary's.
	pub := noBinlog(pmc)
	pub.MultiStatements = true // transfer.Config.MultiStatementPools
	if n.publish, err = openPool(pub, min(instances+2, maxPublishConns)); err != nil {
		return nil, fmt.Errorf("open primary: %w", err)
	}
	rmc, err := c.Replica.MySQL("replica")
	if err != nil {
		return nil, err
	}
	// The procedure, the export lock and the GTID wait each hold a
	// connection per run.
	if n.replica, err = openPool(noBinlog(rmc), 3*runs+4); err != nil {
		return nil, fmt.Errorf("open replica: %w", err)
	}
	if err := n.replica.PingContext(ctx); err != nil {
		return nil, fmt.Errorf("connect to replica %s: %w", c.Replica.addr(), err)
	}
	if n.flavor, err = flavor.Detect(ctx, n.replica); err != nil {
		return nil, fmt.Errorf("replica %s: %w", c.Replica.addr(), err)
	}
	if err := n.replica.QueryRowContext(ctx, "SELECT @@server_id, @@datadir").Scan(&n.serverID, &n.datadir); err != nil {
		return nil, fmt.Errorf("read replica %s's server_id and datadir: %w", c.Replica.addr(), err)
	}
	if n.shipper, err = transfer.NewShipper(c.transferConfig(), log); err != nil {
		return nil, err
	}
	if err := n.shipper.Connect(ctx); err != nil {
		return nil, err
	}
	n.runner = &procs.Runner{DB: n.replica, Config: c.procsConfig(), Logger: log}
	n.gate = &monitor.Gate{Replica: n.replica, Flavor: n.flavor, Schema: c.Topics.MetaSchema, WriterID: n.serverID,
		Config: c.gateConfig(), Logger: log}
	n.pause = &monitor.PauseWatch{Pauses: &monitor.Pauses{Primary: n.primary, Schema: c.Topics.MetaSchema},
		ServerID: n.serverID, Config: c.gateConfig(), Logger: log}
	tc := c.throttleConfig()
	n.throttle = &monitor.Throttle{Primary: n.primary, Config: tc, Logger: log}
	n.slots = &monitor.PublishSlots{Schema: c.Topics.MetaSchema, Max: tc.MaxConcurrentPublishes, Wait: tc.PublishWait}
	return n, nil
}

func (n *node) close() {
	if n.shipper != nil {
		n.shipper.Close()
	}
	for _, db := range []*sql.DB{n.primary, n.publish, n.replica} {
		if db != nil {
			db.Close()
		}
	}
	if n.queue != nil {
		n.queue.Close()
	}
}

func runWork(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("work", stderr)
	path := fs.String("config", "", "configuration file (TOML)")
	count := fs.Int("instances", 0, "run instances 1..N in this process")
	one := fs.Int("instance", 0, "run only instance K (one process per instance, e.g. under systemd)")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	metricsListen := fs.String("metrics-listen", "", "serve Prometheus metrics on `ADDR` (host:port) at /metrics; off when empty; unauthenticated, so prefer a loopback address such as 127.0.0.1:9464")
	if _, err := parseInterleaved(fs, args); err != nil {
		return err
	}
	if err := checkMetricsListen(*metricsListen); err != nil {
		return err
	}
	if err := requireConfig("work", *path); err != nil {
		return err
	}
	if (*count > 0) == (*one > 0) {
		return errors.New("give exactly one of --instances N and --instance K")
	}
	logger, err := textLogger(stderr, *level)
	if err != nil {
		return err
	}
	c, err := LoadConfig(*path)
	if err != nil {
		return err
	}
	if err := c.validateWorker(); err != nil {
		return err
	}
	// GOMAXPROCS in the environment is the operator's explicit choice.
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(c.Worker.MaxProcs)
	}
	logger.Info("worker starting", "version", version, "max_procs", runtime.GOMAXPROCS(0))
	numbers := []int{*one}
	if *count > 0 {
		numbers = numbers[:0]
		for i := 1; i <= *count; i++ {
			numbers = append(numbers, i)
		}
	}
	for _, k := range numbers {
		if _, err := c.Worker.InstanceID(c.Worker.IDBase+1, k); err != nil {
			return err
		}
	}

	// Two-stage stop: the first signal (ctx) stops claiming; the grace
	// period or a second signal cancels runs in flight.
	hard, cancelHard := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHard()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		seen := 0
		for {
			select {
			case <-hard.Done():
				return
			case <-sigs:
				if seen++; seen >= 2 {
					logger.Warn("second signal: stopping runs now")
					cancelHard()
				}
			}
		}
	}()
	stopGrace := context.AfterFunc(ctx, func() {
		logger.Info("stopping: no new claims; runs in flight get the grace period", "grace", c.Worker.GracePeriod)
		time.AfterFunc(c.Worker.GracePeriod, cancelHard)
	})
	defer stopGrace()

	// A worker host may boot before its primary: wait for the servers
	// (docs/operations.md, "Running workers").
	n, err := openWithRetry(ctx, logger, "worker start", c.Worker.StartTimeout, func(ctx context.Context) (*node, error) {
		return openNode(ctx, c, len(numbers), logger)
	})
	if err != nil {
		if ctx.Err() != nil {
			logger.Info("stopped while waiting for the servers")
			return nil // a stop, as after instances ran
		}
		return err
	}
	defer n.close()
	if _, err := monitor.CheckLocalDomain(ctx, n.flavor, n.primary, n.replica); errors.Is(err, monitor.ErrSharedDomain) {
		logger.Warn("replication at risk after a crash of this replica", "err", err)
	} else if err != nil {
		logger.Warn("check the replica's GTID domain", "err", err)
	}
	// On hard, not ctx: scrapes keep working through the grace period.
	wm, err := startWorkerMetrics(hard, *metricsListen, n.queue, n.gate, n.throttle, n.pause, n.shipper.PendingDrops, logger)
	if err != nil {
		return err
	}
	defer wm.Stop()
	pool := &worker.Pool{
		Config: c.Worker, ServerID: n.serverID, Numbers: numbers, Version: version,
		Deps: &worker.Deps{
			Queue: n.queue, History: &monitor.History{Primary: n.primary, Schema: c.Topics.MetaSchema},
			Gate: n.gate, Pause: n.pause, Throttle: n.throttle, Slots: n.slots, Flavor: n.flavor, Primary: n.publish, Replica: n.replica, Runner: n.runner, Shipper: n.shipper,
			ReplicaDatadir: n.datadir, ReplicaName: c.Replica.addr(), Logger: logger,
			Observer: wm.observer(), StateFunc: wm.stateFunc(), ReapedFunc: wm.reapedFunc(),
		},
		Heartbeat: &monitor.Heartbeat{Primary: n.primary, Schema: c.Topics.MetaSchema, WriterID: n.serverID, Logger: logger},
	}
	return pool.Run(ctx, hard)
}
