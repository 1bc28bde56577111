package procs_test

import (
	"errors"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/procs"
)

// TestConfigValidate: each case says what it proves.
func TestConfigValidate(t *testing.T) {
	t.Parallel()
	ok := procs.Config{Procedure: "analytics.recalc_topic", Marker: "SUMMARY", LogDir: "/var/log/nonqueue"}.WithDefaults()
	with := func(f func(*procs.Config)) procs.Config { c := ok; f(&c); return c }
	cases := []struct {
		name  string
		cfg   procs.Config
		field string // "" = valid
	}{
		{"a plain schema.name is valid", ok, ""},
		{"no marker is valid", with(func(c *procs.Config) { c.Marker = "" }), ""},
		{"injection through the name is refused", with(func(c *procs.Config) { c.Procedure = "a.b(1,1); DROP TABLE t; --" }), "procedure.name"},
		{"a backtick cannot break the quoting", with(func(c *procs.Config) { c.Procedure = "a.b`c" }), "procedure.name"},
		{"the schema is required", with(func(c *procs.Config) { c.Procedure = "recalc" }), "procedure.name"},
		{"empty parts are refused", with(func(c *procs.Config) { c.Procedure = ".recalc" }), "procedure.name"},
		{"three parts are refused", with(func(c *procs.Config) { c.Procedure = "a.b.c" }), "procedure.name"},
		{"an all-digit part is refused", with(func(c *procs.Config) { c.Procedure = "a.123" }), "procedure.name"},
		{"a 65-character part is refused", with(func(c *procs.Config) { c.Procedure = "a." + string(make65()) }), "procedure.name"},
		{"missing LogDir is refused", with(func(c *procs.Config) { c.LogDir = "" }), "procedure.log_dir"},
		{"negative timeout is refused", with(func(c *procs.Config) { c.Timeout = -time.Second }), "procedure.timeout"},
		{"zero timeout needs WithDefaults", with(func(c *procs.Config) { c.Timeout = 0 }), "procedure.timeout"},
	}
	for _, c := range cases {
		err := c.cfg.Validate()
		if c.field == "" {
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
			}
			continue
		}
		var ce *procs.ConfigError
		if !errors.As(err, &ce) || !errors.Is(err, procs.ErrConfig) || ce.Field != c.field {
			t.Errorf("%s: %v, want a ConfigError on %s", c.name, err, c.field)
		}
	}
	if d := (procs.Config{}).WithDefaults(); d.Timeout != time.Hour {
		t.Errorf("default timeout %v", d.Timeout)
	}
}

func make65() []byte {
	b := make([]byte, 65)
	for i := range b {
		b[i] = 'x'
	}
	return b
}
