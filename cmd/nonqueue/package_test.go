package main

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"
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
