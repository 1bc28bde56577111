package worker

import (
	"cmp"
	"errors"
	"fmt"
	"time"
)

// Defaults for Config fields left zero.
const (
	DefaultIDBase       = 1000
	DefaultIDMultiplier = 100
	DefaultIdleWait     = 750 * time.Millisecond
	DefaultGTIDWait     = 10 * time.Second
	DefaultGTIDBackoff  = 30 * time.Second
	DefaultGracePeriod  = 20 * time.Second
	DefaultBackoffBase  = 10 * time.Second
	DefaultBackoffMax   = 10 * time.Minute
	DefaultLogDir       = "/var/log/nonqueue"
	DefaultMaxProcs     = 1
)

// ErrConfig is wrapped by every *ConfigError.
var ErrConfig = errors.New("invalid worker configuration")

// ConfigError names the worker setting that is wrong.
type ConfigError struct {
	Field string
	Err   error
}

func (e *ConfigError) Error() string { return fmt.Sprintf("worker.%s: %v", e.Field, e.Err) }

// Unwrap lets errors.Is find ErrConfig and the cause.
func (e *ConfigError) Unwrap() []error { return []error{ErrConfig, e.Err} }

// Config is how instances behave. Durations are time.Duration; in the TOML
// file they are strings such as "500ms".
type Config struct {
	// MinPriority: instances claim only topics with at least this priority.
	MinPriority int64 `toml:"min_priority"`
	// IDBase and IDMultiplier make instance ids:
	// (replica @@server_id − IDBase) × IDMultiplier + instance number, the
	// original's (server_id−1000)×100+instance by default. Instance numbers
	// run 1..IDMultiplier−1, so ids are stable across restarts and unique
	// across replicas whose server ids differ.
	IDBase       uint32 `toml:"id_base"`
	IDMultiplier int64  `toml:"id_multiplier"`
	// IdleWait is how long an instance waits before looking again when no
	// topic is due; default 750ms. An idle process looks once per
	// IdleWait whatever its instance count (its probe), so a newly due
	// topic is claimed within IdleWait plus a round trip or two, and an
	// idle process costs the primary 1/IdleWait queries per second plus
	// the registry refresh.
	IdleWait time.Duration `toml:"idle_wait"`
	// HeartbeatInterval renews a claim's lease while it runs; default a
	// quarter of the lease.
	HeartbeatInterval time.Duration `toml:"heartbeat_interval"`
	// GTIDWait bounds the wait for the replica to reach the primary's
	// position after a claim; on timeout the claim is released for a
	// fresher replica. Default 10s; must be shorter than the lease.
	GTIDWait time.Duration `toml:"gtid_wait"`
	// GTIDBackoff is how long this process's instances (all of them: they
	// share the replica) claim nothing after a GTID wait timed out: the
	// replica proved itself behind, and the released topic, due again at
	// once, is left to fresher replicas instead of being claimed here again
	// and again. Default 30s.
	GTIDBackoff time.Duration `toml:"gtid_backoff"`
	// GracePeriod is how long a stopping instance may take to finish its
	// run before it is cancelled and the claim released; default 20s.
	GracePeriod time.Duration `toml:"grace_period"`
	// BackoffBase and BackoffMax: after the n-th failed attempt a topic is
	// not due before now + min(BackoffBase × 2^(n−1), BackoffMax).
	BackoffBase time.Duration `toml:"backoff_base"`
	BackoffMax  time.Duration `toml:"backoff_max"`
	// ReapInterval is how often this process looks for expired leases;
	// default 5s.
	ReapInterval time.Duration `toml:"reap_interval"`
	// LogDir receives the run logs (result sets, warnings, outcome): one
	// file per topic, <topic>.log, rewritten by each of its runs, and
	// <topic>.failed.log, the last failed run's. One directory per topic
	// table: topics of two tables would share names.
	LogDir string `toml:"log_dir"`
	// MaxProcs is how many threads may run the process's Go code at once
	// (GOMAXPROCS); default 1. A worker orchestrates I/O next to its
	// replica's mariadbd: at one per CPU, Go's idle schedulers spin and wake
	// threads on every network event, CPU the database needs. The
	// GOMAXPROCS environment variable overrides it.
	MaxProcs int `toml:"max_procs"`
	// Pipeline lets an instance claim and compute its next topic while
	// the last one's results are still being shipped and published (at
	// most one shipment in flight per instance); default true. Shipping
	// and publishing are waits on the network and the primary, not work
	// on the replica: without the overlap, every run's procedure slot
	// stays idle for them, and N instances keep fewer than N procedures
	// running. The shipment keeps its own claim, lease heartbeat and
	// fenced finish. false runs each topic to its end before the next
	// claim.
	Pipeline *bool `toml:"pipeline"`
	// StartTimeout bounds how long `nonqueue work` waits at start-up for
	// its primary, replica and the primary's sshd to be reachable before it
	// exits with the last error; 0, the default, waits as long as it takes,
	// as a daemon whose host may boot before its database should. Only
	// transient failures are waited out (a wrong password fails at once).
	// The command uses it; instances do not.
	StartTimeout time.Duration `toml:"start_timeout"`
}

