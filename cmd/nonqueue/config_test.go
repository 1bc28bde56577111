package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/ident"
	"github.com/nonqueue/nonqueue/queue"
	"github.com/nonqueue/nonqueue/transfer"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "nonqueue.toml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadConfig(t *testing.T) {
	t.Parallel()
	const good = `
[primary]
user = "nq"
password = "s3cret-value"
[topics]
schema = "app"
table = "TopicFilter"
mapped = true
active_values = [1, 2]
lease = "45s"
[topics.columns]
id = "topicFilterId"
`
	cases := []struct {
		name string
		body string
		key  string // ConfigError key, "" = valid
		is   error  // also wrapped, if set
	}{
		{"a mapped TopicFilter configuration loads", good, "", nil},
		{"a typo is an error, not a silent default", good + "\n[topics.colums]\nid = \"x\"\n", "topics.colums", nil},
		{"an injected table name is refused", strings.Replace(good, `"TopicFilter"`, `"T; DROP TABLE x"`, 1), "table", ident.ErrInvalid},
		{"the primary needs a user", "[primary]\nport = 3306\n", "primary.user", nil},
		{"a port out of range is refused", "[primary]\nuser = \"x\"\nport = 70000\n", "primary.port", nil},
		{"ssh without known_hosts is refused", good + "\n[ssh]\nhost = \"h\"\nuser = \"u\"\nkey_file = \"k\"\ndatadir = \"/d\"\n", "ssh.known_hosts", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := LoadConfig(writeFile(t, tc.body))
			if tc.key == "" {
				if err != nil {
					t.Fatal(err)
				}
				if c.Topics.Lease.Seconds() != 45 || c.Topics.Columns.ID != "topicFilterId" || c.Topics.Columns.Due != "due" {
					t.Fatalf("decoded %+v", c.Topics)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			if strings.Contains(err.Error(), "s3cret-value") {
				t.Fatalf("error shows the password: %v", err)
			}
			var ce *ConfigError
			var qe *queue.ConfigError
			switch {
			case errors.As(err, &ce):
				if ce.Key != tc.key {
					t.Fatalf("error on %q, want %q: %v", ce.Key, tc.key, err)
				}
			case errors.As(err, &qe):
				if qe.Field != tc.key {
					t.Fatalf("error on %q, want %q: %v", qe.Field, tc.key, err)
				}
			default:
				t.Fatalf("not a configuration error: %v", err)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Fatalf("%v does not wrap %v", err, tc.is)
			}
		})
	}
}

// TestPasswordFromEnvironment: a secret can stay out of the file, and a
// named variable that is missing is a clear error.
func TestPasswordFromEnvironment(t *testing.T) {
	p := writeFile(t, "[primary]\nuser = \"nq\"\npassword_env = \"NQ_TEST_PW\"\n")
	c, err := LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Primary.MySQL("primary"); err == nil || !strings.Contains(err.Error(), "NQ_TEST_PW") {
		t.Fatalf("missing variable: %v", err)
	}
	t.Setenv("NQ_TEST_PW", "from-env")
	mc, err := c.Primary.MySQL("primary")
	if err != nil || mc.Passwd != "from-env" {
		t.Fatalf("password from env: %v", err)
	}
	var b strings.Builder
	logger := newTestLogger(&b)
	logger.Info("connecting", "primary", c.Primary)
	if strings.Contains(b.String(), "from-env") {
		t.Fatalf("log shows the password: %s", b.String())
	}
}

