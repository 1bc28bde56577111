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