// Pipelined reports whether Pipeline is on (nil: the default, on).
func (c Config) Pipelined() bool { return c.Pipeline == nil || *c.Pipeline }

// WithDefaults fills zero fields; lease is the queue's lease.
func (c Config) WithDefaults(lease time.Duration) Config {
	c.IDBase = cmp.Or(c.IDBase, DefaultIDBase)
	c.IDMultiplier = cmp.Or(c.IDMultiplier, DefaultIDMultiplier)
	c.IdleWait = cmp.Or(c.IdleWait, DefaultIdleWait)
	c.HeartbeatInterval = cmp.Or(c.HeartbeatInterval, lease/4)
	c.GTIDWait = cmp.Or(c.GTIDWait, min(DefaultGTIDWait, lease/2))
	c.GTIDBackoff = cmp.Or(c.GTIDBackoff, DefaultGTIDBackoff)
	c.GracePeriod = cmp.Or(c.GracePeriod, min(DefaultGracePeriod, lease*2/3))
	c.BackoffBase = cmp.Or(c.BackoffBase, DefaultBackoffBase)
	c.BackoffMax = cmp.Or(c.BackoffMax, max(DefaultBackoffMax, c.BackoffBase))
	c.LogDir = cmp.Or(c.LogDir, DefaultLogDir)
	c.ReapInterval = cmp.Or(c.ReapInterval, min(5*time.Second, lease/2))
	c.MaxProcs = cmp.Or(c.MaxProcs, DefaultMaxProcs)
	return c
}

// Validate checks ranges and the rules between settings and the lease:
// the lease must outlive three heartbeats, and the GTID wait and the grace
// period must end before it, or a healthy instance could lose its claim.
func (c Config) Validate(lease time.Duration) error {
	switch {
	case c.IDMultiplier < 2:
		return &ConfigError{"id_multiplier", fmt.Errorf("%d: want at least 2", c.IDMultiplier)}
	case c.IdleWait <= 0:
		return &ConfigError{"idle_wait", errors.New("must be positive")}
	case c.HeartbeatInterval <= 0 || lease <= 3*c.HeartbeatInterval:
		return &ConfigError{"heartbeat_interval", fmt.Errorf("%v: the lease (%v) must be longer than 3 heartbeats", c.HeartbeatInterval, lease)}
	case c.GTIDWait <= 0 || c.GTIDWait >= lease:
		return &ConfigError{"gtid_wait", fmt.Errorf("%v: must be positive and shorter than the lease (%v)", c.GTIDWait, lease)}
	case c.GTIDBackoff <= 0:
		return &ConfigError{"gtid_backoff", fmt.Errorf("%v: must be positive", c.GTIDBackoff)}
	case c.GracePeriod <= 0 || c.GracePeriod >= lease:
		return &ConfigError{"grace_period", fmt.Errorf("%v: must be positive and shorter than the lease (%v)", c.GracePeriod, lease)}
	case c.BackoffBase <= 0 || c.BackoffMax < c.BackoffBase:
		return &ConfigError{"backoff_max", fmt.Errorf("want 0 < backoff_base (%v) <= backoff_max (%v)", c.BackoffBase, c.BackoffMax)}
	case c.LogDir == "":
		return &ConfigError{"log_dir", errors.New("is required")}
	case c.MaxProcs < 0:
		return &ConfigError{"max_procs", fmt.Errorf("%d: want 1 or more", c.MaxProcs)}
	case c.StartTimeout < 0:
		return &ConfigError{"start_timeout", fmt.Errorf("%v: want 0 (wait as long as it takes) or a positive duration", c.StartTimeout)}
	}
	return nil
}

// InstanceID derives instance number n's id from the replica's server id.
func (c Config) InstanceID(serverID uint32, n int) (int64, error) {
	if n < 1 || int64(n) >= c.IDMultiplier {
		return 0, &ConfigError{"instances", fmt.Errorf("instance number %d: want 1..%d", n, c.IDMultiplier-1)}
	}
	if serverID <= c.IDBase {
		return 0, &ConfigError{"id_base", fmt.Errorf("replica server_id %d is not above id_base %d", serverID, c.IDBase)}
	}
	return int64(serverID-c.IDBase)*c.IDMultiplier + int64(n), nil
}

// Backoff is the wait after the attempts-th failed attempt (1-based).
func (c Config) Backoff(attempts int) time.Duration {
	d := c.BackoffBase
	for i := 1; i < attempts && d < c.BackoffMax; i++ {
		d *= 2
	}
	return min(d, c.BackoffMax)
}
