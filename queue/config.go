package queue

import (
	"cmp"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nonqueue/nonqueue/internal/ident"
)

// Defaults for Config fields left zero.
const (
	DefaultSchema      = "nonqueue"
	DefaultTable       = "topic"
	DefaultLease       = 30 * time.Second
	DefaultMaxAttempts = 5
	// DefaultRefreshScope is Config.RefreshScope when left empty.
	DefaultRefreshScope = "partial"
)

// ErrConfig is wrapped by every *ConfigError.
var ErrConfig = errors.New("invalid queue configuration")

// ConfigError names the configuration field that is wrong. It never carries
// a secret: queue configuration holds none.
type ConfigError struct {
	Field string
	Err   error
}

func (e *ConfigError) Error() string { return fmt.Sprintf("topics.%s: %v", e.Field, e.Err) }

// Unwrap lets errors.Is find ErrConfig and the cause.
func (e *ConfigError) Unwrap() []error { return []error{ErrConfig, e.Err} }

// Columns maps each logical column of the protocols to a real column of
// the topic table. The first six exist in the original TopicFilter table;
// the rest are added by the schema (Config.DDL) when the table lacks them.
// Empty fields take the default name shown.
type Columns struct {
	ID       string `toml:"id"`       // topic id, primary key; default "id"
	Required string `toml:"required"` // 0 none, 1 partial, 2 full: the scope; default "required"
	Due      string `toml:"due"`      // recalc date: not before; default "due"
	Priority string `toml:"priority"` // higher runs first; default "priority"
	Running  string `toml:"running"`  // 0 or the holding instance id; default "running"
	Active   string `toml:"active"`   // compared with Config.ActiveValues; default "active"

	ClaimToken     string `toml:"claim_token"`     // fencing token, bumped by every claim
	RequestVersion string `toml:"request_version"` // bumped by every request
	ClaimedVersion string `toml:"claimed_version"` // request version the current claim serves
	ClaimedAt      string `toml:"claimed_at"`
	HeartbeatAt    string `toml:"heartbeat_at"`
	LeaseUntil     string `toml:"lease_until"` // claim may be reaped after this instant
	Attempts       string `toml:"attempts"`    // failed runs and rescues since the last success
	LastError      string `toml:"last_error"`
	ParkedAt       string `toml:"parked_at"` // set when attempts reach MaxAttempts
	Claimable      string `toml:"claimable"` // generated column the claim index starts with: STORED in nonqueue's own table, VIRTUAL when added to a mapped one
	// Refresh is the topic's own periodic refresh interval in
	// whole seconds: NULL takes Config.RefreshInterval, 0 never refreshes
	// the topic (docs/design.md, "Periodic refresh").
	Refresh string `toml:"refresh_interval"`
}

func (c Columns) withDefaults() Columns {
	return Columns{
		ID:             cmp.Or(c.ID, "id"),
		Required:       cmp.Or(c.Required, "required"),
		Due:            cmp.Or(c.Due, "due"),
		Priority:       cmp.Or(c.Priority, "priority"),
		Running:        cmp.Or(c.Running, "running"),
		Active:         cmp.Or(c.Active, "active"),
		ClaimToken:     cmp.Or(c.ClaimToken, "claim_token"),
		RequestVersion: cmp.Or(c.RequestVersion, "request_version"),
		ClaimedVersion: cmp.Or(c.ClaimedVersion, "claimed_version"),
		ClaimedAt:      cmp.Or(c.ClaimedAt, "claimed_at"),
		HeartbeatAt:    cmp.Or(c.HeartbeatAt, "heartbeat_at"),
		LeaseUntil:     cmp.Or(c.LeaseUntil, "lease_until"),
		Attempts:       cmp.Or(c.Attempts, "attempts"),
		LastError:      cmp.Or(c.LastError, "last_error"),
		ParkedAt:       cmp.Or(c.ParkedAt, "parked_at"),
		Claimable:      cmp.Or(c.Claimable, "claimable"),
		Refresh:        cmp.Or(c.Refresh, "refresh_interval"),
	}
}

