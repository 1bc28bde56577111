package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/testdb"
)

// examplePath is the configuration the Debian package installs as
// /etc/nonqueue/nonqueue.toml (cmd/nonqueue/package/nfpm.yaml).
const examplePath = "package/nonqueue.toml"

// TestPackageExampleConfigLoads: the example configuration the package
// installs is one nonqueue accepts as it is, for a worker too (the checks
// `nonqueue work` and `check` make before connecting), so an operator starts
// from a file that works once the hosts are filled in.
func TestPackageExampleConfigLoads(t *testing.T) {
	t.Parallel()
	c, err := LoadConfig(examplePath)
	if err != nil {
		t.Fatalf("LoadConfig(%s): %v", examplePath, err)
	}
	if err := c.validateWorker(); err != nil {
		t.Fatalf("%s is not a worker's configuration: %v", examplePath, err)
	}
	if !c.Topics.Mapped || c.Procedure.Name == "" || len(c.Results.Tables) == 0 || c.SSH.KnownHosts == "" {
		t.Errorf("%s lost a section: topics mapped %v, procedure %q, results %v, ssh known_hosts %q",
			examplePath, c.Topics.Mapped, c.Procedure.Name, c.Results.Tables, c.SSH.KnownHosts)
	}
}

// optionalKey is an optional key shown commented out at its default:
// "#key = value" at the start of a line.
var optionalKey = regexp.MustCompile(`(?m)^#([a-z_]+ = )`)

// TestPackageExampleOptionalKeys: the optional keys the example shows
// commented out ("#key = value") are real keys with valid values, so
// removing the "#" never turns the file into one LoadConfig refuses.
func TestPackageExampleOptionalKeys(t *testing.T) {
	t.Parallel()
	body, err := os.ReadFile(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(optionalKey.FindAll(body, -1)); n < 10 {
		t.Fatalf("found %d commented optional keys in %s; the pattern or the file changed", n, examplePath)
	}
	p := filepath.Join(t.TempDir(), "nonqueue.toml")
	if err := os.WriteFile(p, optionalKey.ReplaceAll(body, []byte("$1")), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := LoadConfig(p)
	if err != nil {
		t.Fatalf("%s with its optional keys uncommented: %v", examplePath, err)
	}
	if err := c.validateWorker(); err != nil {
		t.Fatalf("%s with its optional keys uncommented: %v", examplePath, err)
	}
}

// TestPackageSystemdUnits: every unit in cmd/nonqueue/systemd/ is shipped
// by the package (nfpm.yaml, into /lib/systemd/system/), the units run the
// worker and the binlog follower on the configuration the package
// installs, and systemd-analyze verify accepts each as it is (with the
// binary at this test's path, since /usr/bin/nonqueue may not exist here;
// .ci/package verifies the installed ones).
func TestPackageSystemdUnits(t *testing.T) {
	nfpm, err := os.ReadFile("package/nfpm.yaml")
	if err != nil {
		t.Fatal(err)
	}
	units, err := filepath.Glob("systemd/*.service")
	if err != nil || len(units) == 0 {
		t.Fatalf("no units in systemd/: %v", err)
	}
	execRe := regexp.MustCompile(`(?m)^ExecStart=/usr/bin/nonqueue (\S+) --config /etc/nonqueue/nonqueue\.toml\b`)
	subs := map[string]string{}
	analyze := testdb.Tool(t, "systemd-analyze", "systemd")
	dir := t.TempDir()
	for _, u := range units {
		name := filepath.Base(u)
		ship := regexp.MustCompile(`(?m)^\s*- src: cmd/nonqueue/` + regexp.QuoteMeta(u) + `\n\s*dst: /lib/systemd/system/` + regexp.QuoteMeta(name) + `\n`)
		if !ship.Match(nfpm) {
			t.Errorf("package/nfpm.yaml does not ship %s to /lib/systemd/system/%s", u, name)
		}
		body, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		m := execRe.FindSubmatch(body)
		if m == nil {
			t.Errorf("%s: no ExecStart=/usr/bin/nonqueue SUBCOMMAND --config /etc/nonqueue/nonqueue.toml", u)
			continue
		}
		subs[string(m[1])] = name
		self, err := filepath.Abs(os.Args[0])
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(strings.ReplaceAll(string(body), "/usr/bin/nonqueue", self)), 0o644); err != nil {
			t.Fatal(err)
		}
		// A template is verified through an instance.
		if strings.HasSuffix(name, "@.service") {
			p = filepath.Join(dir, strings.TrimSuffix(name, "@.service")+"@1.service")
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		out, err := exec.CommandContext(ctx, analyze, "verify", p).CombinedOutput()
		cancel()
		if err != nil || len(out) > 0 {
			t.Errorf("systemd-analyze verify %s: %v\n%s", name, err, out)
		}
	}
	for _, sub := range []string{"work", "follow"} {
		if subs[sub] == "" {
			t.Errorf("no unit runs nonqueue %s (units: %v)", sub, subs)
		}
	}
}
