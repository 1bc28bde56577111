package procs

import (
	"cmp"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nonqueue/nonqueue/internal/ident"
)

// DefaultTimeout is Config.Timeout when left zero.
const DefaultTimeout = time.Hour

// Sentinel errors, tested with errors.Is; returned errors wrap them with
// the procedure, the topic and details.
var (
	// ErrFailed: the procedure ran to the end without a SQL error but did
	// not report success (the marker was not in its last result set).
	ErrFailed = errors.New("procedure did not report success")
	// ErrTimeout: the run took longer than Config.Timeout and was stopped
	// on the server.
	ErrTimeout = errors.New("procedure timed out")
	// ErrNoProcedure: Exists did not find the procedure.
	ErrNoProcedure = errors.New("procedure not found")
	// ErrConfig is wrapped by every *ConfigError.
	ErrConfig = errors.New("invalid procedure configuration")
)

// ConfigError names the configuration field that is wrong and why. The
// procedure configuration holds no secret.
type ConfigError struct {
	Field string
	Err   error
}

func (e *ConfigError) Error() string { return fmt.Sprintf("procs: %s: %v", e.Field, e.Err) }

// Unwrap lets errors.Is find ErrConfig and the cause.
func (e *ConfigError) Unwrap() []error { return []error{ErrConfig, e.Err} }

// Config says which procedure a run calls, how success is recognised, how
// long a run may take and where its output goes.
type Config struct {
	// Procedure is "schema.name"; each part must match ^[A-Za-z0-9_]{1,64}$
	// (see internal/ident). It is called as `schema`.`name`(topic_id, scope).
	Procedure string
	// Marker, if set, must equal or be contained in a cell of the last
	// result set for a run to succeed; empty means no SQL error is success.
	Marker string
	// Timeout bounds one run; default 1h.
	Timeout time.Duration
	// LogDir holds the per-run log files; required. Created when missing.
	LogDir string
}

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	c.Timeout = cmp.Or(c.Timeout, DefaultTimeout)
	return c
}

// Validate checks c as given (call WithDefaults first): a valid two-part
// procedure name, a positive timeout and a log directory. It returns a
// *ConfigError wrapping ErrConfig.
func (c Config) Validate() error {
	if _, _, err := c.split(); err != nil {
		return &ConfigError{Field: "procedure.name", Err: err}
	}
	if c.Timeout <= 0 {
		return &ConfigError{Field: "procedure.timeout", Err: fmt.Errorf("%v must be positive", c.Timeout)}
	}
	if c.LogDir == "" {
		return &ConfigError{Field: "procedure.log_dir", Err: errors.New("required: per-run logs are written there")}
	}
	return nil
}

// split returns the validated schema and name of Procedure.
func (c Config) split() (schema, name string, err error) {
	schema, name, ok := strings.Cut(c.Procedure, ".")
	if !ok {
		return "", "", fmt.Errorf("%q: want schema.name", c.Procedure)
	}
	if err := ident.Validate(schema); err != nil {
		return "", "", fmt.Errorf("schema of %q: %w", c.Procedure, err)
	}
	if err := ident.Validate(name); err != nil {
		return "", "", fmt.Errorf("name of %q: %w", c.Procedure, err)
	}
	return schema, name, nil
}
