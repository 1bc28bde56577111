package follow

import (
	"cmp"
	"errors"
	"fmt"
	"hash/crc32"
	"regexp"
	"strings"
	"time"

	"github.com/nonqueue/nonqueue/internal/ident"
	"github.com/nonqueue/nonqueue/internal/sqlcheck"
	"github.com/nonqueue/nonqueue/queue"
)

// Defaults for Config fields left zero.
const (
	DefaultName          = "default"
	DefaultFlushInterval = 200 * time.Millisecond
	DefaultLockPoll      = time.Second
	// DefaultSaveInterval: a position that moved without a followed change
	// (other tables' writes) is saved at most this often.
	DefaultSaveInterval = time.Second
)

// Sources a follower reads the binlog of.
const (
	SourceReplica = "replica"
	SourcePrimary = "primary"
)

// ErrConfig is wrapped by every *ConfigError.
var ErrConfig = errors.New("invalid follower configuration")

// ConfigError names the follower setting that is wrong.
type ConfigError struct {
	Field string // "follower.name", "follow[0].table"
	Err   error
}

func (e *ConfigError) Error() string { return fmt.Sprintf("%s: %v", e.Field, e.Err) }

// Unwrap lets errors.Is find ErrConfig and the cause.
func (e *ConfigError) Unwrap() []error { return []error{ErrConfig, e.Err} }

// Config is the [follower] section: who follows and how often it commits.
type Config struct {
	// Name: followers of one name share one position and one lock on the
	// primary, so one of them is active; default "default".
	Name string `toml:"name"`
	// Source: "replica" (default: the [replica] server's binlog, which has
	// the primary's changes with log_slave_updates) or "primary".
	Source string `toml:"source"`
	// ServerID is the replication server id the follower registers with
	// on its source; it must differ from every server's and other
	// follower's id. Default: derived from the name (4,000,000,000 plus
	// a hash).
	ServerID uint32 `toml:"server_id"`
	// FlushInterval: changes read are requested (with the position) at
	// least this often; default 200ms.
	FlushInterval time.Duration `toml:"flush_interval"`
	// LockPoll: a standby tries to take the lock this often, and an
	// active follower that failed retries after it; default 1s.
	LockPoll time.Duration `toml:"lock_poll"`
}