func (c Columns) fields() []struct{ key, name string } {
	return []struct{ key, name string }{
		{"id", c.ID}, {"required", c.Required}, {"due", c.Due}, {"priority", c.Priority},
		{"running", c.Running}, {"active", c.Active}, {"claim_token", c.ClaimToken},
		{"request_version", c.RequestVersion}, {"claimed_version", c.ClaimedVersion},
		{"claimed_at", c.ClaimedAt}, {"heartbeat_at", c.HeartbeatAt}, {"lease_until", c.LeaseUntil},
		{"attempts", c.Attempts}, {"last_error", c.LastError}, {"parked_at", c.ParkedAt},
		{"claimable", c.Claimable}, {"refresh_interval", c.Refresh},
	}
}

// Config says where the topic table is, how it maps, and the lease and
// attempt rules every instance must agree on.
type Config struct {
	// Schema and Table locate the topic table; defaults "nonqueue"."topic".
	Schema string `toml:"schema"`
	Table  string `toml:"table"`
	// Mapped says the table already exists (such as the original
	// TopicFilter): the schema then only adds the protocol columns it lacks
	// instead of creating the table.
	Mapped  bool    `toml:"mapped"`
	Columns Columns `toml:"columns"`
	// ActiveValues are the values of the active column that make a topic
	// eligible; default [1] (the original used 1 and 2).
	ActiveValues []int64 `toml:"active_values"`
	// MetaSchema holds nonqueue's own tables: run history, instance
	// registry, lag heartbeat; default "nonqueue".
	MetaSchema string `toml:"meta_schema"`
	// Lease is how long a claim stays valid without a heartbeat; default 30s.
	Lease time.Duration `toml:"lease"`
	// MaxAttempts is how many failed runs or rescues in a row park a topic
	// until it is requested again; default 5, negative never parks.
	MaxAttempts int `toml:"max_attempts"`
	// RefreshInterval, when positive, makes every finished run schedule
	// the topic's next one, due this long after the finish, unless the
	// topic's refresh_interval column says otherwise (NULL takes this, 0
	// never). Default 0: no periodic refresh. At least 1s when set.
	RefreshInterval time.Duration `toml:"refresh_interval"`
	// RefreshScope is the scope of a refresh run: "partial" (default) or
	// "full". A request that arrives during a run keeps its own scope if
	// it is higher.
	RefreshScope string `toml:"refresh_scope"`
}

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	c.Schema = cmp.Or(c.Schema, DefaultSchema)
	c.Table = cmp.Or(c.Table, DefaultTable)
	c.Columns = c.Columns.withDefaults()
	if len(c.ActiveValues) == 0 {
		c.ActiveValues = []int64{1}
	}
	c.MetaSchema = cmp.Or(c.MetaSchema, DefaultSchema)
	c.Lease = cmp.Or(c.Lease, DefaultLease)
	c.MaxAttempts = cmp.Or(c.MaxAttempts, DefaultMaxAttempts)
	c.RefreshScope = cmp.Or(c.RefreshScope, DefaultRefreshScope)
	return c
}

// Validate checks every identifier and range. Call it on WithDefaults'
// result; New does both.
func (c Config) Validate() error {
	for _, f := range []struct{ key, name string }{{"schema", c.Schema}, {"table", c.Table}, {"meta_schema", c.MetaSchema}} {
		if err := ident.Validate(f.name); err != nil {
			return &ConfigError{Field: f.key, Err: err}
		}
	}
	seen := map[string]string{}
	for _, f := range c.Columns.fields() {
		if err := ident.Validate(f.name); err != nil {
			return &ConfigError{Field: "columns." + f.key, Err: err}
		}
		lower := strings.ToLower(f.name)
		if other, dup := seen[lower]; dup {
			return &ConfigError{Field: "columns." + f.key, Err: fmt.Errorf("column %q is also mapped to %s", f.name, other)}
		}
		seen[lower] = f.key
	}
	if len(c.ActiveValues) > 64 {
		return &ConfigError{Field: "active_values", Err: errors.New("at most 64 values")}
	}
	if c.Lease < time.Second {
		return &ConfigError{Field: "lease", Err: fmt.Errorf("%v is shorter than 1s", c.Lease)}
	}
	return c.validateRefresh()
}