// TestExplicitZeroRefused: a key the file sets to 0 where 0 would silently
// be replaced by the default (lease = "0s" became 30s) is an error naming
// the key, for every duration key and the integer keys of that kind; a
// negative duration too. Leaving the key out still gives the default, and
// a zero that means itself (min_priority) is still accepted.
func TestExplicitZeroRefused(t *testing.T) {
	t.Parallel()
	const base = "[primary]\nuser = \"nq\"\n"
	for _, key := range []string{
		"topics.lease",
		"worker.idle_wait", "worker.heartbeat_interval", "worker.gtid_wait", "worker.grace_period",
		"worker.backoff_base", "worker.backoff_max", "worker.reap_interval",
		"procedure.timeout",
		"lag.max_lag", "lag.stopped_backoff", "lag.behind_backoff", "lag.sample_interval",
		"dashboard.refresh", "dashboard.cache_ttl", "dashboard.session_ttl",
	} {
		section, name, _ := strings.Cut(key, ".")
		for _, v := range []string{`"0s"`, `"0ms"`, `0`, `"-1s"`} {
			body := base + "[" + section + "]\n" + name + " = " + v + "\n"
			_, err := LoadConfig(writeFile(t, body))
			var ce *ConfigError
			if !errors.As(err, &ce) || ce.Key != key || !errors.Is(err, ErrConfig) {
				t.Errorf("%s = %s: %v, want a configuration error on %s", key, v, err, key)
			}
		}
	}
	for _, key := range []string{"topics.max_attempts", "worker.id_base", "worker.id_multiplier", "worker.max_procs", "results.backup_keep", "replica.port", "ssh.port"} {
		section, name, _ := strings.Cut(key, ".")
		_, err := LoadConfig(writeFile(t, base+"["+section+"]\n"+name+" = 0\n"))
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Key != key {
			t.Errorf("%s = 0: %v, want a configuration error on %s", key, err, key)
		}
	}
	_, err := LoadConfig(writeFile(t, "[primary]\nuser = \"nq\"\nport = 0\n"))
	if ce := (*ConfigError)(nil); !errors.As(err, &ce) || ce.Key != "primary.port" {
		t.Errorf("primary.port = 0: %v", err)
	}
	if _, err := LoadConfig(writeFile(t, base+"[topics]\nlease = \"0s\"\n")); err == nil || !strings.Contains(err.Error(), "topics.lease") || !strings.Contains(err.Error(), "default") {
		t.Errorf("lease = \"0s\": %v, want an error naming topics.lease and the default", err)
	}
	c, err := LoadConfig(writeFile(t, base+"[worker]\nmin_priority = 0\n[topics]\nlease = \"40s\"\n"))
	if err != nil || c.Topics.Lease != 40*time.Second || c.Topics.MaxAttempts != queue.DefaultMaxAttempts {
		t.Fatalf("a valid file: %v", err)
	}
	c, err = LoadConfig(writeFile(t, base))
	if err != nil || c.Topics.Lease != queue.DefaultLease {
		t.Fatalf("lease left out: %v, lease %v", err, c)
	}
}

// TestExplicitZeroStopsCommands: on the sandbox, a configuration that
// works is refused by the commands once it says lease = "0s", naming the
// key, instead of running with a 30s lease.
func TestExplicitZeroStopsCommands(t *testing.T) {
	t.Parallel()
	b := setupOps(t, "")
	if out, code := runBinary(t, "status", "--config", b.path); code != 0 {
		t.Fatalf("status on the sandbox: exit %d\n%s", code, out)
	}
	body, err := os.ReadFile(b.path)
	if err != nil {
		t.Fatal(err)
	}
	zero := writeFile(t, strings.Replace(string(body), "[topics]\n", "[topics]\nlease = \"0s\"\n", 1))
	for _, args := range [][]string{{"status"}, {"request", "1"}, {"check"}, {"work", "--instances", "1"}} {
		out, code := runBinary(t, append(args, "--config", zero)...)
		if code != 1 || !strings.Contains(out, "config topics.lease: 0s is refused") {
			t.Errorf("%v with lease = \"0s\": exit %d, want 1 and the key named:\n%s", args, code, out)
		}
	}
}

// TestTransferBounds: the [ssh] transfer bounds and [results] sync reach
// the transfer configuration; unset, they take transfer's defaults; a bad
// value is refused by the worker's validation, naming the key.
func TestTransferBounds(t *testing.T) {
	t.Parallel()
	const base = `
[primary]
user = "nq"
[topics]
schema = "app"
[replica]
user = "nq"
[procedure]
name = "app.calc"
[results]
schema = "app"
tables = ["R_{id}"]
%s
[ssh]
host = "h"
user = "u"
key_file = "/k"
known_hosts = "/kh"
datadir = "/d"
%s
`
	c, err := LoadConfig(writeFile(t, fmt.Sprintf(base, "sync = false", `dial_timeout = "3s"
keepalive_interval = "2s"
keepalive_timeout = "7s"
stall_timeout = "30s"
min_throughput = 16`)))
	if err != nil {
		t.Fatal(err)
	}
	tc := c.transferConfig()
	if s := tc.SSH; s.DialTimeout != 3*time.Second || s.KeepaliveInterval != 2*time.Second || s.KeepaliveTimeout != 7*time.Second ||
		s.StallTimeout != 30*time.Second || s.MinThroughput != 16 || !tc.NoSync {
		t.Fatalf("mapped: %+v, NoSync %v", s, tc.NoSync)
	}
	c, err = LoadConfig(writeFile(t, fmt.Sprintf(base, "", "")))
	if err != nil {
		t.Fatal(err)
	}
	tc = c.transferConfig()
	if s := tc.SSH; s.KeepaliveInterval != transfer.DefaultKeepaliveInterval || s.StallTimeout != transfer.DefaultStallTimeout || tc.NoSync {
		t.Fatalf("defaults: %+v, NoSync %v", s, tc.NoSync)
	}
	c, err = LoadConfig(writeFile(t, fmt.Sprintf(base, "", `stall_timeout = "100ms"`)))
	if err != nil {
		t.Fatal(err)
	}
	var ce *transfer.ConfigError
	if err := c.validateWorker(); !errors.As(err, &ce) || ce.Field != "ssh.stall_timeout" {
		t.Fatalf("stall_timeout = 100ms: %v, want a ConfigError on ssh.stall_timeout", err)
	}
}
