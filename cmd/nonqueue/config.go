package main

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/go-sql-driver/mysql"

	"github.com/nonqueue/nonqueue/queue"
	"github.com/nonqueue/nonqueue/worker"
	"github.com/nonqueue/nonqueue/worker/follow"
)

// ErrConfig is wrapped by every configuration error.
var ErrConfig = errors.New("invalid configuration")

// ConfigError names the key that is wrong; it never holds a secret.
type ConfigError struct {
	Key string
	Err error
}

func (e *ConfigError) Error() string { return fmt.Sprintf("config %s: %v", e.Key, e.Err) }

// Unwrap lets errors.Is find ErrConfig and the cause.
func (e *ConfigError) Unwrap() []error { return []error{ErrConfig, e.Err} }

// Server is how to reach one MariaDB server. The password may come from
// the file, from the environment variable PasswordEnv, or from
// NONQUEUE_<SECTION>_PASSWORD; it is never logged.
type Server struct {
	Host        string `toml:"host"`   // default 127.0.0.1
	Port        int    `toml:"port"`   // default 3306
	Socket      string `toml:"socket"` // unix socket; overrides host and port
	User        string `toml:"user"`
	Password    string `toml:"password"`
	PasswordEnv string `toml:"password_env"`
}

// LogValue keeps the password out of logs.
func (s Server) LogValue() slog.Value {
	return slog.GroupValue(slog.String("addr", s.addr()), slog.String("user", s.User))
}

func (s Server) addr() string {
	if s.Socket != "" {
		return s.Socket
	}
	return fmt.Sprintf("%s:%d", s.Host, s.Port)
}

func (s Server) withDefaults() Server {
	s.Host = cmp.Or(s.Host, "127.0.0.1")
	s.Port = cmp.Or(s.Port, 3306)
	return s
}

func (s Server) validate(section string) error {
	if s.User == "" {
		return &ConfigError{Key: section + ".user", Err: errors.New("is required")}
	}
	if s.Port < 1 || s.Port > 65535 {
		return &ConfigError{Key: section + ".port", Err: fmt.Errorf("%d is not a TCP port", s.Port)}
	}
	return nil
}

// MySQL returns the driver configuration; section names the default
// password variable.
func (s Server) MySQL(section string) (*mysql.Config, error) {
	pw := s.Password
	env := cmp.Or(s.PasswordEnv, "NONQUEUE_"+strings.ToUpper(section)+"_PASSWORD")
	if v, ok := os.LookupEnv(env); ok && pw == "" {
		pw = v
	} else if s.PasswordEnv != "" && pw == "" {
		return nil, &ConfigError{Key: section + ".password_env", Err: fmt.Errorf("environment variable %s is not set", env)}
	}
	mc := mysql.NewConfig()
	mc.User, mc.Passwd = s.User, pw
	if s.Socket != "" {
		mc.Net, mc.Addr = "unix", s.Socket
	} else {
		mc.Net, mc.Addr = "tcp", fmt.Sprintf("%s:%d", s.Host, s.Port)
	}
	mc.ParseTime = true
	return mc, nil
}

// SSH is how workers reach the primary's host to ship result tables.
type SSH struct {
	Host       string `toml:"host"`
	Port       int    `toml:"port"` // default 22
	User       string `toml:"user"`
	KeyFile    string `toml:"key_file"`
	KnownHosts string `toml:"known_hosts"` // required: host keys are always checked
	Datadir    string `toml:"datadir"`     // the primary's datadir as seen over SFTP
	// FileMode ("0660") is applied to shipped files; leave it unset when
	// User is the user mysqld runs as (recommended).
	FileMode string `toml:"file_mode"`
	// Bounds of the transfer (transfer.SSHConfig): zero takes the default.
	DialTimeout       time.Duration `toml:"dial_timeout"`       // connect, handshake, SFTP start; default 10s
	KeepaliveInterval time.Duration `toml:"keepalive_interval"` // default 5s
	KeepaliveTimeout  time.Duration `toml:"keepalive_timeout"`  // no reply: the connection is dead; default 10s
	StallTimeout      time.Duration `toml:"stall_timeout"`      // a step with no progress is abandoned; default 10s
	MinThroughput     int           `toml:"min_throughput"`     // MiB/s, sizes fsync and cksum deadlines; default 4

	mode os.FileMode
}

// Procedure is the [procedure] section: what a run calls on the replica.
type Procedure struct {
	Name    string        `toml:"name"`    // "schema.procedure", called as name(topic_id, scope)
	Marker  string        `toml:"marker"`  // success needs this text in the last result set ("SUMMARY")
	Timeout time.Duration `toml:"timeout"` // the query is killed after this; default 1h
}

// Results is the [results] section: the tables a run produces.
type Results struct {
	Schema     string   `toml:"schema"`      // same schema on replica and primary
	Tables     []string `toml:"tables"`      // templates such as "Dynamics_{id}"
	BackupDir  string   `toml:"backup_dir"`  // optional local copy of shipped files
	BackupKeep int      `toml:"backup_keep"` // copies kept per topic; default 3
	// LockWait bounds each wait of a publish's RENAME (and of the DROPs
	// on the primary) for a result table's metadata lock, and so how long
	// a publish can stall the application's reads of it: default 1s,
	// whole seconds. SwapTries (default 14) and SwapBackoff (the longest
	// pause between tries, default 4s) say how long a publish keeps trying
	// while a long query holds the table before it gives up with "result
	// table busy". See transfer.Config.
	LockWait    time.Duration `toml:"lock_wait"`
	SwapTries   int           `toml:"swap_tries"`
	SwapBackoff time.Duration `toml:"swap_backoff"`
	// Verify: "bytes" (default: small files read back over SFTP, big
	// ones compared by cksum on both hosts where it runs; "cksum" is its
	// former name) or "checksum" (CHECKSUM TABLE on both servers, a read
	// per row on each). See transfer.Config.Verify.
	Verify string `toml:"verify"`
	// Sync: fsync every shipped file on the primary's host before it is
	// verified and swapped in (fsync@openssh.com); default true.
	Sync *bool `toml:"sync"`
}

