package worker_test

import (
	"errors"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/worker"
)

// TestConfigDefaultsAndRanges: defaults fill what is unset (max_procs 1),
// and out-of-range settings are refused naming the setting.
func TestConfigDefaultsAndRanges(t *testing.T) {
	const lease = 30 * time.Second
	c := worker.Config{LogDir: "/tmp/x"}.WithDefaults(lease)
	if c.MaxProcs != 1 {
		t.Errorf("default max_procs %d, want 1", c.MaxProcs)
	}
	if err := c.Validate(lease); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
	if got := (worker.Config{LogDir: "/tmp/x", MaxProcs: 4}).WithDefaults(lease).MaxProcs; got != 4 {
		t.Errorf("max_procs 4 became %d", got)
	}
	for _, tc := range []struct {
		field string
		tweak func(*worker.Config)
	}{
		{"max_procs", func(c *worker.Config) { c.MaxProcs = -1 }},
		{"id_multiplier", func(c *worker.Config) { c.IDMultiplier = 1 }},
		{"gtid_wait", func(c *worker.Config) { c.GTIDWait = lease }},
		{"gtid_backoff", func(c *worker.Config) { c.GTIDBackoff = -time.Second }},
		{"grace_period", func(c *worker.Config) { c.GracePeriod = 2 * lease }},
	} {
		bad := c
		tc.tweak(&bad)
		err := bad.Validate(lease)
		var ce *worker.ConfigError
		if !errors.As(err, &ce) || ce.Field != tc.field || !errors.Is(err, worker.ErrConfig) {
			t.Errorf("%s: got %v, want a ConfigError for %s", tc.field, err, tc.field)
		}
	}
}