// WithDefaults fills zero fields.
func (c Config) WithDefaults() Config {
	c.Name = cmp.Or(c.Name, DefaultName)
	c.Source = cmp.Or(c.Source, SourceReplica)
	c.FlushInterval = cmp.Or(c.FlushInterval, DefaultFlushInterval)
	c.LockPoll = cmp.Or(c.LockPoll, DefaultLockPoll)
	if c.ServerID == 0 {
		c.ServerID = 4_000_000_000 + crc32.ChecksumIEEE([]byte(c.Name))%200_000_000
	}
	return c
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

// Validate checks a configuration with defaults filled.
func (c Config) Validate() error {
	if !nameRE.MatchString(c.Name) {
		return &ConfigError{Field: "follower.name", Err: fmt.Errorf("%q: want 1 to 64 letters, digits, '_', '.' or '-'", c.Name)}
	}
	if c.Source != SourceReplica && c.Source != SourcePrimary {
		return &ConfigError{Field: "follower.source", Err: fmt.Errorf("%q: want %q or %q", c.Source, SourceReplica, SourcePrimary)}
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{{"flush_interval", c.FlushInterval}, {"lock_poll", c.LockPoll}} {
		if d.v <= 0 {
			return &ConfigError{Field: "follower." + d.key, Err: fmt.Errorf("%v: must be positive", d.v)}
		}
	}
	return nil
}

// Rule is one [[follow]] entry: a source table whose row changes request
// topics.
type Rule struct {
	// Table: "schema.table" on the source.
	Table string `toml:"table"`
	// TopicColumn holds the topic id in each row: on INSERT and DELETE the
	// row's id, on UPDATE both the old and the new one.
	TopicColumn string `toml:"topic_column"`
	// KeyColumn and Lookup: the indirect mapping. The changed rows' key
	// values (old and new) are passed, one at a time, as the one "?" of
	// Lookup, a plain SELECT run on the replica whose first column gives
	// topic ids.
	KeyColumn string `toml:"key_column"`
	Lookup    string `toml:"lookup"`
	// Scope: "full" (default) or "partial".
	Scope string `toml:"scope"`
	// After: a change requests its topic not before its commit plus this
	// (0: at once). A pending request keeps its earlier date, so a burst
	// of changes within After makes one run.
	After time.Duration `toml:"after"`
	// Priority, if set, replaces the requested topics' priority.
	Priority *int64 `toml:"priority"`
}

// compiled is a Rule checked and split for the hot path.
type compiled struct {
	Rule
	schema, table string
	column        string // topic_column or key_column
	scope         int
	lookup        string
	group         groupKey
}

// groupKey: the requests of one flush are grouped by what their
// RequestParams share.
type groupKey struct {
	scope   int
	after   time.Duration
	prio    int64
	hasPrio bool
}

// ValidateRules checks the [[follow]] entries and compiles them.
func ValidateRules(rules []Rule) error {
	_, err := compileRules(rules)
	return err
}

func compileRules(rules []Rule) ([]*compiled, error) {
	if len(rules) == 0 {
		return nil, &ConfigError{Field: "follow", Err: errors.New("no [[follow]] table: give at least one table to follow")}
	}
	out := make([]*compiled, 0, len(rules))
	for i, r := range rules {
		key := func(k string) string { return fmt.Sprintf("follow[%d].%s", i, k) }
		c := &compiled{Rule: r}
		var ok bool
		c.schema, c.table, ok = strings.Cut(r.Table, ".")
		if !ok {
			return nil, &ConfigError{Field: key("table"), Err: fmt.Errorf("%q: want schema.table", r.Table)}
		}
		for _, n := range []string{c.schema, c.table} {
			if err := ident.Validate(n); err != nil {
				return nil, &ConfigError{Field: key("table"), Err: err}
			}
		}
		switch {
		case r.TopicColumn != "" && (r.KeyColumn != "" || r.Lookup != ""):
			return nil, &ConfigError{Field: key("topic_column"), Err: errors.New("give topic_column, or key_column with lookup, not both")}
		case r.TopicColumn != "":
			c.column = r.TopicColumn
		case r.KeyColumn == "" || r.Lookup == "":
			return nil, &ConfigError{Field: key("topic_column"), Err: errors.New("is required (or key_column with lookup)")}
		default:
			c.column = r.KeyColumn
			stmt, err := sqlcheck.PlainSelect(r.Lookup)
			if err != nil {
				return nil, &ConfigError{Field: key("lookup"), Err: err}
			}
			if n := strings.Count(stmt, "?"); n != 1 {
				return nil, &ConfigError{Field: key("lookup"), Err: fmt.Errorf("has %d '?': want exactly one, where the changed key goes", n)}
			}
			c.lookup = stmt
		}
		if err := ident.Validate(c.column); err != nil {
			return nil, &ConfigError{Field: key("topic_column"), Err: err}
		}
		switch strings.ToLower(cmp.Or(r.Scope, "full")) {
		case "full", "2":
			c.scope = queue.ScopeFull
		case "partial", "1":
			c.scope = queue.ScopePartial
		default:
			return nil, &ConfigError{Field: key("scope"), Err: fmt.Errorf("%q: want full or partial", r.Scope)}
		}
		if r.After < 0 {
			return nil, &ConfigError{Field: key("after"), Err: fmt.Errorf("%v: must not be negative", r.After)}
		}
		c.group = groupKey{scope: c.scope, after: r.After}
		if r.Priority != nil {
			c.group.prio, c.group.hasPrio = *r.Priority, true
		}
		out = append(out, c)
	}
	return out, nil
}
