package transfer_test

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/ident"
	"github.com/nonqueue/nonqueue/transfer"
)

func validConfig() transfer.Config {
	return transfer.Config{
		SSH: transfer.SSHConfig{
			Host: "db1.example", User: "mysql", KeyFile: "/etc/nonqueue/id_ed25519", KnownHosts: "/etc/nonqueue/known_hosts",
		},
		PrimaryDatadir: "/var/lib/mysql",
		Schema:         "scores",
		Tables:         []string{"Dynamics_{id}", "Post_{id}"},
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		tweak   func(*transfer.Config)
		field   string // "" = valid
		invalid bool   // the cause is ident.ErrInvalid
	}{
		// The original's tables, with defaults: valid.
		{"valid", func(*transfer.Config) {}, "", false},
		// Backups with the default count: valid.
		{"backup default keep", func(c *transfer.Config) { c.BackupDir = "/var/backups/nq" }, "", false},
		// The id may sit anywhere in the name.
		{"id in the middle", func(c *transfer.Config) { c.Tables = []string{"t_{id}_x"} }, "", false},
		// Without {id} every topic would write the same table.
		{"template without id", func(c *transfer.Config) { c.Tables = []string{"Dynamics"} }, "tables[0]", false},
		// Twice {id} is ambiguous.
		{"template with id twice", func(c *transfer.Config) { c.Tables = []string{"D_{id}_{id}"} }, "tables[0]", false},
		// SQL injection through a template is refused before any SQL exists.
		{"injection in template", func(c *transfer.Config) { c.Tables = []string{"D_{id}`; DROP TABLE x; --"} }, "tables[0]", true},
		// Path traversal through a template (file names come from it).
		{"path in template", func(c *transfer.Config) { c.Tables = []string{"../mysql/user_{id}"} }, "tables[0]", true},
		// A template whose longest expansion (19-digit id) exceeds 64 chars.
		{"template too long", func(c *transfer.Config) { c.Tables = []string{strings.Repeat("a", 46) + "{id}"} }, "tables[0]", true},
		// Longest template that still fits every id.
		{"template at the limit", func(c *transfer.Config) { c.Tables = []string{strings.Repeat("a", 45) + "{id}"} }, "", false},
		// "{id}" alone expands to a number, not a name.
		{"template all digits", func(c *transfer.Config) { c.Tables = []string{"{id}"} }, "tables[0]", true},
		// Staging prefixes are reserved (CleanupPrimary drops them).
		{"reserved prefix", func(c *transfer.Config) { c.Tables = []string{"NQTMP_{id}"} }, "tables[0]", false},
		// Same table twice (case-insensitively).
		{"duplicate template", func(c *transfer.Config) { c.Tables = []string{"D_{id}", "d_{id}"} }, "tables[1]", false},
		{"no tables", func(c *transfer.Config) { c.Tables = nil }, "tables", false},
		// SQL injection through the schema.
		{"injection in schema", func(c *transfer.Config) { c.Schema = "scores`; DROP DATABASE mysql; --" }, "schema", true},
		{"empty schema", func(c *transfer.Config) { c.Schema = "" }, "schema", true},
		// No silent trust of the primary's host key.
		{"missing known_hosts", func(c *transfer.Config) { c.SSH.KnownHosts = "" }, "ssh.known_hosts", false},
		{"missing key file", func(c *transfer.Config) { c.SSH.KeyFile = "" }, "ssh.key_file", false},
		{"missing host", func(c *transfer.Config) { c.SSH.Host = "" }, "ssh.host", false},
		{"missing user", func(c *transfer.Config) { c.SSH.User = "" }, "ssh.user", false},
		{"bad port", func(c *transfer.Config) { c.SSH.Port = 70000 }, "ssh.port", false},
		{"relative datadir", func(c *transfer.Config) { c.PrimaryDatadir = "var/lib/mysql" }, "primary_datadir", false},
		{"missing datadir", func(c *transfer.Config) { c.PrimaryDatadir = "" }, "primary_datadir", false},
		{"negative keep", func(c *transfer.Config) { c.BackupKeep = -1 }, "backup_keep", false},
		// The swap's bounds: whole seconds (lock_wait_timeout's unit), sane ranges.
		{"swap settings", func(c *transfer.Config) {
			c.LockWait, c.SwapTries, c.SwapBackoff = 3*time.Second, 1, 100*time.Millisecond
		}, "", false},
		{"lock wait in ms", func(c *transfer.Config) { c.LockWait = 1500 * time.Millisecond }, "results.lock_wait", false},
		{"negative lock wait", func(c *transfer.Config) { c.LockWait = -time.Second }, "results.lock_wait", false},
		{"lock wait too long", func(c *transfer.Config) { c.LockWait = 2 * time.Minute }, "results.lock_wait", false},
		{"negative swap tries", func(c *transfer.Config) { c.SwapTries = -1 }, "results.swap_tries", false},
		{"too many swap tries", func(c *transfer.Config) { c.SwapTries = 1001 }, "results.swap_tries", false},
		{"swap backoff too short", func(c *transfer.Config) { c.SwapBackoff = 10 * time.Millisecond }, "results.swap_backoff", false},
		{"swap backoff too long", func(c *transfer.Config) { c.SwapBackoff = time.Hour }, "results.swap_backoff", false},
		// Tries spanning more than 30 minutes (here 1000 × 5 s).
		{"swap tries span too long", func(c *transfer.Config) { c.SwapTries = 1000 }, "results.swap_tries", false},
		{"swap tries span at most 30m", func(c *transfer.Config) { c.SwapTries = 350 }, "", false},
		// Transfer bounds: negative is a typo; below a second a busy link
		// would be taken for a dead one.
		{"negative dial timeout", func(c *transfer.Config) { c.SSH.DialTimeout = -time.Second }, "ssh.dial_timeout", false},
		{"negative keepalive interval", func(c *transfer.Config) { c.SSH.KeepaliveInterval = -time.Second }, "ssh.keepalive_interval", false},
		{"keepalive timeout too short", func(c *transfer.Config) { c.SSH.KeepaliveTimeout = 100 * time.Millisecond }, "ssh.keepalive_timeout", false},
		{"stall timeout too short", func(c *transfer.Config) { c.SSH.StallTimeout = 500 * time.Millisecond }, "ssh.stall_timeout", false},
		{"negative min throughput", func(c *transfer.Config) { c.SSH.MinThroughput = -1 }, "ssh.min_throughput", false},
		{"tight but valid bounds", func(c *transfer.Config) {
			c.SSH.KeepaliveInterval, c.SSH.KeepaliveTimeout, c.SSH.StallTimeout, c.SSH.MinThroughput = time.Second, time.Second, time.Second, 1
		}, "", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := validConfig()
			tc.tweak(&c)
			err := c.WithDefaults().Validate()
			if tc.field == "" {
				if err != nil {
					t.Fatalf("Validate: %v, want nil", err)
				}
				return
			}
			var ce *transfer.ConfigError
			if !errors.As(err, &ce) || !errors.Is(err, transfer.ErrConfig) {
				t.Fatalf("Validate: %v, want *ConfigError wrapping ErrConfig", err)
			}
			if ce.Field != tc.field {
				t.Fatalf("Field = %q, want %q (%v)", ce.Field, tc.field, err)
			}
			if tc.invalid && !errors.Is(err, ident.ErrInvalid) {
				t.Fatalf("Validate: %v, want it to wrap ident.ErrInvalid", err)
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	c := validConfig()
	c.BackupDir = "/b"
	c.PrimaryDatadir = "/var/lib/mysql/"
	c = c.WithDefaults()
	if c.SSH.Port != 22 || c.SSH.DialTimeout != transfer.DefaultDialTimeout || c.BackupKeep != 3 || c.PrimaryDatadir != "/var/lib/mysql" {
		t.Fatalf("WithDefaults = %+v", c)
	}
	if c.LockWait != time.Second || c.SwapTries != 14 || c.SwapBackoff != 4*time.Second {
		t.Fatalf("swap defaults: lock wait %v, tries %d, backoff %v; want 1s, 14, 4s", c.LockWait, c.SwapTries, c.SwapBackoff)
	}
	if c.SSH.KeepaliveInterval != 5*time.Second || c.SSH.KeepaliveTimeout != 10*time.Second || c.SSH.StallTimeout != 10*time.Second ||
		c.SSH.MinThroughput != 4 || c.NoSync {
		t.Fatalf("transfer bounds: WithDefaults = %+v, NoSync %v", c.SSH, c.NoSync)
	}
	if got := c.SSH.Addr(); got != "db1.example:22" {
		t.Fatalf("Addr = %q", got)
	}
	if _, err := transfer.NewShipper(transfer.Config{}, nil); !errors.Is(err, transfer.ErrConfig) {
		t.Fatalf("NewShipper(empty) = %v, want ErrConfig", err)
	}
}

// TestSwapPauses: the pauses between tries of a busy swap start at the
// lock wait and double up to the back-off; with the defaults, 14 tries
// start 0, 2, 5, 10, 15, … 60 s after the first, so a publish outlasts a
// reader of about a minute (DefaultSwapTries).
func TestSwapPauses(t *testing.T) {
	t.Parallel()
	c := validConfig().WithDefaults()
	var got []time.Duration
	for n := 1; n <= 5; n++ {
		got = append(got, transfer.SwapPause(c, n))
	}
	if want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second, 4 * time.Second}; !slices.Equal(got, want) {
		t.Fatalf("pauses %v, want %v", got, want)
	}
	var last time.Duration
	for n := 1; n < c.SwapTries; n++ {
		last += c.LockWait + transfer.SwapPause(c, n)
	}
	if last != 60*time.Second {
		t.Fatalf("the last of %d tries starts %v after the first, want 60s", c.SwapTries, last)
	}
	c.LockWait, c.SwapBackoff = 3*time.Second, time.Second
	if p := transfer.SwapPause(c, 1); p != time.Second {
		t.Fatalf("a back-off below the lock wait: first pause %v, want 1s", p)
	}
}

func TestTableNames(t *testing.T) {
	t.Parallel()
	got := validConfig().TableNames(42)
	if strings.Join(got, ",") != "Dynamics_42,Post_42" {
		t.Fatalf("TableNames(42) = %v", got)
	}
}

func TestStagingName(t *testing.T) {
	t.Parallel()
	// Short names stay readable.
	if got := transfer.StagingName("nqtmp_", 12, "Dynamics_7"); got != "nqtmp_12_Dynamics_7" {
		t.Fatalf("short: %q", got)
	}
	// Long ones are hashed to a valid identifier, distinct per table.
	long1 := strings.Repeat("a", 45) + "9223372036854775807"
	long2 := strings.Repeat("b", 45) + "9223372036854775807"
	n1 := transfer.StagingName("nqtmp_", 18446744073709551615, long1)
	n2 := transfer.StagingName("nqtmp_", 18446744073709551615, long2)
	for _, n := range []string{n1, n2} {
		if err := ident.Validate(n); err != nil || !strings.HasPrefix(n, "nqtmp_18446744073709551615_") {
			t.Fatalf("long: %q: %v", n, err)
		}
	}
	if n1 == n2 {
		t.Fatalf("two tables share staging name %q", n1)
	}
}

// TestTopicOf: a result table's name gives its topic back, for the
// replica's cleanup; nothing else matches.
func TestTopicOf(t *testing.T) {
	t.Parallel()
	c := validConfig()
	c.Tables = append(c.Tables, "r{id}_x")
	for name, want := range map[string]int64{
		"Dynamics_12": 12, "Post_7": 7, "r3_x": 3, "Dynamics_9223372036854775807": 9223372036854775807,
		"Dynamics_": 0, "Dynamics_012": 0, "Dynamics_1a": 0, "Dynamics_-1": 0, "Dynamics_0": 0, "Post_7_x": 0,
		"r3_y": 0, "Settings": 0, "dynamics_12": 0, "Dynamics_99999999999999999999": 0, "r_x": 0,
	} {
		got, ok := transfer.TopicOf(c, name)
		if got != want || ok != (want > 0) {
			t.Errorf("TopicOf(%q) = %d, %v; want %d", name, got, ok, want)
		}
	}
}