// Lag is the [lag] section: the lag gate.
type Lag struct {
	MaxLag         time.Duration `toml:"max_lag"`         // default 2s
	StoppedBackoff time.Duration `toml:"stopped_backoff"` // default 60s
	BehindBackoff  time.Duration `toml:"behind_backoff"`  // default 2s
	SampleInterval time.Duration `toml:"sample_interval"` // default 250ms
}

// Throttle is the [throttle] section: yielding to the primary (see
// monitor.ThrottleConfig). Every check is off by default.
type Throttle struct {
	MaxThreadsRunning      int           `toml:"max_threads_running"`      // the primary's Threads_running above this closes the throttle; off when absent
	URL                    string        `toml:"throttle_url"`             // freno-style check: only HTTP 200 lets work through; off when absent
	URLTimeout             time.Duration `toml:"throttle_url_timeout"`     // no answer within this closes the throttle; default 1s
	SampleInterval         time.Duration `toml:"sample_interval"`          // each process reads Threads_running and asks the URL this often; default 1s
	MaxConcurrentPublishes int           `toml:"max_concurrent_publishes"` // fleet-wide cap on publishes at once on the primary; no cap when absent
	PublishWait            time.Duration `toml:"publish_wait"`             // a finished run waits at most this for the throttle and a slot; default 10m
}

// Config is the whole configuration file.
type Config struct {
	Primary   Server          `toml:"primary"`
	Replica   Server          `toml:"replica"`
	Topics    queue.Config    `toml:"topics"`
	SSH       SSH             `toml:"ssh"`
	Worker    worker.Config   `toml:"worker"`
	Procedure Procedure       `toml:"procedure"`
	Results   Results         `toml:"results"`
	Lag       Lag             `toml:"lag"`
	Throttle  Throttle        `toml:"throttle"`
	Dashboard DashboardConfig `toml:"dashboard"`
	// Follower and Follow: the binlog follower (nonqueue follow).
	Follower follow.Config `toml:"follower"`
	Follow   []follow.Rule `toml:"follow"`

	path string
}

// LoadConfig reads and validates a TOML configuration file. Unknown keys
// are errors, so a typo never silently falls back to a default.
func LoadConfig(path string) (*Config, error) {
	var c Config
	md, err := toml.DecodeFile(path, &c)
	if err != nil {
		return nil, fmt.Errorf("read config %s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return nil, &ConfigError{Key: keys[0], Err: fmt.Errorf("unknown key (all unknown: %s)", strings.Join(keys, ", "))}
	}
	if err := checkExplicitZeros(md, &c); err != nil {
		return nil, err
	}
	c.path = path
	c.Primary = c.Primary.withDefaults()
	c.Topics = c.Topics.WithDefaults()
	if err := c.Primary.validate("primary"); err != nil {
		return nil, err
	}
	if err := c.Topics.Validate(); err != nil {
		return nil, err
	}
	if md.IsDefined("replica") {
		c.Replica = c.Replica.withDefaults()
		if err := c.Replica.validate("replica"); err != nil {
			return nil, err
		}
	}
	for i := range c.Dashboard.Replicas {
		c.Dashboard.Replicas[i] = c.Dashboard.Replicas[i].withDefaults()
		if err := c.Dashboard.Replicas[i].validate(fmt.Sprintf("dashboard.replicas[%d]", i)); err != nil {
			return nil, err
		}
	}
	// Zero means "the default" in transfer.Config; written in the file it
	// is a mistake (no wait at all, no try), not a request for the default.
	for _, k := range []struct {
		key  string
		zero bool
	}{{"lock_wait", c.Results.LockWait == 0}, {"swap_tries", c.Results.SwapTries == 0}, {"swap_backoff", c.Results.SwapBackoff == 0}} {
		if md.IsDefined("results", k.key) && k.zero {
			return nil, &ConfigError{Key: "results." + k.key, Err: errors.New("is zero: leave it out for the default, or give a positive value")}
		}
	}
	if err := c.transferConfig().ValidateSwap(); err != nil {
		return nil, err
	}
	if err := c.throttleConfig().Validate(); err != nil {
		return nil, err
	}
	if err := c.validateFollow(md.IsDefined("follower")); err != nil {
		return nil, err
	}
	if md.IsDefined("ssh") {
		c.SSH.Port = cmp.Or(c.SSH.Port, 22)
		for _, f := range []struct{ key, v string }{{"host", c.SSH.Host}, {"user", c.SSH.User}, {"key_file", c.SSH.KeyFile}, {"known_hosts", c.SSH.KnownHosts}, {"datadir", c.SSH.Datadir}} {
			if f.v == "" {
				return nil, &ConfigError{Key: "ssh." + f.key, Err: errors.New("is required")}
			}
		}
		if c.SSH.FileMode != "" {
			m, err := strconv.ParseUint(c.SSH.FileMode, 8, 32)
			if err != nil || m > 0o777 {
				return nil, &ConfigError{Key: "ssh.file_mode", Err: fmt.Errorf("%q: want an octal mode such as \"0660\"", c.SSH.FileMode)}
			}
			c.SSH.mode = os.FileMode(m)
		}
		for _, p := range []*string{&c.SSH.KeyFile, &c.SSH.KnownHosts} {
			if !filepath.IsAbs(*p) {
				*p = filepath.Join(filepath.Dir(path), *p)
			}
		}
	}
	return &c, nil
}
